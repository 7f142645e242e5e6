// SPDX-License-Identifier: MIT
// filelock-run's command line (see cli.hpp).
//
// The options are read here rather than by getopt_long: flock(1)'s long
// options resolve any prefix util-linux's flock(1) resolves, even where one
// of our own options shares it (`--s` is --shared, never --simple), and our
// own options match only when spelled out. getopt_long would resolve a
// prefix against all of them at once.
#include "cli.hpp"

#include <filelock/version.hpp>

#include <cctype>
#include <cerrno>
#include <cinttypes>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace cli {
namespace {

std::string name_storage = "filelock-run";

const char usage_text[] =
    "Usage:\n"
    " %1$s [options] <file>|<directory> <command> [<argument>...]\n"
    " %1$s [options] <file>|<directory> -c <command>\n"
    " %1$s [options] <file descriptor number>\n"
    " %1$s [options] --fd <file descriptor number> -c <command>\n"
    " %1$s [options] --fd <file descriptor number> <command> [<argument>...]\n"
    " %1$s [options] etcd://<host>:<port>[,<host>:<port>...]/<name> <command> [<argument>...]\n"
    "\n"
    "Runs a command while holding a lock on a file (created if missing, never\n"
    "removed). A drop-in for util-linux flock(1); see filelock-run(1).\n"
    "\n"
    "Options (flock(1)'s):\n"
    " -s, --shared             get a shared lock (writes nothing)\n"
    " -x, -e, --exclusive      get an exclusive lock (default)\n"
    " -u, --unlock             remove a lock (with a command: none is taken)\n"
    " -n, --nb, --nonblocking  fail rather than wait\n"
    " -w, --timeout, --wait <secs>\n"
    "                          wait at most <secs> (fractions allowed; 0 is -n)\n"
    " -E, --conflict-exit-code <number>\n"
    "                          exit status after conflict or timeout (default 1)\n"
    " -o, --close              close the lock's descriptor before running the command\n"
    "                          (the lock is then held by %1$s alone)\n"
    " -c, --command <command>  run a single command string through the shell\n"
    " -F, --no-fork            execute the command without forking\n"
    "     --fcntl              an open-file-description lock (fcntl F_OFD_SETLK)\n"
    "                          rather than flock(2)\n"
    "     --start <offset>     the range's first byte (implies --fcntl)\n"
    "     --length <number>    the range's length, 0 to the end (implies --fcntl)\n"
    "     --fd <number>        lock this open descriptor while the command runs\n"
    "     --verbose            report the lock's wait and the command (stdout), a\n"
    "                          conflict and the holder (stderr)\n"
    "\n"
    "Options (ours, spelled out in full):\n"
    "     --content <template> write \" <template>\\n\" to the lock file once held;\n"
    "                          fields {pid}, {hostname} (default \"{pid}\")\n"
    "     --simple             write nothing to the lock file\n"
    "     --status             who holds FILE and who waits (exit 0: free, 1: held)\n"
    "     --watch              --status, then a line per change until interrupted\n"
    "     --json               with --status: as a JSON object; with --watch: a\n"
    "                          JSON object a line\n"
    "     --slots <n>          at most <n> holders at once (1 to 1024; default 1)\n"
    "\n"
    "etcd (etcd's lock, as etcdctl lock; ours, spelled out in full):\n"
    "     --ttl <secs>         the session's lease TTL (default 10)\n"
    "     --cacert <file>      verify the server with this CA bundle (https)\n"
    "     --cert <file>, --key <file>\n"
    "                          the client's TLS certificate and key\n"
    "     --user <name[:password]>\n"
    "                          etcd user (also ETCDCTL_USER, ETCDCTL_PASSWORD)\n"
    "     --lost-signal <sig>  sent to COMMAND if the lock is lost (default TERM);\n"
    "                          %1$s then exits with status 75\n"
    "\n"
    " -h, --help               display this help\n"
    " -V, --version            display version\n"
    "\n"
    "A long option of flock(1) may be abbreviated to any prefix util-linux's\n"
    "flock(1) accepts (--nonb, --t 5, --co 3, --s), even where one of ours\n"
    "shares it; ours are recognized only in full.\n";

// Adding an option: its id here, its row in long_options (and in
// short_options if it has a letter), its field in command_line and its case
// in apply().
enum opt_id {
    o_shared = 256,
    o_exclusive,
    o_unlock,
    o_nonblock,
    o_timeout,
    o_conflict,
    o_close,
    o_no_fork,
    o_verbose,
    o_fcntl,
    o_start,
    o_length,
    o_fd,
    o_help,
    o_version,
    o_content,
    o_simple,
    o_ttl,
    o_cacert,
    o_cert,
    o_key,
    o_user,
    o_lost_signal,
    o_slots,
    o_status,
    o_json,
    o_watch,
};

enum origin {
    ours,         // matched only when spelled out
    flock_now,    // util-linux's current flock(1)
    flock_always  // also in util-linux 2.38's (Debian 12)
};

struct long_option {
    const char* name;
    bool has_arg;
    opt_id id;
    origin from;
};

// In util-linux's order: where a prefix is ambiguous among these, flock(1)
// refuses it and so do we (after trying 2.38's shorter list, where fewer
// names share a prefix: `--s` is --shared there, before --start existed).
const long_option long_options[] = {
    {"shared", false, o_shared, flock_always},
    {"exclusive", false, o_exclusive, flock_always},
    {"unlock", false, o_unlock, flock_always},
    {"nonblocking", false, o_nonblock, flock_always},  // (2.38's --help says --nonblock)
    {"nb", false, o_nonblock, flock_always},
    {"timeout", true, o_timeout, flock_always},
    {"wait", true, o_timeout, flock_always},
    {"conflict-exit-code", true, o_conflict, flock_always},
    {"close", false, o_close, flock_always},
    {"no-fork", false, o_no_fork, flock_always},
    {"verbose", false, o_verbose, flock_always},
    {"fcntl", false, o_fcntl, flock_now},
    {"start", true, o_start, flock_now},
    {"length", true, o_length, flock_now},
    {"fd", true, o_fd, flock_now},
    {"help", false, o_help, flock_always},
    {"version", false, o_version, flock_always},
    {"content", true, o_content, ours},
    {"simple", false, o_simple, ours},
    {"ttl", true, o_ttl, ours},
    {"slots", true, o_slots, ours},
    {"cacert", true, o_cacert, ours},
    {"cert", true, o_cert, ours},
    {"key", true, o_key, ours},
    {"user", true, o_user, ours},
    {"lost-signal", true, o_lost_signal, ours},
    {"status", false, o_status, ours},
    {"json", false, o_json, ours},
    {"watch", false, o_watch, ours},
};

struct short_option {
    char letter;
    opt_id id;
    bool has_arg;
};

// flock(1)'s short options (ours are long only).
const short_option short_options[] = {
    {'s', o_shared, false},  {'x', o_exclusive, false}, {'e', o_exclusive, false},
    {'u', o_unlock, false},  {'n', o_nonblock, false},  {'o', o_close, false},
    {'F', o_no_fork, false}, {'h', o_help, false},      {'V', o_version, false},
    {'w', o_timeout, true},  {'E', o_conflict, true},
};

// The option `name` (without "--" and "=value") stands for: an exact name,
// else a prefix of flock(1)'s options that resolves to one of them (names
// for the same option do not make it ambiguous, as in getopt_long). Null
// when unknown; `ambiguous` lists the candidates when there are several.
const long_option* resolve(std::string_view name, std::string& ambiguous) {
    for (const auto& o : long_options)
        if (name == o.name) return &o;
    for (const origin level : {flock_now, flock_always}) {
        const long_option* found = nullptr;
        bool ambig = false;
        std::string names;
        for (const auto& o : long_options) {
            if (o.from == ours || (level == flock_always && o.from != flock_always)) continue;
            if (std::string_view(o.name).substr(0, name.size()) != name) continue;
            names += std::string(" '--") + o.name + "'";
            if (!found)
                found = &o;
            else if (found->id != o.id)
                ambig = true;
        }
        if (found && !ambig) return found;
        if (found && ambiguous.empty()) ambiguous = names;
    }
    return nullptr;
}

bool parse_seconds(const char* text, double& seconds) {
    char* end = nullptr;
    errno = 0;
    seconds = std::strtod(text, &end);
    return errno == 0 && end != text && *end == '\0' && std::isfinite(seconds) && seconds >= 0;
}

// A size as util-linux's strtosize (ul_parse_size) reads it: a number in
// any base strtoumax(..., 0) reads (010 is 8, 0x10 is 16), with an optional
// suffix K, M, G, T, P, E, Z, Y (or k, m, ...), alone or with iB (powers of
// 1024) or B (powers of 1000), and a fraction before it ("1.5K"). 0 or
// -errno (-EINVAL: not a size; -ERANGE: too large).
int parse_size(const char* text, std::uint64_t& out) {
    out = 0;
    if (!text || !*text) return -EINVAL;
    const char* p = text;
    while (std::isspace(static_cast<unsigned char>(*p))) ++p;
    if (*p == '-') return -EINVAL;
    char* end = nullptr;
    errno = 0;
    std::uintmax_t x = std::strtoumax(text, &end, 0);
    if (end == text || (errno != 0 && (x == UINTMAX_MAX || x == 0)))
        return errno ? -errno : -EINVAL;
    if (!*end) return out = x, 0;
    p = end;
    std::uintmax_t frac = 0;
    int frac_zeros = 0;
    unsigned base = 1024;
    for (;;) {
        if (p[1] == 'i' && (p[2] == 'B' || p[2] == 'b') && !p[3]) {
            base = 1024;
        } else if ((p[1] == 'B' || p[1] == 'b') && !p[2]) {
            base = 1000;
        } else if (p[1]) {
            // A fraction ("1.5K"), once: its digits, then the suffix.
            if (frac != 0 || *p != '.') return -EINVAL;
            const char* f = p + 1;
            for (p = f; *p == '0'; ++p) ++frac_zeros;
            f = p;
            if (std::isdigit(static_cast<unsigned char>(*f))) {
                errno = 0;
                frac = std::strtoumax(f, &end, 0);
                if (end == f || (errno != 0 && (frac == UINTMAX_MAX || frac == 0)))
                    return errno ? -errno : -EINVAL;
            } else {
                end = const_cast<char*>(p);
            }
            if (!*end) return -EINVAL;  // a fraction without a suffix
            p = end;
            continue;
        }
        break;
    }
    static const char upper[] = "KMGTPEZY", lower[] = "kmgtpezy";
    const char* u = std::strchr(upper, *p);
    const char* l = u ? nullptr : std::strchr(lower, *p);
    if (!*p || (!u && !l)) return -EINVAL;
    const int power = static_cast<int>(u ? u - upper : l - lower) + 1;
    const auto scale = [&](std::uintmax_t& v) {
        for (int i = 0; i < power; ++i) {
            if (v > UINTMAX_MAX / base) return false;
            v *= base;
        }
        return true;
    };
    if (!scale(x)) return -ERANGE;
    if (frac != 0) {
        std::uintmax_t frac_div = 10, frac_poz = 1, frac_base = 1;
        if (!scale(frac_base)) return -ERANGE;
        while (frac_div < frac) {
            if (frac_div <= UINTMAX_MAX / 10)
                frac_div *= 10;
            else
                frac /= 10;
        }
        for (int i = 0; i < frac_zeros; ++i) {
            if (frac_div <= UINTMAX_MAX / 10)
                frac_div *= 10;
            else
                frac /= 10;
        }
        // From the last digit back, what each stands for in frac_base.
        do {
            const unsigned seg = static_cast<unsigned>(frac % 10);
            const std::uintmax_t seg_div = frac_div / frac_poz;
            frac /= 10;
            frac_poz *= 10;
            if (seg && seg_div / seg) x += frac_base / (seg_div / seg);
        } while (frac);
    }
    out = x;
    return 0;
}

void apply_timeout(command_line& out, const char* arg) {
    using namespace std::chrono;
    double seconds = 0;
    if (!parse_seconds(arg, seconds))
        usage_fail(std::string("invalid timeout value: '") + arg + "'");
    // -w 0 is -n, as in flock(1), and so is any timeout under a
    // microsecond (its timeval is zero there).
    if (seconds < 1e-6) out.nonblock = true;
    out.timeout = seconds >= 1e9 ? filelock::wait_forever
                                 : duration_cast<nanoseconds>(duration<double>(seconds));
}

}  // namespace

void set_program_name(const char* argv0) {
    if (!argv0 || !*argv0) return;
    const char* slash = std::strrchr(argv0, '/');
#ifdef _WIN32
    if (const char* back = std::strrchr(argv0, '\\'); back && (!slash || back > slash))
        slash = back;
#endif
    std::string name = slash ? slash + 1 : argv0;
#ifdef _WIN32
    if (name.size() > 4 && (name.ends_with(".exe") || name.ends_with(".EXE")))
        name.resize(name.size() - 4);
#endif
    if (!name.empty()) name_storage = name;
}

const char* program_name() noexcept { return name_storage.c_str(); }

void warn(const std::string& msg) { std::fprintf(stderr, "%s: %s\n", program_name(), msg.c_str()); }

namespace {
// Why a flush of standard output failed before the exit (0: none did).
int stdout_error = 0;
void flush_stdout() noexcept {
    errno = 0;
    if (std::fflush(stdout) != 0 && stdout_error == 0) stdout_error = errno;
}
}  // namespace

void close_stdout() noexcept {
    errno = 0;
    const bool failed = std::ferror(stdout) != 0;
    // EPIPE is the reader's leaving; EBADF, no standard output at all.
    if ((std::fflush(stdout) != 0 || failed) && errno != EPIPE && errno != EBADF &&
        stdout_error != EPIPE && stdout_error != EBADF) {
        const int err = errno ? errno : stdout_error;
        std::fprintf(stderr, "%s: write error%s%s\n", program_name(), err ? ": " : "",
                     err ? std::strerror(err) : "");
        std::_Exit(1);
    }
    if (std::fflush(stderr) != 0) std::_Exit(1);
}

[[noreturn]] void usage_error(const std::string& msg) {
    // No positional arguments (%1$s): Windows' printf lacks them.
    std::fprintf(stderr, "%s: %s\nTry '%s --help' for more information.\n", program_name(),
                 msg.c_str(), program_name());
    std::exit(ex_usage);
}

[[noreturn]] void usage_fail(const std::string& msg) {
    warn(msg);
    std::exit(ex_usage);
}

std::string printable(std::string_view s) {
    std::string out;
    for (unsigned char c : s) out += (c >= 0x20 && c < 0x7f) ? static_cast<char>(c) : '?';
    return out;
}

int parse_s32(const char* text, long& out) {
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(text, &end, 10);
    if (errno == ERANGE || (end != text && *end == '\0' && (v < INT32_MIN || v > INT32_MAX)))
        return -ERANGE;
    if (errno != 0 || end == text || *end != '\0') return -EINVAL;
    out = static_cast<long>(v);
    return 0;
}

std::string errno_suffix(int rc) {
    return rc == -ERANGE ? std::string(": ") + std::strerror(ERANGE) : std::string();
}

bool parse_int(const char* text, long lo, long hi, int& out) {
    char* end = nullptr;
    errno = 0;
    const long v = std::strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v < lo || v > hi) return false;
    out = static_cast<int>(v);
    return true;
}

namespace {

// One option; `arg` is its argument when it takes one. Returns an exit
// status when the option answered (--help, --version).
std::optional<int> apply(command_line& out, opt_id id, const char* arg) {
    switch (id) {
        case o_shared: out.options.mode = filelock::lock_mode::shared; break;
        case o_exclusive: out.options.mode = filelock::lock_mode::exclusive; break;
        case o_unlock: out.unlock = true; break;
        case o_nonblock: out.nonblock = true; break;
        case o_timeout: apply_timeout(out, arg); break;
        case o_conflict: {
            // As util-linux reads it: a 32-bit number first, then the range.
            long v = 0;
            if (const int rc = parse_s32(arg, v); rc != 0)
                usage_fail(std::string("invalid exit code: '") + arg + "'" + errno_suffix(rc));
            if (v < 0 || v > 255) usage_fail("exit code out of range (expected 0 to 255)");
            out.conflict_code = static_cast<int>(v);
            break;
        }
        case o_close: out.close_fd = true; break;
        case o_no_fork: out.no_fork = true; break;
        case o_verbose: out.verbose = true; break;
        case o_status: out.status = true; break;
        case o_json: out.json = true; break;
        case o_watch: out.status = out.watch = true; break;
        case o_fcntl: out.fcntl = true; break;
        case o_start:
        case o_length:
            if (const int rc = parse_size(arg, id == o_start ? out.start : out.length);
                rc != 0 || (id == o_start ? out.start : out.length) > std::uint64_t(INT64_MAX))
                // As util-linux's strtosize_or_err says it (no "Try" line).
                usage_fail(std::string(id == o_start ? "invalid as start offset: '"
                                                     : "invalid as length of lock range: '") +
                           arg + "'" +
                           (rc != 0 ? ": " + std::string(std::strerror(-rc)) : std::string()));
            out.fcntl = out.range_given = true;
            break;
        case o_fd:
            if (!parse_int(arg, 0, INT_MAX, out.fd))
                usage_error(std::string("invalid file descriptor: '") + arg + "'");
            break;
        case o_help: {
            std::string text = usage_text;
            for (std::size_t at; (at = text.find("%1$s")) != std::string::npos;)
                text.replace(at, 4, program_name());
            std::fputs(text.c_str(), stdout);
            return 0;
        }
        case o_version:
            std::printf("%s (filelock) %s\n", program_name(), FILELOCK_VERSION_STRING);
            return 0;
        case o_content:
            out.content_arg = arg;
            out.options.content_template = out.content_arg;
            out.have_content = true;
            break;
        case o_simple: out.simple = true; break;
        case o_ttl:
            if (!parse_int(arg, 1, 1 << 30, out.etcd_ttl))
                usage_error(std::string("invalid --ttl: '") + arg + "'");
            out.etcd_option = true;
            break;
        case o_cacert: out.etcd_cacert = arg, out.etcd_option = true; break;
        case o_cert: out.etcd_cert = arg, out.etcd_option = true; break;
        case o_key: out.etcd_key = arg, out.etcd_option = true; break;
        case o_user: out.etcd_user = arg, out.etcd_option = true; break;
        case o_lost_signal: out.lost_signal = arg, out.etcd_option = true; break;
        case o_slots:
            if (!parse_int(arg, 1, 1024, out.slots))
                usage_error(std::string("invalid --slots: '") + arg + "' (1 to 1024)");
            break;
    }
    return std::nullopt;
}

// The long option `a` ("--name" or "--name=value"); its argument, when
// separate, is argv[i], and i moves past it.
std::optional<int> read_long_option(const char* a, int argc, char** argv, int& i,
                                    command_line& out) {
    const char* eq = std::strchr(a + 2, '=');
    const std::string_view name(a + 2,
                                eq ? static_cast<std::size_t>(eq - a - 2) : std::strlen(a + 2));
    std::string ambiguous;
    const long_option* o = resolve(name, ambiguous);
    if (!o && !ambiguous.empty())
        usage_error(std::string("option '") + a + "' is ambiguous; possibilities:" + ambiguous);
    if (!o) usage_error(std::string("unrecognized option '") + a + "'");
    const char* arg = nullptr;
    if (o->has_arg) {
        if (eq)
            arg = eq + 1;
        else if (i < argc)
            arg = argv[i++];
        else
            usage_error(std::string("option '--") + o->name + "' requires an argument");
    } else if (eq) {
        usage_error(std::string("option '--") + o->name + "' doesn't allow an argument");
    }
    return apply(out, o->id, arg);
}

// A cluster of short options (-nE42, -nw 1); an argument, when separate, is
// argv[i], and i moves past it.
std::optional<int> read_short_options(const char* a, int argc, char** argv, int& i,
                                      command_line& out) {
    for (const char* p = a + 1; *p; ++p) {
        const short_option* o = nullptr;
        for (const auto& s : short_options)
            if (s.letter == *p) o = &s;
        if (!o && *p == '?') {  // in flock(1)'s optstring: its usage hint alone
            std::fprintf(stderr, "Try '%s --help' for more information.\n", program_name());
            std::exit(ex_usage);
        }
        if (!o) usage_error(std::string("invalid option -- '") + *p + "'");
        const char* arg = nullptr;
        if (o->has_arg) {
            if (p[1])
                arg = p + 1;
            else if (i < argc)
                arg = argv[i++];
            else
                usage_error(std::string("option requires an argument -- '") + *p + "'");
        }
        if (auto status = apply(out, o->id, arg)) return status;
        if (arg) break;
    }
    return std::nullopt;
}

// What follows the options, from argv[i]: the lock target and COMMAND (or
// -c STRING), or with --fd the command alone. `command_option`: the options
// ended with -c (--fd N -c STRING).
void read_operands(int argc, char** argv, int i, bool command_option, command_line& out) {
    if (command_option) {
        if (argc != i + 1)
            usage_fail(std::string(argv[i - 1]) + " requires exactly one command argument");
        if (out.fd < 0) usage_fail("missing file descriptor, file or directory");
        out.shell_command = argv[i];
        return;
    }
    if (out.fd >= 0) {  // --fd N COMMAND [ARGS...]
        if (i >= argc) usage_error("missing command");
        out.command.assign(argv + i, argv + argc);
        return;
    }
    if (i >= argc) usage_fail("missing file descriptor, file or directory");
    out.target = argv[i];
    // The command: the rest of the line, or -c STRING through the shell.
    if (argc > i + 1) {
        const std::string_view next = argv[i + 1];
        if (next == "-c" || next == "--command") {
            if (argc != i + 3)
                usage_fail(std::string(next) + " requires exactly one command argument");
            out.shell_command = argv[i + 2];
        } else {
            out.command.assign(argv + i + 1, argv + argc);
        }
    }
}

}  // namespace

std::optional<int> parse(int argc, char** argv, command_line& out) {
    // A drop-in for flock(1): a file it must not write (a script, a data
    // file, a pseudo file) is locked without content, as flock(1) locks it.
    out.options.on_foreign_content = filelock::foreign_content::lock_without_content;
    if (argc < 2) usage_error("not enough arguments");
    bool command_option = false;  // -c / --command among the options
    int i = 1;
    // Options end at the first operand (LOCKFILE), at "--", or at -c.
    while (i < argc) {
        const char* a = argv[i];
        if (a[0] != '-' || a[1] == '\0') break;
        ++i;
        if (std::strcmp(a, "--") == 0) break;
        if (std::strcmp(a, "-c") == 0 || std::strcmp(a, "--command") == 0) {
            command_option = true;  // with --fd: -c STRING
            break;
        }
        const auto status = a[1] == '-' ? read_long_option(a, argc, argv, i, out)
                                        : read_short_options(a, argc, argv, i, out);
        if (status) return status;
    }
    if (out.close_fd && out.no_fork)
        usage_fail("the --no-fork and --close options are incompatible");
    if (out.have_content && out.simple) usage_error("--content and --simple exclude each other");
    if (out.nonblock) out.timeout = std::chrono::nanoseconds::zero();  // -n wins over -w
    out.options.write_content = !out.simple;
    read_operands(argc, argv, i, command_option, out);
    return std::nullopt;
}

int report_conflict(const command_line& cl, const std::string& holder) {
    if (!cl.verbose) return cl.conflict_code;  // silent, as flock(1)
    warn(cl.nonblock ? "failed to get lock" : "timeout while waiting to get lock");
    if (!holder.empty()) warn(std::string(cl.target ? cl.target : "") + ": held by " + holder);
    return cl.conflict_code;
}

void report_took(const command_line& cl, std::chrono::steady_clock::time_point started) {
    using namespace std::chrono;
    if (!cl.verbose) return;
    const auto us = duration_cast<microseconds>(steady_clock::now() - started).count();
    std::printf("%s: getting lock took %lld.%06lld seconds\n", program_name(),
                static_cast<long long>(us / 1000000), static_cast<long long>(us % 1000000));
    flush_stdout();
}

void report_executing(const command_line& cl, const char* command) {
    if (!cl.verbose) return;
    std::printf("%s: executing %s\n", program_name(), command);
    flush_stdout();
}

}  // namespace cli
