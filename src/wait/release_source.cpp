// SPDX-License-Identifier: MIT
#include <filelock/detail/release_source.hpp>

#include "../platform.hpp"
#include "linger.hpp"
#include "release_registry.hpp"
#include "release_watcher.hpp"

#include <mutex>
#include <utility>

namespace filelock::detail {

struct release_source::impl {
    release_watcher watcher;
    release_registry registry;
    bool held = false;  // counted by linger_hold(), from take() to its giving back
};

namespace {

// The idle source, kept for one linger. Reached only under its mutex, which
// is never held across a call that could fork. A forked child's copies of
// its descriptors are closed at the fork (listed in fork_closed, as every
// source is while no event loop holds it).
struct idle_pool {
    std::mutex mutex;
    std::unique_ptr<release_source> kept;
    std::chrono::steady_clock::time_point until;  // closed then
};
idle_pool& pool() {
    static auto* p = [] {
        auto* made = new idle_pool;  // never destroyed: usable during exit
        // Held across fork(): a child never inherits it locked.
        at_fork([] { pool().mutex.lock(); }, [] { pool().mutex.unlock(); },
                [] { pool().mutex.unlock(); });
        return made;
    }();
    return *p;
}

void reap_idle() {
    std::unique_ptr<release_source> closing;  // closed after the mutex is released
    std::lock_guard<std::mutex> g(pool().mutex);
    if (std::chrono::steady_clock::now() >= pool().until) closing = std::move(pool().kept);
}

}  // namespace

release_source::release_source(std::unique_ptr<impl> i) noexcept : impl_(std::move(i)) {}
release_source::~release_source() { unhold(); }

// Taken for a wait no longer (a forked child's copy was never counted: the
// child starts with nothing held).
void release_source::unhold() noexcept {
    if (impl_ && std::exchange(impl_->held, false) && !inherited()) linger_unhold();
}

std::unique_ptr<release_source> release_source::take(fork_copies copies) {
    std::unique_ptr<release_source> s;
    {
        std::lock_guard<std::mutex> g(pool().mutex);
        s = std::move(pool().kept);
    }
    if (s && !s->inherited()) {
        (void)s->impl_->watcher.drain();  // what was queued concerns nobody now
    } else {
        s.reset();
        auto made = std::make_unique<impl>();  // listed from its creation on
        if (!made->watcher.valid()) return nullptr;
        s.reset(new release_source(std::move(made)));
    }
    if (copies == fork_copies::closed_by_loop) (void)s->impl_->watcher.list_for_fork(false);
    // The thread that will close it after its linger runs from the
    // caller's start_lingering() on: the winner that gives it back starts
    // none.
    s->impl_->held = true;
    linger_hold();
    return s;
}

void release_source::recycle(std::unique_ptr<release_source> s) noexcept {
    if (!s) return;
    // Counted by take() (a forked child's copy never was): no longer held,
    // told to the lingering thread along with the linger to come, if any.
    const bool held = std::exchange(s->impl_->held, false) && !s->inherited();
    // A forked child's copy of its parent's instance is closed, not kept;
    // so is one that still has waiters (a driver that lost track of one):
    // the next driver to take it would be woken with a key it never gave.
    // Kept, it is closed by a forked child at the fork (closed now if it
    // cannot be listed).
    bool kept = !s->inherited() && s->idle() && s->impl_->watcher.list_for_fork(true);
    if (kept) {
        std::lock_guard<std::mutex> g(pool().mutex);
        kept = !pool().kept;  // else closed here, after its last waiter's completion
        if (kept) {
            pool().kept = std::move(s);
            pool().until = std::chrono::steady_clock::now() + idle_linger;
        }
    }
    if (!kept) {
        if (held) linger_unhold();
        return;
    }
    if (!reap_later(reap_idle, held)) {
        std::lock_guard<std::mutex> g(pool().mutex);
        s = std::move(pool().kept);  // closed now
    }
}

void release_source::start_lingering() noexcept { linger_start(); }

int release_source::native_handle() const noexcept { return impl_->watcher.native_handle(); }
int release_source::interrupt_handle() const noexcept { return impl_->watcher.interrupt_handle(); }

static_assert(release_event::turn == release_watcher::turn_base);

bool release_source::watch(const std::filesystem::path& path, waiter w, std::uint64_t arrival,
                           bool shared, const lock_identity& lock, int turn) {
    // Its target changed (a queue turn came, or the waiter became the head):
    // the new watch replaces the one armed.
    const int old = impl_->registry.remove(w);
    if (old != -1) impl_->watcher.remove(old);
    // A waiter whose predecessor has no doorbell waits for the file's
    // releases, as every waiter did before the queue.
    int wd = turn >= 0 ? impl_->watcher.add_turn(turn) : -1;
    // Waiting for a turn: a watch of the file that nobody here needs goes
    // now (kept, its events would still wake this process at each release).
    if (wd != -1 && old != -1 && !release_watcher::is_turn(old)) impl_->watcher.moved(old);
    if (wd == -1) wd = impl_->watcher.add(path);
    if (wd == -1) return false;
    try {
        impl_->registry.add(wd, w, arrival, shared, lock);
    } catch (...) {
        impl_->watcher.remove(wd);
        return false;
    }
    return true;
}

void release_source::unwatch(waiter w) noexcept {
    const int wd = impl_->registry.remove(w);
    if (wd != -1) impl_->watcher.remove(wd);
}

std::vector<release_source::wakeup> release_source::read() {
    const auto events = impl_->watcher.drain();
    std::vector<int> moved;
    auto woken = impl_->registry.dispatch(events, moved);
    for (int wd : moved) impl_->watcher.remove(wd);
    for (const auto& ev : events)
        if (ev.moved) impl_->watcher.moved(ev.wd);
    std::vector<wakeup> out;
    out.reserve(woken.size());
    for (const auto& w : woken) out.push_back({w.waiter, w.moved});
    return out;
}

bool release_source::idle() const noexcept { return impl_->registry.idle(); }

bool release_source::inherited() const noexcept {
    return impl_->watcher.generation() != fork_generation();
}

std::vector<release_source::waiter> release_source::forget_all() noexcept {
    std::vector<int> wds;
    std::vector<waiter> all;
    try {
        all = impl_->registry.clear(wds);
    } catch (...) {
        return {};  // out of memory: it stays registered, so it is never kept idle
    }
    // Their references go with them (a watch nobody references is kept for
    // the next waits, up to a bound). Not in a forked child: the instance
    // is shared with the parent, and removing a watch would remove the
    // parent's.
    if (!inherited())
        for (int wd : wds) impl_->watcher.remove(wd);
    return all;
}

void release_source::abandon() noexcept { impl_->watcher.abandon(); }
bool release_source::enable_interrupts() noexcept { return impl_->watcher.enable_interrupts(); }
bool release_source::wait(std::chrono::steady_clock::time_point until) noexcept {
    return impl_->watcher.wait(until);
}
bool release_source::sole_waiter(waiter w) const noexcept {
    return impl_->registry.sole(w) && impl_->watcher.watches_one();
}
void release_source::interrupt() noexcept { impl_->watcher.interrupt(); }
void release_source::clear_interrupts() noexcept { impl_->watcher.clear_interrupts(); }

}  // namespace filelock::detail
