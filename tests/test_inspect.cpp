// SPDX-License-Identifier: MIT
// inspect(): holders and waiters of a lock file as /proc/locks and the
// content show them, for every kind of holder (ours, flock(1),
// zc.lockfile, OFD locks), and the live holder named on contention.

#include <filelock/inspect.hpp>
#include <filelock/lock_file.hpp>

#include "../src/inspect/inspect_handle.hpp"
#include "../src/inspect/kernel_locks.hpp"
#include "support.hpp"

#include <optional>
#include <sys/inotify.h>
#include <thread>

using namespace test;
using filelock::lock_api;
using filelock::lock_file;
using filelock::lock_kind;
namespace kernel = filelock::detail::kernel;

namespace {

// flock(1) holding `p` until its stdin closes.
program flock_holder(const fs::path& p, const char* opt = "-x") {
    return program({"flock", opt, p.string(), "-c", "echo locked; exec cat"});
}

// Polls inspect() until `ok` holds (a process blocks or registers
// asynchronously); at most 10 s.
template <class F>
filelock::lock_status inspect_until(const fs::path& p, F ok) {
    filelock::lock_status st;
    for (int i = 0; i < 1000; ++i) {
        st = filelock::inspect(p);
        if (ok(st)) break;
        std::this_thread::sleep_for(10ms);
    }
    return st;
}

}  // namespace

TEST_CASE("inspect: /proc/locks lines parse, other kinds are skipped") {
    kernel::lock_line l;
    REQUIRE(kernel::parse_lock_line("1: FLOCK  ADVISORY  WRITE 11869 fe:00:10953151 0 EOF", l));
    CHECK(!l.blocked);
    CHECK(l.api == lock_api::flock);
    CHECK(l.write);
    CHECK(l.pid == 11869);
    CHECK(l.major == 0xfe);
    CHECK(l.minor == 0);
    CHECK(l.ino == 10953151);
    CHECK(l.whole_file());
    REQUIRE(kernel::parse_lock_line("12: -> OFDLCK ADVISORY  READ  -1 08:1f:42 5 9", l));
    CHECK(l.blocked);
    CHECK(l.api == lock_api::ofd);
    CHECK(!l.write);
    CHECK(l.pid == -1);
    CHECK(l.minor == 0x1f);
    CHECK(l.start == 5);
    CHECK(l.end == 9);
    CHECK(!l.whole_file());
    REQUIRE(kernel::parse_lock_line("\t3: POSIX  ADVISORY  WRITE 7 00:2a:1 0 EOF", l));
    CHECK(l.api == lock_api::posix);
    CHECK_FALSE(kernel::parse_lock_line("4: LEASE  ACTIVE    READ 7 00:2a:1 0 EOF", l));
    CHECK_FALSE(kernel::parse_lock_line("5: FLOCK  ADVISORY  WRITE 7 00:2a 0 EOF", l));
    CHECK_FALSE(kernel::parse_lock_line("6: FLOCK  ADVISORY  WRITE x 00:2a:1 0 EOF", l));
    CHECK_FALSE(kernel::parse_lock_line("", l));
}

TEST_CASE("inspect: a missing file is an error naming the path; nothing is created") {
    scratch s;
    const auto p = s / "missing.lock";
    std::error_code ec;
    const auto st = filelock::inspect(p, ec);
    CHECK(ec == std::errc::no_such_file_or_directory);
    CHECK(st.holders.empty());
    CHECK_FALSE(fs::exists(p));
    try {
        filelock::inspect(p);
        FAIL("no exception");
    } catch (const fs::filesystem_error& e) {
        CHECK(e.path1() == p);
        CHECK(e.code() == std::errc::no_such_file_or_directory);
    }
}

TEST_CASE("inspect and read_holder read no content from a /proc file") {
    // Reading some /proc files consumes what they hold (/proc/kmsg: each
    // --status took about 1 KiB of the kernel log from its reader). Before,
    // both read a /proc file's first bytes as a holder's content.
    const fs::path p = "/proc/self/status";
    CHECK(filelock::inspect(p).content.empty());
    CHECK(filelock::read_holder(p).empty());
}

TEST_CASE("inspect: a free lock has no holder and no waiter; the stale line is not live") {
    scratch s;
    const auto p = s / "a.lock";
    { lock_file l(p); }
    const auto st = filelock::inspect(p);
    CHECK(st.complete);
    CHECK(st.holders.empty());
    CHECK(st.waiters.empty());
    CHECK(st.content == std::to_string(::getpid()));
    CHECK_FALSE(st.content_live);
    CHECK_FALSE(st.held());
}

TEST_CASE("inspect: our holder in another process, with its content and since when") {
    scratch s;
    const auto p = s / "a.lock";
    child c = hold_in_child(p);
    REQUIRE(c.ready());
    const int child_pid = std::stoi(read_file(p));
    const auto before = std::chrono::system_clock::now();
    const auto st = filelock::inspect(p);
    REQUIRE(st.holders.size() == 1);
    const auto& h = st.holders[0];
    CHECK(h.pid == child_pid);
    CHECK(h.kind == lock_kind::exclusive);
    CHECK(h.api == lock_api::flock);
    CHECK(h.verified);
    CHECK(h.content == std::to_string(child_pid));
    CHECK(st.content_live);
    REQUIRE(h.since.has_value());
    CHECK(*h.since <= before + 1s);
    CHECK(*h.since > before - 60s);
    CHECK_FALSE(h.host.empty());
    CHECK(st.waiters.empty());
}

TEST_CASE("inspect: a flock(1) holder and a flock(1) blocked in the kernel") {
    scratch s;
    const auto p = s / "a.lock";
    write_file(p, "");
    program holder = flock_holder(p);
    REQUIRE(holder.read_line() == "locked");
    program blocked = flock_holder(p);
    const auto st = inspect_until(p, [](const auto& st) { return !st.waiters.empty(); });
    REQUIRE(st.holders.size() == 1);
    CHECK(st.holders[0].pid == holder.pid());
    CHECK(st.holders[0].kind == lock_kind::exclusive);
    CHECK(st.holders[0].content.empty());
    REQUIRE(st.waiters.size() == 1);
    CHECK(st.waiters[0].pid == blocked.pid());
    CHECK(st.waiters[0].ticket == 0);
    CHECK(st.waiters[0].kind == lock_kind::exclusive);
    holder.close_stdin();
    CHECK(holder.wait() == 0);
    REQUIRE(blocked.read_line() == "locked");
    blocked.close_stdin();
    CHECK(blocked.wait() == 0);
}

TEST_CASE("inspect: shared flock(1) holders are all listed") {
    scratch s;
    const auto p = s / "a.lock";
    write_file(p, "");
    program a = flock_holder(p, "-s");
    REQUIRE(a.read_line() == "locked");
    program b = flock_holder(p, "-s");
    REQUIRE(b.read_line() == "locked");
    const auto st = filelock::inspect(p);
    REQUIRE(st.holders.size() == 2);
    std::vector<long long> pids{st.holders[0].pid, st.holders[1].pid};
    std::sort(pids.begin(), pids.end());
    std::vector<long long> want{a.pid(), b.pid()};
    std::sort(want.begin(), want.end());
    CHECK(pids == want);
    CHECK(st.holders[0].kind == lock_kind::shared);
}

TEST_CASE("inspect: a zc.lockfile holder, with its content") {
    scratch s;
    const auto p = s / "a.lock";
    program py({python(), "-c", zc_hold, p.string()});
    REQUIRE(py.read_line() == "locked");
    const auto st = filelock::inspect(p);
    REQUIRE(st.holders.size() == 1);
    CHECK(st.holders[0].pid == py.pid());
    CHECK(st.holders[0].content == std::to_string(py.pid()));
    CHECK(st.content_live);
}

TEST_CASE("inspect: an OFD holder (pid -1 in /proc/locks) is named through fdinfo") {
    scratch s;
    const auto p = s / "a.lock";
    filelock::lock_options o;
    o.backend = filelock::lock_backend::ofd;
    child c = hold_in_child(p, o);
    REQUIRE(c.ready());
    const long long pid = std::stoll(read_file(p));
    const auto st = filelock::inspect(p);
    REQUIRE(st.holders.size() == 1);
    CHECK(st.holders[0].api == lock_api::ofd);
    CHECK(st.holders[0].pid == pid);
    CHECK(st.content_live);
    CHECK(st.complete);

    // A slot: a range of the file.
    filelock::lock_options r = o;
    r.range = {100, 10};
    const auto q = s / "b.lock";
    lock_file slot(q, r);
    const auto st2 = filelock::inspect(q);
    REQUIRE(st2.holders.size() == 1);
    const auto& sl = st2.holders[0];
    CHECK(sl.kind == lock_kind::slot);
    CHECK(sl.start == 100);
    CHECK(sl.length == 10);
    CHECK(sl.pid == ::getpid());
}

TEST_CASE("inspect: the holder named on contention is the live one, not an earlier line") {
    // A filelock holder wrote its pid and exited; flock(1), which writes
    // nothing, holds the lock now.
    scratch s;
    const auto p = s / "a.lock";
    {
        child c = hold_in_child(p);
        REQUIRE(c.ready());
    }
    const std::string dead = read_file(p);
    REQUIRE(!dead.empty());
    program holder = flock_holder(p);
    REQUIRE(holder.read_line() == "locked");
    REQUIRE(read_file(p) == dead);
    try {
        lock_file l(p);
        FAIL("no contention");
    } catch (const filelock::lock_error& e) {
        CHECK(e.holder() == std::to_string(holder.pid()));
    }
    std::error_code ec;
    filelock::lock(p, 20ms, {}, ec);
    CHECK(ec == filelock::errc::timeout);
    try {
        filelock::lock(p, 20ms);
        FAIL("no timeout");
    } catch (const filelock::timeout_error& e) {
        CHECK(e.holder() == std::to_string(holder.pid()));
    }
    CHECK(filelock::read_holder(p) == std::to_string(holder.pid()));
    const auto st = filelock::inspect(p);
    CHECK_FALSE(st.content_live);
    REQUIRE(st.holders.size() == 1);
    CHECK(st.holders[0].content.empty());
    // What another program wrote is not judged: it is reported as it is.
    holder.close_stdin();
    CHECK(holder.wait() == 0);
    write_file(p, "4321");
    program again = flock_holder(p);
    REQUIRE(again.read_line() == "locked");
    CHECK(filelock::read_holder(p) == "4321");
}

TEST_CASE("inspect: a live holder's own line is still named") {
    scratch s;
    const auto p = s / "a.lock";
    child c = hold_in_child(p);
    REQUIRE(c.ready());
    const std::string pid = read_file(p);
    try {
        lock_file l(p);
        FAIL("no contention");
    } catch (const filelock::lock_error& e) {
        CHECK(e.holder() == pid.substr(1, pid.size() - 2));
    }
}

TEST_CASE("inspect: filelock-run --status --json, parsed; exit 0 free, 1 held") {
    scratch s;
    const auto p = s / "a.lock";
    write_file(p, "");
    const std::string run_status = filelock_run_path() + " --status --json " + p.string();
    // Python parses the JSON and checks it against the pids it is given.
    const auto check = [&](const std::string& expr, int want_status) {
        const std::string script = "out=$(" + run_status + "); st=$?; [ $st -eq " +
                                   std::to_string(want_status) +
                                   " ] || exit 10; printf %s \"$out\" | " + python() +
                                   " -c 'import json,sys; d=json.load(sys.stdin); " +
                                   "sys.exit(0 if (" + expr + ") else 11)'";
        return run({"sh", "-c", script});
    };
    CHECK(check("d[\"holders\"] == [] and d[\"waiters\"] == [] and not d[\"held\"]", 0) == 0);
    program holder = flock_holder(p);
    REQUIRE(holder.read_line() == "locked");
    program blocked = flock_holder(p);
    inspect_until(p, [](const auto& st) { return !st.waiters.empty(); });
    CHECK(check("[h[\"pid\"] for h in d[\"holders\"]] == [" + std::to_string(holder.pid()) +
                    "] and [w[\"pid\"] for w in d[\"waiters\"]] == [" +
                    std::to_string(blocked.pid()) + "] and d[\"held\"]",
                1) == 0);
    std::string err;
    CHECK(run({filelock_run_path(), "--status", (s / "missing").string()}, &err) == 66);
    CHECK(err.find("missing") != std::string::npos);
    CHECK(run({filelock_run_path(), "--status", p.string(), "true"}) == 64);
    holder.close_stdin();
    CHECK(holder.wait() == 0);
    blocked.read_line();
    blocked.close_stdin();
    CHECK(blocked.wait() == 0);
}

TEST_CASE("inspect: through an open descriptor, it makes no open or close event on the file") {
    // filelock-run --watch wakes on the lock file's opens and closes: its
    // own looks must not be among them.
    scratch s;
    const auto p = s / "a.lock";
    program holder = flock_holder(p);
    REQUIRE(holder.read_line() == "locked");
    const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    const int in = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    REQUIRE(in >= 0);
    REQUIRE(::inotify_add_watch(in, p.c_str(), IN_OPEN | IN_CLOSE) >= 0);
    const auto events = [in] {
        alignas(inotify_event) char buf[4096];
        int n = 0;
        for (ssize_t r; (r = ::read(in, buf, sizeof buf)) > 0;)
            for (ssize_t off = 0; off < r; ++n)
                off += static_cast<ssize_t>(sizeof(inotify_event) +
                                            reinterpret_cast<inotify_event*>(buf + off)->len);
        return n;
    };
    std::error_code ec;
    const auto st = filelock::detail::inspect_handle(p, fd, ec);
    REQUIRE(!ec);
    REQUIRE(st.holders.size() == 1);
    CHECK(st.holders[0].pid == holder.pid());
    CHECK(events() == 0);
    filelock::inspect(p);  // by the path: it opens the file
    CHECK(events() > 0);
    ::close(in);
    ::close(fd);
}

TEST_CASE("inspect: a holder that exited while a child it forked keeps the lock is not named") {
    // filelock-run wrote its pid and took the lock; COMMAND inherited the
    // descriptor. filelock-run is killed: /proc/locks still names it as the
    // taker, but the live holder is COMMAND.
    scratch s;
    const auto p = s / "a.lock";
    program run({filelock_run_path(), p.string(), "sh", "-c", "echo $$; exec cat"});
    const std::string command = run.read_line();
    REQUIRE(!command.empty());
    const std::string wrapper = std::to_string(run.pid());
    REQUIRE(read_file(p) == " " + wrapper + "\n");
    ::kill(run.pid(), SIGKILL);
    CHECK(run.wait() == 128 + SIGKILL);
    REQUIRE(::kill(std::stoi(command), 0) == 0);
    try {
        lock_file l(p);
        FAIL("no contention");
    } catch (const filelock::lock_error& e) {
        CHECK(e.holder() == command);
    }
    const auto st = filelock::inspect(p);
    CHECK_FALSE(st.content_live);
    REQUIRE(st.holders.size() == 1);
    CHECK(st.holders[0].pid == std::stoll(command));
    CHECK(st.holders[0].content.empty());
    ::kill(std::stoi(command), SIGKILL);
}

TEST_CASE("inspect: a slot holder is one holder, mode slot with its slot number, beside flock -s") {
    // A slot holder holds a shared flock(2) lock of the whole file and the
    // byte of its slot on one open file description: one holder, not a
    // shared holder and a slot. flock(1) -s beside it is a shared holder.
    scratch s;
    const auto p = s / "a.lock";
    write_file(p, "");
    const std::string tool = filelock_run_path();
    lock_file mine(p, {.slots = 3});
    REQUIRE(mine.slot() == 0);
    // COMMAND inherits the descriptor: two processes share the description.
    program other({tool, "--slots", "3", p.string(), "sh", "-c", "echo locked; exec cat"});
    REQUIRE(other.read_line() == "locked");
    program reader = flock_holder(p, "-s");
    REQUIRE(reader.read_line() == "locked");
    const auto st = filelock::inspect(p);
    CHECK(st.complete);
    REQUIRE(st.holders.size() == 3);
    const auto by_pid = [&](long long pid) {
        const auto it = std::find_if(st.holders.begin(), st.holders.end(),
                                     [&](const auto& h) { return h.pid == pid; });
        REQUIRE(it != st.holders.end());
        return *it;
    };
    const auto ours = by_pid(::getpid());
    CHECK(ours.kind == lock_kind::slot);
    CHECK(ours.api == lock_api::ofd);
    CHECK(ours.slot == 0u);
    CHECK(ours.start == filelock::slot_offset);
    CHECK(ours.length == 1);
    const auto theirs = by_pid(other.pid());
    CHECK(theirs.kind == lock_kind::slot);
    CHECK(theirs.slot == 1u);
    CHECK(theirs.start == filelock::slot_offset + 1);
    const auto flock_s = by_pid(reader.pid());
    CHECK(flock_s.kind == lock_kind::shared);
    CHECK(flock_s.api == lock_api::flock);
    CHECK_FALSE(flock_s.slot.has_value());

    // filelock-run --status --json and --watch's first line: three holders.
    const std::string script =
        tool + " --status --json " + p.string() + " | " + python() +
        " -c 'import json,sys; h=json.load(sys.stdin)[\"holders\"]; "
        "sys.exit(0 if sorted((x[\"pid\"], x[\"mode\"], x.get(\"slot\")) for x in h) == "
        "sorted([(" +
        std::to_string(::getpid()) + ", \"slot\", 0), (" + std::to_string(other.pid()) +
        ", \"slot\", 1), (" + std::to_string(reader.pid()) + ", \"shared\", None)]) else 11)'";
    CHECK(run({"sh", "-c", script}) == 0);
    program watch({tool, "--watch", p.string()});
    const std::string first = watch.read_line();
    INFO(first);
    const auto held_by = first.find(": held by ");
    REQUIRE(held_by != std::string::npos);
    std::string names = first.substr(held_by + 10);
    std::vector<std::string> seen;
    for (std::size_t at = 0; at < names.size();) {
        const auto end = std::min(names.find(", ", at), names.size());
        seen.push_back(names.substr(at, end - at));
        at = end + 2;
    }
    std::sort(seen.begin(), seen.end());
    std::vector<std::string> want{std::to_string(::getpid()), std::to_string(other.pid()),
                                  std::to_string(reader.pid())};
    std::sort(want.begin(), want.end());
    CHECK(seen == want);
    ::kill(watch.pid(), SIGTERM);
    CHECK(watch.wait() == 128 + SIGTERM);
    other.close_stdin();
    CHECK(other.wait() == 0);
    reader.close_stdin();
    CHECK(reader.wait() == 0);
}

TEST_CASE("inspect: a queued shared waiter is a shared waiter with its place in the queue") {
    // Readers take tickets too (even ones): behind a writer they are seen
    // before they hold, in queue order.
    scratch s;
    const auto p = s / "a.lock";
    write_file(p, "");
    program holder = flock_holder(p);
    REQUIRE(holder.read_line() == "locked");
    const std::string tool = filelock_run_path();
    program reader({tool, "-s", "-w", "10", p.string(), "sh", "-c", "echo locked; exec cat"});
    const auto st = inspect_until(p, [](const auto& st) { return !st.waiters.empty(); });
    REQUIRE(st.holders.size() == 1);
    CHECK(st.holders[0].pid == holder.pid());
    REQUIRE(st.waiters.size() == 1);
    CHECK(st.waiters[0].pid == reader.pid());
    CHECK(st.waiters[0].kind == lock_kind::shared);
    CHECK(st.waiters[0].api == lock_api::flock);
    CHECK(st.waiters[0].ticket == 1);
    holder.close_stdin();
    CHECK(holder.wait() == 0);
    REQUIRE(reader.read_line() == "locked");
    reader.close_stdin();
    CHECK(reader.wait() == 0);
}

TEST_CASE("inspect: a queued slot waiter is a slot waiter of N; kernel-blocked waiters as before") {
    // A slot waiter's ticket is a reader's (even), as a shared waiter's: it
    // was shown as a shared waiter. Beside it: a queued shared waiter, a
    // flock(1) blocked in the kernel and an OFD range request blocked in the
    // kernel (which /proc/locks names as pid -1: no process to name).
    scratch s;
    const auto p = s / "a.lock";
    write_file(p, "");
    program holder = flock_holder(p);
    REQUIRE(holder.read_line() == "locked");
    filelock::lock_options r;
    r.backend = filelock::lock_backend::ofd;
    r.range = {100, 10};
    std::optional<lock_file> range(std::in_place, p, r);
    const std::string tool = filelock_run_path();
    program slots(
        {tool, "--slots", "3", "-w", "10", p.string(), "sh", "-c", "echo locked; exec cat"});
    inspect_until(p, [](const auto& st) { return st.waiters.size() == 1; });
    program reader({tool, "-s", "-w", "10", p.string(), "sh", "-c", "echo locked; exec cat"});
    inspect_until(p, [](const auto& st) { return st.waiters.size() == 2; });
    program blocked = flock_holder(p);
    inspect_until(p, [](const auto& st) { return st.waiters.size() == 3; });
    program ofd({python(), "-c",
                 "import fcntl, os, struct, sys\n"
                 "fd = os.open(sys.argv[1], os.O_RDWR)\n"
                 "fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, struct.pack('hhqqi', fcntl.F_WRLCK, 0, "
                 "105, 10, 0))\n"
                 "print('locked', flush=True)\n"
                 "sys.stdin.read()\n",
                 p.string()});
    const auto st = inspect_until(p, [](const auto& st) { return st.waiters.size() == 4; });
    REQUIRE(st.holders.size() == 2);
    REQUIRE(st.waiters.size() == 4);

    const auto& w = st.waiters[0];
    CHECK(w.pid == slots.pid());
    CHECK(w.kind == lock_kind::slot);
    CHECK(w.slots == 3);
    CHECK(w.api == lock_api::ofd);
    CHECK(w.start == filelock::slot_offset);
    CHECK(w.length == 3);
    CHECK_FALSE(w.slot.has_value());
    CHECK(w.ticket == 1);

    const auto& sh = st.waiters[1];
    CHECK(sh.pid == reader.pid());
    CHECK(sh.kind == lock_kind::shared);
    CHECK(sh.slots == 0);
    CHECK(sh.api == lock_api::flock);
    CHECK(sh.ticket == 2);

    // The kernel's blocked requests, in /proc/locks order (their blockers'
    // order, which varies).
    const bool flock_first = st.waiters[2].api == lock_api::flock;
    const auto& fl = st.waiters[flock_first ? 2 : 3];
    CHECK(fl.pid == blocked.pid());
    CHECK(fl.kind == lock_kind::exclusive);
    CHECK(fl.api == lock_api::flock);
    CHECK(fl.slots == 0);
    CHECK(fl.ticket == 0);

    const auto& rg = st.waiters[flock_first ? 3 : 2];
    CHECK(rg.pid == 0);  // a blocked OFD request names no process
    CHECK(rg.kind == lock_kind::slot);
    CHECK(rg.api == lock_api::ofd);
    CHECK(rg.start == 105);
    CHECK(rg.length == 10);
    CHECK(rg.slots == 0);
    CHECK_FALSE(rg.slot.has_value());
    CHECK(rg.ticket == 0);
    CHECK_FALSE(st.complete);

    // filelock-run --status --json says the same.
    const std::string want =
        "[(" + std::to_string(slots.pid()) + ", 'slot', 'ofd', 3, 1, " +
        std::to_string(filelock::slot_offset) + ", 3), (" + std::to_string(reader.pid()) +
        ", 'shared', 'flock', None, 2, None, None), (" + std::to_string(blocked.pid()) +
        ", 'exclusive', 'flock', None, None, None, None), (0, 'slot', 'ofd', None, None, 105, 10)]";
    const std::string script =
        "out=$(" + tool + " --status --json " + p.string() + "); [ $? -eq 1 ] || exit 10; " +
        "printf %s \"$out\" | " + python() +
        " -c \"import json, sys; d = json.load(sys.stdin); "
        "got = [(w['pid'], w['mode'], w['lock'], w.get('slots'), w.get('queue_position'), "
        "w.get('start'), w.get('length')) for w in d['waiters']]; "
        "print(got, file=sys.stderr); want = " +
        want +
        "; sys.exit(0 if got[:2] == want[:2] and sorted(got[2:], key=str) == "
        "sorted(want[2:], key=str) else 11)\"";
    std::string err;
    const int status = run({"sh", "-c", script}, &err);
    INFO(err);
    CHECK(status == 0);

    for (program* w : {&slots, &reader, &blocked, &ofd}) w->close_stdin();
    range.reset();
    holder.close_stdin();
    CHECK(holder.wait() == 0);
    for (program* w : {&slots, &reader, &blocked, &ofd}) CHECK(w->wait() == 0);
}

TEST_CASE("inspect: --watch shows a queued slot waiter that wins a slot as served, not as left") {
    // The waiter is "slot of 3", the holder it becomes "slot 0": one party,
    // served, not a waiter that left and a holder that came.
    scratch s;
    const auto p = s / "a.lock";
    write_file(p, "");
    const std::string tool = filelock_run_path();
    program watch({tool, "--watch", p.string()});
    std::string seen = watch.read_line() + "\n";
    // Lines up to the first that contains `part` (at most 50).
    const auto until = [&](const std::string& part) {
        for (int i = 0; i < 50; ++i) {
            const std::string line = watch.read_line();
            if (line.empty()) return false;
            seen += line + "\n";
            if (line.find(part) != std::string::npos) return true;
        }
        return false;
    };
    program holder = flock_holder(p);
    REQUIRE(holder.read_line() == "locked");
    CHECK(until(" acquired holder " + std::to_string(holder.pid())));
    program waiter(
        {tool, "--slots", "3", "-w", "10", p.string(), "sh", "-c", "echo ran; exec cat"});
    const std::string pid = std::to_string(waiter.pid());
    CHECK(until(" joined waiter " + pid + " (ofd slot of 3, queued #1)"));
    holder.close_stdin();
    CHECK(holder.wait() == 0);
    CHECK(until(" acquired holder " + pid + " (ofd slot 0)"));
    REQUIRE(waiter.read_line() == "ran");
    waiter.close_stdin();
    CHECK(waiter.wait() == 0);
    CHECK(until(" released holder " + pid + " (ofd slot 0)"));
    INFO(seen);
    CHECK(seen.find(" left waiter " + pid) == std::string::npos);
    ::kill(watch.pid(), SIGTERM);
    CHECK(watch.wait() == 128 + SIGTERM);
}
