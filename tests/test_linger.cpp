// SPDX-License-Identifier: MIT
// Giving idle waiting resources back costs waiters nothing: the thread that
// closes idle instances a linger later is started outside every lock that
// waiters take. This program defines pthread_create to see that thread's
// start (calls go on to the real one).

#include <filelock/lock_file.hpp>

#include "../src/posix/sys.hpp"
#include "support.hpp"

#include <atomic>
#include <dlfcn.h>
#include <functional>
#include <pthread.h>
#include <thread>

using namespace test;
namespace fdetail = filelock::detail;

namespace {

std::atomic<bool> hook_armed{false};
std::function<void()> on_thread_start;  // set before arming, on the test's thread
std::atomic<int> watches_added{0};

int count_add_watch(int fd, const char* path, uint32_t mask) {
    ++watches_added;
    return fdetail::default_sys().inotify_add_watch(fd, path, mask);
}

int threads_now() {
    int n = 0;
    std::error_code ec;
    for (auto it = fs::directory_iterator("/proc/self/task", ec);
         !ec && it != fs::directory_iterator(); it.increment(ec))
        ++n;
    return n;
}

}  // namespace

extern "C" int pthread_create(pthread_t* t, const pthread_attr_t* attr, void* (*f)(void*),
                              void* arg) {
    using real_fn = int (*)(pthread_t*, const pthread_attr_t*, void* (*)(void*), void*);
    static const auto real = reinterpret_cast<real_fn>(::dlsym(RTLD_NEXT, "pthread_create"));
    if (hook_armed.exchange(false)) on_thread_start();
    return real(t, attr, f, arg);
}

TEST_CASE(
    "linger: the last sync waiter starts the linger thread after letting go of the waiters' "
    "lock") {
    // Thread A waits in lock() and wins: the last waiter gives the instance
    // back, which starts the thread that closes it a linger later. Meanwhile
    // thread B starts waiting for another lock: it registers its watch with
    // the same sync waiters' state, which A must not be holding then.
    scratch s;
    const auto p = s / "a.lock", q = s / "b.lock";
    settle();  // no instance lingers: the linger thread ends
    for (int i = 0; i < 1000 && threads_now() > 1; ++i) ::usleep(1000);
    REQUIRE(threads_now() == 1);
    auto holder_p = hold_in_child(p);
    auto holder_q = hold_in_child(q);
    REQUIRE(holder_p.ready());
    REQUIRE(holder_q.ready());
    fdetail::sys().inotify_add_watch = count_add_watch;
    std::atomic<bool> b_go{false}, started{false}, b_blocked{false};
    std::thread b([&] {
        while (!b_go) std::this_thread::sleep_for(1ms);
        std::error_code ec;
        (void)filelock::lock(q, 100ms, {}, ec);  // held: it watches, then times out
    });
    on_thread_start = [&] {
        started = true;
        const int before = watches_added;
        b_go = true;
        // B registers its watch, unless this thread holds the waiters' lock.
        for (int i = 0; i < 500 && watches_added == before; ++i) ::usleep(10000);
        b_blocked = watches_added == before;
    };
    std::atomic<bool> a_won{false};
    std::thread a([&] {
        std::error_code ec;
        auto l = filelock::lock(p, 30s, {}, ec);
        a_won = !ec;
    });
    while (watches_added == 0) std::this_thread::sleep_for(1ms);  // A waits, watching
    hook_armed = true;
    holder_p.release();
    a.join();
    hook_armed = false;
    b_go = true;
    b.join();
    fdetail::sys().inotify_add_watch = fdetail::default_sys().inotify_add_watch;
    CHECK(a_won);
    REQUIRE(started);  // the linger thread's start was seen
    CHECK(!b_blocked);
}
