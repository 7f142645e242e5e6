// SPDX-License-Identifier: MIT
#pragma once

// The descriptors of this process that a forked child must not keep: the
// cross-process queue's doorbells kept by winners (see process_queue.hpp),
// the release watcher's copies of the queue turns, its inotify instance,
// epoll set and eventfd (from their creation on, except while an event loop
// holds them: see release_watcher::list_for_fork), and the lock file
// descriptor of an attempt, from its open until it is closed or handed over
// with a won lock (through src/platform.hpp's fork_closed_add(); see
// file_backend::open_fd in src/file/attempt.cpp). A pthread_atfork child
// handler, registered when the library is loaded, closes every one
// registered, and does nothing else. Its mutex guards the list, and is held
// across fork() and around every registering, closing and handing over of
// a registered descriptor (and, for the queue's, its opening): the child
// finds each one registered or not, never half done. It is a leaf: nothing
// else is locked while it is held. A number registered in a parent is never
// closed again by the child (it may be a file of the child's own by then):
// its owner knows it by its fork generation.

#include <mutex>
#include <vector>

namespace filelock::detail {

class fork_closed {
public:
    /// The process's (never destroyed: a lock released during exit uses it).
    static fork_closed& get() noexcept;
    fork_closed(const fork_closed&) = delete;
    fork_closed& operator=(const fork_closed&) = delete;

    std::mutex& mutex() noexcept { return mutex_; }

    // With the mutex held:
    /// Registers `fd`; false (not registered) if out of memory.
    bool add(int fd) noexcept;
    /// Unregisters `fd` (nothing if it is not registered).
    void remove(int fd) noexcept;
    /// Unregisters `fd` and closes it.
    void close(int fd) noexcept;

    /// Takes the mutex, then unregisters `fd` and closes it: a child forked
    /// meanwhile finds it registered (and closes its copy), or gone.
    static void close_locked(int fd) noexcept;

private:
    fork_closed() = default;
    static void close_in_child() noexcept;
    static const bool handlers_registered;

    std::mutex mutex_;
    std::vector<int> fds_;
};

}  // namespace filelock::detail
