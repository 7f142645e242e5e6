// SPDX-License-Identifier: MIT
// The libuv adapter: callbacks, the awaitable, cancellation (also from other
// threads), and a loop that always closes cleanly afterwards.

#include <filelock/detail/release_source.hpp>
#include <filelock/uv.hpp>

#include "support.hpp"

#include <atomic>
#include <csignal>
#include <random>
#include <thread>

using namespace test;
using filelock::errc;
using filelock::lock_file;
namespace fuv = filelock::uv;

namespace {

// Every test's loop must close cleanly: no handle of ours is left behind.
struct uv_loop_fixture {
    uv_loop_t loop_storage{};
    uv_loop_t* loop = &loop_storage;
    uv_loop_fixture() {
        warm_up();
        REQUIRE(uv_loop_init(loop) == 0);
    }
    // libuv opens a few process-wide descriptors on first use (signal pipe):
    // open them before any test counts descriptors.
    static void warm_up() {
        static const bool done = [] {
            uv_loop_t l;
            uv_loop_init(&l);
            uv_async_t a;
            uv_async_init(&l, &a, nullptr);
            uv_close(reinterpret_cast<uv_handle_t*>(&a), nullptr);
            uv_run(&l, UV_RUN_DEFAULT);
            uv_loop_close(&l);
            return true;
        }();
        (void)done;
    }
    ~uv_loop_fixture() {
        uv_run(loop, UV_RUN_DEFAULT);  // let close callbacks run
        CHECK(uv_loop_close(loop) == 0);
    }
    void run() { uv_run(loop, UV_RUN_DEFAULT); }
};

struct outcome {
    bool called = false;
    std::error_code ec;
    lock_file lock;
};

auto capture(outcome& out) {
    return [&out](std::error_code ec, lock_file l) {
        out.called = true;
        out.ec = ec;
        out.lock = std::move(l);
    };
}

// co_await sleep(loop, d): a uv timer as an awaitable, for holding a lock
// across a suspension.
struct loop_sleep {
    uv_loop_t* loop;
    std::chrono::milliseconds d;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) {
        auto* t = new uv_timer_t;
        uv_timer_init(loop, t);
        t->data = h.address();
        uv_timer_start(
            t,
            [](uv_timer_t* t) {
                auto h = std::coroutine_handle<>::from_address(t->data);
                uv_close(reinterpret_cast<uv_handle_t*>(t),
                         [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
                h.resume();
            },
            static_cast<uint64_t>(d.count()), 0);
    }
    void await_resume() const noexcept {}
};

// Runs `f` on a uv timer after `d` (loop thread).
template <class F>
void after(uv_loop_t* loop, std::chrono::milliseconds d, F f) {
    struct holder {
        uv_timer_t t;
        F f;
    };
    auto* h = new holder{{}, std::move(f)};
    uv_timer_init(loop, &h->t);
    h->t.data = h;
    uv_timer_start(
        &h->t,
        [](uv_timer_t* t) {
            auto* h = static_cast<holder*>(t->data);
            h->f();
            uv_close(reinterpret_cast<uv_handle_t*>(t),
                     [](uv_handle_t* t) { delete static_cast<holder*>(t->data); });
        },
        static_cast<uint64_t>(d.count()), 0);
}

}  // namespace

TEST_CASE("uv: an uncontended lock is delivered on a later loop iteration, not inline") {
    scratch s;
    uv_loop_fixture::warm_up();
    const int fds = settled_fd_count();
    {
        uv_loop_fixture f;
        outcome out;
        auto req = fuv::async_lock(f.loop, s / "a.lock", 5s, capture(out));
        CHECK(!out.called);
        CHECK(req.pending());
        f.run();
        CHECK(out.called);
        CHECK(!out.ec);
        CHECK(out.lock.is_locked());
        CHECK(!req.pending());
        req.cancel();  // after completion: nothing happens
        CHECK(out.lock.is_locked());
    }
    CHECK(settled_fd_count() == fds);
}

TEST_CASE(
    "uv: a lock released between the first attempt and the watch is delivered on a later loop "
    "iteration, not inline") {
    // The first attempt meets contention; the attempt made once the release
    // watch is set up wins. That win came inside async_lock(): the awaitable
    // then resumed its coroutine inside await_suspend, which went on to use
    // the awaitable the coroutine had destroyed (ASan, in the torture). The
    // release lands at a point swept across the window, many times over.
    scratch s;
    const auto p = s / "a.lock";
    const int other = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    REQUIRE(other >= 0);
    std::atomic<int> go{-1};
    std::atomic<bool> stop{false};
    std::thread releaser([&] {
        while (!stop) {
            const int d = go.exchange(-1);
            if (d < 0) {
                std::this_thread::yield();
                continue;
            }
            const auto until = std::chrono::steady_clock::now() + std::chrono::nanoseconds(d);
            while (std::chrono::steady_clock::now() < until) {
            }
            ::flock(other, LOCK_UN);
        }
    });
    int inline_calls = 0, won = 0;
    for (int i = 0; i < 400; ++i) {
        REQUIRE(::flock(other, LOCK_EX) == 0);
        uv_loop_fixture f;
        bool inside = true, called_inside = false;
        outcome out;
        go = (i % 100) * 500;  // 0-50 us after the call begins
        fuv::async_lock(f.loop, p, 5s, [&](std::error_code ec, lock_file l) {
            called_inside = inside;
            capture(out)(ec, std::move(l));
        });
        inside = false;
        f.run();
        inline_calls += called_inside;
        won += out.called && !out.ec;
        while (go != -1) std::this_thread::yield();  // the releaser took it
        out.lock = lock_file();
    }
    stop = true;
    releaser.join();
    ::close(other);
    CHECK(inline_calls == 0);
    CHECK(won == 400);
}

TEST_CASE("uv: a contended lock is won when another process releases it") {
    scratch s;
    const auto p = s / "a.lock";
    child holder([&](int ready) {
        lock_file l(p);
        (void)!::write(ready, "r", 1);
        ::usleep(150000);
        return 0;
    });
    REQUIRE(holder.ready());
    uv_loop_fixture f;
    outcome out;
    fuv::async_lock(f.loop, p, 30s, capture(out));
    f.run();
    CHECK(!out.ec);
    CHECK(out.lock.is_locked());
}

TEST_CASE("uv: a completion callback that calls cancel_all leaves no waiter in the idle source") {
    using filelock::detail::release_source;
    scratch s;
    release_source::take().reset();  // the idle one closed: this loop's goes back there
    lock_file ha(s / "a.lock"), hb(s / "b.lock");
    int done = 0;
    {
        uv_loop_fixture f;
        outcome b;
        // The first one to finish cancels the other from its callback,
        // before its own watch clean-up: the loop's last operation closes
        // the loop's source under it.
        fuv::async_lock(f.loop, s / "a.lock", 30s, [&](std::error_code, lock_file) {
            fuv::cancel_all(f.loop);
            ++done;
        });
        fuv::async_lock(f.loop, s / "b.lock", 30s, capture(b));
        after(f.loop, 100ms, [&] { ha.close(); });
        f.run();
        CHECK(b.ec == std::errc::operation_canceled);
    }
    CHECK(done == 1);
    // The next driver to take the idle source is never handed a waiter it
    // did not register (the finished operation's memory is gone).
    auto src = release_source::take();
    REQUIRE(src);
    CHECK(src->idle());
}

TEST_CASE("uv: the deadline gives errc::timeout; timeout 0 is one attempt") {
    scratch s;
    const auto p = s / "a.lock";
    child holder = hold_in_child(p);
    REQUIRE(holder.ready());
    uv_loop_fixture f;
    outcome a, b;
    const auto start = std::chrono::steady_clock::now();
    fuv::async_lock(f.loop, p, 100ms, capture(a));
    fuv::async_lock(f.loop, p, 0s, capture(b));
    f.run();
    CHECK(a.ec == errc::timeout);
    CHECK(a.ec == std::errc::timed_out);
    CHECK(b.ec == errc::timeout);
    CHECK(std::chrono::steady_clock::now() - start >= 100ms);
}

TEST_CASE("uv: cancel right after the call, while waiting, and from another thread") {
    scratch s;
    const auto p = s / "a.lock";
    uv_loop_fixture::warm_up();
    const int fds = settled_fd_count();
    SECTION("right after the call (a lock won inside it is released again)") {
        uv_loop_fixture f;
        outcome out;
        auto req = fuv::async_lock(f.loop, p, 30s, capture(out));
        req.cancel();
        f.run();
        CHECK(out.ec == std::errc::operation_canceled);
        CHECK(!out.lock.is_locked());
        CHECK(lock_is_free(p));
    }
    SECTION("while waiting") {
        lock_file held(p);
        uv_loop_fixture f;
        outcome out;
        auto req = fuv::async_lock(f.loop, p, 30s, capture(out));
        after(f.loop, 30ms, [req] { req.cancel(); });
        f.run();
        CHECK(out.ec == std::errc::operation_canceled);
    }
    SECTION("from another thread") {
        lock_file held(p);
        uv_loop_fixture f;
        outcome out;
        auto req = fuv::async_lock(f.loop, p, 30s, capture(out));
        std::thread t([req] {
            std::this_thread::sleep_for(30ms);
            req.cancel();
        });
        f.run();
        t.join();
        CHECK(out.ec == std::errc::operation_canceled);
    }
    CHECK(settled_fd_count() == fds);
}

TEST_CASE("uv: a cancel racing with the win delivers the lock or releases it, never orphans it") {
    scratch s;
    const auto p = s / "a.lock";
    std::mt19937 rng(7);
    int delivered = 0, cancelled = 0;
    for (int i = 0; i < 200; ++i) {
        uv_loop_fixture f;
        bool ok = false;
        auto req = fuv::async_lock(f.loop, p, 5s, [&](std::error_code ec, lock_file l) {
            if (!ec) {
                ok = l.is_locked();
                ++delivered;
            } else {
                // cancelled: nobody may hold the lock now
                ok = ec == std::errc::operation_canceled && !l.is_locked() && lock_is_free(p);
                ++cancelled;
            }
        });
        const auto spin = std::uniform_int_distribution<int>(0, 200)(rng);
        std::thread t([req, spin] {
            std::atomic<int> k{0};
            while (k.fetch_add(1, std::memory_order_relaxed) < spin * 50) {
            }
            req.cancel();
        });
        f.run();
        t.join();
        REQUIRE(ok);
        REQUIRE(lock_is_free(p));
    }
    CHECK(delivered + cancelled == 200);
}

TEST_CASE("uv: an exception escaping a completion callback ends the program, never crosses libuv") {
    // It cannot unwind through libuv's C frames (757dff8 let it, leaving the
    // loop's timer list mid-iteration): std::terminate, as noexcept would.
    scratch s;
    const auto p = s / "a.lock";
    child c([p](int ready) {
        std::signal(SIGABRT, SIG_DFL);  // not the test framework's handler
        (void)!::write(ready, "r", 1);
        uv_loop_t loop;
        uv_loop_init(&loop);
        fuv::async_lock(&loop, p, 5s,
                        [](std::error_code, lock_file) { throw std::runtime_error("boom"); });
        try {
            uv_run(&loop, UV_RUN_DEFAULT);
        } catch (...) {
            return 1;  // it crossed libuv
        }
        return 0;
    });
    CHECK(c.ready());
    c.release();
    CHECK(c.wait() == 128 + SIGABRT);
}

TEST_CASE("uv: errors are reported at once with their code") {
    scratch s;
    write_file(s / "file", "");
    uv_loop_fixture f;
    outcome a, b, c;
    fuv::async_lock(f.loop, s / "missing" / "a.lock", 30s, capture(a));
    fuv::async_lock(f.loop, s.dir, 30s, capture(b));
    fuv::async_lock(f.loop, s / "file" / "x", 30s, capture(c));
    const auto start = std::chrono::steady_clock::now();
    f.run();
    CHECK(a.ec == std::errc::no_such_file_or_directory);
    CHECK(b.ec == std::errc::is_a_directory);
    CHECK(c.ec == std::errc::not_a_directory);
    CHECK(std::chrono::steady_clock::now() - start < 10s);
}

TEST_CASE("uv: co_await async_lock returns the lock or throws with the path") {
    scratch s;
    const auto p = s / "a.lock";
    uv_loop_fixture f;
    auto body = [&]() -> fuv::task<int> {
        auto l = co_await fuv::async_lock(f.loop, p, 5s);
        CHECK(l.is_locked());
        CHECK(read_file(p) == " " + std::to_string(::getpid()) + "\n");
        int errors = 0;
        try {
            co_await fuv::async_lock(f.loop, p, 20ms);
        } catch (const filelock::timeout_error& e) {
            CHECK(e.path() == p);
            CHECK(e.holder() == std::to_string(::getpid()));
            ++errors;
        }
        try {
            co_await fuv::async_lock(f.loop, s / "missing" / "x", 5s);
        } catch (const fs::filesystem_error& e) {
            CHECK(e.code() == std::errc::no_such_file_or_directory);
            CHECK(e.path1() == s / "missing" / "x");
            ++errors;
        }
        std::error_code ec;
        auto none = co_await fuv::async_lock(f.loop, p, 0s, {}, {}, ec);
        CHECK(ec == errc::timeout);
        CHECK(!none.is_locked());
        co_return errors;
    };
    auto t = body();
    t.start();
    f.run();
    REQUIRE(t.done());
    CHECK(t.result() == 2);
}

TEST_CASE("uv: a stop_token request from another thread cancels the awaiting coroutine") {
    scratch s;
    const auto p = s / "a.lock";
    lock_file held(p);
    uv_loop_fixture f;
    std::stop_source stop;
    std::error_code seen;
    auto body = [&]() -> fuv::task<> {
        try {
            co_await fuv::async_lock(f.loop, p, 30s, stop.get_token());
        } catch (const std::system_error& e) {
            seen = e.code();
        }
    };
    auto t = body();
    t.start();
    std::thread canceller([&] {
        std::this_thread::sleep_for(30ms);
        stop.request_stop();
    });
    f.run();
    canceller.join();
    CHECK(t.done());
    CHECK(seen == std::errc::operation_canceled);
}

TEST_CASE("uv: a stop already requested cancels before any attempt") {
    scratch s;
    uv_loop_fixture f;
    std::stop_source stop;
    stop.request_stop();
    std::error_code ec;
    auto body = [&]() -> fuv::task<> {
        auto l = co_await fuv::async_lock(f.loop, s / "a.lock", 30s, {}, stop.get_token(), ec);
        CHECK(!l.is_locked());
    };
    auto t = body();
    t.start();
    f.run();
    CHECK(ec == std::errc::operation_canceled);
}

TEST_CASE("uv: hundreds of coroutines on one loop each acquire once, exclusively") {
    scratch s;
    const auto p = s / "a.lock";
    uv_loop_fixture f;
    constexpr int n = 200;
    int inside = 0, overlaps = 0, counter = 0;
    filelock::lock_options o;
    o.backoff.cap = 10ms;
    auto body = [&]() -> fuv::task<> {
        auto l = co_await fuv::async_lock(f.loop, p, 120s, o);
        if (inside++ != 0) ++overlaps;
        co_await loop_sleep{f.loop, 0ms};  // hold across a suspension
        ++counter;
        --inside;
    };
    std::vector<fuv::task<>> tasks;
    for (int i = 0; i < n; ++i) {
        tasks.push_back(body());
        tasks.back().start();
    }
    f.run();
    CHECK(overlaps == 0);
    CHECK(counter == n);
    for (auto& t : tasks) CHECK(t.done());
}

TEST_CASE("uv: tasks compose with symmetric transfer") {
    uv_loop_fixture f;
    auto inner = [&](int x) -> fuv::task<int> {
        co_await loop_sleep{f.loop, 1ms};
        co_return x * 2;
    };
    auto outer = [&]() -> fuv::task<int> {
        int sum = 0;
        for (int i = 0; i < 1000; ++i)
            sum += co_await inner(1);  // deep chains do not grow the stack
        co_return sum;
    };
    auto t = outer();
    t.start();
    f.run();
    CHECK(t.result() == 2000);
}

TEST_CASE("uv: after uv_stop, cancel_all and one more run let the loop close") {
    scratch s;
    const auto p = s / "a.lock";
    uv_loop_fixture::warm_up();
    const int fds = settled_fd_count();
    {
        child holder = hold_in_child(p);
        REQUIRE(holder.ready());
        uv_loop_fixture f;
        std::vector<outcome> outs(10);
        for (auto& o : outs) fuv::async_lock(f.loop, p, 30s, capture(o));
        after(f.loop, 20ms, [&] { uv_stop(f.loop); });
        f.run();
        CHECK(uv_loop_close(f.loop) == UV_EBUSY);
        fuv::cancel_all(f.loop);
        for (auto& o : outs) CHECK(o.ec == std::errc::operation_canceled);
        // the fixture runs the loop and asserts uv_loop_close() == 0
    }
    CHECK(settled_fd_count() == fds);
}

TEST_CASE("uv: destroying a coroutine suspended on async_lock abandons the operation") {
    scratch s;
    const auto p = s / "a.lock";
    lock_file held(p);
    uv_loop_fixture f;
    bool resumed = false;
    {
        auto body = [&]() -> fuv::task<> {
            co_await fuv::async_lock(f.loop, p, 30s);
            resumed = true;
        };
        auto t = body();
        t.start();
        uv_run(f.loop, UV_RUN_NOWAIT);
    }  // task destroyed while suspended
    held.close();
    f.run();
    CHECK(!resumed);
    CHECK(lock_is_free(p));
}

TEST_CASE("uv: options reach the lock: shared, OFD, templates") {
    scratch s;
    const auto p = s / "a.lock";
    uv_loop_fixture f;
    filelock::lock_options sh;
    sh.mode = filelock::lock_mode::shared;
    filelock::lock_options ofd;
    ofd.backend = filelock::lock_backend::ofd;
    ofd.content_template = "{pid}:{{}}";
    outcome a, b, c, d;
    fuv::async_lock(f.loop, p, 5s, sh, capture(a));
    fuv::async_lock(f.loop, p, 5s, sh, capture(b));
    f.run();
    CHECK((!a.ec && !b.ec));
    fuv::async_lock(f.loop, p, 0s, capture(c));
    f.run();
    CHECK(c.ec == errc::timeout);
    a.lock.close();
    b.lock.close();
    fuv::async_lock(f.loop, p, 5s, ofd, capture(d));
    f.run();
    CHECK(!d.ec);
    CHECK(read_file(p) == " " + std::to_string(::getpid()) + ":{}\n");
}

TEST_CASE(
    "uv: a stop request completes with a code that matches condition::cancelled; the "
    "coroutine form throws std::system_error, not a filesystem error") {
    uv_loop_fixture f;
    scratch s;
    const auto p = s / "a.lock";
    lock_file held(p);
    std::stop_source stop;
    bool caught_system_error = false, caught_filesystem_error = false;
    std::error_code code;
    auto body = [&]() -> fuv::task<> {
        try {
            co_await fuv::async_lock(f.loop, p, 5s, stop.get_token());
        } catch (const fs::filesystem_error&) {
            caught_filesystem_error = true;
        } catch (const std::system_error& e) {
            caught_system_error = true;
            code = e.code();
        }
    };
    auto t = body();
    t.start();
    uv_run(f.loop, UV_RUN_NOWAIT);
    stop.request_stop();
    f.run();
    CHECK(caught_system_error);
    CHECK(!caught_filesystem_error);
    CHECK(code == std::errc::operation_canceled);
    CHECK(code == filelock::condition::cancelled);
}

TEST_CASE("uv: designated-initializer options in co_await expressions") {
    uv_loop_fixture f;
    scratch s;
    const auto p = s / "a.lock";
    std::string content;
    auto body = [&]() -> fuv::task<> {
        auto l = co_await fuv::async_lock(f.loop, p, 1s, {.content_template = "{pid};uv"});
        content = read_file(p);
    };
    auto t = body();
    t.start();
    f.run();
    CHECK(content == " " + std::to_string(::getpid()) + ";uv\n");
}

TEST_CASE(
    "uv: closing every handle with uv_walk at shutdown, then releasing a lock, never "
    "aborts") {
    scratch s;
    const auto p = s / "a.lock";
    child c([&](int) {
        filelock::lock_file held(p);
        uv_loop_t loop;
        uv_loop_init(&loop);
        fuv::async_lock(&loop, p, 5s, [](std::error_code, filelock::lock_file) {});
        uv_run(&loop, UV_RUN_NOWAIT);  // waiting: the head of the local queue
        uv_walk(
            &loop,
            [](uv_handle_t* h, void*) {
                if (!uv_is_closing(h)) uv_close(h, nullptr);
            },
            nullptr);
        uv_run(&loop, UV_RUN_DEFAULT);
        if (uv_loop_close(&loop) != 0) return 2;
        held.close();  // wakes the local queue's head: its loop is gone
        return 0;
    });
    c.release();
    CHECK(c.wait() == 0);
}
