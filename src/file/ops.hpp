// SPDX-License-Identifier: MIT
#pragma once

// The platform seam under the file backend: what an attempt asks of the
// system, as values, with no decisions. The rules (identity rounds, the
// content decision, truncate-then-write, which failure is whose) are written
// once above it (src/file/attempt.cpp); src/file/posix/ops.cpp and
// src/file/win32/ops.cpp answer it, each through its table of system calls
// (src/posix/sys.hpp, src/win32/sys.hpp). Tests answer it from a script.

#include <filelock/detail/held_file.hpp>
#include <filelock/error.hpp>
#include <filelock/export.hpp>
#include <filelock/options.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <system_error>

namespace filelock::detail::file {

/// A failed call: its error, and its name for the message (nullptr: an
/// outcome that is no call's, such as contention). `gone`: the path names
/// no file (any more), or one being deleted.
struct failure {
    std::error_code ec;
    const char* call = nullptr;
    bool gone = false;

    explicit operator bool() const noexcept { return static_cast<bool>(ec); }
};

/// Which lock: the platform's whole-file lock (flock(2); LockFileEx on byte
/// 0, zc.lockfile's, on Windows) or a byte-range lock of the descriptor on
/// `range` (an OFD lock; on Windows a LockFileEx lock of `range`, which must
/// not be empty: only slots ask for one there).
struct lock_spec {
    bool ofd = false;
    bool shared = false;
    byte_range range{};
};

/// How to open the lock file: created if missing, never truncated.
struct open_spec {
    bool writable = false;
    bool nofollow = false;  // fail with errc::symlink_not_followed on a link
    unsigned mode = 0666;   // POSIX permission bits of a created file
};

enum class file_type { regular, directory, other };

/// What identifies a file and what the content decision needs.
struct file_info {
    unsigned long long dev = 0, ino = 0;
    std::uint64_t size = 0;
    file_type type = file_type::regular;
};

class ops {
public:
    /// Where a holder's line is read by others: byte 0 on Windows is the one
    /// a holder locks, so others read from offset 1.
    virtual std::uint64_t holder_offset() const noexcept = 0;
    /// {} when the platform can take the lock `s`, else why not (before any
    /// file is touched).
    virtual failure supports(const lock_spec& s) const noexcept = 0;
    /// Opens `path`; `h` is no_handle on failure. A file that is open in a
    /// way that excludes us (a Windows sharing mode) is errc::locked.
    virtual failure open(const std::filesystem::path& path, const open_spec& o,
                         native_handle_type& h) const noexcept = 0;
    /// Opens an existing regular file for reading its holder.
    virtual failure open_to_read(const std::filesystem::path& path,
                                 native_handle_type& h) const noexcept = 0;
    /// One non-blocking attempt: errc::locked on contention.
    virtual failure try_lock(native_handle_type h, const lock_spec& s) const noexcept = 0;
    virtual failure info(native_handle_type h, file_info& out) const noexcept = 0;
    /// The file `path` names now (its last component's link itself if
    /// `nofollow`).
    virtual failure info_at(const std::filesystem::path& path, bool nofollow,
                            file_info& out) const noexcept = 0;
    /// The error for a locked handle that is not a regular file.
    virtual failure not_regular(file_type t) const noexcept = 0;
    /// The filesystem type (statfs f_type) of the file behind `h`, or 0 where
    /// it cannot be a pseudo filesystem (no call made).
    virtual failure fs_type(native_handle_type h, const file_info& f,
                            long& magic) const noexcept = 0;
    /// Up to `size` bytes at `offset`; `n` is 0 at the end of the file.
    virtual failure read_at(native_handle_type h, char* buf, std::size_t size, std::uint64_t offset,
                            std::size_t& n) const noexcept = 0;
    virtual failure truncate(native_handle_type h, std::uint64_t size) const noexcept = 0;
    /// Writes at least one byte of `size` at `offset` (`n`: how many), or
    /// fails.
    virtual failure write_at(native_handle_type h, const char* buf, std::size_t size,
                             std::uint64_t offset, std::size_t& n) const noexcept = 0;
    virtual void remove(const std::filesystem::path& path) const noexcept = 0;
    /// Unlocks `s` on `h` (the descriptor stays open).
    virtual void unlock(native_handle_type h, const lock_spec& s) const noexcept = 0;
    /// The processes holding whole-file locks (flock(2)) on the file `f`, as
    /// the system lists them (Linux: /proc/locks), separated by ", "; "" where
    /// the system does not tell.
    virtual std::string flock_holders(const file_info& f) const noexcept = 0;
    /// Unlocks `s` on `h`, then closes it.
    virtual void unlock_close(native_handle_type h, const lock_spec& s) const noexcept = 0;
    /// Closes `h` without unlocking (never retried).
    virtual void close(native_handle_type h) const noexcept = 0;

protected:
    ~ops() = default;
};

/// This platform's answers (src/file/posix/ops.cpp, src/file/win32/ops.cpp).
const ops& platform_ops() noexcept;

/// Releases a held lock through `os`: removes the file if asked (and only the
/// file held), unlocks (unless a forked child may share it), closes.
FILELOCK_API void release_held(const ops& os, held_file& h) noexcept;

/// Whether the content of `h`'s file, `f`, may be read: a regular file on a
/// filesystem of files (reading some /proc files consumes what they hold:
/// /proc/kmsg).
bool content_readable(const ops& os, native_handle_type h, const file_info& f) noexcept;

/// The holder's content read through `h` (bounded), or "".
std::string read_holder_handle(const ops& os, native_handle_type h) noexcept;

}  // namespace filelock::detail::file
