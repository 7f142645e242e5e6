// SPDX-License-Identifier: MIT
#pragma once

// HTTP to etcd's JSON gateway through libcurl's multi interface, driven by
// the loop's reactor (CURLMOPT_SOCKETFUNCTION / CURLMOPT_TIMERFUNCTION): no
// thread, no blocking call. Requests fail over among the endpoints while no
// byte of an answer came.

#include <filelock/detail/etcd_session.hpp>
#include <filelock/etcd.hpp>

#include <curl/curl.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace filelock::etcd::detail {

struct http_reply {
    std::error_code ec;  // transport failure (errc::unreachable, ...)
    long status = 0;     // HTTP status when an answer came
    std::string body;    // the answer (empty for streams)
    std::string endpoint;
    std::string detail;  // libcurl's message for a transport failure
};

class transport {
public:
    using done_fn = std::function<void(http_reply&)>;
    using chunk_fn = std::function<void(std::string_view)>;

    transport(reactor& r, const config& cfg);
    ~transport();
    transport(const transport&) = delete;
    transport& operator=(const transport&) = delete;

    /// POSTs `body` to `path` (e.g. "/v3/kv/txn"). `done` runs once, from
    /// the loop, never inline. With `chunk`, the answer is a stream: its
    /// bytes go to `chunk` as they come, and there is no request timeout.
    /// Returns an id for `cancel`. `timeout` (not 0) bounds this request
    /// below the configured dial + request timeouts.
    std::uint64_t post(std::string path, std::string body, done_fn done, chunk_fn chunk = {},
                       std::chrono::milliseconds timeout = {});
    /// Drops the request: `done` is never called.
    void cancel(std::uint64_t id) noexcept;
    /// Drops every request.
    void drop_all() noexcept;
    /// Sent with every request from now on (etcd's auth token). A request
    /// refused for its token (the server's --auth-token-ttl ran out) is sent
    /// again, once, after authenticating anew with the config's user.
    void set_token(std::string token) { token_ = std::move(token); }
    bool has_token() const noexcept { return !token_.empty(); }
    const std::string& endpoint() const noexcept { return cfg_.endpoints[current_]; }
    /// Requests sent (streams not counted), retries included.
    std::uint64_t sent() const noexcept { return sent_; }

private:
    struct request;
    struct sock;
    static int on_socket(CURL*, curl_socket_t fd, int what, void* self, void* sockp);
    static int on_timer(CURLM*, long ms, void* self);
    static std::size_t on_write(char* p, std::size_t, std::size_t n, void* req);
    void start(request& r);
    void drive(curl_socket_t fd, int flags);
    void finished();
    void deliver_chunks();
    bool reauthenticate(request& r);
    void authenticated(http_reply& a);
    std::weak_ptr<void> alive_token() { return alive_; }

    reactor& reactor_;
    const config& cfg_;
    CURLM* multi_ = nullptr;
    std::unique_ptr<reactor::timer> timer_;
    std::map<curl_socket_t, std::unique_ptr<reactor::socket>> socks_;
    std::map<std::uint64_t, std::unique_ptr<request>> requests_;
    std::uint64_t next_id_ = 1;
    std::uint64_t sent_ = 0;
    std::size_t current_ = 0;
    std::string token_;
    bool authenticating_ = false;
    std::vector<std::uint64_t> after_auth_;  // refused requests, sent again once authenticated
    std::shared_ptr<int> alive_ = std::make_shared<int>(0);  // callbacks check it
};

}  // namespace filelock::etcd::detail
