// SPDX-License-Identifier: MIT
#pragma once

// Who holds a lock file, and who waits for it: read, never taken.
//
//     auto st = filelock::inspect("app.lock");
//     for (auto& h : st.holders) std::cout << h.pid << "\n";
//
// On Linux the holders come from /proc/locks (every flock(2), OFD and POSIX
// lock on the file, whoever took it: flock(1), zc.lockfile, py-filelock,
// filelock), matched by the file's device and inode, and the lock file's
// content tells which of them wrote it (its `since` is the file's mtime).
// The waiters are filelock's own, in the order they registered in the
// cross-process queue (the sibling file "<path>.queue", see README), then
// the processes blocked in the kernel (flock(1) without -n, blocking
// flock(2)/fcntl callers: the `->` lines of /proc/locks).
//
// /proc/locks names an OFD lock's owner as pid -1: such owners are resolved by
// scanning the lock lines of /proc/<pid>/fdinfo/* (processes the caller may
// not read stay unknown: pid 0). A flock(2) lock names the process that
// took it, which may have exited while a child it forked still holds the
// descriptor (flock(1)'s COMMAND after flock(1) was killed); such a holder is
// resolved the same way. /proc/locks shows only the locks of processes in
// the caller's pid namespace and of this machine (not another NFS client's).
//
// On Windows nothing tells who holds a LockFileEx lock, only whether byte 0
// is locked (reading it fails with ERROR_LOCK_VIOLATION): inspect reports
// the content's holder as written (`verified` false) when it is, sees no
// waiters, and says so in `note`.
//
// A snapshot: it may be stale the moment it returns.

#include <filelock/export.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

namespace filelock {

/// How a process holds or waits for a lock.
enum class lock_kind {
    exclusive,  ///< the whole file, one holder (LOCK_EX, F_WRLCK)
    shared,     ///< the whole file, shared holders (LOCK_SH, F_RDLCK)
    slot,       ///< a byte range of the file (an OFD or POSIX range lock, a slot), or
                ///< filelock's waiter for one of N slots (lock_party::slots)
};

/// The kernel lock a party uses.
enum class lock_api {
    flock,    ///< flock(2) (filelock's default, zc.lockfile, flock(1), ...)
    ofd,      ///< an open-file-description fcntl lock
    posix,    ///< a classic per-process fcntl lock
    unknown,  ///< not known (Windows: the content's holder)
};

/// A holder or a waiter.
struct lock_party {
    /// The process id; 0 when unknown.
    long long pid = 0;
    /// The machine it runs on, when known (this machine's name for what the
    /// kernel reports; what the content says otherwise).
    std::string host;
    /// How it holds or waits.
    lock_kind kind = lock_kind::exclusive;
    /// The kernel lock it uses.
    lock_api api = lock_api::unknown;
    /// The first byte of a slot's range (`kind == slot`).
    std::uint64_t start = 0;
    /// The length of a slot's range; 0 runs to the end of the file.
    std::uint64_t length = 0;
    /// The slot it holds (lock_file::slot()), when its range is the byte
    /// `slot_offset + slot` (options.hpp). A slot holder of filelock also
    /// holds a shared flock(2) lock of the whole file on the same open file
    /// description: that lock is part of this holder, not another one.
    std::optional<unsigned> slot;
    /// A waiter for one of N slots (lock_options::slots) in filelock's
    /// queue: N, with `kind` slot, `start` slot_offset and `length` N (the
    /// bytes it may take); 0 for every other party. A slot waiter whose N
    /// cannot be read (a process this user may not read, or a build of
    /// filelock that did not record it) shows as `shared`: its ticket is a
    /// reader's.
    unsigned slots = 0;
    /// Since when it holds (the mtime of the content it wrote), when known.
    std::optional<std::chrono::system_clock::time_point> since;
    /// The content it wrote, when the lock file's content is this holder's.
    std::string content;
    /// Whether the kernel confirmed this party (false: only the content
    /// says so, which may be stale).
    bool verified = false;
    /// Waiters: the position in filelock's cross-process queue (1 is the
    /// head); 0 for a process blocked in the kernel.
    std::uint64_t ticket = 0;
};

/// What inspect() saw.
struct lock_status {
    /// The holders; several when shared or slots.
    std::vector<lock_party> holders;
    /// filelock's queued waiters in queue order, then the kernel's blocked
    /// callers (in /proc/locks order).
    std::vector<lock_party> waiters;
    /// The lock file's content (a holder's line, stripped), even when no
    /// live holder wrote it.
    std::string content;
    /// Whether the content belongs to a live holder; false when it is stale
    /// (an earlier holder's line) or unknown.
    bool content_live = false;
    /// Whether holders and waiters are all this platform can see of them
    /// (false on Windows, or on Linux without /proc/locks).
    bool complete = false;
    /// What could not be known, in a sentence; empty when everything was.
    std::string note;

    /// Whether someone holds the lock (as far as can be known).
    bool held() const noexcept { return !holders.empty(); }
};

/// Looks at the lock file `path` without taking or creating it. Throws
/// std::filesystem::filesystem_error naming the path and the cause
/// (no such file, no permission to stat it).
FILELOCK_API lock_status inspect(const std::filesystem::path& path);
/// As above, reporting failures through `ec` (cleared on success).
FILELOCK_API lock_status inspect(const std::filesystem::path& path, std::error_code& ec) noexcept;

/// The sibling file of filelock's cross-process queue for `path`
/// ("<path>.queue").
FILELOCK_API std::filesystem::path queue_path(const std::filesystem::path& path);

}  // namespace filelock
