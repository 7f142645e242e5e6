// SPDX-License-Identifier: MIT
// fork(): a child never shares a won lock or a pending attempt with its
// parent, and closing in one process never unlocks the other's lock.

#include <filelock/asio.hpp>
#include <filelock/lock_file.hpp>
#include <filelock/uv.hpp>

#include "../src/posix/sys.hpp"
#include "support.hpp"

#include <asio/io_context.hpp>

#include <atomic>
#include <cstring>
#include <fstream>
#include <sys/stat.h>
#include <thread>
#include <vector>

using namespace test;
using filelock::errc;
using filelock::lock_file;
using filelock::lock_options;

namespace {

// What one process's acquisition came to (its exit code in a child).
enum outcome : int { won_alone = 0, timed_out = 1, overlapped = 2, failed = 3, no_outcome = 4 };

// The critical section of a process that won: a marker that a second holder
// at the same time would find.
outcome hold_alone(const fs::path& marker) {
    const int fd = ::open(marker.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) return errno == EEXIST ? overlapped : failed;
    ::close(fd);
    ::usleep(300000);
    ::unlink(marker.c_str());
    return won_alone;
}

outcome settle(std::error_code ec, lock_file& l, const fs::path& marker) {
    if (ec == errc::timeout) return timed_out;
    if (ec) return failed;
    const outcome o = hold_alone(marker);
    l.close();
    return o;
}

int exit_code(pid_t pid) {
    int st = 0;
    while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

// Forks with `io` told of it. The child runs `io` to its end and exits with
// what its handlers made of `outcome`; the parent, told it is the parent,
// gets the child's pid.
template <class Outcome>
pid_t fork_running(asio::io_context& io, const Outcome& outcome) {
    io.notify_fork(asio::execution_context::fork_prepare);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        io.notify_fork(asio::execution_context::fork_child);
        io.run();
        ::_exit(static_cast<int>(outcome));
    }
    io.notify_fork(asio::execution_context::fork_parent);
    return pid;
}
// A lock file held by another process until `holder.release()`, and the
// marker of the processes that will compete for it.
struct held_elsewhere {
    scratch dir;
    fs::path path = dir / "a.lock";
    fs::path marker = dir / "inside";
    child holder = hold_in_child(path);
    held_elsewhere() { REQUIRE(holder.ready()); }
};

lock_options with_queue(bool queue) {
    lock_options o;
    o.queue_local_waiters = queue;
    return o;
}

// The descriptors of this process open on the file `p` names.
std::vector<int> fd_numbers_on(const fs::path& p) {
    std::vector<int> fds;
    std::error_code ec;
    const fs::path target = fs::canonical(p, ec);
    for (const auto& e : fs::directory_iterator("/proc/self/fd", ec))
        if (fs::read_symlink(e.path(), ec) == target && !ec)
            fds.push_back(std::stoi(e.path().filename().string()));
    return fds;
}

// Replaces entries of the system call table for one test.
struct seam {
    filelock::detail::sys_table saved = filelock::detail::sys();
    ~seam() { filelock::detail::sys() = saved; }
};

// A system call on one file, held back until the test lets it go: a flock(2)
// attempt before it locks (the attempt's thread stands between its open and
// its lock), or an open(2) once it opened (between the open and what the
// attempt does next).
struct held_back {
    static inline std::atomic<ino_t> ino{0};
    static inline std::atomic<int> state{0};  // 1: a thread is held back; 2: let go
    seam fake;
    enum call { flock, open, inotify_add_watch };
    held_back(const fs::path& p, call which) {
        struct stat st {};
        REQUIRE(::stat(p.c_str(), &st) == 0);
        ino = st.st_ino;
        state = 0;
        auto& sys = filelock::detail::sys();
        if (which == flock)
            sys.flock = [](int fd, int op) {
                if (op & LOCK_NB) hold_fd(fd);
                return filelock::detail::default_sys().flock(fd, op);
            };
        else if (which == open)
            sys.open = [](const char* path, int flags, mode_t mode) {
                const int fd = filelock::detail::default_sys().open(path, flags, mode);
                if (fd >= 0) hold_fd(fd);
                return fd;
            };
        else
            sys.inotify_add_watch = [](int fd, const char* path, std::uint32_t mask) {
                struct stat st {};
                if (::stat(path, &st) == 0) hold(st);
                return filelock::detail::default_sys().inotify_add_watch(fd, path, mask);
            };
    }
    static void hold_fd(int fd) {
        const int err = errno;
        struct stat st {};
        if (::fstat(fd, &st) == 0) hold(st);
        errno = err;
    }
    // The first call on the file waits for let_go().
    static void hold(const struct stat& st) {
        int idle = 0;
        if (st.st_ino == ino && state.compare_exchange_strong(idle, 1)) {
            state.notify_all();
            state.wait(1);
        }
    }
    /// Until a thread is held back.
    void wait_held() { state.wait(0); }
    void let_go() {
        state = 2;
        state.notify_all();
    }
};

}  // namespace

TEST_CASE("fork: a libuv async_lock waiting across fork() never gives both processes the lock") {
    for (const bool queue : {true, false}) {
        CAPTURE(queue);
        held_elsewhere h;
        const auto& p = h.path;
        const auto& marker = h.marker;
        auto& holder = h.holder;

        uv_loop_t loop;
        REQUIRE(uv_loop_init(&loop) == 0);
        outcome mine = no_outcome;
        filelock::uv::async_lock(
            &loop, p, 3s, with_queue(queue),
            [&](std::error_code ec, lock_file l) { mine = settle(ec, l, marker); });
        uv_run(&loop, UV_RUN_NOWAIT);  // the first attempt meets the holder: waiting
        REQUIRE(mine == no_outcome);

        const pid_t pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            uv_loop_fork(&loop);
            uv_run(&loop, UV_RUN_DEFAULT);
            const bool closed = uv_loop_close(&loop) == 0;
            ::_exit(closed ? mine : failed);
        }
        holder.release();  // the lock is free from now on
        uv_run(&loop, UV_RUN_DEFAULT);
        CHECK(uv_loop_close(&loop) == 0);
        CHECK(mine == won_alone);
        CHECK(exit_code(pid) == won_alone);  // not overlapped, not timed out on a free lock
        CHECK(lock_is_free(p));
    }
}

TEST_CASE("fork: an Asio async_lock waiting across fork() never gives both processes the lock") {
    for (const bool queue : {true, false}) {
        CAPTURE(queue);
        held_elsewhere h;
        const auto& p = h.path;
        const auto& marker = h.marker;
        auto& holder = h.holder;

        asio::io_context io;
        outcome mine = no_outcome;
        filelock::async_lock(io, p, 3s, with_queue(queue), [&](std::error_code ec, lock_file l) {
            mine = settle(ec, l, marker);
        });
        io.poll();  // the first attempt met the holder: waiting
        REQUIRE(mine == no_outcome);

        const pid_t pid = fork_running(io, mine);
        holder.release();
        io.run();
        CHECK(mine == won_alone);
        CHECK(exit_code(pid) == won_alone);
        CHECK(lock_is_free(p));
    }
}

TEST_CASE(
    "fork: an Asio async_lock begun before fork() and won in the child writes the child's pid") {
    // The content was expanded when the wait began, in the parent: a child
    // that wins must not name its parent as the holder.
    held_elsewhere h;
    asio::io_context io;
    enum { own_line = 0, parents_line = 1, not_won = 3, no_answer = 4 };
    int mine = no_answer;
    filelock::async_lock(io, h.path, 5s, [&](std::error_code ec, lock_file l) {
        mine = ec || !l ? not_won : read_file(h.path) == pid_content() ? own_line : parents_line;
    });
    io.poll();  // the first attempt met the holder: waiting
    REQUIRE(mine == no_answer);
    const pid_t pid = fork_running(io, mine);
    h.holder.release();
    io.run();  // the parent's wait goes on too: each wins in turn
    CHECK(mine == own_line);
    CHECK(exit_code(pid) == own_line);
}

TEST_CASE("fork: an Asio lock won before fork() but delivered in the child is not the child's") {
    // The window between a win and its handler: the lock won is the parent's,
    // so the child attempts again on a descriptor of its own and, while the
    // parent holds, does not get it.
    scratch s;
    const auto p = s / "a.lock";
    asio::io_context io;
    outcome mine = no_outcome;
    lock_file kept;
    filelock::async_lock(io, p, 0s, [&](std::error_code ec, lock_file l) {
        mine = ec ? (ec == errc::timeout ? timed_out : failed) : won_alone;
        kept = std::move(l);
    });
    // Won inside the initiation; the handler is posted, not run yet.
    int held_pipe[2];
    REQUIRE(::pipe(held_pipe) == 0);
    io.notify_fork(asio::execution_context::fork_prepare);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        io.notify_fork(asio::execution_context::fork_child);
        char c;
        (void)!::read(held_pipe[0], &c, 1);  // the parent has its lock delivered
        io.run();
        ::_exit(mine);
    }
    io.notify_fork(asio::execution_context::fork_parent);
    io.run();
    REQUIRE(mine == won_alone);
    REQUIRE(kept.is_locked());
    (void)!::write(held_pipe[1], "h", 1);
    CHECK(exit_code(pid) == timed_out);  // the parent holds: never the child's too
    ::close(held_pipe[0]);
    ::close(held_pipe[1]);
    kept.close();
    CHECK(lock_is_free(p));
}

TEST_CASE("fork: the parent closing first leaves the lock held by the working child") {
    scratch s;
    const auto p = s / "a.lock";
    lock_file held(p);
    child worker([&](int ready) {
        (void)!::write(ready, "r", 1);  // "working", with the inherited lock
        return 0;
    });
    REQUIRE(worker.ready());
    held.close();  // the daemon pattern: the parent returns
    CHECK(!lock_is_free(p));
    std::error_code ec;
    filelock::try_lock(p, ec);  // a second instance
    CHECK(ec == errc::locked);
    worker.release();
    CHECK(worker.wait() == 0);
    CHECK(lock_is_free(p));  // the last copy is gone
}

TEST_CASE(
    "fork: the child closing first leaves the parent's lock held; the parent's close frees it") {
    scratch s;
    const auto p = s / "a.lock";
    lock_file held(p);
    child worker([&](int ready) {
        held.close();
        (void)!::write(ready, "r", 1);
        return 0;
    });
    REQUIRE(worker.ready());
    CHECK(!lock_is_free(p));
    held.close();
    CHECK(lock_is_free(p));  // while the child still runs: it closed its copy
    worker.release();
    CHECK(worker.wait() == 0);
}

TEST_CASE("fork: remove_on_release never removes a lock file that a child still holds") {
    scratch s;
    const auto p = s / "a.lock";
    lock_options o;
    o.remove_on_release = true;
    lock_file held(p, o);
    child worker([&](int ready) {
        (void)!::write(ready, "r", 1);
        return 0;
    });
    REQUIRE(worker.ready());
    held.close();
    CHECK(fs::exists(p));  // a new file at the path would be a second lock
    CHECK(!lock_is_free(p));
    worker.release();
    CHECK(worker.wait() == 0);
}

TEST_CASE("fork: a lock taken after fork() is released by close as before") {
    scratch s;
    const auto p = s / "a.lock";
    child bystander([&](int ready) {
        (void)!::write(ready, "r", 1);
        return 0;
    });
    REQUIRE(bystander.ready());
    lock_file held(p);  // opened after the fork: the child has no copy
    held.close();
    CHECK(lock_is_free(p));
    bystander.release();
}

namespace {

// The numbers of this process's descriptors that link to `what`.
std::vector<int> anon_fd_numbers(const std::string& what) {
    std::vector<int> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/proc/self/fd", ec))
        if (fs::read_symlink(e.path(), ec).string() == what)
            out.push_back(std::stoi(e.path().filename().string()));
    return out;
}

// A thread of this process waiting in lock() for `p` (up to 30 s).
struct waiting_thread {
    std::atomic<int> outcome{-1};  // 0: won
    std::thread t;
    explicit waiting_thread(const fs::path& p)
        : t([this, p] {
              std::error_code ec;
              auto l = filelock::lock(p, 30s, {}, ec);
              outcome = ec ? 1 : 0;
          }) {}
    /// 0: it won.
    int join() {
        t.join();
        return outcome;
    }
};

}  // namespace

TEST_CASE(
    "fork: a child's lock() never closes descriptors it opened on the numbers of the "
    "parent's waiting instance") {
    // A thread of the parent waits in lock(): the sync waiters' inotify
    // instance and eventfd are open when the process forks. The child takes
    // their numbers for files of its own (a daemon closes what it inherited,
    // then opens its files), then waits in lock() itself. The child's copies
    // are closed at the fork, never later: its files stay open.
    held_elsewhere h;
    waiting_thread waiter(h.path);
    std::vector<int> numbers;
    for (int i = 0; i < 1000 && numbers.size() < 2; ++i) {
        ::usleep(10000);
        numbers = anon_fd_numbers("anon_inode:inotify");
        for (int fd : anon_fd_numbers("anon_inode:[eventfd]")) numbers.push_back(fd);
    }
    REQUIRE(numbers.size() == 2);
    const auto mine = h.dir / "mine";
    { std::ofstream(mine) << "child's file\n"; }
    child c([&](int ready) {
        // Closed at the fork: nothing of the parent's instance is left.
        int code = anon_fd_numbers("anon_inode:inotify").empty() ? 0 : 10;
        struct stat want {};
        for (int n : numbers) {
            const int fd = ::open(mine.c_str(), O_RDONLY | O_CLOEXEC);
            if (fd < 0) return 20;
            if (fd != n) {  // (the lowest free number may be `n` itself)
                if (::dup2(fd, n) != n) return 20;
                ::close(fd);
            }
            ::fstat(n, &want);
        }
        std::error_code ec;
        auto l = filelock::lock(h.path, 200ms, {}, ec);  // held: it waits, watching
        if (ec != errc::timeout) code += 1;
        for (int n : numbers) {
            struct stat got {};
            if (::fstat(n, &got) != 0 || got.st_ino != want.st_ino) code += 2;
        }
        (void)!::write(ready, "r", 1);
        return code;
    });
    CHECK(c.ready());
    c.release();
    CHECK(c.wait() == 0);  // 10: the copies outlived the fork; 2, 4: its files were closed
    h.holder.release();
    CHECK(waiter.join() == 0);
}

TEST_CASE("fork: a child forked while a thread waits in lock() keeps no copy of its lock file") {
    // The waiter keeps its descriptor between attempts. Before, a child
    // forked meanwhile kept a copy for its whole life: an idle descriptor of
    // ours, on which the parent could even win in the window between its
    // check for a fork and its attempt (the lock then stayed held by the
    // child after the parent released it).
    held_elsewhere h;
    waiting_thread waiter(h.path);
    std::vector<int> ours;
    for (int i = 0; i < 1000 && ours.empty(); ++i) {
        ::usleep(10000);
        ours = fd_numbers_on(h.path);  // the holder is another process: the waiter's
    }
    REQUIRE(ours.size() == 1);
    const int copies = run_in_child([&] { return static_cast<int>(fd_numbers_on(h.path).size()); });
    CHECK(copies == 0);
    CHECK(fd_numbers_on(h.path) == ours);  // the parent's stays
    h.holder.release();
    CHECK(waiter.join() == 0);
    CHECK(lock_is_free(h.path));
}

TEST_CASE(
    "fork: a child's loop never closes a file of its own on the number of its parent's pending "
    "attempt") {
    // The child's copy of the waiting operation attempts again on a
    // descriptor of its own; the number of the parent's, closed at the fork,
    // may be a file of the child's by then.
    held_elsewhere h;
    asio::io_context io;
    bool done = false;
    filelock::async_lock(io, h.path, 300ms, [&](std::error_code, lock_file) { done = true; });
    io.poll();  // the first attempt met the holder: waiting
    REQUIRE_FALSE(done);
    const auto ours = fd_numbers_on(h.path);
    REQUIRE(ours.size() == 1);
    const auto mine = h.dir / "mine";
    { std::ofstream(mine) << "child's file\n"; }
    io.notify_fork(asio::execution_context::fork_prepare);
    const int code = run_in_child([&] {
        io.notify_fork(asio::execution_context::fork_child);
        int bad = ::fcntl(ours[0], F_GETFD) == -1 ? 0 : 1;  // closed at the fork
        const int fd = ::open(mine.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0 || (fd != ours[0] && (::dup2(fd, ours[0]) != ours[0] || ::close(fd) != 0)))
            return 8;
        struct stat want {};
        ::fstat(ours[0], &want);
        io.run();  // attempts, then times out: the holder holds on
        struct stat got {};
        if (!done) bad |= 2;
        if (::fstat(ours[0], &got) != 0 || got.st_ino != want.st_ino) bad |= 4;
        return bad;
    });
    io.notify_fork(asio::execution_context::fork_parent);
    CHECK(code == 0);
    io.run();
    CHECK(done);
}

TEST_CASE(
    "fork: a child forked between a first attempt's open and its winning lock keeps no copy of "
    "the lock") {
    // The descriptor of an attempt was listed for the fork's child only once
    // it met contention: a child forked between the open and a lock that won
    // kept a copy, and the lock stayed held by the child after the parent
    // released it. A fork right after the open (before the listing) makes
    // the attempt open again: the child's copy is of a description never
    // locked.
    {
        const int probe = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        REQUIRE(shares_description(::getpid(), probe));  // kcmp(2) works here
        ::close(probe);
    }
    for (const auto call : {held_back::flock, held_back::open}) {
        CAPTURE(call);
        scratch dir;
        const fs::path p = dir / "a.lock";
        { std::ofstream(p) << ""; }
        held_back h(p, call);
        std::error_code ec;
        lock_file l;
        std::thread attempt([&] { l = filelock::try_lock(p, ec); });
        h.wait_held();
        child c([](int ready) {  // its fork handlers have run once it is ready
            (void)!::write(ready, "r", 1);
            return 0;
        });
        REQUIRE(c.ready());
        h.let_go();
        attempt.join();
        REQUIRE_FALSE(ec);
        const auto held = fd_numbers_on(p);
        REQUIRE(held.size() == 1);
        CHECK_FALSE(shares_description(c.pid(), held[0]));
        l.close();
        CHECK(lock_is_free(p));  // held by the child's copy before
        c.release();
        CHECK(c.wait() == 0);
    }
}

TEST_CASE(
    "fork: a child forked while a thread takes the release source keeps no copy of its "
    "descriptors") {
    // A thread of the parent begins to wait in lock(): the sync waiters'
    // source is taken (a new one, or the idle one of the process) and its
    // first watch is being added when the process forks. The child kept the
    // source's inotify instance, epoll set and eventfd for its life: they
    // were listed for the fork only once the watch was added.
    settle();  // no source of an earlier test open: the child finds ours only
    for (int round = 0; round < 2; ++round) {  // the second most likely takes the idle one
        CAPTURE(round);
        scratch dir;
        const fs::path p = dir / "a.lock";
        const int holder = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        REQUIRE(holder >= 0);
        REQUIRE(::flock(holder, LOCK_EX) == 0);  // another description: lock() waits
        std::error_code ec;
        std::thread waiter;
        {
            held_back h(p, held_back::inotify_add_watch);
            waiter = std::thread([&] { auto l = filelock::lock(p, 30s, {}, ec); });
            h.wait_held();
            const int kept = run_in_child([] {
                return count_fds([](const char* link) {
                    return std::strcmp(link, "anon_inode:inotify") == 0 ||
                           std::strcmp(link, "anon_inode:[eventfd]") == 0 ||
                           std::strcmp(link, "anon_inode:[eventpoll]") == 0;
                });
            });
            CHECK(kept == 0);
            h.let_go();
        }
        ::close(holder);  // the waiter wins
        waiter.join();
        CHECK_FALSE(ec);
    }
}

namespace {
// Children forked by open_forking(), and the descriptor each blocks on.
std::atomic<int> opens_seen{0};
pid_t forked_at_open[2];
int forked_gate[2] = {-1, -1};
// Forks a child right after each of the first two opens of the lock file
// (between the open and its listing for the fork): a child that then waits
// for the end of `forked_gate`.
int open_forking(const char* path, int flags, mode_t mode) {
    const int fd = filelock::detail::default_sys().open(path, flags, mode);
    struct stat st {};
    if (fd >= 0 && ::fstat(fd, &st) == 0 && st.st_ino == held_back::ino) {
        const int n = opens_seen++;
        if (n < 2) {
            const pid_t pid = ::fork();
            if (pid == 0) {
                ::close(forked_gate[1]);
                char c;
                while (::read(forked_gate[0], &c, 1) < 0 && errno == EINTR) {
                }
                ::_exit(0);
            }
            forked_at_open[n] = pid;
        }
    }
    return fd;
}
}  // namespace

TEST_CASE("fork: an attempt opens again after each fork that comes before its listing") {
    // Each fork between an open and its listing leaves the child a copy of a
    // description that the attempt then never locks: it wins on a third.
    scratch dir;
    const fs::path p = dir / "a.lock";
    { std::ofstream(p) << ""; }
    struct stat st {};
    REQUIRE(::stat(p.c_str(), &st) == 0);
    held_back::ino = st.st_ino;
    REQUIRE(::pipe2(forked_gate, O_CLOEXEC) == 0);
    opens_seen = 0;
    lock_file l;
    std::error_code ec;
    {
        seam fake;
        filelock::detail::sys().open = open_forking;
        l = filelock::try_lock(p, ec);
    }
    ::close(forked_gate[0]);
    REQUIRE_FALSE(ec);
    CHECK(opens_seen == 3);
    const auto held = fd_numbers_on(p);
    REQUIRE(held.size() == 1);
    for (pid_t pid : forked_at_open) CHECK_FALSE(shares_description(pid, held[0]));
    l.close();
    CHECK(lock_is_free(p));
    ::close(forked_gate[1]);  // the children exit
    for (pid_t pid : forked_at_open) CHECK(exit_code(pid) == 0);
}
