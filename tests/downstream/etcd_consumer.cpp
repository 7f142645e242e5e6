// SPDX-License-Identifier: MIT
// A downstream program of the etcd backend (Asio and libuv clients), built
// with strict warnings; it needs no running etcd (nothing is sent until a
// lock is asked for).
#include <filelock/etcd_asio.hpp>
#include <filelock/etcd_uv.hpp>

#include <cstdio>

int main() {
    filelock::etcd::config cfg;
    cfg.endpoints = {"http://127.0.0.1:2379"};
    std::string why;
    if (filelock::etcd::validate(cfg, why)) return 2;
    cfg.endpoints = {"ftp://x"};
    if (!filelock::etcd::validate(cfg, why)) return 3;
    cfg.endpoints = {"http://127.0.0.1:2379"};
    {
        asio::io_context io;
        filelock::etcd::client c(io.get_executor(), cfg);
        if (c.requests() != 0) return 4;
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    { filelock::etcd::uv_client c(&loop, cfg); }
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0) return 5;
    std::puts("etcd consumer ok");
    return 0;
}
