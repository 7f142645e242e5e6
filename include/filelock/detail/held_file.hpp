// SPDX-License-Identifier: MIT
#pragma once

// What the lock primitive hands over when it wins: the descriptor holding the
// lock and what releasing it needs. A lock_file is made from it; the
// primitive itself knows nothing of the facade.

#include <filesystem>

namespace filelock::detail {

struct held_file {
    int fd = -1;
    bool ofd = false;
    bool remove = false;  // unlink the path on release (if it still names this file)
    // fork bookkeeping of the descriptor (src/sys.hpp, fork_stamp)
    unsigned generation = 0;
    unsigned forks = 0;
    unsigned long long dev = 0, ino = 0;
    std::filesystem::path path;
};

}  // namespace filelock::detail
