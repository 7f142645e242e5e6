// SPDX-License-Identifier: MIT
// Uncontended acquire+release cycle: the raw-syscall floor against
// lock_file, simple_lock_file, the Asio (standalone and Boost.Asio) and the
// libuv async_lock, measured
// side by side (rounds interleaved) in one run. Prints medians and ratios.
//
//   bench_uncontended [ROUNDS] [ITERS] [DIR]

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
#include <string>
#include <sys/file.h>
#include <unistd.h>
#include <vector>

namespace {

using clk = std::chrono::steady_clock;

// What raw-c in lockbench does: open, flock, pwrite " <pid>\n", ftruncate,
// unlock, close.
void raw_cycle(const char* path, const std::string& content) {
    const int fd = ::open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0 || ::flock(fd, LOCK_EX | LOCK_NB) != 0) std::abort();
    if (::pwrite(fd, content.data(), content.size(), 0) < 0) std::abort();
    if (::ftruncate(fd, static_cast<off_t>(content.size())) != 0) std::abort();
    ::flock(fd, LOCK_UN);
    ::close(fd);
}

void raw_nopid_cycle(const char* path) {
    const int fd = ::open(path, O_RDONLY | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0 || ::flock(fd, LOCK_EX | LOCK_NB) != 0) std::abort();
    ::flock(fd, LOCK_UN);
    ::close(fd);
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
    using namespace std::chrono_literals;
    const int rounds = argc > 1 ? std::atoi(argv[1]) : 15;
    const int iters = argc > 2 ? std::atoi(argv[2]) : 2000;
    const std::string dir = argc > 3 ? argv[3] : "/tmp";
    const std::string path = dir + "/filelock-bench-uncontended.lock";
    const std::filesystem::path fpath = path;  // what a caller that locks repeatedly keeps
    const std::string content = " " + std::to_string(::getpid()) + "\n";
    filelock::lock_options simple;
    simple.write_content = false;

    struct candidate {
        const char* name;
        const char* floor;  // which floor it compares with
        std::function<void()> cycle;
        std::vector<double> ns;
    };
    std::vector<candidate> cs;
    cs.push_back({"raw syscalls (floor)", nullptr, [&] { raw_cycle(path.c_str(), content); }, {}});
    cs.push_back({"raw, no content (floor)", nullptr, [&] { raw_nopid_cycle(path.c_str()); }, {}});
    cs.push_back({"lock_file", "raw syscalls (floor)", [&] { filelock::lock_file l(fpath); }, {}});
    cs.push_back({"simple_lock_file",
                  "raw, no content (floor)",
                  [&] { filelock::simple_lock_file l(fpath); },
                  {}});
    cs.push_back({"filelock::lock(path, 1s)",
                  "raw syscalls (floor)",
                  [&] { auto l = filelock::lock(fpath, 1s); },
                  {}});
#ifdef FILELOCK_BENCH_ASIO
    asio::io_context io;
    cs.push_back({"asio async_lock",
                  "raw syscalls (floor)",
                  [&] {
                      filelock::async_lock(io, fpath, 1s,
                                           [](std::error_code ec, filelock::lock_file) {
                                               if (ec) std::abort();
                                           });
                      io.restart();
                      io.run();
                  },
                  {}});
#endif
#ifdef FILELOCK_BENCH_BOOST_ASIO
    boost::asio::io_context bio;
    cs.push_back({"boost.asio async_lock",
                  "raw syscalls (floor)",
                  [&] {
                      filelock::async_lock(bio, fpath, 1s,
                                           [](boost::system::error_code ec, filelock::lock_file) {
                                               if (ec) std::abort();
                                           });
                      bio.restart();
                      bio.run();
                  },
                  {}});
#endif
#ifdef FILELOCK_BENCH_UV
    uv_loop_t loop;
    uv_loop_init(&loop);
    cs.push_back({"uv async_lock",
                  "raw syscalls (floor)",
                  [&] {
                      filelock::uv::async_lock(&loop, fpath, 1s,
                                               [](std::error_code ec, filelock::lock_file) {
                                                   if (ec) std::abort();
                                               });
                      uv_run(&loop, UV_RUN_DEFAULT);
                  },
                  {}});
#endif
    for (auto& c : cs)
        for (int i = 0; i < iters / 10; ++i) c.cycle();  // warm up
    for (int r = 0; r < rounds; ++r)
        for (auto& c : cs) {
            const auto t0 = clk::now();
            for (int i = 0; i < iters; ++i) c.cycle();
            const auto t1 = clk::now();
            c.ns.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count() / iters);
        }
    std::printf("uncontended acquire+release, %d rounds x %d cycles, median ns/cycle, %s\n", rounds,
                iters, dir.c_str());
    std::printf("%-28s %12s %10s  %s\n", "", "ns/cycle", "ratio", "(vs)");
    for (auto& c : cs) {
        const double m = median(c.ns);
        double floor = m;
        if (c.floor)
            for (auto& f : cs)
                if (std::string(f.name) == c.floor) floor = median(f.ns);
        std::printf("%-28s %12.0f %9.3fx  %s\n", c.name, m, m / floor, c.floor ? c.floor : "");
    }
#ifdef FILELOCK_BENCH_UV
    uv_loop_close(&loop);
#endif
    ::unlink(path.c_str());
}
