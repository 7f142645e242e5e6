// SPDX-License-Identifier: MIT
#pragma once

// The session's lease without I/O (Go's concurrency.Session): which lease,
// until when ownership under it is guaranteed, when the next keep-alive
// goes, and what a keep-alive's answer means. Times come in as parameters:
// tests drive it with a fake clock.
//
// Ownership is guaranteed until the server could expire the lease, less the
// margin, counted from when the request that renewed it was *sent* (its
// arrival, from which etcd counts, comes later). Before any win the
// protocol checks `state()` (lock_backend.hpp); the session's lost timer
// fires at `deadline()`.

#include <filelock/detail/backoff.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#if defined(__linux__)
#include <time.h>
#endif

namespace filelock::etcd::detail {

using filelock::detail::clock;

/// The clock of the lease's send times and deadline, and of the "now" a win
/// is checked against: etcd's lease runs on while this machine is
/// suspended, and CLOCK_MONOTONIC (steady_clock) does not count a suspend.
/// On Linux CLOCK_BOOTTIME does; elsewhere steady_clock.
struct lease_clock {
    using duration = std::chrono::nanoseconds;
    using rep = duration::rep;
    using period = duration::period;
    using time_point = std::chrono::time_point<lease_clock>;
    static constexpr bool is_steady = true;
    static time_point now() noexcept {
#if defined(__linux__)
        timespec ts{};
        ::clock_gettime(CLOCK_BOOTTIME, &ts);
        return time_point(std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec));
#else
        return time_point(std::chrono::duration_cast<duration>(
            std::chrono::steady_clock::now().time_since_epoch()));
#endif
    }
};

/// What the protocol knows of the session's lease. The session updates it;
/// the backend reads it when it is about to report a win.
struct lease_state {
    /// The session's lease; 0 while it has none (given up, lost).
    std::int64_t id = 0;
    /// Until when ownership under it is guaranteed: the send time of the last
    /// answered keep-alive (or grant) + TTL - margin.
    lease_clock::time_point deadline = lease_clock::time_point::min();

    bool live(std::int64_t lease, lease_clock::time_point now) const noexcept {
        return lease != 0 && id == lease && now < deadline;
    }
};

/// The grant of the session's lease (and the authentication before it)
/// without I/O: whether a failure is tried again, and when.
class grant_retry {
public:
    using ms = std::chrono::milliseconds;

    /// An answer came (HTTP `status`; 0: none came).
    void answered(long status) noexcept {
        if (status != 0) answered_ = true;
    }
    /// The grant failed: whether it is tried again (for the waiters whose
    /// deadline allows). A configuration that never reached etcd (refused,
    /// unresolvable: `unreachable`) fails at once; a member that timed out,
    /// reset the connection or is electing (`transient`) is tried again.
    bool failed(long status, bool transient, bool unreachable) noexcept {
        answered(status);
        return transient && (answered_ || !unreachable);
    }
    /// The grant succeeded: the next failure starts the delays over.
    void succeeded() noexcept { tries_ = 0; }
    /// When the next try goes after a failure at `now`: 100 ms more each
    /// time, at most 1 s.
    template <class TimePoint>
    TimePoint next(TimePoint now) noexcept {
        ++tries_;
        return now + ms(std::min(100 * tries_, 1000));
    }
    /// Whether a waiter whose deadline is `deadline` waits for the next try.
    template <class TimePoint>
    static bool waits(TimePoint deadline, TimePoint now) noexcept {
        return now < deadline;
    }

private:
    int tries_ = 0;
    bool answered_ = false;  // an endpoint answered this session once
};

class lease_keeper {
public:
    using ms = std::chrono::milliseconds;
    /// Keep-alives are never closer than this (a keep-alive costs a request).
    static constexpr ms min_interval{200};
    /// After a failed keep-alive, the next one within this.
    static constexpr ms max_retry{1000};

    lease_keeper(std::chrono::seconds ttl, ms lost_margin) : ttl_(ttl), margin_(lost_margin) {}

    /// The TTL to ask for in a grant: the configured one, then the server's.
    std::chrono::seconds ttl() const noexcept { return ttl_; }
    std::int64_t id() const noexcept { return state_.id; }
    const lease_state& state() const noexcept { return state_; }
    lease_clock::time_point deadline() const noexcept { return state_.deadline; }

    /// A grant sent at `sent` was answered: lease `id` with `ttl`.
    void granted(std::int64_t id, lease_clock::time_point sent, std::chrono::seconds ttl) noexcept {
        ttl_ = ttl;
        state_.id = id;
        renew(sent, ttl);
    }

    enum class verdict {
        renewed,  // the deadline moved on
        failed,   // no valid answer: try again soon, the deadline stands
        gone,     // etcd says the lease is expired or revoked
    };
    /// The answer to a keep-alive sent at `sent`: `ttl` seconds left, or
    /// `failed` when no valid answer came.
    verdict answered(lease_clock::time_point sent, bool failed, std::int64_t ttl) noexcept {
        if (failed) return verdict::failed;
        if (ttl <= 0) return verdict::gone;
        renew(sent, std::chrono::seconds(ttl));
        return verdict::renewed;
    }

    /// When the next keep-alive goes, from `now`: every TTL/3, counted in
    /// milliseconds (a TTL of 1 or 2 s is not 0 s). After a failure, a
    /// quarter of that (at least 100 ms, at most 1 s): the transport moved to
    /// the next endpoint, which should answer before the deadline.
    template <class TimePoint>
    TimePoint next_keepalive(TimePoint now, bool after_failure) const noexcept {
        const auto every = interval();
        if (after_failure) return now + std::clamp(every / 4, ms(100), max_retry);
        return now + every;
    }
    /// How long one keep-alive may take: half the interval. A member that
    /// stalls (paused, partitioned, forwarding to a dead leader) must not
    /// hold the renewal past the deadline while another could answer.
    ms request_timeout() const noexcept { return interval() / 2; }

    /// The session gives the lease up (lost, revoked, closing): returns it.
    std::int64_t give_up() noexcept {
        const auto old = state_.id;
        state_ = {};
        return old;
    }

private:
    ms interval() const noexcept {
        return std::max(std::chrono::duration_cast<ms>(ttl_) / 3, min_interval);
    }

    void renew(lease_clock::time_point sent, ms ttl) noexcept {
        const auto margin = std::min<lease_clock::duration>(margin_, ttl / 2);
        state_.deadline = sent + ttl - margin;
    }

    std::chrono::seconds ttl_;
    ms margin_;
    lease_state state_;
};

}  // namespace filelock::etcd::detail
