// SPDX-License-Identifier: MIT
#pragma once

// filelock-run's command line, read the same way on every platform: the
// options of flock(1) and ours, the exit statuses, the messages. What runs
// the command is the platform's (filelock_run.cpp, win32/run.cpp).

#include <filelock/lock_file.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace cli {

// sysexits.h values, as flock(1) uses them.
constexpr int ex_usage = 64;
constexpr int ex_dataerr = 65;
constexpr int ex_noinput = 66;
constexpr int ex_unavailable = 69;
constexpr int ex_oserr = 71;
constexpr int ex_cantcreat = 73;
constexpr int ex_tempfail = 75;

struct command_line {
    filelock::lock_options options;
    std::chrono::nanoseconds timeout = filelock::wait_forever;
    int conflict_code = 1;
    bool nonblock = false, unlock = false, close_fd = false, no_fork = false, verbose = false;
    bool have_content = false, simple = false;
    /// --status [--json]: who holds and who waits, instead of locking.
    /// --watch [--json]: the same, then a line per change (sets status too).
    bool status = false, json = false, watch = false;
    std::string content_arg;
    /// --fcntl, --start, --length: an open-file-description lock on a range.
    bool fcntl = false;
    std::uint64_t start = 0, length = 0;
    bool range_given = false;
    /// --fd N: lock descriptor N and run COMMAND (-1: not given).
    int fd = -1;
    // etcd:// targets
    std::string etcd_cacert, etcd_cert, etcd_key, etcd_user, lost_signal;
    int etcd_ttl = 0;
    /// --slots N: at most N holders at once (1: the one-holder lock).
    int slots = 1;
    bool etcd_option = false;
    /// LOCKFILE, DIRECTORY, FD or etcd://... (null with --fd).
    const char* target = nullptr;
    /// COMMAND [ARGS...] (empty: the descriptor form).
    std::vector<char*> command;
    /// -c STRING: run through the shell (command is empty then).
    const char* shell_command = nullptr;

    bool has_command() const noexcept { return !command.empty() || shell_command; }
};

/// The name filelock-run was invoked by (argv[0]'s last component, as
/// util-linux's tools print it): set once from argv[0], used by every message.
void set_program_name(const char* argv0);
const char* program_name() noexcept;

/// Reads argv into `out`; a usage error exits with ex_usage. Returns an exit
/// status when the line was --help or --version (already answered).
std::optional<int> parse(int argc, char** argv, command_line& out);

/// Prints "NAME: MSG" and the hint to stderr; exits with ex_usage.
[[noreturn]] void usage_error(const std::string& msg);
/// Prints "NAME: MSG" (no hint) to stderr; exits with ex_usage.
[[noreturn]] void usage_fail(const std::string& msg);
/// Prints "NAME: MSG" to stderr.
void warn(const std::string& msg);
/// util-linux's close_stdout, for std::atexit: a write error on standard
/// output (a full disk, /dev/full) is reported ("write error: ...") and the
/// exit status becomes 1, as flock(1)'s does.
void close_stdout() noexcept;

/// The holder's content, printable whatever bytes it has.
std::string printable(std::string_view s);

bool parse_int(const char* text, long lo, long hi, int& out);
/// A 32-bit number as util-linux's strtos32_or_err reads it: 0, or -EINVAL
/// (not a number) or -ERANGE (out of range).
int parse_s32(const char* text, long& out);
/// What util-linux's messages add for `rc` (": Numerical result out of
/// range" for -ERANGE, nothing else).
std::string errno_suffix(int rc);

/// A conflict (nonblocking, or timed out), as flock(1) reports it: nothing
/// without --verbose; with it, flock(1)'s line and then what we know of the
/// holder, on stderr. Returns the conflict exit status.
int report_conflict(const command_line& cl, const std::string& holder);
/// With --verbose: how long taking the lock took (stdout, as flock(1)).
void report_took(const command_line& cl, std::chrono::steady_clock::time_point started);
/// With --verbose: "executing COMMAND" (stdout, as flock(1)), flushed
/// before COMMAND starts.
void report_executing(const command_line& cl, const char* command);

}  // namespace cli
