// filelock-run: run a command while holding a lock file, flock(1)-style.
//
//   filelock-run [-w SECONDS | -n] [-s] [-E CODE] [--content TEMPLATE | --simple]
//                LOCKFILE COMMAND [ARGS...]
//
// Exit status: COMMAND's (128 + N if killed by signal N); 1 (or -E CODE) when
// the lock is held elsewhere or the wait timed out; 64 on a usage error; 71 on
// a system error; 126/127 when COMMAND cannot be run.

#include <filelock/lock_file.hpp>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <sys/wait.h>
#include <unistd.h>

namespace {

constexpr int exit_usage = 64;
constexpr int exit_oserr = 71;

const char usage_text[] =
    "usage: filelock-run [-w SECONDS | -n] [-s] [-E CODE] [--content TEMPLATE | --simple]\n"
    "                    LOCKFILE COMMAND [ARGS...]\n"
    "\n"
    "Runs COMMAND while holding an exclusive lock on LOCKFILE (created if missing,\n"
    "never removed). The lock is not inherited by COMMAND.\n"
    "\n"
    "  -w, --wait SECONDS   give up after SECONDS (fractions allowed); default: wait forever\n"
    "  -n, --nonblock       one attempt only (same as -w 0)\n"
    "  -s, --shared         take a shared lock (writes nothing)\n"
    "  -E, --conflict-exit-code CODE\n"
    "                       exit status when the lock is held elsewhere (default 1)\n"
    "      --content TEMPLATE\n"
    "                       content written as \" TEMPLATE\\n\"; fields {pid}, {hostname}\n"
    "                       (default \"{pid}\")\n"
    "      --simple         write nothing (zc.lockfile's SimpleLockFile)\n"
    "  -h, --help           show this help\n";

[[noreturn]] void usage_error(const std::string& msg) {
    std::fprintf(stderr, "filelock-run: %s\n%s", msg.c_str(), usage_text);
    std::exit(exit_usage);
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

bool parse_code(const char* text, int& code) {
    char* end = nullptr;
    errno = 0;
    const long v = std::strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v < 0 || v > 255) return false;
    code = static_cast<int>(v);
    return true;
}

int run(char** argv) {
    const pid_t child = ::fork();
    if (child < 0) {
        std::fprintf(stderr, "filelock-run: fork: %s\n", std::strerror(errno));
        return exit_oserr;
    }
    if (child == 0) {
        ::execvp(argv[0], argv);
        const int err = errno;
        std::fprintf(stderr, "filelock-run: %s: %s\n", argv[0], std::strerror(err));
        ::_exit(err == ENOENT ? 127 : 126);
    }
    int status = 0;
    while (::waitpid(child, &status, 0) < 0) {
        if (errno != EINTR) {
            std::fprintf(stderr, "filelock-run: waitpid: %s\n", std::strerror(errno));
            return exit_oserr;
        }
    }
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

}  // namespace

int main(int argc, char** argv) {
    using namespace std::chrono;
    filelock::lock_options options;
    nanoseconds timeout = filelock::wait_forever;
    int conflict_code = 1;
    bool have_wait = false, nonblock = false, have_content = false, simple = false;

    int i = 1;
    for (; i < argc; ++i) {
        const std::string_view a = argv[i];
        const auto value = [&](const char* name) -> const char* {
            if (i + 1 >= argc) usage_error(std::string("option ") + name + " needs a value");
            return argv[++i];
        };
        if (a == "--") {
            ++i;
            break;
        } else if (a == "-h" || a == "--help") {
            std::fputs(usage_text, stdout);
            return 0;
        } else if (a == "-w" || a == "--wait" || a == "--timeout") {
            const char* v = value("-w");
            double seconds = 0;
            if (!parse_seconds(v, seconds))
                usage_error(std::string("invalid number of seconds: '") + v + "'");
            timeout = seconds >= 1e9 ? filelock::wait_forever
                                     : duration_cast<nanoseconds>(duration<double>(seconds));
            have_wait = true;
        } else if (a == "-n" || a == "--nonblock" || a == "--nb") {
            nonblock = true;
        } else if (a == "-s" || a == "--shared") {
            options.mode = filelock::lock_mode::shared;
        } else if (a == "-E" || a == "--conflict-exit-code") {
            const char* v = value("-E");
            if (!parse_code(v, conflict_code))
                usage_error(std::string("invalid exit code: '") + v + "' (0-255)");
        } else if (a == "--content") {
            options.content_template = value("--content");
            have_content = true;
        } else if (a == "--simple") {
            simple = true;
        } else if (a.size() > 1 && a[0] == '-') {
            usage_error("unknown option '" + std::string(a) + "'");
        } else {
            break;
        }
    }
    if (have_wait && nonblock) usage_error("-w and -n exclude each other");
    if (have_content && simple) usage_error("--content and --simple exclude each other");
    if (argc - i < 2) usage_error("LOCKFILE and COMMAND are required");
    if (nonblock) timeout = nanoseconds::zero();
    options.write_content = !simple;
    const char* path = argv[i];

    std::error_code ec;
    filelock::lock_file held = filelock::lock(path, timeout, options, ec);
    if (ec == filelock::errc::timeout) {
        const std::string holder = printable(filelock::read_holder(path));
        std::fprintf(stderr, "filelock-run: %s: %s%s%s\n", path,
                     nonblock ? "already locked" : "timed out waiting for the lock",
                     holder.empty() ? "" : "; held by ", holder.c_str());
        return conflict_code;
    }
    if (ec == filelock::errc::invalid_template)
        usage_error("invalid --content template '" + options.content_template + "'");
    if (ec) {
        std::fprintf(stderr, "filelock-run: cannot lock %s: %s\n", path, ec.message().c_str());
        return exit_oserr;
    }
    return run(argv + i + 1);
}
