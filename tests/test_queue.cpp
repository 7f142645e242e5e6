// SPDX-License-Identifier: MIT
// The cross-process queue on plain lock files: filelock processes are
// served in the order they began waiting, a killed waiter leaves at once, a
// stalled head does not hold the others on a free lock, and exclusion never
// depends on the queue.

#include <filelock/detail/process_queue.hpp>
#include <filelock/inspect.hpp>
#include <filelock/lock_file.hpp>

#include "support.hpp"

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <fcntl.h>
#include <fstream>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <climits>
#include <cstring>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <thread>
#include <unistd.h>

using namespace test;

using steady = filelock::detail::clock;
using filelock::detail::process_queue;

namespace filelock::detail {
unsigned fork_generation() noexcept;  // src/platform.hpp
}

namespace {

// Lines `q` up in the queue of `p`, as a waiter does: its first contention
// registers nothing, its second takes a ticket (a `reader`'s is even).
void line_up(process_queue& q, const fs::path& p, steady::time_point now, bool reader = false) {
    q.contended(p, 0644, now, reader);
    q.contended(p, 0644, now, reader);
}

// The setting of the tests that drive process_queue directly: a lock file
// `p` in a scratch directory, and the time `t0` its waiters line up at.
struct queue_test {
    scratch s;
    const fs::path p = s / "a.lock";
    const steady::time_point t0 = steady::now();
};

// Polls inspect() until `n` filelock waiters are queued; at most 20 s.
bool queued(const fs::path& p, std::size_t n) {
    for (int i = 0; i < 2000; ++i) {
        const auto st = filelock::inspect(p);
        std::size_t q = 0;
        for (const auto& w : st.waiters) q += w.ticket != 0;
        if (q == n) return true;
        std::this_thread::sleep_for(10ms);
    }
    return false;
}

std::vector<std::string> lines_of(const fs::path& p) {
    std::vector<std::string> out;
    std::istringstream in(read_file(p));
    for (std::string l; std::getline(in, l);) out.push_back(l);
    return out;
}

// A filelock-run waiting for `lock` (-w `wait`), then appending `name` to `out`
// under the lock, and failing if another holder is inside at the same time
// (a directory only one may create).
std::vector<std::string> waiter(const fs::path& lock, const fs::path& out, const std::string& name,
                                const std::string& wait = "60") {
    const std::string inside = (lock.parent_path() / "inside").string();
    return {filelock_run_path(),
            "-w",
            wait,
            lock.string(),
            "sh",
            "-c",
            "mkdir '" + inside + "' || exit 9; echo " + name + " >> '" + out.string() +
                "'; sleep 0.02; rmdir '" + inside + "'"};
}

struct spawned {
    pid_t pid = 0;
    explicit spawned(std::vector<std::string> argv) {
        std::vector<char*> args;
        for (auto& a : argv) args.push_back(a.data());
        args.push_back(nullptr);
        portable::default_signals sig;
        REQUIRE(::posix_spawn(&pid, args[0], nullptr, &sig.attr, args.data(), environ) == 0);
    }
    spawned(spawned&& other) noexcept : pid(std::exchange(other.pid, 0)) {}
    spawned& operator=(spawned&&) = delete;
    // One left running by a failed check (stopped, waiting) is ended.
    ~spawned() {
        if (pid <= 0) return;
        ::kill(pid, SIGKILL);
        ::kill(pid, SIGCONT);
        ::waitpid(pid, nullptr, 0);
    }
    int wait() {
        int st = 0;
        while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
        }
        pid = 0;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
};

// Watches of the file `p` names in the inotify instances of process `pid`
// (read from /proc/PID/fdinfo).
int watches_of(pid_t pid, const fs::path& p) {
    struct ::stat st {};
    if (::stat(p.c_str(), &st) != 0) return 0;
    char ino[32];
    std::snprintf(ino, sizeof ino, " ino:%llx ", static_cast<unsigned long long>(st.st_ino));
    const fs::path proc = "/proc/" + std::to_string(pid);
    int n = 0;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(proc / "fd", ec)) {
        if (fs::read_symlink(e.path(), ec).string() != "anon_inode:inotify") continue;
        std::ifstream in(proc / "fdinfo" / e.path().filename());
        for (std::string line; std::getline(in, line);)
            n += line.rfind("inotify wd:", 0) == 0 && line.find(ino) != std::string::npos;
    }
    return n;
}

// The descriptors of process `pid` on the queue of `p` (the targets of
// their /proc links, one per descriptor): the queue file's (a ticket, and
// nothing else keeps it open) and the doorbells (listening sockets named
// "@filelock.queue.*" in /proc/net/unix).
std::multiset<std::string> queue_fds(pid_t pid, const fs::path& p) {
    std::set<std::string> bells;
    std::ifstream unix_sockets("/proc/net/unix");
    for (std::string line; std::getline(unix_sockets, line);) {
        std::istringstream in(line);
        std::string f[8];
        for (auto& x : f) in >> x;
        if (f[7].rfind("@filelock.queue.", 0) == 0) bells.insert("socket:[" + f[6] + "]");
    }
    const std::string queue = fs::weakly_canonical(filelock::queue_path(p)).string();
    std::multiset<std::string> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
        std::string to = fs::read_symlink(e.path(), ec).string();
        if (to == queue || bells.count(to) != 0) out.insert(std::move(to));
    }
    return out;
}

// How many of the descriptors of process `pid` link to one of `targets`.
int fds_among(pid_t pid, const std::multiset<std::string>& targets) {
    int n = 0;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec))
        n += targets.count(fs::read_symlink(e.path(), ec).string()) != 0;
    return n;
}

// Opens a file of this process's own (/dev/null) on the number `n`, as a
// program that opens files after a fork does: false if it could not.
bool own_file_on(int n) {
    const int f = ::open("/dev/null", O_RDONLY);
    return f == n || (f >= 0 && ::dup2(f, n) == n && ::close(f) == 0);
}

// flock(1) holding `p` until its stdin closes.
program flock_holder(const fs::path& p) {
    return program({"flock", p.string(), "-c", "echo locked; exec cat"});
}

// flock(1) holds a.lock in a scratch directory; filelock-run waiters line
// up behind it, each appending its name to `out` when it runs.
struct flock_held {
    scratch s;
    fs::path p = s / "a.lock";
    fs::path out = s / "out";
    program holder = start();
    std::vector<spawned> waiters;

    flock_held() { REQUIRE(holder.read_line() == "locked"); }
    program start() {
        write_file(out, "");
        return flock_holder(p);
    }
    // Releases the lock; the waiters' exit statuses, in the order they came.
    std::vector<int> finish() {
        holder.close_stdin();
        CHECK(holder.wait() == 0);
        std::vector<int> st;
        for (auto& w : waiters) st.push_back(w.wait());
        return st;
    }
    // Starts the waiters named first to last, each once the one before is
    // queued (`ahead`: how many are queued before the first).
    void line_up(int first, int last, std::size_t ahead = 0) {
        for (int i = first; i <= last; ++i) {
            waiters.emplace_back(waiter(p, out, std::to_string(i)));
            REQUIRE(queued(p, ahead + static_cast<std::size_t>(i - first + 1)));
        }
    }
};

}  // namespace

TEST_CASE_METHOD(queue_test, "queue: tickets in registration order; only the head may attempt") {
    process_queue a, b, c;
    a.contended(p, 0644, t0);
    CHECK(a.ticket() == 0);  // a single contention never registers
    a.contended(p, 0644, t0);
    line_up(b, p, t0);
    line_up(c, p, t0);
    // Writers' tickets are odd (readers' even).
    REQUIRE(a.ticket() == 1);
    CHECK(b.ticket() == 3);
    CHECK(c.ticket() == 5);
    CHECK(fs::file_size(filelock::queue_path(p)) == 0);
    CHECK(a.may_attempt(t0));
    CHECK_FALSE(b.may_attempt(t0));
    CHECK_FALSE(c.may_attempt(t0));
    // The second leaves: the third is still behind the first.
    b.leave();
    CHECK_FALSE(c.may_attempt(t0));
    a.leave();
    CHECK(c.may_attempt(t0));
    // A newcomer lines up behind the one left.
    process_queue d;
    line_up(d, p, t0);
    CHECK(d.ticket() == 7);
    CHECK_FALSE(d.may_attempt(t0));
    c.leave();
    d.leave();
    CHECK(fs::file_size(filelock::queue_path(p)) == 0);
    // Empty again: tickets start over.
    process_queue e;
    line_up(e, p, t0);
    CHECK(e.ticket() == 1);
}

TEST_CASE_METHOD(queue_test,
                 "queue: the head attempts without looking again; a ticket taken below it in the "
                 "same moment is seen at its next failed attempt") {
    // Before, the head looked at the queue (an F_OFD_GETLK) before each
    // attempt, the winning one too: on the way from a release to the lock.
    process_queue x, a;
    line_up(x, p, t0);
    line_up(a, p, t0);
    REQUIRE(x.ticket() == 1);
    REQUIRE(a.ticket() == 3);
    CHECK_FALSE(a.may_attempt(t0));
    x.leave();
    CHECK(a.may_attempt(t0));  // it looks: the head now
    // A registrant that takes ticket 1 only now, its look made before `a`
    // took its ticket (as an OFD lock of byte 1 on a description of its own).
    const int late = ::open(filelock::queue_path(p).c_str(), O_RDWR | O_CLOEXEC);
    REQUIRE(late >= 0);
    REQUIRE(raw_ofd_lock(late, F_WRLCK, 1, 1) == 0);
    CHECK(a.may_attempt(t0));        // no look: two heads attempt, the kernel lock decides
    a.contended(p, 0644, t0);        // that attempt failed: the heartbeat, and a look
    CHECK_FALSE(a.may_attempt(t0));  // behind the late one now
    ::close(late);
    CHECK(a.may_attempt(t0));
    a.leave();
}

TEST_CASE_METHOD(
    queue_test,
    "queue: readers attempt before the first waiting writer; those after it wait for it") {
    const auto reader = [&](process_queue& q) { line_up(q, p, t0, true); };
    const auto writer = [&](process_queue& q) { line_up(q, p, t0); };
    process_queue r1, r2, w1, r3, w2, r4;
    CHECK_FALSE(r1.writer_waits(p));
    reader(r1);
    reader(r2);
    CHECK_FALSE(r2.writer_waits(p));  // readers only
    writer(w1);
    process_queue late;
    CHECK(late.writer_waits(p));
    reader(r3);
    writer(w2);
    reader(r4);
    CHECK(r1.may_attempt(t0));
    CHECK(r2.may_attempt(t0));
    CHECK_FALSE(w1.may_attempt(t0));  // behind the readers
    CHECK_FALSE(r3.may_attempt(t0));  // behind the writer
    CHECK_FALSE(w2.may_attempt(t0));
    CHECK_FALSE(r4.may_attempt(t0));
    r1.leave();
    r2.leave();
    CHECK(w1.may_attempt(t0));
    CHECK_FALSE(r3.may_attempt(t0));
    w1.leave();
    CHECK(r3.may_attempt(t0));        // no writer before it now
    CHECK_FALSE(w2.may_attempt(t0));  // behind that reader
    CHECK_FALSE(r4.may_attempt(t0));  // behind the second writer
    r3.leave();
    CHECK(w2.may_attempt(t0));
    w2.leave();
    CHECK(r4.may_attempt(t0));
    r4.leave();
    CHECK_FALSE(late.writer_waits(p));
    CHECK(fs::file_size(filelock::queue_path(p)) == 0);
}

TEST_CASE_METHOD(queue_test,
                 "queue: a head that makes no attempt is passed by the others, within a bound") {
    process_queue head, next;
    line_up(head, p, t0);
    line_up(next, p, t0);
    REQUIRE(next.ticket() == 3);
    CHECK_FALSE(next.may_attempt(t0));
    // A head that attempts in vain (its heartbeat) is waited for.
    CHECK(head.may_attempt(t0 + 1s));
    head.contended(p, 0644, t0 + 1s);
    CHECK_FALSE(next.may_attempt(t0 + 1500ms));
    CHECK_FALSE(next.may_attempt(t0 + 3s));
    CHECK(head.may_attempt(t0 + 3s));
    head.contended(p, 0644, t0 + 3s);
    CHECK_FALSE(next.may_attempt(t0 + 3100ms));
    // Then it stops: after the stall limit, and a confirming look, the next
    // attempts too.
    const auto quiet = t0 + 3100ms;
    CHECK_FALSE(next.may_attempt(quiet + process_queue::stall_limit - 1ms));
    CHECK_FALSE(next.may_attempt(quiet + process_queue::stall_limit + 1ms));
    CHECK(
        next.may_attempt(quiet + process_queue::stall_limit + 1ms + process_queue::confirm_stall));
}

// Stops child `pid` (SIGSTOP) and waits until it is stopped.
void stop_child(pid_t pid) {
    int st = 0;
    ::kill(pid, SIGSTOP);
    REQUIRE(::waitpid(pid, &st, WUNTRACED) == pid);
    REQUIRE(WIFSTOPPED(st));
}

// A process that lines up in the queue of `p` (ticket `ticket`) and waits
// there, doing nothing, until it is killed (by the destructor).
struct queued_process {
    pid_t pid = -1;
    queued_process(const fs::path& p, std::uint64_t ticket) {
        int ready[2];
        REQUIRE(::pipe(ready) == 0);
        pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            ::close(ready[0]);
            process_queue q;
            line_up(q, p, steady::now());
            const char c = q.ticket() == ticket ? 'y' : 'n';
            if (::write(ready[1], &c, 1) == 1) ::pause();  // until killed
            ::_exit(0);
        }
        ::close(ready[1]);
        char c = 0;
        const bool told = ::read(ready[0], &c, 1) == 1;
        ::close(ready[0]);
        if (!told || c != 'y') {
            ::kill(pid, SIGKILL);  // the destructor does not run for a failed constructor
            ::waitpid(pid, nullptr, 0);
        }
        REQUIRE(told);
        REQUIRE(c == 'y');
    }
    ~queued_process() {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
    }
    void stop() const { stop_child(pid); }
    void resume() const {
        int st = 0;
        ::kill(pid, SIGCONT);
        REQUIRE(::waitpid(pid, &st, WCONTINUED) == pid);
        REQUIRE(WIFCONTINUED(st));
    }
};

TEST_CASE_METHOD(queue_test,
                 "queue: a stopped head is passed at once by the next in line, while it stays "
                 "stopped") {
    // Before, the next in line passed a stopped head only once it had not
    // moved for a stall (2 s), as a head that runs and makes no attempt.
    queued_process head(p, 1);
    process_queue next;
    line_up(next, p, t0);
    REQUIRE(next.ticket() == 3);
    CHECK_FALSE(next.may_attempt(t0));  // a head that runs is waited for
    CHECK(next.turn_handle() >= 0);     // on its doorbell
    head.stop();
    // At once, not a stall later; on the lock file's releases from now on.
    CHECK(next.may_attempt(t0 + 1ms));
    CHECK(next.turn_handle() == -1);
    CHECK(next.may_attempt(t0 + 2ms));
    head.resume();
    CHECK_FALSE(next.may_attempt(t0 + 3ms));  // continued: waited for again
    CHECK(next.turn_handle() >= 0);
    CHECK_FALSE(next.may_attempt(t0 + 3ms + process_queue::stall_limit - 1ms));
}

TEST_CASE_METHOD(queue_test,
                 "queue: stopped waiters at the front are passed by the first one behind them "
                 "that runs") {
    // Before, with the head and the next in line both stopped, the waiters
    // behind them waited for the next in line's doorbell, and nobody applied
    // the stall rule: they waited on a free lock until their deadline.
    queued_process head(p, 1);
    queued_process second(p, 3);
    process_queue third;
    line_up(third, p, t0);
    REQUIRE(third.ticket() == 5);
    CHECK_FALSE(third.may_attempt(t0));
    head.stop();
    CHECK_FALSE(third.may_attempt(t0 + 1ms));  // the second, which runs, passes the head
    second.stop();
    CHECK(third.may_attempt(t0 + 2ms));  // nobody before it runs
    CHECK(third.turn_handle() == -1);
    second.resume();
    CHECK_FALSE(third.may_attempt(t0 + 3ms));  // the second again
    CHECK(third.turn_handle() >= 0);
    second.stop();
    head.resume();
    // Behind the head that runs, past the stopped second: its doorbell is
    // the head's, and a stall of the head is its to see.
    CHECK_FALSE(third.may_attempt(t0 + 4ms));
    CHECK(third.turn_handle() >= 0);
    CHECK_FALSE(third.may_attempt(t0 + 4ms + process_queue::stall_limit + 1ms));
    CHECK(third.may_attempt(t0 + 4ms + process_queue::stall_limit + 1ms +
                            process_queue::confirm_stall));
}

TEST_CASE("queue: a winner's ticket is gone once lock() returns; its doorbell rings at release") {
    // Before, the winner closed its doorbell too before lock() returned: the
    // next in line woke to find the lock still held (and the winner paid for
    // the close on its way to the lock).
    scratch s;
    const auto p = s / "a.lock";
    const int holder = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    REQUIRE(::flock(holder, LOCK_EX) == 0);
    filelock::lock_file won;
    std::thread first([&] { won = filelock::lock(p, 20s); });
    REQUIRE(queued(p, 1));
    process_queue next;
    line_up(next, p, steady::now());
    REQUIRE(next.ticket() == 3);
    REQUIRE(next.turn_handle() >= 0);  // the first one's doorbell
    ::close(holder);
    first.join();
    REQUIRE(won.is_locked());
    CHECK(filelock::inspect(p).waiters.size() == 1);  // `next` only, at the head
    ::pollfd turn{next.turn_handle(), POLLIN, 0};
    CHECK(::poll(&turn, 1, 0) == 0);  // not rung while the lock is held
    won.close();
    CHECK(::poll(&turn, 1, 5000) == 1);
    CHECK(next.may_attempt(steady::now()));  // the head now
    next.leave();
    CHECK(filelock::inspect(p).waiters.empty());
    // A newcomer takes the first ticket again (its doorbell's name is free).
    process_queue again;
    line_up(again, p, steady::now());
    CHECK(again.ticket() == 1);
}

TEST_CASE("queue: a killed waiter leaves at once; the queue file is not needed to exclude") {
    scratch s;
    const auto p = s / "a.lock";
    child waiter_child([&](int ready) {
        process_queue q;
        line_up(q, p, steady::now());
        (void)!::write(ready, "r", 1);
        await_release();
        return 0;
    });
    REQUIRE(waiter_child.ready());
    process_queue mine;
    line_up(mine, p, steady::now());
    CHECK(mine.ticket() == 3);
    CHECK_FALSE(mine.may_attempt(steady::now()));
    waiter_child.kill();
    waiter_child.wait();
    CHECK(mine.may_attempt(steady::now()));
}

TEST_CASE("queue: filelock-run waiters run in the order they came, a killed one left out") {
    const bool kill_second = GENERATE(false, true);
    flock_held f;
    const auto& p = f.p;
    f.line_up(1, 5);
    if (kill_second) {
        ::kill(f.waiters[1].pid, SIGKILL);
        REQUIRE(queued(p, 4));
    }
    const auto st = f.finish();
    for (std::size_t i = 0; i < st.size(); ++i)
        CHECK(st[i] == (kill_second && i == 1 ? 128 + SIGKILL : 0));
    const auto& out = f.out;
    const std::vector<std::string> want = kill_second
                                              ? std::vector<std::string>{"1", "3", "4", "5"}
                                              : std::vector<std::string>{"1", "2", "3", "4", "5"};
    CHECK(lines_of(out) == want);
    // Nobody waits: the queue file is empty; the lock file holds a holder's line.
    CHECK(fs::file_size(filelock::queue_path(p)) == 0);
    CHECK(filelock::inspect(p).waiters.empty());
    CHECK(read_file(p).front() == ' ');
}

TEST_CASE(
    "queue: only the head process watches the lock file; a release wakes it, not the others") {
    // Before, every waiting process watched the lock file and woke at each
    // release: 100 waiters, 100 wake-ups per handoff.
    flock_held f;
    f.line_up(1, 3);
    // The others wait for their predecessor's doorbell (a queued waiter
    // drops its watch of the file right after it takes its ticket).
    const auto watching = [&] {
        std::vector<int> w;
        for (auto& x : f.waiters) w.push_back(watches_of(x.pid, f.p));
        return w;
    };
    for (int i = 0; i < 500 && watching() != std::vector<int>{1, 0, 0}; ++i)
        std::this_thread::sleep_for(10ms);
    CHECK(watching() == std::vector<int>{1, 0, 0});
    CHECK(f.finish() == std::vector<int>{0, 0, 0});
    CHECK(lines_of(f.out) == std::vector<std::string>{"1", "2", "3"});
}

TEST_CASE("queue: a reader that comes after a waiting writer waits for it, though readers hold") {
    // Before, shared locks did not queue: a reader got in beside the
    // readers holding the lock, and a stream of readers starved the writer.
    scratch s;
    const auto p = s / "a.lock";
    const auto out = s / "out";
    write_file(out, "");
    filelock::lock_options shared;
    shared.mode = filelock::lock_mode::shared;
    filelock::lock_file holding(p, shared);
    spawned writer({filelock_run_path(), "-w", "60", p.string(), "sh", "-c",
                    "echo writer >> '" + out.string() + "'"});
    REQUIRE(queued(p, 1));
    spawned reader({filelock_run_path(), "-s", "-w", "60", p.string(), "sh", "-c",
                    "echo reader >> '" + out.string() + "'"});
    REQUIRE(queued(p, 2));  // before: it got in at once, and never queued
    CHECK(lines_of(out).empty());
    const auto st = filelock::inspect(p);
    REQUIRE(st.waiters.size() >= 2);
    CHECK(st.waiters[0].kind == filelock::lock_kind::exclusive);
    CHECK(st.waiters[1].kind == filelock::lock_kind::shared);
    // A timed reader's last attempt keeps the queue's answer too: at its
    // deadline it does not get in beside the holder, ahead of the writer.
    std::string err;
    CHECK(run({filelock_run_path(), "-s", "-w", "0.3", p.string(), "sh", "-c",
               "echo late >> '" + out.string() + "'"},
              &err) == 1);
    holding.close();
    CHECK(writer.wait() == 0);
    CHECK(reader.wait() == 0);
    CHECK(lines_of(out) == std::vector<std::string>{"writer", "reader"});
}

TEST_CASE("queue: a slot waiter that comes after a waiting writer waits for it, a slot free") {
    // Before, slot waiters did not queue: they took the free slot beside the
    // holders, and slot users in a loop starved a writer (issue 23).
    scratch s;
    const auto p = s / "a.lock";
    const auto out = s / "out";
    write_file(out, "");
    filelock::lock_options slots;
    slots.slots = 3;
    filelock::lock_file a(p, slots), b(p, slots);  // two of three slots held
    spawned writer({filelock_run_path(), "-w", "60", p.string(), "sh", "-c",
                    "echo writer >> '" + out.string() + "'"});
    REQUIRE(queued(p, 1));
    // A single attempt reports contention, as a shared one does.
    std::error_code ec;
    auto once = filelock::try_lock(p, slots, ec);
    CHECK(ec == filelock::errc::locked);
    CHECK_FALSE(once.is_locked());
    spawned slot({filelock_run_path(), "--slots", "3", "-w", "60", p.string(), "sh", "-c",
                  "echo slot >> '" + out.string() + "'"});
    REQUIRE(queued(p, 2));  // before: it ran at once, and never queued
    CHECK(lines_of(out).empty());
    a.close();
    b.close();
    CHECK(writer.wait() == 0);
    CHECK(slot.wait() == 0);
    CHECK(lines_of(out) == std::vector<std::string>{"writer", "slot"});
    CHECK(fs::file_size(filelock::queue_path(p)) == 0);
}

TEST_CASE(
    "queue: a child forked while a thread waits closes its copies of the queue's descriptors") {
    // Before, the child kept a copy of each for its whole life: the ticket
    // stayed held and the doorbell listening after the waiter left, and the
    // next in line waited a stall (2 s) at a time.
    flock_held f;
    f.line_up(0, 0);
    std::thread t([&] {
        auto held = filelock::lock(f.p, 20s);
        std::ofstream(f.out, std::ios::app) << "thread\n";
    });
    REQUIRE(queued(f.p, 2));
    f.line_up(1, 1, 2);
    // The thread's ticket and doorbell, its connection to 0's doorbell and
    // the release watcher's copy of it (the test's only sockets).
    auto ours = queue_fds(::getpid(), f.p);
    for (const auto& e : fs::directory_iterator("/proc/self/fd")) {
        std::error_code ec;
        const std::string to = fs::read_symlink(e.path(), ec).string();
        if (to.rfind("socket:", 0) == 0 && ours.count(to) == 0) ours.insert(to);
    }
    REQUIRE(fds_among(::getpid(), ours) == 4);
    const int holder_stdin = f.holder.stdin_handle();
    child c([&](int ready) {
        ::close(holder_stdin);  // or flock(1) never sees EOF while the child lives
        (void)!::write(ready, "r", 1);
        return 0;
    });
    REQUIRE(c.ready());
    CHECK(fds_among(c.pid(), ours) == 0);
    CHECK(fds_among(::getpid(), ours) == 4);  // the parent's stay
    // The child lives on: the queue goes on in order, with no stall.
    CHECK(queued(f.p, 3));
    CHECK(f.finish() == std::vector<int>{0, 0});
    t.join();
    CHECK(lines_of(f.out) == std::vector<std::string>{"0", "thread", "1"});
}

TEST_CASE(
    "queue: a child forked while a thread holds a lock won in line closes its copy of the "
    "doorbell") {
    // The winner keeps its doorbell until it releases (the next in line is
    // woken then). Before, the child kept a copy of it for its whole life.
    flock_held f;
    std::mutex m;
    std::condition_variable cv;
    bool won = false, release = false;
    std::thread t([&] {
        auto held = filelock::lock(f.p, 20s);
        std::ofstream(f.out, std::ios::app) << "thread\n";
        std::unique_lock<std::mutex> g(m);
        won = true;
        cv.notify_all();
        cv.wait(g, [&] { return release; });
    });
    REQUIRE(queued(f.p, 1));
    f.waiters.emplace_back(waiter(f.p, f.out, "1"));
    REQUIRE(queued(f.p, 2));
    f.holder.close_stdin();
    CHECK(f.holder.wait() == 0);
    {
        std::unique_lock<std::mutex> g(m);
        REQUIRE(cv.wait_for(g, 20s, [&] { return won; }));
    }
    const auto ours = queue_fds(::getpid(), f.p);
    CHECK(ours.size() == 1);  // the doorbell (the ticket went with the win)
    {
        child c([](int ready) {
            (void)!::write(ready, "r", 1);
            return 0;
        });
        REQUIRE(c.ready());
        CHECK(fds_among(c.pid(), ours) == 0);
        CHECK(queue_fds(::getpid(), f.p) == ours);
        {
            std::lock_guard<std::mutex> g(m);
            release = true;
        }
        cv.notify_all();
        t.join();
        CHECK(queue_fds(::getpid(), f.p).empty());
    }  // the child exits, and its copy of the lock with it (see "fork() and exec")
    CHECK(f.finish() == std::vector<int>{0});
    CHECK(lines_of(f.out) == std::vector<std::string>{"thread", "1"});
}

TEST_CASE_METHOD(
    queue_test,
    "queue: a child forked by a waiter's own thread starts unregistered, closes no descriptor of "
    "its own, and lines up anew") {
    // The forking thread's waiters (a loop's operations) live on in the
    // child: their copies are closed at the fork, so the numbers may be the
    // child's own files by the time they leave or register again.
    process_queue a, b;
    line_up(a, p, t0);
    line_up(b, p, t0);
    REQUIRE(a.ticket() == 1);
    REQUIRE(b.ticket() == 3);
    REQUIRE(b.turn_handle() >= 0);
    const auto ours = queue_fds(::getpid(), p);
    std::vector<int> numbers;  // ours, and the rest: the child's files go on those closed
    for (const auto& e : fs::directory_iterator("/proc/self/fd"))
        if (const int n = std::stoi(e.path().filename()); n < 1000) numbers.push_back(n);
    const int bad = run_in_child([&] {
        int bad = 0;
        if (a.ticket() != 0 || b.ticket() != 0 || b.turn_handle() != -1) bad |= 1;
        if (fds_among(::getpid(), ours) != 0) bad |= 2;
        std::vector<int> files;
        for (int n : numbers)
            if (::fcntl(n, F_GETFD) == -1) {
                if (!own_file_on(n)) bad |= 4;
                files.push_back(n);
            }
        a.leave();
        b.leave();
        // Behind the parent's tickets, which stay.
        process_queue c;
        line_up(c, p, t0);
        if (c.ticket() != 5 || c.may_attempt(t0)) bad |= 8;
        c.leave();
        for (int n : files)
            if (::fcntl(n, F_GETFD) == -1) bad |= 16;
        return bad;
    });
    CHECK(bad == 0);
    CHECK(queue_fds(::getpid(), p) == ours);
    CHECK(a.may_attempt(t0));
    CHECK_FALSE(b.may_attempt(t0));
    a.leave();
    CHECK(b.may_attempt(t0));
}

TEST_CASE_METHOD(
    queue_test,
    "queue: a forked child and its own child never close the number of a winner's doorbell "
    "again") {
    process_queue a;
    line_up(a, p, t0);
    const int bell = a.leave_won();
    REQUIRE(bell >= 0);
    const unsigned generation = filelock::detail::fork_generation();
    const int bad = run_in_child([&] {
        int bad = ::fcntl(bell, F_GETFD) == -1 ? 0 : 1;  // closed at the fork
        // The child's own file on that number: the lock's release leaves it.
        if (!own_file_on(bell)) bad |= 2;
        process_queue::close_bell(bell, generation);
        if (::fcntl(bell, F_GETFD) == -1) bad |= 4;
        if (run_in_child([&] { return ::fcntl(bell, F_GETFD) == -1 ? 1 : 0; }) != 0) bad |= 8;
        return bad;
    });
    CHECK(bad == 0);
    CHECK(::fcntl(bell, F_GETFD) != -1);  // the parent's stays until its lock's release
    process_queue::close_bell(bell, generation);
    CHECK(::fcntl(bell, F_GETFD) == -1);
}

TEST_CASE(
    "queue: children forked while threads register, win and give up hold none of the queue's "
    "descriptors") {
    // The registries' mutexes are held across fork(): a child never finds a
    // descriptor half opened or half closed, and the parent leaks none.
    flock_held f;
    f.line_up(0, 0);
    scratch s2;
    const auto p2 = s2 / "b.lock";
    std::atomic<bool> stop{false};
    std::atomic<int> timeouts{0}, wins{0};
    std::thread waits([&] {  // behind 0: registers, connects a turn, gives up
        while (!stop) {
            std::error_code ec;
            auto l = filelock::lock(f.p, 20ms, ec);
            timeouts += ec == filelock::errc::timeout;
        }
    });
    std::thread wins_in_line([&] {
        while (!stop) {
            process_queue a, b;
            const auto now = steady::now();
            line_up(a, p2, now);
            line_up(b, p2, now);
            (void)b.may_attempt(now);
            process_queue::close_bell(a.leave_won(), filelock::detail::fork_generation());
            ++wins;
        }
    });
    const std::string queue = fs::weakly_canonical(filelock::queue_path(f.p)).string();
    const std::string queue2 = fs::weakly_canonical(filelock::queue_path(p2)).string();
    // The queue files' descriptors, and sockets (the test has none of its
    // own), counted without allocating (see count_fds(): the children's
    // count runs beside the other threads).
    const auto queue_like = [&] {
        return count_fds([&](const char* to) {
            return queue == to || queue2 == to || std::strncmp(to, "socket:", 7) == 0;
        });
    };
    const int holder_stdin = f.holder.stdin_handle();
    int kept = 0;
    for (int i = 0; i < 100; ++i) {
        kept += run_in_child([&] {
                    ::close(holder_stdin);
                    return queue_like() == 0 ? 0 : 1;
                }) != 0;
        std::this_thread::sleep_for(2ms);
    }
    stop = true;
    waits.join();
    wins_in_line.join();
    CHECK(kept == 0);
    CHECK(timeouts > 0);
    CHECK(wins > 0);
    CHECK(queue_like() == 0);  // the threads closed all of theirs
    CHECK(f.finish() == std::vector<int>{0});
}

TEST_CASE("queue: deleting the queue file while processes wait never gives two holders") {
    flock_held f;
    const auto& p = f.p;
    const auto& out = f.out;
    auto& holder = f.holder;
    auto& waiters = f.waiters;
    f.line_up(1, 3);
    fs::remove(filelock::queue_path(p));
    // A new queue, with its own head, beside the old one.
    f.line_up(4, 6);
    holder.close_stdin();
    CHECK(holder.wait() == 0);
    for (auto& w : waiters) CHECK(w.wait() == 0);  // 9: two were inside at once
    CHECK(lines_of(out).size() == 6);
}

TEST_CASE("queue: a stopped head does not keep the others off a free lock") {
    flock_held f;
    const auto& out = f.out;
    auto& holder = f.holder;
    f.line_up(1, 2);
    spawned& first = f.waiters[0];
    spawned& second = f.waiters[1];
    ::kill(first.pid, SIGSTOP);
    holder.close_stdin();
    CHECK(holder.wait() == 0);
    // The second runs while the first is stopped (at its next look).
    CHECK(second.wait() == 0);
    CHECK(lines_of(out) == std::vector<std::string>{"2"});
    ::kill(first.pid, SIGCONT);
    CHECK(first.wait() == 0);
    CHECK(lines_of(out) == std::vector<std::string>{"2", "1"});
}

TEST_CASE_METHOD(queue_test,
                 "queue: past more stopped waiters than a few, each is asked its process once") {
    // Before, a waiter remembered 8 processes: past 9 stopped ones it asked
    // them all again at every look, connecting to each doorbell (retarget:
    // the driver attempted again at once), and spun until the doorbells
    // were full (then it took one for running, and waited on a free lock).
    std::vector<std::unique_ptr<queued_process>> ahead;
    for (std::uint64_t t = 1; t <= 23; t += 2) {
        ahead.push_back(std::make_unique<queued_process>(p, t));
        ahead.back()->stop();
    }
    process_queue last;
    line_up(last, p, t0);
    REQUIRE(last.ticket() == 25);
    CHECK(last.may_attempt(t0));  // nobody before it runs
    (void)last.retarget();
    for (int look = 1; look <= 3; ++look) {
        CHECK(last.may_attempt(t0 + look * 1ms));
        CHECK_FALSE(last.retarget());  // no doorbell connected to again
    }
    CHECK(last.turn_handle() == -1);
}

TEST_CASE(
    "queue: behind stopped waiters at the front, the handoffs are at once, not a stall "
    "later") {
    // Before, each waiter behind a stopped head attempted only once a stall
    // (2 s) had passed since it last looked at the head: the last one,
    // which waits 2 s, timed out. With the next in line stopped too, nobody
    // looked: the others waited on the free lock until their deadline.
    const int stopped = GENERATE(1, 2);
    flock_held f;
    f.line_up(1, stopped);
    for (int i = 0; i < stopped; ++i) stop_child(f.waiters[static_cast<std::size_t>(i)].pid);
    const auto n = static_cast<std::size_t>(stopped);
    f.line_up(stopped + 1, stopped + 1, n);
    f.waiters.emplace_back(waiter(f.p, f.out, std::to_string(stopped + 2), "2"));
    REQUIRE(queued(f.p, n + 2));
    f.holder.close_stdin();
    CHECK(f.holder.wait() == 0);
    CHECK(f.waiters[n].wait() == 0);
    CHECK(f.waiters[n + 1].wait() == 0);
    std::vector<std::string> want{std::to_string(stopped + 1), std::to_string(stopped + 2)};
    CHECK(lines_of(f.out) == want);
    for (std::size_t i = 0; i < n; ++i) {
        ::kill(f.waiters[i].pid, SIGCONT);
        CHECK(f.waiters[i].wait() == 0);  // in turn: the head first
        want.push_back(std::to_string(i + 1));
    }
    CHECK(lines_of(f.out) == want);
}

TEST_CASE(
    "queue: behind a head that makes no attempt, a waiter takes a free lock at its "
    "deadline") {
    // Before, a waiter whose deadline came before the stall limit (2 s)
    // timed out on the free lock: only the head, or the stall rule, let it
    // attempt.
    flock_held f;
    process_queue head;  // lines up first, then never attempts (a stalled event loop)
    line_up(head, f.p, steady::now());
    REQUIRE(head.ticket() == 1);
    f.waiters.emplace_back(waiter(f.p, f.out, "1", "1.8"));  // within the stall limit
    REQUIRE(queued(f.p, 2));
    f.holder.close_stdin();
    CHECK(f.holder.wait() == 0);
    CHECK(f.waiters[0].wait() == 0);
    CHECK(lines_of(f.out) == std::vector<std::string>{"1"});
}

TEST_CASE("queue: five filelock-run started 0.3 s apart while flock(1) holds, several times",
          "[.long]") {
    for (int round = 0; round < 4; ++round) {
        const bool kill_second = round % 2 == 1;
        scratch s;
        const auto p = s / "a.lock";
        const auto out = s / "out";
        write_file(out, "");
        program holder = flock_holder(p);
        REQUIRE(holder.read_line() == "locked");
        std::vector<spawned> waiters;
        for (int i = 1; i <= 5; ++i) {
            waiters.emplace_back(waiter(p, out, std::to_string(i)));
            std::this_thread::sleep_for(300ms);
        }
        if (kill_second) ::kill(waiters[1].pid, SIGKILL);
        holder.close_stdin();
        CHECK(holder.wait() == 0);
        for (std::size_t i = 0; i < waiters.size(); ++i)
            CHECK(waiters[i].wait() == (kill_second && i == 1 ? 128 + SIGKILL : 0));
        const std::vector<std::string> want =
            kill_second ? std::vector<std::string>{"1", "3", "4", "5"}
                        : std::vector<std::string>{"1", "2", "3", "4", "5"};
        CHECK(lines_of(out) == want);
    }
}
