// SPDX-License-Identifier: MIT
#pragma once

// The holder named on contention (lock_error::holder(), filelock-run's
// messages): the live one. A lock file keeps the line of its last writer
// after that writer released it, so the line may name a process that
// exited long ago while flock(1), which writes nothing, holds the lock now.

#include <filelock/detail/held_file.hpp>

#include <string>
#include <string_view>

namespace filelock::detail {
namespace file {
class ops;
}

/// What to name as the holder of the lock file open as `h`, whose first
/// bytes are `raw`: the content (stripped) when it is a live holder's or
/// cannot be judged (not a holder's line, another machine's, no /proc/locks,
/// no holder the kernel shows us); otherwise the pid of a holder the kernel
/// shows, or "" when none can be named.
std::string live_holder(const file::ops& os, native_handle_type h, std::string_view raw);

}  // namespace filelock::detail
