// SPDX-License-Identifier: MIT
#include <filelock/detail/release_watcher.hpp>

#include "sys.hpp"

#include <cerrno>
#include <climits>
#include <unistd.h>

#if defined(__linux__)
#include <sys/inotify.h>
#endif

namespace filelock::detail {

#if defined(__linux__)

namespace {
constexpr std::uint32_t watch_mask =
    IN_CLOSE_WRITE | IN_CLOSE_NOWRITE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ATTRIB;
}

release_watcher::release_watcher() noexcept : fd_(sys().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)) {}

release_watcher::~release_watcher() {
    if (fd_ >= 0) ::close(fd_);
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
        ::inotify_rm_watch(fd_, wd);
        refs_.erase(it);
    }
}

std::vector<release_watcher::event> release_watcher::drain() {
    std::vector<event> woken;
    alignas(inotify_event) char buf[4096];
    for (;;) {
        const ssize_t n = ::read(fd_, buf, sizeof buf);
        if (n <= 0) break;  // EAGAIN: drained
        for (ssize_t off = 0; off < n;) {
            const auto* ev = reinterpret_cast<const inotify_event*>(buf + off);
            off += static_cast<ssize_t>(sizeof(inotify_event) + ev->len);
            if (ev->mask & IN_IGNORED) refs_.erase(ev->wd);  // the inode is gone
            const bool moved = ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_ATTRIB | IN_IGNORED);
            event* seen = nullptr;
            for (auto& w : woken)
                if (w.wd == ev->wd) seen = &w;
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

#else

release_watcher::release_watcher() noexcept = default;
release_watcher::~release_watcher() = default;
int release_watcher::add(const std::filesystem::path&) noexcept { return -1; }
void release_watcher::remove(int) noexcept {}
std::vector<release_watcher::event> release_watcher::drain() { return {}; }

#endif

}  // namespace filelock::detail
