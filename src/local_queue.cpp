// SPDX-License-Identifier: MIT
#include <filelock/detail/local_queue.hpp>

#include "platform.hpp"

#include <algorithm>
#include <memory>
#include <mutex>
#include <cstdint>
#include <map>
#include <tuple>

namespace filelock::detail {

constexpr std::chrono::microseconds yield_slack{2000};

struct path_queue {
    using clock = std::chrono::steady_clock;

    struct key_type {
        lock_identity id;
        const void* domain;
        bool operator<(const key_type& o) const noexcept {
            const auto d = reinterpret_cast<std::uintptr_t>(domain);
            const auto od = reinterpret_cast<std::uintptr_t>(o.domain);
            return std::tie(id.dev, id.ino, id.backend, id.start, id.length, d) <
                   std::tie(o.id.dev, o.id.ino, o.id.backend, o.id.start, o.id.length, od);
        }
    };
    key_type key;
    queue_waiter* head = nullptr;
    queue_waiter* tail = nullptr;
    // Local holders have been handing the lock on directly since
    // streak_start; `direct`: the head was woken by a local release.
    bool streak = false;
    bool direct = false;
    clock::time_point streak_start{};
    // The streak allowed before a yield; the last yield (0: none pending)
    // and the end of its grace.
    clock::duration share = min_fair_share;
    clock::time_point yielded_at{}, hold_until{};

    static std::mutex mutex;
    // Ordered by identity, then domain: a release wakes the heads of every
    // domain's queue of one lock, a range.
    static std::map<key_type, std::unique_ptr<path_queue>> queues;
    static std::atomic<std::size_t> waiters;
    // Queues left empty are kept, up to max_idle of them, as new ones
    // (reset): a lone waiter's way from its win back to its caller frees
    // nothing, and its next wait allocates nothing.
    static constexpr std::size_t max_idle = 16;
    static std::size_t idle;

    // With the mutex held: `q`, empty now, is kept (reset) or erased.
    static void emptied(path_queue& q) noexcept {
        if (idle < max_idle) {
            ++idle;
            const key_type key = q.key;
            q = path_queue{};
            q.key = key;
        } else {
            queues.erase(queues.find(q.key));
        }
    }

    // With the mutex held.
    void push(queue_waiter& w) {
        w.queue_ = this;
        w.prev_ = tail;
        w.next_ = nullptr;
        (tail ? tail->next_ : head) = &w;
        tail = &w;
        waiters.fetch_add(1, std::memory_order_relaxed);
    }

    // With the mutex held; returns whether the queue is now empty.
    bool unlink(queue_waiter& w) noexcept {
        const bool was_head = head == &w;
        (w.prev_ ? w.prev_->next_ : head) = w.next_;
        (w.next_ ? w.next_->prev_ : tail) = w.prev_;
        w.queue_ = nullptr;
        w.prev_ = w.next_ = nullptr;
        waiters.fetch_sub(1, std::memory_order_relaxed);
        if (was_head) {
            if (yielded_at != clock::time_point{}) {
                // The first head to go after a yield. Won about when the
                // grace ended (timers are coarse: a slack): no other process
                // wanted the lock, so local streaks may run longer. Later:
                // another process took its turn; keep giving it turns often.
                const auto now = clock::now();
                share = now - yielded_at <= yield_grace + yield_slack
                            ? std::min<clock::duration>(2 * share, max_fair_share)
                            : clock::duration(min_fair_share);
                yielded_at = {};
            }
            // A head that got the lock other than from a local holder's hand
            // (or gave up) ends the streak.
            if (!direct) streak = false;
            direct = false;
            if (head) head->wake();  // the next in line attempts now
        }
        return head == nullptr;
    }

    // A holder of this process released: wake the head, unless local
    // holders have kept the lock among themselves for their share already.
    void released() noexcept {
        if (head) released_at(clock::now());
    }

    // (A separate function: g++ 12 at -Os reports a false "dangling pointer
    // to 'now'" when the time is a local of released().)
    void released_at(clock::time_point now) noexcept {
        if (!streak) {
            streak = true;
            streak_start = now;
        } else if (now - streak_start >= share && head->watching.load()) {
            // Yield this one: the head waits out a grace, so that waiters of
            // other processes, woken by the same close event, can take it.
            streak = false;
            yielded_at = now;
            hold_until = now + yield_grace;
            return;
        }
        direct = true;
        head->wake();
    }
};

std::mutex path_queue::mutex;
std::map<path_queue::key_type, std::unique_ptr<path_queue>> path_queue::queues;
std::atomic<std::size_t> path_queue::waiters{0};
std::size_t path_queue::idle = 0;

namespace {

// fork(): the child starts with no queue. Its copies of the parent's waiters
// (whose threads and loops it does not have) belong to an older generation,
// and leave without touching the new registry. The mutex is held across the
// fork, so that the child never inherits it locked by another thread.
unsigned queues_generation = 0;
const bool atfork_registered = [] {
    at_fork([] { path_queue::mutex.lock(); }, [] { path_queue::mutex.unlock(); },
            [] {
                ++queues_generation;
                // The parent's waiters' copies point to their queues, which
                // are leaked (the copies never touch them: another
                // generation); the kept empty ones have none, and are freed.
                for (auto& q : path_queue::queues)
                    if (q.second->head) (void)q.second.release();
                path_queue::queues.clear();
                path_queue::idle = 0;
                path_queue::waiters.store(0);
                path_queue::mutex.unlock();
            });
    return true;
}();

}  // namespace

bool queue_waiter::join(const lock_identity& id, const void* domain) noexcept {
    try {
        const path_queue::key_type key{id, domain};
        std::lock_guard<std::mutex> g(path_queue::mutex);
        (void)atfork_registered;
        auto it = path_queue::queues.find(key);
        if (it == path_queue::queues.end()) {
            auto q = std::make_unique<path_queue>();
            q->key = key;
            it = path_queue::queues.emplace(key, std::move(q)).first;
        } else if (it->second->head == nullptr) {
            --path_queue::idle;  // a kept one
        }
        generation_ = queues_generation;
        it->second->push(*this);
        return it->second->head == this;
    } catch (...) {
        return true;  // out of memory: not queued, the waiter attempts on its own
    }
}

void queue_waiter::leave() noexcept {
    if (!queue_) return;
    std::lock_guard<std::mutex> g(path_queue::mutex);
    if (generation_ != queues_generation) {  // a forked child's copy
        queue_ = nullptr;
        prev_ = next_ = nullptr;
        return;
    }
    path_queue* q = queue_;
    if (q->unlink(*this)) path_queue::emptied(*q);
}

std::chrono::steady_clock::duration queue_waiter::hold_off(
    std::chrono::steady_clock::time_point now) const noexcept {
    std::lock_guard<std::mutex> g(path_queue::mutex);
    if (!queue_ || generation_ != queues_generation || queue_->head != this) return {};
    return queue_->hold_until > now ? queue_->hold_until - now
                                    : std::chrono::steady_clock::duration::zero();
}

bool queue_waiter::joined() const noexcept {
    // queues_generation changes only in a forked child, before any of its
    // threads run: no lock needed.
    return queue_ != nullptr && generation_ == queues_generation;
}

bool queue_waiter::is_head() const noexcept {
    std::lock_guard<std::mutex> g(path_queue::mutex);
    return queue_ && generation_ == queues_generation && queue_->head == this;
}

void local_release(const lock_identity& id) noexcept {
    if (path_queue::waiters.load(std::memory_order_relaxed) == 0) return;
    std::lock_guard<std::mutex> g(path_queue::mutex);
    // Every domain's head: the kernel decides which of them wins.
    for (auto it = path_queue::queues.lower_bound({id, nullptr});
         it != path_queue::queues.end() && it->first.id == id; ++it)
        it->second->released();
}

std::size_t local_waiters() noexcept { return path_queue::waiters.load(); }

}  // namespace filelock::detail
