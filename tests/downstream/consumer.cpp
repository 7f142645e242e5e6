// SPDX-License-Identifier: MIT
// A downstream program: the sync facade, the Asio adapter (with Asio's own
// headers included first) and the libuv adapter, as a user writes them.
#include <asio.hpp>  // before filelock's: the include order must not matter

#include <filelock/asio.hpp>
#include <filelock/lock_file.hpp>
#include <filelock/uv.hpp>
#include <filelock/version.hpp>

#include <cstdio>
#include <filesystem>
#include <mutex>

using namespace std::chrono_literals;
using namespace filelock;  // unqualified lock()/try_lock() must stay ours

int main(int argc, char** argv) {
    const std::filesystem::path path = argc > 1 ? argv[1] : "consumer.lock";
    auto held = lock(path, 1s, {.content_template = "{pid}@{hostname}"});
    std::error_code ec;
    try_lock(path, ec);
    if (ec != errc::locked) return 2;
    held.close();

    asio::io_context io;
    bool asio_ok = false;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            auto l = co_await async_lock(path, 1s);
            asio_ok = l.is_locked();
        },
        asio::detached);
    io.run();

    uv_loop_t loop;
    uv_loop_init(&loop);
    bool uv_ok = false;
    uv::async_lock(&loop, path, 1s, [&](std::error_code e, lock_file l) { uv_ok = !e && l; });
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0) return 3;
    std::printf("consumer %s: sync ok, asio %s, uv %s\n", FILELOCK_VERSION_STRING,
                asio_ok ? "ok" : "FAILED", uv_ok ? "ok" : "FAILED");
    return asio_ok && uv_ok ? 0 : 1;
}
