// SPDX-License-Identifier: MIT
#pragma once

// What the tests that run on every platform (test_portable.cpp,
// test_win32.cpp) need from the system: a scratch directory, child
// processes (this test program itself, or filelock-run) with their pid and
// exit code, handles left open on a file, tests that cannot run here.

#include <filelock/options.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#if defined(_WIN32)
#include "../tools/win32/command_line.hpp"

#include <windows.h>
#else
#include <dirent.h>
#include <csignal>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>
extern char** environ;
#endif

namespace portable {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

#if !defined(_WIN32)
/// Spawn attributes that give the child default signal dispositions and an
/// empty signal mask. Ignored signals are inherited across exec: a suite
/// started by `nohup` or a script's `cmd &` (SIGHUP, SIGINT, SIGQUIT
/// ignored) would otherwise give its helpers signals they cannot catch.
struct default_signals {
    posix_spawnattr_t attr;
    default_signals() {
        posix_spawnattr_init(&attr);
        sigset_t all, none;
        sigfillset(&all);
        sigemptyset(&none);
        posix_spawnattr_setsigdefault(&attr, &all);
        posix_spawnattr_setsigmask(&attr, &none);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
    }
    ~default_signals() { posix_spawnattr_destroy(&attr); }
    default_signals(const default_signals&) = delete;
    default_signals& operator=(const default_signals&) = delete;
};
#endif

inline long long this_pid() {
#if defined(_WIN32)
    return static_cast<long long>(::GetCurrentProcessId());
#else
    return static_cast<long long>(::getpid());
#endif
}

/// A fresh directory, removed afterwards.
struct scratch {
    fs::path dir;
    scratch() {
        static std::atomic<unsigned> n{0};
        std::random_device rd;
        dir =
            fs::temp_directory_path() / ("filelock-test-" + std::to_string(this_pid()) + "-" +
                                         std::to_string(n++) + "-" + std::to_string(rd() % 100000));
        fs::create_directories(dir);
    }
    ~scratch() {
        std::error_code ec;
        fs::remove_all(dir, ec);
    }
    fs::path operator/(const std::string& name) const { return dir / name; }
};

inline std::string read_file(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

inline void write_file(const fs::path& p, const std::string& s) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out << s;
}

/// Options of a lock with `n` holders (lock_options::slots), the rest default.
inline filelock::lock_options slots(unsigned n) {
    filelock::lock_options o;
    o.slots = n;
    return o;
}

/// Waits (polling) until `p` exists; false after `limit`.
inline bool wait_for_file(const fs::path& p, std::chrono::milliseconds limit = 30000ms) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (!fs::exists(p)) {
        if (std::chrono::steady_clock::now() > end) return false;
        std::this_thread::sleep_for(5ms);
    }
    return true;
}

/// Whether no handle (Windows) or descriptor (POSIX) of this process is
/// open on `p`. Windows: an open that shares nothing succeeds only then (a
/// check wine keeps, where GetProcessHandleCount is always 0).
inline bool nothing_open_on(const fs::path& p) {
#if defined(_WIN32)
    const HANDLE h = ::CreateFileW(p.c_str(), GENERIC_READ, 0, nullptr, OPEN_EXISTING,
                                   FILE_ATTRIBUTE_NORMAL, nullptr);
    if (h == INVALID_HANDLE_VALUE) return false;
    ::CloseHandle(h);
    return true;
#else
    const fs::path target = fs::canonical(p);
    for (const auto& e : fs::directory_iterator("/proc/self/fd")) {
        std::error_code ec;
        if (fs::read_symlink(e.path(), ec) == target) return false;
    }
    return true;
#endif
}

/// Makes `link` a symbolic link to the file `target`; false (with the
/// reason) where links cannot be made: Windows without the privilege or
/// developer mode, and wine, whose CreateSymbolicLinkW makes nothing.
inline bool make_symlink(const fs::path& target, const fs::path& link, std::string& why) {
#if defined(_WIN32)
    // libstdc++'s create_symlink is not implemented on mingw-w64.
    if (!::CreateSymbolicLinkW(link.c_str(), target.c_str(),
                               SYMBOLIC_LINK_FLAG_ALLOW_UNPRIVILEGED_CREATE)) {
        why = "CreateSymbolicLinkW failed with error " + std::to_string(::GetLastError());
        return false;
    }
    const DWORD attrs = ::GetFileAttributesW(link.c_str());
    if (attrs == INVALID_FILE_ATTRIBUTES || !(attrs & FILE_ATTRIBUTE_REPARSE_POINT)) {
        why = "CreateSymbolicLinkW succeeded but made no link (wine)";
        return false;
    }
    return true;
#else
    std::error_code ec;
    fs::create_symlink(target, link, ec);
    why = ec.message();
    return !ec;
#endif
}

/// This test program's own path (set by main).
inline fs::path& self() {
    static fs::path p;
    return p;
}

/// A child process; its stderr goes to `err_file` when given.
class process {
public:
    explicit process(const std::vector<std::string>& args, const fs::path& err_file = {}) {
#if defined(_WIN32)
        std::wstring line;
        for (const auto& a : args) cli::append_argument(line, fs::path(a).wstring());
        STARTUPINFOW si{};
        si.cb = sizeof si;
        HANDLE err = INVALID_HANDLE_VALUE;
        if (!err_file.empty()) {
            SECURITY_ATTRIBUTES sa{sizeof sa, nullptr, TRUE};
            err = ::CreateFileW(err_file.c_str(), GENERIC_WRITE, FILE_SHARE_READ | FILE_SHARE_WRITE,
                                &sa, CREATE_ALWAYS, FILE_ATTRIBUTE_NORMAL, nullptr);
            si.dwFlags = STARTF_USESTDHANDLES;
            si.hStdInput = ::GetStdHandle(STD_INPUT_HANDLE);
            si.hStdOutput = ::GetStdHandle(STD_OUTPUT_HANDLE);
            si.hStdError = err;
        }
        PROCESS_INFORMATION pi{};
        const BOOL ok =
            ::CreateProcessW(nullptr, line.data(), nullptr, nullptr, err != INVALID_HANDLE_VALUE, 0,
                             nullptr, nullptr, &si, &pi);
        if (err != INVALID_HANDLE_VALUE) ::CloseHandle(err);
        REQUIRE(ok);
        ::CloseHandle(pi.hThread);
        handle_ = pi.hProcess;
        pid_ = pi.dwProcessId;
#else
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        if (!err_file.empty())
            posix_spawn_file_actions_addopen(&fa, 2, err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                             0644);
        std::vector<std::string> copy = args;
        std::vector<char*> argv;
        for (auto& a : copy) argv.push_back(a.data());
        argv.push_back(nullptr);
        pid_t pid = 0;
        default_signals sig;
        const int rc = ::posix_spawnp(&pid, argv[0], &fa, &sig.attr, argv.data(), environ);
        posix_spawn_file_actions_destroy(&fa);
        REQUIRE(rc == 0);
        pid_ = pid;
#endif
    }
    process(const process&) = delete;
    process& operator=(const process&) = delete;
    ~process() { wait(); }

    long long pid() const noexcept { return pid_; }

    /// Kills it at once (TerminateProcess, SIGKILL).
    void kill() {
#if defined(_WIN32)
        ::TerminateProcess(handle_, 137);
#else
        ::kill(static_cast<pid_t>(pid_), SIGKILL);
#endif
    }

    /// Its exit code (128 + signal on POSIX).
    int wait() {
        if (done_) return status_;
        done_ = true;
#if defined(_WIN32)
        ::WaitForSingleObject(handle_, INFINITE);
        DWORD code = 0;
        ::GetExitCodeProcess(handle_, &code);
        ::CloseHandle(handle_);
        status_ = static_cast<int>(code);
#else
        int st = 0;
        while (::waitpid(static_cast<pid_t>(pid_), &st, 0) < 0 && errno == EINTR) {
        }
        status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
#endif
        return status_;
    }

private:
#if defined(_WIN32)
    HANDLE handle_ = nullptr;
#endif
    long long pid_ = 0;
    bool done_ = false;
    int status_ = -1;
};

/// Runs to completion; the exit code, and stderr in `err`.
inline int run(const std::vector<std::string>& args, std::string* err = nullptr) {
    scratch s;
    int status;
    {
        process p(args, s / "stderr");
        status = p.wait();
    }
    if (err) *err = read_file(s / "stderr");
    return status;
}

/// Whether the process `pid` still runs.
inline bool alive(long long pid) {
#if defined(_WIN32)
    const HANDLE h = ::OpenProcess(SYNCHRONIZE, FALSE, static_cast<DWORD>(pid));
    if (!h) return false;
    const bool running = ::WaitForSingleObject(h, 0) == WAIT_TIMEOUT;
    ::CloseHandle(h);
    return running;
#else
    return ::kill(static_cast<pid_t>(pid), 0) == 0;
#endif
}

/// filelock-run's path (FILELOCK_RUN).
inline std::string filelock_run() {
    const char* p = std::getenv("FILELOCK_RUN");
    REQUIRE(p != nullptr);
    return p;
}

/// A test that cannot run in this environment: said ("NOT RUN: ..." in
/// Catch's output, which .ci/summarize.py counts as skipped), never passed.
inline std::atomic<int>& not_run() {
    static std::atomic<int> n{0};
    return n;
}
inline void cannot_run(const std::string& why) {
    ++not_run();
    WARN("NOT RUN: " << why);
}

}  // namespace portable
