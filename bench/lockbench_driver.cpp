// SPDX-License-Identifier: MIT
// filelock as a lockbench peer (../shared/lockbench, see its README):
// acquire = the timeout-bounded API of the sync facade (default), of the Asio
// adapter on standalone Asio (-DLOCKBENCH_ASIO) or on Boost.Asio
// (-DLOCKBENCH_BOOST_ASIO), or of the libuv adapter (-DLOCKBENCH_UV), each
// run to completion on its own event loop; release = lock_file::close().
// -DLOCKBENCH_NO_QUEUE: the sync facade with lock_options::queue_local_waiters
// off (no queue of either kind), to measure what the queue costs.

#include "lockbench_driver.h"

#include <filelock/lock_file.hpp>
#if defined(LOCKBENCH_ASIO)
#include <filelock/asio.hpp>
#include <asio/io_context.hpp>
#elif defined(LOCKBENCH_BOOST_ASIO)
#include <filelock/boost_asio.hpp>
#include <boost/asio/io_context.hpp>
namespace asio = boost::asio;
#elif defined(LOCKBENCH_UV)
#include <filelock/uv.hpp>
#endif

#include <chrono>
#include <cstdio>

namespace {

std::chrono::nanoseconds to_timeout(double seconds) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::chrono::duration<double>(seconds));
}

void* finish(std::error_code ec, filelock::lock_file lock, int* timed_out) {
    if (ec == filelock::errc::timeout) {
        *timed_out = 1;
        return nullptr;
    }
    if (ec) {
        std::fprintf(stderr, "filelock: %s\n", ec.message().c_str());
        return nullptr;
    }
    // One lock held at a time (lockbench's drivers are single-threaded), in
    // one place, as raw-c's driver keeps its descriptor: no allocation of
    // the driver's own in the cycle.
    static filelock::lock_file held;
    held = std::move(lock);
    return &held;
}

void* acquire(const char* path, double timeout_s, int* timed_out) {
    std::error_code ec;
    filelock::lock_file lock;
#if defined(LOCKBENCH_ASIO) || defined(LOCKBENCH_BOOST_ASIO)
    static asio::io_context io;
    filelock::async_lock(io, path, to_timeout(timeout_s), [&](auto e, filelock::lock_file l) {
        ec = e;
        lock = std::move(l);
    });
    io.restart();
    io.run();
#elif defined(LOCKBENCH_UV)
    static uv_loop_t* loop = [] {
        static uv_loop_t l;
        uv_loop_init(&l);
        return &l;
    }();
    filelock::uv::async_lock(loop, path, to_timeout(timeout_s),
                             [&](std::error_code e, filelock::lock_file l) {
                                 ec = e;
                                 lock = std::move(l);
                             });
    uv_run(loop, UV_RUN_DEFAULT);
#else
    filelock::lock_options options;
#if defined(LOCKBENCH_NO_QUEUE)
    options.queue_local_waiters = false;
#endif
    lock = filelock::lock(path, to_timeout(timeout_s), options, ec);
#endif
    return finish(ec, std::move(lock), timed_out);
}

void release(void* handle) { static_cast<filelock::lock_file*>(handle)->close(); }

}  // namespace

int main(int argc, char** argv) {
#if defined(LOCKBENCH_ASIO)
    lockbench_ops ops = {"filelock-asio", acquire, release};
#elif defined(LOCKBENCH_BOOST_ASIO)
    lockbench_ops ops = {"filelock-boost-asio", acquire, release};
#elif defined(LOCKBENCH_UV)
    lockbench_ops ops = {"filelock-uv", acquire, release};
#elif defined(LOCKBENCH_NO_QUEUE)
    lockbench_ops ops = {"filelock-noqueue", acquire, release};
#else
    lockbench_ops ops = {"filelock", acquire, release};
#endif
    return lockbench_main(argc, argv, &ops);
}
