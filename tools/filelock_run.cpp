// SPDX-License-Identifier: MIT
// filelock-run: run a command while holding a lock file; a drop-in for
// util-linux flock(1) with additions (content, the holder in messages).
//
//   filelock-run [options] LOCKFILE|DIRECTORY COMMAND [ARGS...]
//   filelock-run [options] LOCKFILE|DIRECTORY -c COMMAND-STRING
//   filelock-run [options] FD
//
// The lock's lifetime, as flock(1)'s: COMMAND inherits the locked descriptor
// and keeps the lock until it (and everything it spawned with the
// descriptor) exits, even if filelock-run itself is killed; -o closes it
// before COMMAND runs. While COMMAND runs, signals sent to filelock-run with
// kill(2) (TERM, INT, HUP, QUIT, USR1, USR2) are forwarded to COMMAND and
// filelock-run goes on waiting for it; those a terminal sends reach COMMAND
// through the process group and are not sent twice. The man page
// (doc/filelock-run.1) has the details and the exit statuses.

#include <filelock/detail/acquire.hpp>
#include <filelock/detail/file_backend.hpp>
#include <filelock/lock_file.hpp>

#include "../src/sync/driver.hpp"
#if FILELOCK_RUN_ETCD
#include "cli.hpp"
#include "etcd_mode.hpp"
#endif

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <string>
#include <string_view>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace {

using namespace cli;

// --lost-signal's name or number (default TERM).
int signal_number(const std::string& v) {
    if (v.empty()) return SIGTERM;
    for (auto [n, sig] : {std::pair{"TERM", SIGTERM},
                          {"INT", SIGINT},
                          {"HUP", SIGHUP},
                          {"KILL", SIGKILL},
                          {"QUIT", SIGQUIT},
                          {"USR1", SIGUSR1},
                          {"USR2", SIGUSR2}})
        if (v == n || v == std::string("SIG") + n) return sig;
    int sig = 0;
    if (!parse_int(v.c_str(), 1, 64, sig)) usage_error("invalid --lost-signal: '" + v + "'");
    return sig;
}

// The signals forwarded to COMMAND while it runs (and SIGCHLD, which ends the
// wait): blocked in filelock-run, received with sigwaitinfo.
sigset_t run_signals() {
    sigset_t set;
    sigemptyset(&set);
    for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCHLD})
        sigaddset(&set, sig);
    return set;
}

// Waits for `child`, forwarding the signals sent to us; returns its status
// the way flock(1) does.
int wait_forwarding(pid_t child, const sigset_t& set) {
    for (;;) {
        int status = 0;
        const pid_t r = ::waitpid(child, &status, WNOHANG);
        if (r == child) {
            if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
            return WEXITSTATUS(status);
        }
        if (r < 0 && errno != EINTR) {
            std::fprintf(stderr, "filelock-run: waitpid: %s\n", std::strerror(errno));
            return ex_oserr;
        }
        siginfo_t info{};
        if (::sigwaitinfo(&set, &info) < 0) continue;  // EINTR: look again
        if (info.si_signo == SIGCHLD) continue;
        // Sent by a process (kill(1), a supervisor): COMMAND gets it too.
        // Sent by the kernel (a terminal's ^C, ^\): COMMAND got it already.
        if (info.si_code <= 0) ::kill(child, info.si_signo);
    }
}

[[noreturn]] void exec_command(char** argv) {
    ::execvp(argv[0], argv);
    const int err = errno;
    std::fprintf(stderr, "filelock-run: failed to execute %s: %s\n", argv[0], std::strerror(err));
    ::_exit(err == ENOMEM ? ex_oserr : ex_unavailable);
}

// Runs COMMAND as flock(1) does; `fd` is the locked descriptor, handed to
// COMMAND unless `close_fd`.
int run(char** argv, int fd, bool close_fd, bool no_fork, bool verbose) {
    if (verbose) std::fprintf(stderr, "filelock-run: executing %s\n", argv[0]);
    if (no_fork) {
        if (fd >= 0) ::fcntl(fd, F_SETFD, 0);  // the lock stays with the command
        exec_command(argv);
    }
    // Inherited SIG_IGN for SIGCHLD would reap COMMAND behind our back.
    ::signal(SIGCHLD, SIG_DFL);
    const sigset_t set = run_signals();
    sigset_t old;
    ::sigprocmask(SIG_BLOCK, &set, &old);
    const pid_t child = ::fork();
    if (child < 0) {
        std::fprintf(stderr, "filelock-run: cannot fork: %s\n", std::strerror(errno));
        return ex_oserr;
    }
    if (child == 0) {
        ::sigprocmask(SIG_SETMASK, &old, nullptr);
        // The descriptor is close-on-exec: clearing that hands the lock to
        // COMMAND, which keeps it for as long as it lives.
        if (fd >= 0 && !close_fd) ::fcntl(fd, F_SETFD, 0);
        exec_command(argv);
    }
    return wait_forwarding(child, set);
}

// The exit status for a lock file that could not be opened or locked, as
// flock(1) reports it.
int open_failure_status(std::error_code ec) {
    if (ec.category() != std::system_category()) return ex_noinput;
    switch (ec.value()) {
        case ENOMEM:
        case EMFILE:
        case ENFILE:
        case ENOLCK: return ex_oserr;
        case EROFS:
        case ENOSPC: return ex_cantcreat;
        default: return ex_noinput;
    }
}

// One lock on a descriptor we do not manage as a lock file (the FD form, a
// directory): flock(2) attempts, run by the acquire state machine with the
// backoff alone (no release watch, no local queue: the descriptor is the
// caller's).
struct fd_backend {
    int fd;
    int op;
    static constexpr filelock::detail::clock::duration quick_retries[] = {
        filelock::detail::clock::duration::zero()};
    std::error_code try_acquire() noexcept {
        while (::flock(fd, op | LOCK_NB) != 0) {
            if (errno == EINTR) continue;
            if (errno == EWOULDBLOCK) return filelock::errc::locked;
            return {errno, std::system_category()};
        }
        return {};
    }
    std::error_code on_reply(std::error_code) noexcept { return filelock::errc::locked; }
    void drop_file() noexcept {}
    void release_won() noexcept { ::flock(fd, LOCK_UN); }
    bool won_inherited() const noexcept { return false; }
    bool identity(filelock::detail::lock_identity&) const noexcept { return false; }
    bool wake_on_release() const noexcept { return false; }
    bool queues() const noexcept { return false; }
};

std::error_code lock_descriptor(int fd, int op, std::chrono::nanoseconds timeout) {
    if (timeout == filelock::wait_forever) {  // woken by the kernel, as flock(1) is
        while (::flock(fd, op) != 0)
            if (errno != EINTR) return {errno, std::system_category()};
        return {};
    }
    filelock::detail::acquire<fd_backend> acq(
        fd_backend{fd, op}, timeout, filelock::backoff_policy{}, filelock::detail::random_seed());
    return filelock::detail::run_sync(acq, {}, op == LOCK_SH);
}

// Whether LOCKFILE may get content: it does not exist yet, or it is a
// non-executable regular file that is empty or holds a lock holder's line.
// Anything else (a script, a program, a data file, a symbolic link, a pseudo
// file) is locked read-only and never written, as flock(1) locks it: a
// writable descriptor would even keep a script from being executed
// (ETXTBSY), which flock(1)'s self-locking idiom does. The library checks
// again under the lock.
bool may_write(const char* path) {
    struct ::stat st {};
    if (::lstat(path, &st) != 0) return errno == ENOENT;
    if (!S_ISREG(st.st_mode) || (st.st_mode & 0111) != 0) return false;
    if (st.st_size == 0) return true;
    const int fd = ::open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) return true;  // the lock attempt reports why
    char buf[1025];
    const ssize_t n = ::pread(fd, buf, sizeof buf, 0);
    ::close(fd);
    return n >= 0 &&
           filelock::detail::is_holder_line(std::string_view(buf, static_cast<std::size_t>(n)));
}

}  // namespace

int main(int argc, char** argv) {
    using namespace std::chrono;
    command_line cl;
    if (auto status = parse(argc, argv, cl)) return *status;
    filelock::lock_options& options = cl.options;
    const char* target = cl.target;
    const nanoseconds timeout = cl.timeout;
    const int shared_op = options.mode == filelock::lock_mode::shared ? LOCK_SH : LOCK_EX;
    std::vector<char*> command = cl.command;
    const char* shell = std::getenv("SHELL");
    char dash_c[] = "-c";
    if (cl.shell_command)
        command = {const_cast<char*>(shell && *shell ? shell : "/bin/sh"), dash_c,
                   const_cast<char*>(cl.shell_command)};
    if (!command.empty()) command.push_back(nullptr);

    if (std::string_view(target).rfind("etcd://", 0) == 0) {
#if FILELOCK_RUN_ETCD
        if (command.empty()) usage_error("an etcd lock needs a command to run");
        if (options.mode == filelock::lock_mode::shared)
            usage_error("etcd locks are exclusive (no --shared)");
        if (cl.unlock) usage_error("--unlock applies to a file descriptor");
        if (cl.no_fork) usage_error("--no-fork cannot keep an etcd lease alive");
        etcd_mode::options eo;
        eo.timeout = timeout;
        eo.nonblock = cl.nonblock;
        eo.verbose = cl.verbose;
        eo.simple = cl.simple;
        eo.conflict_code = cl.conflict_code;
        eo.lost_signal = signal_number(cl.lost_signal);
        eo.ttl = seconds(cl.etcd_ttl);
        eo.content = cl.have_content ? cl.content_arg : std::string();
        eo.cacert = cl.etcd_cacert;
        eo.cert = cl.etcd_cert;
        eo.key = cl.etcd_key;
        eo.user = cl.etcd_user;
        return etcd_mode::run(eo, target, command.data());
#else
        usage_error("this filelock-run was built without etcd support");
#endif
    }
    if (cl.etcd_option) usage_error("etcd options apply to an etcd:// target");

    const auto started = steady_clock::now();

    // The file descriptor form: `( filelock-run -n 9 || exit 1; ... ) 9>FILE`.
    if (command.empty()) {
        int fd = -1;
        if (!parse_int(target, 0, 1 << 30, fd))
            usage_error(std::string("bad file descriptor: '") + target + "'");
        if (cl.unlock) {
            if (::flock(fd, LOCK_UN) != 0) {
                std::fprintf(stderr, "filelock-run: %d: %s\n", fd, std::strerror(errno));
                return ex_dataerr;
            }
            return 0;
        }
        const std::error_code ec = lock_descriptor(fd, shared_op, timeout);
        if (ec == filelock::errc::timeout) return report_conflict(cl, {});
        if (ec) {
            std::fprintf(stderr, "filelock-run: %d: %s\n", fd, ec.message().c_str());
            return ec == std::errc::no_lock_available ? ex_oserr : ex_dataerr;
        }
        report_took(cl, started);
        return 0;
    }

    if (!may_write(target)) options.write_content = false;
    std::error_code ec;
    filelock::lock_file held = filelock::lock(target, timeout, options, ec);
    if (ec == filelock::errc::symlink_not_followed || ec == filelock::errc::pseudo_file) {
        // Content is never written through a symbolic link nor to a pseudo
        // file; flock(1) would lock it, so lock it without content.
        options.write_content = false;
        held = filelock::lock(target, timeout, options, ec);
    }
    int dir_fd = -1;
    if (ec == std::errc::is_a_directory) {
        // flock(1) locks directories too (read-only, nothing written).
        dir_fd = ::open(target, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOCTTY);
        if (dir_fd < 0) {
            ec = {errno, std::system_category()};
        } else {
            ec = lock_descriptor(dir_fd, shared_op, timeout);
        }
    }
    if (ec == filelock::errc::timeout)
        return report_conflict(
            cl, dir_fd >= 0 ? std::string() : printable(filelock::read_holder(target)));
    if (ec == filelock::errc::invalid_template)
        usage_error("invalid --content template '" + cl.content_arg + "'");
    if (ec) {
        std::fprintf(stderr, "filelock-run: cannot open lock file %s: %s\n", target,
                     ec.message().c_str());
        return open_failure_status(ec);
    }
    report_took(cl, started);
    const int status = run(command.data(), dir_fd >= 0 ? dir_fd : held.native_handle(), cl.close_fd,
                           cl.no_fork, cl.verbose);
    // Released when this process exits; COMMAND's copy (unless -o) closes
    // when it does. A lock copied by fork() is released by closing only.
    return status;
}
