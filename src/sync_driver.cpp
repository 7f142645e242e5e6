// SPDX-License-Identifier: MIT
// The sync driver: runs the acquire state machine on the calling thread.
// Between attempts the thread sleeps on a condition variable until the
// machine's deadline, a release event, or its turn in the local queue.
//
// Release events for every sync waiter of the process come from one inotify
// instance, read by one thread (the release hub), created at the first wait
// that watches and kept for the process's life: a thread that waited keeps
// no descriptor, and 200 waiting threads hold one instance, not 200.
#include "sync_driver.hpp"

#include <filelock/detail/file_backend.hpp>
#include <filelock/detail/release_watcher.hpp>
#include <filelock/lock_file.hpp>

#include "sys.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <list>
#include <map>
#include <mutex>
#include <new>
#include <pthread.h>
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
    ::pthread_atfork([] { hub_create_mutex.lock(); }, [] { hub_create_mutex.unlock(); },
                     [] { hub_create_mutex.unlock(); });
    return true;
}();

std::atomic<std::uint64_t> arrivals{0};
const char sync_domain_tag = 0;

}  // namespace

class release_hub {
public:
    /// The process's hub, or nullptr when release events are unavailable.
    static release_hub* get() {
        (void)hub_atfork;
        release_hub* h = current_hub.load(std::memory_order_acquire);
        if (h && h->generation_ == fork_generation()) return h->valid_ ? h : nullptr;
        std::lock_guard<std::mutex> g(hub_create_mutex);
        h = current_hub.load(std::memory_order_relaxed);
        if (!h || h->generation_ != fork_generation()) {
            // A forked child's copy of its parent's hub has no thread: left
            // alone (its mutex may be locked forever), its descriptor closed.
            if (h && h->watcher_.valid()) sys().close(h->watcher_.native_handle());
            h = new (std::nothrow) release_hub;
            if (!h) return nullptr;
            h->start();
            current_hub.store(h, std::memory_order_release);
        }
        return h->valid_ ? h : nullptr;
    }

    /// Registers `w` for release events of the file `path` names now.
    bool listen(sync_waiter& w, const std::filesystem::path& path) {
        std::lock_guard<std::mutex> g(mutex_);
        const int wd = cached_watch(path);
        if (wd < 0) return false;
        listeners_.emplace(wd, &w);
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
        w.wd_ = -1;
        w.hub_ = nullptr;
    }

private:
    // Watches kept for the next waits of a path (adding one is a syscall on
    // the way to each wait): at most this many, the oldest dropped first.
    static constexpr std::size_t max_cached = 8;

    void start() {
        valid_ = watcher_.valid();
        if (!valid_) return;
        try {
            std::thread([this] { run(); }).detach();
        } catch (...) {
            valid_ = false;  // no thread: the backoff alone
        }
    }

    // With the mutex held.
    int cached_watch(const std::filesystem::path& path) {
        for (auto it = cache_.begin(); it != cache_.end(); ++it)
            if (it->first == path) return it->second;
        const int wd = watcher_.add(path);
        if (wd < 0) return -1;
        if (cache_.size() == max_cached) {
            watcher_.remove(cache_.back().second);
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
            watcher_.remove(it->second);
            it = cache_.erase(it);
        }
    }

    void run() {
        for (;;) {
            ::pollfd p{watcher_.native_handle(), POLLIN, 0};
            const int rc = sys().poll(&p, 1, -1);
            if (generation_ != fork_generation()) return;  // never: a child has no copy of us
            if (rc < 0 && errno != EINTR) {
                std::this_thread::sleep_for(std::chrono::milliseconds(10));
                continue;
            }
            std::lock_guard<std::mutex> g(mutex_);
            for (const auto& ev : watcher_.drain()) {
                std::vector<sync_waiter*> on;
                for (auto it = ev.wd == release_watcher::all ? listeners_.begin()
                                                             : listeners_.lower_bound(ev.wd);
                     it != listeners_.end() &&
                     (ev.wd == release_watcher::all || it->first == ev.wd);
                     ++it)
                    on.push_back(it->second);
                if (ev.moved) forget(ev.wd);
                wake_release_waiters(
                    on, ev.moved, [](sync_waiter* w) { return w->arrival(); },
                    [](sync_waiter* w) { return w->shared(); },
                    [&](sync_waiter* w) {
                        w->signal(ev.moved ? &sync_waiter::moved_ : &sync_waiter::release_);
                    });
            }
        }
    }

    std::mutex mutex_;
    release_watcher watcher_;
    std::multimap<int, sync_waiter*> listeners_;
    std::list<std::pair<std::filesystem::path, int>> cache_;
    unsigned generation_ = fork_generation();
    bool valid_ = false;
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
