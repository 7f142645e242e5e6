// SPDX-License-Identifier: MIT
#pragma once

// The platform seam, as the code above it sees it: what the facade, the
// content rules, the local queues and the drivers need from the system, with
// no system type in sight. src/posix/ and src/win32/ implement it (each with
// its own table of system calls for fault injection: src/sys.hpp,
// src/win32/sys.hpp); everything else compiles unchanged for both.

#include <filelock/detail/held_file.hpp>
#include <filelock/detail/local_queue.hpp>
#include <filelock/export.hpp>

#include <filesystem>
#include <mutex>
#include <string>
#include <system_error>

namespace filelock::detail {

/// The process's id, cached; refreshed in a forked child.
FILELOCK_API long long current_pid() noexcept;
/// Increments in every forked child: a lock taken under another generation
/// belongs to the parent. Always 0 where there is no fork().
FILELOCK_API unsigned fork_generation() noexcept;
/// Registers handlers run around fork() (pthread_atfork); nothing where
/// there is no fork().
void at_fork(void (*prepare)(), void (*parent)(), void (*child)()) noexcept;

/// Where a descriptor stands with respect to fork(): taken when it is opened
/// (before the open call), compared later. A descriptor is *private* while
/// this process has not forked since (a child shares its open file
/// description, and with it the lock) and is not itself a forked child's
/// copy.
struct fork_stamp {
    unsigned generation = 0;  // fork_generation() at open
    unsigned forks = 0;       // forks made by this process at open

    FILELOCK_API static fork_stamp now() noexcept;
    /// This process's copy, and no child has one.
    FILELOCK_API bool is_private() const noexcept;
    /// A forked child's copy of its parent's descriptor.
    FILELOCK_API bool inherited() const noexcept;
};

/// The descriptors that a forked child closes at the fork (src/posix/
/// fork_closed.hpp), for the lock file descriptors of pending attempts (from
/// their open on, see file_backend::open_fd): add and remove with its lock
/// held, which fork() holds too. Where there is no fork() the lock is empty
/// and nothing is ever added.
std::unique_lock<std::mutex> fork_closed_lock() noexcept;
/// Adds `fd` (false: not added, out of memory or no fork()).
bool fork_closed_add(native_handle_type fd) noexcept;
/// Takes `fd` off (its owner closes it or hands it over under the lock).
void fork_closed_remove(native_handle_type fd) noexcept;

/// Appends the machine's name (the `{hostname}` field).
std::error_code append_hostname(std::string& out);

/// The holder's content of the file at `path`, or "" (filelock::read_holder).
std::string read_holder_at(const std::filesystem::path& path) noexcept;

/// Releases a held lock: removes the file if asked (and only the file held),
/// unlocks (unless a forked child may share it), closes. `h.fd` is no_handle
/// afterwards.
void release_held(held_file& h) noexcept;

/// The identity of the lock `h` holds (the key of its local queues).
lock_identity identity_of(const held_file& h) noexcept;

}  // namespace filelock::detail
