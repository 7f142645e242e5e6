// SPDX-License-Identifier: MIT
// How local waiters and other processes share one lock: does a process with
// many local waiters starve another process?
//
// Process A runs K coroutines on one libuv loop; each takes the lock, holds
// it for HOLD, releases it and asks again at once. Process B (forked) is, in
// turn:
//   - another process like A (K coroutines on its own loop),
//   - one thread calling filelock::lock() in a loop (same hold),
//   - one thread calling blocking flock() in a loop (same hold),
// all running for SECONDS. Printed per process: acquisitions, share of the
// total, and the waits of its waiters (p50, p99, max). A starved process
// shows as a share near 0 and a max wait near SECONDS. Each pairing runs
// with A's local queue on (the default) and off.
//
//   bench_fairness [SECONDS] [K] [HOLD_US]      (default: 3 20 1000)
//
// And the cross-process queue with one waiter per process: while the lock is
// held, N processes start one after another, each once the previous one is
// queued (inspect() shows its ticket), each calling lock() once; then the
// lock is released.
//   bench_fairness --order [N...]               (default: 2 8 32, 5 rounds each)
// prints the grants' inversions against the arrival order (pairs served in
// the wrong order; 0 is first come, first served), and
//   bench_fairness --wakeups [N] [HOLD_US]      (default: 100 1000)
// prints how often the waiters were woken per handoff, from the release to
// the last grant: each waiting process sleeps at the release; its wake-ups
// until its win are the sleeps its threads began since (their voluntary
// context switches, /proc/PID/task/*/status at the release, then
// /proc/self/task/*/status at the win) plus the one it was in; summed over
// the waiters, divided by the N handoffs.
//
//   bench_fairness --stopped-head [N] [HELD_MS]  (default: 4 3000, 3 rounds)
// prints when each of N waiters was served, from the release, behind a head
// that queued first and was stopped (SIGSTOP) before they came; the lock is
// released HELD_MS after the last one queued, and the head continued once
// they are served.
//
// --order, --wakeups and --stopped-head take `--driver sync|asio|uv` first
// (default sync):
// each waiter calls filelock::lock(), or async_lock() on an Asio
// io_context or a libuv loop of its own, which it runs until the win.

#include <filelock/inspect.hpp>
#include <filelock/lock_file.hpp>
#include <filelock/uv.hpp>
#ifdef FILELOCK_BENCH_ASIO
#include <filelock/asio.hpp>
#include <asio/io_context.hpp>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <dirent.h>
#include <fcntl.h>
#include <functional>
#include <new>
#include <string>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

struct stats {
    long acquired = 0;
    double p50_ms = 0, p99_ms = 0, max_ms = 0;
};

stats summarize(std::vector<double> waits) {
    stats s;
    s.acquired = static_cast<long>(waits.size());
    if (waits.empty()) return s;
    std::sort(waits.begin(), waits.end());
    s.p50_ms = waits[(waits.size() - 1) / 2];
    s.p99_ms = waits[static_cast<size_t>(0.99 * static_cast<double>(waits.size() - 1))];
    s.max_ms = waits.back();
    return s;
}

double ms_since(clk::time_point t) {
    return std::chrono::duration<double, std::milli>(clk::now() - t).count();
}

// K waiters on one uv loop, each acquiring again as soon as it released.
stats uv_side(const std::string& path, int k, std::chrono::microseconds hold, clk::time_point end,
              bool queue) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    filelock::lock_options opts;
    opts.queue_local_waiters = queue;
    std::vector<double> waits;
    struct waiter {
        uv_timer_t timer;
        filelock::lock_file lock;
        clk::time_point asked;
    };
    std::vector<waiter> ws(static_cast<size_t>(k));
    std::function<void(waiter&)> ask = [&](waiter& w) {
        if (clk::now() >= end) return;
        w.asked = clk::now();
        filelock::uv::async_lock(
            &loop, path, 60s, opts, [&, pw = &w](std::error_code ec, filelock::lock_file l) {
                if (ec) return;
                waits.push_back(ms_since(pw->asked));
                pw->lock = std::move(l);
                // Hold: uv timers count milliseconds.
                uv_timer_start(
                    &pw->timer,
                    [](uv_timer_t* t) {
                        auto* w = static_cast<waiter*>(t->data);
                        w->lock.close();
                        (*static_cast<std::function<void(waiter&)>*>(t->loop->data))(*w);
                    },
                    static_cast<uint64_t>(hold.count() / 1000), 0);
            });
    };
    loop.data = &ask;
    for (auto& w : ws) {
        uv_timer_init(&loop, &w.timer);
        w.timer.data = &w;
        ask(w);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    for (auto& w : ws) uv_close(reinterpret_cast<uv_handle_t*>(&w.timer), nullptr);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return summarize(std::move(waits));
}

// One thread: lock(), hold, release, again.
stats sync_side(const std::string& path, std::chrono::microseconds hold, clk::time_point end) {
    std::vector<double> waits;
    while (clk::now() < end) {
        const auto t = clk::now();
        std::error_code ec;
        auto l = filelock::lock(path, 60s, {}, ec);
        if (ec) break;
        waits.push_back(ms_since(t));
        std::this_thread::sleep_for(hold);
    }
    return summarize(std::move(waits));
}

// One thread: blocking flock(), hold, unlock and close, again.
stats flock_side(const std::string& path, std::chrono::microseconds hold, clk::time_point end) {
    std::vector<double> waits;
    while (clk::now() < end) {
        const auto t = clk::now();
        const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
        if (fd < 0 || ::flock(fd, LOCK_EX) != 0) break;
        waits.push_back(ms_since(t));
        std::this_thread::sleep_for(hold);
        ::flock(fd, LOCK_UN);
        ::close(fd);
    }
    return summarize(std::move(waits));
}

void print(const char* who, const stats& s, long total) {
    std::printf("  %-34s %9ld %7.1f%% %9.3f %9.3f %9.1f\n", who, s.acquired,
                total ? 100.0 * static_cast<double>(s.acquired) / static_cast<double>(total) : 0.0,
                s.p50_ms, s.p99_ms, s.max_ms);
}

// Queued filelock waiters of `path` (their tickets), as inspect() sees them.
std::size_t queued(const std::string& path) {
    std::error_code ec;
    const auto st = filelock::inspect(path, ec);
    std::size_t n = 0;
    for (const auto& w : st.waiters) n += w.ticket != 0;
    return n;
}

// What the waiters of one run share with the parent.
struct board {
    std::atomic<int> granted{0};
    std::atomic<long long> released_ns{0};  // steady clock, shared by the processes
    int order[1025];                        // order[k]: the arrival index of the k-th grant
    long switches[1025];                    // per arrival index: its voluntary switches in lock()
    long involuntary[1025];
    double served_ms[1025];  // per arrival index: from the release to its grant
};

// The involuntary context switches of this process so far.
long involuntary_switches() {
    ::rusage u{};
    ::getrusage(RUSAGE_SELF, &u);
    return u.ru_nivcsw;
}

// The voluntary context switches of the threads of process `pid` so far
// ("self": this one), each read from /proc/PID/task/TID/status.
long voluntary_switches(const std::string& pid) {
    const std::string dir = "/proc/" + pid + "/task";
    DIR* d = ::opendir(dir.c_str());
    if (!d) return 0;
    long sum = 0;
    while (const dirent* e = ::readdir(d)) {
        if (e->d_name[0] == '.') continue;
        std::FILE* f = std::fopen((dir + "/" + e->d_name + "/status").c_str(), "r");
        if (!f) continue;
        char line[256];
        long v = 0;
        while (std::fgets(line, sizeof line, f))
            if (std::sscanf(line, "voluntary_ctxt_switches: %ld", &v) == 1) break;
        std::fclose(f);
        sum += v;
    }
    ::closedir(d);
    return sum;
}

enum class driver { sync, asio, uv };

const char* driver_name(driver d) {
    return d == driver::asio ? "asio" : d == driver::uv ? "uv" : "sync";
}

// Takes `path` once with driver `d`, waiting up to `timeout`; calls `won`
// at the win, in the thread that won (before the loop winds down).
std::error_code take(driver d, const std::string& path, std::chrono::seconds timeout,
                     const std::function<void()>& won) {
    std::error_code ec;
    filelock::lock_file held;
    switch (d) {
        case driver::sync:
            held = filelock::lock(path, timeout, {}, ec);
            if (!ec) won();
            break;
        case driver::asio: {
#ifdef FILELOCK_BENCH_ASIO
            asio::io_context io;
            filelock::async_lock(io, path, timeout, [&](std::error_code e, filelock::lock_file l) {
                ec = e;
                if (!e) won();
                held = std::move(l);
            });
            io.run();
#else
            ec = std::make_error_code(std::errc::function_not_supported);
#endif
            break;
        }
        case driver::uv: {
            uv_loop_t loop;
            uv_loop_init(&loop);
            filelock::uv::async_lock(&loop, path, timeout, {},
                                     [&](std::error_code e, filelock::lock_file l) {
                                         ec = e;
                                         if (!e) won();
                                         held = std::move(l);
                                     });
            uv_run(&loop, UV_RUN_DEFAULT);
            uv_loop_close(&loop);
            break;
        }
    }
    return ec;
}

// One run: N waiters started in order while the lock is held, then released
// (`held_on` after the last one queued). With `stop_first`, one more waiter
// comes first (arrival 0) and is stopped (SIGSTOP) once queued, then
// continued once the others are served. Fills `b`; returns the milliseconds
// from the release to the last grant of the others (negative: a waiter
// failed).
double queue_run(const std::string& path, int n, std::chrono::microseconds hold, board& b, driver d,
                 bool stop_first = false, std::chrono::milliseconds held_on = {}) {
    b.granted = 0;
    auto holder = filelock::lock_file(path);
    std::vector<pid_t> pids;
    bool ok = true;
    const int all = n + (stop_first ? 1 : 0);
    for (int i = 0; i < all && ok; ++i) {
        const pid_t pid = ::fork();
        if (pid == 0) {
            holder.close();  // our copy (closing it never unlocks the parent's lock)
            const long inv0 = involuntary_switches();
            const std::error_code ec = take(d, path, 120s, [&] {
                const long v1 = voluntary_switches("self");
                b.served_ms[i] = static_cast<double>(clk::now().time_since_epoch().count() -
                                                     b.released_ns.load()) /
                                 1e6;
                b.switches[i] += v1 + 1;  // the sleep it was in at the release ended too
                b.involuntary[i] = involuntary_switches() - inv0;
                b.order[b.granted.fetch_add(1)] = i;
                std::this_thread::sleep_for(hold);
            });
            ::_exit(ec ? 1 : 0);
        }
        pids.push_back(pid);
        // Arrived once queued: the next starts after that.
        const auto give_up = clk::now() + 10s;
        while (queued(path) < static_cast<std::size_t>(i + 1) && (ok = clk::now() < give_up))
            std::this_thread::sleep_for(1ms);
        int st = 0;
        if (ok && stop_first && i == 0)
            ok = ::kill(pid, SIGSTOP) == 0 && ::waitpid(pid, &st, WUNTRACED) == pid;
    }
    std::this_thread::sleep_for(held_on);
    // Each waiter sleeps now; it is woken and sleeps again from here on.
    for (int i = 0; i < all && ok; ++i)
        b.switches[i] = -voluntary_switches(std::to_string(pids[static_cast<size_t>(i)]));
    const auto released = clk::now();
    b.released_ns = released.time_since_epoch().count();
    holder.close();
    int failed = !ok;
    const auto reap = [&](pid_t pid) {
        int st = 0;
        ::waitpid(pid, &st, 0);
        failed += !WIFEXITED(st) || WEXITSTATUS(st) != 0;
    };
    for (std::size_t i = stop_first ? 1 : 0; i < pids.size(); ++i) reap(pids[i]);
    const double ms = ms_since(released);
    if (stop_first && !pids.empty()) {  // continued once the others are served
        ::kill(pids[0], SIGCONT);
        reap(pids[0]);
    }
    return failed ? -1.0 : ms;
}

int inversions(const board& b, int n) {
    int inv = 0;
    for (int x = 0; x < n; ++x)
        for (int y = x + 1; y < n; ++y) inv += b.order[x] > b.order[y];
    return inv;
}

board* shared_board() {
    void* m =
        ::mmap(nullptr, sizeof(board), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return m == MAP_FAILED ? nullptr : new (m) board;
}

// What each waiter calls: "lock()", "asio async_lock()", "uv async_lock()".
std::string call_of(driver d) {
    return d == driver::sync ? "lock()" : std::string(driver_name(d)) + " async_lock()";
}

int order_mode(const std::vector<int>& ns, const std::string& path, driver d) {
    board* b = shared_board();
    if (!b) return 1;
    std::printf("N processes, one %s each, started in order while the lock is held\n",
                call_of(d).c_str());
    std::printf("  %4s %6s %11s %18s\n", "N", "rounds", "inversions", "ms per handoff");
    int bad = 0;
    for (int n : ns) {
        constexpr int rounds = 5;
        int inv = 0;
        double ms = 0;
        for (int r = 0; r < rounds; ++r) {
            const double t = queue_run(path, n, 200us, *b, d);
            if (t < 0) return std::printf("  N=%d: a waiter failed\n", n), 2;
            inv += inversions(*b, n);
            ms += t;
        }
        bad += inv;
        std::printf("  %4d %6d %11d %18.3f\n", n, rounds, inv, ms / rounds / n);
        std::fflush(stdout);
    }
    ::unlink(path.c_str());
    return bad ? 3 : 0;
}

int wakeups_mode(int n, std::chrono::microseconds hold, const std::string& path, driver d) {
    board* b = shared_board();
    if (!b) return 1;
    const double ms = queue_run(path, n, hold, *b, d);
    if (ms < 0) return std::printf("a waiter failed\n"), 2;
    long total = 0, most = 0, inv = 0;
    for (int i = 0; i < n; ++i) {
        total += b->switches[i];
        most = std::max(most, b->switches[i]);
        inv += b->involuntary[i];
    }
    std::printf("%d waiting processes, one %s each, each holder keeps it %lld us\n", n,
                call_of(d).c_str(), static_cast<long long>(hold.count()));
    std::printf(
        "  wake-ups per handoff %.2f (voluntary switches of the waiters: %ld in %d "
        "handoffs; most for one waiter %ld; involuntary %ld)\n",
        static_cast<double>(total) / n, total, n, most, inv);
    std::printf("  inversions %d, %.3f ms per handoff\n", inversions(*b, n), ms / n);
    ::unlink(path.c_str());
    return 0;
}

int stopped_head_mode(int n, std::chrono::milliseconds held_on, const std::string& path, driver d) {
    board* b = shared_board();
    if (!b) return 1;
    std::printf(
        "%d processes, one %s each, behind a head stopped before they came; the lock released "
        "%lld ms after they queued\n",
        n, call_of(d).c_str(), static_cast<long long>(held_on.count()));
    std::printf("  %5s  %s\n", "round", "each served, ms after the release (in arrival order)");
    for (int r = 1; r <= 3; ++r) {
        if (queue_run(path, n, 200us, *b, d, true, held_on) < 0)
            return std::printf("  a waiter failed\n"), 2;
        std::printf("  %5d ", r);
        for (int i = 1; i <= n; ++i) std::printf(" %9.3f", b->served_ms[i]);
        std::printf("\n");
        std::fflush(stdout);
    }
    ::unlink(path.c_str());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    const std::string queue_path = "/tmp/filelock-bench-queue.lock";
    driver d = driver::sync;
    if (argc > 2 && std::string(argv[1]) == "--driver") {
        const std::string name = argv[2];
        if (name == "asio")
            d = driver::asio;
        else if (name == "uv")
            d = driver::uv;
        else if (name != "sync")
            return std::fprintf(stderr, "--driver: sync, asio or uv, not %s\n", argv[2]), 64;
#ifndef FILELOCK_BENCH_ASIO
        if (d == driver::asio)
            return std::fprintf(stderr, "--driver asio: built without Asio\n"), 64;
#endif
        argv += 2;
        argc -= 2;
        if (argc < 2 || (std::string(argv[1]) != "--order" && std::string(argv[1]) != "--wakeups" &&
                         std::string(argv[1]) != "--stopped-head"))
            return std::fprintf(stderr,
                                "--driver goes before --order, --wakeups or --stopped-head\n"),
                   64;
    }
    if (argc > 1 && std::string(argv[1]) == "--stopped-head")
        return stopped_head_mode(std::clamp(argc > 2 ? std::atoi(argv[2]) : 4, 1, 1024),
                                 std::chrono::milliseconds(argc > 3 ? std::atoi(argv[3]) : 3000),
                                 queue_path, d);
    if (argc > 1 && std::string(argv[1]) == "--order") {
        std::vector<int> ns;
        for (int i = 2; i < argc; ++i) ns.push_back(std::clamp(std::atoi(argv[i]), 1, 1024));
        if (ns.empty()) ns = {2, 8, 32};
        return order_mode(ns, queue_path, d);
    }
    if (argc > 1 && std::string(argv[1]) == "--wakeups")
        return wakeups_mode(std::clamp(argc > 2 ? std::atoi(argv[2]) : 100, 1, 1024),
                            std::chrono::microseconds(argc > 3 ? std::atoi(argv[3]) : 1000),
                            queue_path, d);

    const auto seconds = std::chrono::seconds(argc > 1 ? std::atoi(argv[1]) : 3);
    const int k = argc > 2 ? std::atoi(argv[2]) : 20;
    const auto hold = std::chrono::microseconds(argc > 3 ? std::atoi(argv[3]) : 1000);
    const std::string path = "/tmp/filelock-bench-fairness.lock";

    std::printf("two processes contend for one lock for %lld s, each holder keeps it %lld us\n",
                static_cast<long long>(seconds.count()), static_cast<long long>(hold.count()));
    std::printf("  %-34s %9s %8s %9s %9s %9s\n", "process", "acquired", "share", "wait p50",
                "p99 ms", "max ms");
    const char* others[] = {"uv", "lock()", "flock()"};
    for (const char* other : others)
        for (bool queue : {true, false}) {
            const auto start = clk::now() + 200ms;  // both sides start together
            const auto end = start + seconds;
            int pipefd[2];
            if (::pipe(pipefd) != 0) return 1;
            const pid_t pid = ::fork();
            if (pid == 0) {
                ::close(pipefd[0]);
                std::this_thread::sleep_until(start);
                const std::string o = other;
                const stats s = o == "uv"       ? uv_side(path, k, hold, end, queue)
                                : o == "lock()" ? sync_side(path, hold, end)
                                                : flock_side(path, hold, end);
                (void)!::write(pipefd[1], &s, sizeof s);
                ::_exit(0);
            }
            ::close(pipefd[1]);
            std::this_thread::sleep_until(start);
            const stats a = uv_side(path, k, hold, end, queue);
            stats b;
            if (::read(pipefd[0], &b, sizeof b) != sizeof b) return 2;
            ::close(pipefd[0]);
            ::waitpid(pid, nullptr, 0);

            std::printf("A: %d uv waiters, local queue %s; B: %s\n", k, queue ? "on" : "off",
                        std::string(other) == "uv" ? (std::to_string(k) + " uv waiters").c_str()
                                                   : (std::string("1 thread in ") + other).c_str());
            const long total = a.acquired + b.acquired;
            print("A", a, total);
            print("B", b, total);
            std::fflush(stdout);
        }
    ::unlink(path.c_str());
}
