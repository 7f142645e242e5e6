// SPDX-License-Identifier: MIT
// filelock-run's command line (see cli.hpp).
#include "cli.hpp"

#include <filelock/version.hpp>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <getopt.h>

namespace cli {
namespace {

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

bool parse_seconds(const char* text, double& seconds) {
    char* end = nullptr;
    errno = 0;
    seconds = std::strtod(text, &end);
    return errno == 0 && end != text && *end == '\0' && std::isfinite(seconds) && seconds >= 0;
}

}  // namespace

[[noreturn]] void usage_error(const std::string& msg) {
    std::fprintf(stderr, "filelock-run: %s\nTry 'filelock-run --help' for more information.\n",
                 msg.c_str());
    std::exit(ex_usage);
}

std::string printable(std::string_view s) {
    std::string out;
    for (unsigned char c : s) out += (c >= 0x20 && c < 0x7f) ? static_cast<char>(c) : '?';
    return out;
}

bool parse_int(const char* text, long lo, long hi, int& out) {
    char* end = nullptr;
    errno = 0;
    const long v = std::strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v < lo || v > hi) return false;
    out = static_cast<int>(v);
    return true;
}

std::optional<int> parse(int argc, char** argv, command_line& out) {
    using namespace std::chrono;
    // A drop-in for flock(1): a file it must not write (a script, a data
    // file, a pseudo file) is locked without content, as flock(1) locks it.
    out.options.on_foreign_content = filelock::foreign_content::lock_without_content;
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
            case 's': out.options.mode = filelock::lock_mode::shared; break;
            case 'x':
            case 'e': out.options.mode = filelock::lock_mode::exclusive; break;
            case 'u': out.unlock = true; break;
            case 'n': out.nonblock = true; break;
            case 'w': {
                double seconds = 0;
                if (!parse_seconds(::optarg, seconds))
                    usage_error(std::string("invalid timeout value: '") + ::optarg + "'");
                out.timeout = seconds >= 1e9
                                  ? filelock::wait_forever
                                  : duration_cast<nanoseconds>(duration<double>(seconds));
                break;
            }
            case 'E':
                if (!parse_int(::optarg, 0, 255, out.conflict_code))
                    usage_error(std::string("invalid exit code: '") + ::optarg +
                                "' (expected 0 to 255)");
                break;
            case 'o': out.close_fd = true; break;
            case 'F': out.no_fork = true; break;
            case opt_content:
                out.content_arg = ::optarg;
                out.options.content_template = out.content_arg;
                out.have_content = true;
                break;
            case opt_simple: out.simple = true; break;
            case opt_verbose: out.verbose = true; break;
            case opt_ttl:
                if (!parse_int(::optarg, 1, 1 << 30, out.etcd_ttl))
                    usage_error(std::string("invalid --ttl: '") + ::optarg + "'");
                out.etcd_option = true;
                break;
            case opt_cacert: out.etcd_cacert = ::optarg, out.etcd_option = true; break;
            case opt_cert: out.etcd_cert = ::optarg, out.etcd_option = true; break;
            case opt_key: out.etcd_key = ::optarg, out.etcd_option = true; break;
            case opt_user: out.etcd_user = ::optarg, out.etcd_option = true; break;
            case opt_lost_signal:
                out.lost_signal = ::optarg;
                out.etcd_option = true;
                break;
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
    if (out.close_fd && out.no_fork)
        usage_error("the --no-fork and --close options are incompatible");
    if (out.have_content && out.simple) usage_error("--content and --simple exclude each other");
    if (::optind >= argc) usage_error("not enough arguments");
    if (out.nonblock) out.timeout = nanoseconds::zero();  // -n wins over -w, as in flock(1)
    out.options.write_content = !out.simple;
    out.target = argv[::optind];
    // The command: the rest of the line, or -c STRING through the shell.
    if (argc > ::optind + 1) {
        const std::string_view next = argv[::optind + 1];
        if (next == "-c" || next == "--command") {
            if (argc != ::optind + 3)
                usage_error(std::string(next) + " requires exactly one command argument");
            out.shell_command = argv[::optind + 2];
        } else {
            out.command.assign(argv + ::optind + 1, argv + argc);
        }
    }
    return std::nullopt;
}

int report_conflict(const command_line& cl, const std::string& holder) {
    if (cl.verbose)
        std::fprintf(stderr, "filelock-run: %s\n",
                     cl.nonblock ? "failed to get lock" : "timeout while waiting to get lock");
    std::fprintf(stderr, "filelock-run: %s: %s%s%s\n", cl.target,
                 cl.nonblock ? "already locked" : "timed out waiting for the lock",
                 holder.empty() ? "" : "; held by ", holder.c_str());
    return cl.conflict_code;
}

void report_took(const command_line& cl, std::chrono::steady_clock::time_point started) {
    using namespace std::chrono;
    if (cl.verbose)
        std::fprintf(stderr, "filelock-run: getting lock took %.6f seconds\n",
                     duration<double>(steady_clock::now() - started).count());
}

}  // namespace cli
