// SPDX-License-Identifier: MIT
// The POSIX lock primitive: one non-blocking attempt on a lock file (flock
// or OFD), the identity check, and the content written after winning.
#include <filelock/detail/file_backend.hpp>

#include "../content.hpp"
#include "sys.hpp"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstring>
#include <sys/file.h>
#include <unistd.h>
#include <utility>
#if __has_include(<sys/sysmacros.h>)
#include <sys/sysmacros.h>  // major() on glibc
#endif
#ifndef HOST_NAME_MAX
#define HOST_NAME_MAX 255  // the BSDs and macOS: _POSIX_HOST_NAME_MAX and sysconf
#endif

namespace filelock::detail {
namespace {

// How often one attempt follows a path whose file is being unlinked or
// replaced under it before it counts as contention.
constexpr int max_identity_rounds = 16;

std::error_code sys_error(int err) noexcept { return {err, std::system_category()}; }

// `start` and `length` were checked to fit in off_t (file_backend's
// constructor); {0, 0} is the whole file.
int set_ofd_lock(int fd, short type, std::uint64_t start = 0, std::uint64_t length = 0) noexcept {
#if defined(F_OFD_SETLK)
    struct ::flock lk {};
    lk.l_type = type;
    lk.l_whence = SEEK_SET;
    lk.l_start = static_cast<off_t>(start);
    lk.l_len = static_cast<off_t>(length);
    return retry_eintr([&] { return sys().fcntl_lock(fd, F_OFD_SETLK, &lk); });
#else  // open file description locks are Linux's (and recent FreeBSD's)
    (void)fd, (void)type, (void)start, (void)length;
    return errno = EOPNOTSUPP, -1;
#endif
}

// Whether the file behind `fd` (of device `dev`) is on a pseudo filesystem.
// Block-device filesystems (a non-zero major) never are: only the others pay
// for the fstatfs.
std::error_code check_pseudo(int fd, dev_t dev, bool& pseudo) noexcept {
    pseudo = false;
    if (major(dev) != 0) return {};
    struct ::statfs fs {};
    if (retry_eintr([&] { return sys().fstatfs(fd, &fs); }) != 0) return sys_error(errno);
    pseudo = is_pseudo_filesystem(static_cast<long>(fs.f_type));
    return {};
}

// Releases a lock held on `fd`: unlock, then close. After a fork() the
// parent and the child share the descriptor's open file description, and
// with it the lock, so an unlock in either would release it for both: a
// descriptor that is not private (see fork_stamp) is only closed, and the
// lock stays held until every copy is closed (as flock(1)'s is).
void release_fd(int fd, bool ofd, fork_stamp stamp) noexcept {
    if (stamp.is_private()) {
        if (ofd)
            set_ofd_lock(fd, F_UNLCK);
        else
            retry_eintr([&] { return sys().flock(fd, LOCK_UN); });
    }
    sys().close(fd);  // never retried: the descriptor is gone whatever it returns
}

}  // namespace

void release_held(held_file& h) noexcept {
    if (h.fd < 0) return;
    const int fd = std::exchange(h.fd, -1);
    const fork_stamp stamp{h.generation, h.forks};
    // A lock another process may share after a fork() is only closed (see
    // release_fd), and its file is not removed from under the other holder.
    if (h.remove && stamp.is_private()) {
        // Unlink while still holding, and only the file we hold: a waiter that
        // then wins this inode sees that the path no longer names it.
        struct ::stat named {};
        if (sys().lstat(h.path.c_str(), &named) == 0 &&
            static_cast<unsigned long long>(named.st_dev) == h.dev &&
            static_cast<unsigned long long>(named.st_ino) == h.ino)
            sys().unlink(h.path.c_str());
    }
    release_fd(fd, h.ofd, stamp);
}

std::error_code append_hostname(std::string& out) {
    // HOST_NAME_MAX bytes and the terminator: a name of the full legal length
    // fits (gethostname fails with ENAMETOOLONG when the buffer is smaller).
    char host[HOST_NAME_MAX + 1] = {};
    if (sys().gethostname(host, sizeof host) != 0) return sys_error(errno);
    out.append(host, ::strnlen(host, sizeof host));
    return {};
}

std::string read_holder_handle(int fd) noexcept {
    try {
        char buf[max_holder_bytes];
        const ssize_t n = retry_eintr([&] { return sys().pread(fd, buf, sizeof buf, 0); });
        return n > 0 ? holder_from_bytes(std::string_view(buf, static_cast<std::size_t>(n))) : "";
    } catch (...) {
        return {};
    }
}

std::string read_holder_at(const std::filesystem::path& path) noexcept {
    const int fd = retry_eintr(
        [&] { return sys().open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0); });
    if (fd < 0) return {};
    struct ::stat st {};
    std::string holder;
    if (sys().fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) holder = read_holder_handle(fd);
    sys().close(fd);
    return holder;
}

std::error_code file_backend::fail(int err, const char* call) noexcept {
    failed_call_ = call;
    return sys_error(err);
}

void file_backend::close_fd() noexcept {
    if (fd_ >= 0) sys().close(fd_);
    fd_ = -1;
}

void file_backend::unlock_and_close() noexcept {
    if (fd_ >= 0) release_fd(fd_, ofd_, {fd_generation_, fd_forks_});
    fd_ = -1;
    won_ = false;
}

bool file_backend::won_inherited() const noexcept {
    return won_ && fork_stamp{fd_generation_, fd_forks_}.inherited();
}

std::error_code file_backend::open_file() noexcept {
    // Never O_TRUNC: a contender must not touch the holder's content.
    const int flags = (read_only_ ? O_RDONLY : O_RDWR) | O_CREAT | O_CLOEXEC | O_NOCTTY |
                      O_NONBLOCK | (nofollow_ ? O_NOFOLLOW : 0);
    const char* p = path_.c_str();
    // Stamped before the open: a fork that may have copied the descriptor
    // always shows.
    const fork_stamp stamp = fork_stamp::now();
    fd_generation_ = stamp.generation;
    fd_forks_ = stamp.forks;
    fd_ = retry_eintr([&] { return sys().open(p, flags, static_cast<mode_t>(file_mode_)); });
    if (fd_ >= 0) return {};
    const int err = errno;
    if (err == ELOOP && nofollow_) {
        struct ::stat st {};
        if (sys().lstat(p, &st) == 0 && S_ISLNK(st.st_mode)) {
            failed_call_ = "open";
            return errc::symlink_not_followed;
        }
    }
    return fail(err, "open");
}

std::error_code file_backend::lock_nb() noexcept {
    int rc;
    if (ofd_) {
        rc = set_ofd_lock(fd_, shared_ ? F_RDLCK : F_WRLCK, range_.start, range_.length);
        // POSIX lets a conflicting fcntl lock fail with EACCES or EAGAIN.
        if (rc == -1 && (errno == EAGAIN || errno == EACCES)) return errc::locked;
        if (rc == -1) return fail(errno, "fcntl(F_OFD_SETLK)");
    } else {
        rc = retry_eintr([&] { return sys().flock(fd_, (shared_ ? LOCK_SH : LOCK_EX) | LOCK_NB); });
        if (rc == -1 && errno == EWOULDBLOCK) return errc::locked;
        if (rc == -1) return fail(errno, "flock");
    }
    return {};
}

std::error_code file_backend::try_acquire() noexcept {
    if (init_error_) return init_error_;
    // Attempts are made only on a descriptor opened since the last fork():
    // one shared with a parent or child would share a won lock with it.
    if (fd_ >= 0 && !fork_stamp{fd_generation_, fd_forks_}.is_private()) {
        close_fd();  // never unlocked: the other process's lock, if any
        won_ = false;
    }
    if (won_) return {};
    failed_call_ = nullptr;
    for (int round = 0; round < max_identity_rounds; ++round) {
        if (fd_ < 0) {
            if (auto ec = open_file()) return ec;
        }
        if (auto ec = lock_nb()) {
            // Contention keeps the descriptor for the next attempt: reopening
            // would generate close events that wake other waiters.
            if (ec != errc::locked) close_fd();
            return ec;
        }
        won_ = true;

        struct ::stat held {};
        if (sys().fstat(fd_, &held) != 0) {
            const int err = errno;
            unlock_and_close();
            return fail(err, "fstat");
        }
        if (!S_ISREG(held.st_mode)) {
            unlock_and_close();
            failed_call_ = "fstat";
            return S_ISDIR(held.st_mode) ? sys_error(EISDIR)
                                         : make_error_code(errc::not_a_regular_file);
        }
        if (!content_.empty()) {
            // Writing to /proc/sys/... changes kernel settings: never.
            bool pseudo = false;
            if (auto ec = check_pseudo(fd_, held.st_dev, pseudo)) {
                unlock_and_close();
                failed_call_ = "fstatfs";
                return ec;
            }
            if (pseudo) {
                unlock_and_close();
                return errc::pseudo_file;
            }
        }
        // The lock counts only if the path still names the locked file.
        struct ::stat named {};
        const int rc = (nofollow_ ? sys().lstat : sys().stat)(path_.c_str(), &named);
        if (rc != 0) {
            const int err = errno;
            unlock_and_close();
            if (err == ENOENT) continue;  // unlinked after we opened it: retry on a new file
            return fail(err, nofollow_ ? "lstat" : "stat");
        }
        if (named.st_dev != held.st_dev || named.st_ino != held.st_ino) {
            unlock_and_close();  // replaced: retry on the file the path names now
            continue;
        }
        dev_ = held.st_dev;
        ino_ = held.st_ino;
        bool write = !content_.empty();
        off_t old_size = held.st_size;  // what the truncation must cut
        if (write && held.st_size > 0) {
            // Only a lock holder's line is overwritten, never a script or data.
            bool holder_line = held.st_size <= static_cast<off_t>(max_holder_bytes);
            if (holder_line) {
                // One byte more than a holder line may have: a file that grew
                // since the fstat is seen as what it is now.
                char buf[max_holder_bytes + 1];
                const ssize_t n = retry_eintr([&] { return sys().pread(fd_, buf, sizeof buf, 0); });
                if (n < 0) {
                    const int err = errno;
                    unlock_and_close();
                    return fail(err, "pread");
                }
                const std::string_view old(buf, static_cast<std::size_t>(n));
                old_size = std::max(old_size, static_cast<off_t>(n));
                holder_line = is_holder_line(old);
                // Our own line already (this process locked it last): no
                // write needed, and the file's mtime stays.
                if (old == content_) write = false;
            }
            if (!holder_line) {
                if (!keep_foreign_) {
                    unlock_and_close();
                    return errc::foreign_content;
                }
                write = false;
            }
        }
        if (write) {
            // Truncate first (only what is left over: the fstat gave the
            // size), then write: whichever call fails, the file still holds
            // one line that is a prefix of a holder's, never foreign bytes.
            if (old_size > static_cast<off_t>(content_.size()) &&
                retry_eintr([&] {
                    return sys().ftruncate(fd_, static_cast<off_t>(content_.size()));
                }) != 0) {
                const int err = errno;
                unlock_and_close();
                return fail(err, "ftruncate");
            }
            std::size_t done = 0;
            while (done < content_.size()) {
                const ssize_t n = retry_eintr([&] {
                    return sys().pwrite(fd_, content_.data() + done, content_.size() - done,
                                        static_cast<off_t>(done));
                });
                if (n <= 0) {
                    const int err = n < 0 ? errno : EIO;
                    unlock_and_close();
                    return fail(err, "pwrite");
                }
                done += static_cast<std::size_t>(n);
            }
        }
        return {};
    }
    return errc::locked;  // the path keeps changing under us
}

bool file_backend::identity(lock_identity& id) const noexcept {
    struct ::stat st {};
    const int rc = fd_ >= 0    ? sys().fstat(fd_, &st)
                   : nofollow_ ? sys().lstat(path_.c_str(), &st)
                               : sys().stat(path_.c_str(), &st);
    if (rc != 0) return false;
    id.dev = st.st_dev;
    id.ino = st.st_ino;
    id.backend = ofd_ ? 1 : 0;
    id.start = range_.start;
    id.length = range_.length;
    return true;
}

std::string file_backend::holder() const noexcept {
    return fd_ >= 0 ? read_holder_handle(fd_) : read_holder_at(path_);
}

}  // namespace filelock::detail
