// SPDX-License-Identifier: MIT
#pragma once

// A loopback TCP proxy for fault injection in the etcd tests: it forwards to
// a target port, drops every connection on demand, or answers every request
// itself with a canned HTTP response (malformed JSON, a truncated body, an
// error status).

#include "etcd_member.hpp"

#include <atomic>
#include <mutex>
#include <poll.h>
#include <string_view>
#include <thread>
#include <vector>

namespace test {

class tcp_proxy {
public:
    /// Forwards to 127.0.0.1:`target` (0: answer with `canned` only).
    explicit tcp_proxy(int target, std::string canned = {}) : target_(target), canned_(canned) {
        listen_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        ::setsockopt(listen_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::bind(listen_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
            ::listen(listen_, 64) != 0)
            throw std::runtime_error("proxy: bind/listen");
        socklen_t len = sizeof a;
        ::getsockname(listen_, reinterpret_cast<sockaddr*>(&a), &len);
        port_ = ntohs(a.sin_port);
        ::pipe2(wake_, O_CLOEXEC);
        thread_ = std::thread([this] { loop(); });
    }
    ~tcp_proxy() {
        stop_ = true;
        poke();
        thread_.join();
        for (auto& p : pairs_) close_pair(p);
        ::close(listen_);
        ::close(wake_[0]);
        ::close(wake_[1]);
    }
    tcp_proxy(const tcp_proxy&) = delete;
    tcp_proxy& operator=(const tcp_proxy&) = delete;

    int port() const { return port_; }
    std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }
    /// Closes every connection now (new ones are accepted again).
    void drop_all() {
        drop_ = true;
        poke();
        while (drop_) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    /// Stops (or resumes) moving bytes and accepting, as a SIGSTOPped
    /// member: connections stay open, the kernel still completes handshakes.
    void pause(bool on) {
        paused_ = on;
        poke();
    }
    /// Closes (or no longer closes) every connection that carries a watch
    /// request (`POST /v3/watch`) before it reaches the target: unary
    /// requests (keep-alives, ranges) still go through.
    void refuse_watches(bool on) { refuse_watches_ = on; }
    /// Connections accepted so far.
    int accepted() const { return accepted_; }

private:
    struct pair {
        int client = -1, server = -1;
        std::string request;  // canned mode: the request read so far
    };

    void poke() { (void)!::write(wake_[1], "x", 1); }

    static void close_pair(pair& p) {
        if (p.client >= 0) ::close(p.client);
        if (p.server >= 0) ::close(p.server);
        p.client = p.server = -1;
    }

    void loop() {
        while (!stop_) {
            if (drop_) {
                for (auto& p : pairs_) close_pair(p);
                pairs_.clear();
                drop_ = false;
            }
            if (paused_) {
                pollfd w{wake_[0], POLLIN, 0};
                if (::poll(&w, 1, 100) > 0) {
                    char buf[64];
                    (void)!::read(wake_[0], buf, sizeof buf);
                }
                continue;
            }
            std::vector<pollfd> fds{{listen_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
            for (auto& p : pairs_) {
                fds.push_back({p.client, POLLIN, 0});
                if (p.server >= 0) fds.push_back({p.server, POLLIN, 0});
            }
            if (::poll(fds.data(), fds.size(), 100) <= 0) continue;
            if (fds[1].revents) {
                char buf[64];
                (void)!::read(wake_[0], buf, sizeof buf);
            }
            if (fds[0].revents & POLLIN) accept_one();
            std::vector<pair> keep;
            for (auto& p : pairs_) {
                if (p.client < 0) continue;
                if (!pump(p)) {
                    close_pair(p);
                    continue;
                }
                keep.push_back(p);
            }
            pairs_ = std::move(keep);
        }
    }

    void accept_one() {
        const int c = ::accept4(listen_, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) return;
        ++accepted_;
        pair p;
        p.client = c;
        if (target_) {
            p.server = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            sockaddr_in a{};
            a.sin_family = AF_INET;
            a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            a.sin_port = htons(static_cast<unsigned short>(target_));
            if (::connect(p.server, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
                close_pair(p);
                return;
            }
        }
        pairs_.push_back(p);
    }

    // Moves what is readable (non-blocking peeks through poll with 0).
    bool pump(pair& p) {
        char buf[65536];
        pollfd f[2] = {{p.client, POLLIN, 0}, {p.server, POLLIN, 0}};
        ::poll(f, p.server >= 0 ? 2 : 1, 0);
        if (f[0].revents) {
            const ssize_t n = ::read(p.client, buf, sizeof buf);
            if (n <= 0) return false;
            if (p.server >= 0) {
                if (refuse_watches_ &&
                    std::string_view(buf, static_cast<std::size_t>(n)).find("POST /v3/watch") !=
                        std::string_view::npos)
                    return false;
                if (::write(p.server, buf, static_cast<std::size_t>(n)) != n) return false;
            } else {
                p.request.append(buf, static_cast<std::size_t>(n));
                // Answer once the headers (and the short JSON body) are in.
                if (p.request.find("\r\n\r\n") != std::string::npos) {
                    (void)!::write(p.client, canned_.data(), canned_.size());
                    return false;  // and close: a truncated answer stays truncated
                }
            }
        }
        if (p.server >= 0 && f[1].revents) {
            const ssize_t n = ::read(p.server, buf, sizeof buf);
            if (n <= 0) return false;
            if (::write(p.client, buf, static_cast<std::size_t>(n)) != n) return false;
        }
        return true;
    }

    int target_;
    std::string canned_;
    int listen_ = -1, port_ = 0;
    int wake_[2] = {-1, -1};
    std::atomic<bool> stop_{false}, drop_{false}, paused_{false}, refuse_watches_{false};
    std::atomic<int> accepted_{0};
    std::vector<pair> pairs_;
    std::thread thread_;
};

}  // namespace test
