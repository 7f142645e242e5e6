// SPDX-License-Identifier: MIT
#pragma once

// Release events, as every driver uses them: wake a waiter when a lock
// file's holder closes it, instead of when a backoff timer happens to fire.
// Compiled in the library (src/wait/): the platform's watcher (an inotify
// instance on Linux; nothing elsewhere, where drivers wait on their backoff
// alone), the release registry (which waiter watches which file, and whom an
// event wakes) and the process's idle instance. A driver reads
// native_handle() its own way (a stream_descriptor, a uv_poll_t, a poll()
// on the sync waiters' thread) and calls read() when it is readable.
//
// How many instances a process holds (bounded, whatever the number of
// waiters): one for all sync waiters, one per Asio execution context or
// libuv loop while it has waiting operations, and an idle one for a linger
// (200 ms) after its last waiter, so that back-to-back waits close nothing
// on the way from a release to the next holder; then nothing. Not
// thread-safe: each driver serialises its use.

#include <filelock/detail/local_queue.hpp>
#include <filelock/export.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <vector>

namespace filelock::detail {

class FILELOCK_API release_source {
public:
    /// A waiter, as its driver knows it.
    using waiter = const void*;
    struct wakeup {
        waiter w;
        bool moved;  // its file moved (or a fork): it watches anew; else it attempts now
    };

    /// Who closes a forked child's copies of the source's descriptors.
    enum class fork_copies {
        /// The child, at the fork: a source that no event loop registers
        /// (the sync waiters').
        closed_at_fork,
        /// The event loop that reads it: its fork handling registers the
        /// descriptor again in the child's loop, and the child then
        /// destroys the inherited source (inherited()), which closes them.
        closed_by_loop,
    };

    /// The process's idle source, or a new one; nullptr where there are no
    /// release events (or no instance can be made now). A forked child
    /// closes its copies of an idle source, and of a new one from its
    /// creation on, at the fork; from take()'s return on, as `copies` says.
    /// The thread that will close it after its linger is started by the
    /// caller's start_lingering(), before the wait rather than on a
    /// winner's way out.
    static std::unique_ptr<release_source> take(fork_copies copies = fork_copies::closed_at_fork);
    /// After take(), outside the locks that waiters take: starts the thread
    /// that closes given-back sources a linger later, if none runs (a system
    /// call; one atomic load otherwise).
    static void start_lingering() noexcept;
    /// Calls start_lingering() as it goes out of scope: declared before the
    /// lock that waiters take, it starts the thread once that lock is free.
    struct start_lingering_after {
        start_lingering_after() = default;
        start_lingering_after(const start_lingering_after&) = delete;
        start_lingering_after& operator=(const start_lingering_after&) = delete;
        ~start_lingering_after() { start_lingering(); }
    };
    /// Gives `s` back (its last waiter left): kept a linger for the next
    /// driver that waits, then closed. Closes nothing now, and starts the
    /// thread that closes it later only if none could be started before (a
    /// system call): call it outside the locks that waiters take.
    static void recycle(std::unique_ptr<release_source> s) noexcept;

    release_source(const release_source&) = delete;
    release_source& operator=(const release_source&) = delete;
    ~release_source();

    /// The descriptor to wait on for readability.
    int native_handle() const noexcept;
    /// The eventfd of enable_interrupts() (-1: none).
    int interrupt_handle() const noexcept;

    /// `w` waits for releases of the file `path` names now; `arrival`
    /// orders the waiters (earlier first), a `shared` one is a reader. False
    /// if it cannot be watched (its timer then). `lock` is the lock it waits
    /// for (a release wakes one exclusive waiter of each lock on the file).
    /// With a `turn` (>= 0: a descriptor that becomes readable when the
    /// waiter's predecessor in the cross-process queue leaves, see
    /// process_queue.hpp) it waits for that instead of the file's releases,
    /// and is woken alone (as by a release) when it comes; the caller may
    /// close `turn` at once. Watching again replaces the waiter's watch.
    bool watch(const std::filesystem::path& path, waiter w, std::uint64_t arrival, bool shared,
               const lock_identity& lock = {}, int turn = -1);
    /// `w` stops waiting (nothing if it was not watching).
    void unwatch(waiter w) noexcept;
    /// Reads the pending events: the waiters to wake. Every shared waiter of
    /// a released file and its longest-waiting exclusive one; all of those of
    /// a moved file (and all after lost events), forgotten; the waiter of a
    /// queue turn that came.
    std::vector<wakeup> read();
    /// No waiter left.
    bool idle() const noexcept;

    /// Fork, one rule for every driver: a source made before a fork of which
    /// this process is the child is the parent's instance (its events are
    /// the parent's). The driver wakes the waiters forget_all() returns as
    /// moved (they watch anew, on a source of this process's own) and
    /// destroys it, which closes this process's copies only (those not
    /// closed at the fork).
    bool inherited() const noexcept;
    /// Forgets every waiter and returns them (also for a driver that goes
    /// away with waiters registered); their watches' references go with
    /// them, but in a forked child's copy, whose watches are the parent's.
    std::vector<waiter> forget_all() noexcept;
    /// Closes this process's copies of the descriptors now (for a copy that
    /// cannot be destroyed yet; in a forked child, those not closed at the
    /// fork).
    void abandon() noexcept;

    /// The sync driver's way of reading: an eventfd that ends a wait().
    bool enable_interrupts() noexcept;
    /// Sleeps until events are pending, interrupt() is called, or `until`.
    /// True: events of file watches (no turn's) are pending.
    bool wait(std::chrono::steady_clock::time_point until) noexcept;
    /// `w` is the only waiter, and its file the only one watched: the
    /// pending events are its file's.
    bool sole_waiter(waiter w) const noexcept;
    void interrupt() noexcept;
    void clear_interrupts() noexcept;

private:
    struct impl;
    explicit release_source(std::unique_ptr<impl> i) noexcept;
    void unhold() noexcept;
    std::unique_ptr<impl> impl_;
};

}  // namespace filelock::detail
