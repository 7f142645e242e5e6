// SPDX-License-Identifier: MIT
#pragma once

// The acquisition protocol, written once: a sans-I/O state machine that every
// driver (the sync lock(), the Asio adapter, the libuv adapter, filelock-run)
// executes. The driver tells it what happened (`resume(input)`); it answers
// what to do next:
//
//   done   the acquisition is over: won (empty ec; take the lock from the
//          backend), errc::timeout at the deadline, or the backend's error;
//   wait   until `until` (time_point::max(): no timer), or until the queue
//          turn, a cancellation or, when `on_release`, a release event ends
//          it early; then resume with why it ended;
//   watch  arm a release watch on the backend's lock (an inotify watch of the
//          file), then resume with `watched` or `unwatched`: the machine
//          attempts only after the watch is armed, so that a release in
//          between is never lost;
//   send   hand the backend's pending request to its transport (backends whose
//          attempt is a chain of round trips); resume with `reply`.
//
// It owns the deadline (one last attempt at it; timeout <= 0 is exactly one
// attempt), the backoff (stretched while a release watch is armed: the timer
// is then only a fallback), the quick retries after a release event (the
// backend's tuning: a file's close event precedes its unlock), the local queue
// (membership, turn, hold-off for other processes, leaving on every way out),
// the watch bookkeeping, the moved file, and a cancellation that comes after
// the win (the won lock is released, never orphaned).
//
// A Backend has:
//     std::error_code try_acquire();   // {}: won; errc::locked: contention;
//                                      // std::errc::operation_in_progress: a
//                                      //   request is pending (send it);
//                                      // anything else: an error, at once
//     std::error_code on_reply(std::error_code transport);  // as try_acquire
//     void drop_file();                // wait on what the name denotes now
//     void release_won();              // give a won, undelivered lock back
//     bool won_inherited() const;      // won on a descriptor shared by fork()
//     bool identity(lock_identity&);   // the queue key of its lock
//     bool wake_on_release() const;    // whether release watches apply
//     bool queues() const;             // whether it may join local queues
//     static constexpr clock::duration quick_retries[];  // (or a std::array)
// and may have:
//     static constexpr bool queue_first = true;  // join the local queue at
//                                      // start, not at the first contention
//                                      // (the etcd backend: waiters of one
//                                      // session share one key)
//     bool retarget_watch();           // the lock to watch changed (the etcd
//                                      // backend: another predecessor key; the
//                                      // file backend: a queue turn): the
//                                      // driver arms a new watch
//     clock::time_point next_look();   // while the watch is a queue turn
//                                      // (it comes, never a mere release):
//                                      // when to attempt again, instead of
//                                      // the backoff and its quick retries
//     void at_deadline();              // the next try_acquire is a timed
//                                      // wait's last (the file backend's
//                                      // exclusive one is made whatever its
//                                      // place among other processes')
//
// Time comes in with the input: tests drive the machine with a fake clock
// and a scripted backend (tests/test_acquire.cpp).

#include <filelock/detail/backoff.hpp>
#include <filelock/detail/local_queue.hpp>
#include <filelock/error.hpp>
#include <filelock/options.hpp>

#include <cstdint>
#include <iterator>
#include <system_error>
#include <utility>

namespace filelock::detail {

/// Why the driver resumes the machine.
enum class wake_reason {
    start,      // the acquisition begins: the deadline counts from here
    timer,      // the wait's timer ended
    release,    // a release event on the watched lock
    moved,      // the watched file was unlinked, renamed or replaced (or its
                // watch was lost): the watch is gone, the name is looked up anew
    turn,       // the local queue woke this waiter
    watched,    // the watch asked for is armed
    unwatched,  // it could not be armed: the backoff alone
    reply,      // the transport answered the request sent (ec: its failure)
    cancel,     // the driver's cancellation (ec: the code to complete with)
    deliver,    // the driver is about to hand a won lock over
};

struct input {
    wake_reason reason;
    clock::time_point now;
    std::error_code ec{};
};

struct action {
    enum class kind { done, wait, watch, send };
    kind what = kind::done;
    /// done: empty when won; errc::timeout at the deadline; otherwise the
    /// backend's error or the cancellation's code.
    std::error_code ec{};
    /// wait: when its timer ends it (time_point::max(): no timer).
    clock::time_point until{};
    /// wait: whether a release event ends it early.
    bool on_release = false;

    bool is_done() const noexcept { return what == kind::done; }
};

template <class Backend>
class acquire {
public:
    /// `timeout`: how long attempts may go on from `start`; <= 0 is exactly
    /// one attempt; `wait_forever` never expires.
    acquire(Backend backend, clock::duration timeout, const backoff_policy& policy,
            std::uint64_t seed) noexcept(std::is_nothrow_move_constructible_v<Backend>)
        : acquire(std::in_place, timeout, policy, seed, std::move(backend)) {}
    /// The same, with the backend constructed in place from `args`: a
    /// backend that is costly to move (the file backend) is not moved.
    template <class... Args>
    acquire(std::in_place_t, clock::duration timeout, const backoff_policy& policy,
            std::uint64_t seed,
            Args&&... args) noexcept(std::is_nothrow_constructible_v<Backend, Args&&...>)
        : backend_(std::forward<Args>(args)...), timeout_(timeout), backoff_(policy, seed) {
        want_watch_ = backend_.wake_on_release() && !single_attempt();
    }

    // Not movable: a queued machine is known to its queue by its place.
    acquire(const acquire&) = delete;
    acquire& operator=(const acquire&) = delete;
    ~acquire() { leave_queue(); }

    /// The driver's place in local queues and the domain it stands for (an
    /// execution context, a loop): without one, the machine never queues.
    /// Call before `start`; `place` must outlive the machine's queue
    /// membership (it leaves on done and on destruction).
    void use_queue(queue_waiter* place, const void* domain) noexcept {
        place_ = place;
        domain_ = domain;
    }

    /// Leaves the queue and forgets the place (a driver whose place goes
    /// away before the machine does).
    void drop_queue() noexcept {
        leave_queue();
        place_ = nullptr;
    }

    action resume(const input& in) {
        const auto now = in.now;
        if (finished_) return after_done(in);
        switch (in.reason) {
            case wake_reason::start:
                start(now);
                // While this domain already has waiters, a newcomer lines up
                // at once instead of racing them (FIFO within a domain).
                if (may_queue() && (queue_first() || local_waiters() > 0)) join_queue();
                break;
            case wake_reason::cancel: return finish(in.ec);
            case wake_reason::release:
                if (watch_ == watch_state::armed) quick_ = 0;
                break;
            case wake_reason::moved:
                backend_.drop_file();
                set_watch(watch_state::none);
                break;
            case wake_reason::watched: set_watch(watch_state::armed); return attempt(now);
            case wake_reason::unwatched: set_watch(watch_state::unavailable); return attempt(now);
            case wake_reason::reply: return attempted(backend_.on_reply(in.ec), now);
            case wake_reason::timer:
            case wake_reason::turn:
            case wake_reason::deliver: break;
        }
        return step(now);
    }

    Backend& backend() noexcept { return backend_; }
    const Backend& backend() const noexcept { return backend_; }
    unsigned attempts() const noexcept { return attempts_; }
    clock::time_point deadline() const noexcept { return deadline_; }
    /// A single attempt, never a wait: timeout <= 0.
    bool single_attempt() const noexcept { return timeout_ <= clock::duration::zero(); }
    /// Whether the driver holds a release watch for this acquisition.
    bool watching() const noexcept { return watch_ == watch_state::armed; }
    /// Whether it is queued behind another waiter of its domain.
    bool queued() const noexcept { return queued_; }

private:
    enum class watch_state { none, armed, unavailable };

    bool may_queue() const noexcept {
        return place_ && backend_.queues() && !single_attempt() && !queued_;
    }

    static constexpr bool queue_first() noexcept {
        if constexpr (requires { Backend::queue_first; })
            return Backend::queue_first;
        else
            return false;
    }

    bool retarget_watch() {
        if constexpr (requires(Backend & b) { b.retarget_watch(); })
            return backend_.retarget_watch();
        else
            return false;
    }

    clock::time_point next_look() const noexcept {
        if constexpr (requires(const Backend& b) { b.next_look(); })
            return backend_.next_look();
        else
            return {};
    }

    void start(clock::time_point now) noexcept {
        if (started_) return;
        started_ = true;
        forever_ = timeout_ >= clock::time_point::max() - now;
        deadline_ = forever_ ? clock::time_point::max() : now + std::max(timeout_, {});
    }

    bool expired(clock::time_point now) const noexcept { return !forever_ && now >= deadline_; }

    // Joins the queue of the lock the backend names now; returns whether this
    // waiter may attempt (it is the head, or it could not queue).
    bool join_queue() {
        lock_identity id;
        if (!backend_.identity(id)) return true;  // nothing to key on: attempt alone
        const bool head = place_->join(id, domain_);
        queued_ = place_->joined();
        place_->watching.store(watching());
        return head;
    }

    void leave_queue() noexcept {
        if (!queued_) return;
        queued_ = false;
        place_->leave();  // the next waiter of the domain attempts now
    }

    void set_watch(watch_state s) noexcept {
        watch_ = s;
        if (queued_) place_->watching.store(s == watch_state::armed);
    }

    action step(clock::time_point now) {
        start(now);
        // A forked child's copy of a queued waiter: the parent's queue is
        // gone, it attempts (and queues) anew.
        if (queued_ && !place_->joined()) queued_ = false;
        if (queued_ && !place_->is_head()) return wait_turn(now);
        if (queued_) {
            // The queue yields this turn to other processes for a moment.
            if (const auto d = place_->hold_off(now); d > d.zero()) return wait(now + d, false);
        }
        return attempt(now);
    }

    action wait_turn(clock::time_point now) {
        if (expired(now)) return finish(errc::timeout);
        return wait(deadline_, false);
    }

    action attempt(clock::time_point now) {
        // Arm first, then attempt: a release between a failed attempt and the
        // new watch would otherwise be lost.
        if (want_watch_ && contended_ && watch_ == watch_state::none)
            return {action::kind::watch, {}, {}, false};
        ++attempts_;
        // A wait's last attempt may be made on the lock, not only on the
        // cross-process queue's say-so (the file backend's exclusive waits:
        // a stalled head does not make them time out on a free lock). A
        // single attempt keeps the queue's answer; so does the local queue.
        if constexpr (requires(Backend & b) { b.at_deadline(); })
            if (!single_attempt() && expired(now)) backend_.at_deadline();
        return attempted(backend_.try_acquire(), now);
    }

    action attempted(std::error_code ec, clock::time_point now) {
        if (ec == std::errc::operation_in_progress) return {action::kind::send, {}, {}, false};
        if (ec != errc::locked) return finish(ec);
        if (expired(now)) return finish(errc::timeout);
        contended_ = true;
        if (may_queue() && !join_queue()) {
            // Behind another waiter of this domain: the head's descriptor is
            // the only one.
            backend_.drop_file();
            return wait_turn(now);
        }
        if (want_watch_ && retarget_watch()) {
            // What it waits for changed (no release of the file came): no
            // quick retries.
            quick_ = std::size(Backend::quick_retries);
            set_watch(watch_state::none);
            return {action::kind::watch, {}, {}, false};
        }
        if (want_watch_ && watch_ == watch_state::none) return {action::kind::watch, {}, {}, false};
        const bool watched = watch_ == watch_state::armed;
        const auto look = watched ? next_look() : clock::time_point{};
        if (look != clock::time_point{}) quick_ = std::size(Backend::quick_retries);
        auto delay = look != clock::time_point{} ? std::max(look - now, clock::duration{})
                     : quick_ < std::size(Backend::quick_retries) ? Backend::quick_retries[quick_++]
                     : watched ? backoff_.next() * watched_stretch
                               : backoff_.next();
        if (!forever_ && delay > deadline_ - now) delay = deadline_ - now;  // last attempt there
        return wait(now + delay, watched);
    }

    action wait(clock::time_point until, bool on_release) const noexcept {
        return {action::kind::wait, {}, until, on_release};
    }

    action finish(std::error_code ec) noexcept {
        finished_ = true;
        result_ = ec;
        won_ = !ec;
        leave_queue();
        return {action::kind::done, ec, {}, false};
    }

    action after_done(const input& in) {
        switch (in.reason) {
            case wake_reason::cancel:
                // Cancelled after the win, before the lock was handed over:
                // release it, so no lock is left held by nobody.
                if (won_) {
                    won_ = false;
                    backend_.release_won();
                    result_ = in.ec;
                }
                break;
            case wake_reason::deliver:
                // Won before a fork(), delivered in the child: that lock is
                // the parent's. Attempt again, on a descriptor of our own.
                if (won_ && backend_.won_inherited()) {
                    finished_ = won_ = false;
                    return step(in.now);
                }
                break;
            default: break;
        }
        return {action::kind::done, result_, {}, false};
    }

    /// While a release watch is armed the backoff timer is only a fallback
    /// (for holders that unlock without closing): its waits are this many
    /// times longer, so that a long wait costs little CPU.
    static constexpr int watched_stretch = 4;

    Backend backend_;
    clock::duration timeout_;
    backoff backoff_;
    clock::time_point deadline_{};
    queue_waiter* place_ = nullptr;
    const void* domain_ = nullptr;
    std::error_code result_;
    unsigned attempts_ = 0;
    std::size_t quick_ = std::size(Backend::quick_retries);  // none before an event
    watch_state watch_ = watch_state::none;
    bool want_watch_ = false;
    bool contended_ = false;
    bool queued_ = false;
    bool started_ = false;
    bool forever_ = false;
    bool finished_ = false;
    bool won_ = false;
};

}  // namespace filelock::detail
