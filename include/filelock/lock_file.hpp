// SPDX-License-Identifier: MIT
#pragma once

// Inter-process locks held on lock files, with the semantics of Python's
// zc.lockfile (`LockFile`, `SimpleLockFile`, `LockError` are `lock_file`,
// `simple_lock_file`, `lock_error` here).
//
//     filelock::lock_file lock("app.lock");            // one attempt, or lock_error
//     auto lock = filelock::lock("app.lock", 5s);      // retries until won or 5 s passed
//
// What holds, whatever the entry point:
//  - The lock file is created if missing (mode `options.file_mode & ~umask`)
//    and never removed. It is opened without O_TRUNC, and content is written
//    only after the lock was won, so a contender never modifies a holder's
//    file.
//  - A won lock is verified to be on the file the path names now (same device
//    and inode). If another tool unlinked or replaced the file in between, the
//    attempt releases it and tries again on the new file.
//  - Locks belong to the open file description (flock or OFD, never classic
//    per-process fcntl locks): two attempts in one process exclude each other,
//    across threads and coroutines. Descriptors are O_CLOEXEC: an exec'd child
//    never holds the lock.
//  - fork(): a child shares the parent's open file description. A lock_file
//    remembers the process that took the lock; closing or destroying it in
//    any other process (the forked child) only closes that process's
//    descriptor and leaves the parent's lock alone.
//  - A process that dies releases its locks (the kernel does it).

#include <filelock/detail/held_file.hpp>
#include <filelock/error.hpp>
#include <filelock/export.hpp>
#include <filelock/options.hpp>

#include <chrono>
#include <filesystem>
#include <system_error>

/// Inter-process locks on lock files: zc.lockfile's semantics as a
/// synchronous API (lock_file, simple_lock_file, try_lock, lock), and
/// `co_await` acquisition on Asio (async_lock) and libuv (filelock::uv).
namespace filelock {

class lock_file;
namespace detail {
/// A lock_file holding what the primitive won.
FILELOCK_API lock_file adopt(held_file&& h) noexcept;
}  // namespace detail

/// A held lock (or, default-constructed / moved-from / closed, no lock).
/// Move-only; the destructor releases.
class FILELOCK_API lock_file {
public:
    /// The kind of descriptor holding the lock: a POSIX file descriptor, or
    /// a HANDLE on Windows.
    using native_handle_type = detail::native_handle_type;

    /// Holds nothing.
    lock_file() noexcept = default;

    /// Makes exactly one non-blocking attempt (zc.lockfile's `LockFile`).
    /// On success writes `" " + expanded content_template + "\n"` at offset 0
    /// and truncates after it (unless `options.write_content` is false or the
    /// lock is shared).
    /// Throws lock_error on contention, std::filesystem::filesystem_error
    /// (naming the path, the call and the cause) on any other failure.
    explicit lock_file(const std::filesystem::path& path, const lock_options& options = {});

    /// Takes over `other`'s lock; `other` holds nothing afterwards.
    lock_file(lock_file&& other) noexcept;
    /// Releases the lock held (if any), then takes over `other`'s.
    lock_file& operator=(lock_file&& other) noexcept;
    lock_file(const lock_file&) = delete;
    lock_file& operator=(const lock_file&) = delete;
    ~lock_file();

    /// Releases the lock (unlock, then close the descriptor). Idempotent.
    /// The lock file stays (unless the options asked for remove_on_release).
    void close() noexcept;

    /// The path the lock was taken on (empty when nothing was ever held).
    const std::filesystem::path& path() const noexcept { return h_.path; }
    /// The descriptor holding the lock, or -1 (nullptr on Windows).
    native_handle_type native_handle() const noexcept { return h_.fd; }
    /// Whether a lock is held (not closed, not moved from).
    bool is_locked() const noexcept { return h_.fd != detail::no_handle; }
    /// is_locked().
    explicit operator bool() const noexcept { return is_locked(); }
    /// The slot held, from 0 to `options.slots - 1` (see lock_options::slots);
    /// 0 for a one-holder lock and when nothing is held.
    unsigned slot() const noexcept { return h_.slot; }

private:
    friend lock_file detail::adopt(detail::held_file&& h) noexcept;

    detail::held_file h_;
};

/// zc.lockfile's `SimpleLockFile`: the same lock, writing nothing. Works on a
/// lock file the caller may only read (it is opened read-only, as flock(1)
/// does). Follows symbolic links, since nothing is written.
class FILELOCK_API simple_lock_file : public lock_file {
public:
    simple_lock_file() noexcept = default;
    /// One attempt; `options.write_content` is ignored (always false).
    explicit simple_lock_file(const std::filesystem::path& path, lock_options options = {});
};

namespace detail {
FILELOCK_API lock_file try_lock_once(const std::filesystem::path& path, const lock_options& options,
                                     std::error_code& ec) noexcept;
FILELOCK_API lock_file lock_timed(const std::filesystem::path& path,
                                  std::chrono::nanoseconds timeout, const lock_options& options);
FILELOCK_API lock_file lock_timed(const std::filesystem::path& path,
                                  std::chrono::nanoseconds timeout, const lock_options& options,
                                  std::error_code& ec) noexcept;

/// The type of filelock::try_lock.
struct try_lock_fn {
    /// One non-blocking attempt that never throws: on contention `ec` is
    /// `errc::locked`; on any other failure the system's error (or a
    /// filelock::errc). Returns a held lock on success, an empty one
    /// otherwise.
    lock_file operator()(const std::filesystem::path& path, const lock_options& options,
                         std::error_code& ec) const noexcept {
        return try_lock_once(path, options, ec);
    }
    /// As above with default options.
    lock_file operator()(const std::filesystem::path& path, std::error_code& ec) const noexcept {
        return try_lock_once(path, lock_options{}, ec);
    }
};

/// The type of filelock::lock.
struct lock_fn {
    /// Timed acquisition: attempts until the lock is won or `timeout`
    /// passed, sleeping between attempts with the options' backoff (a last
    /// attempt is made at the deadline). `timeout <= 0` is exactly one
    /// attempt; `wait_forever` never gives up. An expired deadline,
    /// including the single attempt of `timeout == 0`, throws timeout_error
    /// (a lock_error); other errors throw at once, never retried (see
    /// error.hpp).
    lock_file operator()(const std::filesystem::path& path, std::chrono::nanoseconds timeout,
                         const lock_options& options = {}) const {
        return lock_timed(path, timeout, options);
    }
    /// As above, reporting through `ec`: `errc::timeout` (==
    /// std::errc::timed_out) when the deadline passed, the error otherwise.
    lock_file operator()(const std::filesystem::path& path, std::chrono::nanoseconds timeout,
                         const lock_options& options, std::error_code& ec) const noexcept {
        return lock_timed(path, timeout, options, ec);
    }
    /// As above with default options.
    lock_file operator()(const std::filesystem::path& path, std::chrono::nanoseconds timeout,
                         std::error_code& ec) const noexcept {
        return lock_timed(path, timeout, lock_options{}, ec);
    }
};
}  // namespace detail

/// One non-blocking attempt that never throws (see detail::try_lock_fn):
///
///     std::error_code ec;
///     auto lock = filelock::try_lock("app.lock", ec);   // ec == errc::locked on contention
///
/// A function object, not a function: with `using namespace filelock;` an
/// unqualified `try_lock(path, ec)` never resolves to std::try_lock through
/// argument-dependent lookup.
inline constexpr detail::try_lock_fn try_lock{};

/// Timed acquisition (see detail::lock_fn):
///
///     auto lock = filelock::lock("app.lock", 5s);            // throws timeout_error
///     auto lock = filelock::lock("app.lock", 5s, {}, ec);    // never throws
///
/// A function object, not a function: an unqualified `lock(path, timeout)`
/// never resolves to std::lock through argument-dependent lookup.
inline constexpr detail::lock_fn lock{};

/// The content of the lock file at `path` as a holder wrote it (surrounding
/// whitespace stripped, at most 1 KiB read), or an empty string if it cannot
/// be read. For messages only: it may change at any moment. On Linux, a
/// holder's line (" 1234\n") that names no live holder of the lock (an
/// earlier holder's, left after its release, while flock(1) holds the lock
/// now) is replaced by the pid of the holder /proc/locks shows, or "" when
/// none can be named (see filelock/inspect.hpp).
FILELOCK_API std::string read_holder(const std::filesystem::path& path) noexcept;

}  // namespace filelock
