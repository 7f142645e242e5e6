// SPDX-License-Identifier: MIT
#include "linger.hpp"

#include "../platform.hpp"

#include <algorithm>
#include <array>
#include <mutex>
#include <thread>
#include <utility>
#ifndef _WIN32
#include <csignal>
#include <pthread.h>
#endif

namespace filelock::detail {

namespace {

// At most one entry per caller (the sync waiters' hub, the idle pool): a
// fixed table, nothing allocated on the way out of a wait.
struct lingering {
    std::mutex mutex;
    std::array<std::pair<void (*)(), std::chrono::steady_clock::time_point>, 4> due{};
    bool running = false;  // the thread exists
};

lingering& state() {
    static auto* s = [] {
        auto* made = new lingering;  // never destroyed: usable during exit
        // A forked child has no lingering thread: the next reap_later()
        // there starts one. (The mutex is held across fork(), so a child
        // never inherits it locked.)
        at_fork([] { state().mutex.lock(); }, [] { state().mutex.unlock(); },
                [] {
                    state().running = false;
                    state().mutex.unlock();
                });
        return made;
    }();
    return *s;
}

// Sleeps rather than waiting on a condition: every entry is due one linger
// after it was set, so a later one never needs an earlier wake-up (and a
// forked child inherits no condition variable in use).
void run() noexcept {
    lingering& s = state();
    std::unique_lock<std::mutex> g(s.mutex);
    for (;;) {
        auto next = std::min_element(s.due.begin(), s.due.end(), [](const auto& a, const auto& b) {
            return b.first == nullptr || (a.first != nullptr && a.second < b.second);
        });
        if (next->first == nullptr) {
            s.running = false;
            return;
        }
        const auto at = next->second;
        if (std::chrono::steady_clock::now() < at) {
            g.unlock();
            std::this_thread::sleep_until(at);
            g.lock();
            continue;
        }
        void (*reap)() = std::exchange(next->first, nullptr);
        g.unlock();
        reap();
        g.lock();
    }
}

}  // namespace

bool reap_later(void (*reap)()) noexcept {
    lingering& s = state();
    std::lock_guard<std::mutex> g(s.mutex);
    const auto at = std::chrono::steady_clock::now() + idle_linger;
    auto slot =
        std::find_if(s.due.begin(), s.due.end(), [&](const auto& e) { return e.first == reap; });
    if (slot == s.due.end())
        slot = std::find_if(s.due.begin(), s.due.end(),
                            [](const auto& e) { return e.first == nullptr; });
    if (slot == s.due.end()) return false;
    *slot = {reap, at};
    if (s.running) return true;
#ifndef _WIN32
    // The thread takes no signal meant for the process (a program that
    // waits for its signals with sigwait() keeps them).
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
#endif
    try {
        std::thread(run).detach();
        s.running = true;
    } catch (...) {
        slot->first = nullptr;
    }
#ifndef _WIN32
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
#endif
    return s.running;
}

}  // namespace filelock::detail
