// SPDX-License-Identifier: MIT
// Linux's view of who locks a file: /proc/locks, and the "lock:" lines of
// /proc/<pid>/fdinfo/<fd> to find the process behind an OFD lock (which
// /proc/locks names as pid -1) or behind a flock(2) lock whose taker exited.
#include "kernel_locks.hpp"

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <fstream>
#include <string>

#if defined(__linux__)
#include <cerrno>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#endif

namespace filelock::detail::kernel {
namespace {

// Splits off the next blank-separated word of `s`.
std::string_view next_word(std::string_view& s) noexcept {
    const auto b = s.find_first_not_of(" \t");
    if (b == std::string_view::npos) {
        s = {};
        return {};
    }
    s.remove_prefix(b);
    const auto e = std::min(s.find_first_of(" \t"), s.size());
    const auto w = s.substr(0, e);
    s.remove_prefix(e);
    return w;
}

template <class T>
bool to_number(std::string_view w, T& out, int base = 10) noexcept {
    if (w.empty()) return false;
    const auto r = std::from_chars(w.data(), w.data() + w.size(), out, base);
    return r.ec == std::errc() && r.ptr == w.data() + w.size();
}

}  // namespace

bool parse_lock_line(std::string_view s, lock_line& out) noexcept {
    lock_line l;
    auto w = next_word(s);  // "1:"
    if (w.empty() || w.back() != ':') return false;
    w = next_word(s);
    if (w == "->") {
        l.blocked = true;
        w = next_word(s);
    }
    if (w == "FLOCK")
        l.api = lock_api::flock;
    else if (w == "OFDLCK")
        l.api = lock_api::ofd;
    else if (w == "POSIX")
        l.api = lock_api::posix;
    else
        return false;  // LEASE, DELEG, ...
    w = next_word(s);  // ADVISORY / MANDATORY
    if (w.empty()) return false;
    w = next_word(s);
    if (w == "WRITE")
        l.write = true;
    else if (w != "READ")
        return false;
    if (!to_number(next_word(s), l.pid)) return false;
    // MAJOR:MINOR:INODE, the numbers of the device in hex
    w = next_word(s);
    const auto c1 = w.find(':');
    const auto c2 = c1 == std::string_view::npos ? c1 : w.find(':', c1 + 1);
    if (c2 == std::string_view::npos || !to_number(w.substr(0, c1), l.major, 16) ||
        !to_number(w.substr(c1 + 1, c2 - c1 - 1), l.minor, 16) ||
        !to_number(w.substr(c2 + 1), l.ino))
        return false;
    if (!to_number(next_word(s), l.start)) return false;
    w = next_word(s);
    if (w == "EOF")
        l.end = UINT64_MAX;
    else if (!to_number(w, l.end))
        return false;
    out = l;
    return true;
}

#if defined(__linux__)

file_key key_of(unsigned long long dev, unsigned long long ino) noexcept {
    return {static_cast<unsigned>(major(static_cast<dev_t>(dev))),
            static_cast<unsigned>(minor(static_cast<dev_t>(dev))), ino};
}

bool available() noexcept { return ::access("/proc/locks", R_OK) == 0; }

namespace {

bool about(const std::vector<file_key>& files, const lock_line& l) {
    return std::find(files.begin(), files.end(), file_key{l.major, l.minor, l.ino}) != files.end();
}

// Reads a small proc file whole (they report a size of 0: read to the end).
bool slurp(const char* path, std::string& out) {
    const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    out.clear();
    char buf[4096];
    for (;;) {
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            ::close(fd);
            return n == 0;
        }
        out.append(buf, static_cast<std::size_t>(n));
    }
}

bool all_digits(const char* s) noexcept {
    if (*s == 0) return false;
    for (; *s; ++s)
        if (*s < '0' || *s > '9') return false;
    return true;
}

}  // namespace

bool read_locks(const std::vector<file_key>& files, std::vector<lock_line>& out) {
    std::string text;
    if (!slurp("/proc/locks", text)) return false;
    std::string_view rest(text);
    while (!rest.empty()) {
        const auto nl = std::min(rest.find('\n'), rest.size());
        lock_line l;
        if (parse_lock_line(rest.substr(0, nl), l) && about(files, l)) out.push_back(l);
        rest.remove_prefix(std::min(nl + 1, rest.size()));
    }
    return true;
}

std::vector<owner> scan_owners(const std::vector<file_key>& files) {
    std::vector<owner> found;
    DIR* proc = ::opendir("/proc");
    if (!proc) return found;
    std::string text, path;
    while (const dirent* p = ::readdir(proc)) {
        if (!all_digits(p->d_name)) continue;
        long long pid = 0;
        if (!to_number(std::string_view(p->d_name), pid)) continue;
        path = std::string("/proc/") + p->d_name + "/fdinfo";
        DIR* fds = ::opendir(path.c_str());
        if (!fds) continue;  // gone, or not ours to read
        while (const dirent* f = ::readdir(fds)) {
            int fd = -1;
            if (!all_digits(f->d_name) || !to_number(std::string_view(f->d_name), fd)) continue;
            if (!slurp((path + "/" + f->d_name).c_str(), text)) continue;
            std::string_view rest(text);
            std::uint64_t pos = 0;  // fdinfo's first line, before its locks
            while (!rest.empty()) {
                const auto nl = std::min(rest.find('\n'), rest.size());
                auto line = rest.substr(0, nl);
                rest.remove_prefix(std::min(nl + 1, rest.size()));
                if (line.substr(0, 4) == "pos:") {
                    auto value = line.substr(4);
                    if (!to_number(next_word(value), pos)) pos = 0;
                }
                if (line.substr(0, 5) != "lock:") continue;
                lock_line l;
                if (parse_lock_line(line.substr(5), l) && !l.blocked && about(files, l))
                    found.push_back({pid, fd, l, pos});
            }
        }
        ::closedir(fds);
    }
    ::closedir(proc);
    return found;
}

bool alive(long long pid) noexcept {
    if (pid <= 0) return false;
    return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
}

#else  // no /proc/locks

file_key key_of(unsigned long long dev, unsigned long long ino) noexcept {
    return {static_cast<unsigned>(dev >> 32), static_cast<unsigned>(dev), ino};
}
bool available() noexcept { return false; }
bool read_locks(const std::vector<file_key>&, std::vector<lock_line>&) { return false; }
std::vector<owner> scan_owners(const std::vector<file_key>&) { return {}; }
bool alive(long long) noexcept { return false; }

#endif

bool same_lines(const std::vector<lock_line>& a, const std::vector<lock_line>& b) {
    return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](const auto& x, const auto& y) {
        return x.blocked == y.blocked && x.api == y.api && x.write == y.write && x.pid == y.pid &&
               x.major == y.major && x.minor == y.minor && x.ino == y.ino && x.start == y.start &&
               x.end == y.end;
    });
}

}  // namespace filelock::detail::kernel
