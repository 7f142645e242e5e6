// SPDX-License-Identifier: MIT
// The sync driver: runs the acquire state machine on the calling thread.
// Between attempts the thread sleeps until the machine's deadline, a release
// event, or its turn in the local queue.
//
// Release events for every sync waiter of the process come from one shared
// source (src/wait/shared_source.hpp: taken at the first wait that watches,
// given back after the last one, closed a linger later): 200 waiting threads
// hold one instance, not 200, and a process that no longer waits holds none.
// What is the driver's own is how it reads it, with no thread of ours: one
// waiting thread at a time (the leader) polls it and wakes the waiters it
// names; the others sleep on condition variables and one of them takes over
// when the leader stops waiting.
#include "driver.hpp"

#include "../wait/shared_source.hpp"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <vector>

namespace filelock::detail {

namespace {

std::atomic<std::uint64_t> arrivals{0};
const char sync_domain_tag = 0;

}  // namespace

// The sync waiters' share of release events, and who reads them.
class release_hub {
public:
    const unsigned generation = fork_generation();

    /// Registers `w` for release events of the file `path` names now (or
    /// of its queue turn), replacing its registration.
    bool listen(sync_waiter& w, const std::filesystem::path& path, const lock_identity& lock,
                int turn) {
        release_source::start_lingering_after start;  // once the mutex is released: a system call
        shared_source::spare spare;                   // recycled once the mutex is released
        std::lock_guard<std::mutex> g(mutex_);
        const bool ok = shared_.watch(path, &w, w.arrival(), w.shared(), lock, turn);
        if (!ok) shared_.give_back_if_idle(leader_ != nullptr, spare);
        std::lock_guard<std::mutex> wg(w.mutex_);
        w.hub_ = ok ? this : nullptr;
        return ok;
    }

    void unlisten(sync_waiter& w) noexcept {
        shared_source::spare spare;
        std::lock_guard<std::mutex> g(mutex_);
        shared_.unwatch(&w);
        drop_follower(w);
        {
            std::lock_guard<std::mutex> wg(w.mutex_);
            w.hub_ = nullptr;
        }
        shared_.give_back_if_idle(leader_ != nullptr, spare);
    }

    /// Makes `w` the reader of the events if nobody reads them; otherwise
    /// it follows (sleeps on its condition until offered the role).
    bool try_lead(sync_waiter& w) {
        std::lock_guard<std::mutex> g(mutex_);
        if (!shared_.held()) return false;  // given back: `w` was forgotten (its file moved)
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
    void interrupt() noexcept { shared_.source().interrupt(); }

    /// `w` stops waiting: no longer a follower.
    void leave(sync_waiter& w) noexcept {
        std::lock_guard<std::mutex> g(mutex_);
        drop_follower(w);
    }

    /// The leader's wait: polls until `until`, wakes whom the events name,
    /// and hands the role to a follower. (The source stays while it leads.)
    void lead(sync_waiter& w, clock::time_point until, bool on_release) {
        shared_.source().clear_interrupts();  // interrupts meant for earlier leaders
        bool go = true;
        bool events = false;
        {
            std::lock_guard<std::mutex> wg(w.mutex_);
            w.lead_ = false;
            go = !w.ready(on_release);
            w.leading_ = go;
        }
        if (go) {
            events = shared_.source().wait(until);
            std::lock_guard<std::mutex> wg(w.mutex_);
            w.leading_ = false;
        }
        shared_source::spare spare;
        std::lock_guard<std::mutex> g(mutex_);
        if (events && on_release && !unread_ && followers_.empty() &&
            shared_.source().sole_waiter(&w)) {
            // `w` alone waits, and its file alone is watched: the events
            // are its file's, a release most likely, so its attempt comes
            // first and the read after. Events left unread end the next
            // poll at once, whose leader reads them (a file that moved is
            // seen one attempt later); a source given back is drained when
            // taken again.
            unread_ = true;
            w.signal(&sync_waiter::release_);
        } else {
            unread_ = false;
            for (const auto& [key, moved] : shared_.read()) {
                auto* x = const_cast<sync_waiter*>(static_cast<const sync_waiter*>(key));
                x->signal(moved ? &sync_waiter::moved_ : &sync_waiter::release_);
            }
        }
        leader_ = nullptr;
        offer();
        shared_.give_back_if_idle(false, spare);
    }

private:
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
    shared_source shared_;
    sync_waiter* leader_ = nullptr;
    std::vector<sync_waiter*> followers_;
    bool unread_ = false;  // a leader attempted before reading the pending events
};

sync_waiter::~sync_waiter() { disarm(); }

bool sync_waiter::arm(const std::filesystem::path& path, const lock_identity& lock, int turn) {
    release_hub* hub = hub_ ? hub_ : of_this_generation<release_hub>();
    return hub && hub->listen(*this, path, lock, turn);
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
