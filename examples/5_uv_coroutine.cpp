// SPDX-License-Identifier: MIT
// libuv with C++20 coroutines: filelock::uv::task and co_await async_lock.

#include <filelock/uv.hpp>

#include <cstdio>

using namespace std::chrono_literals;

filelock::uv::task<int> run(uv_loop_t* loop, const char* path) {
    try {
        auto lock = co_await filelock::uv::async_lock(loop, path, 2s);
        std::printf("holding %s\n", path);
        // a timeout on a lock we already hold ourselves
        std::error_code ec;
        co_await filelock::uv::async_lock(loop, path, 100ms, filelock::lock_options{}, {}, ec);
        std::printf("second attempt: %s\n", ec.message().c_str());
        co_return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        co_return 1;
    }
}

int main(int argc, char** argv) {
    const char* path = argc > 1 ? argv[1] : "/tmp/filelock-demo.lock";
    uv_loop_t loop;
    uv_loop_init(&loop);
    auto task = run(&loop, path);
    task.start();
    uv_run(&loop, UV_RUN_DEFAULT);
    const int status = task.result();
    return uv_loop_close(&loop) == 0 ? status : 1;
}
