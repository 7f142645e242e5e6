// SPDX-License-Identifier: MIT
#pragma once

// The acquisition of a lock file, compiled into libfilelock: the acquire
// state machine over the file backend, behind a pointer. The header-only Asio
// adapter (and the libuv driver) execute it through this narrow surface; the
// backend's type, its policy and its descriptor stay inside the library.

#include <filelock/detail/acquire.hpp>
#include <filelock/detail/local_queue.hpp>
#include <filelock/export.hpp>
#include <filelock/lock_file.hpp>
#include <filelock/options.hpp>

#include <chrono>
#include <filesystem>
#include <memory>

namespace filelock::detail {

class FILELOCK_API file_acquisition {
public:
    /// An acquisition of the lock file at `path` (copied): attempts go on for
    /// `timeout` from its `start` (<= 0: one attempt; wait_forever: no
    /// deadline). A bad content template is reported by its first attempt.
    file_acquisition(const std::filesystem::path& path, std::chrono::nanoseconds timeout,
                     const lock_options& options);
    ~file_acquisition();
    // Not movable: a queued acquisition is known to its queue by its place.
    file_acquisition(const file_acquisition&) = delete;
    file_acquisition& operator=(const file_acquisition&) = delete;

    /// The driver's place in local queues and the domain it stands for (an
    /// execution context, a loop); see acquire::use_queue.
    void use_queue(queue_waiter* place, const void* domain) noexcept;
    /// Leaves the queue and forgets the place.
    void drop_queue() noexcept;
    /// What the driver observed; what to do next (see acquire::resume).
    action resume(const input& in);
    /// The lock to watch for releases: the file's identity, backend and range.
    bool identity(lock_identity& id) const noexcept;
    /// The path to watch.
    const std::filesystem::path& path() const noexcept;
    /// What to watch instead, behind another process's waiter (a queue
    /// turn, see release_source::watch; -1: the path).
    int queue_turn() const noexcept;
    /// The lock won (after `done` with an empty code); the acquisition is
    /// spent afterwards.
    lock_file take() noexcept;

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace filelock::detail
