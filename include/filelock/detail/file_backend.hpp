// SPDX-License-Identifier: MIT
#pragma once

// The file backend of the acquire state machine: one non-blocking attempt on
// a lock file. Not installed: the library's drivers, filelock-run and the
// tests use it; the header-only Asio adapter runs it through
// file_acquisition.hpp, which keeps it inside the library. The rules live in
// src/file/ (the attempt over a platform seam, the content rules). It hands
// a won lock over as a held_file value; it never builds the facade.

#include <filelock/detail/acquire.hpp>
#include <filelock/detail/held_file.hpp>
#include <filelock/detail/local_queue.hpp>
#include <filelock/detail/process_queue.hpp>
#include <filelock/export.hpp>
#include <filelock/options.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <system_error>

namespace filelock::detail {

namespace file {
class ops;  // the platform seam (src/file/ops.hpp)
struct failure;
struct file_info;
}  // namespace file

/// What an attempt does, computed once from lock_options.
struct file_policy {
    lock_mode mode = lock_mode::exclusive;
    lock_backend backend = lock_backend::flock;
    byte_range range{};
    foreign_content on_foreign = foreign_content::fail;
    bool writable = false;  // opened for writing (content, or an exclusive OFD lock)
    bool nofollow = false;  // never through a symbolic link at the last component
    bool remove = false;    // remove_on_release, for a lock that may
    bool wake = true;       // wake_on_release
    bool queue = true;      // joins the local queue
    bool order = false;     // joins the cross-process queue (process_queue.hpp)
    unsigned file_mode = 0666;
    unsigned slots = 1;  // lock_options::slots (1: the one-holder lock)
};

class FILELOCK_API file_backend {
public:
    /// Validates and expands the content template; a bad one is reported by
    /// the first try_acquire(), before the file is touched.
    file_backend(const std::filesystem::path& path, const lock_options& options);
    /// The same over another platform seam (tests).
    file_backend(const std::filesystem::path& path, const lock_options& options,
                 const file::ops& os);
    file_backend(file_backend&& other) noexcept;
    file_backend& operator=(file_backend&&) = delete;
    ~file_backend();

    /// Delays of the quick retries after a release event: inotify reports a
    /// holder's close just before the kernel drops its lock.
    static constexpr clock::duration quick_retries[] = {std::chrono::microseconds(20),
                                                        std::chrono::microseconds(100),
                                                        std::chrono::microseconds(500)};

    /// One attempt: {} = won (take() it), errc::locked = contention (the
    /// descriptor stays open for the next attempt; a forked child closes its
    /// copy at the fork), anything else = error (nothing held, nothing open).
    std::error_code try_acquire() noexcept;
    /// Attempts never send requests.
    std::error_code on_reply(std::error_code) noexcept { return errc::locked; }
    /// Gives a won lock back (a cancellation came before it was handed over).
    void release_won() noexcept { unlock_and_close(); }
    /// The next attempt is a timed wait's last: made on the lock whatever
    /// the cross-process queue says (see acquire::attempt).
    void at_deadline() noexcept { at_deadline_ = true; }
    /// The lock's identity: the open file's device and inode (or those of the
    /// file the path names now, before the first open), and the backend.
    bool identity(lock_identity& id) const noexcept;

    /// The file was unlinked or replaced while we waited on it: the next
    /// attempt opens the path anew instead of waiting on the old file.
    void drop_file() noexcept {
        if (!won_) close_fd();
    }

    /// Whether the lock was won on a descriptor this process inherited from
    /// its parent through fork() (the parent's lock, not ours): the next
    /// try_acquire() closes it, without unlocking, and attempts on a
    /// descriptor of its own.
    bool won_inherited() const noexcept;

    /// The lock won by the last successful try_acquire(). The backend is spent
    /// afterwards (its path moves into the value).
    held_file take() noexcept;

    /// The system call that produced the last error, or nullptr.
    const char* failed_call() const noexcept { return failed_call_; }
    /// The holder's content (bounded read) through the open descriptor.
    std::string holder() const noexcept;
    const std::filesystem::path& path() const noexcept { return path_; }
    /// Whether waits should also end on a release event.
    bool wake_on_release() const noexcept { return policy_.wake; }
    /// Whether timed attempts join the path's local queue.
    bool queues() const noexcept { return policy_.queue; }

    /// Behind another process's waiter: what to wait for instead of the
    /// file's releases (process_queue::turn_handle(); -1: the file's).
    int queue_turn() const noexcept { return order_.turn_handle(); }
    /// What to wait for changed (a queue turn, or the file the path names):
    /// the driver watches anew.
    bool retarget_watch() noexcept {
        const bool moved = std::exchange(path_moved_, false);
        return order_.retarget() || moved;
    }

    /// How often a waiter looks whether its path names another file than
    /// its descriptor's (no event tells when a directory on the way is
    /// renamed, or a symbolic link on it re-pointed).
    static constexpr clock::duration path_look = std::chrono::milliseconds(100);
    /// While waiting for a queue turn, when to look again (time_point{}:
    /// the backoff's time).
    clock::time_point next_look() const noexcept { return order_.next_look(); }

private:
    std::error_code attempt() noexcept;
    file::failure lock() noexcept;
    void unlock_and_close() noexcept;
    void close_fd() noexcept;
    file::failure open_fd() noexcept;
    bool path_names_another() noexcept;
    void unlist_fd(bool close, bool unlock) noexcept;
    bool fd_open() const noexcept;  // fd_, unless a forked child closed its copy at the fork
    file::failure fd_info(file::file_info& out) const noexcept;

    const file::ops* ops_;
    std::filesystem::path path_;
    file_policy policy_;
    std::string content_;  // what to write after winning ("" = nothing)
    // A template that names the pid, kept to expand it again in a forked
    // child (an acquisition begun before fork() and won after it in the
    // child), and the fork generation content_ was expanded in.
    std::string pid_template_;
    unsigned content_generation_ = 0;
    std::error_code init_error_;
    const char* failed_call_ = nullptr;
    native_handle_type fd_ = no_handle;
    bool fd_listed_ = false;  // since its open, closed by a forked child at the fork (open_fd)
    bool won_ = false;
    // remove_on_release may remove the file won: it holds our line, or,
    // for a lock that writes none, nothing (never a file judged foreign).
    bool removable_ = false;
    bool at_deadline_ = false;              // see at_deadline()
    unsigned slot_ = 0;                     // the slot won (slots > 1)
    unsigned long long dev_ = 0, ino_ = 0;  // of the file won
    // What never changes for fd_, taken at most once per descriptor: its
    // file (device, inode, file::file_type), and that its filesystem may be
    // written.
    mutable unsigned long long fd_dev_ = 0, fd_ino_ = 0;
    mutable unsigned char fd_type_ = 0;
    mutable bool fd_known_ = false;
    bool fd_writable_fs_ = false;
    // When the path was last found to name fd_'s file ({}: not yet looked,
    // since its open).
    clock::time_point path_looked_{};
    bool path_moved_ = false;  // left for another file: watch anew
    // fork bookkeeping of fd_ (see fork_stamp in src/platform.hpp)
    unsigned fd_generation_ = 0, fd_forks_ = 0;
    process_queue order_;  // this waiter's place among processes
    int bell_ = -1;        // the doorbell kept with a won lock (process_queue::leave_won)
};

/// The acquisition of a lock file: the protocol over the file backend.
using file_acquire = acquire<file_backend>;

/// A seed that differs between processes, threads and calls.
FILELOCK_API std::uint64_t random_seed() noexcept;

}  // namespace filelock::detail
