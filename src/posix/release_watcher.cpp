// SPDX-License-Identifier: MIT
#include <filelock/detail/release_watcher.hpp>

// Linux's release events (inotify); meson builds src/no_release_watcher.cpp
// instead where there is no inotify.
#include "../wait/linger.hpp"
#include "sys.hpp"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <mutex>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>

namespace filelock::detail {

namespace {
constexpr std::uint32_t watch_mask =
    IN_CLOSE_WRITE | IN_CLOSE_NOWRITE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ATTRIB;

// The idle instance, kept for one linger. Reached only under its mutex,
// which is never held across a call that could fork.
struct idle_pool {
    std::mutex mutex;
    std::unique_ptr<release_watcher> kept;
    std::chrono::steady_clock::time_point until;  // closed then
};
idle_pool& pool() {
    static auto* p = [] {
        auto* made = new idle_pool;  // never destroyed: usable during exit
        // Held across fork(): a child never inherits it locked. A child's
        // copy of the idle instance is closed at once (it would keep the
        // parent's instance alive for the child's life).
        at_fork([] { pool().mutex.lock(); }, [] { pool().mutex.unlock(); },
                [] {
                    if (pool().kept) pool().kept->abandon();
                    pool().mutex.unlock();
                });
        return made;
    }();
    return *p;
}

void reap_idle() {
    std::unique_ptr<release_watcher> closing;
    {
        std::lock_guard<std::mutex> g(pool().mutex);
        if (std::chrono::steady_clock::now() >= pool().until) closing = std::move(pool().kept);
    }
}
}  // namespace

release_watcher::release_watcher() noexcept
    : fd_(sys().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)), generation_(fork_generation()) {}

release_watcher::~release_watcher() {
    if (fd_ >= 0) sys().close(fd_);
    if (efd_ >= 0) sys().close(efd_);
}

bool release_watcher::enable_interrupts() noexcept {
    if (efd_ < 0) efd_ = sys().eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return efd_ >= 0;
}

void release_watcher::wait(std::chrono::steady_clock::time_point until) noexcept {
    ::pollfd pfds[2] = {{fd_, POLLIN, 0}, {efd_, POLLIN, 0}};
    ::timespec ts{};
    const ::timespec* timeout = nullptr;
    if (until != std::chrono::steady_clock::time_point::max()) {
        const auto left = std::max(until - std::chrono::steady_clock::now(),
                                   std::chrono::steady_clock::duration::zero());
        const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
        ts = {static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
        timeout = &ts;
    }
    (void)sys().ppoll(pfds, efd_ >= 0 ? 2 : 1, timeout, nullptr);
}

void release_watcher::interrupt() noexcept {
    const std::uint64_t one = 1;
    if (efd_ >= 0) (void)!sys().write(efd_, &one, sizeof one);
}

void release_watcher::clear_interrupts() noexcept {
    std::uint64_t stale;
    if (efd_ >= 0) (void)!sys().read(efd_, &stale, sizeof stale);
}

void release_watcher::abandon() noexcept {
    if (fd_ >= 0) sys().close(fd_);
    if (efd_ >= 0) sys().close(efd_);
    fd_ = efd_ = -1;
}

int release_watcher::add(const std::filesystem::path& path) noexcept {
    if (fd_ < 0) return -1;
    const int wd = sys().inotify_add_watch(fd_, path.c_str(), watch_mask);
    if (wd < 0) return -1;
    try {
        ++refs_[wd];
    } catch (...) {
        return -1;
    }
    return wd;
}

void release_watcher::remove(int wd) noexcept {
    auto it = refs_.find(wd);
    if (it == refs_.end()) return;  // the kernel already dropped it (IN_IGNORED)
    if (--it->second == 0) {
        sys().inotify_rm_watch(fd_, wd);
        refs_.erase(it);
    }
}

std::vector<release_watcher::event> release_watcher::drain() {
    std::vector<event> woken;
    alignas(inotify_event) char buf[4096];
    for (;;) {
        const ssize_t n = sys().read(fd_, buf, sizeof buf);
        if (n <= 0) break;  // EAGAIN: drained
        for (ssize_t off = 0; off + static_cast<ssize_t>(sizeof(inotify_event)) <= n;) {
            const auto* ev = reinterpret_cast<const inotify_event*>(buf + off);
            off += static_cast<ssize_t>(sizeof(inotify_event) + ev->len);
            if (ev->mask & IN_Q_OVERFLOW) {
                // Events were lost: a watched file may have been replaced
                // unseen. Every waiter looks again and watches anew.
                woken.clear();
                woken.push_back({all, true});
                continue;
            }
            if (ev->mask & IN_IGNORED) refs_.erase(ev->wd);  // the inode is gone
            const bool moved = ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_ATTRIB | IN_IGNORED);
            event* seen = nullptr;
            for (auto& w : woken)
                if (w.wd == ev->wd || w.wd == all) seen = &w;
            if (seen)
                seen->moved |= moved;
            else
                woken.push_back({ev->wd, moved});
        }
        // A read that did not fill the buffer took everything queued.
        if (static_cast<std::size_t>(n) + sizeof(inotify_event) + NAME_MAX + 1 <= sizeof buf) break;
    }
    return woken;
}

std::unique_ptr<release_watcher> release_watcher::take() {
    std::unique_ptr<release_watcher> w;
    {
        std::lock_guard<std::mutex> g(pool().mutex);
        w = std::move(pool().kept);
    }
    // A forked child's copy of its parent's instance would read the parent's
    // events: it makes its own.
    if (w && w->generation_ == fork_generation()) return w;
    return std::make_unique<release_watcher>();
}

void release_watcher::recycle(std::unique_ptr<release_watcher> w) noexcept {
    // A forked child's copy of its parent's instance is closed, not kept.
    if (!w || !w->valid() || w->generation_ != fork_generation()) return;
    for (auto& [wd, refs] : w->refs_) sys().inotify_rm_watch(w->fd_, wd);
    w->refs_.clear();
    try {
        (void)w->drain();  // what was queued concerns nobody now
    } catch (...) {
    }
    {
        std::lock_guard<std::mutex> g(pool().mutex);
        if (pool().kept) return;  // closed here, after its last waiter's completion
        pool().kept = std::move(w);
        pool().until = std::chrono::steady_clock::now() + idle_linger;
    }
    if (!reap_later(reap_idle)) {
        std::lock_guard<std::mutex> g(pool().mutex);
        w = std::move(pool().kept);  // closed now
    }
}

}  // namespace filelock::detail
