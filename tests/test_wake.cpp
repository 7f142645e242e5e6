// SPDX-License-Identifier: MIT
// Wake on release: behaviour, not timing. Waiters use a 20 s backoff with no
// jitter, so within a test only a release event can end their wait early;
// "acquired before the timer" is checked against half that (a margin of
// seconds, never microseconds).

#include <filelock/asio.hpp>
#include <filelock/lock_file.hpp>
#include <filelock/uv.hpp>

#include "support.hpp"

#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>

#include <thread>

using namespace test;
using filelock::lock_file;

namespace {

// The three drivers, each acquiring `p` with `o` and a 60 s timeout.
struct driver {
    const char* name;
    lock_file (*acquire)(const fs::path& p, const filelock::lock_options& o, std::error_code& ec);
};

lock_file sync_acquire(const fs::path& p, const filelock::lock_options& o, std::error_code& ec) {
    return filelock::lock(p, 60s, o, ec);
}

lock_file asio_acquire(const fs::path& p, const filelock::lock_options& o, std::error_code& ec) {
    asio::io_context io;
    lock_file out;
    filelock::async_lock(io, p, 60s, o, [&](std::error_code e, lock_file l) {
        ec = e;
        out = std::move(l);
    });
    io.run();
    return out;
}

lock_file uv_acquire(const fs::path& p, const filelock::lock_options& o, std::error_code& ec) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    lock_file out;
    filelock::uv::async_lock(&loop, p, 60s, o, [&](std::error_code e, lock_file l) {
        ec = e;
        out = std::move(l);
    });
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0);
    return out;
}

const driver drivers[] = {{"sync lock()", sync_acquire},
                          {"asio async_lock", asio_acquire},
                          {"uv async_lock", uv_acquire}};

// Runs `holder` in a child process that signals once it holds the lock.
template <class F>
child holding(F holder) {
    return child([holder](int ready) {
        holder(ready);
        return 0;
    });
}

}  // namespace

TEST_CASE("wake: a waiter is woken by the holder's close, long before its backoff timer") {
    for (const auto& d : drivers) {
        CAPTURE(d.name);
        scratch s;
        const auto p = s / "a.lock";
        auto holder = holding([p](int ready) {
            lock_file l(p);
            (void)!::write(ready, "r", 1);
            ::usleep(200000);
        });  // closes (releases) after 200 ms
        REQUIRE(holder.ready());
        const auto start = std::chrono::steady_clock::now();
        std::error_code ec;
        auto l = d.acquire(p, event_only(), ec);
        CHECK(!ec);
        CHECK(l.is_locked());
        CHECK(std::chrono::steady_clock::now() - start < before_timer);
    }
}

TEST_CASE("wake: zc.lockfile-style and killed holders wake waiters too") {
    for (const auto& d : drivers) {
        CAPTURE(d.name);
        scratch s;
        const auto p = s / "a.lock";
        child holder = hold_in_child(p);
        REQUIRE(holder.ready());
        std::thread killer([&] {
            std::this_thread::sleep_for(100ms);
            holder.kill();  // the kernel closes its descriptor
        });
        const auto start = std::chrono::steady_clock::now();
        std::error_code ec;
        auto l = d.acquire(p, event_only(), ec);
        killer.join();
        CHECK(!ec);
        CHECK(std::chrono::steady_clock::now() - start < before_timer);
    }
}

TEST_CASE(
    "wake: without a close event (LOCK_UN, descriptor kept) the backoff timer still acquires") {
    for (const auto& d : drivers) {
        CAPTURE(d.name);
        scratch s;
        const auto p = s / "a.lock";
        auto holder = holding([p](int ready) {
            const int fd = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
            ::flock(fd, LOCK_EX);
            (void)!::write(ready, "r", 1);
            ::usleep(100000);
            ::flock(fd, LOCK_UN);  // no close: no event
            await_release();
            ::close(fd);
        });
        REQUIRE(holder.ready());
        filelock::lock_options o;
        o.backoff = {20ms, 1.0, 20ms, 0.0};
        std::error_code ec;
        auto l = d.acquire(p, o, ec);
        CHECK(!ec);
        CHECK(l.is_locked());
    }
}

TEST_CASE("wake: after the lock file is replaced, the waiter watches the new file") {
    for (const auto& d : drivers) {
        CAPTURE(d.name);
        scratch s;
        const auto p = s / "a.lock";
        // The holder of the old file keeps it; a replacer puts a new file in
        // place while holding that one, and releases it 200 ms later.
        lock_file old_holder(p);
        auto replacer = holding([p, dir = s.dir](int ready) {
            ::usleep(100000);  // let the waiter wait on the old file first
            const auto tmp = dir / "new.lock";
            lock_file l(tmp);
            fs::rename(tmp, p);
            (void)!::write(ready, "r", 1);
            ::usleep(200000);
        });
        const auto start = std::chrono::steady_clock::now();
        std::error_code ec;
        auto l = d.acquire(p, event_only(), ec);
        CHECK(!ec);
        CHECK(std::chrono::steady_clock::now() - start < before_timer);
        struct ::stat held {
        }, named{};
        REQUIRE(::fstat(l.native_handle(), &held) == 0);
        REQUIRE(::stat(p.c_str(), &named) == 0);
        CHECK(held.st_ino == named.st_ino);  // the new file, not the old one
        CHECK(replacer.ready());
    }
}

TEST_CASE("wake: N waiters of one loop share one inotify instance and one watch") {
    scratch s;
    const auto p = s / "a.lock";
    lock_file held(p);
    uv_loop_t loop;
    uv_loop_init(&loop);
    constexpr int n = 50;
    int done = 0;
    for (int i = 0; i < n; ++i)
        filelock::uv::async_lock(&loop, p, 60s, event_only(),
                                 [&](std::error_code ec, lock_file) { done += !ec; });
    uv_run(&loop, UV_RUN_NOWAIT);
    // Count the inotify instances watching this file, and their watches, in
    // /proc/self/fdinfo ("inotify wd:1 ino:<hex> sdev:...").
    struct ::stat st {};
    REQUIRE(::stat(p.c_str(), &st) == 0);
    char ino[32];
    std::snprintf(ino, sizeof ino, "ino:%lx ", static_cast<unsigned long>(st.st_ino));
    int instances = 0, watches = 0;
    for (const auto& e : fs::directory_iterator("/proc/self/fd")) {
        std::error_code ec;
        if (fs::read_symlink(e.path(), ec).string() != "anon_inode:inotify") continue;
        const std::string info = read_file("/proc/self/fdinfo/" + e.path().filename().string());
        int here = 0;
        for (size_t pos = 0; (pos = info.find(ino, pos)) != std::string::npos; ++pos) ++here;
        instances += here > 0;
        watches += here;
    }
    CHECK(instances == 1);
    CHECK(watches == 1);
    held.close();
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(done == n);
    CHECK(uv_loop_close(&loop) == 0);
}

TEST_CASE(
    "wake: a release wakes the longest-waiting waiter of a loop: local handoffs in FIFO order") {
    constexpr int n = 20;
    SECTION("libuv") {
        scratch s;
        const auto p = s / "a.lock";
        auto held = std::make_unique<lock_file>(p);
        uv_loop_t loop;
        uv_loop_init(&loop);
        std::vector<int> order;
        std::vector<lock_file> kept(n);
        uv_timer_t release_timer;
        uv_timer_init(&loop, &release_timer);
        for (int i = 0; i < n; ++i)
            filelock::uv::async_lock(&loop, p, 60s, event_only(),
                                     [&, i](std::error_code ec, lock_file l) {
                                         if (ec) return;
                                         order.push_back(i);
                                         kept[static_cast<size_t>(i)] = std::move(l);
                                         release_timer.data = &kept[static_cast<size_t>(i)];
                                         uv_timer_start(
                                             &release_timer,
                                             [](uv_timer_t* t) {  // release on a later iteration
                                                 static_cast<lock_file*>(t->data)->close();
                                             },
                                             1, 0);
                                     });
        uv_run(&loop, UV_RUN_NOWAIT);  // every waiter made its first attempt, in order
        held.reset();
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_close(reinterpret_cast<uv_handle_t*>(&release_timer), nullptr);
        uv_run(&loop, UV_RUN_DEFAULT);
        CHECK(uv_loop_close(&loop) == 0);
        std::vector<int> fifo(n);
        for (int i = 0; i < n; ++i) fifo[static_cast<size_t>(i)] = i;
        CHECK(order == fifo);
    }
    SECTION("asio") {
        scratch s;
        const auto p = s / "a.lock";
        auto held = std::make_unique<lock_file>(p);
        asio::io_context io;
        std::vector<int> order;
        for (int i = 0; i < n; ++i)
            filelock::async_lock(io, p, 60s, event_only(), [&, i](std::error_code ec, lock_file l) {
                if (ec) return;
                order.push_back(i);
                auto t = std::make_shared<asio::steady_timer>(io, 1ms);  // release later
                t->async_wait(
                    [t, l = std::make_shared<lock_file>(std::move(l))](std::error_code) {});
            });
        io.poll();
        held.reset();
        io.run();
        std::vector<int> fifo(n);
        for (int i = 0; i < n; ++i) fifo[static_cast<size_t>(i)] = i;
        CHECK(order == fifo);
    }
}

TEST_CASE("wake: sync waiters of other files still get their release after one event wakes two") {
    // X and Y: readers of two ranges of f (two local queues, one watch: one
    // close wakes both); Z: a writer of g. X leads (reads the events), Y and
    // Z follow in that order. f's release wakes X and Y at once: the role
    // offered to Y, which leaves too, must reach Z, whose release comes later.
    scratch s;
    const auto f = s / "f.lock", g = s / "g.lock";
    filelock::lock_options whole = event_only();
    whole.backend = filelock::lock_backend::ofd;
    auto hg = hold_in_child(g);  // first: f's holder exits first, with its copy of g's pipe
    auto hf = hold_in_child(f, whole);
    REQUIRE(hf.ready());
    REQUIRE(hg.ready());
    std::error_code xec, yec;  // checked on this thread: Catch's assertions are not thread-safe
    auto reader = [&](std::uint64_t start, std::error_code& ec) {
        filelock::lock_options o = event_only();
        o.backend = filelock::lock_backend::ofd;
        o.mode = filelock::lock_mode::shared;
        o.range = {start, 1};
        return std::thread([f, o, &ec] { auto l = filelock::lock(f, 60s, o, ec); });
    };
    std::thread x = reader(0, xec);
    std::this_thread::sleep_for(200ms);  // (the order of arrival, not a timing claim)
    std::thread y = reader(1, yec);
    std::this_thread::sleep_for(200ms);
    std::error_code zec;
    std::chrono::steady_clock::time_point zwon;
    std::thread z([&] {
        auto l = filelock::lock(g, 60s, event_only(), zec);
        zwon = std::chrono::steady_clock::now();
    });
    std::this_thread::sleep_for(200ms);
    hf.release();
    hf.wait();
    x.join();
    y.join();
    const auto released = std::chrono::steady_clock::now();
    hg.release();
    hg.wait();
    z.join();
    CHECK(!xec);
    CHECK(!yec);
    CHECK(!zec);
    CHECK(zwon - released < before_timer);
}
