// SPDX-License-Identifier: MIT
#pragma once

// The etcd session (Go's concurrency.Session): one lease, kept alive on the
// loop (lease.hpp decides when and what an answer means), the HTTP
// transport, the names it holds or acquires, and the held locks' watches.
// Its acquisitions are lock_op (lock_op.cpp), the executor of the acquire
// state machine over the reactor; the held lock's release is held.cpp.

#include <filelock/detail/file_backend.hpp>
#include <filelock/etcd.hpp>

#include "../file/content.hpp"
#include "held_watch.hpp"
#include "lease.hpp"
#include "lock_backend.hpp"

#include <list>
#include <map>
#include <mutex>

namespace filelock::etcd::detail {

using filelock::detail::action;
using filelock::detail::wake_reason;
using steady = std::chrono::steady_clock;

class session;

struct held_state {
    std::shared_ptr<session> s;
    mutable std::mutex m;  // `lost` and `released` are read from any thread
    std::string name, key, endpoint;
    std::int64_t rev = 0, lease = 0;
    unsigned slot = 0;
    std::error_code lost;
    std::function<void(std::error_code)> on_lost;
    std::uint64_t watch_id = 0;
    std::unique_ptr<reactor::timer> rewatch;
    held_watch watcher;     // what its watch's events mean
    bool checking = false;  // a check of the key is in flight
    stream_splitter split;
    bool released = false;
    bool claimed = true;
};

struct lock_op;
struct inspect_op;
/// Ends an inspection with `code` (inspect_op.cpp).
void cancel_inspect(inspect_op& op, std::error_code code);

class session : public std::enable_shared_from_this<session> {
public:
    session(std::unique_ptr<reactor> r, const config& cfg)
        : reactor_(std::move(r)), cfg_(cfg), http_(*reactor_, cfg_) {
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
    std::int64_t lease() const { return keeper_.id(); }
    const lease_state& lease_view() const { return keeper_.state(); }
    std::uint64_t watches = 0;

    std::uint64_t lock(std::string name, std::chrono::nanoseconds timeout, lock_kind kind,
                       std::function<void(lock_result)> done);
    void cancel(std::uint64_t id, std::error_code code);
    void op_finished(std::uint64_t id) { ops_.erase(id); }
    /// Reads the keys of `name` and their leases' TTL (inspect_op.cpp).
    std::uint64_t inspect(std::string name, std::function<void(inspect_result)> done);
    /// Waits for a change under `name` after `after` (inspect_op.cpp).
    std::uint64_t wait_change(std::string name, std::int64_t after,
                              std::function<void(change_result)> done);
    void inspect_finished(std::uint64_t id) { inspects_.erase(id); }
    /// Calls `f(ec, why)` once requests carry an auth token: at once without
    /// a user or with a token already, else after authenticating.
    void with_token(std::function<void(std::error_code, const std::string&)> f);

    using lease_fn = std::function<void(std::error_code, const std::string&)>;
    /// Calls `f(ec, why)` once the session has a lease (granting one first).
    /// A grant that meets a transient failure is tried again until
    /// `deadline`, unless `owner` is gone meanwhile.
    void with_lease(steady::time_point deadline, std::weak_ptr<void> owner, lease_fn f) {
        if (keeper_.id()) {
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
        auto inspects = std::move(inspects_);
        inspects_.clear();
        inspects.clear();
        http_.drop_all();
    }

    void add_held(const std::shared_ptr<held_state>& h) { held_.push_back(h); }
    void held_done(held_state* h) {
        held_.remove_if([h](const std::weak_ptr<held_state>& w) {
            auto p = w.lock();
            return !p || p.get() == h;
        });
        revoke_retired();
        maybe_revoke();
    }
    /// The held lock `h` is lost: tell its owner, once.
    void lose(held_state& h, std::error_code why);
    void watch_held(const std::shared_ptr<held_state>& h);
    /// Does what the held lock's watch machine (held_watch) asks: watch the
    /// key, check it with a unary range, wait, or report the lock lost.
    void run_held(const std::shared_ptr<held_state>& h, held_watch::action a);
    /// How long a held key may go unwatched: the lease's TTL.
    std::chrono::milliseconds ttl() const { return keeper_.ttl(); }

private:
    void grant();
    void granted(std::error_code ec, const std::string& why, bool retry = false);
    void keep(const grant_reply& g, lease_clock::time_point sent);
    void arm_lost();
    bool retry_grant(const http_reply& r, std::error_code ec);
    void maybe_revoke();
    /// Revokes the lost leases (`retired_`) whose held locks are all released.
    void revoke_retired();

public:
    void keepalive();
    void lose_session(const std::string& why);
    /// Sends the acquisitions pending on lease `old` to a new lease.
    void fail_over_ops(std::int64_t old);

private:
    std::unique_ptr<reactor> reactor_;
    config cfg_;
    transport http_;
    claims claims_;
    std::string value_;
    lease_keeper keeper_{cfg_.ttl, cfg_.lost_margin};
    std::unique_ptr<reactor::timer> keepalive_timer_, lost_timer_;
    struct lease_waiter {
        steady::time_point deadline;
        std::weak_ptr<void> owner;
        lease_fn f;
    };
    std::vector<lease_waiter> lease_waiters_;
    std::unique_ptr<reactor::timer> grant_timer_;
    grant_retry grant_retry_;
    std::list<std::weak_ptr<held_state>> held_;
    std::map<std::uint64_t, std::shared_ptr<lock_op>> ops_;
    std::map<std::uint64_t, std::shared_ptr<inspect_op>> inspects_;
    std::uint64_t next_op_ = 1;
    bool closing_ = false;
    /// Leases lost while a lock held on them was not yet released: revoked
    /// once those are (or left to expire by their TTL).
    std::vector<std::int64_t> retired_;
};

}  // namespace filelock::etcd::detail
