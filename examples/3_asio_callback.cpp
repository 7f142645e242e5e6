// SPDX-License-Identifier: MIT
// The completion-token form with a plain callback.

#include <filelock/asio.hpp>

#include <asio/io_context.hpp>

#include <cstdio>

using namespace std::chrono_literals;

int main(int argc, char** argv) {
    const char* path = argc > 1 ? argv[1] : "/tmp/filelock-demo.lock";
    asio::io_context io;
    filelock::lock_options options;
    options.content_template = "{pid};{hostname}";

    int status = 1;
    filelock::async_lock(io, path, 5s, options, [&](std::error_code ec, filelock::lock_file lock) {
        if (ec == filelock::errc::timeout) {
            std::printf("%s is still held by %s\n", path, filelock::read_holder(path).c_str());
        } else if (ec) {
            std::printf("cannot lock %s: %s\n", path, ec.message().c_str());
        } else {
            std::printf("holding %s (content \"%s\")\n", lock.path().string().c_str(),
                        filelock::read_holder(path).c_str());
            status = 0;
        }  // `lock` is released here
    });
    io.run();
    return status;
}
