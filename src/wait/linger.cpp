// SPDX-License-Identifier: MIT
#include "linger.hpp"

#include "../platform.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <utility>
#ifndef _WIN32
#include <csignal>
#include <pthread.h>
#endif

namespace filelock::detail {

namespace {

// At most one entry per caller: a fixed table, nothing allocated on the way
// out of a wait.
struct lingering {
    std::mutex mutex;
    std::condition_variable cv;
    std::array<std::pair<void (*)(), std::chrono::steady_clock::time_point>, 4> due{};
    std::thread thread;
    unsigned held = 0;  // resources in use that will linger (linger_hold())
    std::chrono::milliseconds look = idle_linger;  // the next look while held, from now
    std::atomic<bool> wanted{false};  // a hold found no thread: linger_start() starts it
    bool running = false;             // the thread is in run()
    unsigned forking = 0;             // forks under way: the thread leaves run(), none starts
};

// The longest interval between two looks at the table while something is
// held (so what a long wait gives back is closed within this and a linger).
constexpr std::chrono::milliseconds max_look{1600};

void run() noexcept;
void start(lingering& s) noexcept;

lingering& state() {
    static auto* s = [] {
        auto* made = new lingering;  // never destroyed: usable during exit
        // fork() happens with no thread of ours: the thread ends before it
        // (a process that forks is then what it was before it waited; tools
        // such as ThreadSanitizer refuse threads in a child forked from a
        // multi-threaded parent) and starts again in the parent if something
        // still lingers. The mutex is held across fork(), so a child never
        // inherits it locked. This handler is registered after the idle
        // pool's, so it runs before the pool's mutex is taken for the fork.
        // Threads may fork at once: another's fork may come while this one
        // joins the thread (the mutex is free then). The thread is joined by
        // the fork that takes it, and none starts until the last fork under
        // way is over.
        at_fork(
            [] {
                lingering& l = state();
                std::unique_lock<std::mutex> g(l.mutex);
                ++l.forking;
                l.cv.notify_all();
                l.cv.wait(g, [&] { return !l.running; });
                std::thread ended = std::move(l.thread);
                g.unlock();
                if (ended.joinable()) ended.join();
                g.lock();
                g.release();  // held across fork()
            },
            [] {
                lingering& l = state();
                if (--l.forking == 0 &&
                    (l.held > 0 || std::any_of(l.due.begin(), l.due.end(),
                                               [](const auto& e) { return e.first; })))
                    start(l);
                l.mutex.unlock();
            },
            [] {
                // The child holds nothing yet: what its parent held is the
                // parent's (inherited resources are closed, not given back);
                // the other forks under way are the parent's.
                lingering& l = state();
                l.forking = 0;
                l.held = 0;
                l.mutex.unlock();
            });
        return made;
    }();
    return *s;
}

void run() noexcept {
    lingering& s = state();
    std::unique_lock<std::mutex> g(s.mutex);
    while (s.forking == 0) {
        auto next = std::min_element(s.due.begin(), s.due.end(), [](const auto& a, const auto& b) {
            return b.first == nullptr || (a.first != nullptr && a.second < b.second);
        });
        if (next->first == nullptr) {
            if (s.held == 0) break;
            // In use: given back without a word (a wake-up on a waiter's
            // way out costs it tens of microseconds), seen at the next look:
            // a linger after the last giving back or start, then at doubling
            // intervals while the wait lasts (a 3 s wait: 4 looks, not 15).
            s.cv.wait_for(g, s.look);
            s.look = std::min(s.look * 2, max_look);
            continue;
        }
        if (std::chrono::steady_clock::now() < next->second) {
            s.cv.wait_until(g, next->second);
            continue;
        }
        void (*reap)() = std::exchange(next->first, nullptr);
        g.unlock();
        reap();
        g.lock();
    }
    s.running = false;
    // Done: nobody joins it (before a fork, the fork's handler does).
    if (s.forking == 0) s.thread.detach();
    s.cv.notify_all();  // the forks that wait for its end
}

// With the mutex held.
void start(lingering& s) noexcept {
    if (s.running || s.forking > 0) return;    // (forking: the fork's parent handler starts it)
    if (s.thread.joinable()) s.thread.join();  // it has left run(): ends at once
#ifndef _WIN32
    // The thread takes no signal meant for the process (a program that
    // waits for its signals with sigwait() keeps them).
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
#endif
    try {
        s.look = idle_linger;
        s.thread = std::thread(run);
        s.running = true;
    } catch (...) {
    }
#ifndef _WIN32
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
#endif
}

}  // namespace

void linger_hold() noexcept {
    lingering& s = state();
    std::lock_guard<std::mutex> g(s.mutex);
    ++s.held;
    if (!s.running) s.wanted.store(true, std::memory_order_relaxed);
}

void linger_start() noexcept {
    lingering& s = state();
    if (!s.wanted.load(std::memory_order_relaxed)) return;
    std::lock_guard<std::mutex> g(s.mutex);
    s.wanted.store(false, std::memory_order_relaxed);
    if (s.held > 0) start(s);
}

void linger_unhold() noexcept {
    lingering& s = state();
    std::lock_guard<std::mutex> g(s.mutex);
    if (s.held > 0) --s.held;
}

bool reap_later(void (*reap)(), bool unhold) noexcept {
    lingering& s = state();
    std::lock_guard<std::mutex> g(s.mutex);
    if (unhold && s.held > 0) --s.held;
    const auto at = std::chrono::steady_clock::now() + idle_linger;
    auto slot =
        std::find_if(s.due.begin(), s.due.end(), [&](const auto& e) { return e.first == reap; });
    if (slot == s.due.end())
        slot = std::find_if(s.due.begin(), s.due.end(),
                            [](const auto& e) { return e.first == nullptr; });
    if (slot == s.due.end()) return false;
    *slot = {reap, at};
    s.look = idle_linger;
    start(s);
    if (s.running || s.forking > 0) return true;  // the fork's parent handler starts it
    slot->first = nullptr;
    return false;
}

}  // namespace filelock::detail
