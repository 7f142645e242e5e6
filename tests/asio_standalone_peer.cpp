// SPDX-License-Identifier: MIT
// The standalone Asio flavour, in test_boost_asio beside test_asio.cpp's
// Boost.Asio flavour: one program, one translation unit per flavour (each
// flavour's names in its own inline namespace, so nothing is defined twice).

#include <filelock/asio.hpp>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>

#include <atomic>
#include <chrono>
#include <filesystem>

namespace test {

// `n` coroutines on a standalone io_context each take the lock at `path`
// once and hold it across a 1 ms timer; a holder that finds `inside` taken
// counts an overlap. Returns how many acquired.
int standalone_rounds(const std::filesystem::path& path, int n, std::atomic<int>& inside,
                      std::atomic<int>& overlaps) {
    asio::io_context io;
    int acquired = 0;
    for (int i = 0; i < n; ++i)
        asio::co_spawn(
            io,
            [&]() -> asio::awaitable<void> {
                auto l = co_await filelock::async_lock(path, std::chrono::seconds(60));
                if (inside.fetch_add(1) != 0) ++overlaps;
                asio::steady_timer t(co_await asio::this_coro::executor,
                                     std::chrono::milliseconds(1));
                co_await t.async_wait(asio::use_awaitable);
                inside.fetch_sub(1);
                ++acquired;
            },
            asio::detached);
    io.run();
    return acquired;
}

}  // namespace test
