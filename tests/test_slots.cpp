// SPDX-License-Identifier: MIT
// Locks with N holders on a lock file (lock_options::slots): never more than
// N holders across processes and N reached, a killed holder's slot freed at
// once, the holders seen in /proc/locks, what flock(1) users exclude, N = 1
// as the one-holder lock bit for bit, bad values refused, and the same
// through the sync, Asio and libuv drivers.
#include <filelock/asio.hpp>
#include <filelock/detail/local_queue.hpp>
#include <filelock/lock_file.hpp>
#include <filelock/uv.hpp>

#include "support.hpp"

#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>

#include <atomic>
#include <fstream>
#include <set>
#include <sstream>
#include <sys/mman.h>
#include <sys/sysmacros.h>
#include <thread>
#include <vector>

using namespace test;
using filelock::errc;
using filelock::lock_file;

namespace {

// The lines of /proc/locks for the file `p` ("FLOCK ADVISORY READ 123 ...").
std::vector<std::string> proc_locks(const fs::path& p) {
    struct ::stat st {};
    REQUIRE(::stat(p.c_str(), &st) == 0);
    char id[64];
    std::snprintf(id, sizeof id, " %02x:%02x:%llu ", major(st.st_dev), minor(st.st_dev),
                  static_cast<unsigned long long>(st.st_ino));
    const auto look = [&] {
        std::ifstream in("/proc/locks");
        std::vector<std::string> out;
        for (std::string line; std::getline(in, line);)
            if (line.find(id) != std::string::npos && line.find("->") == std::string::npos)
                out.push_back(line.substr(line.find(' ') + 1));
        return out;
    };
    // /proc/locks is read a piece at a time: while other processes (the
    // tests beside this one) take and drop locks, one reading can show a
    // line twice or miss one. Two readings that agree are taken.
    std::vector<std::string> last = look();
    for (int i = 0; i < 20; ++i) {
        std::vector<std::string> again = look();
        if (again == last) break;
        last = std::move(again);
    }
    return last;
}

std::size_t count_with(const std::vector<std::string>& lines, const std::string& what) {
    std::size_t n = 0;
    for (const auto& l : lines) n += l.find(what) != std::string::npos;
    return n;
}

// How many holders a counter in shared memory saw at once.
struct shared_count {
    std::atomic<int> now{0}, most{0}, over{0};
};

shared_count* map_count() {
    void* m = ::mmap(nullptr, sizeof(shared_count), PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(m != MAP_FAILED);
    return new (m) shared_count;
}

// Counts itself in while it holds; records the most seen and any excess.
void count_in(shared_count& c, unsigned n) {
    const int at = ++c.now;
    int most = c.most.load();
    while (at > most && !c.most.compare_exchange_weak(most, at)) {
    }
    if (at > static_cast<int>(n)) ++c.over;
}

int flock_cmd(const std::string& mode, const fs::path& p) {
    return run({"flock", mode, "-n", p.string(), "true"});
}

}  // namespace

TEST_CASE("slots: N + 2 processes never hold more than N at once, and N at once is reached") {
    scratch s;
    const auto p = s / "n.lock";
    constexpr unsigned n = 3;
    shared_count* c = map_count();
    std::vector<pid_t> pids;
    for (unsigned i = 0; i < n + 2; ++i) {
        const pid_t pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            int code = 0;
            try {
                for (int round = 0; round < 15; ++round) {
                    auto l = filelock::lock(p, 20s, slots(n));
                    if (l.slot() >= n) code = 3;
                    count_in(*c, n);
                    std::this_thread::sleep_for(3ms);
                    --c->now;
                }
            } catch (...) {
                code = 2;
            }
            ::_exit(code);
        }
        pids.push_back(pid);
    }
    for (pid_t pid : pids) {
        int st = 0;
        REQUIRE(::waitpid(pid, &st, 0) == pid);
        CHECK(WIFEXITED(st));
        CHECK(WEXITSTATUS(st) == 0);
    }
    CHECK(c->over == 0);
    CHECK(c->most == static_cast<int>(n));
    CHECK(read_file(p).empty());  // slot holders write nothing
    ::munmap(c, sizeof *c);
}

TEST_CASE("slots: holders get distinct slots, and the N+1-th finds contention naming them") {
    scratch s;
    const auto p = s / "n.lock";
    child a = hold_in_child(p, slots(2));
    REQUIRE(a.ready());
    lock_file mine(p, slots(2));
    CHECK(mine.slot() == 1);  // the child took slot 0
    std::error_code ec;
    auto third = filelock::try_lock(p, slots(2), ec);
    CHECK(ec == errc::locked);
    CHECK(!third);
    try {
        lock_file again(p, slots(2));
        FAIL("a third holder of two slots");
    } catch (const filelock::lock_error& e) {
        // The holders, as the system lists them: both processes.
        CHECK(e.holder().find(std::to_string(::getpid())) != std::string::npos);
        CHECK(e.holder().find(", ") != std::string::npos);
    }
    try {
        auto timed = filelock::lock(p, 10ms, slots(2));
        FAIL("a third holder of two slots");
    } catch (const filelock::timeout_error& e) {
        CHECK(e.holder().find(std::to_string(::getpid())) != std::string::npos);
    }
    // Every holder is visible: a shared flock with its pid, a byte per slot.
    const auto lines = proc_locks(p);
    CHECK(count_with(lines, "FLOCK  ADVISORY  READ " + std::to_string(::getpid())) == 1);
    CHECK(count_with(lines, "FLOCK  ADVISORY  READ") == 2);
    CHECK(count_with(lines, "OFDLCK ADVISORY  WRITE") == 2);
    CHECK(count_with(lines, " " + std::to_string(filelock::slot_offset + 1) + " " +
                                std::to_string(filelock::slot_offset + 1)) == 1);
}

TEST_CASE("slots: a killed holder's slot is free at once") {
    scratch s;
    const auto p = s / "n.lock";
    child a = hold_in_child(p, slots(2));
    REQUIRE(a.ready());
    child b = hold_in_child(p, slots(2));
    REQUIRE(b.ready());
    std::error_code ec;
    auto l = filelock::try_lock(p, slots(2), ec);
    REQUIRE(ec == errc::locked);
    a.kill();
    CHECK(a.wait() == 128 + SIGKILL);
    l = filelock::try_lock(p, slots(2), ec);  // one attempt: no wait for the kernel
    CHECK(!ec);
    CHECK(l.slot() == 0);  // the killed child's
}

TEST_CASE("slots: flock -x waits for every slot holder; flock -s coexists with them") {
    scratch s;
    const auto p = s / "n.lock";
    {
        lock_file one(p, slots(4));
        CHECK(flock_cmd("-x", p) == 1);
        CHECK(flock_cmd("-s", p) == 0);
        // A shared lock of ours is LOCK_SH too: beside the slot holders.
        filelock::lock_options reader;
        reader.mode = filelock::lock_mode::shared;
        std::error_code shared_ec;
        auto r = filelock::try_lock(p, reader, shared_ec);
        CHECK(!shared_ec);
        r.close();
        lock_file two(p, slots(4));
        CHECK(flock_cmd("-x", p) == 1);
        one.close();
        CHECK(flock_cmd("-x", p) == 1);  // still one holder
    }
    CHECK(flock_cmd("-x", p) == 0);
    // An exclusive flock(2) holder (flock -x, zc.lockfile, a one-holder lock)
    // excludes every slot; a waiter for a slot wins once it is gone.
    child x = child([p](int ready) {
        const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0 || ::flock(fd, LOCK_EX) != 0) return 2;
        (void)!::write(ready, "r", 1);
        await_release();
        return 0;
    });
    REQUIRE(x.ready());
    std::error_code ec;
    auto l = filelock::try_lock(p, slots(4), ec);
    CHECK(ec == errc::locked);
    CHECK(proc_locks(p).size() == 1);  // the contender holds nothing meanwhile
    std::thread releaser([&] {
        std::this_thread::sleep_for(50ms);
        x.release();
    });
    auto o = event_only();
    o.slots = 4;
    const auto t0 = std::chrono::steady_clock::now();
    l = filelock::lock(p, slow_timer * 2, o, ec);
    const auto waited = std::chrono::steady_clock::now() - t0;
    releaser.join();
    CHECK(!ec);
    CHECK(waited < before_timer);  // woken by the release, not the timer
    CHECK(x.wait() == 0);
    // And a one-holder lock of the same path is such an exclusive user.
    auto one = filelock::try_lock(p, {}, ec);
    CHECK(ec == errc::locked);
}

TEST_CASE("slots: an OFD lock of a slot's byte (flock --fcntl) takes that slot; ours are seen") {
    scratch s;
    const auto p = s / "n.lock";
    const auto byte = [](unsigned slot) {
        return static_cast<off_t>(filelock::slot_offset + slot);
    };
    {
        // Another program's F_OFD_SETLK on slot 0's byte: we get slot 1, then
        // contention, though only one of two slots has a holder of ours.
        child other = hold_byte_in_child(p, F_WRLCK, byte(0));
        REQUIRE(other.ready());
        lock_file mine(p, slots(2));
        CHECK(mine.slot() == 1);
        CHECK(probe_in_child(p, F_WRLCK, byte(1)) == 1);  // our slot's byte is locked
        CHECK(probe_in_child(p, F_WRLCK, byte(2)) == 0);  // a byte past our slots is not
        std::error_code ec;
        auto none = filelock::try_lock(p, slots(2), ec);
        CHECK(ec == errc::locked);
        mine.close();
        CHECK(probe_in_child(p, F_WRLCK, byte(1)) == 0);  // released with the lock
    }
    // The same through filelock-run --fcntl on slot 1's byte: slot 0 is ours,
    // and no third holder fits.
    const std::string run_path = filelock_run_path();
    program ranged({run_path, "--fcntl", "--start", std::to_string(byte(1)), "--length", "1",
                    p.string(), "sh", "-c", "echo held; exec cat"});
    REQUIRE(ranged.read_line() == "held");
    lock_file first(p, slots(2));
    CHECK(first.slot() == 0);
    std::error_code ec;
    auto none = filelock::try_lock(p, slots(2), ec);
    CHECK(ec == errc::locked);
    ranged.close_stdin();
    CHECK(ranged.wait() == 0);
    auto second = filelock::try_lock(p, slots(2), ec);
    CHECK(!ec);
    CHECK(second.slot() == 1);
}

TEST_CASE("slots: cancellation and timeout leave no slot taken, in every driver") {
    scratch s;
    const auto p = s / "n.lock";
    child a = hold_in_child(p, slots(2));
    REQUIRE(a.ready());
    child b = hold_in_child(p, slots(2));
    REQUIRE(b.ready());
    const auto others_only = [&] {
        // The two children's flock and byte locks, and nothing of ours.
        const auto lines = proc_locks(p);
        CAPTURE(lines, a.pid(), b.pid());
        CHECK(lines.size() == 4);
        CHECK(count_with(lines, "FLOCK  ADVISORY  READ") == 2);
        CHECK(count_with(lines, "OFDLCK ADVISORY  WRITE") == 2);
        CHECK(count_with(lines, " " + std::to_string(::getpid()) + " ") == 0);
    };
    std::error_code ec;
    auto l = filelock::try_lock(p, slots(2), ec);
    CHECK(ec == errc::locked);
    others_only();
    l = filelock::lock(p, 30ms, slots(2), ec);
    CHECK(ec == errc::timeout);
    others_only();

    asio::io_context io;
    for (auto type : {asio::cancellation_type::terminal, asio::cancellation_type::partial,
                      asio::cancellation_type::total}) {
        asio::cancellation_signal sig;
        async_outcome out;
        filelock::async_lock(io, p, 30s, slots(2),
                             asio::bind_cancellation_slot(sig.slot(), capture(out)));
        asio::steady_timer t(io, 20ms);
        t.async_wait([&](std::error_code) { sig.emit(type); });
        io.restart();
        io.run();
        CHECK(out.ec == filelock::condition::cancelled);
        CHECK(!out.lock);
        others_only();
    }
    async_outcome timed_out;
    filelock::async_lock(io, p, 30ms, slots(2), capture(timed_out));
    io.restart();
    io.run();
    CHECK(timed_out.ec == errc::timeout);
    others_only();

    uv_loop_t loop;
    REQUIRE(uv_loop_init(&loop) == 0);
    async_outcome uv_cancelled, uv_timed_out;
    auto req = filelock::uv::async_lock(&loop, p, 30s, slots(2), capture(uv_cancelled));
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    t.data = &req;
    uv_timer_start(
        &t,
        [](uv_timer_t* h) {
            static_cast<filelock::uv::request*>(h->data)->cancel();
            uv_close(reinterpret_cast<uv_handle_t*>(h), nullptr);
        },
        20, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_cancelled.ec == filelock::condition::cancelled);
    others_only();
    filelock::uv::async_lock(&loop, p, 30ms, slots(2), capture(uv_timed_out));
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_timed_out.ec == errc::timeout);
    others_only();
    CHECK(uv_loop_close(&loop) == 0);

    // A freed slot is taken at once by the next one to try: nothing of the
    // cancelled waits holds it.
    b.release();
    CHECK(b.wait() == 0);
    child next = hold_in_child(p, slots(2));
    CHECK(next.ready());
}

TEST_CASE("slots: a slot waiter is woken by any holder's release") {
    scratch s;
    const auto p = s / "n.lock";
    child a = hold_in_child(p, slots(2));
    REQUIRE(a.ready());
    child b = hold_in_child(p, slots(2));
    REQUIRE(b.ready());
    std::thread releaser([&] {
        std::this_thread::sleep_for(50ms);
        b.release();  // slot 1
    });
    auto o = event_only();
    o.slots = 2;
    std::error_code ec;
    const auto t0 = std::chrono::steady_clock::now();
    auto l = filelock::lock(p, slow_timer * 2, o, ec);
    const auto waited = std::chrono::steady_clock::now() - t0;
    releaser.join();
    CHECK(!ec);
    CHECK(l.slot() == 1);
    CHECK(waited < before_timer);
    CHECK(b.wait() == 0);
}

TEST_CASE("slots: one slot is the one-holder lock, bit for bit") {
    scratch s;
    const auto p = s / "one.lock";
    std::string content[2];
    std::vector<std::string> kernel[2];
    for (int i = 0; i < 2; ++i) {
        lock_file l(p, i == 0 ? filelock::lock_options{} : slots(1));
        CHECK(l.slot() == 0);
        content[i] = read_file(p);
        kernel[i] = proc_locks(p);
        // (the lock ids at the start of the lines differ)
    }
    CHECK(content[0] == " " + std::to_string(::getpid()) + "\n");
    CHECK(content[1] == content[0]);
    REQUIRE(kernel[1].size() == 1);
    CHECK(kernel[1] == kernel[0]);
    CHECK(count_with(kernel[1], "FLOCK  ADVISORY  WRITE") == 1);
}

TEST_CASE("slots: bad values are refused before the file is touched, naming path and cause") {
    scratch s;
    const auto p = s / "bad.lock";
    auto shared = slots(2);
    shared.mode = filelock::lock_mode::shared;
    auto ranged = slots(2);
    ranged.backend = filelock::lock_backend::ofd;
    ranged.range = {0, 1};
    for (const auto& o : {slots(0), slots(filelock::max_slots + 1), shared, ranged}) {
        std::error_code ec;
        auto l = filelock::try_lock(p, o, ec);
        CHECK(ec == std::errc::invalid_argument);
        l = filelock::lock(p, 1s, o, ec);
        CHECK(ec == std::errc::invalid_argument);
        try {
            lock_file thrown(p, o);
            FAIL("accepted");
        } catch (const fs::filesystem_error& e) {
            CHECK(e.path1() == p);
            CHECK(std::string(e.what()).find("lock_options::slots") != std::string::npos);
            CHECK(e.code() == std::errc::invalid_argument);
        }
        CHECK(!fs::exists(p));
    }
    lock_file most(p, slots(filelock::max_slots));
    CHECK(most.slot() == 0);
}

TEST_CASE("slots: local waiters queue for slots and never pass N, across threads") {
    scratch s;
    const auto p = s / "n.lock";
    constexpr unsigned n = 2;
    shared_count c;
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 5; ++t)
        threads.emplace_back([&] {
            for (int round = 0; round < 10; ++round) {
                std::error_code ec;
                auto l = filelock::lock(p, 20s, slots(n), ec);
                if (ec) {
                    ++failures;
                    return;
                }
                count_in(c, n);
                std::this_thread::sleep_for(1ms);
                --c.now;
            }
        });
    for (auto& t : threads) t.join();
    CHECK(failures == 0);
    CHECK(c.over == 0);
    CHECK(c.most == static_cast<int>(n));
    CHECK(filelock::detail::local_waiters() == 0);
}

TEST_CASE("slots: a process's waiters for slots share one descriptor, and each holds once") {
    scratch s;
    const auto p = s / "n.lock";
    child a = hold_in_child(p, slots(2));
    REQUIRE(a.ready());
    child b = hold_in_child(p, slots(2));
    REQUIRE(b.ready());
    uv_loop_t loop;
    REQUIRE(uv_loop_init(&loop) == 0);
    constexpr int n = 20;
    int done = 0, failed = 0;
    std::set<unsigned> seen;
    std::vector<lock_file> held;
    for (int i = 0; i < n; ++i)
        filelock::uv::async_lock(&loop, p, 60s, slots(2), [&](std::error_code ec, lock_file l) {
            ++done;
            if (ec) {
                ++failed;
                return;
            }
            seen.insert(l.slot());
            // Hold while the others wait: both slots are ours at the end.
            held.push_back(std::move(l));
            if (held.size() == 2) held.clear();
        });
    for (int i = 0; i < 50; ++i) uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(done == 0);
    CHECK(fds_on(p) == 1);  // the queue head's descriptor, for all 20
    CHECK(filelock::detail::local_waiters() == n);
    a.release();
    b.release();
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(done == n);
    CHECK(failed == 0);
    CHECK(seen == std::set<unsigned>{0, 1});
    held.clear();
    CHECK(fds_on(p) == 0);
    CHECK(filelock::detail::local_waiters() == 0);
    CHECK(uv_loop_close(&loop) == 0);
    CHECK(a.wait() == 0);
    CHECK(b.wait() == 0);
}

TEST_CASE("slots: asio and libuv async_lock take, wait for and time out on slots") {
    scratch s;
    const auto p = s / "n.lock";
    child other = hold_in_child(p, slots(2));
    REQUIRE(other.ready());
    asio::io_context io;
    async_outcome second, timed_out, waited;
    filelock::async_lock(io, p, 5s, slots(2), capture(second));
    io.run();
    REQUIRE(!second.ec);
    CHECK(second.lock.slot() == 1);
    filelock::async_lock(io, p, 20ms, slots(2), capture(timed_out));
    io.restart();
    io.run();
    CHECK(timed_out.ec == errc::timeout);
    auto o = event_only();
    o.slots = 2;
    filelock::async_lock(io, p, slow_timer * 2, o, capture(waited));
    std::thread releaser([&] {
        std::this_thread::sleep_for(50ms);
        other.release();
    });
    const auto t0 = std::chrono::steady_clock::now();
    io.restart();
    io.run();
    releaser.join();
    CHECK(std::chrono::steady_clock::now() - t0 < before_timer);
    CHECK(other.wait() == 0);
    CHECK(!waited.ec);
    CHECK(waited.lock.slot() == 0);

    // Both slots are ours now: libuv waits for one of them.
    uv_loop_t loop;
    REQUIRE(uv_loop_init(&loop) == 0);
    async_outcome uv_busy, uv_waited;
    filelock::uv::async_lock(&loop, p, 20ms, slots(2), capture(uv_busy));
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_busy.ec == errc::timeout);
    filelock::uv::async_lock(&loop, p, slow_timer * 2, o, capture(uv_waited));
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    t.data = &second;
    uv_timer_start(
        &t,
        [](uv_timer_t* h) {
            static_cast<async_outcome*>(h->data)->lock.close();
            uv_close(reinterpret_cast<uv_handle_t*>(h), nullptr);
        },
        50, 0);
    const auto t1 = std::chrono::steady_clock::now();
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(std::chrono::steady_clock::now() - t1 < before_timer);
    CHECK(!uv_waited.ec);
    CHECK(uv_waited.lock.slot() == 1);
    CHECK(uv_loop_close(&loop) == 0);
}

TEST_CASE("slots: filelock-run --slots N admits N commands; -n, -w, -E as for one holder") {
    scratch s;
    const auto p = (s / "n.lock").string();
    const std::string run_path = filelock_run_path();
    const auto hold = [&] {
        return std::make_unique<program>(std::vector<std::string>{run_path, "--slots", "2", p, "sh",
                                                                  "-c", "echo held; exec cat"});
    };
    auto a = hold();
    CHECK(a->read_line() == "held");
    auto b = hold();
    CHECK(b->read_line() == "held");
    CHECK(run({run_path, "--slots", "2", "-n", p, "true"}) == 1);
    CHECK(run({run_path, "--slots", "2", "-n", "-E", "7", p, "true"}) == 7);
    CHECK(run({run_path, "--slots", "2", "-w", "0.05", p, "true"}) == 1);
    CHECK(run({run_path, "--slots", "3", "-n", p, "true"}) == 0);  // a third slot
    CHECK(flock_cmd("-x", fs::path(p)) == 1);
    CHECK(flock_cmd("-s", fs::path(p)) == 0);
    a->close_stdin();
    CHECK(a->wait() == 0);
    CHECK(run({run_path, "--slots", "2", "-n", p, "true"}) == 0);
    b->close_stdin();
    CHECK(b->wait() == 0);
    CHECK(read_file(p).empty());
    // --slots 1 is the one-holder lock, -s included.
    CHECK(run({run_path, "--slots", "1", "-s", p, "true"}) == 0);
    CHECK(run({run_path, "--slots", "1", p, "true"}) == 0);
    const std::string line = read_file(p);  // its holder's line, as without --slots
    CHECK((line.size() > 2 && line.front() == ' ' && line.back() == '\n'));
}

TEST_CASE("slots: filelock-run refuses bad --slots with status 64 and a reason") {
    scratch s;
    const auto p = (s / "n.lock").string();
    const std::string run_path = filelock_run_path();
    for (const std::vector<std::string>& bad : {std::vector<std::string>{"--slots", "0"},
                                                {"--slots", "1025"},
                                                {"--slots", "two"},
                                                {"--slots", "-3"},
                                                {"--slots", "2", "-s"},
                                                {"--slots", "2", "--fcntl"}}) {
        std::vector<std::string> argv{run_path};
        argv.insert(argv.end(), bad.begin(), bad.end());
        argv.insert(argv.end(), {p, "true"});
        std::string err;
        CHECK(run(argv, &err) == 64);
        CHECK(err.find("slots") != std::string::npos);
    }
    CHECK(!fs::exists(p));
}
