// SPDX-License-Identifier: MIT
#pragma once

// When a held lock's key is looked at again, without I/O: its watch stream
// ended, or the check of the key (a unary range) got no answer. Times come
// in as parameters: tests drive it with a fake clock.
//
// The tries back off (100 ms, doubling, at most 2 s) until a watch is up
// again; a key that has gone unwatched for longer than the limit (the
// lease's TTL) can no longer be said to be ours: another may have deleted it
// and been granted the lock meanwhile. The held lock is then lost.

#include <algorithm>
#include <chrono>

namespace filelock::etcd::detail {

class rewatch_policy {
public:
    using ms = std::chrono::milliseconds;
    using time_point = std::chrono::steady_clock::time_point;
    static constexpr ms first{100};
    static constexpr ms cap{2000};

    rewatch_policy() = default;
    /// `limit`: how long the key may go unwatched; watched from `now`.
    rewatch_policy(ms limit, time_point now) : limit_(limit), since_(now) {}

    /// A watch of the key is up (etcd created it) at `now`.
    void watching(time_point now) noexcept {
        delay_ = first;
        since_ = now;
    }

    struct next {
        /// The key went unwatched past the limit: the lock is lost.
        bool give_up = false;
        /// When the next try goes.
        time_point at{};
    };
    /// A try failed at `now`.
    next failed(time_point now) noexcept {
        if (now - since_ > limit_) return {true, {}};
        const auto at = now + delay_;
        delay_ = std::min<ms>(delay_ * 2, cap);
        return {false, at};
    }

private:
    ms limit_{10000};
    time_point since_{};
    ms delay_{first};
};

}  // namespace filelock::etcd::detail
