// SPDX-License-Identifier: MIT
// A server-ish program: each "job" takes the lock with a timeout inside an
// asio::awaitable, so the event loop keeps serving while it waits.

#include <filelock/asio.hpp>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>

#include <cstdio>

using namespace std::chrono_literals;

asio::awaitable<void> job(int id, const char* path, int& running) {
    try {
        auto lock = co_await filelock::async_lock(path, 2s);
        std::printf("job %d: holds %s, working\n", id, path);
        asio::steady_timer work(co_await asio::this_coro::executor, 50ms);
        co_await work.async_wait(asio::use_awaitable);
        std::printf("job %d: done, releasing\n", id);
    } catch (const filelock::timeout_error& e) {
        std::printf("job %d: %s\n", id, e.what());
    } catch (const std::exception& e) {
        std::printf("job %d: error: %s\n", id, e.what());
    }
    --running;
}

// Ticks every 10 ms while the jobs wait for the lock and work.
asio::awaitable<void> heartbeat(const int& running) {
    asio::steady_timer t(co_await asio::this_coro::executor);
    int ticks = 0;
    while (running > 0) {
        t.expires_after(10ms);
        co_await t.async_wait(asio::use_awaitable);
        ++ticks;
    }
    std::printf("heartbeat: %d ticks meanwhile, the loop was never blocked\n", ticks);
}

int main(int argc, char** argv) {
    const char* path = argc > 1 ? argv[1] : "/tmp/filelock-demo.lock";
    asio::io_context io;
    int running = 3;
    for (int id = 1; id <= 3; ++id) asio::co_spawn(io, job(id, path, running), asio::detached);
    asio::co_spawn(io, heartbeat(running), asio::detached);
    io.run();
}
