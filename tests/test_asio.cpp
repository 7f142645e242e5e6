// SPDX-License-Identifier: MIT
// The Asio adapter: completion tokens, cancellation, lifetimes, contention.
// Compiled once per Asio flavour (tests/asio_flavour.hpp): test_asio with
// standalone Asio, test_boost_asio with Boost.Asio.

#include "asio_flavour.hpp"
#include "support.hpp"

#include <atomic>
#include <optional>
#include <thread>
#include <variant>

using namespace test;
using filelock::errc;
using filelock::lock_file;
using test::asio_error_code;

namespace {

// What a callback saw.
struct outcome {
    bool called = false;
    asio_error_code ec;
    lock_file lock;
};

// The flavour's operation_aborted as a std::error_code (what the coroutine
// form throws).
const std::error_code aborted = asio_error_code(asio::error::operation_aborted);

// Creates the io_context's reactor (epoll, eventfd, timerfd) so that
// descriptor counts taken afterwards see only what operations open.
void warm_up(asio::io_context& io) { asio::steady_timer t(io); }

auto capture(outcome& out) {
    return [&out](asio_error_code ec, lock_file l) {
        out.called = true;
        out.ec = ec;
        out.lock = std::move(l);
    };
}

}  // namespace

TEST_CASE("asio: co_await async_lock(path, timeout) acquires an uncontended lock") {
    scratch s;
    const auto p = s / "a.lock";
    asio::io_context io;
    bool done = false;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            auto l = co_await filelock::async_lock(p, 5s);
            CHECK(l.is_locked());
            CHECK(read_file(p) == " " + std::to_string(::getpid()) + "\n");
            CHECK(!lock_is_free(p));
            done = true;
        },
        asio::detached);
    io.run();
    CHECK(done);
    CHECK(lock_is_free(p));
}

TEST_CASE("asio: the handler is never invoked from inside the initiating function") {
    scratch s;
    asio::io_context io;
    outcome out;
    filelock::async_lock(io, s / "a.lock", 5s, capture(out));
    CHECK(!out.called);
    io.run();
    CHECK(out.called);
    CHECK(!out.ec);
    CHECK(out.lock.is_locked());
}

TEST_CASE("asio: a contended lock is won when another process releases it") {
    scratch s;
    const auto p = s / "a.lock";
    child holder([&](int ready) {
        lock_file l(p);
        (void)!::write(ready, "r", 1);
        ::usleep(150000);
        return 0;
    });
    REQUIRE(holder.ready());
    asio::io_context io;
    outcome out;
    filelock::async_lock(io, p, 30s, capture(out));
    io.run();
    CHECK(!out.ec);
    CHECK(out.lock.is_locked());
    CHECK(read_file(p) == " " + std::to_string(::getpid()) + "\n");
}

TEST_CASE("asio: timeout completes with errc::timeout, not before the deadline") {
    scratch s;
    const auto p = s / "a.lock";
    child holder = hold_in_child(p);
    REQUIRE(holder.ready());
    asio::io_context io;
    outcome out;
    const auto start = std::chrono::steady_clock::now();
    filelock::async_lock(io, p, 200ms, capture(out));
    io.run();
    const auto elapsed = std::chrono::steady_clock::now() - start;
    CHECK(out.ec == errc::timeout);
    CHECK(out.ec == std::errc::timed_out);
    CHECK(!out.lock.is_locked());
    CHECK(elapsed >= 200ms);
    CHECK(elapsed < 200ms + 30s);  // bounded: never hangs (timing claims live in bench/)
}

TEST_CASE("asio: timeout 0 is one attempt; contention is errc::timeout") {
    scratch s;
    const auto p = s / "a.lock";
    lock_file held(p);
    asio::io_context io;
    outcome out;
    filelock::async_lock(io, p, 0s, capture(out));
    io.run();
    CHECK(out.ec == errc::timeout);
    held.close();
    filelock::async_lock(io, p, 0s, capture(out));
    io.restart();
    io.run();
    CHECK(!out.ec);
    CHECK(out.lock.is_locked());
}

TEST_CASE("asio: the coroutine form throws timeout_error with the path and the holder") {
    scratch s;
    const auto p = s / "a.lock";
    lock_file held(p);
    asio::io_context io;
    bool caught = false;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            try {
                co_await filelock::async_lock(p, 30ms);
            } catch (const filelock::timeout_error& e) {
                caught = true;
                CHECK(e.path() == p);
                CHECK(e.holder() == std::to_string(::getpid()));
            }
        },
        asio::detached);
    io.run();
    CHECK(caught);
}

TEST_CASE("asio: completion tokens: use_future, as_tuple, deferred, use_awaitable") {
    scratch s;
    const auto p = s / "a.lock";
    asio::io_context io;

    SECTION("use_future") {
        auto f = filelock::async_lock(io, p, 5s, asio::use_future);
        io.run();
        auto l = f.get();
        CHECK(l.is_locked());
        lock_file held(s / "b.lock");
        auto g = filelock::async_lock(io, s / "b.lock", 0s, asio::use_future);
        io.restart();
        io.run();
        CHECK_THROWS_AS(g.get(), test::asio_system_error);
        // use_future's handlers run on the system executor's threads, and
        // async_compose (Asio 1.22) releases its work on `io` there only
        // after the promise is set: one of those threads can still be inside
        // `io` when get() returns (a race TSan saw). Join them before `io`
        // goes; nothing else in this program uses the system executor.
        auto& system = asio::query(asio::system_executor(), asio::execution::context);
        system.stop();
        system.join();
    }
    SECTION("deferred") {
        auto op = filelock::async_lock(io, p, 5s, asio::experimental::deferred);
        CHECK(lock_is_free(p));  // nothing happens until the deferred op is launched
        outcome out;
        std::move(op)(capture(out));
        io.run();
        CHECK(!out.ec);
        CHECK(out.lock.is_locked());
    }
    SECTION("as_tuple(use_awaitable) and use_awaitable") {
        bool done = false;
        asio::co_spawn(
            io,
            [&]() -> asio::awaitable<void> {
                auto ex = co_await asio::this_coro::executor;
                auto [ec, l] = co_await filelock::async_lock(
                    ex, p, 5s, asio::experimental::as_tuple(asio::use_awaitable));
                CHECK(!ec);
                CHECK(l.is_locked());
                auto [ec2, l2] = co_await filelock::async_lock(
                    ex, p, 0s, asio::experimental::as_tuple(asio::use_awaitable));
                CHECK(ec2 == errc::timeout);
                l.close();
                auto l3 = co_await filelock::async_lock(ex, p, 5s, asio::use_awaitable);
                CHECK(l3.is_locked());
                done = true;
            },
            asio::detached);
        io.run();
        CHECK(done);
    }
}

TEST_CASE("asio: awaitable_operators: lock || timer") {
    using namespace asio::experimental::awaitable_operators;
    scratch s;
    const auto p = s / "a.lock";
    asio::io_context io;
    warm_up(io);
    const int fds = settled_fd_count();

    SECTION("the timer wins while the lock is held elsewhere; nothing leaks") {
        child holder = hold_in_child(p);
        REQUIRE(holder.ready());
        bool timer_won = false;
        asio::co_spawn(
            io,
            [&]() -> asio::awaitable<void> {
                auto ex = co_await asio::this_coro::executor;
                asio::steady_timer t(ex, 50ms);
                auto r = co_await (filelock::async_lock(ex, p, 30s, asio::use_awaitable) ||
                                   t.async_wait(asio::use_awaitable));
                timer_won = r.index() == 1;
            },
            asio::detached);
        io.run();
        CHECK(timer_won);
        CHECK(settled_fd_count() == fds + 2);  // only the holder child's pipes
    }
    SECTION("the lock wins when it is free; the timer is cancelled") {
        std::optional<lock_file> got;
        asio::co_spawn(
            io,
            [&]() -> asio::awaitable<void> {
                auto ex = co_await asio::this_coro::executor;
                asio::steady_timer t(ex, 30s);
                auto r = co_await (filelock::async_lock(ex, p, 30s, asio::use_awaitable) ||
                                   t.async_wait(asio::use_awaitable));
                if (r.index() == 0) got = std::move(std::get<0>(r));
            },
            asio::detached);
        io.run();
        REQUIRE(got);
        CHECK(got->is_locked());
    }
}

TEST_CASE("asio: per-operation cancellation, terminal/partial/total, at every stage") {
    const asio::cancellation_type types[] = {asio::cancellation_type::terminal,
                                             asio::cancellation_type::partial,
                                             asio::cancellation_type::total};
    for (auto type : types) {
        for (const char* stage : {"before the first attempt completes", "while waiting",
                                  "after the lock was won, before the handler ran"}) {
            CAPTURE(static_cast<int>(type), stage);
            scratch s;
            const auto p = s / "a.lock";
            asio::io_context io;
            warm_up(io);
            const int fds = settled_fd_count();
            std::optional<lock_file> held;
            const std::string st = stage;
            if (st != "after the lock was won, before the handler ran") held.emplace(p);
            asio::cancellation_signal sig;
            outcome out;
            filelock::async_lock(io, p, 30s,
                                 asio::bind_cancellation_slot(sig.slot(), capture(out)));
            asio::steady_timer t(io);
            if (st == "while waiting") {
                t.expires_after(30ms);
                t.async_wait([&](asio_error_code) { sig.emit(type); });
            } else {
                sig.emit(type);  // the initiation already made its attempt
            }
            io.run();
            CHECK(out.called);
            CHECK(out.ec == asio::error::operation_aborted);
            CHECK(!out.lock.is_locked());
            CHECK(settled_fd_count() == fds + (held ? 1 : 0));
            held.reset();
            CHECK(lock_is_free(p));  // the lock is either delivered or released
        }
    }
}

TEST_CASE("asio: a cancellation emitted after completion is harmless") {
    scratch s;
    asio::io_context io;
    asio::cancellation_signal sig;
    outcome out;
    filelock::async_lock(io, s / "a.lock", 5s,
                         asio::bind_cancellation_slot(sig.slot(), capture(out)));
    io.run();
    sig.emit(asio::cancellation_type::terminal);
    CHECK(!out.ec);
    CHECK(out.lock.is_locked());
}

TEST_CASE("asio: cancelling a co_spawned coroutine waiting for the lock") {
    scratch s;
    const auto p = s / "a.lock";
    lock_file held(p);
    asio::io_context io;
    asio::cancellation_signal sig;
    std::error_code seen;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            try {
                co_await filelock::async_lock(p, 30s);
            } catch (const std::system_error& e) {
                seen = e.code();
            }
        },
        asio::bind_cancellation_slot(sig.slot(), asio::detached));
    asio::steady_timer t(io, 20ms);
    t.async_wait([&](asio_error_code) { sig.emit(asio::cancellation_type::terminal); });
    io.run();
    CHECK(seen == aborted);
}

TEST_CASE("asio: errors are reported at once with their code, without retries") {
    scratch s;
    write_file(s / "file", "");
    asio::io_context io;
    struct row {
        fs::path path;
        std::errc expected;
    };
    for (const auto& r : {row{s / "missing" / "a.lock", std::errc::no_such_file_or_directory},
                          row{s.dir, std::errc::is_a_directory},
                          row{s / "file" / "a.lock", std::errc::not_a_directory}}) {
        CAPTURE(r.path);
        outcome out;
        const auto start = std::chrono::steady_clock::now();
        filelock::async_lock(io, r.path, 30s, capture(out));
        io.restart();
        io.run();
        CHECK(out.ec == r.expected);
        CHECK(std::chrono::steady_clock::now() - start < 10s);  // not retried until the deadline
        std::error_code thrown;
        asio::co_spawn(
            io,
            [&]() -> asio::awaitable<void> {
                try {
                    co_await filelock::async_lock(r.path, 30s);
                } catch (const fs::filesystem_error& e) {
                    thrown = e.code();
                    CHECK(e.path1() == r.path);
                }
            },
            asio::detached);
        io.restart();
        io.run();
        CHECK(thrown == r.expected);
    }
}

TEST_CASE("asio: a read-only location is EACCES, at once") {
    scratch s;
    fs::create_directory(s / "ro");
    fs::permissions(s / "ro", fs::perms::owner_read | fs::perms::owner_exec |
                                  fs::perms::group_read | fs::perms::group_exec |
                                  fs::perms::others_read | fs::perms::others_exec);
    fs::permissions(s.dir, fs::perms::all);
    const auto p = s / "ro" / "a.lock";
    child c([&](int) {
        if (::geteuid() == 0 && (::setgid(65534) != 0 || ::setuid(65534) != 0)) return 10;
        asio::io_context io;
        outcome out;
        filelock::async_lock(io, p, 30s, capture(out));
        io.run();
        return out.ec == std::errc::permission_denied ? 0 : 11;
    });
    c.release();
    CHECK(c.wait() == 0);
}

TEST_CASE("asio: options: shared locks, OFD, content templates, simple") {
    scratch s;
    const auto p = s / "a.lock";
    asio::io_context io;
    filelock::lock_options sh;
    sh.mode = filelock::lock_mode::shared;
    outcome a, b, c;
    filelock::async_lock(io, p, 5s, sh, capture(a));
    filelock::async_lock(io, p, 5s, sh, capture(b));
    filelock::async_lock(io, p, 0s, capture(c));
    io.run();
    CHECK((!a.ec && !b.ec));
    CHECK(c.ec == errc::timeout);
    a.lock.close();
    b.lock.close();

    filelock::lock_options ofd;
    ofd.backend = filelock::lock_backend::ofd;
    ofd.content_template = "{pid}-x";
    filelock::async_lock(io, p, 5s, ofd, capture(a));
    io.restart();
    io.run();
    CHECK(!a.ec);
    CHECK(read_file(p) == " " + std::to_string(::getpid()) + "-x\n");
    a.lock.close();

    filelock::lock_options simple;
    simple.write_content = false;
    write_file(p, "keep");
    filelock::async_lock(io, p, 5s, simple, capture(a));
    io.restart();
    io.run();
    CHECK(!a.ec);
    CHECK(read_file(p) == "keep");
}

TEST_CASE("asio: destroying the io_context with operations pending releases everything") {
    scratch s;
    const auto p = s / "a.lock";
    const int fds = settled_fd_count();
    {
        child holder = hold_in_child(p);
        REQUIRE(holder.ready());
        auto io = std::make_unique<asio::io_context>();
        std::vector<outcome> outs(20);
        for (auto& o : outs) filelock::async_lock(*io, p, 30s, capture(o));
        io->run_for(30ms);
        io.reset();
        for (auto& o : outs) CHECK(!o.called);
        holder.release();
        holder.wait();
    }
    CHECK(settled_fd_count() == fds);
    // a won lock not yet delivered when the context stops and is destroyed
    {
        auto io = std::make_unique<asio::io_context>();
        outcome out;
        filelock::async_lock(*io, p, 30s, capture(out));  // wins inside the initiation
        io->stop();
        io->run();
        io.reset();
        CHECK(!out.called);
    }
    CHECK(settled_fd_count() == fds);
    child other([&](int) {
        std::error_code ec;
        auto l = filelock::try_lock(p, ec);
        return ec ? 1 : 0;
    });
    other.release();
    CHECK(other.wait() == 0);
}

TEST_CASE("asio: many coroutines on one io_context each acquire exactly once, exclusively") {
    scratch s;
    const auto p = s / "a.lock";
    asio::io_context io;
    constexpr int n = 60;
    int inside = 0, overlaps = 0, counter = 0;
    std::vector<int> acquired(n, 0);
    for (int i = 0; i < n; ++i)
        asio::co_spawn(
            io,
            [&, i]() -> asio::awaitable<void> {
                auto ex = co_await asio::this_coro::executor;
                auto l = co_await filelock::async_lock(p, 60s);
                if (inside++ != 0) ++overlaps;
                ++acquired[static_cast<size_t>(i)];
                asio::steady_timer t(ex, 1ms);  // hold across a suspension
                co_await t.async_wait(asio::use_awaitable);
                ++counter;
                --inside;
            },
            asio::detached);
    io.run();
    CHECK(overlaps == 0);
    CHECK(counter == n);
    CHECK(std::count(acquired.begin(), acquired.end(), 1) == n);
}

TEST_CASE("asio: a 4-thread io_context with strands: exclusion and exactly-once") {
    scratch s;
    const auto p = s / "a.lock";
    asio::io_context io(4);
    constexpr int n = 40;
    std::atomic<int> inside{0}, overlaps{0}, counter{0};
    for (int i = 0; i < n; ++i) {
        auto strand = asio::make_strand(io);
        asio::co_spawn(
            strand,
            [&]() -> asio::awaitable<void> {
                auto ex = co_await asio::this_coro::executor;
                auto l = co_await filelock::async_lock(p, 60s);
                if (inside.fetch_add(1) != 0) ++overlaps;
                asio::steady_timer t(ex, 1ms);
                co_await t.async_wait(asio::use_awaitable);
                ++counter;
                inside.fetch_sub(1);
            },
            asio::detached);
    }
    std::vector<std::thread> threads;
    for (int i = 0; i < 4; ++i) threads.emplace_back([&] { io.run(); });
    for (auto& t : threads) t.join();
    CHECK(overlaps == 0);
    CHECK(counter == n);
}

TEST_CASE("asio: callbacks on a multi-threaded io_context run on the handler's executor") {
    scratch s;
    asio::io_context io(2);
    auto strand = asio::make_strand(io);
    std::atomic<bool> on_strand{false};
    filelock::async_lock(strand, s / "a.lock", 5s, [&](asio_error_code ec, lock_file) {
        on_strand = !ec && strand.running_in_this_thread();
    });
    std::thread t1([&] { io.run(); }), t2([&] { io.run(); });
    t1.join();
    t2.join();
    CHECK(on_strand);
}

TEST_CASE(
    "asio: cancellation matches condition::cancelled; the coroutine form throws "
    "std::system_error, not a filesystem error") {
    CHECK(aborted == filelock::condition::cancelled);
    CHECK(asio_error_code(asio::error::operation_aborted) == filelock::condition::cancelled);
    CHECK(std::make_error_code(std::errc::operation_canceled) == filelock::condition::cancelled);
    CHECK(aborted != std::error_code(errc::timeout));
    CHECK(std::error_code(errc::timeout) != filelock::condition::cancelled);
    CHECK(std::make_error_code(std::errc::timed_out) != filelock::condition::cancelled);
    CHECK(std::error_code(ECANCELED, std::generic_category()) == filelock::condition::cancelled);

    scratch s;
    const auto p = s / "a.lock";
    lock_file held(p);
    asio::io_context io;
    asio::cancellation_signal sig;
    bool caught_system_error = false, caught_filesystem_error = false;
    std::error_code code;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            try {
                co_await filelock::async_lock(p, 5s);
            } catch (const fs::filesystem_error&) {
                caught_filesystem_error = true;
            } catch (const std::system_error& e) {
                caught_system_error = true;
                code = e.code();
            }
        },
        asio::bind_cancellation_slot(sig.slot(), asio::detached));
    io.poll();
    sig.emit(asio::cancellation_type::terminal);
    io.run();
    CHECK(caught_system_error);
    CHECK(!caught_filesystem_error);
    CHECK(code == aborted);
    CHECK(code == filelock::condition::cancelled);
}

TEST_CASE(
    "asio: designated-initializer options in co_await expressions (g++ 12 aggregate "
    "temporaries)") {
    scratch s;
    const auto p = s / "a.lock";
    asio::io_context io;
    std::string content;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            {
                auto l = co_await filelock::async_lock(p, 1s, {.content_template = "{pid};x"});
                content = read_file(p);
            }
            auto shared =
                co_await filelock::async_lock(p, 1s, {.mode = filelock::lock_mode::shared});
            CHECK(shared.is_locked());
        },
        asio::detached);
    io.run();
    CHECK(content == " " + std::to_string(::getpid()) + ";x\n");
}

#if defined(FILELOCK_TEST_BOOST_ASIO) && defined(FILELOCK_TEST_STANDALONE_PEER)
namespace test {
int standalone_rounds(const std::filesystem::path& path, int n, std::atomic<int>& inside,
                      std::atomic<int>& overlaps);
}

TEST_CASE(
    "boost.asio: both flavours in one program (a translation unit each): waiters of both "
    "exclude each other on one lock") {
    scratch s;
    const auto p = s / "a.lock";
    constexpr int n = 20;
    std::atomic<int> inside{0}, overlaps{0};
    int standalone = 0, boost = 0;
    std::thread other([&] { standalone = test::standalone_rounds(p, n, inside, overlaps); });
    asio::io_context io;
    for (int i = 0; i < n; ++i)
        asio::co_spawn(
            io,
            [&]() -> asio::awaitable<void> {
                auto l = co_await filelock::async_lock(p, 60s);
                if (inside.fetch_add(1) != 0) ++overlaps;
                asio::steady_timer t(co_await asio::this_coro::executor, 1ms);
                co_await t.async_wait(asio::use_awaitable);
                inside.fetch_sub(1);
                ++boost;
            },
            asio::detached);
    io.run();
    other.join();
    CHECK(overlaps == 0);
    CHECK(standalone == n);
    CHECK(boost == n);
    CHECK(lock_is_free(p));
}
#endif
