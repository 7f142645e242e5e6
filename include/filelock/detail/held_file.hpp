// SPDX-License-Identifier: MIT
#pragma once

// What the lock primitive hands over when it wins: the descriptor holding the
// lock and what releasing it needs. A lock_file is made from it; the
// primitive itself knows nothing of the facade.

#include <cstdint>
#include <filesystem>
#include <utility>

namespace filelock::detail {

#if defined(_WIN32)
/// A Windows HANDLE.
using native_handle_type = void*;
/// No handle (INVALID_HANDLE_VALUE is never kept).
inline constexpr native_handle_type no_handle = nullptr;
#else
/// A POSIX file descriptor.
using native_handle_type = int;
/// No descriptor.
inline constexpr native_handle_type no_handle = -1;
#endif

struct held_file {
    native_handle_type fd = no_handle;
    bool ofd = false;
    std::uint64_t start = 0, length = 0;  // the OFD lock's byte range ({0, 0}: whole file)
    unsigned slots = 1;                   // lock_options::slots (1: the one-holder lock)
    unsigned slot = 0;                    // the slot held (of slots > 1)
    bool remove = false;  // unlink the path on release (if it still names this file)
    // fork bookkeeping of the descriptor (src/platform.hpp, fork_stamp)
    unsigned generation = 0;
    unsigned forks = 0;
    unsigned long long dev = 0, ino = 0;
    std::filesystem::path path;
    // The queue's doorbell kept by a waiter that won (-1: none), closed after
    // the unlock: it wakes the next process in line when the lock is free.
    int bell = -1;

    held_file() = default;
    // Moved from, a held_file holds nothing, as a default one does. Member
    // by member: a lock changes hands several times on its way to the
    // caller, and each time building, moving and destroying a whole default
    // held_file (its path included) would cost more than the move itself.
    // A member added here is added to both lists below, with its default.
    // (A moved-from path is unspecified: it is cleared.)
    held_file(held_file&& other) noexcept
        : fd(std::exchange(other.fd, no_handle)),
          ofd(std::exchange(other.ofd, false)),
          start(std::exchange(other.start, 0)),
          length(std::exchange(other.length, 0)),
          slots(std::exchange(other.slots, 1)),
          slot(std::exchange(other.slot, 0)),
          remove(std::exchange(other.remove, false)),
          generation(std::exchange(other.generation, 0)),
          forks(std::exchange(other.forks, 0)),
          dev(std::exchange(other.dev, 0)),
          ino(std::exchange(other.ino, 0)),
          path(std::move(other.path)),
          bell(std::exchange(other.bell, -1)) {
        other.path.clear();
    }
    held_file& operator=(held_file&& other) noexcept {
        if (this == &other) return *this;
        fd = std::exchange(other.fd, no_handle);
        ofd = std::exchange(other.ofd, false);
        start = std::exchange(other.start, 0);
        length = std::exchange(other.length, 0);
        slots = std::exchange(other.slots, 1);
        slot = std::exchange(other.slot, 0);
        remove = std::exchange(other.remove, false);
        generation = std::exchange(other.generation, 0);
        forks = std::exchange(other.forks, 0);
        dev = std::exchange(other.dev, 0);
        ino = std::exchange(other.ino, 0);
        path = std::move(other.path);
        other.path.clear();
        bell = std::exchange(other.bell, -1);
        return *this;
    }
};

}  // namespace filelock::detail
