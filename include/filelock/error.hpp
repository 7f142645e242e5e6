// SPDX-License-Identifier: MIT
#pragma once

// Errors of filelock.
//
// Every operation has two forms: one that throws and one that reports through
// an `std::error_code&`. Codes are either
//  - a `filelock::errc` (category "filelock"), for outcomes that are the
//    library's own: contention, an expired deadline, a bad content template,
//    a lock file that is not a regular file or is a symbolic link; or
//  - an errno value in `std::system_category()`, for everything the operating
//    system reported (EACCES, ENOENT, EISDIR, ENOLCK, ...). Such an error is
//    never reported as contention.
//
// The throwing forms throw
//  - `lock_error` on contention (what(): "Couldn't lock '<path>'", as
//    zc.lockfile's LockError), with the path and the holder's content;
//  - `timeout_error` (derived from lock_error) when a deadline passed;
//  - `std::system_error` when an asynchronous acquisition was cancelled
//    (its code matches `condition::cancelled`);
//  - `std::filesystem::filesystem_error` for every other error, naming the
//    path, the call that failed and the cause.
//
// Cancellation completes with each event loop's own code: Asio's
// `asio::error::operation_aborted`, the libuv adapter's
// `std::errc::operation_canceled`. They are not equal to each other (Asio's
// category does not even map to std::errc), but both compare equal to
// `filelock::condition::cancelled`:
//
//     if (ec == filelock::condition::cancelled) { ... }   // either loop

#include <filelock/export.hpp>

#include <filesystem>
#include <string>
#include <system_error>

namespace filelock {

/// The outcomes that are filelock's own (category "filelock").
enum class errc {
    /// Another holder has the lock (the single attempt of a constructor or
    /// `try_lock`). Compares equal to `std::errc::resource_unavailable_try_again`.
    locked = 1,
    /// The deadline of a timed acquisition passed while the lock was held
    /// elsewhere. Compares equal to `std::errc::timed_out`.
    timeout,
    /// The content template is malformed. Compares equal to
    /// `std::errc::invalid_argument`.
    invalid_template,
    /// The path names something other than a regular file (a FIFO, a device,
    /// a socket). Nothing is written to it.
    not_a_regular_file,
    /// The last component of the path is a symbolic link and the options do
    /// not allow following it (see `lock_options::follow_symlinks`).
    symlink_not_followed,
    /// The lock file is on a pseudo filesystem (proc, sysfs, cgroup, debugfs,
    /// tracefs, securityfs, configfs, ...), where writing a file changes
    /// kernel state: a lock that writes content refuses it. Nothing was
    /// written. Locks that write nothing may use such files.
    pseudo_file,
    /// The lock file holds something other than a lock holder's line (a
    /// script, a data file, ...): a lock that writes content refuses to
    /// overwrite it (see `lock_options::foreign_content`). Nothing was
    /// written.
    foreign_content,
    /// The option asked for has no meaning on this platform
    /// (`lock_backend::ofd` on Windows). Compares equal to
    /// `std::errc::operation_not_supported`.
    unsupported,
};

/// The category of `errc` codes, named "filelock". Its codes compare equal
/// to the std::errc conditions documented with each value.
FILELOCK_API const std::error_category& filelock_category() noexcept;

/// Makes `errc` values usable as `std::error_code` (found by ADL).
inline std::error_code make_error_code(errc e) noexcept {
    return {static_cast<int>(e), filelock_category()};
}

/// Conditions that group the codes several sources report for one outcome.
enum class condition {
    /// An asynchronous acquisition was cancelled: matches Asio's
    /// `asio::error::operation_aborted` and `std::errc::operation_canceled`
    /// (the libuv adapter's code) alike.
    cancelled = 1,
};

/// The category of `condition` values, named "filelock.condition".
FILELOCK_API const std::error_category& condition_category() noexcept;

/// Makes `condition` values usable as `std::error_condition` (found by ADL).
inline std::error_condition make_error_condition(condition c) noexcept {
    return {static_cast<int>(c), condition_category()};
}

/// Contention: the lock is held by someone else.
class FILELOCK_API lock_error : public std::system_error {
public:
    /// A lock_error with the code `ec` (errc::locked or errc::timeout).
    lock_error(std::error_code ec, std::filesystem::path path, std::string holder);
    /// Contention (errc::locked) on `path`, held by `holder`.
    lock_error(std::filesystem::path path, std::string holder);

    /// The lock file's path as given.
    const std::filesystem::path& path() const noexcept { return path_; }
    /// The holder's content as read from the lock file when the attempt
    /// failed, without the surrounding whitespace (e.g. "1234" or
    /// "1234;host"); at most 1 KiB; empty if the holder wrote nothing.
    /// The live holder's: see read_holder() in lock_file.hpp.
    const std::string& holder() const noexcept { return holder_; }
    /// "Couldn't lock '<path>'" (contention) or "Timed out waiting to lock
    /// '<path>'" (timeout).
    const char* what() const noexcept override { return what_.c_str(); }

private:
    std::filesystem::path path_;
    std::string holder_;
    std::string what_;
};

/// A timed acquisition's deadline passed (`errc::timeout`).
class FILELOCK_API timeout_error : public lock_error {
public:
    /// The deadline passed while `holder` held the lock on `path`.
    timeout_error(std::filesystem::path path, std::string holder);
};

namespace detail {
/// Throws the exception that matches `ec` (see the top of this header).
/// `call` names the system call that failed, or nullptr.
[[noreturn]] FILELOCK_API void throw_error(std::error_code ec, const std::filesystem::path& path,
                                           std::string holder = {}, const char* call = nullptr);
}  // namespace detail

}  // namespace filelock

/// @cond
template <>
struct std::is_error_code_enum<filelock::errc> : std::true_type {};

template <>
struct std::is_error_condition_enum<filelock::condition> : std::true_type {};
/// @endcond
