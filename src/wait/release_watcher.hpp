// SPDX-License-Identifier: MIT
#pragma once

// The release watcher: the platform's source of release events, with no
// decision in it. On Linux an inotify instance watches the lock files
// (IN_CLOSE_WRITE / IN_CLOSE_NOWRITE: a holder closed its descriptor;
// IN_DELETE_SELF / IN_MOVE_SELF / IN_ATTRIB: the file was unlinked, renamed
// or replaced, so the path must be watched anew). Elsewhere (Windows, the
// BSDs, macOS) it is not valid() and drivers fall back to the backoff alone.
// Watches are refcounted per watch descriptor (the kernel gives one per
// inode and instance); one with no reference left stays (the next waits on
// the path find it) until it moves or the instance closes.
//
// Queue turns: a waiter of the cross-process queue that is not its head
// waits for its predecessor to leave instead of for the file's releases (see
// process_queue.hpp). Its driver hands a descriptor that becomes readable
// then (a socket connected to the predecessor's doorbell); the watcher keeps
// a copy of it in an epoll set beside the inotify instance, and the epoll
// descriptor is the one drivers wait on; a forked child closes its copies of
// the turns at the fork (an inherited watcher never closes them again).
// wait() polls the inotify instance itself while no turn is in the set (the
// epoll layer would only add a wake-up in between). Not thread-safe, but
// for wait(), which may run beside the others: a turn armed meanwhile
// interrupts it.

#include "release_registry.hpp"

#include <filelock/export.hpp>

#include <atomic>
#include <chrono>
#include <deque>
#include <filesystem>
#include <unordered_map>
#include <vector>

namespace filelock::detail {

class FILELOCK_API release_watcher {
public:
    release_watcher() noexcept;
    release_watcher(const release_watcher&) = delete;
    release_watcher& operator=(const release_watcher&) = delete;
    ~release_watcher();

    bool valid() const noexcept { return fd_ >= 0 && ep_ >= 0; }
    /// The descriptor to wait on for readability (an epoll set of the
    /// inotify instance and the queue turns).
    int native_handle() const noexcept { return ep_; }
    /// The inotify instance (inside native_handle()).
    int inotify_handle() const noexcept { return fd_; }
    /// The eventfd that ends a wait() (-1: none).
    int interrupt_handle() const noexcept { return efd_; }
    /// The fork generation it was made in.
    unsigned generation() const noexcept { return generation_; }

    /// Watches the file `path` names now; returns its watch descriptor, or -1
    /// if it cannot be watched (the caller then relies on its timer).
    int add(const std::filesystem::path& path) noexcept;
    /// Watches for `fd` (a queue turn) to become readable: returns the watch
    /// descriptor of its copy (<= turn_base), or -1 (also when inherited
    /// across fork).
    int add_turn(int fd) noexcept;
    static constexpr int turn_base = -2;
    static bool is_turn(int wd) noexcept { return wd <= turn_base; }
    /// Drops one reference taken by add(), or the turn of add_turn().
    void remove(int wd) noexcept;
    /// The watch names a file that moved: dropped now if unreferenced.
    void moved(int wd) noexcept;

    static constexpr int all = release_event::all;
    /// Reads the pending events, one entry per watch descriptor that saw
    /// any (`all`, moved, when the kernel's queue overflowed); a queue turn
    /// is reported once (never moved).
    std::vector<release_event> drain();

    /// Makes interrupt() possible (an eventfd); false if it cannot.
    bool enable_interrupts() noexcept;
    /// Sleeps until events are pending, interrupt() is called, or `until`
    /// passes (the sync driver's way of reading the events). True: events
    /// of the file watches are pending, and no turn was polled.
    bool wait(std::chrono::steady_clock::time_point until) noexcept;
    /// One file is watched, and no turn: every event is that file's.
    bool watches_one() const noexcept { return refs_.size() == 1 && armed_ == 0; }
    /// Ends a wait() now, or the next one to start.
    void interrupt() noexcept;
    /// Forgets interrupts meant for earlier waits.
    void clear_interrupts() noexcept;
    /// Closes its descriptors now (in a forked child's copy of its parent's
    /// instance, those not closed at the fork, leaving the watches, the
    /// parent's, alone).
    void abandon() noexcept;

    /// Whether a forked child closes its copies of the inotify instance, the
    /// epoll set and the eventfd at the fork (listed in src/posix/
    /// fork_closed.hpp, as they are from their creation on), or leaves them
    /// to an event loop that registered them (its fork handling registers
    /// them again in the child's loop, which then drops the inherited copy,
    /// closing them). False if they cannot be listed (out of memory, or a
    /// forked child's copy).
    bool list_for_fork(bool on) noexcept;

private:
    static constexpr std::size_t max_unreferenced = 8;

    // `armed_` changes by `delta`; wait() polls ep_ while it is not 0.
    void rearm(int delta) noexcept;

    int fd_ = -1;
    int ep_ = -1;                           // epoll: fd_ and the turns
    int efd_ = -1;                          // interrupts a wait()
    std::atomic<bool> interrupted_{false};  // efd_ was written since the last clear
    std::vector<int> turns_;                // the turns' copies (open until removed)
    std::size_t armed_ = 0;                 // how many of them are still in ep_
    std::atomic<int> polled_{-1};           // what wait() polls: fd_, or ep_ while armed_
    unsigned generation_ = 0;               // fork generation it was created in
    bool listed_ = false;                   // fd_, ep_, efd_ closed at the fork (list_for_fork)
    std::unordered_map<int, int> refs_;     // watch descriptor -> references
    std::deque<int> unreferenced_;          // kept for the next waits, oldest first
};

}  // namespace filelock::detail
