// SPDX-License-Identifier: MIT
#pragma once

// The one seam through which every system call of the lock primitive, the
// release watchers and the sync driver goes, so tests can inject errno values
// and events (as fmt's posix-mock test does). The table holds plain libc
// functions by default. Not covered: what Asio's and libuv's reactors do
// with the inotify descriptors we hand them (epoll registration), and
// filelock-run's own calls (it is a program, tested from outside).

#include <filelock/export.hpp>

#include <atomic>
#include <cerrno>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <time.h>
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

/// One entry of the table: a function pointer read and replaced atomically
/// (a background thread of the library may call through the table while a
/// test replaces an entry).
template <class F>
class sys_entry;
template <class R, class... A>
class sys_entry<R(A...)> {
public:
    using function = R (*)(A...);
    constexpr sys_entry(function f) noexcept : f_(f) {}
    sys_entry(const sys_entry& o) noexcept : f_(o.f_.load(std::memory_order_relaxed)) {}
    sys_entry& operator=(const sys_entry& o) noexcept {
        f_.store(o.f_.load(std::memory_order_relaxed), std::memory_order_relaxed);
        return *this;
    }
    sys_entry& operator=(function f) noexcept {
        f_.store(f, std::memory_order_relaxed);
        return *this;
    }
    R operator()(A... a) const { return f_.load(std::memory_order_relaxed)(a...); }

private:
    std::atomic<function> f_;
};

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
