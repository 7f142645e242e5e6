// SPDX-License-Identifier: MIT
// The held lock. Its state lives on the session's loop; the calls post
// there, so that a lock may be released from any thread.
#include "session.hpp"

namespace filelock::etcd {

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
                      if (retry_release(r, ec, tries, h->s->lease() == h->lease)) {
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
                          h->s->names().unclaim(h->key);
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
unsigned lock::slot() const noexcept { return s_ ? s_->slot : 0; }
bool lock::lost() const noexcept { return static_cast<bool>(lost_reason()); }
std::chrono::nanoseconds lock::guaranteed_until() const noexcept {
    if (!s_ || !s_->s) return {};
    const detail::lease_state& l = s_->s->lease_view();
    if (l.id == 0 || l.id != s_->lease || l.deadline == detail::lease_clock::time_point::min())
        return {};
    return l.deadline.time_since_epoch();
}
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

}  // namespace filelock::etcd
