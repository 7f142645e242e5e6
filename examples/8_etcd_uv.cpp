// SPDX-License-Identifier: MIT
// etcd's lock on a libuv loop, with a callback.
//
//   ./8_etcd_uv [http://127.0.0.1:2379]
#include <filelock/etcd_uv.hpp>

#include <cstdio>
#include <optional>

using namespace std::chrono_literals;

int main(int argc, char** argv) {
    filelock::etcd::config cfg;
    if (argc > 1) cfg.endpoints = {argv[1]};
    uv_loop_t loop;
    uv_loop_init(&loop);
    int status = 0;
    try {
        // The client's keep-alives run on the loop until it is destroyed.
        std::optional<filelock::etcd::uv_client> etcd(std::in_place, &loop, cfg);
        etcd->async_lock("jobs/nightly", 5s, [&](filelock::etcd::lock_result r) {
            if (r.ec) {
                std::printf("%s\n", r.message.c_str());  // the endpoint and the cause
                status = 1;
                return etcd.reset();
            }
            std::printf("holding %s, fencing token %lld\n", r.held.key().c_str(),
                        static_cast<long long>(r.held.fencing_token()));
            r.held.release([&](std::error_code) { etcd.reset(); });  // the key is deleted
        });
        uv_run(&loop, UV_RUN_DEFAULT);
    } catch (const std::system_error& e) {
        std::printf("%s\n", e.what());
        status = 1;
    }
    uv_run(&loop, UV_RUN_DEFAULT);  // the client's handles close
    uv_loop_close(&loop);
    return status;
}
