// SPDX-License-Identifier: MIT
#pragma once

// Giving idle waiting resources back: an inotify instance (and the sync
// waiters' eventfd) with no waiter left stays open for a short linger, so
// that back-to-back waits neither close nor open one on the way from a
// release to the next holder, and is closed after it. A process that no
// longer waits keeps nothing: no descriptor, and no thread. The thread that
// closes them exists while something is in use or lingers: it is started
// when a wait takes its resources (linger_hold()), so that giving them back
// on a winner's way out is a note in a table, never a thread to start (tens
// of microseconds between the release and the next holder's return).

#include <chrono>

namespace filelock::detail {

/// How long an idle instance stays open.
inline constexpr std::chrono::milliseconds idle_linger{200};

/// Resources that will linger were taken for a wait: the lingering thread
/// runs from the next linger_start() until they are given back
/// (linger_unhold()) and their linger is over. Giving back wakes nobody:
/// while they are held the thread looks a linger after its start or the
/// last giving back, then at doubling intervals up to 1.6 s.
void linger_hold() noexcept;
/// Starts the lingering thread if a hold asked for it and none runs (a
/// system call: call it outside the locks that waiters take, before a
/// wait). Otherwise one atomic load. Without a thread (none could be
/// started) reap_later() tries again.
void linger_start() noexcept;
/// What linger_hold() counted was given back or destroyed.
void linger_unhold() noexcept;

/// Calls `reap` once, about idle_linger from now, on the lingering thread.
/// Calling it again for the same `reap` before then moves the time. `reap`
/// decides for itself whether what it gives back is still idle; `unhold`:
/// what it gives back was counted by linger_hold() (one lock for both).
/// Starts the thread only when none runs (nothing was held since the last
/// linger, or no thread could be started then). False when no thread can
/// be started: the caller gives its resources back now.
bool reap_later(void (*reap)(), bool unhold = false) noexcept;

}  // namespace filelock::detail
