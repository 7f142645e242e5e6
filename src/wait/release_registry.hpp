// SPDX-License-Identifier: MIT
#pragma once

// The release registry: which waiter watches which file, and which of them a
// release event wakes. No descriptor inside: the drivers feed it the
// watcher's events and wake what it answers, each in its own way (tested
// with scripted events: tests/test_release_registry.cpp).

#include <filelock/detail/local_queue.hpp>
#include <filelock/export.hpp>

#include <cstdint>
#include <vector>

namespace filelock::detail {

/// What the watcher saw on one watch since the last read.
struct release_event {
    /// The watch descriptor; `all` when the kernel's queue overflowed:
    /// events were lost, every watch must be taken as moved. A queue
    /// turn's (`wd <= turn`, see release_watcher::add_turn) is its own:
    /// only its waiter is woken, and `all` does not concern it.
    int wd;
    /// The file was unlinked, renamed or replaced (or the watch is gone):
    /// its waiters drop this watch and watch the path anew.
    bool moved;
    static constexpr int all = -1;
    static constexpr int turn = -2;
};

class FILELOCK_API release_registry {
public:
    /// A waiter, as the driver knows it.
    using key = const void*;
    struct wakeup {
        key waiter;
        bool moved;  // woken to watch anew (else: to attempt)
    };

    /// `waiter` waits for releases of the file watched as `wd`. `arrival`
    /// orders the waiters (earlier first); a `shared` one is a reader; `lock`
    /// is the lock it waits for (its backend and byte range: waiters of one
    /// file may wait for locks that do not exclude each other).
    void add(int wd, key waiter, std::uint64_t arrival, bool shared,
             const lock_identity& lock = {});
    /// Forgets `waiter`; returns its watch descriptor (-1: not registered),
    /// whose reference the caller drops.
    int remove(key waiter) noexcept;

    /// The waiters `events` wake, by the wake rule: on a queue turn, its
    /// waiter (its predecessor left; it stays registered); on a release, every
    /// shared waiter (a release lets all readers in) and the longest-waiting
    /// exclusive one of each lock on the file (a release lets one in: waking
    /// all would cost N attempts per release; the others keep their fallback
    /// timers; a release of one byte range or backend says nothing of
    /// another, so each lock's first writer attempts); on a moved file (or
    /// lost events), all of them, forgotten (they watch anew), their watch
    /// descriptors added to `moved` (one entry per waiter: the caller drops
    /// a reference for each).
    std::vector<wakeup> dispatch(const std::vector<release_event>& events, std::vector<int>& moved);

    /// Forgets every waiter (after a fork: they all watch anew elsewhere;
    /// or their driver goes away): returns them, and adds their watch
    /// descriptors to `wds` (one entry per waiter: the caller drops a
    /// reference for each). Nothing changes if it throws.
    std::vector<key> clear(std::vector<int>& wds);
    /// No waiter left: the driver may give its watcher back.
    bool idle() const noexcept { return entries_.empty(); }
    /// `waiter` is the only one.
    bool sole(key waiter) const noexcept {
        return entries_.size() == 1 && entries_.front().waiter == waiter;
    }

private:
    struct entry {
        int wd;
        key waiter;
        std::uint64_t arrival;
        bool shared;
        lock_identity lock;
        bool same_lock(const entry& o) const noexcept {
            return lock.backend == o.lock.backend && lock.start == o.lock.start &&
                   lock.length == o.lock.length;
        }
    };
    std::vector<entry> entries_;
};

}  // namespace filelock::detail
