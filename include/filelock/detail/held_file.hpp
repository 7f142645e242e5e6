// SPDX-License-Identifier: MIT
#pragma once

// What the lock primitive hands over when it wins: the descriptor holding the
// lock and what releasing it needs. A lock_file is made from it; the
// primitive itself knows nothing of the facade.

#include <cstdint>
#include <filesystem>

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
};

}  // namespace filelock::detail
