// SPDX-License-Identifier: MIT
#pragma once

// Local queues: one per lock and per driver domain (the sync waiters of a
// process, one Asio execution context, one libuv loop). Waiters of one domain
// for one lock line up in arrival order and only the head makes attempts,
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
// A queue is keyed by the lock, not by its spelling: the file's identity
// (device, inode), the backend (flock and OFD locks do not conflict) and the
// byte range, so "rel.lock" after a chdir(), an OFD waiter and a waiter for
// another range of the file never line up behind waiters of another lock. And by domain: a head
// whose event loop stops running stalls only the waiters of that loop; across domains the kernel
// orders the attempts (each domain's head attempts on its own descriptor).
//
// Drivers derive their waiting operation from queue_waiter; the acquire
// state machine (acquire.hpp) decides when it joins and leaves. The
// registry is process-wide and thread-safe.

#include <filelock/export.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>

namespace filelock::detail {

struct path_queue;

/// What makes two waiters compete for one kernel lock.
struct lock_identity {
    unsigned long long dev = 0, ino = 0;
    int backend = 0;                      // lock_backend, or another backend's tag
    std::uint64_t start = 0, length = 0;  // the byte range ({0, 0}: the whole file)

    friend bool operator==(const lock_identity&, const lock_identity&) = default;
};

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

    /// Joins the tail of the queue of the lock `id` in `domain` (any address
    /// that stands for the driver instance: an execution context, a loop).
    /// Returns whether it is the head. Call once; leave() before joining
    /// again. Out of memory, it stays out of the queue and returns true: the
    /// waiter then attempts on its own.
    bool join(const lock_identity& id, const void* domain) noexcept;
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
    /// How long the head must still hold off its attempts at `now` (zero:
    /// attempt). Checked before each attempt of a head.
    std::chrono::steady_clock::duration hold_off(
        std::chrono::steady_clock::time_point now) const noexcept;

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

/// Tells the local queues of the lock `id` (one per domain) that a holder in
/// this process released it: wakes their heads (lock_file::close calls it
/// after releasing). Costs one atomic load when no queue exists.
FILELOCK_API void local_release(const lock_identity& id) noexcept;

/// Waiters queued in this process, over all paths (tests and benchmarks).
FILELOCK_API std::size_t local_waiters() noexcept;

}  // namespace filelock::detail
