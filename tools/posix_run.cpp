// SPDX-License-Identifier: MIT
// Running COMMAND on POSIX (see posix_run.hpp).
#include "posix_run.hpp"

#include "cli.hpp"
#include "keeper.hpp"

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <pthread.h>
#include <string>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

namespace posix_run {

std::vector<char*> command_argv(const cli::command_line& cl) {
    std::vector<char*> command = cl.command;
    static char dash_c[] = "-c";
    if (cl.shell_command) {
        const char* shell = std::getenv("SHELL");
        command = {const_cast<char*>(shell && *shell ? shell : "/bin/sh"), dash_c,
                   const_cast<char*>(cl.shell_command)};
    }
    if (!command.empty()) command.push_back(nullptr);
    return command;
}

sigset_t forwarded_signals() {
    sigset_t set;
    sigemptyset(&set);
    for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGTSTP}) {
        // One the caller ignores (nohup, trap '' SIG, a background job's
        // SIGINT) stays ignored, as it does for flock(1): never taken nor
        // forwarded, and COMMAND inherits it ignored.
        struct sigaction now {};
        if (::sigaction(sig, nullptr, &now) == 0 && now.sa_handler == SIG_IGN) continue;
        sigaddset(&set, sig);
    }
    sigaddset(&set, SIGCHLD);
    return set;
}

namespace {

// The controlling terminal, if filelock-run has one (-1 otherwise).
int controlling_terminal() {
    return ::open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
}

// Gives the terminal's foreground to `group` (filelock-run may be in the
// background then: SIGTTOU is blocked while it runs COMMAND).
void give_terminal(int tty, pid_t group) {
    while (::tcsetpgrp(tty, group) != 0 && errno == EINTR) {
    }
}

// COMMAND stopped with `sig` while filelock-run has a terminal: relayed as a
// shell relays a stop (see child).
void relay_stop(child& c, int sig) {
    const pid_t own = ::getpgrp();
    if (::tcgetpgrp(c.tty) == c.group) give_terminal(c.tty, own);
    stop_like(sig);
    // fg gave the terminal to filelock-run's group; bg did not.
    if (::tcgetpgrp(c.tty) == own) {
        give_terminal(c.tty, c.group);
        c.had_terminal = true;
    }
    ::kill(-c.group, SIGCONT);
    if (c.pid != c.group) ::kill(c.pid, SIGCONT);
}

}  // namespace

void stop_like(int sig) {
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, sig);
    const timespec now{0, 0};
    // Earlier copies (a SIGTSTP sent to filelock-run, already forwarded)
    // must not stop it a second time.
    while (sig != SIGSTOP && ::sigtimedwait(&one, nullptr, &now) == sig) {
    }
    struct sigaction dfl {
    }, old{};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    ::sigaction(sig, &dfl, &old);
    // To this thread (etcd mode has another, which might take a signal sent
    // to the process later, when this one already went on): pending while
    // blocked, delivered once, here.
    ::raise(sig);
    ::pthread_sigmask(SIG_UNBLOCK, &one, nullptr);
    ::pthread_sigmask(SIG_BLOCK, &one, nullptr);
    ::sigaction(sig, &old, nullptr);
}

[[noreturn]] void exec_command(char** argv) {
    ::execvp(argv[0], argv);
    const int err = errno;
    // No allocation: the child of a threaded filelock-run (etcd mode) may
    // not call malloc.
    std::fprintf(stderr, "%s: failed to execute %s: %s\n", cli::program_name(), argv[0],
                 std::strerror(err));
    ::_exit(err == ENOMEM ? cli::ex_oserr : cli::ex_unavailable);
}

namespace {

// COMMAND's side of the fork: its own group (with the terminal's foreground
// if filelock-run's group has it), then exec. `parent`: the process whose
// death kills it with die_with_parent.
[[noreturn]] void exec_in_child(char** argv, const spawn_options& o, int tty, bool foreground,
                                pid_t parent) {
    ::setpgid(0, 0);
    if (foreground) give_terminal(tty, ::getpid());
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

#ifdef __linux__
bool read_message(int fd, keeper::message& m) {
    for (;;) {
        const ssize_t n = ::read(fd, &m, sizeof m);
        if (n == static_cast<ssize_t>(sizeof m)) return true;
        if (n < 0 && errno == EINTR) continue;
        return false;
    }
}

// filelock-run -> keeper -> COMMAND (see keeper.hpp).
void spawn_kept(char** argv, const spawn_options& o, child& c, bool foreground) {
    int life[2], report[2];
    if (::pipe2(life, O_CLOEXEC) != 0) return;
    if (::pipe2(report, O_CLOEXEC) != 0) {
        ::close(life[0]);
        ::close(life[1]);
        return;
    }
    // What the keeper adopted comes to filelock-run if the keeper is killed.
    ::prctl(PR_SET_CHILD_SUBREAPER, 1);
    const std::string program = keeper::program_path();
    c.pid = ::fork();
    if (c.pid == 0) {
        ::close(life[1]);
        ::close(report[0]);
        ::setpgid(0, 0);  // neither filelock-run's group nor COMMAND's
        ::prctl(PR_SET_CHILD_SUBREAPER, 1);
        const pid_t keeper_pid = ::getpid();
        const pid_t command = ::fork();
        if (command == 0) exec_in_child(argv, o, c.tty, foreground, keeper_pid);
        const int fork_error = command > 0 ? 0 : errno;
        // COMMAND's group exists before filelock-run hears of it (COMMAND
        // also makes it, first thing, but may not have run yet): a signal
        // sent to the group at once (the lost signal, a loss seen as COMMAND
        // starts; a forwarded one) found no such group and was dropped.
        if (command > 0) ::setpgid(command, command);
        keeper::report_started(report[1], command > 0 ? command : -fork_error);
        if (command > 0)
            keeper::exec_program(program.c_str(), life[0], report[1], command, o.deadline);
        keeper::run(life[0], report[1], command > 0 ? command : -fork_error, o.deadline);
    }
    const int fork_errno = errno;
    ::close(life[0]);
    ::close(report[1]);
    keeper::message m{};
    if (c.pid > 0 && read_message(report[0], m) && m.kind == keeper::message::started &&
        m.value > 0) {
        c.group = m.value;
        c.life = life[1];
        c.report = report[0];
        ::fcntl(c.report, F_SETFL, O_NONBLOCK);
        ::fcntl(c.life, F_SETFL, O_NONBLOCK);
        if (foreground) {
            give_terminal(c.tty, c.group);
            c.had_terminal = true;
        }
        return;
    }
    if (c.pid > 0) {
        ::waitpid(c.pid, nullptr, 0);
        errno = m.kind == keeper::message::started && m.value < 0 ? -m.value : EAGAIN;
    } else {
        errno = fork_errno;
    }
    c.pid = -1;
    ::close(life[1]);
    ::close(report[0]);
}

// The keeper's reports so far: relays COMMAND's stops; true once it said
// how COMMAND ended.
bool keeper_reports(child& c, int& wait_status) {
    keeper::message m{};
    while (read_message(c.report, m)) {
        if (m.kind == keeper::message::exited || m.kind == keeper::message::expired) {
            wait_status = m.value;
            c.expired = m.kind == keeper::message::expired;
            return true;
        }
        if (m.kind == keeper::message::stopped && c.tty >= 0) relay_stop(c, m.value);
    }
    return false;
}
#endif

}  // namespace

child spawn(char** argv, const spawn_options& o) {
    child c;
    c.tty = controlling_terminal();
    const bool foreground = c.tty >= 0 && ::tcgetpgrp(c.tty) == ::getpgrp();
    if (c.tty >= 0) {
        // Handing the terminal over and back is done from the background.
        sigset_t ttou;
        sigemptyset(&ttou);
        sigaddset(&ttou, SIGTTOU);
        ::pthread_sigmask(SIG_BLOCK, &ttou, nullptr);
    }
#ifdef __linux__
    if (o.keeper) {
        spawn_kept(argv, o, c, foreground);
        if (c.pid < 0 && c.tty >= 0) {
            ::close(c.tty);
            c.tty = -1;
        }
        return c;
    }
#endif
    const pid_t parent = ::getpid();
    c.pid = ::fork();
    if (c.pid == 0) exec_in_child(argv, o, c.tty, foreground, parent);
    if (c.pid < 0) {
        if (c.tty >= 0) ::close(c.tty);
        c.tty = -1;
        return c;
    }
    // Set on both sides, as shells do: no signal finds COMMAND in
    // filelock-run's group, and it never reads the terminal from the
    // background, whichever side runs first.
    c.group = c.pid;
    ::setpgid(c.pid, c.pid);
    if (foreground) {
        give_terminal(c.tty, c.group);
        c.had_terminal = true;
    }
    return c;
}

bool ended(child& c, int& wait_status) {
    const bool kept = c.report >= 0;
#ifdef __linux__
    if (kept && keeper_reports(c, wait_status)) {
        // The keeper exits right after its last report.
        while (::waitpid(c.pid, nullptr, 0) < 0 && errno == EINTR) {
        }
        return true;
    }
#endif
    for (;;) {
        int status = 0;
        const pid_t w = ::waitpid(c.pid, &status, WNOHANG | (c.tty >= 0 && !kept ? WUNTRACED : 0));
        if (w == 0) return false;
        if (w < 0) {
            if (errno == EINTR) continue;
            cli::warn(std::string("waitpid: ") + std::strerror(errno));
            wait_status = cli::ex_oserr << 8;  // an exit status of 71
            return true;
        }
        if (WIFSTOPPED(status)) {
            relay_stop(c, WSTOPSIG(status));
            continue;
        }
        wait_status = status;
#ifdef __linux__
        if (kept && !keeper_reports(c, wait_status)) {
            // The keeper was killed before COMMAND ended (COMMAND got
            // SIGKILL with it): what it had adopted is ours now.
            keeper::kill_descendants(c.group);
        }
#endif
        return true;
    }
}

void forward(child& c, const siginfo_t& info) {
    const int sig = info.si_signo;
    if (sig == SIGCHLD) return;
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
    ::kill(-c.group, sig);
    if (sig != SIGTSTP) c.signal = sig;
}

int status_of(int wait_status) {
    if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
    if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
    return cli::ex_oserr;
}

int finish(child& c, int wait_status) {
    if (c.report >= 0) ::close(c.report);
    if (c.life >= 0) ::close(c.life);
    c.report = c.life = -1;
    if (c.tty >= 0) {
        // The terminal goes back to filelock-run's group, unless someone
        // (the shell, fg/bg) gave it to another since.
        const pid_t fg = ::tcgetpgrp(c.tty);
        if (c.had_terminal && fg != ::getpgrp() && (fg == c.group || ::kill(-fg, 0) != 0))
            give_terminal(c.tty, ::getpgrp());
        ::close(c.tty);
        c.tty = -1;
    }
    if (!WIFSIGNALED(wait_status)) return status_of(wait_status);
    const int sig = WTERMSIG(wait_status);
    // The terminal's ^C and ^\ reached COMMAND alone (its group had the
    // foreground): a shell that waits for filelock-run must see it too.
    const bool from_terminal = c.had_terminal && (sig == SIGINT || sig == SIGQUIT);
    if (sig != c.signal && !from_terminal) return status_of(wait_status);
    return die_of(sig);
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
