// SPDX-License-Identifier: MIT
#pragma once

// Running COMMAND on POSIX, for lock files and etcd locks alike: its process
// group and terminal, the signals forwarded to it, and filelock-run's own end.

#include <csignal>
#include <cstdint>
#include <sys/types.h>
#include <vector>

namespace cli {
struct command_line;
}

namespace posix_run {

/// COMMAND's argv, null-terminated (empty: no command): the command line's,
/// or -c STRING run by $SHELL (or /bin/sh).
std::vector<char*> command_argv(const cli::command_line& cl);

/// The signals forwarded to COMMAND while it runs (and SIGCHLD, which ends a
/// wait): blocked in filelock-run, received with sigwaitinfo.
sigset_t forwarded_signals();

/// COMMAND runs in a process group of its own, always: a signal sent to
/// filelock-run's group (kill -PGID, timeout(1), a CI runner, a shell's
/// job) then reaches filelock-run alone, which forwards it once to
/// COMMAND's group, as it forwards a signal sent to it alone. Whether
/// filelock-run leads its group or not, a signal reaches COMMAND once.
/// When filelock-run's group is a terminal's foreground group, COMMAND's
/// group becomes the foreground while it runs (the terminal's ^C, ^\ and ^Z
/// reach COMMAND alone, and it may read the terminal), and a stop of COMMAND
/// is relayed as a shell relays it: filelock-run takes the terminal back and
/// stops with the same signal, so that its own shell sees the job stopped;
/// continued (fg, bg), it gives the terminal back if its group has it and
/// continues COMMAND's group.
struct child {
    /// The process filelock-run waits for: COMMAND (or its keeper).
    pid_t pid = -1;
    /// COMMAND's process group (COMMAND's pid): where signals go.
    pid_t group = -1;
    /// The controlling terminal (-1: none); COMMAND's stops are relayed
    /// only when there is one.
    int tty = -1;
    /// COMMAND has had the terminal's foreground: a ^C or ^\ it died of
    /// was the terminal's, and filelock-run dies of it too.
    bool had_terminal = false;
    /// The last signal forwarded, 0 if none.
    int signal = 0;
    /// With a keeper (keeper.hpp; `pid` is the keeper's): its reports, and
    /// the pipe whose end tells it that filelock-run died.
    int report = -1, life = -1;
    /// The keeper killed COMMAND and its descendants at the lease's deadline
    /// (no keep-alive was answered in time: keeper.hpp).
    bool expired = false;
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
    /// COMMAND runs under a keeper (keeper.hpp) that kills it and what it
    /// started when filelock-run dies (Linux; elsewhere die_with_parent
    /// alone).
    bool keeper = false;
    /// With a keeper: until when the lease is guaranteed (keeper::now()'s
    /// clock), then later ones by keeper::set_deadline() on `child::life`.
    std::int64_t deadline = 0;
};

/// Forks and executes argv; pid -1 when fork failed (errno set).
child spawn(char** argv, const spawn_options& o);

/// Whether COMMAND ended, without blocking; its wait status in
/// `wait_status`. A stop is relayed (see `child`) before it returns false.
bool ended(child& c, int& wait_status);

/// Handles one signal received while COMMAND runs: forwards it to COMMAND's
/// group. Signals of one kind that arrive together (a supervisor that
/// signals filelock-run and then its group, as timeout(1) does) are
/// forwarded once.
void forward(child& c, const siginfo_t& info);

/// Stops filelock-run with `sig` (blocked or not), as its default action
/// would, once; returns once it is continued (at once if the kernel
/// discards the stop: an orphaned process group).
void stop_like(int sig);

/// COMMAND's exit status as flock(1) reports it (128 + N for a signal).
int status_of(int wait_status);

/// Ends filelock-run after COMMAND ended with `wait_status`: hands the
/// terminal back, then, when COMMAND died of a signal that filelock-run
/// forwarded (or that the terminal sent it), dies of the same signal, as
/// timeout(1) and flock(1) do, so that a supervisor sees a death by signal;
/// otherwise returns the exit status.
int finish(child& c, int wait_status);

/// Dies of `sig` (its default action, no core dump); returns 128 + sig
/// for a signal whose default action does not end a process.
int die_of(int sig);

/// execvp, or the message and exit status of flock(1) when it fails.
[[noreturn]] void exec_command(char** argv);

}  // namespace posix_run
