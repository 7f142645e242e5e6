// SPDX-License-Identifier: MIT
#pragma once

// The cross-process queue of a lock file: waiters of filelock processes on
// one machine are served in the order they began waiting, with no daemon.
// Here only because file_backend holds one (its size); users never name it.
//
// A waiter registers at its second contention (a single attempt never does)
// by taking a ticket: an OFD write lock on one byte of the sibling file
// "<lock file>.queue", at the offset one past the highest ticket held
// (found with F_OFD_GETLK; a ticket taken by another in between makes it
// try the next byte). The kernel drops the ticket when the waiter closes the
// descriptor or dies, so a dead waiter leaves the queue at once. The file is
// never written: it stays empty. Only the head (no lower ticket held)
// attempts; the others answer contention without touching the lock.
//
// Exclusion never depends on it: every holder still wins the kernel lock on
// the lock file, tools outside the queue (flock(1), zc.lockfile) still take
// a free lock, and a deleted or unusable queue file only costs the order.
// A head that stops attempting (a stopped process, a stalled event loop) is
// seen by the others: the head flips its ticket between write and read lock
// at each attempt, and a waiter that sees the same head unchanged for
// `stall_limit` (and still `confirm_stall` later) attempts too (then once
// per stall_limit), so nobody waits on
// a free lock for longer than that because of a head that does not progress.
//
// Linux only (OFD locks); elsewhere it never registers.

#include <filelock/detail/backoff.hpp>
#include <filelock/export.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>

namespace filelock::detail {

class FILELOCK_API process_queue {
public:
    /// How long a head may make no attempt before the others attempt too.
    static constexpr std::chrono::milliseconds stall_limit{2000};
    /// How much later a stall seen is confirmed before attempting.
    static constexpr std::chrono::milliseconds confirm_stall{50};

    process_queue() noexcept = default;
    process_queue(process_queue&& other) noexcept;
    process_queue& operator=(process_queue&&) = delete;
    ~process_queue() { leave(); }

    /// Whether the waiter may attempt now: not registered, the head, or the
    /// head stalled. A head's call is its heartbeat.
    bool may_attempt(clock::time_point now) noexcept;
    /// An attempt met contention: registers at the second one (the lock
    /// file `lock_path`, created files get `mode`).
    void contended(const std::filesystem::path& lock_path, unsigned mode,
                   clock::time_point now) noexcept;
    /// Leaves the queue (won, gave up, or destroyed). Idempotent.
    void leave() noexcept;
    /// The ticket held (0: not registered).
    std::uint64_t ticket() const noexcept { return ticket_; }

private:
    int fd_ = -1;
    std::uint64_t ticket_ = 0;
    unsigned contentions_ = 0;
    bool unusable_ = false;  // no queue for this waiter (cannot create, no OFD locks)
    bool write_ = true;      // the ticket's lock type now (the heartbeat flips it)
    // the head last seen and since when (stall detection)
    std::uint64_t head_ = 0;
    bool head_write_ = false;
    clock::time_point head_since_{};
    clock::time_point suspect_since_{};
    bool suspect_ = false;
    // fork bookkeeping of fd_ (see fork_stamp in src/platform.hpp)
    unsigned generation_ = 0, forks_ = 0;
};

}  // namespace filelock::detail
