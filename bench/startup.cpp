// SPDX-License-Identifier: MIT
// filelock-run's start-up against flock(1)'s: the wall time of
// `filelock-run -n L true` and of `flock -n L true`, run in interleaved
// pairs (so that both see the same load), each spawned with posix_spawn and
// timed from the spawn to the end of its wait (CLOCK_MONOTONIC). Prints the
// medians, the ratio of medians and the median of the per-pair ratios, and
// the shared objects each loads (counted with LD_DEBUG=libs, the dynamic
// loader and libc included).
//
//   bench_startup [FILELOCK_RUN [FLOCK [PAIRS]]]
//   (defaults: build/tools/filelock-run, /usr/bin/flock, 30)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <spawn.h>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

extern char** environ;

namespace {

// Runs argv with stdout and stderr on `out_fd` (or /dev/null); returns the
// wall time in ms, or -1 if it did not exit 0.
double run_once(const std::vector<std::string>& argv, char** envp, int out_fd = -1) {
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    if (out_fd >= 0) {
        posix_spawn_file_actions_adddup2(&fa, out_fd, 1);
        posix_spawn_file_actions_adddup2(&fa, out_fd, 2);
    } else {
        posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
        posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    }
    const auto t0 = std::chrono::steady_clock::now();
    pid_t pid = 0;
    const int rc = ::posix_spawn(&pid, args[0], &fa, nullptr, args.data(), envp);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) return -1;
    int st = 0;
    while (::waitpid(pid, &st, 0) < 0) {
    }
    const auto t1 = std::chrono::steady_clock::now();
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) return -1;
    return std::chrono::duration<double, std::milli>(t1 - t0).count();
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// The shared objects the dynamic loader loads for argv (LD_DEBUG=libs:
// one "calling init:" line per object, the program excluded).
int libraries(const std::vector<std::string>& argv, std::vector<std::string>* names) {
    char tmpl[] = "/tmp/bench-startup-XXXXXX";
    const int fd = ::mkstemp(tmpl);
    if (fd < 0) return -1;
    ::unlink(tmpl);
    std::vector<std::string> env_store;
    for (char** e = environ; *e; ++e) env_store.push_back(*e);
    env_store.push_back("LD_DEBUG=libs");
    std::vector<char*> envp;
    for (auto& e : env_store) envp.push_back(e.data());
    envp.push_back(nullptr);
    if (run_once(argv, envp.data(), fd) < 0) {
        ::close(fd);
        return -1;
    }
    std::string text;
    char buf[4096];
    ssize_t n;
    ::lseek(fd, 0, SEEK_SET);
    while ((n = ::read(fd, buf, sizeof buf)) > 0) text.append(buf, static_cast<std::size_t>(n));
    ::close(fd);
    // Lines read "   PID:\tcalling init: PATH"; only the first process's
    // count (COMMAND, `true`, loads its own).
    const std::string first_pid = text.substr(0, text.find(':'));
    int count = 0;
    for (std::size_t at = 0; (at = text.find("calling init: ", at)) != std::string::npos;) {
        const std::size_t line = text.rfind('\n', at) + 1;  // npos + 1 == 0
        const std::size_t colon = text.find(':', line);
        at += 14;
        if (text.substr(line, colon - line) != first_pid) continue;
        const std::size_t end = text.find('\n', at);
        ++count;
        if (names) names->push_back(text.substr(at, end - at));
    }
    return count;
}

}  // namespace

int main(int argc, char** argv) {
    const std::string ours = argc > 1 ? argv[1] : "build/tools/filelock-run";
    const std::string flock = argc > 2 ? argv[2] : "/usr/bin/flock";
    const int pairs = argc > 3 ? std::atoi(argv[3]) : 30;
    char dir[] = "/tmp/bench-startup-XXXXXX";
    if (!::mkdtemp(dir)) return 1;
    const std::string lock = std::string(dir) + "/L";
    const std::vector<std::string> a{ours, "-n", lock, "true"}, b{flock, "-n", lock, "true"};
    // Warm the page cache and the loader's caches.
    for (int i = 0; i < 3; ++i) {
        if (run_once(a, environ) < 0 || run_once(b, environ) < 0) {
            std::fprintf(stderr, "bench_startup: %s or %s failed\n", ours.c_str(), flock.c_str());
            return 1;
        }
    }
    std::vector<double> ta, tb, ratio;
    for (int i = 0; i < pairs; ++i) {
        // Interleaved, and the order alternated, so that neither always
        // runs second (warmer).
        double x, y;
        if (i % 2 == 0) {
            x = run_once(a, environ);
            y = run_once(b, environ);
        } else {
            y = run_once(b, environ);
            x = run_once(a, environ);
        }
        if (x < 0 || y < 0) return 1;
        ta.push_back(x);
        tb.push_back(y);
        ratio.push_back(x / y);
    }
    std::vector<std::string> names;
    const int la = libraries(a, &names), lb = libraries(b, nullptr);
    ::unlink(lock.c_str());
    ::rmdir(dir);
    std::printf("pairs: %d (interleaved)\n", pairs);
    std::printf("filelock-run -n L true: median %.3f ms  (%s)\n", median(ta), ours.c_str());
    std::printf("flock -n L true:        median %.3f ms  (%s)\n", median(tb), flock.c_str());
    std::printf("ratio of medians: %.2fx   median of pair ratios: %.2fx\n", median(ta) / median(tb),
                median(ratio));
    std::printf("shared libraries loaded (LD_DEBUG=libs): filelock-run %d, flock %d\n", la, lb);
    for (const auto& n : names) std::printf("  %s\n", n.c_str());
    return 0;
}
