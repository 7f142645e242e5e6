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

#include <filelock/lock_file.hpp>
#include <filelock/uv.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fcntl.h>
#include <functional>
#include <string>
#include <sys/file.h>
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

}  // namespace

int main(int argc, char** argv) {
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
