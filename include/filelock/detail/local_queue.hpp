// SPDX-License-Identifier: MIT
#pragma once

// Local queues: one per lock path in a process. Waiters of one process for
// one lock file line up in arrival order and only the head makes attempts,
// so N local waiters hold one descriptor and one release watch (the head's),
// not N, and are served first come, first served. The kernel lock still does
// the excluding: every head acquires through its own descriptor, so two
// local waiters never share a won lock.
//
// A release by a holder in this process (lock_file::close) wakes the head at
// once. Other processes are not starved: once local holders have handed the
// lock to one another for their share of time in a row, the next local
// release does not wake the head, and the head holds off its attempts for a
// grace, in which other processes' waiters (woken by the holder's close
// event) can take the lock. The share adapts: it doubles (up to
// max_fair_share) while nobody else takes the lock in a grace, and drops back
// to min_fair_share when another process does.
//
// Drivers (the sync lock(), the Asio and libuv adapters) derive their waiting
// operation from queue_waiter. The queue is process-wide and thread-safe:
// waiters of different threads and event loops share it.

#include <filelock/export.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <filesystem>

namespace filelock::detail {

struct path_queue;

class FILELOCK_API queue_waiter {
public:
    queue_waiter() noexcept = default;
    queue_waiter(const queue_waiter&) = delete;
    queue_waiter& operator=(const queue_waiter&) = delete;

    /// The waiter became the head of its queue, or it is the head and a
    /// holder in this process released the lock: it should attempt now.
    /// Called from any thread with the queue's lock held: it must only
    /// signal its driver (set a flag, post, write an eventfd), never call
    /// back into the queue.
    virtual void wake() noexcept = 0;

    /// Joins the tail of the queue of `path` (the same file spelled the same
    /// way, after lexical normalisation). Returns whether it is the head.
    /// Call once; leave() before joining again. Out of memory, it stays out
    /// of the queue and returns true: the waiter then attempts on its own.
    bool join(const std::filesystem::path& path) noexcept;
    /// Leaves the queue (idempotent). A head that leaves wakes the next
    /// waiter, which becomes the head.
    void leave() noexcept;
    /// Whether it is in a queue of this process (a forked child's copy of
    /// its parent's waiter is not: its queues are gone, it joins anew).
    bool joined() const noexcept;
    /// Whether this waiter is its queue's head (may attempt). A waiter only
    /// becomes the head through wake(), so a driver may cache the answer
    /// until its next wake.
    bool is_head() const noexcept;
    /// How long the head must still hold off its attempts (zero: attempt).
    /// Drivers check it before each attempt of a head.
    std::chrono::steady_clock::duration hold_off() const noexcept;

    /// Drivers set it while the head watches for release events: only then
    /// may the queue leave a local release to the close event (see above).
    std::atomic<bool> watching{false};

protected:
    // Virtual: drivers are polymorphic (and users' -Wnon-virtual-dtor stays
    // quiet); a waiter is never destroyed through this base, though.
    virtual ~queue_waiter() { leave(); }

private:
    friend struct path_queue;
    path_queue* queue_ = nullptr;
    unsigned generation_ = 0;  // of the process's queues when it joined
    queue_waiter* prev_ = nullptr;
    queue_waiter* next_ = nullptr;
};

/// How long holders in one process may hand a lock to one another directly
/// before a release is left to other processes (it adapts between these),
/// and how long the local head then holds off.
inline constexpr std::chrono::microseconds min_fair_share{1000};
inline constexpr std::chrono::microseconds max_fair_share{64000};
inline constexpr std::chrono::microseconds yield_grace{500};

/// Tells the local queue of `path` that a holder in this process released
/// the lock: wakes its head (lock_file::close calls it after releasing).
/// Costs one atomic load when no queue exists.
FILELOCK_API void local_release(const std::filesystem::path& path) noexcept;

/// Waiters queued in this process, over all paths (tests and benchmarks).
FILELOCK_API std::size_t local_waiters() noexcept;

}  // namespace filelock::detail
