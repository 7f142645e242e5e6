// SPDX-License-Identifier: MIT
#pragma once

// Helpers shared by the tests: a scratch directory, descriptor counting,
// child processes that hold a lock, and spawned helper programs.

#include <filelock/lock_file.hpp>

#include <catch2/catch.hpp>

#include "portable.hpp"
#include "proc_fds.hpp"

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sstream>
#include <string>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

extern char** environ;

namespace test {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// Writing to the pipe of a child that was killed must not kill the test.
inline const bool sigpipe_ignored = (::signal(SIGPIPE, SIG_IGN), true);

/// A fresh directory, removed afterwards.
struct scratch {
    fs::path dir;
    scratch() {
        std::string tmpl = (fs::temp_directory_path() / "filelock-test-XXXXXX").string();
        REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
        dir = tmpl;
    }
    ~scratch() {
        std::error_code ec;
        fs::permissions(dir, fs::perms::owner_all, fs::perm_options::add, ec);
        fs::remove_all(dir, ec);
    }
    fs::path operator/(const std::string& name) const { return dir / name; }
};

/// A Python program (`python() -c zc_hold PATH`) that takes PATH with
/// zc.lockfile, prints "locked" and holds it until its stdin closes.
inline constexpr char zc_hold[] =
    "import sys, zc.lockfile\n"
    "lock = zc.lockfile.LockFile(sys.argv[1])\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
    "lock.close()\n";

/// Waits that only a release event, a turn or the deadline can end early:
/// a 20 s backoff with no jitter. "Acquired before the timer" is checked
/// against half of it (a margin of seconds, never microseconds).
constexpr auto slow_timer = std::chrono::seconds(20);
constexpr auto before_timer = std::chrono::seconds(10);
inline filelock::lock_options event_only() {
    filelock::lock_options o;
    o.backoff = {slow_timer, 1.0, slow_timer, 0.0};
    return o;
}

using portable::read_file;
using portable::slots;
using portable::write_file;

/// The line the default template writes for this process.
inline std::string pid_content() { return " " + std::to_string(::getpid()) + "\n"; }

/// Is the lock on `p` free right now (as seen by an independent flock)?
inline bool lock_is_free(const fs::path& p) {
    const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return true;
    const bool free = ::flock(fd, LOCK_EX | LOCK_NB) == 0;
    ::close(fd);
    return free;
}

inline int& release_fd() {
    static int fd = -1;
    return fd;
}

/// In a child: blocks until the parent calls release() (or dies).
inline void await_release() {
    char c;
    while (::read(release_fd(), &c, 1) < 0 && errno == EINTR) {
    }
}

/// A child process (fork) that runs `body` and reports through a pipe.
/// `body` gets a write end: it writes one byte when ready, then the child
/// waits for the parent to close its side (release()) before exiting.
class child {
public:
    template <class F>
    explicit child(F body) {
        int ready[2], go[2];
        REQUIRE(::pipe2(ready, O_CLOEXEC) == 0);
        REQUIRE(::pipe2(go, O_CLOEXEC) == 0);
        pid_ = ::fork();
        REQUIRE(pid_ >= 0);
        if (pid_ == 0) {
            ::close(ready[0]);
            ::close(go[1]);
            release_fd() = go[0];
            int code = 0;
            try {
                code = body(ready[1]);
            } catch (...) {
                code = 99;
            }
            await_release();
            ::_exit(code);
        }
        ::close(ready[1]);
        ::close(go[0]);
        ready_ = ready[0];
        go_ = go[1];
    }
    ~child() {
        release();
        wait();
        if (ready_ >= 0) ::close(ready_);
    }
    pid_t pid() const noexcept { return pid_; }
    /// Waits for the child's ready byte; false if it exited first.
    bool ready() {
        char c;
        return ::read(ready_, &c, 1) == 1;
    }
    /// Lets the child exit. A byte rather than EOF: later children inherit
    /// the write end across fork.
    void release() {
        if (go_ >= 0) {
            (void)!::write(go_, "g", 1);
            ::close(go_);
        }
        go_ = -1;
    }
    void kill() { ::kill(pid_, SIGKILL); }
    int wait() {
        if (pid_ <= 0) return status_;
        int st = 0;
        while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
        }
        pid_ = 0;
        status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        return status_;
    }

private:
    pid_t pid_ = 0;
    int ready_ = -1, go_ = -1, status_ = -1;
};

/// Runs `body` (no arguments, returning an int) in a child process to its
/// end: the child's exit status, `body`'s value (99 if it threw).
template <class F>
int run_in_child(F body) {
    child c([&](int) { return body(); });
    c.release();
    return c.wait();
}

/// A child that holds the lock on `p` through the library until released.
inline child hold_in_child(const fs::path& p, filelock::lock_options opts = {}) {
    return child([p, opts](int ready) {
        filelock::lock_file l(p, opts);
        (void)!::write(ready, "r", 1);
        await_release();
        return 0;
    });
}

#if defined(F_OFD_SETLK)
/// An OFD lock (F_OFD_SETLK, `type`) of [start, start + length) on `fd`, as
/// another program (flock(1) --fcntl, lckpwdf) takes it: 0, or the errno.
inline int raw_ofd_lock(int fd, short type, off_t start, off_t length) {
    struct ::flock lk {};
    lk.l_type = type;
    lk.l_whence = SEEK_SET;
    lk.l_start = start;
    lk.l_len = length;
    return ::fcntl(fd, F_OFD_SETLK, &lk) == 0 ? 0 : errno;
}

/// A child process that tries F_OFD_SETLK (`type`) on one byte of `p`, and
/// exits 0 (won), 1 (contention: EAGAIN/EACCES) or 2 (another error).
inline int probe_in_child(const fs::path& p, short type, off_t start) {
    return run_in_child([&] {
        const int fd = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) return 2;
        const int err = raw_ofd_lock(fd, type, start, 1);
        ::close(fd);
        return err == 0 ? 0 : (err == EAGAIN || err == EACCES) ? 1 : 2;
    });
}

/// A child process that holds F_OFD_SETLK (`type`) on one byte of `p` until
/// released.
inline child hold_byte_in_child(const fs::path& p, short type, off_t start) {
    return child([p, type, start](int ready) {
        const int fd = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0 || raw_ofd_lock(fd, type, start, 1) != 0) return 2;
        (void)!::write(ready, "r", 1);
        await_release();
        return 0;
    });
}
#endif

/// What an async_lock's callback delivered (Asio's or libuv's).
struct async_outcome {
    bool called = false;
    std::error_code ec;
    filelock::lock_file lock;
};

/// A completion handler that fills `out`.
inline auto capture(async_outcome& out) {
    return [&out](std::error_code ec, filelock::lock_file l) {
        out.called = true;
        out.ec = ec;
        out.lock = std::move(l);
    };
}

/// A spawned program with its stdin and stdout on pipes.
class program {
public:
    explicit program(std::vector<std::string> argv) {
        int in[2], out[2];
        REQUIRE(::pipe2(in, O_CLOEXEC) == 0);
        REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, in[0], 0);
        posix_spawn_file_actions_adddup2(&fa, out[1], 1);
        std::vector<char*> args;
        for (auto& a : argv) args.push_back(a.data());
        args.push_back(nullptr);
        portable::default_signals sig;
        const int rc = ::posix_spawnp(&pid_, args[0], &fa, &sig.attr, args.data(), environ);
        posix_spawn_file_actions_destroy(&fa);
        ::close(in[0]);
        ::close(out[1]);
        in_ = in[1];
        out_ = out[0];
        REQUIRE(rc == 0);
    }
    ~program() {
        close_stdin();
        wait();
        ::close(out_);
    }
    /// A line of its stdout; what came before EOF, or before 20 s without
    /// output (a test fails fast rather than waiting for meson's timeout).
    std::string read_line() {
        std::string line;
        char c;
        pollfd pfd{out_, POLLIN, 0};
        while (::poll(&pfd, 1, 20000) == 1 && ::read(out_, &c, 1) == 1 && c != '\n') line += c;
        return line;
    }
    void close_stdin() {
        if (in_ >= 0) ::close(in_);
        in_ = -1;
    }
    pid_t pid() const noexcept { return pid_; }
    /// The write end of its stdin (a forked child closes its copy, or the
    /// program never sees EOF while the child lives).
    int stdin_handle() const noexcept { return in_; }
    int wait() {
        if (pid_ <= 0) return status_;
        int st = 0;
        while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
        }
        pid_ = 0;
        status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        return status_;
    }

private:
    pid_t pid_ = 0;
    int in_ = -1, out_ = -1, status_ = -1;
};

/// Runs a command to completion; returns its exit status and fills `err`
/// with what it wrote to stderr.
inline int run(std::vector<std::string> argv, std::string* err = nullptr) {
    int errp[2];
    REQUIRE(::pipe2(errp, O_CLOEXEC) == 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, errp[1], 2);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    pid_t pid = 0;
    portable::default_signals sig;
    const int rc = ::posix_spawnp(&pid, args[0], &fa, &sig.attr, args.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    ::close(errp[1]);
    REQUIRE(rc == 0);
    std::string text;
    char buf[256];
    ssize_t n;
    while ((n = ::read(errp[0], buf, sizeof buf)) > 0) text.append(buf, static_cast<size_t>(n));
    ::close(errp[0]);
    int st = 0;
    while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    if (err) *err = text;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/// The Python interpreter that has Debian's python3-zc.lockfile.
inline std::string python() {
    const char* p = std::getenv("FILELOCK_TEST_PYTHON");
    return p ? p : "/usr/bin/python3";
}

inline std::string filelock_run_path() {
    const char* p = std::getenv("FILELOCK_RUN");
    REQUIRE(p != nullptr);
    return p;
}

}  // namespace test
