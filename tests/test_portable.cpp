// SPDX-License-Identifier: MIT
// The semantics every platform keeps (Linux and Windows alike): content,
// contention, timeouts, shared locks, the identity check, symbolic links,
// the Asio adapter, the local queue, exclusion between processes, and
// filelock-run's exit statuses. The same program is its own helper process
// (--hold, --exit, --wait-go). Linux-only behaviour (fork, inotify, /proc,
// OFD, libuv) is tested in the other test programs.
#include <filelock/asio.hpp>
#include <filelock/detail/local_queue.hpp>
#include <filelock/lock_file.hpp>

#include "portable.hpp"

#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/use_awaitable.hpp>

#include <cstdlib>
#include <mutex>

using namespace portable;
using filelock::errc;
using filelock::lock_file;

namespace {

std::string own_line() { return " " + std::to_string(this_pid()) + "\n"; }

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

// Holds the lock on `p` in a child process until released.
class holder_process {
public:
    holder_process(const fs::path& p, const scratch& s)
        : dir_(s.dir), proc_({self().string(), "--hold", p.string(), s.dir.string()}) {}
    ~holder_process() { release(); }
    bool ready() { return wait_for_file(dir_ / "ready"); }
    void release() {
        write_file(dir_ / "go", "");
        proc_.wait();
    }
    long long pid() const { return proc_.pid(); }

private:
    fs::path dir_;
    process proc_;
};

}  // namespace

TEST_CASE("portable: lock_file writes ' {pid}\\n', read_holder reads it, the file stays") {
    scratch s;
    const auto p = s / "a.lock";
    {
        lock_file l(p);
        CHECK(l.is_locked());
        CHECK(filelock::read_holder(p) == std::to_string(this_pid()));
    }
    CHECK(fs::exists(p));
    CHECK(read_file(p) == own_line());
}

TEST_CASE("portable: a longer previous holder line is truncated; {hostname} expands") {
    scratch s;
    const auto p = s / "a.lock";
    write_file(p, " 123456789012345678901234567890\n");
    { lock_file l(p); }
    CHECK(read_file(p) == own_line());
    filelock::lock_options o;
    o.content_template = "{pid}@{hostname}";
    { lock_file l(p, o); }
    const std::string c = read_file(p);
    CHECK(c.rfind(" " + std::to_string(this_pid()) + "@", 0) == 0);
    CHECK(c.size() > own_line().size() + 1);
}

TEST_CASE("portable: contention throws lock_error naming the holder; try_lock is errc::locked") {
    scratch s;
    const auto p = s / "a.lock";
    lock_file held(p);
    try {
        lock_file second(p);
        FAIL("two holders");
    } catch (const filelock::lock_error& e) {
        CHECK(e.holder() == std::to_string(this_pid()));
        CHECK(std::string(e.what()).find(p.filename().string()) != std::string::npos);
    }
    std::error_code ec;
    auto l = filelock::try_lock(p, ec);
    CHECK(ec == errc::locked);
    CHECK(!l.is_locked());
    held.close();
    held.close();  // idempotent
    auto again = filelock::try_lock(p, ec);
    CHECK(!ec);
    CHECK(again.is_locked());
}

TEST_CASE("portable: foreign content is never overwritten") {
    scratch s;
    const auto p = s / "data.txt";
    write_file(p, "important data\nline 2\n");
    std::error_code ec;
    auto l = filelock::try_lock(p, ec);
    CHECK(ec == errc::foreign_content);
    CHECK(read_file(p) == "important data\nline 2\n");
    filelock::simple_lock_file simple(p);  // writes nothing: locks it
    CHECK(simple.is_locked());
    CHECK(read_file(p) == "important data\nline 2\n");
}

TEST_CASE("portable: 50 threads each increment a counter under the lock: exactly 50") {
    scratch s;
    const auto p = s / "a.lock";
    const auto counter = s / "counter";
    write_file(counter, "0");
    std::atomic<int> inside{0}, overlaps{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < 50; ++i)
        threads.emplace_back([&] {
            auto l = filelock::lock(p, 60s);
            if (inside.fetch_add(1) != 0) ++overlaps;
            const int v = std::stoi(read_file(counter));
            write_file(counter, std::to_string(v + 1));
            inside.fetch_sub(1);
        });
    for (auto& t : threads) t.join();
    CHECK(overlaps == 0);
    CHECK(read_file(counter) == "50");
}

TEST_CASE("portable: timeouts: 0 is one attempt; a deadline is timeout_error with the holder") {
    scratch s;
    const auto p = s / "a.lock";
    lock_file held(p);
    std::error_code ec;
    auto l = filelock::lock(p, 0s, {}, ec);
    CHECK(ec == errc::timeout);
    CHECK(ec == std::errc::timed_out);
    try {
        (void)filelock::lock(p, 200ms);
        FAIL("acquired a held lock");
    } catch (const filelock::timeout_error& e) {
        CHECK(e.holder() == std::to_string(this_pid()));
        CHECK(e.code() == errc::timeout);
    }
}

TEST_CASE("portable: a timed acquisition wins once the holder releases") {
    scratch s;
    const auto p = s / "a.lock";
    auto held = std::make_unique<lock_file>(p);
    std::thread releaser([&] {
        std::this_thread::sleep_for(100ms);
        held.reset();
    });
    auto l = filelock::lock(p, 30s);
    releaser.join();
    CHECK(l.is_locked());
}

TEST_CASE("portable: shared locks coexist and exclude an exclusive one") {
    scratch s;
    const auto p = s / "a.lock";
    filelock::lock_options sh;
    sh.mode = filelock::lock_mode::shared;
    lock_file a(p, sh), b(p, sh);
    std::error_code ec;
    auto x = filelock::try_lock(p, ec);
    CHECK(ec == errc::locked);
    a.close();
    b.close();
    x = filelock::try_lock(p, ec);
    CHECK(!ec);
    auto c = filelock::try_lock(p, sh, ec);
    CHECK(ec == errc::locked);
}

TEST_CASE("portable: a waiter whose file is replaced meanwhile ends up holding the new file") {
    scratch s;
    const auto p = s / "a.lock";
    auto held = std::make_unique<lock_file>(p);
    std::atomic<bool> done{false};
    lock_file won;
    std::thread waiter([&] {
        won = filelock::lock(p, 30s);
        done = true;
    });
    std::this_thread::sleep_for(100ms);  // the waiter has the old file open
    fs::rename(p, s / "old.lock");
    write_file(p, "");
    held.reset();  // releases the old file: the waiter may win it, and must let go
    waiter.join();
    REQUIRE(won.is_locked());
    std::error_code ec;
    auto on_old = filelock::try_lock(s / "old.lock", ec);
    CHECK(!ec);  // the old file is free
    auto on_new = filelock::try_lock(p, ec);
    CHECK(ec == errc::locked);  // the path's file is held by the waiter
}

TEST_CASE(
    "portable: remove_on_release: the holder removes its file; a waiter moves to the new one") {
    scratch s;
    const auto p = s / "a.lock";
    filelock::lock_options rm;
    rm.remove_on_release = true;
    { lock_file l(p, rm); }
    CHECK(!fs::exists(p));
    auto held = std::make_unique<lock_file>(p, rm);
    lock_file won;
    std::thread waiter([&] { won = filelock::lock(p, 30s, rm); });
    std::this_thread::sleep_for(100ms);  // the waiter has the file open
    held.reset();                        // removed while the waiter holds it open
    waiter.join();
    REQUIRE(won.is_locked());
    CHECK(fs::exists(p));
    std::error_code ec;
    auto other = filelock::try_lock(p, ec);
    CHECK(ec == errc::locked);  // the file the path names is the waiter's
    won.close();
    CHECK(!fs::exists(p));
}

TEST_CASE("portable: never writes through a symbolic link at the last component") {
    scratch s;
    const auto target = s / "precious";
    write_file(target, "");
    std::string why;
    if (!make_symlink(target, s / "link.lock", why)) {
        cannot_run("symbolic links cannot be created here: " + why);
        return;
    }
    std::error_code ec;
    auto l = filelock::try_lock(s / "link.lock", ec);
    CHECK(ec == errc::symlink_not_followed);
    CHECK(read_file(target).empty());
    filelock::lock_options follow;
    follow.follow_symlinks = true;
    l = filelock::try_lock(s / "link.lock", follow, ec);
    CHECK(!ec);
}

TEST_CASE("portable: bad paths report their own error with the path, never 'locked'") {
    scratch s;
    std::error_code ec;
    auto l = filelock::try_lock(s / "missing-dir" / "a.lock", ec);
    CHECK(ec == std::errc::no_such_file_or_directory);
    l = filelock::try_lock(s.dir, ec);
    CHECK(ec == std::errc::is_a_directory);
    try {
        lock_file x(s / "missing-dir" / "a.lock");
        FAIL("locked a file in a missing directory");
    } catch (const std::filesystem::filesystem_error& e) {
        CHECK(e.path1().filename() == "a.lock");
        CHECK(e.code() == std::errc::no_such_file_or_directory);
    }
}

TEST_CASE("portable: a non-ASCII path works") {
    scratch s;
    const fs::path p = s.dir / fs::path(u8"v\u00e9rrou-\u9396.lock");
    {
        lock_file l(p);
        std::error_code ec;
        auto again = filelock::try_lock(p, ec);
        CHECK(ec == errc::locked);
    }
    CHECK(read_file(p) == own_line());
}

TEST_CASE("portable: another process holding excludes us, names its pid, and frees on exit") {
    scratch s;
    const auto p = s / "a.lock";
    {
        holder_process h(p, s);
        REQUIRE(h.ready());
        try {
            lock_file l(p);
            FAIL("two holders across processes");
        } catch (const filelock::lock_error& e) {
            CHECK(e.holder() == std::to_string(h.pid()));
        }
        CHECK(filelock::read_holder(p) == std::to_string(h.pid()));
        h.release();
    }
    lock_file l(p);
    CHECK(l.is_locked());
}

TEST_CASE("portable: asio: co_await async_lock, callback, timeout, cancellation, nothing leaked") {
    scratch s;
    const auto p = s / "a.lock";
    asio::io_context io;
    { asio::steady_timer warm(io); }
    bool awaited = false;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            auto l = co_await filelock::async_lock(p, 5s);
            awaited = l.is_locked();
        },
        asio::detached);
    io.run();
    CHECK(awaited);
    CHECK(read_file(p) == own_line());

    lock_file held(p);
    outcome timed;
    filelock::async_lock(io, p, 150ms, capture(timed));
    CHECK(!timed.called);  // never inside the initiation
    io.restart();
    io.run();
    CHECK(timed.ec == errc::timeout);

    outcome cancelled;
    asio::cancellation_signal sig;
    filelock::async_lock(io, p, 30s, asio::bind_cancellation_slot(sig.slot(), capture(cancelled)));
    asio::steady_timer t(io, 50ms);
    t.async_wait([&](std::error_code) { sig.emit(asio::cancellation_type::terminal); });
    io.restart();
    io.run();
    CHECK(cancelled.called);
    CHECK(cancelled.ec == filelock::condition::cancelled);
    CHECK(!cancelled.lock.is_locked());

    outcome won;
    filelock::async_lock(io, p, 30s, capture(won));
    asio::steady_timer r(io, 50ms);
    r.async_wait([&](std::error_code) { held.close(); });
    io.restart();
    io.run();
    CHECK(!won.ec);
    CHECK(won.lock.is_locked());
    won.lock.close();
    CHECK(nothing_open_on(p));  // after a timeout, a cancellation and a win
}

TEST_CASE("portable: the local queue: 20 waiters of one process take the lock in turn, FIFO") {
    scratch s;
    const auto p = s / "a.lock";
    asio::io_context io;
    auto held = std::make_unique<lock_file>(p);
    std::vector<int> order;
    constexpr int n = 20;
    std::vector<outcome> outs(n);
    for (int i = 0; i < n; ++i)
        filelock::async_lock(io, p, 60s, [&, i](std::error_code ec, lock_file l) {
            outs[static_cast<std::size_t>(i)].ec = ec;
            order.push_back(i);
            asio::post(io, [l = std::move(l)]() mutable { l.close(); });
        });
    asio::steady_timer t(io, 100ms);
    t.async_wait([&](std::error_code) {
        CHECK(filelock::detail::local_waiters() == n);
        held.reset();
    });
    io.run();
    REQUIRE(order.size() == n);
    for (int i = 0; i < n; ++i) {
        CHECK(!outs[static_cast<std::size_t>(i)].ec);
        CHECK(order[static_cast<std::size_t>(i)] == i);
    }
}

TEST_CASE("portable: filelock-run: exit statuses, the holder named, usage errors") {
    scratch s;
    const auto p = s / "a.lock";
    const std::string run = filelock_run();
    CHECK(portable::run({run, p.string(), self().string(), "--exit", "7"}) == 7);
    CHECK(read_file(p).rfind(" ", 0) == 0);  // a holder's line was written
    CHECK(!filelock::read_holder(p).empty());
    {
        holder_process h(p, s);
        REQUIRE(h.ready());
        std::string err;
        CHECK(portable::run({run, "-n", p.string(), self().string(), "--exit", "0"}, &err) == 1);
        CHECK(err.empty());  // silent, as flock(1); --verbose names the holder
        CHECK(portable::run({run, "-n", "--verbose", p.string(), self().string(), "--exit", "0"},
                            &err) == 1);
        CHECK(err.find("held by " + std::to_string(h.pid())) != std::string::npos);
        CHECK(portable::run(
                  {run, "-w", "0.2", "-E", "9", p.string(), self().string(), "--exit", "0"}) == 9);
        h.release();
    }
    std::string err;
    CHECK(portable::run({run, "--bogus", p.string(), self().string()}, &err) == 64);
    CHECK(err.find("--bogus") != std::string::npos);
    CHECK(portable::run({run, "--ttl", "5", p.string(), self().string(), "--exit", "0"}) == 64);
}

TEST_CASE("portable: filelock-run holds while its command runs; the holder is filelock-run") {
    scratch s;
    const auto p = s / "a.lock";
    process tool({filelock_run(), p.string(), self().string(), "--wait-go", s.dir.string()});
    REQUIRE(wait_for_file(s / "ready"));
    try {
        lock_file l(p);
        FAIL("two holders: filelock-run's command and us");
    } catch (const filelock::lock_error& e) {
        CHECK(e.holder() == std::to_string(tool.pid()));
    }
    write_file(s / "go", "");
    CHECK(tool.wait() == 0);
    lock_file l(p);
    CHECK(l.is_locked());
}

TEST_CASE("portable: filelock-run killed while COMMAND runs never leaves it running unlocked") {
    // POSIX (as flock(1)): COMMAND inherited the lock and keeps it.
    // Windows: a lock ends with the process that took it, so COMMAND is
    // killed with filelock-run (its job) and the lock is free.
    scratch s;
    const auto p = s / "a.lock";
    process tool({filelock_run(), p.string(), self().string(), "--wait-go", s.dir.string()});
    REQUIRE(wait_for_file(s / "ready"));
    std::this_thread::sleep_for(50ms);  // the ready file's content is written
    const long long command = std::stoll(read_file(s / "ready"));
    tool.kill();
    tool.wait();
    const auto end = std::chrono::steady_clock::now() + 10s;
    std::error_code ec;
    for (;;) {
        auto l = filelock::try_lock(p, ec);
        const bool running = alive(command);
        CHECK(!(running && !ec));  // never: COMMAND running while we hold the lock
        if (!ec || std::chrono::steady_clock::now() > end) break;
        if (running && ec == errc::locked) {
#if defined(_WIN32)
            std::this_thread::sleep_for(10ms);  // the job is being killed
            continue;
#else
            break;  // COMMAND holds it, as flock(1)'s does
#endif
        }
        break;
    }
#if defined(_WIN32)
    CHECK(!ec);
    CHECK(!alive(command));
#else
    CHECK(ec == errc::locked);
    CHECK(alive(command));
    write_file(s / "go", "");  // COMMAND ends, and with it the lock
    CHECK(wait_for_file(s / "go"));
    for (int i = 0; i < 1000 && filelock::try_lock(p, ec).is_locked() == false; ++i)
        std::this_thread::sleep_for(10ms);
    CHECK(!ec);
#endif
}

int run_catch(int argc, char** argv);  // catch_runner.cpp

int main(int argc, char** argv) {
    self() = fs::absolute(argv[0]);
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "--exit" && argc == 3) return std::atoi(argv[2]);
    if (mode == "--hold" && argc == 4) {  // PATH DIR
        lock_file l{fs::path(argv[2])};
        write_file(fs::path(argv[3]) / "ready", std::to_string(this_pid()));
        return wait_for_file(fs::path(argv[3]) / "go", 120000ms) ? 0 : 3;
    }
    if (mode == "--wait-go" && argc == 3) {  // DIR: a COMMAND under filelock-run
        write_file(fs::path(argv[2]) / "ready", std::to_string(this_pid()));
        return wait_for_file(fs::path(argv[2]) / "go", 120000ms) ? 0 : 3;
    }
    const int failed = run_catch(argc, argv);
    std::fprintf(stderr, "portable tests: %d could not run here (see NOT RUN above)\n",
                 not_run().load());
    return failed;
}
