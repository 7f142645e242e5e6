// SPDX-License-Identifier: MIT
#pragma once

// The acquisition engine: decides what to do next, never does I/O itself.
//
// A driver (the sync facade, the Asio or libuv adapter) calls `resume(now)`;
// the engine makes one non-blocking attempt through its Target and answers
// either *done* (won, or failed with an error) or *wait* (for how long).
// It knows nothing of files or POSIX: a Target is anything with
//
//     std::error_code try_acquire();   // {} = won, errc::locked = contention,
//                                      // anything else = a real error
//
// so other lock substrates (a lock service, LockFileEx) drive the same engine.
// Time comes in as a parameter: tests drive it with a fake clock.
//
// Release events: a wait may end early when the driver sees a release event
// (on Linux, an inotify close event on the lock file); the driver then says
// so with `resume(now, true)`. Such an event can come slightly before the
// holder's lock is really gone, so a failed attempt right after an event is
// retried quickly a few times before the backoff takes over again.

#include <filelock/error.hpp>
#include <filelock/options.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <iterator>
#include <system_error>

namespace filelock::detail {

using clock = std::chrono::steady_clock;

struct next_action {
    enum class kind { done, wait };
    kind what = kind::done;
    /// done: empty when the lock was won; errc::timeout when the deadline
    /// passed under contention; otherwise the Target's error.
    std::error_code ec{};
    /// wait: how long before the next `resume`, unless a release event comes
    /// first (drivers that can watch for one end the wait early).
    clock::duration delay{};

    bool is_done() const noexcept { return what == kind::done; }
};

/// Capped exponential backoff with jitter (xorshift randomness: cheap, and
/// seeded per acquisition so contenders do not move in lock-step).
class backoff {
public:
    /// The longest wait a policy may ask for.
    static constexpr clock::duration max_wait = std::chrono::hours(1);

    backoff(const backoff_policy& p, std::uint64_t seed) noexcept
        : policy_(sanitized(p)), state_(seed ? seed : 0x9e3779b97f4a7c15ull) {
        ceiling_ = policy_.initial;
    }

    /// The policy with every field clamped to its documented range (NaN
    /// included), so that no conversion below can overflow.
    static backoff_policy sanitized(backoff_policy p) noexcept {
        const auto clamp_wait = [](clock::duration lo, std::chrono::nanoseconds d) {
            return std::clamp(std::chrono::duration_cast<clock::duration>(d), lo, max_wait);
        };
        p.initial = clamp_wait(clock::duration(1), p.initial);
        p.cap = clamp_wait(p.initial, p.cap);
        p.multiplier = p.multiplier != p.multiplier ? 2.0 : std::clamp(p.multiplier, 1.0, 1000.0);
        p.jitter = p.jitter != p.jitter ? 1.0 : std::clamp(p.jitter, 0.0, 1.0);
        return p;
    }

    /// The next wait, in `[ceiling * (1 - jitter), ceiling]`; the ceiling then
    /// grows by the multiplier up to the cap.
    clock::duration next() noexcept {
        const auto ceiling = ceiling_;
        const double grown = static_cast<double>(ceiling_.count()) * policy_.multiplier;
        ceiling_ = grown >= static_cast<double>(policy_.cap.count())
                       ? policy_.cap
                       : clock::duration(static_cast<clock::rep>(grown));
        const double u = static_cast<double>(random() >> 11) * 0x1.0p-53;  // [0, 1)
        const double scale = 1.0 - policy_.jitter * u;
        return std::max(
            clock::duration(1),
            clock::duration(static_cast<clock::rep>(static_cast<double>(ceiling.count()) * scale)));
    }

    clock::duration ceiling() const noexcept { return ceiling_; }

private:
    std::uint64_t random() noexcept {
        state_ ^= state_ << 13;
        state_ ^= state_ >> 7;
        state_ ^= state_ << 17;
        return state_;
    }

    backoff_policy policy_;
    std::uint64_t state_;
    clock::duration ceiling_;
};

template <class Target>
class engine {
public:
    /// `timeout`: how long attempts may go on from the first `resume`;
    /// <= 0 is exactly one attempt; `wait_forever` never expires.
    engine(Target target, clock::duration timeout, const backoff_policy& policy,
           std::uint64_t seed) noexcept(std::is_nothrow_move_constructible_v<Target>)
        : target_(std::move(target)), timeout_(timeout), backoff_(policy, seed) {}

    /// Delays of the quick retries after a release event.
    static constexpr clock::duration quick_retries[] = {std::chrono::microseconds(20),
                                                        std::chrono::microseconds(100),
                                                        std::chrono::microseconds(500)};

    /// While the driver watches for release events, the backoff timer is
    /// only a fallback (for holders that unlock without closing): its waits
    /// are this many times longer, so that a long wait costs little CPU.
    static constexpr int watched_stretch = 4;

    /// One attempt. `woken`: the wait ended because of a release event;
    /// `watching`: the next wait will also end on a release event.
    next_action resume(clock::time_point now, bool woken = false, bool watching = false) {
        if (woken) quick_ = 0;
        start(now);
        ++attempts_;
        const std::error_code ec = target_.try_acquire();
        if (ec != errc::locked) return {next_action::kind::done, ec, {}};
        if (!forever_ && now >= deadline_) return {next_action::kind::done, errc::timeout, {}};
        auto delay = quick_ < std::size(quick_retries) ? quick_retries[quick_++]
                     : watching                        ? backoff_.next() * watched_stretch
                                                       : backoff_.next();
        if (!forever_ && delay > deadline_ - now)
            delay = deadline_ - now;  // last attempt at the deadline
        return {next_action::kind::wait, {}, delay};
    }

    /// Fixes the deadline at `now + timeout` without an attempt (the first
    /// `resume` does it otherwise). For drivers that queue an acquisition
    /// before its first attempt: the timeout counts from its start.
    void start(clock::time_point now) noexcept {
        if (started_) return;
        started_ = true;
        forever_ = timeout_ >= clock::time_point::max() - now;
        deadline_ = forever_ ? clock::time_point::max() : now + std::max(timeout_, {});
    }

    /// Whether the deadline has passed (false before start, and forever).
    bool expired(clock::time_point now) const noexcept {
        return started_ && !forever_ && now >= deadline_;
    }

    /// A single attempt, never a wait: an engine made with timeout <= 0.
    bool single_attempt() const noexcept { return timeout_ <= clock::duration::zero(); }

    Target& target() noexcept { return target_; }
    const Target& target() const noexcept { return target_; }
    unsigned attempts() const noexcept { return attempts_; }
    clock::time_point deadline() const noexcept { return deadline_; }

private:
    Target target_;
    clock::duration timeout_;
    backoff backoff_;
    clock::time_point deadline_{};
    unsigned attempts_ = 0;
    std::size_t quick_ = std::size(quick_retries);  // no quick retries before an event
    bool started_ = false;
    bool forever_ = false;
};

}  // namespace filelock::detail
