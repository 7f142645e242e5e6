// SPDX-License-Identifier: MIT
// The etcd session: the lease's grant and keep-alives, the lost signal of
// the held locks, the revoke when the client goes.
#include "session.hpp"

#include <algorithm>

namespace filelock::etcd::detail {

void session::grant() {
    auto after_auth = [this] {
        http_.post("/v3/lease/grant", request::grant(keeper_.ttl()),
                   [w = weak_from_this(), sent = lease_clock::now()](http_reply& r) {
                       auto self = w.lock();
                       if (!self) return;
                       grant_reply g;
                       std::string why;
                       const auto ec = decode_grant(r, g, why);
                       const bool retry = ec && self->retry_grant(r, ec);
                       self->grant_retry_.answered(r.status);
                       if (!ec) self->keep(g, sent);
                       self->granted(ec, why, retry);
                   });
    };
    // With a token already, a refused one is renewed by the transport.
    if (cfg_.user.empty() || http_.has_token()) return after_auth();
    http_.post("/v3/auth/authenticate", request::authenticate(cfg_.user, cfg_.password),
               [w = weak_from_this(), after_auth](http_reply& r) {
                   auto self = w.lock();
                   if (!self) return;
                   std::string token, why;
                   if (const auto ec = parse_token(r, token, why))
                       return self->granted(ec, why, self->retry_grant(r, ec));
                   self->http_.set_token(std::move(token));
                   after_auth();
               });
}

bool session::retry_grant(const http_reply& r, std::error_code ec) {
    return grant_retry_.failed(r.status, transient(r, ec), r.ec == errc::unreachable);
}

void session::keep(const grant_reply& g, lease_clock::time_point sent) {
    keeper_.granted(g.id, sent, std::chrono::seconds(g.ttl));
    arm_lost();
    keepalive_timer_->arm(keeper_.next_keepalive(steady::now(), false), [this] { keepalive(); });
}

void session::arm_lost() {
    // The timer runs on steady time; the deadline is on the lease's clock.
    const auto left = keeper_.deadline() - lease_clock::now();
    lost_timer_->arm(steady::now() + std::chrono::duration_cast<steady::duration>(left),
                     [this] { lose_session("no keep-alive answered within the TTL"); });
}

void session::granted(std::error_code ec, const std::string& why, bool retry) {
    if (!ec) grant_retry_.succeeded();
    auto waiters = std::move(lease_waiters_);
    lease_waiters_.clear();
    if (ec && retry) {
        // Those whose deadline allows wait for another try, on the next
        // endpoint (the transport moved on).
        const auto now = steady::now();
        std::vector<lease_waiter> done;
        for (auto& w : waiters) {
            if (w.owner.expired()) continue;
            (grant_retry::waits(w.deadline, now) ? lease_waiters_ : done).push_back(std::move(w));
        }
        waiters = std::move(done);
        if (!lease_waiters_.empty()) {
            grant_timer_->arm(grant_retry_.next(now), [this] { grant(); });
        }
    }
    for (auto& w : waiters) w.f(ec, why);
}

void session::keepalive() {
    const auto lease = keeper_.id();
    if (!lease) return;
    const auto sent = lease_clock::now();
    http_.post(
        "/v3/lease/keepalive", request::keepalive(lease),
        [w = weak_from_this(), sent, lease](http_reply& r) {
            auto self = w.lock();
            if (!self || self->keeper_.id() != lease) return;
            std::int64_t ttl = -1;
            std::string why;
            const bool failed = static_cast<bool>(decode_keepalive(r, ttl, why));
            switch (self->keeper_.answered(sent, failed, ttl)) {
                case lease_keeper::verdict::gone:
                    return self->lose_session("the lease expired or was revoked");
                case lease_keeper::verdict::renewed: self->arm_lost(); break;
                case lease_keeper::verdict::failed: break;
            }
            self->keepalive_timer_->arm(self->keeper_.next_keepalive(steady::now(), failed),
                                        [s = self.get()] { s->keepalive(); });
        },
        {}, keeper_.request_timeout());
}

void session::lose_session(const std::string& why) {
    (void)why;
    const auto old = keeper_.give_up();
    if (!old) return;
    keepalive_timer_->cancel();
    lost_timer_->cancel();
    auto held = held_;
    for (auto& w : held)
        if (auto h = w.lock(); h && h->lease == old) lose(*h, errc::lost);
    // Pending acquisitions on the old lease line up again on a new one.
    fail_over_ops(old);
    // The old lease may still be alive on the server (a partition). While a
    // lock held on it is not released by its owner, the lease is left to
    // expire by its TTL: the margin is the owner's time to stop before anyone
    // else can be granted, and a revoke now would grant the next waiter at
    // once. Once every such lock is released, it is revoked (best effort).
    retired_.push_back(old);
    revoke_retired();
}

void session::revoke_retired() {
    for (auto it = retired_.begin(); it != retired_.end();) {
        const auto lease = *it;
        const bool in_use = std::any_of(held_.begin(), held_.end(), [lease](const auto& w) {
            auto h = w.lock();
            if (!h || h->lease != lease) return false;
            std::lock_guard<std::mutex> g(h->m);
            return !h->released;
        });
        if (in_use) {
            ++it;
            continue;
        }
        it = retired_.erase(it);
        http_.post("/v3/lease/revoke", request::revoke(lease),
                   [self = shared_from_this()](http_reply&) {});
    }
}

void session::lose(held_state& h, std::error_code why) {
    {
        std::lock_guard<std::mutex> g(h.m);
        if (h.lost || h.released) return;
        h.lost = why;
    }
    if (h.watch_id) http_.cancel(std::exchange(h.watch_id, 0));
    if (h.claimed) {
        // The lock no longer excludes: the name is free for this session
        // (a release of this lock is guarded by its revision).
        h.claimed = false;
        claims_.unclaim(h.key);
    }
    if (auto f = std::move(h.on_lost)) {
        h.on_lost = nullptr;
        reactor_->post([f = std::move(f), why] { f(why); });
    }
}

void session::watch_held(const std::shared_ptr<held_state>& h) { run_held(h, h->watcher.start()); }

void session::run_held(const std::shared_ptr<held_state>& h, held_watch::action a) {
    using kind = held_watch::action::kind;
    if (h->released || h->lost) return;
    std::weak_ptr<held_state> w = h;
    switch (a.what) {
        case kind::none: return;
        case kind::lost:
            lose(*h, errc::lost);
            if (a.ask_lease) keepalive();  // revoked? the session is told
            return;
        case kind::wait:
            if (!h->rewatch) h->rewatch = loop().make_timer();
            h->rewatch->arm(a.until, [w] {
                if (auto h = w.lock()) h->s->run_held(h, h->watcher.on_timer());
            });
            return;
        case kind::check:
            if (h->watch_id) http_.cancel(std::exchange(h->watch_id, 0));
            if (std::exchange(h->checking, true)) return;  // one at a time
            // A unary request: a refused token is renewed by the transport,
            // and the key is checked while it is not watched.
            http_.post("/v3/kv/range", json{{"key", base64(h->key)}}.dump(), [w](http_reply& r) {
                auto h = w.lock();
                if (!h) return;
                h->checking = false;
                if (h->released || h->lost) return;
                h->s->run_held(h, h->watcher.on_check(r, steady::now()));
            });
            return;
        case kind::watch: break;
    }
    ++watches;
    h->split = {};
    h->watch_id = http_.post(
        "/v3/watch", request::watch(h->key, a.from),
        [w](http_reply&) {
            auto h = w.lock();
            if (!h || h->released || h->lost) return;
            h->watch_id = 0;
            h->s->run_held(h, h->watcher.on_stream_end(steady::now()));
        },
        [w](std::string_view bytes) {
            auto h = w.lock();
            if (!h || h->released || h->lost) return;
            h->split.feed(bytes, [&](std::string_view text) {
                const auto next = h->watcher.on_message(decode_watch(text), steady::now());
                if (next.what == kind::none) return;
                // Acted on after the stream's callbacks return.
                h->s->loop().post([w, next] {
                    if (auto h = w.lock()) h->s->run_held(h, next);
                });
            });
        });
}

void session::maybe_revoke() {
    if (!closing_ || !keeper_.id() || !ops_.empty()) return;
    for (auto& w : held_)
        if (auto h = w.lock(); h && !h->released) return;
    const auto old = keeper_.give_up();
    keepalive_timer_->cancel();
    lost_timer_->cancel();
    http_.post("/v3/lease/revoke", request::revoke(old),
               [self = shared_from_this()](http_reply&) {});
}

session_handle::session_handle(std::unique_ptr<reactor> r, const config& cfg) {
    std::string why;
    if (auto ec = validate(cfg, why)) throw std::system_error(ec, "filelock: etcd: " + why);
    s_ = std::make_shared<session>(std::move(r), cfg);
    s_->loop().on_shutdown([w = std::weak_ptr<session>(s_)] {
        if (auto s = w.lock()) s->abandon();
    });
}

session_handle::~session_handle() {
    if (s_) s_->close();
}

std::uint64_t session_handle::lock(std::string name, std::chrono::nanoseconds timeout,
                                   std::function<void(lock_result)> done) {
    return s_->lock(std::move(name), timeout, {}, std::move(done));
}

std::uint64_t session_handle::lock(std::string name, std::chrono::nanoseconds timeout,
                                   const lock_options& o, std::function<void(lock_result)> done) {
    return s_->lock(std::move(name), timeout, {o.mode, o.slots}, std::move(done));
}

void session_handle::cancel(std::uint64_t op, std::error_code code) { s_->cancel(op, code); }
std::uint64_t session_handle::requests() const noexcept { return s_->http().sent(); }
std::uint64_t session_handle::watches() const noexcept { return s_->watches; }
std::int64_t session_handle::lease() const noexcept { return s_->lease(); }

}  // namespace filelock::etcd::detail
