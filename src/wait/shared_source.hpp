// SPDX-License-Identifier: MIT
#pragma once

// The release source that the threads of a process share (the sync
// waiters'): taken at the first watch, given back once nobody watches it and
// nobody reads it, and closed by a forked child at the fork, from its
// creation on (release_source::fork_copies::closed_at_fork): the child's
// next wait may come after it reused the descriptors' numbers for files of
// its own. The sync driver keeps only its way of reading it (one waiting
// thread polls, the others sleep). Not thread-safe: its owner serialises
// the calls under its mutex, and lets go of what give_back() hands over
// once that mutex is released (recycling may start the linger thread, a
// system call that a waiter's lock must not wait for).

#include <filelock/detail/release_source.hpp>

#include "../platform.hpp"

#include <atomic>
#include <filesystem>
#include <memory>
#include <mutex>
#include <new>
#include <vector>

namespace filelock::detail {

class shared_source {
public:
    using waiter = release_source::waiter;

    /// A source given back: recycled when this goes out of scope. Declared
    /// before the owner's lock, it is recycled after the lock is released.
    class spare {
    public:
        spare() = default;
        spare(const spare&) = delete;
        spare& operator=(const spare&) = delete;
        ~spare() { release_source::recycle(std::move(s_)); }

    private:
        friend class shared_source;
        std::unique_ptr<release_source> s_;
    };

    /// The one of this process (one at a time: a forked child's replaces
    /// its parent's, which it never touches).
    shared_source() noexcept;
    shared_source(const shared_source&) = delete;
    shared_source& operator=(const shared_source&) = delete;

    /// `w` waits for releases of the file `path` names now (see
    /// release_source::watch); the source is taken at the first watch. False:
    /// `w` relies on its timer.
    bool watch(const std::filesystem::path& path, waiter w, std::uint64_t arrival, bool shared,
               const lock_identity& lock, int turn = -1);
    /// `w` stops waiting (nothing if it was forgotten: its file moved).
    void unwatch(waiter w) noexcept;
    /// A source is held (none: every waiter was forgotten and it went back).
    bool held() const noexcept { return source_ != nullptr; }
    /// The source, while held() (its reader's wait() and interrupts).
    release_source& source() noexcept { return *source_; }
    /// Reads the events: the waiters to wake.
    std::vector<release_source::wakeup> read() noexcept;
    /// Nobody waits and nobody reads (`reading`: a waiter reads it, although
    /// the registry may have forgotten every waiter): the source goes to
    /// `out`, to be recycled.
    void give_back_if_idle(bool reading, spare& out) noexcept;

private:
    std::unique_ptr<release_source> source_;
};

/// The process's `T` for this fork generation, made at the first call in
/// each (nullptr: out of memory) and never destroyed: a forked child makes
/// its own and never touches its parent's, whose mutexes may be held by
/// threads the child does not have. `T` has `const unsigned generation`;
/// its constructor runs under a mutex that a prepare handler of fork()
/// locks, so it never registers fork handlers (at_fork()).
template <class T>
T* of_this_generation() noexcept {
    static std::mutex create;
    static std::atomic<T*> current{nullptr};
    static const bool registered = [] {  // a child never inherits it locked
        at_fork([] { create.lock(); }, [] { create.unlock(); }, [] { create.unlock(); });
        return true;
    }();
    (void)registered;
    T* t = current.load(std::memory_order_acquire);
    if (t && t->generation == fork_generation()) return t;
    std::lock_guard<std::mutex> g(create);
    t = current.load(std::memory_order_relaxed);
    if (!t || t->generation != fork_generation()) {
        t = new (std::nothrow) T;
        current.store(t, std::memory_order_release);
    }
    return t;
}

}  // namespace filelock::detail
