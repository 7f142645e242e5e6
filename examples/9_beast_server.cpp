// SPDX-License-Identifier: MIT
// A Boost.Beast HTTP server whose handler runs its job under a lock file,
// waiting at most 2 s: 503 with Retry-After when the lock is not won in time.
// Runs by itself: another process holds the lock for 3 s while the program's
// own client sends two overlapping requests (the second 1.6 s after the first).

#include <filelock/boost_asio.hpp>

#include <boost/asio.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include <sys/wait.h>
#include <unistd.h>
#include <cstdio>
#include <thread>

namespace net = boost::asio;
namespace http = boost::beast::http;
using tcp = net::ip::tcp;
using namespace std::chrono_literals;

net::awaitable<void> serve(tcp::socket s, const char* path) {
    boost::beast::flat_buffer buf;
    http::request<http::string_body> req;
    co_await http::async_read(s, buf, req, net::use_awaitable);
    http::response<http::string_body> res{http::status::ok, req.version()};
    try {
        auto lock = co_await filelock::async_lock(path, 2s);
        net::steady_timer job(s.get_executor(), 100ms);  // the job, under the lock
        co_await job.async_wait(net::use_awaitable);
        res.body() = "job done under the lock";
    } catch (const filelock::timeout_error&) {
        res.result(http::status::service_unavailable);
        res.set(http::field::retry_after, "2");
        res.body() = "lock busy, try again";
    } catch (const std::exception& e) {
        res.result(http::status::internal_server_error);
        res.body() = e.what();
    }
    res.prepare_payload();
    co_await http::async_write(s, res, net::use_awaitable);
}

net::awaitable<void> listen(tcp::acceptor& acceptor, const char* path) {
    for (;;)
        net::co_spawn(acceptor.get_executor(),
                      serve(co_await acceptor.async_accept(net::use_awaitable), path),
                      net::detached);
}

net::awaitable<void> request(tcp::endpoint server, int n, std::chrono::milliseconds after) {
    auto ex = co_await net::this_coro::executor;
    co_await net::steady_timer(ex, after).async_wait(net::use_awaitable);
    tcp::socket s(ex);
    co_await s.async_connect(server, net::use_awaitable);
    co_await http::async_write(s, http::request<http::empty_body>{http::verb::post, "/job", 11},
                               net::use_awaitable);
    boost::beast::flat_buffer buf;
    http::response<http::string_body> res;
    co_await http::async_read(s, buf, res, net::use_awaitable);
    std::printf("request %d: %u %s%s%s (%s)\n", n, res.result_int(),
                std::string(res.reason()).c_str(),
                res.count(http::field::retry_after) ? ", Retry-After: " : "",
                std::string(res[http::field::retry_after]).c_str(), res.body().c_str());
}

int main(int argc, char** argv) {
    const char* path = argc > 1 ? argv[1] : "/tmp/filelock-demo.lock";
    int ready[2];
    if (::pipe(ready) != 0) return std::perror("pipe"), 1;
    const pid_t holder = ::fork();
    if (holder == 0) {  // the other process: holds the lock for 3 s
        filelock::lock_file lock(path);
        (void)!::write(ready[1], "r", 1);
        std::this_thread::sleep_for(3s);
        return 0;
    }
    char c;
    if (holder < 0 || ::read(ready[0], &c, 1) != 1) return std::puts("no holder process"), 1;
    std::printf("another process holds %s for 3 s\n", path);

    net::io_context io;
    tcp::acceptor acceptor(io, {net::ip::make_address("127.0.0.1"), 0});  // a free port
    net::co_spawn(io, listen(acceptor, path), net::detached);
    int answered = 0, status = 0;
    auto done = [&](std::exception_ptr e) {
        try {
            if (e) std::rethrow_exception(e);
        } catch (const std::exception& x) {
            std::printf("request failed: %s\n", x.what());
            status = 1;
        }
        if (++answered == 2) io.stop();
    };
    net::co_spawn(io, request(acceptor.local_endpoint(), 1, 0ms), done);
    net::co_spawn(io, request(acceptor.local_endpoint(), 2, 1600ms), done);
    io.run();
    ::waitpid(holder, nullptr, 0);
    return status;
}
