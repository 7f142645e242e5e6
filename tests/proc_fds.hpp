// SPDX-License-Identifier: MIT
#pragma once

// What this process has open, read from /proc: for the tests, the torture
// and the benchmarks (no Catch2 here, so that stand-alone programs can use
// it).

#include <climits>
#include <dirent.h>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <linux/kcmp.h>
#include <string>
#include <sys/syscall.h>
#include <unistd.h>
#include <vector>

namespace test {

namespace fs = std::filesystem;

inline int open_fd_count() {
    int n = 0;
    if (DIR* d = ::opendir("/proc/self/fd")) {
        while (dirent* e = ::readdir(d))
            if (e->d_name[0] != '.') ++n;
        ::closedir(d);
        --n;  // the directory stream's own descriptor
    }
    return n;
}

// getdents64's record (glibc declares no type for it).
struct getdents64_record {
    ino64_t d_ino;
    off64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[1];
};

/// Descriptors of this process whose link (what /proc/self/fd shows, as a
/// C string) satisfies `match`; -1 if /proc cannot be read. It allocates
/// nothing (nor may `match`): a child forked while other threads allocate
/// may find the allocator's lock taken for good (ASan's, in clang 14, is not
/// reset at fork; the child then hangs).
template <class Match>
int count_fds(Match match) {
    const int dir = ::open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) return -1;
    int n = 0;
    alignas(8) char buf[4096];
    for (long got; (got = ::syscall(SYS_getdents64, dir, buf, sizeof buf)) > 0;) {
        for (long at = 0; at < got;) {
            const auto* e = reinterpret_cast<const getdents64_record*>(buf + at);
            at += e->d_reclen;
            char to[PATH_MAX];
            const ssize_t len = ::readlinkat(dir, e->d_name, to, sizeof to - 1);
            if (len < 0) continue;
            to[len] = '\0';
            n += match(static_cast<const char*>(to)) ? 1 : 0;
        }
    }
    ::close(dir);
    return n;
}

/// Descriptors of this process open on the file `p` names.
inline int fds_on(const fs::path& p) {
    std::error_code ec;
    const fs::path target = fs::canonical(p, ec);
    if (ec) return 0;
    int n = 0;
    for (const auto& e : fs::directory_iterator("/proc/self/fd", ec))
        n += fs::read_symlink(e.path(), ec) == target;
    return n;
}

/// Descriptors of this process that link to `what` ("anon_inode:inotify").
inline int anon_fds(const std::string& what) {
    int n = 0;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/proc/self/fd", ec))
        n += fs::read_symlink(e.path(), ec).string() == what;
    return n;
}

/// inotify instances (descriptors) open in this process.
inline int inotify_instances() { return anon_fds("anon_inode:inotify"); }
/// eventfds open in this process.
inline int eventfds() { return anon_fds("anon_inode:[eventfd]"); }

/// The most inotify instances the library keeps in a process whose last
/// waiter just left, for one linger (src/wait/linger.hpp): the sync waiters'
/// instance and one idle instance for event loops, and the eventfd that comes
/// with the sync waiters' instance. After the linger: none.
constexpr int max_cached_inotify_instances = 2;
constexpr int max_cached_eventfds = 1;

/// Waits (polling, at most 10 s) until no inotify instance is open in this
/// process: the library closes its idle ones one linger after their last
/// waiter. For counts taken where nothing waits.
inline void settle() {
    for (int i = 0; i < 1000 && inotify_instances() > 0; ++i) ::usleep(10000);
}
/// The descriptors open once the library's idle instances are closed.
inline int settled_fd_count() {
    settle();
    return open_fd_count();
}

/// Whether the process `pid` has a descriptor on the open file description
/// of this process's `fd` (a copy inherited across fork(), or a dup of it).
inline bool shares_description(pid_t pid, int fd) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
        const int theirs = std::stoi(e.path().filename().string());
        if (::syscall(SYS_kcmp, ::getpid(), pid, KCMP_FILE, fd, theirs) == 0) return true;
    }
    return false;
}

/// inotify watches held by this process, over all its instances (a
/// descriptor dup()ed from another counts once).
inline int inotify_watches() {
    int n = 0;
    std::error_code ec;
    std::vector<int> seen;
    for (const auto& e : fs::directory_iterator("/proc/self/fd", ec)) {
        if (fs::read_symlink(e.path(), ec).string() != "anon_inode:inotify") continue;
        const int fd = std::stoi(e.path().filename().string());
        const pid_t self = ::getpid();
        bool dup = false;
        for (int other : seen)
            dup = dup || ::syscall(SYS_kcmp, self, self, KCMP_FILE, fd, other) == 0;
        seen.push_back(fd);
        if (dup) continue;
        std::ifstream in("/proc/self/fdinfo/" + e.path().filename().string());
        std::string line;
        while (std::getline(in, line)) n += line.rfind("inotify wd:", 0) == 0;
    }
    return n;
}

}  // namespace test
