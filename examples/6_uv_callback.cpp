// SPDX-License-Identifier: MIT
// libuv with callbacks; the second request is cancelled from a timer.

#include <filelock/uv.hpp>

#include <cstdio>

using namespace std::chrono_literals;

int main(int argc, char** argv) {
    const char* path = argc > 1 ? argv[1] : "/tmp/filelock-demo.lock";
    uv_loop_t loop;
    uv_loop_init(&loop);

    filelock::lock_file first;
    filelock::uv::async_lock(&loop, path, 5s, [&](std::error_code ec, filelock::lock_file lock) {
        std::printf("first: %s\n", ec ? ec.message().c_str() : "locked");
        first = std::move(lock);  // keep it: the second request must wait
    });
    auto second =
        filelock::uv::async_lock(&loop, path, 30s, [&](std::error_code ec, filelock::lock_file) {
            std::printf("second: %s\n", ec ? ec.message().c_str() : "locked");
            first.close();
        });

    uv_timer_t cancel_timer;
    uv_timer_init(&loop, &cancel_timer);
    cancel_timer.data = &second;
    uv_timer_start(
        &cancel_timer,
        [](uv_timer_t* t) {
            static_cast<filelock::uv::request*>(t->data)->cancel();
            uv_close(reinterpret_cast<uv_handle_t*>(t), nullptr);
        },
        50, 0);

    uv_run(&loop, UV_RUN_DEFAULT);
    return uv_loop_close(&loop) == 0 ? 0 : 1;
}
