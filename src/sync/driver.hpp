// SPDX-License-Identifier: MIT
#pragma once

// The sync driver: runs the acquire state machine on the calling thread (the
// library's lock() and filelock-run). See driver.cpp.

#include <filelock/detail/acquire.hpp>
#include <filelock/detail/local_queue.hpp>
#include <filelock/export.hpp>

#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <system_error>
#include <utility>

namespace filelock::detail {

class release_hub;

/// A sync waiter: its place in local queues and its registration with the
/// release hub. What wakes it sets a flag under its mutex and notifies its
/// condition (or, while it reads the process's release events itself,
/// interrupts its poll).
class FILELOCK_API sync_waiter final : public queue_waiter {
public:
    explicit sync_waiter(bool shared) noexcept : shared_(shared), arrival_(next_arrival()) {}
    ~sync_waiter() override;

    void wake() noexcept override { signal(&sync_waiter::turn_); }

    /// Arms a release watch of `path` for the lock `lock`, or of a queue
    /// `turn` (see release_source::watch), replacing the one armed: whether
    /// events will come.
    bool arm(const std::filesystem::path& path, const lock_identity& lock, int turn = -1);
    /// Drops the watch (after the file moved; and on the way out).
    void disarm() noexcept;

    /// Sleeps until `until`, its turn, or (when `on_release`) a release
    /// event; says why it woke.
    wake_reason wait(clock::time_point until, bool on_release);

    bool shared() const noexcept { return shared_; }
    std::uint64_t arrival() const noexcept { return arrival_; }

private:
    friend class release_hub;
    static std::uint64_t next_arrival() noexcept;
    void signal(bool sync_waiter::*flag) noexcept;
    // With mutex_ held.
    bool ready(bool on_release) const noexcept {
        return turn_ || moved_ || (on_release && release_);
    }

    std::mutex mutex_;
    std::condition_variable cv_;
    bool turn_ = false, release_ = false, moved_ = false;
    bool lead_ = false;     // offered to read the release events
    bool leading_ = false;  // reading them: a signal interrupts its poll
    const bool shared_;
    const std::uint64_t arrival_;
    release_hub* hub_ = nullptr;  // while armed
};

/// The domain of the sync waiters of this process (for local queues).
FILELOCK_API const void* sync_domain() noexcept;

/// The queue turn a backend waits for instead of the file's releases (-1:
/// none).
template <class Backend>
int queue_turn_of(const Backend& b) noexcept {
    if constexpr (requires { b.queue_turn(); })
        return b.queue_turn();
    else
        return -1;
}

/// Runs `acq` to its end on this thread; returns its outcome (the backend
/// holds a won lock).
template <class Backend>
std::error_code run_sync(acquire<Backend>& acq, const std::filesystem::path& path, bool shared) {
    sync_waiter waiter(shared);
    acq.use_queue(&waiter, sync_domain());
    struct leave_first {  // on every way out, the queue forgets the waiter first
        acquire<Backend>& a;
        ~leave_first() { a.drop_queue(); }
    } guard{acq};
    action next = acq.resume({wake_reason::start, clock::now()});
    for (;;) {
        switch (next.what) {
            case action::kind::done: return next.ec;
            case action::kind::watch: {
                lock_identity lock{};
                (void)acq.backend().identity(lock);  // (its backend and range matter here)
                const int turn = queue_turn_of(acq.backend());
                next = acq.resume(
                    {waiter.arm(path, lock, turn) ? wake_reason::watched : wake_reason::unwatched,
                     clock::now()});
                break;
            }
            case action::kind::wait: {
                const wake_reason why = waiter.wait(next.until, next.on_release);
                if (why == wake_reason::moved) waiter.disarm();
                next = acq.resume({why, clock::now()});
                break;
            }
            case action::kind::send:  // the file backend never sends
                return std::make_error_code(std::errc::function_not_supported);
        }
    }
}

}  // namespace filelock::detail
