// SPDX-License-Identifier: MIT
#include "shared_source.hpp"

#include "../platform.hpp"

namespace filelock::detail {

// Its source's descriptors are listed in fork_closed for their whole life
// (release_source::fork_copies::closed_at_fork): a forked child closes its
// copies at the fork, before it can reuse their numbers, and the child's
// shared_source is another one (of_this_generation()).
shared_source::shared_source() noexcept = default;

bool shared_source::watch(const std::filesystem::path& path, waiter w, std::uint64_t arrival,
                          bool shared, const lock_identity& lock, int turn) {
    if (!source_) source_ = release_source::take();
    return source_ && source_->enable_interrupts() &&
           source_->watch(path, w, arrival, shared, lock, turn);
}

void shared_source::unwatch(waiter w) noexcept {
    if (source_) source_->unwatch(w);
}

std::vector<release_source::wakeup> shared_source::read() noexcept {
    try {
        return source_->read();
    } catch (...) {
        return {};  // out of memory: the waiters go on at their timers
    }
}

void shared_source::give_back_if_idle(bool reading, spare& out) noexcept {
    if (!source_ || !source_->idle() || reading) return;
    out.s_ = std::move(source_);
}

}  // namespace filelock::detail
