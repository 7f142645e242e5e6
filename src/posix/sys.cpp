// SPDX-License-Identifier: MIT
#include "sys.hpp"

#include <atomic>
#include <poll.h>
#include <pthread.h>
#include <sys/file.h>
#include <unistd.h>
#include <cerrno>
// Linux-only calls, behind feature checks: elsewhere (the BSDs, macOS) the
// table's entries fail with ENOSYS and the release watchers are never valid.
#if __has_include(<sys/inotify.h>)
#include <sys/inotify.h>
#define FILELOCK_HAVE_INOTIFY 1
#endif
#if __has_include(<sys/eventfd.h>)
#include <sys/eventfd.h>
#define FILELOCK_HAVE_EVENTFD 1
#endif

namespace filelock::detail {
namespace {

int sys_open(const char* path, int flags, mode_t mode) { return ::open(path, flags, mode); }
int sys_fcntl_lock(int fd, int cmd, struct ::flock* lk) { return ::fcntl(fd, cmd, lk); }
#if FILELOCK_HAVE_INOTIFY
int sys_inotify_init1(int flags) { return ::inotify_init1(flags); }
int sys_inotify_add_watch(int fd, const char* path, uint32_t mask) {
    return ::inotify_add_watch(fd, path, mask);
}
int sys_inotify_rm_watch(int fd, int wd) { return ::inotify_rm_watch(fd, wd); }
#else
int sys_inotify_rm_watch(int, int) { return errno = ENOSYS, -1; }
int sys_inotify_init1(int) { return errno = ENOSYS, -1; }
int sys_inotify_add_watch(int, const char*, uint32_t) { return errno = ENOSYS, -1; }
#endif

#if FILELOCK_HAVE_EVENTFD
int sys_eventfd(unsigned initval, int flags) { return ::eventfd(initval, flags); }
#else
int sys_eventfd(unsigned, int) { return errno = ENOSYS, -1; }
#endif
#if defined(__linux__) || defined(__FreeBSD__) || defined(__NetBSD__) || defined(__OpenBSD__)
int sys_ppoll(struct ::pollfd* fds, nfds_t n, const struct ::timespec* t, const ::sigset_t* m) {
    return ::ppoll(fds, n, t, m);
}
#else
int sys_ppoll(struct ::pollfd* fds, nfds_t n, const struct ::timespec* t, const ::sigset_t*) {
    return ::poll(fds, n, t ? static_cast<int>(t->tv_sec * 1000 + t->tv_nsec / 1000000) : -1);
}
#endif

int sys_gethostname(char* name, size_t len) { return ::gethostname(name, len); }
int sys_fstatfs(int fd, struct ::statfs* st) { return ::fstatfs(fd, st); }

constexpr sys_table libc() {
    return {
        .open = sys_open,
        .close = ::close,
        .flock = ::flock,
        .fcntl_lock = sys_fcntl_lock,
        .fstat = ::fstat,
        .fstatfs = sys_fstatfs,
        .stat = ::stat,
        .lstat = ::lstat,
        .pwrite = ::pwrite,
        .pread = ::pread,
        .ftruncate = ::ftruncate,
        .unlink = ::unlink,
        .inotify_init1 = sys_inotify_init1,
        .inotify_add_watch = sys_inotify_add_watch,
        .gethostname = sys_gethostname,
        .inotify_rm_watch = sys_inotify_rm_watch,
        .read = ::read,
        .ppoll = sys_ppoll,
        .write = ::write,
        .eventfd = sys_eventfd,
    };
}

constinit sys_table table = libc();
const sys_table libc_table = libc();

std::atomic<long long> cached_pid{0};
std::atomic<unsigned> generation{0};
std::atomic<unsigned> forks_made{0};

void on_fork_parent() noexcept { forks_made.fetch_add(1, std::memory_order_relaxed); }

void on_fork_child() noexcept {
    cached_pid.store(::getpid(), std::memory_order_relaxed);
    generation.fetch_add(1, std::memory_order_relaxed);
}

// Registered when the library is loaded.
const bool atfork_registered = (register_fork_counters(), true);

}  // namespace

void register_fork_counters() noexcept {
    static const int registered = [] {
        cached_pid.store(::getpid(), std::memory_order_relaxed);
        return ::pthread_atfork(nullptr, on_fork_parent, on_fork_child);
    }();
    (void)registered;
}

sys_table& sys() noexcept { return table; }

void at_fork(void (*prepare)(), void (*parent)(), void (*child)()) noexcept {
    ::pthread_atfork(prepare, parent, child);
}
const sys_table& default_sys() noexcept { return libc_table; }

long long current_pid() noexcept {
    long long pid = cached_pid.load(std::memory_order_relaxed);
    if (pid == 0) {  // before static initialisation finished
        pid = ::getpid();
        cached_pid.store(pid, std::memory_order_relaxed);
    }
    return pid;
}

unsigned fork_generation() noexcept {
    (void)atfork_registered;
    return generation.load(std::memory_order_relaxed);
}

fork_stamp fork_stamp::now() noexcept {
    return {fork_generation(), forks_made.load(std::memory_order_relaxed)};
}

bool fork_stamp::is_private() const noexcept {
    const fork_stamp n = now();
    return generation == n.generation && forks == n.forks;
}

bool fork_stamp::inherited() const noexcept { return generation != fork_generation(); }

}  // namespace filelock::detail
