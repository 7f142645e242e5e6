// SPDX-License-Identifier: MIT
// The sync driver: runs the acquire state machine on the calling thread.
// Between attempts the thread sleeps until the machine's deadline, a release
// event, or its turn in the local queue.
//
// Release events for every sync waiter of the process come from one
// release_watcher (on Linux an inotify instance and an eventfd), taken at the first wait that
// watches and closed a short linger after the last one: a thread that waited keeps no descriptor,
// 200 waiting threads hold one instance, not 200, and a process that no longer waits holds none. No
// thread of ours reads it: one waiting thread at a time (the leader) polls it and hands each event
// to the waiters it concerns; the others sleep on condition variables and one of them takes over
// when the leader stops waiting.
#include "sync_driver.hpp"

#include <filelock/detail/file_backend.hpp>
#include <filelock/detail/release_watcher.hpp>
#include <filelock/lock_file.hpp>

#include "platform.hpp"
#include "wait/linger.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <list>
#include <map>
#include <mutex>
#include <new>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace filelock::detail {

namespace {

// One per process (and per fork generation: a forked child makes its own).
// Created by the first sync wait that watches; never destroyed.
std::mutex hub_create_mutex;
std::atomic<release_hub*> current_hub{nullptr};
const bool hub_atfork = [] {
    at_fork([] { hub_create_mutex.lock(); }, [] { hub_create_mutex.unlock(); },
            [] { hub_create_mutex.unlock(); });
    return true;
}();

std::atomic<std::uint64_t> arrivals{0};
const char sync_domain_tag = 0;

}  // namespace

class release_hub {
public:
    /// The process's hub, or nullptr when out of memory.
    static release_hub* get() {
        (void)hub_atfork;
        release_hub* h = current_hub.load(std::memory_order_acquire);
        if (h && h->generation_ == fork_generation()) return h;
        std::lock_guard<std::mutex> g(hub_create_mutex);
        h = current_hub.load(std::memory_order_relaxed);
        if (!h || h->generation_ != fork_generation()) {
            // A forked child's copy of its parent's hub: left alone (its
            // mutex may be locked forever), its descriptors closed.
            if (h) h->close_copies();
            h = new (std::nothrow) release_hub;
            if (!h) return nullptr;
            current_hub.store(h, std::memory_order_release);
        }
        return h;
    }

    /// Registers `w` for release events of the file `path` names now.
    bool listen(sync_waiter& w, const std::filesystem::path& path) {
        std::lock_guard<std::mutex> g(mutex_);
        if (!watcher_) {
            auto made = release_watcher::take();
            if (!made->valid() || !made->enable_interrupts()) return false;
            watcher_ = std::move(made);
        }
        const int wd = cached_watch(path);
        if (wd < 0) return false;
        listeners_.emplace(wd, &w);
        std::lock_guard<std::mutex> wg(w.mutex_);
        w.wd_ = wd;
        w.hub_ = this;
        return true;
    }

    void unlisten(sync_waiter& w) noexcept {
        std::lock_guard<std::mutex> g(mutex_);
        auto [b, e] = listeners_.equal_range(w.wd_);
        for (auto it = b; it != e; ++it)
            if (it->second == &w) {
                listeners_.erase(it);
                break;
            }
        drop_follower(w);
        {
            std::lock_guard<std::mutex> wg(w.mutex_);
            w.wd_ = -1;
            w.hub_ = nullptr;
        }
        // The last waiter: the instance stays for back-to-back waits, and is
        // closed after the linger (nobody polls it now: a leader listens).
        if (listeners_.empty()) {
            idle_until_ = clock::now() + idle_linger;
            if (!reap_later(reap)) close_idle();
        }
    }

    /// Makes `w` the reader of the events if nobody reads them; otherwise
    /// it follows (sleeps on its condition until offered the role).
    bool try_lead(sync_waiter& w) {
        std::lock_guard<std::mutex> g(mutex_);
        if (leader_ && leader_ != &w) {
            if (std::find(followers_.begin(), followers_.end(), &w) == followers_.end())
                followers_.push_back(&w);
            return false;
        }
        leader_ = &w;
        drop_follower(w);
        return true;
    }

    /// Ends the leader's poll now.
    void interrupt() noexcept { watcher_->interrupt(); }

    /// `w` stops waiting: no longer a follower.
    void leave(sync_waiter& w) noexcept {
        std::lock_guard<std::mutex> g(mutex_);
        drop_follower(w);
    }

    /// The leader's wait: polls the instance (and the interrupt) until
    /// `until`, dispatches what came to every listener, and hands the role
    /// to a follower.
    void lead(sync_waiter& w, clock::time_point until, bool on_release) {
        watcher_->clear_interrupts();  // interrupts meant for earlier leaders
        bool go = true;
        {
            std::lock_guard<std::mutex> wg(w.mutex_);
            w.lead_ = false;
            if (w.ready(on_release))
                go = false;
            else
                w.leading_ = true;
        }
        if (go) {
            watcher_->wait(until);
            std::lock_guard<std::mutex> wg(w.mutex_);
            w.leading_ = false;
        }
        std::lock_guard<std::mutex> g(mutex_);
        dispatch();
        leader_ = nullptr;
        offer();
    }

private:
    // Watches kept for the next waits of a path (adding one is a syscall on
    // the way to each wait): at most this many, the oldest dropped first.
    static constexpr std::size_t max_cached = 8;

    release_hub() noexcept = default;

    void close_copies() noexcept {
        if (watcher_) watcher_->abandon();
    }

    // The lingering thread: closes the instance if it stayed idle.
    static void reap() {
        release_hub* h = current_hub.load(std::memory_order_acquire);
        if (!h || h->generation_ != fork_generation()) return;
        std::unique_ptr<release_watcher> closing;  // closed after the mutex is released
        std::lock_guard<std::mutex> g(h->mutex_);
        if (h->watcher_ && h->listeners_.empty() && clock::now() >= h->idle_until_) {
            h->cache_.clear();
            closing = std::move(h->watcher_);
        }
    }

    // With the mutex held, nobody listening: gives the instance back (its
    // watches go with it).
    void close_idle() noexcept {
        cache_.clear();
        watcher_.reset();
    }

    // With the mutex held.
    void drop_follower(sync_waiter& w) noexcept {
        if (leader_ == &w) {
            leader_ = nullptr;
            offer();
        }
        auto it = std::find(followers_.begin(), followers_.end(), &w);
        if (it != followers_.end()) followers_.erase(it);
    }

    // With the mutex held: somebody must go on reading while followers wait.
    void offer() noexcept {
        if (!leader_ && !followers_.empty()) followers_.front()->signal(&sync_waiter::lead_);
    }

    // With the mutex held.
    int cached_watch(const std::filesystem::path& path) {
        for (auto it = cache_.begin(); it != cache_.end(); ++it)
            if (it->first == path) return it->second;
        const int wd = watcher_->add(path);
        if (wd < 0) return -1;
        if (cache_.size() == max_cached) {
            watcher_->remove(cache_.back().second);
            cache_.pop_back();
        }
        cache_.emplace_front(path, wd);
        return wd;
    }

    // With the mutex held: the watch is gone or names a dead file (`all`:
    // events were lost, every watch may be stale).
    void forget(int wd) {
        for (auto it = cache_.begin(); it != cache_.end();) {
            if (wd != release_watcher::all && it->second != wd) {
                ++it;
                continue;
            }
            watcher_->remove(it->second);
            it = cache_.erase(it);
        }
    }

    // With the mutex held: the pending events, to their listeners.
    void dispatch() {
        try {
            for (const auto& ev : watcher_->drain()) {
                std::vector<sync_waiter*> on;
                for (auto it = ev.wd == release_watcher::all ? listeners_.begin()
                                                             : listeners_.lower_bound(ev.wd);
                     it != listeners_.end() &&
                     (ev.wd == release_watcher::all || it->first == ev.wd);
                     ++it)
                    on.push_back(it->second);
                if (ev.moved) forget(ev.wd);
                wake_release_waiters(
                    on, ev.moved, [](sync_waiter* x) { return x->arrival(); },
                    [](sync_waiter* x) { return x->shared(); },
                    [&](sync_waiter* x) {
                        x->signal(ev.moved ? &sync_waiter::moved_ : &sync_waiter::release_);
                    });
            }
        } catch (...) {
            // Out of memory: the waiters go on at their timers.
        }
    }

    std::mutex mutex_;
    std::unique_ptr<release_watcher> watcher_;  // while waited on, and for the linger
    clock::time_point idle_until_;              // the linger's end
    std::multimap<int, sync_waiter*> listeners_;
    std::list<std::pair<std::filesystem::path, int>> cache_;
    sync_waiter* leader_ = nullptr;
    std::vector<sync_waiter*> followers_;
    unsigned generation_ = fork_generation();
};

sync_waiter::~sync_waiter() { disarm(); }

bool sync_waiter::arm(const std::filesystem::path& path) {
    if (hub_) return true;
    release_hub* hub = release_hub::get();
    return hub && hub->listen(*this, path);
}

void sync_waiter::disarm() noexcept {
    if (hub_) hub_->unlisten(*this);
}

void sync_waiter::signal(bool sync_waiter::*flag) noexcept {
    std::lock_guard<std::mutex> g(mutex_);
    this->*flag = true;
    cv_.notify_one();
    if (leading_) hub_->interrupt();
}

wake_reason sync_waiter::wait(clock::time_point until, bool on_release) {
    // An armed waiter reads the process's release events itself when nobody
    // else does (no thread in between: the event wakes the waiter); the
    // others sleep on their condition until signalled, or offered the role.
    for (;;) {
        if (hub_ && hub_->try_lead(*this)) {
            hub_->lead(*this, until, on_release);
        } else {
            std::unique_lock<std::mutex> lk(mutex_);
            const auto woken = [&] { return ready(on_release) || lead_; };
            if (until == clock::time_point::max())
                cv_.wait(lk, woken);
            else
                cv_.wait_until(lk, until, woken);
            lead_ = false;
        }
        std::unique_lock<std::mutex> lk(mutex_);
        if (ready(on_release) || clock::now() >= until) break;
    }
    if (hub_) hub_->leave(*this);
    std::lock_guard<std::mutex> lk(mutex_);
    if (std::exchange(moved_, false)) return release_ = false, wake_reason::moved;
    if (std::exchange(turn_, false)) return wake_reason::turn;
    // A release event not asked for (a hold-off) is stale at the attempt.
    if (std::exchange(release_, false) && on_release) return wake_reason::release;
    return wake_reason::timer;
}

const void* sync_domain() noexcept { return &sync_domain_tag; }
std::uint64_t sync_waiter::next_arrival() noexcept {
    return arrivals.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace filelock::detail

namespace filelock {
namespace {

lock_file lock_impl(const std::filesystem::path& path, std::chrono::nanoseconds timeout,
                    const lock_options& options, std::error_code& ec, bool throwing) {
    detail::file_acquire acq(detail::file_backend(path, options), timeout, options.backoff,
                             detail::random_seed());
    ec = detail::run_sync(acq, path, options.mode == lock_mode::shared);
    if (!ec) return detail::adopt(acq.backend().take());
    if (throwing)
        detail::throw_error(ec, path, ec == errc::timeout ? acq.backend().holder() : std::string(),
                            acq.backend().failed_call());
    return {};
}

}  // namespace

lock_file detail::lock_timed(const std::filesystem::path& path, std::chrono::nanoseconds timeout,
                             const lock_options& options) {
    std::error_code ec;
    return lock_impl(path, timeout, options, ec, true);
}

lock_file detail::lock_timed(const std::filesystem::path& path, std::chrono::nanoseconds timeout,
                             const lock_options& options, std::error_code& ec) noexcept {
    try {
        return lock_impl(path, timeout, options, ec, false);
    } catch (const std::bad_alloc&) {
        ec = std::make_error_code(std::errc::not_enough_memory);
        return {};
    }
}

}  // namespace filelock
