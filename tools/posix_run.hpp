// SPDX-License-Identifier: MIT
#pragma once

// Running COMMAND on POSIX, for lock files and etcd locks alike: its process
// group, the signals forwarded to it, and filelock-run's own end.

#include <csignal>
#include <sys/types.h>

namespace posix_run {

/// The signals forwarded to COMMAND while it runs (and SIGCHLD, which ends a
/// wait): blocked in filelock-run, received with sigwaitinfo.
sigset_t forwarded_signals();

struct child {
    pid_t pid = -1;
    /// COMMAND leads a process group of its own: filelock-run ran inside
    /// another process's group (a script, cron, a CI runner, timeout(1))
    /// that is not a terminal's foreground group. A signal sent to that
    /// group then reaches filelock-run alone, which forwards it once to
    /// COMMAND's group. Otherwise COMMAND shares filelock-run's group (job
    /// control, the terminal's ^C), and only signals sent to filelock-run by
    /// a process are forwarded.
    bool own_group = false;
    /// The last signal forwarded (or received from the terminal), 0 if none.
    int signal = 0;
};

struct spawn_options {
    /// The locked descriptor COMMAND inherits (-1: none).
    int keep_fd = -1;
    /// A descriptor closed in COMMAND (--fd N with -o; -1: none).
    int close_fd = -1;
    /// COMMAND is killed (SIGKILL) when filelock-run dies (etcd: the lease
    /// must not outlive the process that keeps it alive).
    bool die_with_parent = false;
    /// The signal mask COMMAND starts with.
    const sigset_t* mask = nullptr;
};

/// Forks and executes argv; pid -1 when fork failed (errno set).
child spawn(char** argv, const spawn_options& o);

/// Handles one signal received while COMMAND runs: forwards it as
/// described at `child`. Signals of one kind that arrive together (a
/// supervisor that signals filelock-run and then its group, as timeout(1)
/// does) are forwarded once.
void forward(child& c, const siginfo_t& info);

/// COMMAND's exit status as flock(1) reports it (128 + N for a signal).
int status_of(int wait_status);

/// Ends filelock-run after COMMAND ended with `wait_status`: when COMMAND
/// died of a signal that filelock-run received and forwarded (or that the
/// terminal sent to both), filelock-run dies of the same signal, as
/// timeout(1) and flock(1) do, so that a supervisor sees a death by signal;
/// otherwise returns the exit status.
int finish(const child& c, int wait_status);

/// Dies of `sig` (its default action, no core dump); returns 128 + sig
/// for a signal whose default action does not end a process.
int die_of(int sig);

/// execvp, or the message and exit status of flock(1) when it fails.
[[noreturn]] void exec_command(char** argv);

}  // namespace posix_run
