// SPDX-License-Identifier: MIT
// Cross-process handoff latency and the cost of waiting.
//
// 1. Handoff: another process holds the lock for U(1,10) ms, takes t_rel and
//    releases (unlock + close); we take t_acq when our acquire returns.
//    latency = t_acq - t_rel (CLOCK_MONOTONIC in both processes). The floor
//    is a blocking flock(); the methods run round-robin in one run.
// 2. Waiting cost: CPU time (getrusage) a waiter burns over a 5 s wait that
//    times out, one process per method, all at once.
//
//   bench_handoff [ROUNDS] [DIR]

#include <filelock/lock_file.hpp>
#ifdef FILELOCK_BENCH_ASIO
#include <filelock/asio.hpp>
#include <asio/io_context.hpp>
#endif
#ifdef FILELOCK_BENCH_BOOST_ASIO  // both flavours in one translation unit
#include <filelock/boost_asio.hpp>
#include <boost/asio/io_context.hpp>
#endif
#ifdef FILELOCK_BENCH_UV
#include <filelock/uv.hpp>
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fcntl.h>
#include <functional>
#include <random>
#include <string>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

long long now_ns() { return clk::now().time_since_epoch().count(); }

void read_all(int fd, void* p, size_t n) {
    auto* c = static_cast<char*>(p);
    while (n) {
        const ssize_t r = ::read(fd, c, n);
        if (r <= 0) std::exit(3);
        c += r;
        n -= static_cast<size_t>(r);
    }
}

// The other process: on 'h' takes the lock, answers 'H', holds it U(1,10) ms,
// then sends t_rel and releases as our lock_file does (unlock, close).
void releaser(const std::string& path, int in, int out) {
    std::mt19937 rng(1);
    char cmd;
    while (::read(in, &cmd, 1) == 1 && cmd == 'h') {
        const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
        if (fd < 0 || ::flock(fd, LOCK_EX) != 0) std::exit(4);
        (void)!::write(out, "H", 1);
        std::this_thread::sleep_for(std::chrono::microseconds(1000 + rng() % 9000));
        const long long t_rel = now_ns();
        ::flock(fd, LOCK_UN);
        ::close(fd);
        (void)!::write(out, &t_rel, sizeof t_rel);
    }
    std::exit(0);
}

struct method {
    const char* name;
    // Waits for the lock, takes t_acq as soon as it is held, releases it.
    std::function<long long()> acquire;
    std::vector<double> us;
};

double pct(std::vector<double> v, double p) {
    std::sort(v.begin(), v.end());
    const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
    return v[i];
}

double cpu_seconds() {
    rusage ru{};
    ::getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

}  // namespace

int main(int argc, char** argv) {
    const int rounds = argc > 1 ? std::atoi(argv[1]) : 200;
    const std::string dir = argc > 2 ? argv[2] : "/tmp";
    const std::string path = dir + "/filelock-bench-handoff.lock";
    const std::filesystem::path fpath = path;

    int to_child[2], from_child[2];
    if (::pipe2(to_child, O_CLOEXEC) != 0 || ::pipe2(from_child, O_CLOEXEC) != 0) return 2;
    const pid_t child = ::fork();
    if (child == 0) releaser(path, to_child[0], from_child[1]);

    filelock::lock_options wake, nowake;
    nowake.wake_on_release = false;
    std::vector<method> ms;
    ms.push_back({"blocking flock() (floor)",
                  [&] {
                      const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
                      ::flock(fd, LOCK_EX);
                      const long long t = now_ns();
                      ::flock(fd, LOCK_UN);
                      ::close(fd);
                      return t;
                  },
                  {}});
    auto sync = [&](const filelock::lock_options& o) {
        return [&fpath, o] {
            auto l = filelock::lock(fpath, 30s, o);
            return now_ns();
        };
    };
    ms.push_back({"lock(), wake on release", sync(wake), {}});
    ms.push_back({"lock(), backoff only", sync(nowake), {}});
#ifdef FILELOCK_BENCH_ASIO
    asio::io_context io;
    auto asio_m = [&](const filelock::lock_options& o) {
        return [&io, &fpath, o] {
            long long t = 0;
            filelock::async_lock(io, fpath, 30s, o, [&t](std::error_code ec, filelock::lock_file) {
                if (ec) std::abort();
                t = now_ns();
            });
            io.restart();
            io.run();
            return t;
        };
    };
    ms.push_back({"asio async_lock, wake", asio_m(wake), {}});
    ms.push_back({"asio async_lock, backoff only", asio_m(nowake), {}});
#endif
#ifdef FILELOCK_BENCH_BOOST_ASIO
    boost::asio::io_context bio;
    auto boost_m = [&](const filelock::lock_options& o) {
        return [&bio, &fpath, o] {
            long long t = 0;
            filelock::async_lock(bio, fpath, 30s, o,
                                 [&t](boost::system::error_code ec, filelock::lock_file) {
                                     if (ec) std::abort();
                                     t = now_ns();
                                 });
            bio.restart();
            bio.run();
            return t;
        };
    };
    ms.push_back({"boost.asio async_lock, wake", boost_m(wake), {}});
    ms.push_back({"boost.asio async_lock, backoff only", boost_m(nowake), {}});
#endif
#ifdef FILELOCK_BENCH_UV
    uv_loop_t loop;
    uv_loop_init(&loop);
    auto uv_m = [&](const filelock::lock_options& o) {
        return [&loop, &fpath, o] {
            long long t = 0;
            filelock::uv::async_lock(&loop, fpath, 30s, o,
                                     [&t](std::error_code ec, filelock::lock_file) {
                                         if (ec) std::abort();
                                         t = now_ns();
                                     });
            uv_run(&loop, UV_RUN_DEFAULT);
            return t;
        };
    };
    ms.push_back({"uv async_lock, wake", uv_m(wake), {}});
    ms.push_back({"uv async_lock, backoff only", uv_m(nowake), {}});
#endif

    for (int r = 0; r < rounds; ++r)
        for (auto& m : ms) {
            (void)!::write(to_child[1], "h", 1);
            char c;
            read_all(from_child[0], &c, 1);  // held elsewhere now: start waiting
            const long long t_acq = m.acquire();
            long long t_rel;
            read_all(from_child[0], &t_rel, sizeof t_rel);
            m.us.push_back(static_cast<double>(t_acq - t_rel) / 1000.0);
        }
    (void)!::write(to_child[1], "q", 1);
    ::waitpid(child, nullptr, 0);

    std::printf("cross-process handoff latency, %d handoffs per method (round-robin), %s\n", rounds,
                dir.c_str());
    std::printf("%-36s %9s %9s %9s %9s %9s %9s\n", "", "p50 us", "p90 us", "p99 us", "max us",
                "p50/floor", "p99/floor");
    const double f50 = pct(ms[0].us, 0.5), f99 = pct(ms[0].us, 0.99);
    for (auto& m : ms)
        std::printf("%-36s %9.1f %9.1f %9.1f %9.1f %8.2fx %8.2fx\n", m.name, pct(m.us, 0.5),
                    pct(m.us, 0.9), pct(m.us, 0.99), pct(m.us, 1.0), pct(m.us, 0.5) / f50,
                    pct(m.us, 0.99) / f99);
    std::fflush(stdout);

    // Waiting cost: one process per method waits 5 s on a lock held here.
    const double wait_s = argc > 3 ? std::atof(argv[3]) : 5.0;
    filelock::lock_file held(fpath);
    std::printf("\nCPU burnt by one waiter over a %.1f s wait that times out\n", wait_s);
    std::printf("%-36s %12s\n", "", "CPU ms");
    auto timeout =
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(wait_s));
    struct cpu_case {
        const char* name;
        std::function<void()> wait;
    };
    std::vector<cpu_case> cases = {
        {"lock(), wake on release",
         [&] {
             std::error_code ec;
             filelock::lock(fpath, timeout, wake, ec);
         }},
        {"lock(), backoff only",
         [&] {
             std::error_code ec;
             filelock::lock(fpath, timeout, nowake, ec);
         }},
#ifdef FILELOCK_BENCH_ASIO
        {"asio async_lock, wake",
         [&] {
             asio::io_context ctx;
             filelock::async_lock(ctx, fpath, timeout, wake,
                                  [](std::error_code, filelock::lock_file) {});
             ctx.run();
         }},
#endif
#ifdef FILELOCK_BENCH_BOOST_ASIO
        {"boost.asio async_lock, wake",
         [&] {
             boost::asio::io_context ctx;
             filelock::async_lock(ctx, fpath, timeout, wake,
                                  [](boost::system::error_code, filelock::lock_file) {});
             ctx.run();
         }},
#endif
#ifdef FILELOCK_BENCH_UV
        {"uv async_lock, wake",
         [&] {
             uv_loop_t l;
             uv_loop_init(&l);
             filelock::uv::async_lock(&l, fpath, timeout, wake,
                                      [](std::error_code, filelock::lock_file) {});
             uv_run(&l, UV_RUN_DEFAULT);
             uv_loop_close(&l);
         }},
#endif
    };
    std::vector<std::pair<pid_t, int>> kids;
    for (auto& c : cases) {
        int p[2];
        if (::pipe2(p, O_CLOEXEC) != 0) return 2;
        const pid_t k = ::fork();
        if (k == 0) {
            const auto real = timeout;
            timeout = std::chrono::milliseconds(5);  // warm up: first-call costs are not waiting
            c.wait();
            timeout = real;
            const double before = cpu_seconds();
            c.wait();
            const double used = cpu_seconds() - before;
            (void)!::write(p[1], &used, sizeof used);
            ::_exit(0);
        }
        ::close(p[1]);
        kids.emplace_back(k, p[0]);
    }
    for (size_t i = 0; i < cases.size(); ++i) {
        double used = -1;
        read_all(kids[i].second, &used, sizeof used);
        ::waitpid(kids[i].first, nullptr, 0);
        std::printf("%-36s %12.2f\n", cases[i].name, used * 1000.0);
    }
    ::unlink(path.c_str());
    return 0;
}
