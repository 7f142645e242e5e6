// SPDX-License-Identifier: MIT
// Giving idle waiting resources back costs waiters nothing: the thread that
// closes idle instances a linger later is started when a wait takes them,
// outside every lock that waiters take, and never on a winner's way out.
// This program defines pthread_create to see that thread's start, and
// pthread_join to fork from another thread while a fork joins it (calls go
// on to the real ones).

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
// Armed before a fork(): the join that this fork's handler makes lets
// another thread fork meanwhile (at most 5 s).
std::atomic<bool> fork_in_join{false}, second_fork{false}, second_forked{false};

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

extern "C" int pthread_join(pthread_t t, void** ret) {
    using real_fn = int (*)(pthread_t, void**);
    static const auto real = reinterpret_cast<real_fn>(::dlsym(RTLD_NEXT, "pthread_join"));
    if (fork_in_join.exchange(false)) {
        second_fork = true;
        for (int i = 0; i < 500 && !second_forked; ++i) ::usleep(10000);
    }
    return real(t, ret);
}

TEST_CASE(
    "linger: a wait starts the linger thread outside the waiters' lock, and its winner's way "
    "out starts none") {
    // Thread A waits in lock(): taking the instance starts the thread that
    // closes it a linger after the last waiter. Meanwhile thread B starts
    // waiting for another lock: it registers its watch with the same sync
    // waiters' state, which A must not be holding then. When A wins, giving
    // the instance back starts nothing: a thread's start (tens of
    // microseconds) would come between the release and A's return.
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
    std::atomic<bool> b_go{false}, started_at_wait{false}, b_blocked{false};
    std::atomic<bool> started_on_exit{false}, first_done{false};
    std::thread b([&] {
        while (!b_go) std::this_thread::sleep_for(1ms);
        std::error_code ec;
        (void)filelock::lock(q, 100ms, {}, ec);  // held: it watches, then times out
    });
    on_thread_start = [&] {
        started_at_wait = true;
        const int before = watches_added;
        b_go = true;
        // B registers its watch, unless this thread holds the waiters' lock.
        for (int i = 0; i < 500 && watches_added == before; ++i) ::usleep(10000);
        b_blocked = watches_added == before;
        first_done = true;
    };
    std::atomic<bool> a_won{false}, a_go{false};
    std::thread a([&] {
        while (!a_go) std::this_thread::sleep_for(1ms);
        std::error_code ec;
        auto l = filelock::lock(p, 30s, {}, ec);
        a_won = !ec;
    });
    hook_armed = true;  // A's own start is not counted
    a_go = true;
    while (watches_added == 0) std::this_thread::sleep_for(1ms);  // A waits, watching
    // The thread's start comes right after A's watch (or never: then the
    // hook is disarmed after a while, and the checks below fail).
    for (int i = 0; i < 10000 && !first_done; ++i) ::usleep(1000);
    hook_armed = false;
    b_go = true;
    b.join();  // B timed out; A still waits
    on_thread_start = [&] { started_on_exit = true; };
    hook_armed = true;
    holder_p.release();
    a.join();
    hook_armed = false;
    fdetail::sys().inotify_add_watch = fdetail::default_sys().inotify_add_watch;
    CHECK(a_won);
    REQUIRE(started_at_wait);  // the linger thread's start was seen, while A waited
    CHECK(!b_blocked);
    CHECK(!started_on_exit);
}

TEST_CASE("linger: two threads that fork at once while a third waits neither hang nor abort") {
    // The thread that closes idle instances runs while a wait lasts; each
    // fork() ends it before and starts it again after, in the parent. Here
    // a second thread forks while the first fork's handler waits for that
    // thread's end: neither may join it again, nor start it again while a
    // fork is under way (the first fork would wait for the end of the
    // wait); the thread runs again after both. In a child process, which
    // exits with what failed: a hang is seen from here.
    scratch s;
    const auto p = s / "a.lock";
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        auto fork_one = [] {  // a child with no thread of ours: 0
            const pid_t c = ::fork();
            if (c == 0) ::_exit(threads_now() == 1 ? 0 : 1);
            int st = 0;
            return c > 0 && ::waitpid(c, &st, 0) == c && WIFEXITED(st) ? WEXITSTATUS(st) : 2;
        };
        int failed = 0;
        std::thread([] {}).join();  // a sanitizer's thread of its own starts with the first
        const int base = threads_now();
        {
            auto holder = hold_in_child(p);
            if (!holder.ready()) ::_exit(64);
            std::thread waiter([&] {
                std::error_code ec;
                (void)filelock::lock(p, 10s, {}, ec);  // until the holder's release
            });
            std::atomic<int> second{-1};
            std::thread b([&] {
                for (int i = 0; i < 500 && !second_fork; ++i) ::usleep(10000);
                second = fork_one();
                second_forked = true;
            });
            for (int i = 0; i < 500 && threads_now() < base + 3; ++i) ::usleep(10000);  // it runs
            fork_in_join = true;
            if (fork_one() != 0) failed |= 1;
            fork_in_join = false;
            b.join();
            if (second != 0) failed |= 2;
            if (!second_fork) failed |= 4;
            if (threads_now() != base + 2) failed |= 8;  // the waiter's and the linger thread
            holder.release();
            waiter.join();
        }
        for (int i = 0; i < 200 && threads_now() > base; ++i) ::usleep(10000);
        if (threads_now() != base) failed |= 16;
        ::_exit(failed);
    }
    int st = 0;
    pid_t done = 0;
    for (int i = 0; i < 3000 && (done = ::waitpid(pid, &st, WNOHANG)) == 0; ++i) ::usleep(10000);
    if (done == 0) {  // hung: 30 s
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &st, 0);
    }
    CHECK(done == pid);
    REQUIRE(WIFEXITED(st));
    CHECK(WEXITSTATUS(st) == 0);
}
