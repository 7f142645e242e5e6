// SPDX-License-Identifier: MIT
#include "../release_watcher.hpp"

// Linux's release events (inotify); meson builds src/wait/none.cpp instead
// where there is no inotify.
#include "../../posix/sys.hpp"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>

namespace filelock::detail {

namespace {
constexpr std::uint32_t watch_mask =
    IN_CLOSE_WRITE | IN_CLOSE_NOWRITE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ATTRIB;
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

void release_watcher::close_copy(int fd) noexcept {
    if (fd >= 0) sys().close(fd);
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
        if (++refs_[wd] == 1) std::erase(unreferenced_, wd);
    } catch (...) {
        return -1;
    }
    return wd;
}

void release_watcher::remove(int wd) noexcept {
    auto it = refs_.find(wd);
    if (it == refs_.end() || --it->second > 0) return;  // or the kernel dropped it (IN_IGNORED)
    // Kept for the next waits on the path, which find it without a new
    // watch; the oldest goes first.
    try {
        unreferenced_.push_back(wd);
    } catch (...) {
        sys().inotify_rm_watch(fd_, wd);
        refs_.erase(it);
        return;
    }
    if (unreferenced_.size() > max_unreferenced) {
        const int oldest = unreferenced_.front();
        unreferenced_.pop_front();
        sys().inotify_rm_watch(fd_, oldest);
        refs_.erase(oldest);
    }
}

void release_watcher::moved(int wd) noexcept {
    if (wd == all) {
        while (!unreferenced_.empty()) moved(unreferenced_.front());
        return;
    }
    auto it = refs_.find(wd);
    if (it == refs_.end() || it->second > 0) return;
    std::erase(unreferenced_, wd);
    sys().inotify_rm_watch(fd_, wd);
    refs_.erase(it);
}

std::vector<release_event> release_watcher::drain() {
    std::vector<release_event> woken;
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
            if (ev->mask & IN_IGNORED) {  // the inode is gone, and the watch with it
                refs_.erase(ev->wd);
                std::erase(unreferenced_, ev->wd);
            }
            const bool moved = ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_ATTRIB | IN_IGNORED);
            release_event* seen = nullptr;
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

}  // namespace filelock::detail
