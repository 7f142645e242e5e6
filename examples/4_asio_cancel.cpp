// SPDX-License-Identifier: MIT
// Two ways to stop waiting: race the lock against a timer with
// awaitable_operators, or emit a cancellation signal.

#include <filelock/asio.hpp>

#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/io_context.hpp>

#include <cstdio>

using namespace std::chrono_literals;
using namespace asio::experimental::awaitable_operators;

asio::awaitable<void> race(const char* path) {
    auto ex = co_await asio::this_coro::executor;
    asio::steady_timer giveup(ex, 200ms);
    auto winner =
        co_await (filelock::async_lock(ex, path, filelock::wait_forever, asio::use_awaitable) ||
                  giveup.async_wait(asio::use_awaitable));
    std::printf("race: %s\n", winner.index() == 0 ? "got the lock" : "gave up first");
}

int main(int argc, char** argv) {
    const char* path = argc > 1 ? argv[1] : "/tmp/filelock-demo.lock";
    try {
        filelock::lock_file held(path);  // make the others wait
        asio::io_context io;
        asio::co_spawn(io, race(path), asio::detached);

        asio::cancellation_signal stop;
        filelock::async_lock(
            io, path, 30s,
            asio::bind_cancellation_slot(stop.slot(), [](std::error_code ec, filelock::lock_file) {
                std::printf("signal: %s\n", ec.message().c_str());
            }));
        asio::steady_timer later(io, 50ms);
        later.async_wait([&](std::error_code) { stop.emit(asio::cancellation_type::terminal); });
        io.run();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
