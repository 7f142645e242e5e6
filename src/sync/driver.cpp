// SPDX-License-Identifier: MIT
// The sync driver: runs the acquire state machine on the calling thread.
// Between attempts the thread sleeps until the machine's deadline, a release
// event, or its turn in the local queue.
//
// Release events for every sync waiter of the process come from one
// release_source (on Linux an inotify instance and an eventfd), taken at the first wait that
// watches and given back after the last one (closed a linger later): a thread that waited keeps
// no descriptor, 200 waiting threads hold one instance, not 200, and a process that no longer
// waits holds none. No thread of ours reads it: one waiting thread at a time (the leader) polls
// it and wakes the waiters it names; the others sleep on condition variables and one of them
// takes over when the leader stops waiting.
#include "driver.hpp"

#include <filelock/detail/release_source.hpp>

#include "../platform.hpp"

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <new>
#include <vector>

namespace filelock::detail {

namespace {

std::atomic<std::uint64_t> arrivals{0};
const char sync_domain_tag = 0;

}  // namespace

// The sync waiters' share of release events: one per process and fork
// generation (a forked child makes its own, and leaves the parent's alone:
// its mutex may be held forever). Never destroyed.
class release_hub {
public:
    static release_hub* get() {
        static std::mutex create_mutex;
        static std::atomic<release_hub*> current{nullptr};
        static const bool registered = [] {  // a child never inherits it locked
            at_fork([] { create_mutex.lock(); }, [] { create_mutex.unlock(); },
                    [] {
                        if (release_hub* h = current.load(std::memory_order_relaxed))
                            h->close_inherited();
                        create_mutex.unlock();
                    });
            return true;
        }();
        (void)registered;
        release_hub* h = current.load(std::memory_order_acquire);
        if (h && h->generation_ == fork_generation()) return h;
        std::lock_guard<std::mutex> g(create_mutex);
        h = current.load(std::memory_order_relaxed);
        if (!h || h->generation_ != fork_generation()) {
            h = new (std::nothrow) release_hub;
            current.store(h, std::memory_order_release);
        }
        return h;
    }

    /// Registers `w` for release events of the file `path` names now.
    bool listen(sync_waiter& w, const std::filesystem::path& path, const lock_identity& lock) {
        std::lock_guard<std::mutex> g(mutex_);
        if (!source_) source_ = release_source::take();
        if (!source_ || !source_->enable_interrupts() ||
            !source_->watch(path, &w, w.arrival(), w.shared(), lock)) {
            give_back_if_idle();
            return false;
        }
        inherited_[0].store(source_->native_handle(), std::memory_order_relaxed);
        inherited_[1].store(source_->interrupt_handle(), std::memory_order_relaxed);
        std::lock_guard<std::mutex> wg(w.mutex_);
        w.hub_ = this;
        return true;
    }

    void unlisten(sync_waiter& w) noexcept {
        std::lock_guard<std::mutex> g(mutex_);
        // (Gone when a moved file had made the registry forget every waiter.)
        if (source_) source_->unwatch(&w);
        drop_follower(w);
        {
            std::lock_guard<std::mutex> wg(w.mutex_);
            w.hub_ = nullptr;
        }
        give_back_if_idle();
    }

    /// Makes `w` the reader of the events if nobody reads them; otherwise
    /// it follows (sleeps on its condition until offered the role).
    bool try_lead(sync_waiter& w) {
        std::lock_guard<std::mutex> g(mutex_);
        if (!source_) return false;  // given back: `w` was forgotten (its file moved)
        if (leader_ && leader_ != &w) {
            if (std::find(followers_.begin(), followers_.end(), &w) == followers_.end())
                followers_.push_back(&w);
            return false;
        }
        leader_ = &w;
        std::erase(followers_, &w);
        return true;
    }

    /// Ends the leader's poll now.
    void interrupt() noexcept { source_->interrupt(); }

    /// `w` stops waiting: no longer a follower.
    void leave(sync_waiter& w) noexcept {
        std::lock_guard<std::mutex> g(mutex_);
        drop_follower(w);
    }

    /// The leader's wait: polls until `until`, wakes whom the events name,
    /// and hands the role to a follower.
    void lead(sync_waiter& w, clock::time_point until, bool on_release) {
        source_->clear_interrupts();  // interrupts meant for earlier leaders
        bool go = true;
        {
            std::lock_guard<std::mutex> wg(w.mutex_);
            w.lead_ = false;
            go = !w.ready(on_release);
            w.leading_ = go;
        }
        if (go) {
            source_->wait(until);
            std::lock_guard<std::mutex> wg(w.mutex_);
            w.leading_ = false;
        }
        std::lock_guard<std::mutex> g(mutex_);
        try {
            for (const auto& [key, moved] : source_->read()) {
                auto* x = const_cast<sync_waiter*>(static_cast<const sync_waiter*>(key));
                x->signal(moved ? &sync_waiter::moved_ : &sync_waiter::release_);
            }
        } catch (...) {
            // Out of memory: the waiters go on at their timers.
        }
        leader_ = nullptr;
        offer();
        give_back_if_idle();
    }

private:
    // With the mutex held. Never while a leader uses it (it may lead
    // although the registry forgot it: its file moved). Costs no system
    // call: this is on the way out of the last waiter's lock().
    void give_back_if_idle() noexcept {
        if (!source_ || !source_->idle() || leader_) return;
        // Forgotten first: a child forked from here on never closes them.
        for (auto& fd : inherited_) fd.store(-1, std::memory_order_relaxed);
        release_source::recycle(std::move(source_));
    }

    // In a forked child, at once: its copies of the parent's descriptors are
    // closed before the child can reuse their numbers for files of its own
    // (closed at its next lock(), they were the child's files). Atomics:
    // another thread of the parent may have been changing source_.
    void close_inherited() noexcept {
        for (auto& fd : inherited_) release_source::close_copy(fd.exchange(-1));
    }

    // With the mutex held. The role goes on to the next follower: also when
    // `w` was the one offered it (woken by the same events as the leader,
    // it leaves without reading).
    void drop_follower(sync_waiter& w) noexcept {
        if (leader_ == &w) leader_ = nullptr;
        auto it = std::find(followers_.begin(), followers_.end(), &w);
        if (it != followers_.end()) followers_.erase(it);
        offer();
    }

    // With the mutex held: somebody must go on reading while followers wait.
    void offer() noexcept {
        if (!leader_ && !followers_.empty()) followers_.front()->signal(&sync_waiter::lead_);
    }

    std::mutex mutex_;
    std::unique_ptr<release_source> source_;  // while a waiter listens
    sync_waiter* leader_ = nullptr;
    std::vector<sync_waiter*> followers_;
    unsigned generation_ = fork_generation();
    std::atomic<int> inherited_[2] = {-1, -1};  // source_'s descriptors, for a forked child
};

sync_waiter::~sync_waiter() { disarm(); }

bool sync_waiter::arm(const std::filesystem::path& path, const lock_identity& lock) {
    if (hub_) return true;
    release_hub* hub = release_hub::get();
    return hub && hub->listen(*this, path, lock);
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
