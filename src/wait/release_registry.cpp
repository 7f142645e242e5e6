// SPDX-License-Identifier: MIT
#include "release_registry.hpp"

#include <algorithm>

namespace filelock::detail {

void release_registry::add(int wd, key waiter, std::uint64_t arrival, bool shared,
                           const lock_identity& lock) {
    entries_.push_back({wd, waiter, arrival, shared, lock});
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
    std::vector<const entry*> firsts;  // the longest-waiting exclusive waiter of each lock
    const auto is_turn = [](int wd) { return wd <= release_event::turn; };
    for (const auto& ev : events) {
        if (is_turn(ev.wd)) {
            for (const auto& e : entries_)
                if (e.wd == ev.wd) woken.push_back({e.waiter, false});
            continue;
        }
        firsts.clear();
        for (const auto& e : entries_) {
            if (is_turn(e.wd) || (ev.wd != release_event::all && e.wd != ev.wd)) continue;
            if (ev.moved || e.shared) {
                woken.push_back({e.waiter, ev.moved});
                continue;
            }
            auto it = std::find_if(firsts.begin(), firsts.end(),
                                   [&](const entry* f) { return f->same_lock(e); });
            if (it == firsts.end())
                firsts.push_back(&e);
            else if (e.arrival < (*it)->arrival)
                *it = &e;
        }
        for (const entry* f : firsts) woken.push_back({f->waiter, false});
        if (!ev.moved) continue;
        // The path may name another file now: its waiters watch anew.
        auto gone = std::stable_partition(entries_.begin(), entries_.end(), [&](const entry& e) {
            return is_turn(e.wd) || (ev.wd != release_event::all && e.wd != ev.wd);
        });
        for (auto it = gone; it != entries_.end(); ++it) moved.push_back(it->wd);
        entries_.erase(gone, entries_.end());
    }
    return woken;
}

std::vector<release_registry::key> release_registry::clear(std::vector<int>& wds) {
    std::vector<key> all;
    all.reserve(entries_.size());
    wds.reserve(wds.size() + entries_.size());
    for (const auto& e : entries_) {
        all.push_back(e.waiter);
        wds.push_back(e.wd);
    }
    entries_.clear();
    return all;
}

}  // namespace filelock::detail
