// In-process contention: N waiters on one event loop (libuv, then Asio) all
// want one lock; each takes it once and releases it on the next loop
// iteration. Prints the
// handoffs per second, the longest wait, the descriptors and inotify watches
// in use while they wait, the memory per waiter, and how far the order of
// acquisition strays from the order of arrival (FIFO inversions).
//
//   bench_contention [N ...]        (default: 10 100 1000)

#include <filelock/asio.hpp>
#include <filelock/uv.hpp>

#include <asio/io_context.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <dirent.h>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <unistd.h>
#include <vector>

using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;
namespace fs = std::filesystem;

namespace {

int fd_count() {
    int n = 0;
    if (DIR* d = ::opendir("/proc/self/fd")) {
        while (dirent* e = ::readdir(d)) n += e->d_name[0] != '.';
        ::closedir(d);
    }
    return n - 1;
}

int inotify_watches() {
    int n = 0;
    for (const auto& e : fs::directory_iterator("/proc/self/fd")) {
        std::error_code ec;
        if (fs::read_symlink(e.path(), ec).string() != "anon_inode:inotify") continue;
        std::ifstream in("/proc/self/fdinfo/" + e.path().filename().string());
        std::string line;
        while (std::getline(in, line)) n += line.rfind("inotify wd:", 0) == 0;
    }
    return n;
}

long rss_kib() {
    std::ifstream in("/proc/self/statm");
    long size = 0, resident = 0;
    in >> size >> resident;
    return resident * ::sysconf(_SC_PAGESIZE) / 1024;
}

struct result {
    double seconds = 0, max_wait_ms = 0;
    int fds = 0, watches = 0, inversions = 0, acquired = 0;
    double kib_per_waiter = 0;
};

template <class Start, class Run>
result measure(int n, Start start_one, Run run) {
    result r;
    std::vector<int> order;
    order.reserve(static_cast<size_t>(n));
    const int fds0 = fd_count();
    const long rss0 = rss_kib();
    const auto t0 = clk::now();
    for (int i = 0; i < n; ++i)
        start_one([&r, &order, i, t0](std::error_code ec) {
            if (ec) return;
            ++r.acquired;
            order.push_back(i);
            r.max_wait_ms = std::chrono::duration<double, std::milli>(clk::now() - t0).count();
        });
    run(/*sample=*/[&] {
        r.fds = fd_count() - fds0;
        r.watches = inotify_watches();
        r.kib_per_waiter = static_cast<double>(rss_kib() - rss0) / n;
    });
    r.seconds = std::chrono::duration<double>(clk::now() - t0).count();
    for (size_t k = 1; k < order.size(); ++k) r.inversions += order[k] < order[k - 1];
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
            static_cast<holder*>(t->data)->lock.close();
            uv_close(reinterpret_cast<uv_handle_t*>(t),
                     [](uv_handle_t* t) { delete static_cast<holder*>(t->data); });
        },
        0, 0);
}

void print(const char* loop, int n, const result& r) {
    std::printf("%-5s %6d %9d %12.0f %11.1f %8d %8d %10.2f %11d\n", loop, n, r.acquired,
                r.acquired / r.seconds, r.max_wait_ms, r.fds, r.watches, r.kib_per_waiter,
                r.inversions);
    std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<int> sizes;
    for (int i = 1; i < argc; ++i) sizes.push_back(std::atoi(argv[i]));
    if (sizes.empty()) sizes = {10, 100, 1000};
    const fs::path path = "/tmp/filelock-bench-contention.lock";
    filelock::lock_options opts;

    std::printf(
        "in-process contention on one lock, each waiter acquires once, holds for one loop "
        "iteration\n");
    std::printf("%-5s %6s %9s %12s %11s %8s %8s %10s %11s\n", "loop", "N", "acquired", "handoffs/s",
                "max wait ms", "fds", "watches", "KiB/waiter", "inversions");
    for (int n : sizes) {
        uv_loop_t loop;
        uv_loop_init(&loop);
        auto r = measure(
            n,
            [&](auto done) {
                filelock::uv::async_lock(&loop, path, 600s, opts,
                                         [done, &loop](std::error_code ec, filelock::lock_file l) {
                                             done(ec);
                                             release_later(&loop, std::move(l));
                                         });
            },
            [&](auto sample) {
                uv_run(&loop, UV_RUN_NOWAIT);  // every waiter made its first attempt
                sample();
                uv_run(&loop, UV_RUN_DEFAULT);
            });
        uv_loop_close(&loop);
        print("uv", n, r);

        asio::io_context io;
        r = measure(
            n,
            [&](auto done) {
                filelock::async_lock(
                    io, path, 600s, opts, [done, &io](std::error_code ec, filelock::lock_file l) {
                        done(ec);
                        asio::post(io,
                                   [held = std::make_shared<filelock::lock_file>(std::move(l))] {});
                    });
            },
            [&](auto sample) {
                sample();  // the first attempts were made when the operations started
                io.run();
            });
        print("asio", n, r);
    }
    ::unlink(path.c_str());
}
