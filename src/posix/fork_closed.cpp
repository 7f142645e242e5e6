// SPDX-License-Identifier: MIT
#include "fork_closed.hpp"

#include "sys.hpp"

#include <algorithm>
#include <cerrno>
#include <unistd.h>

namespace filelock::detail {

fork_closed& fork_closed::get() noexcept {
    static fork_closed* c = new fork_closed;
    return *c;
}

// Registered when the library is loaded, not at the first use: that may
// come under a mutex that another prepare handler locks (glibc's
// pthread_atfork waits for a lock that fork() holds while it runs the
// prepare handlers), and registered before every handler registered later,
// its prepare handler runs after theirs: the mutex, a leaf, is taken last.
// After the fork counters': in the parent, the fork is counted before the
// mutex is released, so that whoever takes it next sees the fork in its
// stamp (file_backend::open_fd).
const bool fork_closed::handlers_registered = [] {
    register_fork_counters();
    at_fork([] { get().mutex_.lock(); }, [] { get().mutex_.unlock(); }, close_in_child);
    return true;
}();

bool fork_closed::add(int fd) noexcept {
    try {
        fds_.push_back(fd);
        return true;
    } catch (...) {
        return false;
    }
}

void fork_closed::remove(int fd) noexcept {
    auto it = std::find(fds_.begin(), fds_.end(), fd);
    if (it != fds_.end()) {
        *it = fds_.back();
        fds_.pop_back();
    }
}

void fork_closed::close(int fd) noexcept {
    remove(fd);
    sys().close(fd);
}

void fork_closed::close_locked(int fd) noexcept {
    fork_closed& c = get();
    std::lock_guard<std::mutex> g(c.mutex_);
    c.close(fd);
}

std::unique_lock<std::mutex> fork_closed_lock() noexcept {
    return std::unique_lock<std::mutex>(fork_closed::get().mutex());
}
bool fork_closed_add(int fd) noexcept { return fork_closed::get().add(fd); }
void fork_closed_remove(int fd) noexcept { fork_closed::get().remove(fd); }

// In a forked child, at once: closing a copy releases nothing of the
// parent's (a doorbell listens, a connection stays up, until its last
// descriptor closes).
void fork_closed::close_in_child() noexcept {
    const int saved = errno;
    fork_closed& c = get();
    for (int fd : c.fds_) ::close(fd);
    c.fds_.clear();  // keeps its memory: no allocator call here
    c.mutex_.unlock();
    errno = saved;
}

}  // namespace filelock::detail
