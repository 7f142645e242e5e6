// SPDX-License-Identifier: MIT
// One acquisition (lock_op): the acquire state machine's executor on the
// session's loop. It sends the requests the machine asks for, arms its timer
// and the predecessor's watch, routes queue turns and cancellations, and
// cleans up after a failure. The protocol's decisions are lock_backend's.
#include "session.hpp"

#include <algorithm>

namespace filelock::etcd::detail {

namespace {

std::string describe(const std::string& endpoint, std::error_code ec, const std::string& why) {
    std::string m = "filelock: etcd at " + endpoint + ": " + ec.message();
    if (!why.empty() && why != ec.message()) m += " (" + why + ")";
    return m;
}

// One acquisition: the state machine's executor on the session's loop.
}  // namespace

struct lock_op final : filelock::detail::queue_waiter, std::enable_shared_from_this<lock_op> {
    lock_op(session& s, std::uint64_t id, std::string name, std::chrono::nanoseconds timeout,
            lock_kind kind, std::function<void(lock_result)> done)
        : s(s),
          id(id),
          name(std::move(name)),
          timeout(timeout),
          kind(kind),
          done(std::move(done)) {}

    ~lock_op() override { acq.reset(); }

    session& s;
    std::uint64_t id;
    std::shared_ptr<session> keep;  // alive while the operation is pending
    std::string name;
    std::chrono::nanoseconds timeout;
    lock_kind kind;
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
                                 self->s.lease_view(), self->kind),
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
                open_watch(b.watch_key(), b.watch_range_end(), b.watch_revision(), b.watch_puts());
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

    void open_watch(const std::string& key, const std::string& end, std::int64_t from, bool puts) {
        ++s.watches;
        split = {};
        watch = s.http().post(
            "/v3/watch", request::watch(key, from, end, puts),
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
        const auto m = decode_watch(text);
        if (!m.ok || m.canceled) return moved_soon();
        if (m.created && st == state::watching) {
            acq->backend().watch_armed();
            return resume(wake_reason::watched);
        }
        bool release = false;
        for (const auto& d : m.deletions) {
            if (!d.key_ok) continue;
            if (!d.revision_ok) return moved_soon();
            if (acq->backend().on_delete(d.key, d.mod_revision)) release = true;
        }
        for (const auto& p : m.puts) {
            if (!p.key_ok) continue;
            if (!p.revision_ok) return moved_soon();
            if (acq->backend().on_put(p.key, p.mod_revision)) release = true;
        }
        if (release) on_released();
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
        h->slot = b.slot();
        h->watcher = held_watch(b.revision(), b.won_at(), s.ttl(), steady::now());
        b.hand_over_claim();
        s.add_held(h);
        s.watch_held(h);
        if (b.touch_after_win()) s.http().post("/v3/kv/txn", b.touch_body(), [](http_reply&) {});
        lock_result r;
        r.held = etcd::lock(std::move(h));
        deliver(std::move(r));
    }

    void failed(std::error_code ec) {
        drop_watch();
        if (timer) timer->cancel();
        auto& b = acq->backend();
        const auto v = b.after_failure(ec, steady::now() - began < timeout, restarts);
        if (v.line_up_again) {
            ++restarts;
            const bool gone = b.lease_gone() && b.lease() == s.lease();
            acq.reset();
            st = state::lease;
            if (gone) s.lose_session("the lease is gone");
            return start();  // the deadline still counts from the call
        }
        ec = v.outcome;
        std::string msg;
        std::string holder = filelock::detail::holder_from_bytes(b.holder());
        if (ec == filelock::errc::timeout || ec == filelock::errc::locked)
            msg = "filelock: etcd lock " + name + " is held by " +
                  (holder.empty() ? std::string("another session") : holder);
        else
            msg = describe(b.endpoint().empty() ? s.http().endpoint() : b.endpoint(), ec, b.why());
        if (std::string path, body; b.cleanup(path, body)) {
            // Delete what the attempt may have left, then let the name go.
            // The claim is held until etcd answered, so no other acquisition
            // of this session reuses the key before.
            auto sp = s.shared_from_this();
            auto name_copy = b.key();  // the claim
            lock_identity id;
            b.identity(id);
            b.hand_over_claim();
            s.http().post(std::move(path), std::move(body), [sp, name_copy, id](http_reply&) {
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

std::uint64_t session::lock(std::string name, std::chrono::nanoseconds timeout, lock_kind kind,
                            std::function<void(lock_result)> done) {
    const auto id = next_op_++;
    auto op = std::make_shared<lock_op>(*this, id, std::move(name), timeout, kind, std::move(done));
    if (op->name.empty()) {
        op->complete(errc::invalid_argument, "filelock: etcd lock: the name is empty");
        return id;
    }
    const char* bad = kind.slots == 0          ? "0 slots"
                      : kind.slots > max_slots ? "more slots than filelock::max_slots (1024)"
                      : kind.slots > 1 && kind.mode == lock_mode::shared
                          ? "slots with a shared lock (a shared lock takes no slot)"
                          : nullptr;
    if (bad) {
        op->complete(errc::invalid_argument, "filelock: etcd lock " + op->name + ": " + bad);
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
        if (auto in = self->inspects_.find(id); in != self->inspects_.end()) {
            auto op = in->second;
            return cancel_inspect(*op, code);
        }
        auto it = self->ops_.find(id);
        if (it == self->ops_.end()) return;
        auto op = it->second;
        op->cancel(code);
    });
}
void session::close() {
    closing_ = true;
    auto ops = ops_;
    for (auto& [id, op] : ops) op->cancel(std::make_error_code(std::errc::operation_canceled));
    auto inspects = inspects_;
    for (auto& [id, op] : inspects)
        cancel_inspect(*op, std::make_error_code(std::errc::operation_canceled));
    maybe_revoke();
}

void session::fail_over_ops(std::int64_t old) {
    auto ops = ops_;
    for (auto& [id, op] : ops) op->lease_lost(old);
}

}  // namespace filelock::etcd::detail
