// SPDX-License-Identifier: MIT
#pragma once

// Release events: wakes waiters when a lock file's holder closes it, instead
// of when a backoff timer happens to fire. On Linux an inotify instance
// watches the lock files (IN_CLOSE_WRITE / IN_CLOSE_NOWRITE: a holder closed
// its descriptor; IN_DELETE_SELF / IN_MOVE_SELF / IN_ATTRIB: the file was
// unlinked, renamed or replaced, so the path must be watched anew). Elsewhere
// (Windows, the BSDs, macOS) the watcher is not valid() and drivers fall back
// to the backoff alone.
//
// How many instances a process holds (bounded, whatever the number of
// waiters): one for all sync waiters (with an eventfd; kept for the
// process's life once a sync waiter watched: a process-wide cache), one per Asio execution context
// or libuv loop while it has waiting operations, and at most one idle one
// kept for the next loop that waits (so that no instance is closed on the
// way from a release to the next holder: closing one costs ~0.1 ms). Watches
// are refcounted per watch descriptor (the kernel gives one per inode and
// instance), never one per waiter. A release_watcher is not thread-safe:
// each driver serialises its use.

#include <filelock/export.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <iterator>
#include <memory>
#include <unordered_map>
#include <vector>

namespace filelock::detail {

class FILELOCK_API release_watcher {
public:
    release_watcher() noexcept;
    release_watcher(const release_watcher&) = delete;
    release_watcher& operator=(const release_watcher&) = delete;
    ~release_watcher();

    bool valid() const noexcept { return fd_ >= 0; }
    /// The descriptor to wait on for readability.
    int native_handle() const noexcept { return fd_; }

    /// Watches the file `path` names now; returns its watch descriptor, or -1
    /// if it cannot be watched (the caller then relies on its timer).
    int add(const std::filesystem::path& path) noexcept;
    /// Drops one reference taken by add().
    void remove(int wd) noexcept;

    struct event {
        /// The watch descriptor; `all` when the kernel's queue overflowed:
        /// events were lost, every watch must be taken as moved.
        int wd;
        /// The file was unlinked, renamed or replaced (or the watch is gone):
        /// waiters should drop this watch and watch the path anew.
        bool moved;
    };
    static constexpr int all = -1;
    /// Reads the pending events, one entry per watch descriptor that saw
    /// any. Its waiters should attempt now.
    std::vector<event> drain();

    /// Makes interrupt() possible (an eventfd); false if it cannot.
    bool enable_interrupts() noexcept;
    /// Sleeps until events are pending, interrupt() is called, or `until`
    /// passes (the sync driver's waiting thread that reads the events).
    void wait(std::chrono::steady_clock::time_point until) noexcept;
    /// Ends a wait() now, or the next one to start.
    void interrupt() noexcept;
    /// Forgets interrupts meant for earlier waits.
    void clear_interrupts() noexcept;
    /// A forked child's copy of its parent's instance: closes its
    /// descriptors, leaving the watches (the parent's) alone.
    void abandon() noexcept;

    /// An instance from the process's idle one, or a new one.
    static std::unique_ptr<release_watcher> take();
    /// Keeps `w` (its watches removed, its events dropped) as the process's
    /// idle instance, or closes it if one is kept already.
    static void recycle(std::unique_ptr<release_watcher> w) noexcept;

private:
    int fd_ = -1;
    int efd_ = -1;                       // interrupts a wait()
    unsigned generation_ = 0;            // fork generation it was created in
    std::unordered_map<int, int> refs_;  // watch descriptor -> references
};

/// The rule for which of the waiters on one watch a release event wakes:
/// every shared waiter (a release lets all of them in) and the longest-
/// waiting exclusive one (it lets one in: waking all would cost N attempts
/// per release; the others keep their fallback timers). A moved file wakes
/// all. `waiters` yields pointers; `arrival(w)` orders them, `shared(w)`.
template <class Range, class Arrival, class Shared, class Wake>
void wake_release_waiters(const Range& waiters, bool moved, Arrival arrival, Shared shared,
                          Wake wake) {
    decltype(&*std::begin(waiters)) first = nullptr;
    for (auto& w : waiters) {
        if (moved || shared(w))
            wake(w);
        else if (!first || arrival(w) < arrival(*first))
            first = &w;
    }
    if (first) wake(*first);
}

}  // namespace filelock::detail
