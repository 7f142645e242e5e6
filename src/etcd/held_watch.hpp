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

#include "lock_backend.hpp"

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

/// The held lock's watch of its own key, as a step machine without I/O: each
/// event (the win, a watch message, the stream's end, the check's answer,
/// the backoff's timer) comes in with the time; the answer is what the
/// session does next. Tests drive it with scripted messages and replies.
class held_watch {
public:
    using time_point = rewatch_policy::time_point;

    struct action {
        enum class kind {
            none,   // nothing to do
            watch,  // (re)open the watch of the key from `from`
            check,  // read the key (a unary range: renews a refused token)
            wait,   // check again at `until`
            lost,   // the lock is lost
        };
        kind what = kind::none;
        std::int64_t from = 0;
        time_point until{};
        /// lost: the key went away; the lease may have been revoked with it
        /// (a keep-alive tells the session).
        bool ask_lease = false;
    };

    held_watch() = default;
    /// Held at create revision `rev`, won when the store was at `won_at`;
    /// the key may go unwatched for `limit` (the TTL).
    held_watch(std::int64_t rev, std::int64_t won_at, rewatch_policy::ms limit, time_point now)
        : rev_(rev), from_(won_at + 1), retry_(limit, now) {}

    /// The revision the next watch starts from (no deletion after the last
    /// one seen is missed).
    std::int64_t from() const noexcept { return from_; }

    /// The lock is won: watch the key.
    action start() const noexcept { return watch(); }

    /// A message of the watch stream.
    action on_message(const watch_message& m, time_point now) noexcept {
        if (!m.ok) return {};
        if (m.revision) from_ = std::max(from_, m.revision + 1);
        if (m.created) retry_.watching(now);
        // The server ended this watch (an expired auth token, a compacted
        // revision): the stream says nothing more.
        if (m.canceled) return {action::kind::check};
        if (!m.deletions.empty()) return lost(true);
        return {};
    }

    /// The stream ended (a member went away): look again after a backoff.
    action on_stream_end(time_point now) noexcept { return again(now); }

    /// The backoff's timer.
    action on_timer() const noexcept { return {action::kind::check}; }

    /// The answer to the check (a range of the key).
    action on_check(const http_reply& r, time_point now) {
        json j;
        std::string why;
        std::vector<kv> kvs;
        const auto ec = parse(r, j, why);
        bool read = false;
        try {
            read = !ec && kvs_of(j, kvs);
        } catch (const std::exception&) {
            read = false;  // a malformed answer is no answer
        }
        // etcd refuses to show the key (a permission taken away, a refused
        // token that could not be renewed): it cannot be watched.
        if (ec && !transient(r, ec)) return lost(false);
        if (!read) return again(now);  // not answered: the transport moved on
        if (kvs.empty() || kvs.front().create_revision != rev_) return lost(true);
        // Still ours at the answer's revision: watch on from there.
        try {
            if (const auto hd = j.find("header"); hd != j.end() && hd->is_object())
                from_ = std::max(from_, int64_of(*hd, "revision") + 1);
        } catch (const std::exception&) {
            // no usable revision: watch on from the last one seen
        }
        return watch();
    }

private:
    action watch() const noexcept { return {action::kind::watch, from_}; }
    static action lost(bool ask_lease) noexcept { return {action::kind::lost, 0, {}, ask_lease}; }
    action again(time_point now) noexcept {
        const auto next = retry_.failed(now);
        if (next.give_up) return lost(true);
        return {action::kind::wait, 0, next.at};
    }

    std::int64_t rev_ = 0;
    std::int64_t from_ = 0;
    rewatch_policy retry_;
};

}  // namespace filelock::etcd::detail
