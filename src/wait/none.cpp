// SPDX-License-Identifier: MIT
// Release events where the platform has none to offer cheaply (Windows: no
// change notification reports a handle's close; the BSDs and macOS: no
// inotify, untested): the watcher is never valid(), and every driver waits
// on its backoff alone.
#include "release_watcher.hpp"

namespace filelock::detail {

release_watcher::release_watcher() noexcept = default;
release_watcher::~release_watcher() = default;
int release_watcher::add(const std::filesystem::path&) noexcept { return -1; }
int release_watcher::add_turn(int) noexcept { return -1; }
void release_watcher::remove(int) noexcept {}
void release_watcher::moved(int) noexcept {}
std::vector<release_event> release_watcher::drain() { return {}; }
bool release_watcher::enable_interrupts() noexcept { return false; }
bool release_watcher::wait(std::chrono::steady_clock::time_point) noexcept { return false; }
void release_watcher::interrupt() noexcept {}
void release_watcher::clear_interrupts() noexcept {}
void release_watcher::abandon() noexcept {}
bool release_watcher::list_for_fork(bool) noexcept { return true; }

}  // namespace filelock::detail
