// SPDX-License-Identifier: MIT
// Waiting, as every driver runs the one acquire protocol: a waiter never
// waits on a free lock because another waiter of its process does not
// progress, waits for the lock it names (not its spelling), is woken with
// the other readers, never loses a release, and the process keeps a bounded
// number of kernel objects for it. Behaviour, not timing: "acquired before
// the timer" is checked with a margin of seconds, and a waiter that would
// wrongly wait does so until a deadline of seconds.

#include <filelock/asio.hpp>
#include <filelock/detail/file_backend.hpp>
#include <filelock/detail/local_queue.hpp>
#include "../src/wait/release_watcher.hpp"
#include <filelock/lock_file.hpp>
#include <filelock/uv.hpp>

#include "../src/posix/sys.hpp"
#include "proc_fds.hpp"
#include "support.hpp"

#include <asio/io_context.hpp>

#include <atomic>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>
#include <poll.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>

using namespace test;
using filelock::errc;
using filelock::lock_file;
namespace fdetail = filelock::detail;
using sclock = std::chrono::steady_clock;

namespace {

// Replaces entries of the syscall table for one test.
struct seam {
    fdetail::sys_table saved = fdetail::sys();
    ~seam() { fdetail::sys() = saved; }
};

// A uv loop whose operations are abandoned: cancelled and run down.
void drain_loop(uv_loop_t* loop) {
    filelock::uv::cancel_all(loop);
    uv_run(loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(loop) == 0);
}

}  // namespace

// --- liveness: a stalled loop stalls only its own waiters -------------------

TEST_CASE("waiting: an io_context waits on a free lock although another context's head stalls") {
    scratch s;
    const auto p = s / "a.lock";
    auto holder = hold_in_child(p);
    REQUIRE(holder.ready());
    auto stalled = std::make_unique<asio::io_context>();
    bool stalled_done = false;
    filelock::async_lock(*stalled, p, 60s,
                         [&](std::error_code, lock_file) { stalled_done = true; });
    stalled->poll();  // its operation attempted, queued as the head; its context never runs again
    asio::io_context io;
    std::error_code ec = errc::timeout;
    lock_file won;
    const auto t0 = sclock::now();
    filelock::async_lock(io, p, 15s, [&](std::error_code e, lock_file l) {
        ec = e;
        won = std::move(l);
    });
    holder.release();
    io.run();
    CHECK(!ec);
    CHECK(won.is_locked());
    CHECK(sclock::now() - t0 < before_timer);
    won.close();
    CHECK(!stalled_done);
    stalled.reset();  // destroyed with its operation pending: its queue entry goes too
    CHECK(fdetail::local_waiters() == 0);
}

TEST_CASE("waiting: a uv loop waits on a free lock although another loop's head stalls") {
    scratch s;
    const auto p = s / "a.lock";
    auto holder = hold_in_child(p);
    REQUIRE(holder.ready());
    uv_loop_t stalled, loop;
    uv_loop_init(&stalled);
    uv_loop_init(&loop);
    filelock::uv::async_lock(&stalled, p, 60s, [](std::error_code, lock_file) {});
    uv_run(&stalled, UV_RUN_NOWAIT);  // the head of its queue; never run again until the end
    std::error_code ec = errc::timeout;
    const auto t0 = sclock::now();
    filelock::uv::async_lock(&loop, p, 15s, [&](std::error_code e, lock_file) { ec = e; });
    holder.release();
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(!ec);
    CHECK(sclock::now() - t0 < before_timer);
    CHECK(uv_loop_close(&loop) == 0);
    drain_loop(&stalled);
    CHECK(fdetail::local_waiters() == 0);
}

TEST_CASE("waiting: a thread in lock() waits on a free lock although a loop's head stalls") {
    scratch s;
    const auto p = s / "a.lock";
    auto holder = hold_in_child(p);
    REQUIRE(holder.ready());
    uv_loop_t stalled;
    uv_loop_init(&stalled);
    filelock::uv::async_lock(&stalled, p, 60s, [](std::error_code, lock_file) {});
    uv_run(&stalled, UV_RUN_NOWAIT);
    const auto t0 = sclock::now();
    std::thread releaser([&] {
        std::this_thread::sleep_for(250ms);
        holder.release();
    });
    std::error_code ec;
    auto l = filelock::lock(p, 15s, {}, ec);
    releaser.join();
    CHECK(!ec);
    CHECK(l.is_locked());
    CHECK(sclock::now() - t0 < before_timer);
    l.close();
    drain_loop(&stalled);
}

// --- the queue is the lock's, not the spelling's -------------------------------

TEST_CASE("waiting: a relative path after chdir() never queues behind another file's waiters") {
    scratch s;
    fs::create_directories(s / "one");
    fs::create_directories(s / "two");
    auto holder = hold_in_child(s / "one" / "rel.lock");
    REQUIRE(holder.ready());
    const auto cwd = fs::current_path();
    fs::current_path(s / "one");
    std::error_code first_ec;
    std::thread first([&] { (void)filelock::lock("rel.lock", 20s, {}, first_ec); });
    while (fdetail::local_waiters() == 0) std::this_thread::sleep_for(1ms);
    fs::current_path(s / "two");
    std::error_code ec;
    auto l = filelock::lock("rel.lock", 5s, {}, ec);  // another file, free
    CHECK(!ec);
    CHECK(l.is_locked());
    l.close();
    fs::current_path(s / "one");  // where the first waiter's path names its file
    holder.release();
    first.join();
    fs::current_path(cwd);
    CHECK(!first_ec);
}

TEST_CASE("waiting: an OFD waiter never queues behind a flock waiter of the same file") {
    scratch s;
    const auto p = s / "a.lock";
    auto holder = hold_in_child(p);  // a flock lock: no conflict with an OFD lock
    REQUIRE(holder.ready());
    std::error_code first_ec;
    std::thread first([&] { (void)filelock::lock(p, 20s, {}, first_ec); });
    while (fdetail::local_waiters() == 0) std::this_thread::sleep_for(1ms);
    filelock::lock_options ofd;
    ofd.backend = filelock::lock_backend::ofd;
    std::error_code ec;
    auto l = filelock::lock(p, 5s, ofd, ec);
    CHECK(!ec);
    CHECK(l.is_locked());
    l.close();
    holder.release();
    first.join();
    CHECK(!first_ec);
}

// --- shared waiters are all let in by one release ----------------------------

TEST_CASE("waiting: one release wakes every shared waiter of a loop, not one at a time") {
    constexpr int n = 5;
    filelock::lock_options shared = event_only();
    shared.mode = filelock::lock_mode::shared;
    SECTION("asio") {
        scratch s;
        const auto p = s / "a.lock";
        auto held = std::make_unique<lock_file>(p);
        asio::io_context io;
        std::vector<lock_file> got;
        for (int i = 0; i < n; ++i)
            filelock::async_lock(io, p, 60s, shared, [&](std::error_code ec, lock_file l) {
                if (!ec) got.push_back(std::move(l));
            });
        io.poll();
        const auto t0 = sclock::now();
        held.reset();
        io.run();
        CHECK(got.size() == n);
        CHECK(sclock::now() - t0 < before_timer);
    }
    SECTION("libuv") {
        scratch s;
        const auto p = s / "a.lock";
        auto held = std::make_unique<lock_file>(p);
        uv_loop_t loop;
        uv_loop_init(&loop);
        std::vector<lock_file> got;
        for (int i = 0; i < n; ++i)
            filelock::uv::async_lock(&loop, p, 60s, shared, [&](std::error_code ec, lock_file l) {
                if (!ec) got.push_back(std::move(l));
            });
        uv_run(&loop, UV_RUN_NOWAIT);
        const auto t0 = sclock::now();
        held.reset();
        uv_run(&loop, UV_RUN_DEFAULT);
        CHECK(got.size() == n);
        CHECK(sclock::now() - t0 < before_timer);
        CHECK(uv_loop_close(&loop) == 0);
    }
}

// --- bounded kernel objects --------------------------------------------------

TEST_CASE("waiting: 200 threads that waited in lock() leave at most the documented instances") {
    // Counted while the threads still live: a thread that waited keeps
    // nothing (757dff8 kept an inotify instance and an eventfd per thread).
    scratch s;
    const auto p = s / "a.lock";
    const int fds0 = open_fd_count();
    const int instances0 = inotify_instances();
    constexpr int n = 200;
    std::atomic<int> won{0}, waiting{0}, done{0};
    std::atomic<bool> go_home{false};
    std::vector<std::thread> threads;
    {
        auto holder = hold_in_child(p);
        REQUIRE(holder.ready());
        for (int i = 0; i < n; ++i)
            threads.emplace_back([&] {
                ++waiting;
                std::error_code ec;
                auto l = filelock::lock(p, 60s, {}, ec);
                won += l.is_locked();
                l.close();
                ++done;
                while (!go_home) std::this_thread::sleep_for(1ms);
            });
        while (waiting < n) std::this_thread::sleep_for(1ms);
        std::this_thread::sleep_for(100ms);  // all of them attempted and wait
        holder.release();
        while (done < n) std::this_thread::sleep_for(1ms);
    }
    const int instances = inotify_instances() - instances0;
    const int fds = open_fd_count() - fds0;
    go_home = true;
    for (auto& t : threads) t.join();
    CHECK(won == n);
    CHECK(instances <= max_cached_inotify_instances);
    // Nothing but the cache: its instances, and the sync waiters' eventfd.
    CHECK(fds - instances <= 1);
    // Another process of this user can still make one.
    child other([](int ready) {
        const int fd = ::inotify_init1(IN_CLOEXEC);
        (void)!::write(ready, fd >= 0 ? "y" : "n", 1);
        return fd >= 0 ? 0 : 1;
    });
    CHECK(other.ready());
    other.release();
    CHECK(other.wait() == 0);
}

TEST_CASE(
    "waiting: an event loop gives its inotify instance back unclosed, and the next reuses it") {
    // No instance is opened and closed around each wait (757dff8 closed the
    // Asio context's instance when its last operation finished, ~0.1 ms on
    // the way out of run()). Counted through the seam: closes of inotify
    // descriptors over three loops that each wait once.
    scratch s;
    const auto p = s / "a.lock";
    static std::atomic<int> inotify_closes;
    inotify_closes = 0;
    settle();  // earlier tests' idle instances closed before the count
    seam fake;
    fdetail::sys().close = [](int fd) {
        std::error_code ec;
        if (fs::read_symlink("/proc/self/fd/" + std::to_string(fd), ec).string() ==
            "anon_inode:inotify")
            ++inotify_closes;
        return fdetail::default_sys().close(fd);
    };
    const auto before = inotify_instances();
    SECTION("asio") {
        for (int round = 0; round < 3; ++round) {
            auto held = std::make_unique<lock_file>(p);
            asio::io_context io;
            std::error_code ec = errc::timeout;
            filelock::async_lock(io, p, 60s, event_only(),
                                 [&](std::error_code e, lock_file) { ec = e; });
            io.poll();
            held.reset();
            io.run();
            CHECK(!ec);
        }
    }
    SECTION("libuv") {
        for (int round = 0; round < 3; ++round) {
            auto held = std::make_unique<lock_file>(p);
            uv_loop_t loop;
            uv_loop_init(&loop);
            std::error_code ec = errc::timeout;
            filelock::uv::async_lock(&loop, p, 60s, event_only(),
                                     [&](std::error_code e, lock_file) { ec = e; });
            uv_run(&loop, UV_RUN_NOWAIT);
            held.reset();
            uv_run(&loop, UV_RUN_DEFAULT);
            CHECK(uv_loop_close(&loop) == 0);
            CHECK(!ec);
        }
    }
    CHECK(inotify_closes == 0);
    CHECK(inotify_instances() - before <= 1);  // the idle one, if none was kept before
}

// Idle waiting resources are given back (a process that waited once kept an
// inotify instance and an eventfd for its life: 2 descriptors after lock(),
// 1 after an Asio or libuv wait, with every io_context and loop gone). Each
// driver waits once in a process of its own, started afresh (a forked one
// would inherit this process's descriptors); after the linger nothing of
// ours stays open. Polled, with a bound of seconds: no timing is asserted.
namespace {

struct fresh_process_counts {
    int fds = open_fd_count();
    ~fresh_process_counts() {
        const auto bound = sclock::now() + 10s;
        while ((inotify_instances() > 0 || eventfds() > 0 || open_fd_count() > fds) &&
               sclock::now() < bound)
            std::this_thread::sleep_for(10ms);
        CHECK(inotify_instances() == 0);
        CHECK(eventfds() == 0);
        CHECK(open_fd_count() == fds);
        std::fputs("idle-checked\n", stderr);
    }
};

void check_in_fresh_process(const char* test_name) {
    std::string err;
    const int rc =
        run({fs::read_symlink("/proc/self/exe").string(), test_name, "-o", "/dev/stderr"}, &err);
    INFO(test_name << ":\n" << err);
    CHECK(rc == 0);
    CHECK(err.find("idle-checked") != std::string::npos);
}

}  // namespace

TEST_CASE("idle: lock() waited once", "[.idle]") {
    scratch s;
    const auto p = s / "a.lock";
    fresh_process_counts counts;
    auto held = std::make_unique<lock_file>(p);
    std::error_code ec = errc::timeout;
    std::thread waiter([&] { filelock::lock(p, 60s, event_only(), ec); });
    // It watches: one instance (and its eventfd) while it waits.
    const auto bound = sclock::now() + 10s;
    while (inotify_instances() == 0 && sclock::now() < bound) std::this_thread::sleep_for(1ms);
    CHECK(inotify_instances() == 1);
    held.reset();
    waiter.join();
    CHECK(!ec);
}

TEST_CASE("idle: Asio waited once", "[.idle]") {
    scratch s;
    const auto p = s / "a.lock";
    fresh_process_counts counts;
    auto held = std::make_unique<lock_file>(p);
    std::error_code ec = errc::timeout;
    {
        asio::io_context io;
        filelock::async_lock(io, p, 60s, event_only(),
                             [&](std::error_code e, lock_file) { ec = e; });
        io.poll();
        CHECK(inotify_instances() == 1);
        held.reset();
        io.run();
    }
    CHECK(!ec);
}

TEST_CASE("idle: libuv waited once", "[.idle]") {
    scratch s;
    const auto p = s / "a.lock";
    {
        uv_loop_t first;  // libuv's own process-wide descriptors (its signal lock) come now
        uv_loop_init(&first);
        uv_loop_close(&first);
    }
    fresh_process_counts counts;
    auto held = std::make_unique<lock_file>(p);
    std::error_code ec = errc::timeout;
    uv_loop_t loop;
    uv_loop_init(&loop);
    filelock::uv::async_lock(&loop, p, 60s, event_only(),
                             [&](std::error_code e, lock_file) { ec = e; });
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(inotify_instances() == 1);
    held.reset();
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0);
    CHECK(!ec);
}

TEST_CASE("waiting: a process that waited once keeps no instance or eventfd or descriptor idle") {
    check_in_fresh_process("idle: lock() waited once");
    check_in_fresh_process("idle: Asio waited once");
    check_in_fresh_process("idle: libuv waited once");
}

TEST_CASE("waiting: waiters forgotten by a source take their watches' references with them") {
    // What an execution context destroyed with waiting operations does: its
    // source forgets them and goes back to the idle one. Each kept a
    // reference to its watch, so the idle instance, reused by the next
    // loops, kept every such watch for its life; without references only
    // the bounded few unreferenced watches stay (8, release_watcher.hpp).
    scratch s;
    settle();
    auto src = fdetail::release_source::take();
    REQUIRE(src);
    const int before = inotify_watches();
    constexpr int n = 12;
    char keys[n];
    for (int i = 0; i < n; ++i) {
        const auto f = s / ("f" + std::to_string(i));
        std::ofstream(f.string()) << "";
        REQUIRE(src->watch(f, &keys[i], static_cast<std::uint64_t>(i), false));
    }
    REQUIRE(inotify_watches() - before == n);
    CHECK(src->forget_all().size() == n);
    CHECK(src->idle());
    CHECK(inotify_watches() - before <= 8);
}

TEST_CASE("waiting: a forked child's source forgetting its waiters leaves the parent's watches") {
    // The child's copy of the instance is the parent's instance: removing a
    // watch there would remove the parent's, whose waiters would then sleep
    // through releases.
    scratch s;
    settle();
    auto src = fdetail::release_source::take();
    REQUIRE(src);
    constexpr int n = 12;
    char keys[n];
    for (int i = 0; i < n; ++i) {
        const auto f = s / ("f" + std::to_string(i));
        std::ofstream(f.string()) << "";
        REQUIRE(src->watch(f, &keys[i], static_cast<std::uint64_t>(i), false));
    }
    const int before = inotify_watches();
    child c([&](int ready) {
        const bool all = src->inherited() && src->forget_all().size() == n;
        (void)!::write(ready, "r", 1);
        return all ? 0 : 1;
    });
    CHECK(c.ready());
    CHECK(inotify_watches() == before);
    c.release();
    CHECK(c.wait() == 0);
    CHECK(src->forget_all().size() == n);
}

TEST_CASE("waiting: a watcher inherited across fork takes no queue turn in the child") {
    // The child's copy of a watcher shares the parent's epoll set: a turn
    // added there would be reported to the parent's waiters, none of which
    // took it, and the child would never close its copy of the turn (an
    // inherited watcher's turns are closed at the fork, never by remove()).
    fdetail::release_watcher w;
    REQUIRE(w.valid());
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    child c([&](int ready) {
        ::close(sv[1]);
        const int before = open_fd_count();
        const int wd = w.add_turn(sv[0]);
        (void)!::write(ready, "r", 1);
        await_release();
        int bad = wd == -1 ? 0 : 1;
        if (wd != -1) w.remove(wd);
        if (open_fd_count() != before) bad |= 2;
        return bad;
    });
    REQUIRE(c.ready());
    ::close(sv[1]);  // the turn's peer is gone: sv[0] and every copy of it are readable
    ::pollfd p{w.native_handle(), POLLIN, 0};
    CHECK(::poll(&p, 1, 0) == 0);  // nothing of the child's in the parent's set
    c.release();
    CHECK(c.wait() == 0);
    ::close(sv[0]);
}

TEST_CASE("waiting: a queue turn armed by another thread during a wait wakes it when it comes") {
    // The sync waiters' reader may be polling while another thread arms a
    // turn (the watcher then polls the inotify instance alone, not its
    // epoll set): the turn must wake it, not its deadline.
    scratch s;
    const auto p = s / "a.lock";
    write_file(p, "");
    fdetail::release_watcher w;
    REQUIRE(w.valid());
    REQUIRE(w.enable_interrupts());
    const int file = w.add(p);
    REQUIRE(file >= 0);
    const auto until = sclock::now() + 20s;
    std::atomic<int> turn{0};  // set once armed and come
    bool seen = false;
    std::thread reader([&] {
        while (!seen && sclock::now() < until) {
            w.clear_interrupts();
            w.wait(until);
            const int t = turn.load();
            if (t == 0) continue;  // woken before the turn came
            for (const auto& ev : w.drain()) seen |= ev.wd == t;
        }
    });
    std::this_thread::sleep_for(200ms);  // (if not yet in its poll, it polls the set)
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    const int t = w.add_turn(sv[0]);
    REQUIRE(fdetail::release_watcher::is_turn(t));
    ::close(sv[1]);  // the turn comes
    turn = t;
    reader.join();
    CHECK(seen);
    CHECK(sclock::now() < until - 10s);
    w.remove(t);
    w.remove(file);
    ::close(sv[0]);
}

TEST_CASE("waiting: lock(path, timeout, ec) waits with the default options") {
    // The README's `filelock::lock(path, timeout[, options][, ec])`: the form
    // without options did not compile.
    scratch s;
    const auto p = s / "a.lock";
    std::error_code ec;
    {
        auto holder = hold_in_child(p);
        REQUIRE(holder.ready());
        auto none = filelock::lock(p, 50ms, ec);
        CHECK(ec == errc::timeout);
        CHECK(!none.is_locked());
    }
    auto got = filelock::lock(p, 5s, ec);
    CHECK(!ec);
    CHECK(got.is_locked());
}

// --- no release event is lost, and none is mistaken -------------------------

TEST_CASE("waiting: a release between the failed attempt and the watch is not lost") {
    // The holder lets go inside the waiter's first (failed) attempt, before
    // any watch exists: the waiter must attempt again once it watches, not
    // sleep its 20 s fallback.
    scratch s;
    const auto p = s / "a.lock";
    auto holder = std::make_unique<lock_file>(p);
    static lock_file* to_release;
    static bool in_hook;
    to_release = holder.get();
    in_hook = false;
    seam fake;
    fdetail::sys().flock = [](int fd, int op) {
        const int rc = fdetail::default_sys().flock(fd, op);
        if (rc != 0 && (op & LOCK_NB) && !in_hook && to_release) {
            in_hook = true;
            const int err = errno;
            to_release->close();  // a close event now, while nobody watches
            to_release = nullptr;
            errno = err;
            in_hook = false;
        }
        return rc;
    };
    const auto t0 = sclock::now();
    std::error_code ec;
    auto l = filelock::lock(p, 60s, event_only(), ec);
    CHECK(!ec);
    CHECK(sclock::now() - t0 < before_timer);
}

TEST_CASE("waiting: close events on another watched file are not taken as a release") {
    // A thread waited on `y` (its watch stays cached), then waits on `x`;
    // meanwhile `y` is opened and closed 100 times. The waiter's attempts on
    // `x` stay those of its own protocol (757dff8 attempted at each event).
    scratch s;
    const auto x = s / "x.lock", y = s / "y.lock";
    auto hold_x = hold_in_child(x);
    REQUIRE(hold_x.ready());
    auto hold_y = std::make_unique<lock_file>(y);
    static std::atomic<int> attempts_on_x;
    static std::atomic<long> x_ino;
    attempts_on_x = 0;
    struct ::stat st {};
    REQUIRE(::stat(x.c_str(), &st) == 0);
    x_ino = static_cast<long>(st.st_ino);
    seam fake;
    fdetail::sys().flock = [](int fd, int op) {
        struct ::stat fst {};
        if ((op & LOCK_NB) && (op & LOCK_EX) && ::fstat(fd, &fst) == 0 &&
            static_cast<long>(fst.st_ino) == x_ino)
            ++attempts_on_x;
        return fdetail::default_sys().flock(fd, op);
    };
    std::error_code y_ec, x_ec;
    std::atomic<bool> had_y{false};
    std::thread waiter([&] {
        (void)filelock::lock(y, 30s, event_only(), y_ec);  // released below
        had_y = true;
        (void)filelock::lock(x, 30s, event_only(), x_ec);
    });
    while (fdetail::local_waiters() == 0) std::this_thread::sleep_for(1ms);
    std::this_thread::sleep_for(50ms);
    hold_y.reset();
    while (!had_y || attempts_on_x == 0) std::this_thread::sleep_for(1ms);
    std::this_thread::sleep_for(100ms);
    const int before = attempts_on_x;
    for (int i = 0; i < 100; ++i) {
        const int fd = ::open(y.c_str(), O_RDONLY | O_CLOEXEC);
        ::close(fd);  // a close event on y
    }
    std::this_thread::sleep_for(200ms);
    CHECK(attempts_on_x - before == 0);
    hold_x.release();
    waiter.join();
    CHECK(!y_ec);
    CHECK(!x_ec);
}

// The waiter's path from a release to its return: what it asks the system.
namespace lone {
std::mutex mutex;
std::vector<std::string> calls;  // of the waiting thread, in order
std::atomic<long> ino{0};
std::atomic<int> fstats{0};  // of the lock file's descriptor
bool on_lock_file(int fd) {
    struct ::stat st {};
    return ::fstat(fd, &st) == 0 && static_cast<long>(st.st_ino) == ino;
}
void note(std::string c) {
    std::lock_guard<std::mutex> g(mutex);
    calls.push_back(std::move(c));
}
}  // namespace lone

TEST_CASE(
    "waiting: a lone waiter woken by its file's release attempts before it reads the event, "
    "and asks its descriptor's file once") {
    scratch s;
    const auto x = s / "x.lock";
    auto hold = hold_in_child(x);
    REQUIRE(hold.ready());
    struct ::stat st {};
    REQUIRE(::stat(x.c_str(), &st) == 0);
    lone::ino = static_cast<long>(st.st_ino);
    lone::fstats = 0;
    lone::calls.clear();
    seam fake;
    fdetail::sys().flock = [](int fd, int op) {
        const int r = fdetail::default_sys().flock(fd, op);
        if ((op & LOCK_NB) && lone::on_lock_file(fd)) lone::note(r == 0 ? "won" : "flock");
        return r;
    };
    fdetail::sys().fstat = [](int fd, struct ::stat* out) {
        if (lone::on_lock_file(fd)) ++lone::fstats;
        return fdetail::default_sys().fstat(fd, out);
    };
    fdetail::sys().read = [](int fd, void* buf, size_t n) {
        const ssize_t r = fdetail::default_sys().read(fd, buf, n);
        if (r > 0) lone::note("read");
        return r;
    };
    fdetail::sys().ppoll = [](::pollfd* fds, ::nfds_t n, const ::timespec* t, const ::sigset_t* m) {
        const int r = fdetail::default_sys().ppoll(fds, n, t, m);
        if (r > 0) lone::note("woken");
        return r;
    };
    std::error_code ec;
    std::thread waiter([&] { (void)filelock::lock(x, 30s, event_only(), ec); });
    while (fdetail::local_waiters() == 0) std::this_thread::sleep_for(1ms);
    std::this_thread::sleep_for(100ms);
    hold.release();
    waiter.join();
    REQUIRE(!ec);
    std::vector<std::string> seen;
    {
        std::lock_guard<std::mutex> g(lone::mutex);
        seen = lone::calls;
    }
    CAPTURE(seen);
    REQUIRE(seen.size() >= 2);
    CHECK(seen.back() == "won");
    // Woken by the release, it attempts at once: the event is read later.
    CHECK(seen[seen.size() - 2] == "woken");
    // Its file's device and inode never change: asked once, not again at
    // each contention and after the win.
    CHECK(lone::fstats == 1);
}

TEST_CASE(
    "waiting: a waiter whose path comes to name a free file, its directory renamed, takes "
    "that file's lock") {
    // No event on the held file tells: the directory on the way is swapped.
    scratch s;
    const auto d = s / "d", x = d / "x.lock";
    fs::create_directory(d);
    auto hold = hold_in_child(x);  // keeps the old file held all along
    REQUIRE(hold.ready());
    std::error_code ec;
    filelock::lock_file won;
    std::atomic<bool> done{false};
    std::thread waiter([&] {
        won = filelock::lock(x, 5s, {}, ec);
        done = true;
    });
    while (fdetail::local_waiters() == 0) std::this_thread::sleep_for(1ms);
    std::this_thread::sleep_for(100ms);
    fs::rename(d, s / "d.old");
    fs::create_directory(d);
    write_file(x, "");  // free: nobody holds it
    waiter.join();
    CHECK(done);
    REQUIRE(!ec);  // won, not timed out: the old file stays held
    struct ::stat named {
    }, held{};
    REQUIRE(::stat(x.c_str(), &named) == 0);
    REQUIRE(::fstat(won.native_handle(), &held) == 0);
    CHECK(named.st_ino == held.st_ino);
    won.close();
    hold.release();
}

TEST_CASE("waiting: an overflowed event queue counts as every watched file moved") {
    fdetail::release_watcher w;
    REQUIRE(w.valid());
    seam fake;
    static bool served;
    served = false;
    fdetail::sys().read = [](int, void* buf, size_t n) -> ssize_t {
        if (served || n < sizeof(inotify_event)) return errno = EAGAIN, -1;
        served = true;
        inotify_event ev{};
        ev.wd = -1;
        ev.mask = IN_Q_OVERFLOW;
        std::memcpy(buf, &ev, sizeof ev);
        return sizeof ev;
    };
    const auto events = w.drain();
    REQUIRE(events.size() == 1);
    CHECK(events[0].wd == fdetail::release_watcher::all);
    CHECK(events[0].moved);
}

TEST_CASE("waiting: after lost events, a waiter watches the file the path names now") {
    // The overflow comes while a sync waiter waits on a file that is then
    // replaced: it must watch the new file and be woken by its release.
    scratch s;
    const auto p = s / "a.lock";
    auto holder = std::make_unique<lock_file>(p);
    std::error_code ec;
    lock_file got;
    std::thread waiter([&] { got = filelock::lock(p, 60s, event_only(), ec); });
    while (fdetail::local_waiters() == 0 && !got) std::this_thread::sleep_for(1ms);
    std::this_thread::sleep_for(100ms);
    // Replace the file (the old one stays held), then lose the events.
    {
        seam fake;
        static std::atomic<bool> overflow;
        overflow = true;
        fdetail::sys().read = [](int fd, void* buf, size_t n) -> ssize_t {
            if (overflow.exchange(false) && n >= sizeof(inotify_event)) {
                while (fdetail::default_sys().read(fd, buf, n) > 0) {
                }
                inotify_event ev{};
                ev.wd = -1;
                ev.mask = IN_Q_OVERFLOW;
                std::memcpy(buf, &ev, sizeof ev);
                return sizeof ev;
            }
            return fdetail::default_sys().read(fd, buf, n);
        };
        write_file(s / "new.lock", "");
        auto new_holder = lock_file(s / "new.lock");
        fs::rename(s / "new.lock", p);
        std::this_thread::sleep_for(200ms);  // the waiter looked again and watches the new file
        const auto t0 = sclock::now();
        new_holder.close();
        holder.reset();
        waiter.join();
        CHECK(sclock::now() - t0 < before_timer);
    }
    CHECK(!ec);
    CHECK(got.is_locked());
}
