// SPDX-License-Identifier: MIT
// In-process contention: N waiters on one event loop (libuv, then Asio) all
// want one lock; each takes it once and releases it on the next loop
// iteration. Prints the handoffs per second, the local handoff latency (from
// the holder's close() to the next waiter's completion: p50 and p99), the
// longest wait, the most descriptors open on the lock file (the holder's
// among them) and inotify watches at any sample (every 2 ms), the
// memory per waiter, and how far the order of acquisition strays from the
// order of arrival (FIFO inversions). Each size runs with the local queue
// (the default) and without it (queue_local_waiters = false), side by side.
//
//   bench_contention [N ...]        (default: 10 1000 10000)

#include <filelock/asio.hpp>
#include <filelock/uv.hpp>

#include "../tests/proc_fds.hpp"

#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <unistd.h>
#include <vector>

using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;
namespace fs = std::filesystem;

namespace {

using test::fds_on;
using test::inotify_watches;

long rss_kib() {
    std::ifstream in("/proc/self/statm");
    long size = 0, resident = 0;
    in >> size >> resident;
    return resident * ::sysconf(_SC_PAGESIZE) / 1024;
}

struct result {
    double seconds = 0, max_wait_ms = 0, handoff_p50_us = 0, handoff_p99_us = 0;
    int fds = 0, watches = 0, inversions = 0, acquired = 0;
    double kib_per_waiter = 0;
};

// When the last holder called close(): the next completion measures the
// local handoff from it.
clk::time_point released_at{};
void release(filelock::lock_file& l) {
    released_at = clk::now();
    l.close();
}

double percentile(std::vector<double> v, double q) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[static_cast<size_t>(q * static_cast<double>(v.size() - 1))];
}

template <class Start, class Run>
result measure(const fs::path& path, int n, Start start_one, Run run) {
    result r;
    std::vector<int> order;
    std::vector<double> handoffs;
    order.reserve(static_cast<size_t>(n));
    handoffs.reserve(static_cast<size_t>(n));
    const long rss0 = rss_kib();
    released_at = {};
    const auto t0 = clk::now();
    for (int i = 0; i < n; ++i)
        start_one([&, i, t0](std::error_code ec) {
            const auto now = clk::now();
            if (ec) return;
            if (released_at != clk::time_point{})
                handoffs.push_back(
                    std::chrono::duration<double, std::micro>(now - released_at).count());
            ++r.acquired;
            order.push_back(i);
            r.max_wait_ms = std::chrono::duration<double, std::milli>(now - t0).count();
        });
    r.kib_per_waiter = static_cast<double>(rss_kib() - rss0) / n;
    // The run samples every few milliseconds until all have acquired: the
    // descriptors open on the lock file (the holder's among them) and the
    // watches. Sampling takes time: the handoff after it is left out.
    auto next_sample = clk::now();
    run([&] {
        // A sample costs time in proportion to the descriptors open: keep
        // sampling under 5% of the run.
        const auto t = clk::now();
        if (t < next_sample) return r.acquired < n;
        r.fds = std::max(r.fds, fds_on(path));
        r.watches = std::max(r.watches, inotify_watches());
        released_at = {};
        next_sample = clk::now() + 20 * (clk::now() - t);
        return r.acquired < n;
    });
    r.seconds = std::chrono::duration<double>(clk::now() - t0).count();
    for (size_t k = 1; k < order.size(); ++k) r.inversions += order[k] < order[k - 1];
    r.handoff_p50_us = percentile(handoffs, 0.5);
    r.handoff_p99_us = percentile(handoffs, 0.99);
    return r;
}

// Holds `l` until the next loop iteration.
void release_later(uv_loop_t* loop, filelock::lock_file l) {
    struct holder {
        uv_timer_t timer;
        filelock::lock_file lock;
    };
    auto* h = new holder{{}, std::move(l)};
    uv_timer_init(loop, &h->timer);
    h->timer.data = h;
    uv_timer_start(
        &h->timer,
        [](uv_timer_t* t) {
            release(static_cast<holder*>(t->data)->lock);
            uv_close(reinterpret_cast<uv_handle_t*>(t),
                     [](uv_handle_t* t) { delete static_cast<holder*>(t->data); });
        },
        0, 0);
}

void print(const char* loop, bool queue, int n, const result& r) {
    std::printf("%-5s %-5s %6d %9d %11.0f %9.1f %9.1f %11.1f %8d %8d %10.2f %11d\n", loop,
                queue ? "on" : "off", n, r.acquired, r.acquired / r.seconds, r.handoff_p50_us,
                r.handoff_p99_us, r.max_wait_ms, r.fds, r.watches, r.kib_per_waiter, r.inversions);
    std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<int> sizes;
    for (int i = 1; i < argc; ++i) sizes.push_back(std::atoi(argv[i]));
    if (sizes.empty()) sizes = {10, 1000, 10000};
    const fs::path path = "/tmp/filelock-bench-contention.lock";
    { std::ofstream touch(path); }

    // The floor of a local handoff, in raw system calls: the holder unlocks
    // and closes, the next waiter (its descriptor already open) locks and
    // writes its pid; "checked" adds the identity check (fstat + lstat) that
    // every safe acquisition makes.
    double floor_p50[2] = {};
    for (bool checked : {false, true}) {
        std::vector<double> v;
        int held = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
        ::flock(held, LOCK_EX);
        for (int i = 0; i < 20000; ++i) {
            const int next = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
            const auto t = clk::now();
            ::flock(held, LOCK_UN);
            ::close(held);
            if (::flock(next, LOCK_EX | LOCK_NB) != 0) return 1;
            if (checked) {
                struct ::stat a {
                }, b{};
                ::fstat(next, &a);
                ::lstat(path.c_str(), &b);
            }
            (void)!::pwrite(next, " 1\n", 3, 0);
            v.push_back(std::chrono::duration<double, std::micro>(clk::now() - t).count());
            held = next;
        }
        ::close(held);
        floor_p50[checked] = percentile(v, 0.5);
    }
    std::printf(
        "local handoff floor (raw syscalls): p50 %.1f us; with the identity check %.1f us\n\n",
        floor_p50[0], floor_p50[1]);
    std::printf(
        "in-process contention on one lock, each waiter acquires once, holds for one loop "
        "iteration\n");
    std::printf("%-5s %-5s %6s %9s %11s %9s %9s %11s %8s %8s %10s %11s\n", "loop", "queue", "N",
                "acquired", "handoffs/s", "p50 us", "p99 us", "max wait ms", "lock fds", "watches",
                "KiB/waiter", "inversions");
    for (int n : sizes)
        for (bool queue : {true, false}) {
            filelock::lock_options opts;
            opts.queue_local_waiters = queue;
            uv_loop_t loop;
            uv_loop_init(&loop);
            auto r = measure(
                path, n,
                [&](auto done) {
                    filelock::uv::async_lock(
                        &loop, path, 600s, opts,
                        [done, &loop](std::error_code ec, filelock::lock_file l) {
                            done(ec);
                            release_later(&loop, std::move(l));
                        });
                },
                [&](auto sample) {
                    uv_timer_t tick;
                    uv_timer_init(&loop, &tick);
                    std::function<bool()> f = sample;
                    tick.data = &f;
                    uv_timer_start(
                        &tick,
                        [](uv_timer_t* t) {
                            if (!(*static_cast<std::function<bool()>*>(t->data))())
                                uv_close(reinterpret_cast<uv_handle_t*>(t), nullptr);
                        },
                        2, 2);
                    uv_run(&loop, UV_RUN_DEFAULT);
                });
            uv_loop_close(&loop);
            print("uv", queue, n, r);

            asio::io_context io;
            r = measure(
                path, n,
                [&](auto done) {
                    filelock::async_lock(io, path, 600s, opts,
                                         [done, &io](std::error_code ec, filelock::lock_file l) {
                                             done(ec);
                                             asio::post(
                                                 io, [held = std::make_shared<filelock::lock_file>(
                                                          std::move(l))] { release(*held); });
                                         });
                },
                [&](auto sample) {
                    asio::steady_timer tick(io);
                    std::function<void()> again = [&] {
                        tick.expires_after(2ms);
                        tick.async_wait([&](std::error_code) {
                            if (sample()) again();
                        });
                    };
                    again();
                    io.run();
                });
            print("asio", queue, n, r);
        }
    ::unlink(path.c_str());
}
