// SPDX-License-Identifier: MIT
// The etcd session (lease, keep-alive, lost signal) and its lock driver: an
// executor of the acquire state machine over the reactor. It sends the
// requests the machine asks for, arms its timer and the predecessor's watch,
// routes queue turns and cancellations, and cleans up after a failure.
#include <filelock/detail/file_backend.hpp>
#include <filelock/etcd.hpp>

#include "lock_backend.hpp"

#include <algorithm>
#include <list>
#include <map>
#include <mutex>

namespace filelock::etcd {

namespace {

class category_impl : public std::error_category {
public:
    const char* name() const noexcept override { return "filelock.etcd"; }
    std::string message(int v) const override {
        switch (static_cast<errc>(v)) {
            case errc::lost: return "the lock was lost";
            case errc::unreachable: return "no etcd endpoint could be reached";
            case errc::request_timeout: return "the request to etcd timed out";
            case errc::tls: return "TLS failed";
            case errc::http_status: return "etcd answered with an HTTP error";
            case errc::server: return "etcd reported an error";
            case errc::auth: return "etcd authentication failed";
            case errc::bad_reply: return "etcd's answer was malformed";
            case errc::invalid_argument: return "invalid argument";
            case errc::connection_reset: return "the connection to etcd was reset";
        }
        return "unknown etcd error";
    }
    std::error_condition default_error_condition(int v) const noexcept override {
        switch (static_cast<errc>(v)) {
            case errc::unreachable: return std::errc::host_unreachable;
            case errc::request_timeout: return std::errc::timed_out;
            case errc::invalid_argument: return std::errc::invalid_argument;
            case errc::connection_reset: return std::errc::connection_reset;
            default: return {v, *this};
        }
    }
};

}  // namespace

const std::error_category& etcd_category() noexcept {
    static const category_impl c;
    return c;
}

std::error_code validate(const config& cfg, std::string& why) {
    if (cfg.endpoints.empty()) {
        why = "no etcd endpoint";
        return errc::invalid_argument;
    }
    for (const auto& e : cfg.endpoints) {
        if (e.rfind("http://", 0) != 0 && e.rfind("https://", 0) != 0) {
            why = "the endpoint '" + e + "' is not http:// or https://";
            return errc::invalid_argument;
        }
    }
    if (cfg.ttl < std::chrono::seconds(1)) {
        why = "the lease TTL must be at least 1 s";
        return errc::invalid_argument;
    }
    std::string value;
    if (!cfg.content.empty()) {
        if (auto ec = filelock::detail::expand_content(cfg.content, value)) {
            why = "the content template '" + cfg.content + "' is invalid";
            return ec;
        }
    }
    return {};
}

namespace detail {

using filelock::detail::action;
using filelock::detail::wake_reason;
using steady = std::chrono::steady_clock;

class session;

struct held_state {
    std::shared_ptr<session> s;
    mutable std::mutex m;  // `lost` and `released` are read from any thread
    std::string name, key, endpoint;
    std::int64_t rev = 0, lease = 0, watch_from = 0;
    std::error_code lost;
    std::function<void(std::error_code)> on_lost;
    std::uint64_t watch_id = 0;
    std::unique_ptr<reactor::timer> rewatch;
    stream_splitter split;
    bool released = false;
    bool claimed = true;
};

namespace {
struct lock_op;
}

class session : public std::enable_shared_from_this<session> {
public:
    session(std::unique_ptr<reactor> r, const config& cfg)
        : reactor_(std::move(r)), cfg_(cfg), http_(*reactor_, cfg_) {
        ttl_ = cfg_.ttl;
        keepalive_timer_ = reactor_->make_timer();
        lost_timer_ = reactor_->make_timer();
        grant_timer_ = reactor_->make_timer();
        if (!cfg_.content.empty()) filelock::detail::expand_content(cfg_.content, value_);
    }
    ~session() {
        keepalive_timer_.reset();
        lost_timer_.reset();
        grant_timer_.reset();
    }

    reactor& loop() { return *reactor_; }
    transport& http() { return http_; }
    claims& names() { return claims_; }
    const std::string& value() const { return value_; }
    std::int64_t lease() const { return lease_; }
    const lease_state& lease_view() const { return lease_state_; }
    std::uint64_t watches = 0;

    std::uint64_t lock(std::string name, std::chrono::nanoseconds timeout,
                       std::function<void(lock_result)> done);
    void cancel(std::uint64_t id, std::error_code code);
    void op_finished(std::uint64_t id) { ops_.erase(id); }

    using lease_fn = std::function<void(std::error_code, const std::string&)>;
    /// Calls `f(ec, why)` once the session has a lease (granting one first).
    /// A grant that meets a transient failure is tried again until
    /// `deadline`, unless `owner` is gone meanwhile.
    void with_lease(steady::time_point deadline, std::weak_ptr<void> owner, lease_fn f) {
        if (lease_) {
            reactor_->post([f = std::move(f)] { f({}, {}); });
            return;
        }
        lease_waiters_.push_back({deadline, std::move(owner), std::move(f)});
        if (lease_waiters_.size() == 1) grant();
    }

    /// The client is gone: its pending acquisitions are cancelled; the
    /// lease is revoked once its held locks are released.
    void close();

    /// The loop goes away: drop every pending request and operation (their
    /// callbacks may be what keeps this session alive).
    void abandon() {
        auto self = shared_from_this();
        keepalive_timer_->cancel();
        lost_timer_->cancel();
        grant_timer_->cancel();
        lease_waiters_.clear();
        auto ops = std::move(ops_);
        ops_.clear();
        ops.clear();
        http_.drop_all();
    }

    void add_held(const std::shared_ptr<held_state>& h) { held_.push_back(h); }
    void held_done(held_state* h) {
        held_.remove_if([h](const std::weak_ptr<held_state>& w) {
            auto p = w.lock();
            return !p || p.get() == h;
        });
        maybe_revoke();
    }
    /// The held lock `h` is lost: tell its owner, once.
    void lose(held_state& h, std::error_code why);
    void watch_held(const std::shared_ptr<held_state>& h);

private:
    void grant();
    void granted(std::error_code ec, const std::string& why, bool retry = false);
    bool retry_grant(const http_reply& r, std::error_code ec);
    void arm_lost(steady::time_point sent, std::chrono::milliseconds ttl);
    void maybe_revoke();
    std::chrono::milliseconds keepalive_interval() const;

public:
    void keepalive();
    void lose_session(const std::string& why);

private:
    std::unique_ptr<reactor> reactor_;
    config cfg_;
    transport http_;
    claims claims_;
    std::string value_;
    std::int64_t lease_ = 0;
    lease_state lease_state_;  // what acquisitions check before a win
    std::chrono::seconds ttl_;
    std::unique_ptr<reactor::timer> keepalive_timer_, lost_timer_;
    struct lease_waiter {
        steady::time_point deadline;
        std::weak_ptr<void> owner;
        lease_fn f;
    };
    std::vector<lease_waiter> lease_waiters_;
    std::unique_ptr<reactor::timer> grant_timer_;
    int grant_tries_ = 0;
    bool answered_ = false;  // an endpoint answered this session once
    std::list<std::weak_ptr<held_state>> held_;
    std::map<std::uint64_t, std::shared_ptr<lock_op>> ops_;
    std::uint64_t next_op_ = 1;
    bool closing_ = false;
};

namespace {

std::string describe(const std::string& endpoint, std::error_code ec, const std::string& why) {
    std::string m = "filelock: etcd at " + endpoint + ": " + ec.message();
    if (!why.empty() && why != ec.message()) m += " (" + why + ")";
    return m;
}

// One acquisition: the state machine's executor on the session's loop.
struct lock_op final : filelock::detail::queue_waiter, std::enable_shared_from_this<lock_op> {
    lock_op(session& s, std::uint64_t id, std::string name, std::chrono::nanoseconds timeout,
            std::function<void(lock_result)> done)
        : s(s), id(id), name(std::move(name)), timeout(timeout), done(std::move(done)) {}

    ~lock_op() override { acq.reset(); }

    session& s;
    std::uint64_t id;
    std::shared_ptr<session> keep;  // alive while the operation is pending
    std::string name;
    std::chrono::nanoseconds timeout;
    std::function<void(lock_result)> done;
    steady::time_point began = steady::now();
    std::unique_ptr<etcd_acquire> acq;
    std::unique_ptr<reactor::timer> timer;
    std::uint64_t request = 0, watch = 0;
    stream_splitter split;
    enum class state { lease, sending, watching, waiting, finished } st = state::lease;
    bool on_release = false, released = false, turn = false;
    int restarts = 0;
    std::uint64_t sends = 0;  // which request a reply answers

    void wake() noexcept override {
        try {
            s.loop().post([w = weak_from_this()] {
                if (auto o = w.lock()) o->on_turn();
            });
        } catch (...) {
            // Out of memory: the fallback timer still ends the wait.
        }
    }

    void start() {
        const auto deadline = timeout >= steady::time_point::max() - began
                                  ? steady::time_point::max()
                                  : began + std::chrono::duration_cast<steady::duration>(timeout);
        s.with_lease(
            deadline, weak_from_this(),
            [w = weak_from_this()](std::error_code ec, const std::string& why) {
                auto self = w.lock();
                if (!self || self->st == state::finished) return;
                if (ec) return self->complete(ec, describe(self->s.http().endpoint(), ec, why));
                // A live lease's callback is posted: the session may have given
                // that lease up meanwhile (its lost timer, after a pause). A key
                // created on lease 0 would have no lease and never expire.
                if (!self->s.lease()) return self->start();
                self->acq = std::make_unique<etcd_acquire>(
                    lock_backend(self->s.names(), &self->s, self->name, self->s.value(),
                                 self->s.lease_view()),
                    self->timeout, filelock::backoff_policy{}, filelock::detail::random_seed());
                self->acq->use_queue(self.get(), &self->s);
                self->timer = self->s.loop().make_timer();
                self->run(self->acq->resume({wake_reason::start, self->began}));
            });
    }

    void resume(wake_reason why, std::error_code ec = {}) {
        if (st == state::finished) return;
        run(acq->resume({why, steady::now(), ec}));
    }

    void on_turn() {
        turn = true;
        if (st == state::waiting) {
            timer->cancel();
            turn = false;
            resume(wake_reason::turn);
        }
    }

    void on_released() {
        released = true;
        if (st == state::waiting && on_release) {
            timer->cancel();
            released = false;
            resume(wake_reason::release);
        }
    }

    void cancel(std::error_code code) {
        if (st == state::finished) return;
        if (!acq) return complete(code, "filelock: etcd lock " + name + ": cancelled");
        if (timer) timer->cancel();
        if (request) s.http().cancel(std::exchange(request, 0));
        run(acq->resume({wake_reason::cancel, steady::now(), code}));
    }

    /// The session gave up the lease `old`: an acquisition on it lines up
    /// again on a new one (its key dies with the old lease).
    void lease_lost(std::int64_t old) {
        if (st == state::finished || st == state::lease || !acq || acq->backend().lease() != old)
            return;
        if (timer) timer->cancel();
        if (request) s.http().cancel(std::exchange(request, 0));
        acq->backend().lease_lost("the session's lease was lost while waiting");
        failed(errc::lost);
    }

    void run(action a) {
        auto& b = acq->backend();
        switch (a.what) {
            case action::kind::send: {
                st = state::sending;
                const auto n = ++sends;
                request =
                    s.http().post(b.path(), b.body(), [w = weak_from_this(), n](http_reply& r) {
                        auto self = w.lock();
                        // A reply the op no longer waits for: it lined up again
                        // (its attempt is gone) or was cancelled after the
                        // transport had collected this reply in the same batch.
                        if (!self || self->st != state::sending || n != self->sends) return;
                        self->request = 0;
                        const auto ec = r.ec;
                        self->acq->backend().set_reply(std::move(r));
                        self->resume(wake_reason::reply, ec);
                    });
                return;
            }
            case action::kind::watch: {
                drop_watch();
                if (b.watch_key().empty()) return resume(wake_reason::unwatched);
                st = state::watching;
                open_watch(b.watch_key(), b.watch_range_end(), b.watch_revision());
                return;
            }
            case action::kind::wait: {
                st = state::waiting;
                on_release = a.on_release;
                if (!on_release) released = false;
                if (turn || (on_release && released)) {
                    // A signal that came since the last wait ends this one.
                    const auto why = turn ? wake_reason::turn : wake_reason::release;
                    turn = released = false;
                    return s.loop().post([w = weak_from_this(), why] {
                        if (auto self = w.lock(); self && self->st == state::waiting)
                            self->resume(why);
                    });
                }
                if (a.until != filelock::detail::clock::time_point::max())
                    timer->arm(a.until, [this] { resume(wake_reason::timer); });
                return;
            }
            case action::kind::done:
                if (a.ec) return failed(a.ec);
                return won();
        }
    }

    void open_watch(const std::string& key, const std::string& end, std::int64_t from) {
        ++s.watches;
        split = {};
        watch = s.http().post(
            "/v3/watch", request::watch(key, from, end),
            [w = weak_from_this()](http_reply&) {
                // The stream ended: the watch is gone; look again.
                auto self = w.lock();
                if (!self || self->st == state::finished) return;
                self->watch = 0;
                if (self->st == state::watching) return self->resume(wake_reason::unwatched);
                self->moved();
            },
            [w = weak_from_this()](std::string_view bytes) {
                auto self = w.lock();
                if (!self || self->st == state::finished) return;
                const bool ok = self->split.feed(
                    bytes, [&](std::string_view obj) { self->on_watch_message(obj); });
                if (!ok && self->watch) {
                    self->s.http().cancel(std::exchange(self->watch, 0));
                    self->moved();
                }
            });
    }

    void on_watch_message(std::string_view text) {
        // A message that followed one that ended this watch (a win, a lost
        // lease) in the same bytes: not ours any more.
        if (st == state::finished || !acq || !watch) return;
        const json j = json::parse(text, nullptr, false);
        const json* r = j.is_object() && j.contains("result") ? &j["result"] : nullptr;
        if (!r || !r->is_object()) return moved_soon();
        if (r->value("canceled", false)) return moved_soon();
        if (r->value("created", false) && st == state::watching) {
            acq->backend().watch_armed();
            return resume(wake_reason::watched);
        }
        if (const auto ev = r->find("events"); ev != r->end() && ev->is_array()) {
            bool release = false;
            for (const auto& e : *ev) {
                std::string k;
                if (e.value("type", "") != "DELETE" || !e.contains("kv") ||
                    !unbase64(e["kv"].value("key", ""), k))
                    continue;
                std::int64_t rev = 0;
                try {
                    rev = int64_of(e["kv"], "mod_revision");
                } catch (const std::exception&) {
                    return moved_soon();
                }
                if (acq->backend().on_delete(k, rev)) release = true;
            }
            if (release) on_released();
        }
    }

    // Handled after the stream's callbacks return.
    void moved_soon() {
        s.loop().post([w = weak_from_this()] {
            if (auto self = w.lock()) self->moved();
        });
    }

    void moved() {
        if (st == state::finished || !acq) return;  // lining up again: no watch
        drop_watch();
        if (st == state::watching) return resume(wake_reason::unwatched);
        if (st == state::waiting) {
            timer->cancel();
            return resume(wake_reason::moved);
        }
        // Sending: the next contention arms a new watch (the backend forgot
        // the old one).
        acq->backend().drop_file();
    }

    void drop_watch() {
        if (watch) s.http().cancel(std::exchange(watch, 0));
    }

    void won() {
        drop_watch();
        auto& b = acq->backend();
        auto h = std::make_shared<held_state>();
        h->s = s.shared_from_this();
        h->name = b.name();
        h->key = b.key();
        h->rev = b.revision();
        h->lease = b.lease();
        h->endpoint = b.endpoint();
        h->watch_from = b.won_at() + 1;
        b.hand_over_claim();
        s.add_held(h);
        s.watch_held(h);
        lock_result r;
        r.held = etcd::lock(std::move(h));
        deliver(std::move(r));
    }

    void failed(std::error_code ec) {
        drop_watch();
        if (timer) timer->cancel();
        auto& b = acq->backend();
        const bool in_time = steady::now() - began < timeout;
        // Lost while waiting, at the deadline: nothing was won in time.
        if (ec == errc::lost && !in_time) ec = filelock::errc::timeout;
        if (ec == errc::lost && restarts < 10 && in_time) {
            // A waiter's key or lease died under it (its keep-alives failed,
            // the lease was revoked, the key deleted): nothing was granted, so
            // it lines up again, on a new lease if need be (the deadline
            // still counts from the call).
            ++restarts;
            const bool gone = b.lease_gone() && b.lease() == s.lease();
            acq.reset();
            st = state::lease;
            if (gone) s.lose_session("the lease is gone");
            return start();
        }
        // No endpoint answered for the whole wait: that, not contention.
        if (ec == filelock::errc::timeout && b.unanswered()) ec = b.unanswered();
        std::string msg;
        std::string holder = filelock::detail::holder_from_bytes(b.holder());
        if (ec == filelock::errc::timeout || ec == filelock::errc::locked)
            msg = "filelock: etcd lock " + name + " is held by " +
                  (holder.empty() ? std::string("another session") : holder);
        else
            msg = describe(b.endpoint().empty() ? s.http().endpoint() : b.endpoint(), ec, b.why());
        if (b.claimed()) {
            // Our key may exist (created, or the answer lost): delete it,
            // then let the name go. The claim is held until etcd answered,
            // so no other acquisition of this session reuses the key before.
            auto sp = s.shared_from_this();
            auto name_copy = b.name();
            const auto body = b.has_key() ? request::release(b.key(), b.revision())
                                          : json{{"key", base64(b.key())}}.dump();
            const auto path = b.has_key() ? "/v3/kv/txn" : "/v3/kv/deleterange";
            lock_identity id;
            b.identity(id);
            b.hand_over_claim();
            s.http().post(path, body, [sp, name_copy, id](http_reply&) {
                sp->names().unclaim(name_copy);
                filelock::detail::local_release(id);
            });
        }
        complete(ec, msg, std::move(holder));
    }

    void complete(std::error_code ec, std::string msg, std::string holder = {}) {
        lock_result r;
        r.ec = ec;
        r.message = std::move(msg);
        r.holder = std::move(holder);
        deliver(std::move(r));
    }

    void deliver(lock_result r) {
        st = state::finished;
        r.name = name;
        if (timer) timer->cancel();
        if (request) s.http().cancel(std::exchange(request, 0));
        drop_watch();
        acq.reset();  // leaves the queue: the next waiter attempts
        auto self = shared_from_this();
        s.op_finished(id);
        // Never inline: posted, whatever the path that got here.
        auto rp = std::make_shared<lock_result>(std::move(r));  // std::function copies
        s.loop().post([self, rp] { self->done(std::move(*rp)); });
    }
};

}  // namespace

std::uint64_t session::lock(std::string name, std::chrono::nanoseconds timeout,
                            std::function<void(lock_result)> done) {
    const auto id = next_op_++;
    auto op = std::make_shared<lock_op>(*this, id, std::move(name), timeout, std::move(done));
    if (op->name.empty()) {
        op->complete(errc::invalid_argument, "filelock: etcd lock: the name is empty");
        return id;
    }
    op->keep = shared_from_this();
    ops_.emplace(id, op);
    op->start();
    return id;
}

void session::cancel(std::uint64_t id, std::error_code code) {
    reactor_->post([w = weak_from_this(), id, code] {
        auto self = w.lock();
        if (!self) return;
        auto it = self->ops_.find(id);
        if (it == self->ops_.end()) return;
        auto op = it->second;
        op->cancel(code);
    });
}

void session::grant() {
    auto after_auth = [this] {
        http_.post("/v3/lease/grant", request::grant(ttl_),
                   [w = weak_from_this(), sent = steady::now()](http_reply& r) {
                       auto self = w.lock();
                       if (!self) return;
                       json j;
                       std::string why;
                       auto ec = parse(r, j, why);
                       const bool retry = ec && self->retry_grant(r, ec);
                       if (r.status != 0) self->answered_ = true;
                       if (!ec) {
                           try {
                               self->lease_ = int64_of(j, "ID");
                               const auto ttl = int64_of(j, "TTL");
                               if (!self->lease_ || ttl <= 0) {
                                   ec = errc::bad_reply;
                                   why = "the lease grant has no ID or TTL";
                               } else {
                                   self->ttl_ = std::chrono::seconds(ttl);
                                   self->lease_state_.id = self->lease_;
                                   self->arm_lost(sent, self->ttl_);
                                   self->keepalive_timer_->arm(
                                       steady::now() + self->keepalive_interval(),
                                       [s = self.get()] { s->keepalive(); });
                               }
                           } catch (const std::exception& e) {
                               ec = errc::bad_reply;
                               why = e.what();
                           }
                       }
                       self->granted(ec, why, retry);
                   });
    };
    // With a token already, a refused one is renewed by the transport.
    if (cfg_.user.empty() || http_.has_token()) return after_auth();
    http_.post("/v3/auth/authenticate", request::authenticate(cfg_.user, cfg_.password),
               [w = weak_from_this(), after_auth](http_reply& r) {
                   auto self = w.lock();
                   if (!self) return;
                   json j;
                   std::string why;
                   auto ec = parse(r, j, why);
                   if (!ec && (!j.contains("token") || !j["token"].is_string())) {
                       ec = errc::bad_reply;
                       why = "no token in the answer";
                   }
                   if (ec) return self->granted(ec, why, self->retry_grant(r, ec));
                   self->http_.set_token(j["token"].get<std::string>());
                   after_auth();
               });
}

bool session::retry_grant(const http_reply& r, std::error_code ec) {
    if (r.status != 0) answered_ = true;
    // A configuration that never reached etcd (refused, unresolvable) fails
    // at once; a member timed out, reset or electing is tried again.
    return transient(r, ec) && (answered_ || r.ec != errc::unreachable);
}

void session::granted(std::error_code ec, const std::string& why, bool retry) {
    if (ec) lease_ = 0;
    if (!ec) grant_tries_ = 0;
    auto waiters = std::move(lease_waiters_);
    lease_waiters_.clear();
    if (ec && retry) {
        // Those whose deadline allows wait for another try, on the next
        // endpoint (the transport moved on).
        const auto now = steady::now();
        std::vector<lease_waiter> done;
        for (auto& w : waiters) {
            if (w.owner.expired()) continue;
            (now < w.deadline ? lease_waiters_ : done).push_back(std::move(w));
        }
        waiters = std::move(done);
        if (!lease_waiters_.empty()) {
            ++grant_tries_;
            const auto delay = std::chrono::milliseconds(std::min(100 * grant_tries_, 1000));
            grant_timer_->arm(now + delay, [this] { grant(); });
        }
    }
    for (auto& w : waiters) w.f(ec, why);
}

void session::keepalive() {
    const auto lease = lease_;
    if (!lease) return;
    const auto sent = steady::now();
    http_.post("/v3/lease/keepalive", request::keepalive(lease),
               [w = weak_from_this(), sent, lease](http_reply& r) {
                   auto self = w.lock();
                   if (!self || self->lease_ != lease) return;
                   json j;
                   std::string why;
                   auto ec = parse(r, j, why);
                   std::int64_t ttl = -1;
                   if (!ec) {
                       try {
                           ttl = int64_of(j.at("result"), "TTL");
                       } catch (const std::exception&) {
                           ec = errc::bad_reply;
                       }
                   }
                   if (!ec && ttl <= 0)
                       return self->lose_session("the lease expired or was revoked");
                   auto next = self->keepalive_interval();
                   if (!ec)
                       self->arm_lost(sent, std::chrono::seconds(ttl));
                   else
                       next = std::min<std::chrono::milliseconds>(next, std::chrono::seconds(1));
                   self->keepalive_timer_->arm(steady::now() + next,
                                               [s = self.get()] { s->keepalive(); });
               });
}

std::chrono::milliseconds session::keepalive_interval() const {
    // TTL/3, counted in milliseconds (a TTL of 1 or 2 s is not 0 s), and
    // never below a floor: a keep-alive costs a request.
    using std::chrono::milliseconds;
    return std::max(std::chrono::duration_cast<milliseconds>(ttl_) / 3, milliseconds(200));
}

void session::arm_lost(steady::time_point sent, std::chrono::milliseconds ttl) {
    // Ownership is guaranteed until the server could expire the lease, less
    // the margin: counted from when the request that renewed it was sent.
    const auto margin = std::min<steady::duration>(cfg_.lost_margin, ttl / 2);
    lease_state_.deadline = sent + ttl - margin;
    lost_timer_->arm(lease_state_.deadline,
                     [this] { lose_session("no keep-alive answered within the TTL"); });
}

void session::lose_session(const std::string& why) {
    (void)why;
    const auto old = lease_;
    if (!old) return;
    lease_ = 0;
    lease_state_.id = 0;
    lease_state_.deadline = steady::time_point::min();
    keepalive_timer_->cancel();
    lost_timer_->cancel();
    auto held = held_;
    for (auto& w : held)
        if (auto h = w.lock(); h && h->lease == old) lose(*h, errc::lost);
    // Pending acquisitions on the old lease line up again on a new one.
    auto ops = ops_;
    for (auto& [id, op] : ops) op->lease_lost(old);
    // The old lease may still be alive on the server (a partition): revoke it,
    // best effort.
    http_.post("/v3/lease/revoke", request::revoke(old), [](http_reply&) {});
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
        claims_.unclaim(h.name);
    }
    if (auto f = std::move(h.on_lost)) {
        h.on_lost = nullptr;
        reactor_->post([f = std::move(f), why] { f(why); });
    }
}

void session::watch_held(const std::shared_ptr<held_state>& h) {
    if (h->released || h->lost) return;
    ++watches;
    h->split = {};
    std::weak_ptr<held_state> w = h;
    h->watch_id = http_.post(
        "/v3/watch", request::watch(h->key, h->watch_from),
        [w](http_reply&) {
            // The stream ended (a member went away): watch again from the
            // last revision seen, so no deletion is missed.
            auto h = w.lock();
            if (!h || h->released || h->lost) return;
            h->watch_id = 0;
            if (!h->rewatch) h->rewatch = h->s->loop().make_timer();
            h->rewatch->arm(steady::now() + std::chrono::milliseconds(100), [w] {
                if (auto h = w.lock()) h->s->watch_held(h);
            });
        },
        [w](std::string_view bytes) {
            auto h = w.lock();
            if (!h || h->released || h->lost) return;
            h->split.feed(bytes, [&](std::string_view text) {
                const json j = json::parse(text, nullptr, false);
                if (!j.is_object() || !j.contains("result")) return;
                const auto& r = j["result"];
                if (!r.is_object()) return;
                try {
                    if (r.contains("header"))
                        h->watch_from =
                            std::max(h->watch_from, int64_of(r["header"], "revision") + 1);
                } catch (const std::exception&) {
                }
                if (const auto ev = r.find("events"); ev != r.end() && ev->is_array()) {
                    for (const auto& e : *ev) {
                        if (e.value("type", "") == "DELETE") {
                            auto s = h->s;
                            s->loop().post([w] {
                                auto h = w.lock();
                                if (!h) return;
                                h->s->lose(*h, errc::lost);
                                // Revoked? A keep-alive now tells the session.
                                h->s->keepalive();
                            });
                            return;
                        }
                    }
                }
            });
        });
}

void session::close() {
    closing_ = true;
    auto ops = ops_;
    for (auto& [id, op] : ops) op->cancel(std::make_error_code(std::errc::operation_canceled));
    maybe_revoke();
}

void session::maybe_revoke() {
    if (!closing_ || !lease_ || !ops_.empty()) return;
    for (auto& w : held_)
        if (auto h = w.lock(); h && !h->released) return;
    const auto old = std::exchange(lease_, 0);
    lease_state_.id = 0;
    keepalive_timer_->cancel();
    lost_timer_->cancel();
    http_.post("/v3/lease/revoke", request::revoke(old),
               [self = shared_from_this()](http_reply&) {});
}

}  // namespace detail

// The held lock. Its state lives on the session's loop; the calls post
// there, so that a lock may be released from any thread.

namespace detail {
namespace {

void send_release(const std::shared_ptr<held_state>& h, std::function<void(std::error_code)> f,
                  int tries);

void release_held(const std::shared_ptr<held_state>& h, std::function<void(std::error_code)> f) {
    auto& s = *h->s;
    auto pending = std::move(h->on_lost);
    h->on_lost = nullptr;
    {
        std::lock_guard<std::mutex> g(h->m);
        if (h->released) {
            if (f) f({});
            return;
        }
        h->released = true;
    }
    if (pending) pending(std::make_error_code(std::errc::operation_canceled));
    if (h->watch_id) s.http().cancel(std::exchange(h->watch_id, 0));
    h->rewatch.reset();
    send_release(h, std::move(f), 0);
}

// Deletes the held key, guarded by its revision; transient failures (a
// leader election, a member down) are retried for a while, so that the key
// does not outlive its release. The name is free for this session once etcd
// answered.
void send_release(const std::shared_ptr<held_state>& h, std::function<void(std::error_code)> f,
                  int tries) {
    auto& s = *h->s;
    s.http().post("/v3/kv/txn", request::release(h->key, h->rev),
                  [h, f = std::move(f), tries](http_reply& r) mutable {
                      json j;
                      std::string why;
                      const auto ec = parse(r, j, why);
                      if (ec && transient(r, ec) && tries < 50 && h->s->lease() == h->lease) {
                          auto t = std::shared_ptr<reactor::timer>(h->s->loop().make_timer());
                          t->arm(steady::now() + std::chrono::milliseconds(100),
                                 [h, f = std::move(f), tries, t]() mutable {
                                     send_release(h, std::move(f), tries + 1);
                                 });
                          return;
                      }
                      if (h->claimed) {
                          // Only now: a local successor reuses this key.
                          h->claimed = false;
                          h->s->names().unclaim(h->name);
                          filelock::detail::local_release(identity_of(h->name, h->s.get()));
                      }
                      auto sp = h->s;
                      sp->held_done(h.get());
                      if (f) f(ec);
                  });
}

}  // namespace
}  // namespace detail

lock::lock() noexcept = default;
lock::lock(std::shared_ptr<detail::held_state> s) noexcept : s_(std::move(s)) {}
lock::lock(lock&&) noexcept = default;
lock& lock::operator=(lock&& o) noexcept {
    if (this != &o) {
        release();
        s_ = std::move(o.s_);
    }
    return *this;
}
lock::~lock() { release(); }

bool lock::held() const noexcept {
    if (!s_) return false;
    std::lock_guard<std::mutex> g(s_->m);
    return !s_->released;
}
const std::string& lock::name() const noexcept {
    static const std::string none;
    return s_ ? s_->name : none;
}
const std::string& lock::key() const noexcept {
    static const std::string none;
    return s_ ? s_->key : none;
}
const std::string& lock::endpoint() const noexcept {
    static const std::string none;
    return s_ ? s_->endpoint : none;
}
std::int64_t lock::fencing_token() const noexcept { return s_ ? s_->rev : 0; }
std::int64_t lock::lease() const noexcept { return s_ ? s_->lease : 0; }
bool lock::lost() const noexcept { return static_cast<bool>(lost_reason()); }
std::error_code lock::lost_reason() const noexcept {
    if (!s_) return {};
    std::lock_guard<std::mutex> g(s_->m);
    return s_->lost;
}

void lock::on_lost(std::function<void(std::error_code)> f) {
    if (!s_) return;
    s_->s->loop().post([h = s_, f = std::move(f)]() mutable {
        std::error_code lost;
        {
            std::lock_guard<std::mutex> g(h->m);
            if (h->released) return f(std::make_error_code(std::errc::operation_canceled));
            lost = h->lost;
        }
        if (lost) return f(lost);
        if (auto old = std::exchange(h->on_lost, std::move(f)))
            old(std::make_error_code(std::errc::operation_canceled));
    });
}

void lock::release(std::function<void(std::error_code)> f) {
    auto h = std::move(s_);
    if (!h) {
        if (f) f({});  // nothing held, no loop to post to
        return;
    }
    auto& loop = h->s->loop();
    loop.post(
        [h = std::move(h), f = std::move(f)]() mutable { detail::release_held(h, std::move(f)); });
}

namespace detail {

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
    return s_->lock(std::move(name), timeout, std::move(done));
}

void session_handle::cancel(std::uint64_t op, std::error_code code) { s_->cancel(op, code); }
std::uint64_t session_handle::requests() const noexcept { return s_->http().sent(); }
std::uint64_t session_handle::watches() const noexcept { return s_->watches; }
std::int64_t session_handle::lease() const noexcept { return s_->lease(); }

}  // namespace detail
}  // namespace filelock::etcd
