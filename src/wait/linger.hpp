// SPDX-License-Identifier: MIT
#pragma once

// Giving idle waiting resources back: an inotify instance (and the sync
// waiters' eventfd) with no waiter left stays open for a short linger, so
// that back-to-back waits neither close nor open one on the way from a
// release to the next holder, and is closed after it. A process that no
// longer waits keeps nothing: no descriptor, and no thread (the thread that
// closes them exists only while something lingers).

#include <chrono>

namespace filelock::detail {

/// How long an idle instance stays open.
inline constexpr std::chrono::milliseconds idle_linger{200};

/// Calls `reap` once, about idle_linger from now, on the lingering thread.
/// Calling it again for the same `reap` before then moves the time. `reap`
/// decides for itself whether what it gives back is still idle. False when
/// no thread can be started: the caller gives its resources back now.
bool reap_later(void (*reap)()) noexcept;

}  // namespace filelock::detail
