// SPDX-License-Identifier: MIT
// A lock across machines: etcd's lock (as `etcdctl lock jobs/nightly`), with
// its fencing token and the lost signal.
//
//   ./7_etcd_asio [http://127.0.0.1:2379]
#include <filelock/etcd_asio.hpp>

#include <cstdio>
#include <optional>

using namespace std::chrono_literals;

asio::awaitable<void> nightly(filelock::etcd::client& etcd) {
    try {
        auto lock = co_await etcd.async_lock("jobs/nightly", 5s);
        std::printf("holding %s, fencing token %lld\n", lock.key().c_str(),
                    static_cast<long long>(lock.fencing_token()));
        // Stop working if ownership can no longer be guaranteed.
        etcd.async_wait_lost(lock, [](std::error_code ec) {
            if (ec == filelock::etcd::errc::lost) std::puts("lost the lock: stopping");
        });
        // ... write to storage with lock.fencing_token() ...
        asio::steady_timer work(co_await asio::this_coro::executor, 1s);
        co_await work.async_wait(asio::use_awaitable);
        lock.release();
    } catch (const filelock::timeout_error& e) {
        std::printf("%s; held by %s\n", e.what(), e.holder().c_str());
    } catch (const std::system_error& e) {
        std::printf("%s\n", e.what());  // names the endpoint and the cause
    }
}

int main(int argc, char** argv) {
    filelock::etcd::config cfg;
    if (argc > 1) cfg.endpoints = {argv[1]};
    asio::io_context io;
    try {
        // The client's keep-alives run on `io` until it is destroyed.
        std::optional<filelock::etcd::client> etcd(std::in_place, io.get_executor(), cfg);
        asio::co_spawn(io, nightly(*etcd), [&](std::exception_ptr) { etcd.reset(); });
        io.run();
    } catch (const std::system_error& e) {  // a bad configuration
        std::printf("%s\n", e.what());
        return 1;
    }
}
