// SPDX-License-Identifier: MIT
#pragma once

// The one seam through which every system call of the lock primitive, the
// release watchers and the sync driver goes, so tests can inject errno values
// and events (as fmt's posix-mock test does). The table holds plain libc
// functions by default. Not covered: what Asio's and libuv's reactors do
// with the descriptors we hand them (epoll, their own reads of nothing of
// ours), and the release of an inotify instance's descriptor (close).

#include <filelock/export.hpp>

#include <cerrno>
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <cstdint>
#include <sys/types.h>

namespace filelock::detail {

/// Calls `f` again while it fails with EINTR (never wrap close: the
/// descriptor is gone whatever it returns).
template <class F>
auto retry_eintr(F f) noexcept {
    decltype(f()) r;
    do r = f();
    while (r == -1 && errno == EINTR);
    return r;
}

struct sys_table {
    int (*open)(const char* path, int flags, mode_t mode);
    int (*close)(int fd);
    int (*flock)(int fd, int op);
    int (*fcntl_lock)(int fd, int cmd, struct ::flock* lk);
    int (*fstat)(int fd, struct ::stat* st);
    int (*fstatfs)(int fd, struct ::statfs* st);
    int (*stat)(const char* path, struct ::stat* st);
    int (*lstat)(const char* path, struct ::stat* st);
    ssize_t (*pwrite)(int fd, const void* buf, size_t n, off_t off);
    ssize_t (*pread)(int fd, void* buf, size_t n, off_t off);
    int (*ftruncate)(int fd, off_t len);
    int (*unlink)(const char* path);
    int (*inotify_init1)(int flags);
    int (*inotify_add_watch)(int fd, const char* path, uint32_t mask);
    int (*gethostname)(char* name, size_t len);
    int (*inotify_rm_watch)(int fd, int wd);
    ssize_t (*read)(int fd, void* buf, size_t n);  // inotify events
    int (*poll)(struct ::pollfd* fds, nfds_t n, int timeout_ms);
    int (*dup)(int fd);
};

/// The table in use. Tests replace entries and restore them.
FILELOCK_API sys_table& sys() noexcept;
/// The libc functions.
FILELOCK_API const sys_table& default_sys() noexcept;

/// The process's pid, cached; refreshed in a forked child.
FILELOCK_API pid_t current_pid() noexcept;
/// Increments in every forked child: a lock taken under another generation
/// belongs to the parent.
FILELOCK_API unsigned fork_generation() noexcept;

/// Where a descriptor stands with respect to fork(): taken when it is opened
/// (before the open call), compared later. A descriptor is *private* while
/// this process has not forked since (a child shares its open file
/// description, and with it the lock) and is not itself a forked child's
/// copy.
struct fork_stamp {
    unsigned generation = 0;  // fork_generation() at open
    unsigned forks = 0;       // forks made by this process at open

    FILELOCK_API static fork_stamp now() noexcept;
    /// This process's copy, and no child has one.
    FILELOCK_API bool is_private() const noexcept;
    /// A forked child's copy of its parent's descriptor.
    FILELOCK_API bool inherited() const noexcept;
};

}  // namespace filelock::detail
