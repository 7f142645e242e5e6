// SPDX-License-Identifier: MIT
#pragma once

// Internal to the POSIX primitive and the facade: releasing a held lock.

#include "../sys.hpp"

namespace filelock::detail {

/// Releases a lock held on `fd`: unlock, then close. After a fork() the
/// parent and the child share the descriptor's open file description, and
/// with it the lock, so an unlock in either would release it for both: a
/// descriptor that is not private (see fork_stamp) is only closed, and the
/// lock stays held until every copy is closed (as flock(1)'s is).
void release_fd(int fd, bool ofd, fork_stamp stamp) noexcept;

}  // namespace filelock::detail
