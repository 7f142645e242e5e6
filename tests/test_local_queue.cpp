// SPDX-License-Identifier: MIT
// Local queues: waiters of one domain for one lock line up, only the head
// attempts (one descriptor and one watch for all of them), they are served in
// arrival order, and they still exclude each other and other processes.
// Behaviour, not timing. The queue protocol itself (turns, deadlines while
// queued, leaving) is tested once, in test_acquire.cpp; here each driver's
// smoke tests and what is its own (cancellation, threads, descriptors).

#include <filelock/asio.hpp>
#include <filelock/detail/local_queue.hpp>
#include <filelock/lock_file.hpp>
#include <filelock/uv.hpp>

#include "support.hpp"

#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>

#include <atomic>
#include <mutex>
#include <thread>

using namespace test;
using filelock::errc;
using filelock::lock_file;
namespace fdetail = filelock::detail;

namespace {

struct fake_waiter final : fdetail::queue_waiter {
    int wakes = 0;
    void wake() noexcept override { ++wakes; }
    ~fake_waiter() { leave(); }
};

// Holds a lock for one loop iteration, checking that nobody else holds it
// meanwhile (in this process).
struct exclusion {
    std::atomic<int> inside{0};
    std::atomic<int> overlaps{0};
    void enter() {
        if (inside.fetch_add(1) != 0) ++overlaps;
    }
    void exit() { inside.fetch_sub(1); }
};

void uv_release_later(uv_loop_t* loop, lock_file l, exclusion* ex) {
    struct holder {
        uv_timer_t timer;
        lock_file lock;
        exclusion* ex;
    };
    auto* h = new holder{{}, std::move(l), ex};
    uv_timer_init(loop, &h->timer);
    h->timer.data = h;
    uv_timer_start(
        &h->timer,
        [](uv_timer_t* t) {
            auto* h = static_cast<holder*>(t->data);
            if (h->ex) h->ex->exit();
            h->lock.close();
            uv_close(reinterpret_cast<uv_handle_t*>(t),
                     [](uv_handle_t* t) { delete static_cast<holder*>(t->data); });
        },
        0, 0);
}

void asio_release_later(asio::io_context& io, lock_file l, exclusion* ex) {
    asio::post(io, [held = std::make_shared<lock_file>(std::move(l)), ex] {
        if (ex) ex->exit();
        held->close();
    });
}

// Runs `loop` until `pred` holds (for 20 s at most: a hang shows as a
// failed check, not a stuck test).
template <class Pred>
bool uv_run_until(uv_loop_t* loop, Pred pred) {
    const auto end = std::chrono::steady_clock::now() + 20s;
    while (!pred() && std::chrono::steady_clock::now() < end) uv_run(loop, UV_RUN_NOWAIT);
    return pred();
}

template <class Pred>
bool asio_run_until(asio::io_context& io, Pred pred) {
    const auto end = std::chrono::steady_clock::now() + 20s;
    while (!pred() && std::chrono::steady_clock::now() < end) {
        io.poll();
        io.restart();
    }
    return pred();
}

// Locks as the queue knows them: device, inode, backend.
const fdetail::lock_identity id_x{1, 10, 0}, id_y{1, 11, 0}, id_fork{1, 12, 0}, id_other{1, 13, 0},
    id_fair{1, 14, 0}, id_kept{1, 15, 0};
const char dom = 0;  // a driver domain

std::vector<int> iota(int n, std::initializer_list<int> except = {}) {
    std::vector<int> v;
    for (int i = 0; i < n; ++i)
        if (std::find(except.begin(), except.end(), i) == except.end()) v.push_back(i);
    return v;
}

}  // namespace

TEST_CASE("local queue: waiters line up in arrival order; a head that leaves wakes the next only") {
    const auto before = fdetail::local_waiters();
    fake_waiter a, b, c;
    CHECK(a.join(id_x, &dom));
    CHECK_FALSE(b.join(id_x, &dom));
    CHECK_FALSE(c.join(id_x, &dom));
    CHECK(fdetail::local_waiters() == before + 3);
    CHECK(a.is_head());
    CHECK_FALSE(b.is_head());

    c.leave();  // not the head: nobody is woken
    CHECK(a.wakes + b.wakes + c.wakes == 0);
    a.leave();
    CHECK(b.wakes == 1);
    CHECK(b.is_head());
    CHECK(c.wakes == 0);
    a.leave();  // idempotent
    CHECK(b.wakes == 1);
    b.leave();
    CHECK(fdetail::local_waiters() == before);
}

TEST_CASE("local queue: a forked child starts with no queue and leaves the parent's alone") {
    fake_waiter a, b;
    a.join(id_fork, &dom);
    b.join(id_fork, &dom);
    child c([](int ready) {
        // The copies of the parent's waiters are not ours: nothing queued.
        bool ok = fdetail::local_waiters() == 0;
        fake_waiter mine;
        ok = ok && mine.join(id_fork, &dom);  // the head of a new queue
        fdetail::local_release(id_fork);
        ok = ok && mine.wakes == 1;
        (void)!::write(ready, ok ? "y" : "n", 1);
        return ok ? 0 : 1;
    });
    CHECK(c.ready());
    c.release();
    CHECK(c.wait() == 0);
    CHECK(fdetail::local_waiters() >= 2);
    CHECK(a.is_head());
    a.leave();
    CHECK(b.wakes == 1);
}

TEST_CASE("local queue: another lock, another backend or another domain is another queue") {
    fake_waiter a, b, c, d;
    CHECK(a.join(id_x, &dom));
    CHECK(b.join(id_y, &dom));
    CHECK(c.join({id_x.dev, id_x.ino, 1}, &dom));  // OFD locks do not conflict with flock's
    const char other_domain = 0;
    CHECK(d.join(id_x, &other_domain));
}

TEST_CASE("local queue: a local release wakes the head of every domain's queue of the lock") {
    fake_waiter a, b, c;
    const char other_domain = 0;
    a.join(id_x, &dom);
    b.join(id_x, &dom);
    c.join(id_x, &other_domain);
    fdetail::local_release(id_x);
    CHECK(a.wakes == 1);
    CHECK(b.wakes == 0);
    CHECK(c.wakes == 1);
}

TEST_CASE("local queue: a release by a local holder wakes the head, and only the head") {
    fake_waiter a, b;
    a.join(id_x, &dom);
    b.join(id_x, &dom);
    fdetail::local_release(id_x);
    CHECK(a.wakes == 1);
    CHECK(b.wakes == 0);
    fdetail::local_release(id_other);  // no queue there: nothing happens
    CHECK(a.wakes == 1);
}

TEST_CASE("local queue: a queue left empty comes back as a new one, with no streak") {
    // Empty queues are kept for the next waits; a kept one must not carry a
    // streak over (its first local release would then be left to other
    // processes, with a hold-off).
    fake_waiter a;
    a.join(id_kept, &dom);
    a.watching = true;
    fdetail::local_release(id_kept);  // starts a streak: a is handed the lock
    CHECK(a.wakes == 1);
    std::this_thread::sleep_for(fdetail::min_fair_share * 2);
    a.leave();  // handed locally: its leaving does not end the streak
    fake_waiter b;
    CHECK(b.join(id_kept, &dom));
    b.watching = true;
    fdetail::local_release(id_kept);
    CHECK(b.wakes == 1);
    CHECK(b.hold_off(std::chrono::steady_clock::now()) ==
          std::chrono::steady_clock::duration::zero());
    b.leave();
    // Many locks' queues emptied at once: each is joined again as new.
    std::vector<std::unique_ptr<fake_waiter>> many;
    for (unsigned long long i = 0; i < 40; ++i) {
        many.push_back(std::make_unique<fake_waiter>());
        CHECK(many.back()->join({2, i, 0}, &dom));
    }
    for (auto& w : many) w->leave();
    for (unsigned long long i = 0; i < 40; ++i) {
        fake_waiter w, x;
        CHECK(w.join({2, i, 0}, &dom));
        CHECK_FALSE(x.join({2, i, 0}, &dom));
        w.leave();
        CHECK(x.wakes == 1);
    }
}

TEST_CASE(
    "local queue: after a fair share of local handoffs, a release is left to the close "
    "event") {
    fake_waiter a;
    a.join(id_fair, &dom);
    a.watching = true;
    fdetail::local_release(id_fair);  // starts a streak
    CHECK(a.wakes == 1);
    std::this_thread::sleep_for(fdetail::min_fair_share * 2);
    fdetail::local_release(id_fair);  // over the share: yield to other processes
    CHECK(a.wakes == 1);
    CHECK(a.hold_off(std::chrono::steady_clock::now()) <=
          fdetail::yield_grace);  // the head holds off, for the grace at most
    std::this_thread::sleep_for(fdetail::yield_grace);
    CHECK(a.hold_off(std::chrono::steady_clock::now()) ==
          std::chrono::steady_clock::duration::zero());
    fdetail::local_release(id_fair);  // a new streak
    CHECK(a.wakes == 2);

    SECTION("a head that does not watch for close events is always woken") {
        a.watching = false;
        std::this_thread::sleep_for(fdetail::min_fair_share * 2);
        fdetail::local_release(id_fair);
        CHECK(a.wakes == 3);
    }
    SECTION("a lock taken other than from a local hand ends the streak") {
        fake_waiter b;
        b.join(id_fair, &dom);
        b.watching = true;
        a.leave();  // took it after the local release: the streak goes on
        CHECK(b.wakes == 1);
        fake_waiter c;
        c.join(id_fair, &dom);
        c.watching = true;
        b.leave();  // b was never handed the lock locally: the streak ends
        CHECK(c.wakes == 1);
        std::this_thread::sleep_for(fdetail::min_fair_share * 2);
        fdetail::local_release(id_fair);
        CHECK(c.wakes == 2);
    }
}

TEST_CASE(
    "uv: N waiters on one loop share one descriptor and one watch, and acquire once each "
    "in arrival order") {
    scratch s;
    const auto p = s / "a.lock";
    auto holder = hold_in_child(p);
    REQUIRE(holder.ready());
    const int watches0 = inotify_watches();
    uv_loop_t loop;
    uv_loop_init(&loop);
    constexpr int n = 200;
    std::vector<int> order;
    exclusion ex;
    for (int i = 0; i < n; ++i)
        filelock::uv::async_lock(&loop, p, 60s, [&, i](std::error_code ec, lock_file l) {
            REQUIRE_FALSE(ec);
            ex.enter();
            order.push_back(i);
            uv_release_later(&loop, std::move(l), &ex);
        });
    // The head attempted, failed and watches; the others only wait.
    REQUIRE(uv_run_until(&loop, [&] { return inotify_watches() > watches0; }));
    for (int i = 0; i < 20; ++i) uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(fds_on(p) == 1);
    CHECK(inotify_watches() - watches0 == 1);
    CHECK(order.empty());

    holder.release();
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(order == iota(n));
    CHECK(ex.overlaps == 0);
    CHECK(fds_on(p) == 0);
    CHECK(fdetail::local_waiters() == 0);
    CHECK(uv_loop_close(&loop) == 0);
}

TEST_CASE("uv: cancelling queued waiters, the head among them, leaves the queue intact") {
    scratch s;
    const auto p = s / "a.lock";
    auto holder = hold_in_child(p);
    REQUIRE(holder.ready());
    uv_loop_t loop;
    uv_loop_init(&loop);
    constexpr int n = 10;
    std::vector<int> order;
    std::vector<int> cancelled;
    std::vector<filelock::uv::request> reqs;
    for (int i = 0; i < n; ++i)
        reqs.push_back(
            filelock::uv::async_lock(&loop, p, 60s, [&, i](std::error_code ec, lock_file l) {
                if (ec) {
                    CHECK(ec == std::errc::operation_canceled);
                    cancelled.push_back(i);
                    return;
                }
                order.push_back(i);
                uv_release_later(&loop, std::move(l), nullptr);
            }));
    REQUIRE(uv_run_until(&loop, [&] { return fds_on(p) == 1; }));  // the head's
    reqs[0].cancel();
    reqs[4].cancel();
    reqs[9].cancel();
    REQUIRE(uv_run_until(&loop, [&] { return cancelled.size() == 3; }));
    // The next in line took over the one descriptor.
    REQUIRE(uv_run_until(&loop, [&] { return fds_on(p) == 1; }));
    CHECK(fdetail::local_waiters() == 7);

    holder.release();
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(cancelled == std::vector<int>{0, 4, 9});
    CHECK(order == iota(n, {0, 4, 9}));
    CHECK(uv_loop_close(&loop) == 0);
}

TEST_CASE("uv: waiters of two loops on two threads (a queue each) exclude each other") {
    scratch s;
    const auto p = s / "a.lock";
    exclusion ex;
    // Catch2's assertions are not thread-safe: count, check after the join.
    std::atomic<int> acquired{0}, errors{0}, unclosed{0};
    auto run_loop = [&] {
        uv_loop_t loop;
        uv_loop_init(&loop);
        for (int i = 0; i < 100; ++i)
            filelock::uv::async_lock(&loop, p, 60s, [&](std::error_code ec, lock_file l) {
                if (ec) {
                    ++errors;
                    return;
                }
                ex.enter();
                ++acquired;
                uv_release_later(&loop, std::move(l), &ex);
            });
        uv_run(&loop, UV_RUN_DEFAULT);
        if (uv_loop_close(&loop) != 0) ++unclosed;
    };
    std::thread t1(run_loop), t2(run_loop);
    t1.join();
    t2.join();
    CHECK(errors == 0);
    CHECK(unclosed == 0);
    CHECK(acquired == 200);
    CHECK(ex.overlaps == 0);
    CHECK(fdetail::local_waiters() == 0);
}

TEST_CASE("uv: with queue_local_waiters off, each waiter attempts with its own descriptor") {
    scratch s;
    const auto p = s / "a.lock";
    auto holder = hold_in_child(p);
    REQUIRE(holder.ready());
    uv_loop_t loop;
    uv_loop_init(&loop);
    filelock::lock_options o;
    o.queue_local_waiters = false;
    int acquired = 0;
    for (int i = 0; i < 5; ++i)
        filelock::uv::async_lock(&loop, p, 60s, o, [&](std::error_code ec, lock_file l) {
            REQUIRE_FALSE(ec);
            ++acquired;
            uv_release_later(&loop, std::move(l), nullptr);
        });
    REQUIRE(uv_run_until(&loop, [&] { return fds_on(p) == 5; }));
    holder.release();
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(acquired == 5);
    CHECK(uv_loop_close(&loop) == 0);
}

TEST_CASE("uv: local waiters and another process's waiters exclude each other") {
    scratch s;
    const auto p = s / "a.lock";
    const auto counter = s / "counter";
    write_file(counter, "0");
    // Read, then write one more, under the lock: a lost update shows as a
    // total below 2 * rounds.
    const auto bump = [counter] {
        write_file(counter, std::to_string(std::stoi(read_file(counter)) + 1));
    };
    constexpr int rounds = 200;
    child other([&](int ready) {
        (void)!::write(ready, "r", 1);
        for (int i = 0; i < rounds; ++i) {
            auto l = filelock::lock(p, 60s);
            bump();
        }
        return 0;
    });
    REQUIRE(other.ready());
    uv_loop_t loop;
    uv_loop_init(&loop);
    for (int i = 0; i < rounds; ++i)
        filelock::uv::async_lock(&loop, p, 60s, [&](std::error_code ec, lock_file l) {
            REQUIRE_FALSE(ec);
            bump();
            uv_release_later(&loop, std::move(l), nullptr);
        });
    uv_run(&loop, UV_RUN_DEFAULT);
    other.release();
    CHECK(other.wait() == 0);
    CHECK(read_file(counter) == std::to_string(2 * rounds));
    CHECK(uv_loop_close(&loop) == 0);
}

TEST_CASE(
    "asio: N waiters on one context share one descriptor and one watch, and acquire once "
    "each in arrival order") {
    scratch s;
    const auto p = s / "a.lock";
    auto holder = hold_in_child(p);
    REQUIRE(holder.ready());
    const int watches0 = inotify_watches();
    asio::io_context io;
    constexpr int n = 200;
    std::vector<int> order;
    exclusion ex;
    for (int i = 0; i < n; ++i)
        filelock::async_lock(io, p, 60s, [&, i](std::error_code ec, lock_file l) {
            REQUIRE_FALSE(ec);
            ex.enter();
            order.push_back(i);
            asio_release_later(io, std::move(l), &ex);
        });
    REQUIRE(asio_run_until(io, [&] { return inotify_watches() > watches0; }));
    CHECK(fds_on(p) == 1);  // the head's
    CHECK(inotify_watches() - watches0 == 1);
    CHECK(order.empty());

    holder.release();
    io.run();
    CHECK(order == iota(n));
    CHECK(ex.overlaps == 0);
    CHECK(fds_on(p) == 0);
    CHECK(fdetail::local_waiters() == 0);
}

TEST_CASE("asio: cancelling queued waiters, the head among them, leaves the queue intact") {
    scratch s;
    const auto p = s / "a.lock";
    auto holder = hold_in_child(p);
    REQUIRE(holder.ready());
    asio::io_context io;
    constexpr int n = 10;
    std::vector<int> order, cancelled;
    std::vector<asio::cancellation_signal> signals(n);
    for (int i = 0; i < n; ++i)
        filelock::async_lock(
            io, p, 60s,
            asio::bind_cancellation_slot(signals[static_cast<size_t>(i)].slot(),
                                         [&, i](std::error_code ec, lock_file l) {
                                             if (ec) {
                                                 CHECK(ec == asio::error::operation_aborted);
                                                 cancelled.push_back(i);
                                                 return;
                                             }
                                             order.push_back(i);
                                             asio_release_later(io, std::move(l), nullptr);
                                         }));
    REQUIRE(asio_run_until(io, [&] { return fds_on(p) == 1; }));
    signals[0].emit(asio::cancellation_type::terminal);
    signals[4].emit(asio::cancellation_type::terminal);
    signals[9].emit(asio::cancellation_type::terminal);
    REQUIRE(asio_run_until(io, [&] { return cancelled.size() == 3; }));
    REQUIRE(asio_run_until(io, [&] { return fds_on(p) == 1; }));
    CHECK(fdetail::local_waiters() == 7);

    holder.release();
    io.run();
    CHECK(cancelled == std::vector<int>{0, 4, 9});
    CHECK(order == iota(n, {0, 4, 9}));
}

TEST_CASE("asio: waiters of a 4-thread context exclude each other and each acquire once") {
    scratch s;
    const auto p = s / "a.lock";
    asio::io_context io;
    exclusion ex;
    std::atomic<int> acquired{0}, errors{0};
    for (int i = 0; i < 200; ++i)
        filelock::async_lock(io, p, 60s, [&](std::error_code ec, lock_file l) {
            if (ec) {
                ++errors;
                return;
            }
            ex.enter();
            ++acquired;
            asio_release_later(io, std::move(l), &ex);
        });
    std::vector<std::thread> threads;
    for (int i = 0; i < 4; ++i) threads.emplace_back([&] { io.run(); });
    for (auto& t : threads) t.join();
    CHECK(errors == 0);
    CHECK(acquired == 200);
    CHECK(ex.overlaps == 0);
    CHECK(fdetail::local_waiters() == 0);
}

TEST_CASE(
    "lock(): threads of one process queue behind one descriptor and acquire in arrival "
    "order") {
    scratch s;
    const auto p = s / "a.lock";
    auto holder = hold_in_child(p);
    REQUIRE(holder.ready());
    constexpr int n = 16;
    std::mutex m;
    std::vector<int> order;
    exclusion ex;
    std::atomic<int> errors{0};
    std::vector<std::thread> threads;
    const auto base = fdetail::local_waiters();
    for (int i = 0; i < n; ++i) {
        threads.emplace_back([&, i] {
            std::error_code ec;
            auto l = filelock::lock(p, 60s, {}, ec);
            if (ec) {
                ++errors;
                return;
            }
            ex.enter();
            {
                std::lock_guard<std::mutex> g(m);
                order.push_back(i);
            }
            ex.exit();
        });
        // The next thread starts once this one is in the queue.
        while (fdetail::local_waiters() < base + static_cast<size_t>(i) + 1)
            std::this_thread::yield();
    }
    while (fds_on(p) < 1) std::this_thread::yield();  // the head's first attempt
    std::this_thread::sleep_for(10ms);                // room for others to open one, wrongly
    CHECK(fds_on(p) == 1);
    holder.release();
    for (auto& t : threads) t.join();
    CHECK(errors == 0);
    CHECK(order == iota(n));
    CHECK(ex.overlaps == 0);
}

TEST_CASE("lock(): a queued thread times out at its deadline, naming the holder") {
    scratch s;
    const auto p = s / "a.lock";
    auto holder = hold_in_child(p);
    REQUIRE(holder.ready());
    const auto base = fdetail::local_waiters();
    std::error_code head_ec;
    std::thread head([&] { auto l = filelock::lock(p, 60s, {}, head_ec); });
    while (fdetail::local_waiters() < base + 1) std::this_thread::yield();
    try {
        (void)filelock::lock(p, 50ms);
        FAIL("no timeout");
    } catch (const filelock::timeout_error& e) {
        CHECK(e.path() == p);
        CHECK_FALSE(e.holder().empty());
    }
    holder.release();
    head.join();
    CHECK_FALSE(head_ec);
}
