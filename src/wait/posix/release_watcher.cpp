// SPDX-License-Identifier: MIT
#include "../release_watcher.hpp"

// Linux's release events (inotify); meson builds src/wait/none.cpp instead
// where there is no inotify.
#include "../../posix/fork_closed.hpp"
#include "../../posix/sys.hpp"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <mutex>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>

namespace filelock::detail {

namespace {
constexpr std::uint32_t watch_mask =
    IN_CLOSE_WRITE | IN_CLOSE_NOWRITE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ATTRIB;

// The inotify instance's tag in the epoll set (a turn's is its descriptor).
constexpr std::uint64_t inotify_tag = ~std::uint64_t(0);

int decode_turn(int wd) noexcept { return release_watcher::turn_base - wd; }

}  // namespace

// `fd`, just made, in fork_closed's list (with its mutex held); closed if it
// cannot be listed.
static int listed(fork_closed& c, int fd) noexcept {
    if (fd < 0 || c.add(fd)) return fd;
    sys().close(fd);
    return -1;
}

// Listed as they are made: a child forked at any time finds them listed, or
// not made yet.
release_watcher::release_watcher() noexcept : generation_(fork_generation()) {
    {
        fork_closed& c = fork_closed::get();
        std::lock_guard<std::mutex> g(c.mutex());
        listed_ = true;
        fd_ = listed(c, sys().inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
        if (fd_ >= 0) ep_ = listed(c, ::epoll_create1(EPOLL_CLOEXEC));
    }
    ::epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = inotify_tag;
    if (ep_ >= 0 && ::epoll_ctl(ep_, EPOLL_CTL_ADD, fd_, &ev) == 0) {
        polled_.store(fd_);
        return;
    }
    abandon();  // not valid()
}

bool release_watcher::list_for_fork(bool on) noexcept {
    if (on == listed_) return true;
    if (generation_ != fork_generation()) return false;  // a forked child's copy
    fork_closed& c = fork_closed::get();
    std::lock_guard<std::mutex> g(c.mutex());
    const int fds[] = {fd_, ep_, efd_};
    for (std::size_t i = 0; i < std::size(fds); ++i) {
        if (fds[i] < 0) continue;
        if (!on) {
            c.remove(fds[i]);
        } else if (!c.add(fds[i])) {
            for (std::size_t j = 0; j < i; ++j) c.remove(fds[j]);  // (-1 is never listed)
            return false;
        }
    }
    listed_ = on;
    return true;
}

void release_watcher::rearm(int delta) noexcept {
    const std::size_t was = armed_;
    armed_ = delta < 0 && armed_ == 0 ? 0 : armed_ + static_cast<std::size_t>(delta);
    if ((was == 0) == (armed_ == 0)) return;
    polled_.store(armed_ > 0 ? ep_ : fd_);
    // A wait() that began before may poll the inotify instance alone: it
    // ends now, and the next one polls the set.
    if (armed_ > 0) interrupt();
}

release_watcher::~release_watcher() { abandon(); }

bool release_watcher::enable_interrupts() noexcept {
    if (efd_ >= 0) return true;
    if (!listed_) {
        efd_ = sys().eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    } else if (generation_ == fork_generation()) {
        fork_closed& c = fork_closed::get();
        std::lock_guard<std::mutex> g(c.mutex());
        efd_ = listed(c, sys().eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    }
    return efd_ >= 0;
}

bool release_watcher::wait(std::chrono::steady_clock::time_point until) noexcept {
    ::pollfd pfds[2] = {{polled_.load(), POLLIN, 0}, {efd_, POLLIN, 0}};
    ::timespec ts{};
    const ::timespec* timeout = nullptr;
    if (until != std::chrono::steady_clock::time_point::max()) {
        const auto left = std::max(until - std::chrono::steady_clock::now(),
                                   std::chrono::steady_clock::duration::zero());
        const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
        ts = {static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
        timeout = &ts;
    }
    // An interrupt seen here is read at the next clear, even if its writer
    // has not yet said so.
    if (sys().ppoll(pfds, efd_ >= 0 ? 2 : 1, timeout, nullptr) <= 0) return false;
    if (pfds[1].revents & POLLIN) interrupted_.store(true);
    return pfds[0].fd == fd_ && (pfds[0].revents & POLLIN);
}

void release_watcher::interrupt() noexcept {
    const std::uint64_t one = 1;
    if (efd_ < 0) return;
    (void)!sys().write(efd_, &one, sizeof one);
    interrupted_.store(true);  // after the write: a clear that misses it sees it in wait()
}

void release_watcher::clear_interrupts() noexcept {
    // Read only when something was written: most waits had no interrupt.
    std::uint64_t stale;
    if (efd_ >= 0 && interrupted_.exchange(false)) (void)!sys().read(efd_, &stale, sizeof stale);
}

void release_watcher::abandon() noexcept {
    // A forked child's copies of listed descriptors, and of the turns, were
    // closed at the fork: their numbers may be files of the child's own by
    // now, never closed here.
    const bool inherited = generation_ != fork_generation();
    if (inherited) {
        turns_.clear();
        if (listed_) fd_ = ep_ = efd_ = -1;
    }
    const auto close = [this](int& fd) {
        if (fd < 0) return;
        if (listed_)
            fork_closed::close_locked(fd);
        else
            sys().close(fd);
        fd = -1;
    };
    // The inotify instance last: a process with none open holds nothing of
    // ours (the tests count on it).
    close(ep_);
    close(efd_);
    for (int t : turns_) fork_closed::close_locked(t);
    turns_.clear();
    armed_ = 0;
    polled_.store(-1);
    close(fd_);
}

int release_watcher::add_turn(int fd) noexcept {
    // Not on an inherited watcher: its epoll set is the parent's, which the
    // turn would wake, and the child could never close its copy (see
    // remove()).
    if (ep_ < 0 || fd < 0 || generation_ != fork_generation()) return -1;
    // The turns' copies are closed by a forked child at the fork (each is a
    // connection to a doorbell of the cross-process queue), and never again
    // by an inherited watcher: their numbers may be the child's own by then.
    int copy = -1;
    {
        fork_closed& c = fork_closed::get();
        std::lock_guard<std::mutex> g(c.mutex());
        // A copy of our own: the caller may close its descriptor (and the
        // number be reused) before the waiter stops waiting.
        copy = listed(c, ::fcntl(fd, F_DUPFD_CLOEXEC, 0));
    }
    if (copy < 0) return -1;
    try {
        turns_.push_back(copy);
    } catch (...) {
        fork_closed::close_locked(copy);
        return -1;
    }
    ::epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.u64 = static_cast<std::uint64_t>(copy);
    if (::epoll_ctl(ep_, EPOLL_CTL_ADD, copy, &ev) != 0) {
        turns_.pop_back();
        fork_closed::close_locked(copy);
        return -1;
    }
    rearm(1);
    return turn_base - copy;
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
    if (is_turn(wd)) {
        const int copy = decode_turn(wd);
        auto t = std::find(turns_.begin(), turns_.end(), copy);
        if (t == turns_.end()) return;
        turns_.erase(t);
        // An inherited watcher's copy was closed at the fork (and its epoll
        // set is the parent's too).
        if (generation_ != fork_generation()) return;
        // Still in the set unless reported (explicitly: a copy of the
        // description elsewhere would keep it there after our close).
        ::epoll_event ev{};
        if (::epoll_ctl(ep_, EPOLL_CTL_DEL, copy, &ev) == 0) rearm(-1);
        fork_closed::close_locked(copy);
        return;
    }
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
    while (armed_ > 0) {
        ::epoll_event evs[16];
        const int n = ::epoll_wait(ep_, evs, 16, 0);
        if (n <= 0) break;
        bool turned = false;
        for (int i = 0; i < n; ++i) {
            if (evs[i].data.u64 == inotify_tag) continue;
            // Reported once: out of the set (it stays readable), open until
            // its waiter stops waiting.
            const int copy = static_cast<int>(evs[i].data.u64);
            ::epoll_event none{};
            if (::epoll_ctl(ep_, EPOLL_CTL_DEL, copy, &none) == 0) rearm(-1);
            woken.push_back({turn_base - copy, false});
            turned = true;
        }
        if (!turned) break;
    }
    return woken;
}

}  // namespace filelock::detail
