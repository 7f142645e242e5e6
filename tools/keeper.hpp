// SPDX-License-Identifier: MIT
#pragma once

// The keeper of an etcd lock's COMMAND (Linux). filelock-run keeps the lease
// alive; if it dies (SIGKILL, the OOM killer), etcd ends the lock after the
// TTL while COMMAND, and whatever COMMAND started, would run on unlocked.
// The keeper is a small process between filelock-run and COMMAND, in a
// process group of its own (a signal to filelock-run's group or to
// COMMAND's does not reach it), and a child subreaper: every process
// COMMAND starts that is orphaned (a daemon's double fork, a setsid(1)
// whose parent ended) is adopted by it, not by init. When filelock-run
// dies, the keeper sees the end of a pipe only filelock-run holds, and
// kills COMMAND's group and every descendant it has, generation by
// generation, before the lease can expire. What it cannot reach: a process
// started by another service (systemd-run, at, a terminal multiplexer's
// server), or adopted by a subreaper below it.
//
// filelock-run also tells it, on that pipe, until when the lease is
// guaranteed (after each answered keep-alive): when that deadline passes
// with no later one, filelock-run is stopped (SIGSTOP, a debugger) or its
// keep-alives fail, and the keeper kills COMMAND's group and descendants
// before etcd can expire the lease and grant the lock to another.
//
// When COMMAND dies of a signal (the OOM killer, a kill -9, a signal
// forwarded to it), the keeper kills its group and what it left behind too,
// before filelock-run releases the lock: they would run on unlocked, and the
// next holder is granted the lock at once. When COMMAND exits, what it left
// running goes on (as with flock(1)), without the lock.
//
// It reports to filelock-run on a pipe: COMMAND's pid, its stops (relayed at
// a terminal, see posix_run.hpp) and its wait status. If the keeper itself
// is killed, COMMAND gets SIGKILL (PR_SET_PDEATHSIG) and filelock-run, a
// subreaper too, kills what the keeper had adopted.

#include <cstdint>
#include <string>
#include <sys/types.h>

namespace keeper {

struct message {
    enum kind_t : int { started = 1, stopped, exited, expired } kind;
    /// started: COMMAND's pid (or -errno if fork failed); stopped: the
    /// signal; exited: COMMAND's wait status; expired: COMMAND's wait
    /// status, killed with its descendants at the lease's deadline.
    int value;
};

/// Now on the clock of the deadlines: CLOCK_BOOTTIME (etcd's lease runs on
/// while this machine is suspended), in nanoseconds.
std::int64_t now() noexcept;

/// Tells the keeper whose pipe is `life` to kill COMMAND's tree at
/// `deadline` (now()'s clock) unless told a later one. Never blocks (`life`
/// is non-blocking); async-signal-safe.
void set_deadline(int life, std::int64_t deadline) noexcept;

/// In the keeper's process, once COMMAND is forked: tells filelock-run
/// COMMAND's pid (or -errno), before the exec (a keeper killed during it is
/// then a keeper killed while COMMAND runs). Async-signal-safe.
void report_started(int report, pid_t command);

/// The keeper's program (filelock-keeper, keeper_main.cpp): next to the
/// running program (filelock-run-etcd), whose directory it is installed in.
/// Empty if /proc/self/exe cannot be read.
std::string program_path();

/// In the keeper's process, once COMMAND is forked: executes `program`
/// (program_path()) with `life`, `report`, `command` and `deadline`;
/// returns only if it could not (then run() is called in place, under the
/// name filelock-keeper). Async-signal-safe.
void exec_program(const char* program, int life, int report, pid_t command, std::int64_t deadline);

/// The keeper's life after forking COMMAND (`command`): reports on
/// `report`, watches `life` (deadlines; its end once filelock-run died),
/// kills COMMAND's tree at `deadline` (0: none yet) unless told a later one;
/// never returns.
[[noreturn]] void run(int life, int report, pid_t command, std::int64_t deadline);

/// Kills (SIGKILL) the process group `group` (if > 0) and every child of the
/// calling process, again as orphans are adopted, until none is left.
/// Returns the wait status of the child `group` if it was reaped here
/// (-1 otherwise).
int kill_descendants(pid_t group);

}  // namespace keeper
