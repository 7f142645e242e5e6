// SPDX-License-Identifier: MIT
#pragma once

// What the kernel says about the locks on a file: Linux's /proc/locks and
// the lock lines of /proc/<pid>/fdinfo/<fd>. Elsewhere nothing (available()
// is false). Exported for the tests, which feed the parser lines.

#include <filelock/export.hpp>
#include <filelock/inspect.hpp>

#include <cstdint>
#include <string_view>
#include <vector>

namespace filelock::detail::kernel {

/// One line of /proc/locks (or of an fdinfo's "lock:" line).
struct lock_line {
    bool blocked = false;  // a "->" line: a caller waiting for the lock
    lock_api api = lock_api::unknown;
    bool write = false;
    long long pid = 0;  // -1: an OFD lock's (no process); 0: another pid namespace
    unsigned major = 0, minor = 0;
    unsigned long long ino = 0;
    std::uint64_t start = 0;
    std::uint64_t end = 0;  // the last byte; UINT64_MAX: to the end of the file ("EOF")

    bool whole_file() const noexcept { return start == 0 && end == UINT64_MAX; }
};

/// Parses one line ("1: FLOCK  ADVISORY  WRITE 11869 fe:00:10953151 0 EOF",
/// "1: -> OFDLCK ADVISORY READ -1 08:01:42 5 5"). False for other kinds
/// (leases, delegations) and for what does not parse.
FILELOCK_API bool parse_lock_line(std::string_view line, lock_line& out) noexcept;

/// A file as the kernel's lock lines name it.
struct file_key {
    unsigned major = 0, minor = 0;
    unsigned long long ino = 0;

    friend bool operator==(const file_key&, const file_key&) = default;
};
/// The key of the file with this st_dev and st_ino.
FILELOCK_API file_key key_of(unsigned long long dev, unsigned long long ino) noexcept;

/// Whether this platform has /proc/locks to read.
FILELOCK_API bool available() noexcept;

/// The lines of /proc/locks about `files`, held and blocked, in its order.
/// False when it cannot be read.
FILELOCK_API bool read_locks(const std::vector<file_key>& files, std::vector<lock_line>& out);

/// Whether two readings found the same locks, in the same order (the
/// kernel's numbering of the lines aside).
FILELOCK_API bool same_lines(const std::vector<lock_line>& a, const std::vector<lock_line>& b);

/// Which processes own the held lock `l` according to their fdinfo (every
/// process sharing the open file description shows it). Processes that
/// cannot be read are skipped.
struct owner {
    long long pid = 0;
    int fd = -1;  // the descriptor: the locks of one (pid, fd) are one description's
    lock_line lock;
    std::uint64_t pos = 0;  // the description's file offset (fdinfo's "pos:")
};
/// Scans /proc/*/fdinfo/* once for the held locks on `files`.
FILELOCK_API std::vector<owner> scan_owners(const std::vector<file_key>& files);

/// Whether process `pid` exists (kill(pid, 0) succeeds or fails with EPERM).
FILELOCK_API bool alive(long long pid) noexcept;

}  // namespace filelock::detail::kernel
