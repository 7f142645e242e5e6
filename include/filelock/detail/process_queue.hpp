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
// at each attempt that fails (one that wins leaves the queue), and a waiter
// that sees the same head unchanged for `stall_limit` (and still
// `confirm_stall` later) attempts too (then once per stall_limit), so nobody
// waits on a free lock for longer than that because of a head that does not
// progress (and a timed wait's last attempt, at its deadline, is made on the
// lock whatever the queue says: see acquire::attempt). A waiter whose process
// is stopped (SIGSTOP, ^Z, a debugger: state T or t in /proc/PID/stat, the
// PID its doorbell's listener, SO_PEERCRED) is passed at once: the waiter behind it waits for the
// nearest one before it whose process runs, and when none before it runs (the head and everyone up
// to it stopped) attempts beside them on the lock file's releases, for as long as they stay
// stopped. So stopped waiters, however many at the front, neither make every handoff behind them
// wait a stall nor keep the others off a free lock.
//
// A release wakes the head, not every waiting process: only the head
// watches the lock file. Every ticket comes with a doorbell, a listening
// unix socket in the abstract namespace named after the queue file and the
// ticket, that is never accepted from; a waiter behind others connects to
// its predecessor's (turn_handle()) and waits for that connection to hang
// up, which the kernel does when the predecessor gives up or dies, or
// releases the lock it won: a winner drops its ticket at once but keeps its
// doorbell with the lock (leave_won()), so that the next in line is woken
// once, when the lock is free, and the winner's own path closes nothing but
// its ticket (a doorbell name still held so is skipped by a registrant,
// which takes the next ticket). Then it looks again: the head watches the
// lock file, the others the doorbell of their new predecessor. A predecessor without a
// doorbell (no socket to be had, another network namespace) is waited for
// as before the doorbells, on the lock file's releases. Between doorbells a
// waiter looks at the head once a stall_limit (next_look()), for the stall
// rule above, which only the next in line applies (a stalled waiter further
// back is seen once it is the head).
//
// Readers (shared locks) line up too, so that a waiting writer is not
// starved by readers that keep the lock shared: a reader's ticket is even, a
// writer's odd. A reader attempts when no writer's ticket is below its own
// (readers before the first waiting writer all attempt), and waits for the
// doorbell of the last writer before it; a reader that is not registered yet
// and finds a writer waiting (writer_waits()) does not attempt, and counts it
// as a contended attempt (it registers at the second, as any waiter). A writer waits for every
// ticket before its own. Slot waiters are readers here (a slot holder holds the file shared): a
// free slot is not taken while a writer waits, so looping slot users do not starve it.
// inspect() tells a slot waiter from a shared one by the file offset of
// its descriptor of the queue file, set to its N (lseek; the file stays
// empty) before it takes its ticket; every other waiter's stays 0.
//
// fork(): a child never keeps a copy of the queue's descriptors (a
// waiter's ticket, its doorbell, its connection to a predecessor's, a
// winner's doorbell kept with its lock): a pthread_atfork child handler
// closes them at once, from a registry of those the process holds, and
// does nothing else (no unlock: the copies share the parent's locks). A
// copy would keep the ticket held and the doorbell listening after the
// waiter left or the lock was released, and its successors would wait a
// stall at a time for as long as the child lives. The parent's waiter keeps
// its ticket; the child's copy of it (whose thread or loop the child may not
// have) starts unregistered.
//
// Linux only (OFD locks); elsewhere it never registers.

#include <filelock/detail/backoff.hpp>
#include <filelock/export.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <utility>
#include <vector>

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
    /// head stalled. A head's call, then contended(), is its heartbeat.
    bool may_attempt(clock::time_point now) noexcept;
    /// An attempt met contention: a head's heartbeat; registers at the second one (the lock
    /// file `lock_path`, created files get `mode`), as a `reader` (a shared
    /// lock's or a slot's waiter) or a writer. A slot waiter's `slots` (its
    /// N, when more than 1) is recorded for inspect() as the offset of its
    /// queue file descriptor (fdinfo's "pos:"): nothing is written.
    void contended(const std::filesystem::path& lock_path, unsigned mode, clock::time_point now,
                   bool reader = false, unsigned slots = 1) noexcept;
    /// Whether a writer waits in the queue of `lock_path` (a reader that is
    /// not registered yet lines up behind it instead of attempting).
    bool writer_waits(const std::filesystem::path& lock_path) noexcept;
    /// Leaves the queue (gave up, or destroyed). Idempotent.
    void leave() noexcept;
    /// Leaves the queue on winning: the ticket goes now (the next in line is
    /// the head), the doorbell is handed over (-1: none), for close_bell()
    /// once the lock won is released: the next in line is woken then.
    int leave_won() noexcept;
    /// Closes a doorbell handed over by leave_won() (-1: nothing) in the
    /// fork generation of the lock won (fork_generation(), src/platform.hpp):
    /// a forked child's copy, closed at the fork, is left alone.
    static void close_bell(int bell, unsigned generation) noexcept;
    /// The ticket held (0: not registered).
    std::uint64_t ticket() const noexcept { return ticket_; }

    /// The waiter's turn: a descriptor that becomes readable when its
    /// predecessor leaves the queue (-1: it waits for the lock file's
    /// releases: the head, not registered, or no doorbell to connect to).
    int turn_handle() const noexcept { return turn_; }
    /// Whether what to wait for changed since the last call (the driver
    /// watches anew).
    bool retarget() noexcept { return std::exchange(retarget_, false); }
    /// While waiting for a turn: when to look at the head again (the stall
    /// rule); time_point{} otherwise.
    clock::time_point next_look() const noexcept {
        if (turn_ < 0) return {};
        return suspect_ ? suspect_since_ + confirm_stall : head_since_ + stall_limit;
    }

private:
    // The highest ticket held below `below` (a reader's: the last writer's).
    std::uint64_t predecessor(std::uint64_t below) const noexcept;
    std::uint64_t predecessor() const noexcept { return predecessor(ticket_); }
    // The process listening on the doorbell of ticket `t`, as told when we
    // connected to it (0: unknown).
    int pid_of(std::uint64_t t) const noexcept;
    struct known_pid;
    const known_pid* known(std::uint64_t t) const noexcept;
    void wait_behind(std::uint64_t predecessor) noexcept;
    void close_all() noexcept;
    void close_listed() noexcept;  // close_all(), the registry's mutex held
    // Out of the queue: the next contention counts from zero again.
    void forget() noexcept {
        ticket_ = 0;
        contentions_ = 0;
        beat_ = false;
        head_known_ = false;
        known_.clear();
    }

    int fd_ = -1;
    int bell_ = -1;             // our doorbell (a listening socket)
    int turn_ = -1;             // connected to the predecessor's doorbell
    std::uint64_t behind_ = 0;  // the predecessor turn_ is for (0: none)
    // The processes of tickets before ours, as their doorbells told (a
    // ticket below ours is never taken again while ours is held), each asked
    // once however many there are: a walk past stopped waiters that forgot
    // some would connect to them again at every look.
    struct known_pid {
        std::uint64_t ticket = 0;
        int pid = 0;
    };
    std::vector<known_pid> known_;
    bool retarget_ = false;
    unsigned long long dev_ = 0, ino_ = 0;  // of the queue file (the doorbells' names)
    std::uint64_t ticket_ = 0;
    unsigned contentions_ = 0;
    bool unusable_ = false;    // no queue for this waiter (cannot create, no OFD locks)
    bool reader_ = false;      // a shared lock's waiter: an even ticket (a writer's is odd)
    bool write_ = true;        // the ticket's lock type now (the heartbeat flips it)
    bool beat_ = false;        // the head attempts: flip the ticket if the attempt fails
    bool head_known_ = false;  // the head, as of the last look (may_attempt())
    // the head last seen and since when (stall detection)
    std::uint64_t head_ = 0;
    bool head_write_ = false;
    clock::time_point head_since_{};
    clock::time_point suspect_since_{};
    bool suspect_ = false;
    // The registry of waiters holding descriptors (fd_ >= 0), for fork.
    friend struct live_tickets;
    process_queue* prev_ = nullptr;
    process_queue* next_ = nullptr;
};

}  // namespace filelock::detail
