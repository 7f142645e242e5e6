// SPDX-License-Identifier: MIT
// The file backend's seam on POSIX: flock(2) or OFD locks, stat, pread,
// ftruncate, pwrite, through the table of system calls (src/posix/sys.hpp),
// EINTR retried everywhere but close. Also the machine's name.
#include "../ops.hpp"

#include "../../posix/sys.hpp"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>
#include <sys/file.h>
#include <unistd.h>
#if __has_include(<sys/sysmacros.h>)
#include <sys/sysmacros.h>  // major() on glibc
#endif
#ifndef HOST_NAME_MAX
#define HOST_NAME_MAX 255  // the BSDs and macOS: _POSIX_HOST_NAME_MAX and sysconf
#endif

namespace filelock::detail {
namespace file {
namespace {

failure sys_failure(const char* call, int err = errno) noexcept {
    return {{err, std::system_category()}, call};
}

// `start` and `length` fit in off_t (checked with the options); {0, 0} is
// the whole file.
int set_ofd_lock(int fd, short type, const byte_range& r) noexcept {
#if defined(F_OFD_SETLK)
    struct ::flock lk {};
    lk.l_type = type;
    lk.l_whence = SEEK_SET;
    lk.l_start = static_cast<off_t>(r.start);
    lk.l_len = static_cast<off_t>(r.length);
    return retry_eintr([&] { return sys().fcntl_lock(fd, F_OFD_SETLK, &lk); });
#else  // open file description locks are Linux's (and recent FreeBSD's)
    (void)fd, (void)type, (void)r;
    return errno = EOPNOTSUPP, -1;
#endif
}

file_info info_of(const struct ::stat& st) noexcept {
    file_info f;
    f.dev = static_cast<unsigned long long>(st.st_dev);
    f.ino = static_cast<unsigned long long>(st.st_ino);
    f.size = static_cast<std::uint64_t>(st.st_size);
    f.type = S_ISREG(st.st_mode)   ? file_type::regular
             : S_ISDIR(st.st_mode) ? file_type::directory
                                   : file_type::other;
    return f;
}

class posix_ops final : public ops {
public:
    std::uint64_t holder_offset() const noexcept override { return 0; }

    failure supports(const lock_spec&) const noexcept override { return {}; }

    failure open(const std::filesystem::path& path, const open_spec& o,
                 int& fd) const noexcept override {
        const int flags = (o.writable ? O_RDWR : O_RDONLY) | O_CREAT | O_CLOEXEC | O_NOCTTY |
                          O_NONBLOCK | (o.nofollow ? O_NOFOLLOW : 0);
        const char* p = path.c_str();
        fd = retry_eintr([&] { return sys().open(p, flags, static_cast<mode_t>(o.mode)); });
        if (fd >= 0) return {};
        const int err = errno;
        fd = -1;
        if (err == ELOOP && o.nofollow) {
            struct ::stat st {};
            if (sys().lstat(p, &st) == 0 && S_ISLNK(st.st_mode))
                return {errc::symlink_not_followed, "open"};
        }
        return sys_failure("open", err);
    }

    failure open_to_read(const std::filesystem::path& path, int& fd) const noexcept override {
        fd = retry_eintr([&] {
            return sys().open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0);
        });
        if (fd < 0) return fd = -1, sys_failure("open");
        struct ::stat st {};
        if (sys().fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) return {};
        sys().close(fd);
        fd = -1;
        return {errc::not_a_regular_file, "fstat"};
    }

    failure try_lock(int fd, const lock_spec& s) const noexcept override {
        if (s.ofd) {
            if (set_ofd_lock(fd, s.shared ? F_RDLCK : F_WRLCK, s.range) == 0) return {};
            // POSIX lets a conflicting fcntl lock fail with EACCES or EAGAIN.
            if (errno == EAGAIN || errno == EACCES) return {errc::locked};
            return sys_failure("fcntl(F_OFD_SETLK)");
        }
        if (retry_eintr(
                [&] { return sys().flock(fd, (s.shared ? LOCK_SH : LOCK_EX) | LOCK_NB); }) == 0)
            return {};
        if (errno == EWOULDBLOCK) return {errc::locked};
        return sys_failure("flock");
    }

    failure info(int fd, file_info& out) const noexcept override {
        struct ::stat st {};
        if (sys().fstat(fd, &st) != 0) return sys_failure("fstat");
        out = info_of(st);
        return {};
    }

    failure info_at(const std::filesystem::path& path, bool nofollow,
                    file_info& out) const noexcept override {
        struct ::stat st {};
        if ((nofollow ? sys().lstat : sys().stat)(path.c_str(), &st) != 0) {
            const int err = errno;
            failure f = sys_failure(nofollow ? "lstat" : "stat", err);
            f.gone = err == ENOENT;
            return f;
        }
        out = info_of(st);
        return {};
    }

    failure not_regular(file_type t) const noexcept override {
        if (t == file_type::directory) return sys_failure("fstat", EISDIR);
        return {errc::not_a_regular_file, "fstat"};
    }

    // Block-device filesystems (a non-zero major) never are pseudo ones:
    // only the others pay for the fstatfs.
    failure fs_type(int fd, const file_info& f, long& magic) const noexcept override {
        magic = 0;
        if (major(static_cast<dev_t>(f.dev)) != 0) return {};
        struct ::statfs fs {};
        if (retry_eintr([&] { return sys().fstatfs(fd, &fs); }) != 0) return sys_failure("fstatfs");
        magic = static_cast<long>(fs.f_type);
        return {};
    }

    failure read_at(int fd, char* buf, std::size_t size, std::uint64_t offset,
                    std::size_t& n) const noexcept override {
        const ssize_t r =
            retry_eintr([&] { return sys().pread(fd, buf, size, static_cast<off_t>(offset)); });
        n = r > 0 ? static_cast<std::size_t>(r) : 0;
        return r < 0 ? sys_failure("pread") : failure{};
    }

    failure truncate(int fd, std::uint64_t size) const noexcept override {
        if (retry_eintr([&] { return sys().ftruncate(fd, static_cast<off_t>(size)); }) != 0)
            return sys_failure("ftruncate");
        return {};
    }

    failure write_at(int fd, const char* buf, std::size_t size, std::uint64_t offset,
                     std::size_t& n) const noexcept override {
        const ssize_t r =
            retry_eintr([&] { return sys().pwrite(fd, buf, size, static_cast<off_t>(offset)); });
        n = r > 0 ? static_cast<std::size_t>(r) : 0;
        if (r <= 0) return sys_failure("pwrite", r < 0 ? errno : EIO);
        return {};
    }

    void remove(const std::filesystem::path& path) const noexcept override {
        sys().unlink(path.c_str());
    }

    void unlock(int fd, const lock_spec& s) const noexcept override {
        if (s.ofd) {
            set_ofd_lock(fd, F_UNLCK, s.range);
        } else {
            retry_eintr([&] { return sys().flock(fd, LOCK_UN); });
        }
    }

    std::string flock_holders(const file_info& f) const noexcept override {
#if defined(__linux__)
        try {
            // "1: FLOCK  ADVISORY  READ 1234 fe:00:10953019 0 EOF"; a
            // blocked request reads "1: -> FLOCK ..." (a waiter, not a holder).
            char file[64];
            std::snprintf(file, sizeof file, "%02x:%02x:%llu",
                          static_cast<unsigned>(major(static_cast<dev_t>(f.dev))),
                          static_cast<unsigned>(minor(static_cast<dev_t>(f.dev))), f.ino);
            std::ifstream in("/proc/locks");
            std::string line, out;
            std::vector<std::string> seen;
            while (std::getline(in, line) && out.size() < 1000) {
                std::istringstream words(line);
                std::string id, type, advisory, mode, pid, where;
                if (!(words >> id >> type >> advisory >> mode >> pid >> where)) continue;
                if (type != "FLOCK" || where != file) continue;
                if (std::find(seen.begin(), seen.end(), pid) != seen.end()) continue;
                seen.push_back(pid);
                out += (out.empty() ? "" : ", ") + pid;
            }
            return out;
        } catch (...) {
            return {};
        }
#else  // no list of the system's locks
        (void)f;
        return {};
#endif
    }

    void unlock_close(int fd, const lock_spec& s) const noexcept override {
        if (s.ofd) {
            set_ofd_lock(fd, F_UNLCK, {});  // the whole file: all this description holds
        } else {
            retry_eintr([&] { return sys().flock(fd, LOCK_UN); });
        }
        close(fd);
    }

    void close(int fd) const noexcept override {
        sys().close(fd);  // never retried: the descriptor is gone whatever it returns
    }
};

}  // namespace

const ops& platform_ops() noexcept {
    static const posix_ops os;
    return os;
}

}  // namespace file

std::error_code append_hostname(std::string& out) {
    // HOST_NAME_MAX bytes and the terminator: a name of the full legal length
    // fits (gethostname fails with ENAMETOOLONG when the buffer is smaller).
    char host[HOST_NAME_MAX + 1] = {};
    if (sys().gethostname(host, sizeof host) != 0) return {errno, std::system_category()};
    out.append(host, ::strnlen(host, sizeof host));
    return {};
}

}  // namespace filelock::detail
