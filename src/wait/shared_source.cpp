// SPDX-License-Identifier: MIT
#include "shared_source.hpp"

#include "../platform.hpp"

namespace filelock::detail {

namespace {

// The process's shared source, for the fork's child handler. Atomics only:
// another thread of the parent may have been changing it at the fork.
std::atomic<shared_source*>& current() {
    static std::atomic<shared_source*> s{nullptr};
    return s;
}

}  // namespace

// Registered when the library is loaded, not by the first shared_source:
// that one is made under of_this_generation()'s mutex, which a prepare
// handler locks for the fork, and glibc's pthread_atfork waits for a lock
// that fork() holds while it runs the prepare handlers.
const bool shared_source::fork_handler_registered = [] {
    at_fork(nullptr, nullptr, close_inherited);
    return true;
}();

shared_source::shared_source() noexcept { current().store(this, std::memory_order_release); }

// In a forked child, at once: its copies of the parent's descriptors are
// closed before it can reuse their numbers (closed at its next wait, they
// were files of its own). The parent's shared_source is left as it is.
void shared_source::close_inherited() noexcept {
    shared_source* s = current().exchange(nullptr, std::memory_order_relaxed);
    if (!s) return;
    for (auto& fd : s->fds_) release_source::close_copy(fd.exchange(-1));
}

bool shared_source::watch(const std::filesystem::path& path, waiter w, std::uint64_t arrival,
                          bool shared, const lock_identity& lock, int turn) {
    if (!source_) source_ = release_source::take();
    if (!source_ || !source_->enable_interrupts() ||
        !source_->watch(path, w, arrival, shared, lock, turn))
        return false;
    int fds[3];
    source_->handles(fds);
    for (int i = 0; i < 3; ++i) fds_[i].store(fds[i], std::memory_order_relaxed);
    return true;
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
    // Forgotten first: a child forked from here on never closes them.
    for (auto& fd : fds_) fd.store(-1, std::memory_order_relaxed);
    out.s_ = std::move(source_);
}

}  // namespace filelock::detail
