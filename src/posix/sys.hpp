// SPDX-License-Identifier: MIT
#pragma once

// The POSIX side of the platform seam (src/platform.hpp): the one table
// through which every system call of the lock primitive, the release
// watchers and the sync driver goes, so tests can inject errno values
// and events (as fmt's posix-mock test does). The table holds plain libc
// functions by default. Not covered: what Asio's and libuv's reactors do
// with the inotify descriptors we hand them (epoll registration), and
// filelock-run's own calls (it is a program, tested from outside).

#include <filelock/export.hpp>

#include "../platform.hpp"
#include "../sys_entry.hpp"

#include <atomic>
#include <cerrno>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <time.h>
#include <sys/stat.h>
#if __has_include(<sys/statfs.h>)
#include <sys/statfs.h>  // Linux
#else
#include <sys/mount.h>  // the BSDs and macOS: statfs
#endif
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
    sys_entry<int(const char* path, int flags, mode_t mode)> open;
    sys_entry<int(int fd)> close;
    sys_entry<int(int fd, int op)> flock;
    sys_entry<int(int fd, int cmd, struct ::flock* lk)> fcntl_lock;
    sys_entry<int(int fd, struct ::stat* st)> fstat;
    sys_entry<int(int fd, struct ::statfs* st)> fstatfs;
    sys_entry<int(const char* path, struct ::stat* st)> stat;
    sys_entry<int(const char* path, struct ::stat* st)> lstat;
    sys_entry<ssize_t(int fd, const void* buf, size_t n, off_t off)> pwrite;
    sys_entry<ssize_t(int fd, void* buf, size_t n, off_t off)> pread;
    sys_entry<int(int fd, off_t len)> ftruncate;
    sys_entry<int(const char* path)> unlink;
    sys_entry<int(int flags)> inotify_init1;
    sys_entry<int(int fd, const char* path, uint32_t mask)> inotify_add_watch;
    sys_entry<int(char* name, size_t len)> gethostname;
    sys_entry<int(int fd, int wd)> inotify_rm_watch;
    sys_entry<ssize_t(int fd, void* buf, size_t n)> read;
    sys_entry<int(struct ::pollfd* fds, nfds_t n, const struct ::timespec* timeout,
                  const ::sigset_t* mask)>
        ppoll;
    sys_entry<ssize_t(int fd, const void* buf, size_t n)> write;  // eventfd signals
    sys_entry<int(unsigned initval, int flags)> eventfd;
};

/// Registers, once, the fork handlers that keep the pid, the fork generation
/// and the count of forks made (fork_stamp) up to date; done when the
/// library is loaded. Handlers registered at load that need the count
/// already updated when theirs run in the parent call it first (parent
/// handlers run in the order of registration).
void register_fork_counters() noexcept;

/// The table in use. Tests replace entries and restore them.
FILELOCK_API sys_table& sys() noexcept;
/// The libc functions.
FILELOCK_API const sys_table& default_sys() noexcept;

}  // namespace filelock::detail
