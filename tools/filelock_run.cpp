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
#include <filelock/version.hpp>

#include "../src/sync_driver.hpp"
#if FILELOCK_RUN_ETCD
#include "etcd_mode.hpp"
#endif

#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <getopt.h>
#include <string>
#include <string_view>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace {

// sysexits.h values, as flock(1) uses them.
constexpr int ex_usage = 64;
constexpr int ex_dataerr = 65;
constexpr int ex_noinput = 66;
constexpr int ex_unavailable = 69;
constexpr int ex_oserr = 71;
constexpr int ex_cantcreat = 73;

const char usage_text[] =
    "Usage:\n"
    " filelock-run [options] <file>|<directory> <command> [<argument>...]\n"
    " filelock-run [options] <file>|<directory> -c <command>\n"
    " filelock-run [options] <file descriptor number>\n"
    "\n"
    "Runs a command while holding a lock on a file (created if missing, never\n"
    "removed). A drop-in for flock(1); see filelock-run(1).\n"
    "\n"
    "Options:\n"
    " -s, --shared             get a shared lock (writes nothing)\n"
    " -x, -e, --exclusive      get an exclusive lock (default)\n"
    " -u, --unlock             remove a lock (file descriptor form)\n"
    " -n, --nb, --nonblock     fail rather than wait\n"
    " -w, --wait, --timeout <secs>\n"
    "                          wait at most <secs> (fractions allowed)\n"
    " -E, --conflict-exit-code <number>\n"
    "                          exit status after conflict or timeout (default 1)\n"
    " -o, --close              close the lock's descriptor before running the command\n"
    "                          (the lock is then held by filelock-run alone)\n"
    " -c, --command <command>  run a single command string through the shell\n"
    " -F, --no-fork            execute the command without forking\n"
    "     --content <template> write \" <template>\\n\" to the lock file once held;\n"
    "                          fields {pid}, {hostname} (default \"{pid}\")\n"
    "     --simple             write nothing to the lock file\n"
    "     --verbose            report how long taking the lock took, on stderr\n"
    "\n"
    "etcd (TARGET etcd://host:port[,host:port]/NAME: etcd's lock, as etcdctl lock):\n"
    "     --ttl <secs>         the session's lease TTL (default 10)\n"
    "     --cacert <file>      verify the server with this CA bundle (https)\n"
    "     --cert <file>, --key <file>\n"
    "                          the client's TLS certificate and key\n"
    "     --user <name[:password]>\n"
    "                          etcd user (also ETCDCTL_USER, ETCDCTL_PASSWORD)\n"
    "     --lost-signal <sig>  sent to COMMAND if the lock is lost (default TERM);\n"
    "                          filelock-run then exits with status 75\n"
    "\n"
    " -h, --help               display this help\n"
    " -V, --version            display version\n";

[[noreturn]] void usage_error(const std::string& msg) {
    std::fprintf(stderr, "filelock-run: %s\nTry 'filelock-run --help' for more information.\n",
                 msg.c_str());
    std::exit(ex_usage);
}

// The holder's content, printable whatever bytes it has.
std::string printable(std::string_view s) {
    std::string out;
    for (unsigned char c : s) out += (c >= 0x20 && c < 0x7f) ? static_cast<char>(c) : '?';
    return out;
}

bool parse_seconds(const char* text, double& seconds) {
    char* end = nullptr;
    errno = 0;
    seconds = std::strtod(text, &end);
    return errno == 0 && end != text && *end == '\0' && std::isfinite(seconds) && seconds >= 0;
}

bool parse_int(const char* text, long lo, long hi, int& out) {
    char* end = nullptr;
    errno = 0;
    const long v = std::strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v < lo || v > hi) return false;
    out = static_cast<int>(v);
    return true;
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
    filelock::lock_options options;
    // A drop-in for flock(1): a file it must not write (a script, a data
    // file, a pseudo file) is locked without content, as flock(1) locks it.
    options.on_foreign_content = filelock::foreign_content::lock_without_content;
    nanoseconds timeout = filelock::wait_forever;
    int conflict_code = 1;
    bool nonblock = false, unlock = false, close_fd = false, no_fork = false, verbose = false;
    bool have_content = false, simple = false;
    std::string content_arg;

    enum {
        opt_content = 256,
        opt_simple,
        opt_verbose,
        opt_ttl,
        opt_cacert,
        opt_cert,
        opt_key,
        opt_user,
        opt_lost_signal
    };
    std::string etcd_cacert, etcd_cert, etcd_key, etcd_user;
    int etcd_ttl = 0, lost_signal = SIGTERM;
    bool etcd_option = false;
    static const option long_options[] = {
        {"shared", no_argument, nullptr, 's'},
        {"exclusive", no_argument, nullptr, 'x'},
        {"unlock", no_argument, nullptr, 'u'},
        {"nonblock", no_argument, nullptr, 'n'},
        {"nb", no_argument, nullptr, 'n'},
        {"timeout", required_argument, nullptr, 'w'},
        {"wait", required_argument, nullptr, 'w'},
        {"conflict-exit-code", required_argument, nullptr, 'E'},
        {"close", no_argument, nullptr, 'o'},
        {"no-fork", no_argument, nullptr, 'F'},
        {"content", required_argument, nullptr, opt_content},
        {"simple", no_argument, nullptr, opt_simple},
        {"verbose", no_argument, nullptr, opt_verbose},
        {"ttl", required_argument, nullptr, opt_ttl},
        {"cacert", required_argument, nullptr, opt_cacert},
        {"cert", required_argument, nullptr, opt_cert},
        {"key", required_argument, nullptr, opt_key},
        {"user", required_argument, nullptr, opt_user},
        {"lost-signal", required_argument, nullptr, opt_lost_signal},
        {"help", no_argument, nullptr, 'h'},
        {"version", no_argument, nullptr, 'V'},
        {nullptr, 0, nullptr, 0},
    };
    ::opterr = 0;  // our own messages
    int c;
    // '+': options end at the first operand (LOCKFILE), as in flock(1).
    while ((c = ::getopt_long(argc, argv, "+sxeunw:E:oFhV", long_options, nullptr)) != -1) {
        switch (c) {
            case 's': options.mode = filelock::lock_mode::shared; break;
            case 'x':
            case 'e': options.mode = filelock::lock_mode::exclusive; break;
            case 'u': unlock = true; break;
            case 'n': nonblock = true; break;
            case 'w': {
                double seconds = 0;
                if (!parse_seconds(::optarg, seconds))
                    usage_error(std::string("invalid timeout value: '") + ::optarg + "'");
                timeout = seconds >= 1e9 ? filelock::wait_forever
                                         : duration_cast<nanoseconds>(duration<double>(seconds));
                break;
            }
            case 'E':
                if (!parse_int(::optarg, 0, 255, conflict_code))
                    usage_error(std::string("invalid exit code: '") + ::optarg +
                                "' (expected 0 to 255)");
                break;
            case 'o': close_fd = true; break;
            case 'F': no_fork = true; break;
            case opt_content:
                content_arg = ::optarg;
                options.content_template = content_arg;
                have_content = true;
                break;
            case opt_simple: simple = true; break;
            case opt_verbose: verbose = true; break;
            case opt_ttl:
                if (!parse_int(::optarg, 1, 1 << 30, etcd_ttl))
                    usage_error(std::string("invalid --ttl: '") + ::optarg + "'");
                etcd_option = true;
                break;
            case opt_cacert: etcd_cacert = ::optarg, etcd_option = true; break;
            case opt_cert: etcd_cert = ::optarg, etcd_option = true; break;
            case opt_key: etcd_key = ::optarg, etcd_option = true; break;
            case opt_user: etcd_user = ::optarg, etcd_option = true; break;
            case opt_lost_signal: {
                const std::string v = ::optarg;
                lost_signal = 0;
                for (auto [n, sig] : {std::pair{"TERM", SIGTERM},
                                      {"INT", SIGINT},
                                      {"HUP", SIGHUP},
                                      {"KILL", SIGKILL},
                                      {"QUIT", SIGQUIT},
                                      {"USR1", SIGUSR1},
                                      {"USR2", SIGUSR2}})
                    if (v == n || v == std::string("SIG") + n) lost_signal = sig;
                if (!lost_signal && !parse_int(::optarg, 1, 64, lost_signal))
                    usage_error("invalid --lost-signal: '" + v + "'");
                etcd_option = true;
                break;
            }
            case 'h': std::fputs(usage_text, stdout); return 0;
            case 'V':
                std::printf("filelock-run (filelock) %s\n", FILELOCK_VERSION_STRING);
                return 0;
            case ':':
                usage_error(std::string("option requires an argument: '") + argv[::optind - 1] +
                            "'");
            default:
                if (::optopt && ::optopt < 256)
                    usage_error(std::string("invalid option -- '") + static_cast<char>(::optopt) +
                                "'");
                usage_error(std::string("unrecognized option '") + argv[::optind - 1] + "'");
        }
    }
    if (close_fd && no_fork) usage_error("the --no-fork and --close options are incompatible");
    if (have_content && simple) usage_error("--content and --simple exclude each other");
    if (::optind >= argc) usage_error("not enough arguments");
    if (nonblock) timeout = nanoseconds::zero();  // -n wins over -w, as in flock(1)
    options.write_content = !simple;
    const char* target = argv[::optind];
    const int shared_op = options.mode == filelock::lock_mode::shared ? LOCK_SH : LOCK_EX;

    // The command: the rest of the line, or -c STRING through the shell.
    std::vector<char*> command;
    const char* shell = std::getenv("SHELL");
    char dash_c[] = "-c";
    if (argc > ::optind + 1) {
        const std::string_view next = argv[::optind + 1];
        if (next == "-c" || next == "--command") {
            if (argc != ::optind + 3)
                usage_error(std::string(next) + " requires exactly one command argument");
            command = {const_cast<char*>(shell && *shell ? shell : "/bin/sh"), dash_c,
                       argv[::optind + 2]};
        } else {
            command.assign(argv + ::optind + 1, argv + argc);
        }
        command.push_back(nullptr);
    }

    if (std::string_view(target).rfind("etcd://", 0) == 0) {
#if FILELOCK_RUN_ETCD
        if (command.empty()) usage_error("an etcd lock needs a command to run");
        if (options.mode == filelock::lock_mode::shared)
            usage_error("etcd locks are exclusive (no --shared)");
        if (unlock) usage_error("--unlock applies to a file descriptor");
        if (no_fork) usage_error("--no-fork cannot keep an etcd lease alive");
        etcd_mode::options eo;
        eo.timeout = timeout;
        eo.nonblock = nonblock;
        eo.verbose = verbose;
        eo.simple = simple;
        eo.conflict_code = conflict_code;
        eo.lost_signal = lost_signal;
        eo.ttl = seconds(etcd_ttl);
        eo.content = have_content ? content_arg : std::string();
        eo.cacert = etcd_cacert;
        eo.cert = etcd_cert;
        eo.key = etcd_key;
        eo.user = etcd_user;
        return etcd_mode::run(eo, target, command.data());
#else
        usage_error("this filelock-run was built without etcd support");
#endif
    }
    if (etcd_option) usage_error("etcd options apply to an etcd:// target");

    const auto started = steady_clock::now();
    const auto report_conflict = [&](const std::string& holder) {
        if (verbose)
            std::fprintf(stderr, "filelock-run: %s\n",
                         nonblock ? "failed to get lock" : "timeout while waiting to get lock");
        std::fprintf(stderr, "filelock-run: %s: %s%s%s\n", target,
                     nonblock ? "already locked" : "timed out waiting for the lock",
                     holder.empty() ? "" : "; held by ", holder.c_str());
        return conflict_code;
    };
    const auto report_took = [&] {
        if (verbose)
            std::fprintf(stderr, "filelock-run: getting lock took %.6f seconds\n",
                         duration<double>(steady_clock::now() - started).count());
    };

    // The file descriptor form: `( filelock-run -n 9 || exit 1; ... ) 9>FILE`.
    if (command.empty()) {
        int fd = -1;
        if (!parse_int(target, 0, 1 << 30, fd))
            usage_error(std::string("bad file descriptor: '") + target + "'");
        if (unlock) {
            if (::flock(fd, LOCK_UN) != 0) {
                std::fprintf(stderr, "filelock-run: %d: %s\n", fd, std::strerror(errno));
                return ex_dataerr;
            }
            return 0;
        }
        const std::error_code ec = lock_descriptor(fd, shared_op, timeout);
        if (ec == filelock::errc::timeout) return report_conflict({});
        if (ec) {
            std::fprintf(stderr, "filelock-run: %d: %s\n", fd, ec.message().c_str());
            return ec == std::errc::no_lock_available ? ex_oserr : ex_dataerr;
        }
        report_took();
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
        return report_conflict(dir_fd >= 0 ? std::string()
                                           : printable(filelock::read_holder(target)));
    if (ec == filelock::errc::invalid_template)
        usage_error("invalid --content template '" + content_arg + "'");
    if (ec) {
        std::fprintf(stderr, "filelock-run: cannot open lock file %s: %s\n", target,
                     ec.message().c_str());
        return open_failure_status(ec);
    }
    report_took();
    const int status = run(command.data(), dir_fd >= 0 ? dir_fd : held.native_handle(), close_fd,
                           no_fork, verbose);
    // Released when this process exits; COMMAND's copy (unless -o) closes
    // when it does. A lock copied by fork() is released by closing only.
    return status;
}
