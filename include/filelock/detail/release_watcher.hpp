// SPDX-License-Identifier: MIT
#pragma once

// Release events: wakes waiters when a lock file's holder closes it, instead
// of when a backoff timer happens to fire. On Linux an inotify instance
// watches the lock files (IN_CLOSE_WRITE / IN_CLOSE_NOWRITE: a holder closed
// its descriptor; IN_DELETE_SELF / IN_MOVE_SELF / IN_ATTRIB: the file was
// unlinked, renamed or replaced, so the path must be watched anew). Elsewhere
// the watcher is not valid() and drivers fall back to the backoff alone.
//
// One instance serves every waiter of a driver (an event loop, or a sync
// lock() call); watches are refcounted per watch descriptor (the kernel gives
// one per inode and instance), never one per waiter. Not thread-safe: each
// driver serialises its use.

#include <filelock/export.hpp>

#include <filesystem>
#include <unordered_map>
#include <vector>

namespace filelock::detail {

class FILELOCK_API release_watcher {
public:
    release_watcher() noexcept;
    release_watcher(const release_watcher&) = delete;
    release_watcher& operator=(const release_watcher&) = delete;
    ~release_watcher();

    bool valid() const noexcept { return fd_ >= 0; }
    /// The descriptor to wait on for readability.
    int native_handle() const noexcept { return fd_; }

    /// Watches the file `path` names now; returns its watch descriptor, or -1
    /// if it cannot be watched (the caller then relies on its timer).
    int add(const std::filesystem::path& path) noexcept;
    /// Drops one reference taken by add().
    void remove(int wd) noexcept;

    struct event {
        int wd;
        /// The file was unlinked, renamed or replaced (or the watch is gone):
        /// waiters should drop this watch and watch the path anew.
        bool moved;
    };
    /// Reads the pending events, one entry per watch descriptor that saw
    /// any. Its waiters should attempt now.
    std::vector<event> drain();

private:
    int fd_ = -1;
    std::unordered_map<int, int> refs_;  // watch descriptor -> references
};

}  // namespace filelock::detail
