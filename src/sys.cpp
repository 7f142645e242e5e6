#include "sys.hpp"

#include <atomic>
#include <pthread.h>
#include <sys/file.h>
#include <unistd.h>

namespace filelock::detail {
namespace {

int sys_open(const char* path, int flags, mode_t mode) { return ::open(path, flags, mode); }
int sys_fcntl_lock(int fd, int cmd, struct ::flock* lk) { return ::fcntl(fd, cmd, lk); }

constexpr sys_table libc_table{
    .open = sys_open,
    .close = ::close,
    .flock = ::flock,
    .fcntl_lock = sys_fcntl_lock,
    .fstat = ::fstat,
    .stat = ::stat,
    .lstat = ::lstat,
    .pwrite = ::pwrite,
    .pread = ::pread,
    .ftruncate = ::ftruncate,
    .unlink = ::unlink,
};

sys_table table = libc_table;

std::atomic<pid_t> cached_pid{0};
std::atomic<unsigned> generation{0};

void on_fork_child() noexcept {
    cached_pid.store(::getpid(), std::memory_order_relaxed);
    generation.fetch_add(1, std::memory_order_relaxed);
}

// Registered once when the library is loaded.
const int atfork_registered = [] {
    cached_pid.store(::getpid(), std::memory_order_relaxed);
    return ::pthread_atfork(nullptr, nullptr, on_fork_child);
}();

}  // namespace

sys_table& sys() noexcept { return table; }
const sys_table& default_sys() noexcept { return libc_table; }

pid_t current_pid() noexcept {
    pid_t pid = cached_pid.load(std::memory_order_relaxed);
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

}  // namespace filelock::detail
