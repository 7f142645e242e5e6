// SPDX-License-Identifier: MIT
#include "release_registry.hpp"

#include <algorithm>

namespace filelock::detail {

void release_registry::add(int wd, key waiter, std::uint64_t arrival, bool shared) {
    entries_.push_back({wd, waiter, arrival, shared});
}

int release_registry::remove(key waiter) noexcept {
    auto it = std::find_if(entries_.begin(), entries_.end(),
                           [&](const entry& e) { return e.waiter == waiter; });
    if (it == entries_.end()) return -1;
    const int wd = it->wd;
    *it = entries_.back();
    entries_.pop_back();
    return wd;
}

std::vector<release_registry::wakeup> release_registry::dispatch(
    const std::vector<release_event>& events, std::vector<int>& moved) {
    std::vector<wakeup> woken;
    for (const auto& ev : events) {
        const entry* first = nullptr;  // the longest-waiting exclusive waiter
        for (const auto& e : entries_) {
            if (ev.wd != release_event::all && e.wd != ev.wd) continue;
            if (ev.moved || e.shared)
                woken.push_back({e.waiter, ev.moved});
            else if (!first || e.arrival < first->arrival)
                first = &e;
        }
        if (first) woken.push_back({first->waiter, false});
        if (!ev.moved) continue;
        // The path may name another file now: its waiters watch anew.
        auto gone = std::stable_partition(entries_.begin(), entries_.end(), [&](const entry& e) {
            return ev.wd != release_event::all && e.wd != ev.wd;
        });
        for (auto it = gone; it != entries_.end(); ++it) moved.push_back(it->wd);
        entries_.erase(gone, entries_.end());
    }
    return woken;
}

std::vector<release_registry::key> release_registry::clear() {
    std::vector<key> all;
    all.reserve(entries_.size());
    for (const auto& e : entries_) all.push_back(e.waiter);
    entries_.clear();
    return all;
}

}  // namespace filelock::detail
