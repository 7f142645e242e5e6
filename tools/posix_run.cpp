// SPDX-License-Identifier: MIT
// Running COMMAND on POSIX (see posix_run.hpp).
#include "posix_run.hpp"

#include "cli.hpp"

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

namespace posix_run {

sigset_t forwarded_signals() {
    sigset_t set;
    sigemptyset(&set);
    for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCHLD})
        sigaddset(&set, sig);
    return set;
}

namespace {

// Whether COMMAND should lead a group of its own (see child::own_group).
bool wants_own_group() {
    if (::getpgrp() == ::getpid()) return false;  // a shell's job, setsid
    const int tty = ::open("/dev/tty", O_RDONLY | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
    if (tty < 0) return true;  // no terminal: cron, CI, services
    const bool foreground = ::tcgetpgrp(tty) == ::getpgrp();
    ::close(tty);
    return !foreground;
}

}  // namespace

[[noreturn]] void exec_command(char** argv) {
    ::execvp(argv[0], argv);
    const int err = errno;
    // No allocation: the child of a threaded filelock-run (etcd mode) may
    // not call malloc.
    std::fprintf(stderr, "%s: failed to execute %s: %s\n", cli::program_name(), argv[0],
                 std::strerror(err));
    ::_exit(err == ENOMEM ? cli::ex_oserr : cli::ex_unavailable);
}

child spawn(char** argv, const spawn_options& o) {
    child c;
    c.own_group = wants_own_group();
    const pid_t parent = ::getpid();
    c.pid = ::fork();
    if (c.pid != 0) {
        // Set on both sides: no signal finds COMMAND in the old group once
        // either has run.
        if (c.pid > 0 && c.own_group) ::setpgid(c.pid, c.pid);
        return c;
    }
    if (c.own_group) ::setpgid(0, 0);
#ifdef __linux__
    if (o.die_with_parent) {
        // SIGKILL, not a signal COMMAND could trap: it must not run on past
        // the lease. The parent may have died before the prctl.
        if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || ::getppid() != parent)
            ::_exit(cli::ex_oserr);
    }
#else
    (void)parent;
#endif
    if (o.mask) ::sigprocmask(SIG_SETMASK, o.mask, nullptr);
    // The descriptor is close-on-exec: clearing that hands the lock to
    // COMMAND, which keeps it for as long as it lives.
    if (o.keep_fd >= 0) ::fcntl(o.keep_fd, F_SETFD, 0);
    if (o.close_fd >= 0) ::close(o.close_fd);
    exec_command(argv);
}

void forward(child& c, const siginfo_t& info) {
    const int sig = info.si_signo;
    if (sig == SIGCHLD) return;
    if (!c.own_group) {
        // Sent by a process (kill(1), a supervisor): COMMAND gets it too.
        // Sent by the kernel (a terminal's ^C, ^\): COMMAND got it already.
        if (info.si_code <= 0) ::kill(c.pid, sig);
        c.signal = sig;
        return;
    }
    // A copy of the same signal that follows within 20 ms is the same
    // event (timeout(1) signals its child, then its group): taken here, so
    // that COMMAND's group gets it once.
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, sig);
    const timespec window{0, 20 * 1000 * 1000};
    siginfo_t more{};
    while (::sigtimedwait(&one, &more, &window) == sig) {
    }
    ::kill(-c.pid, sig);
    c.signal = sig;
}

int status_of(int wait_status) {
    if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
    if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
    return cli::ex_oserr;
}

int finish(const child& c, int wait_status) {
    if (!WIFSIGNALED(wait_status) || WTERMSIG(wait_status) != c.signal)
        return status_of(wait_status);
    return die_of(c.signal);
}

int die_of(int sig) {
    std::fflush(stdout);
    std::fflush(stderr);
    const rlimit no_core{0, 0};
    ::setrlimit(RLIMIT_CORE, &no_core);  // COMMAND's death, not ours to dump
    ::signal(sig, SIG_DFL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    ::sigprocmask(SIG_UNBLOCK, &set, nullptr);
    ::raise(sig);
    return 128 + sig;  // a signal that does not end a process by default
}

}  // namespace posix_run
