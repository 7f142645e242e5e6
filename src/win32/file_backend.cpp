// SPDX-License-Identifier: MIT
// The Windows lock primitive: one non-blocking LockFileEx attempt on byte 0
// of a lock file (the byte zc.lockfile and py-filelock lock with
// msvcrt.locking), the identity check, and the content written after
// winning. Byte 0 is locked, so others read a holder's line from offset 1:
// the leading space of " {pid}\n" is what they cannot read.
#include <filelock/detail/file_backend.hpp>

#include "../content.hpp"
#include "sys.hpp"

#include <algorithm>
#include <utility>

namespace filelock::detail {
namespace {

// How often one attempt follows a path whose file is being deleted or
// replaced under it before it counts as contention.
constexpr int max_identity_rounds = 16;

constexpr DWORD share_all = FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE;

HANDLE handle_of(native_handle_type h) noexcept { return static_cast<HANDLE>(h); }

OVERLAPPED at_offset(unsigned long long offset) noexcept {
    OVERLAPPED o{};
    o.Offset = static_cast<DWORD>(offset & 0xffffffffULL);
    o.OffsetHigh = static_cast<DWORD>(offset >> 32);
    return o;
}

unsigned long long index_of(const BY_HANDLE_FILE_INFORMATION& info) noexcept {
    return (static_cast<unsigned long long>(info.nFileIndexHigh) << 32) | info.nFileIndexLow;
}

// Opens what `path` names now for its identity alone (no data access: works
// while others lock it).
HANDLE open_for_identity(const std::filesystem::path& path, bool nofollow) noexcept {
    return sys().create_file(
        path.c_str(), FILE_READ_ATTRIBUTES, share_all, OPEN_EXISTING,
        FILE_FLAG_BACKUP_SEMANTICS | (nofollow ? FILE_FLAG_OPEN_REPARSE_POINT : 0));
}

// Reads up to `n` bytes at `offset`; the count, or -1 (GetLastError()).
long long read_at(HANDLE h, char* buf, std::size_t n, unsigned long long offset) noexcept {
    OVERLAPPED o = at_offset(offset);
    DWORD done = 0;
    if (!sys().read_file(h, buf, static_cast<DWORD>(n), &done, &o))
        return ::GetLastError() == ERROR_HANDLE_EOF ? 0 : -1;
    return done;
}

void unlock_handle(HANDLE h) noexcept {
    OVERLAPPED o = at_offset(0);
    (void)sys().unlock_file_ex(h, 1, 0, &o);
}

}  // namespace

std::error_code file_backend::fail(int err, const char* call) noexcept {
    failed_call_ = call;
    return win32_error(static_cast<DWORD>(err));
}

void file_backend::close_fd() noexcept {
    if (fd_ != no_handle) sys().close_handle(handle_of(fd_));
    fd_ = no_handle;
}

void file_backend::unlock_and_close() noexcept {
    if (fd_ != no_handle) {
        unlock_handle(handle_of(fd_));
        sys().close_handle(handle_of(fd_));
    }
    fd_ = no_handle;
    won_ = false;
}

bool file_backend::won_inherited() const noexcept { return false; }  // no fork()

std::error_code file_backend::open_file() noexcept {
    // OPEN_ALWAYS: created if missing, never truncated. Every sharing mode:
    // others open, read, write and delete while we hold (the lock, not the
    // sharing mode, is what excludes).
    const DWORD access = read_only_ ? GENERIC_READ : GENERIC_READ | GENERIC_WRITE;
    const DWORD flags = FILE_ATTRIBUTE_NORMAL | (nofollow_ ? FILE_FLAG_OPEN_REPARSE_POINT : 0);
    const HANDLE h = sys().create_file(path_.c_str(), access, share_all, OPEN_ALWAYS, flags);
    if (h == INVALID_HANDLE_VALUE) {
        const DWORD err = ::GetLastError();
        // A process that opened the file without sharing it (rare: Python's
        // open() shares reading and writing) holds it as a lock would.
        if (err == ERROR_SHARING_VIOLATION) return errc::locked;
        if (err == ERROR_ACCESS_DENIED) {
            const DWORD attrs = sys().get_file_attributes(path_.c_str());
            if (attrs != INVALID_FILE_ATTRIBUTES && (attrs & FILE_ATTRIBUTE_DIRECTORY)) {
                failed_call_ = "CreateFileW";
                return std::make_error_code(std::errc::is_a_directory);
            }
        }
        return fail(static_cast<int>(err), "CreateFileW");
    }
    fd_ = h;
    if (sys().get_file_type(h) != FILE_TYPE_DISK) {  // a device, a pipe, a console
        close_fd();
        failed_call_ = "GetFileType";
        return errc::not_a_regular_file;
    }
    if (nofollow_) {
        BY_HANDLE_FILE_INFORMATION info{};
        if (!sys().get_file_information(h, &info)) {
            const DWORD err = ::GetLastError();
            close_fd();
            return fail(static_cast<int>(err), "GetFileInformationByHandle");
        }
        if (info.dwFileAttributes & FILE_ATTRIBUTE_REPARSE_POINT) {  // a symbolic link
            close_fd();
            failed_call_ = "CreateFileW";
            return errc::symlink_not_followed;
        }
    }
    return {};
}

std::error_code file_backend::lock_nb() noexcept {
    OVERLAPPED o = at_offset(0);
    const DWORD flags = LOCKFILE_FAIL_IMMEDIATELY | (shared_ ? 0 : LOCKFILE_EXCLUSIVE_LOCK);
    if (sys().lock_file_ex(handle_of(fd_), flags, 1, 0, &o)) return {};
    const DWORD err = ::GetLastError();
    if (err == ERROR_LOCK_VIOLATION || err == ERROR_IO_PENDING) return errc::locked;
    return fail(static_cast<int>(err), "LockFileEx");
}

std::error_code file_backend::try_acquire() noexcept {
    if (init_error_) return init_error_;
    if (ofd_) {  // open file description locks are Linux's
        failed_call_ = "LockFileEx";
        return errc::unsupported;
    }
    if (won_) return {};
    failed_call_ = nullptr;
    for (int round = 0; round < max_identity_rounds; ++round) {
        if (fd_ == no_handle) {
            if (auto ec = open_file()) return ec;
        }
        if (auto ec = lock_nb()) {
            // Contention keeps the handle for the next attempt.
            if (ec != errc::locked) close_fd();
            return ec;
        }
        won_ = true;
        const HANDLE h = handle_of(fd_);
        BY_HANDLE_FILE_INFORMATION held{};
        if (!sys().get_file_information(h, &held)) {
            const DWORD err = ::GetLastError();
            unlock_and_close();
            return fail(static_cast<int>(err), "GetFileInformationByHandle");
        }
        // The lock counts only if the path still names the locked file.
        const HANDLE named = open_for_identity(path_, nofollow_);
        if (named == INVALID_HANDLE_VALUE) {
            const DWORD err = ::GetLastError();
            unlock_and_close();
            // Deleted after we opened it (gone, or still pending deletion
            // while handles stay open): retry on the file the path names.
            if (err == ERROR_FILE_NOT_FOUND || err == ERROR_ACCESS_DENIED) continue;
            return fail(static_cast<int>(err), "CreateFileW");
        }
        BY_HANDLE_FILE_INFORMATION now{};
        const BOOL ok = sys().get_file_information(named, &now);
        const DWORD err = ok ? 0 : ::GetLastError();
        sys().close_handle(named);
        if (!ok) {
            unlock_and_close();
            return fail(static_cast<int>(err), "GetFileInformationByHandle");
        }
        if (now.dwVolumeSerialNumber != held.dwVolumeSerialNumber ||
            index_of(now) != index_of(held)) {
            unlock_and_close();  // replaced: retry on the file the path names now
            continue;
        }
        dev_ = held.dwVolumeSerialNumber;
        ino_ = index_of(held);
        if (content_.empty()) return {};
        const unsigned long long size =
            (static_cast<unsigned long long>(held.nFileSizeHigh) << 32) | held.nFileSizeLow;
        bool write = true;
        unsigned long long old_size = size;
        if (size > 0) {
            // Only a lock holder's line is overwritten, never a script or data.
            bool holder_line = size <= max_holder_bytes;
            if (holder_line) {
                char buf[max_holder_bytes + 1];
                const long long n = read_at(h, buf, sizeof buf, 0);
                if (n < 0) {
                    const DWORD rerr = ::GetLastError();
                    unlock_and_close();
                    return fail(static_cast<int>(rerr), "ReadFile");
                }
                const std::string_view old(buf, static_cast<std::size_t>(n));
                old_size = std::max(old_size, static_cast<unsigned long long>(n));
                holder_line = is_holder_line(old);
                if (old == content_) write = false;  // our own line already
            }
            if (!holder_line) {
                if (!keep_foreign_) {
                    unlock_and_close();
                    return errc::foreign_content;
                }
                write = false;
            }
        }
        if (!write) return {};
        // Truncate first, then write: whichever call fails, the file holds
        // a prefix of a holder's line, never foreign bytes.
        if (old_size > content_.size() &&
            !sys().set_end_of_file(h, static_cast<LONGLONG>(content_.size()))) {
            const DWORD werr = ::GetLastError();
            unlock_and_close();
            return fail(static_cast<int>(werr), "SetEndOfFile");
        }
        std::size_t done = 0;
        while (done < content_.size()) {
            OVERLAPPED o = at_offset(done);
            DWORD n = 0;
            if (!sys().write_file(h, content_.data() + done,
                                  static_cast<DWORD>(content_.size() - done), &n, &o) ||
                n == 0) {
                const DWORD werr =
                    n == 0 && ::GetLastError() == 0 ? ERROR_WRITE_FAULT : ::GetLastError();
                unlock_and_close();
                return fail(static_cast<int>(werr), "WriteFile");
            }
            done += n;
        }
        return {};
    }
    return errc::locked;  // the path keeps changing under us
}

bool file_backend::identity(lock_identity& id) const noexcept {
    BY_HANDLE_FILE_INFORMATION info{};
    if (fd_ != no_handle) {
        if (!sys().get_file_information(handle_of(fd_), &info)) return false;
    } else {
        const HANDLE h = open_for_identity(path_, nofollow_);
        if (h == INVALID_HANDLE_VALUE) return false;
        const BOOL ok = sys().get_file_information(h, &info);
        sys().close_handle(h);
        if (!ok) return false;
    }
    id.dev = info.dwVolumeSerialNumber;
    id.ino = index_of(info);
    id.backend = 0;
    return true;
}

std::string file_backend::holder() const noexcept {
    return fd_ != no_handle ? read_holder_handle(fd_) : read_holder_at(path_);
}

void release_held(held_file& h) noexcept {
    if (h.fd == no_handle) return;
    const HANDLE handle = handle_of(std::exchange(h.fd, no_handle));
    if (h.remove) {
        // Deleted while still held, and only the file held: a waiter that
        // then wins this file sees that the path no longer names it.
        const HANDLE named = open_for_identity(h.path, true);
        if (named != INVALID_HANDLE_VALUE) {
            BY_HANDLE_FILE_INFORMATION info{};
            const bool same = sys().get_file_information(named, &info) &&
                              info.dwVolumeSerialNumber == h.dev && index_of(info) == h.ino;
            sys().close_handle(named);
            if (same) sys().delete_file(h.path.c_str());
        }
    }
    unlock_handle(handle);
    sys().close_handle(handle);
}

std::error_code append_hostname(std::string& out) {
    wchar_t name[256] = {};
    DWORD size = 256;
    if (!sys().get_computer_name(name, &size)) return win32_error(::GetLastError());
    out += narrow(name, size);
    return {};
}

std::string read_holder_handle(native_handle_type h) noexcept {
    try {
        // From offset 1: byte 0 is the one a holder locks.
        char buf[max_holder_bytes];
        const long long n = read_at(handle_of(h), buf, sizeof buf - 1, 1);
        return n > 0 ? holder_from_bytes(std::string_view(buf, static_cast<std::size_t>(n))) : "";
    } catch (...) {
        return {};
    }
}

std::string read_holder_at(const std::filesystem::path& path) noexcept {
    const HANDLE h = sys().create_file(path.c_str(), GENERIC_READ, share_all, OPEN_EXISTING,
                                       FILE_ATTRIBUTE_NORMAL);
    if (h == INVALID_HANDLE_VALUE) return {};
    std::string holder;
    if (sys().get_file_type(h) == FILE_TYPE_DISK) holder = read_holder_handle(h);
    sys().close_handle(h);
    return holder;
}

}  // namespace filelock::detail
