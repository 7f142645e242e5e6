// SPDX-License-Identifier: MIT
// filelock-run with an etcd:// target against a member of its own
// (tests/etcd_member.hpp): COMMAND never outlives the wrapper that keeps
// the lease alive, and the options that cannot apply are refused.

#include "support.hpp"

#include "etcd_member.hpp"

#include <algorithm>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <thread>

using namespace test;

namespace {

test::etcd_cluster& member() {
    static test::etcd_cluster c(1);
    return c;
}

std::string target(const std::string& name) {
    return "etcd://" + member().endpoint().substr(7) + "/" + name;
}

bool alive(pid_t pid) {
    // A zombie is gone too (its parent died; init reaps it soon).
    const std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
    if (stat.empty()) return false;
    const auto close_paren = stat.rfind(')');
    return close_paren != std::string::npos && stat.size() > close_paren + 2 &&
           stat[close_paren + 2] != 'Z';
}

}  // namespace

TEST_CASE("filelock-run etcd://: SIGKILLed while COMMAND runs, COMMAND ends with it") {
    scratch s;
    const auto pidfile = s / "pid";
    const std::string name = "tool-kill/" + std::to_string(::getpid());
    // The repro: --ttl 2, COMMAND `exec sleep 12`.
    program wrapper({filelock_run_path(), "--ttl", "2", target(name), "sh", "-c",
                     "echo $$ > " + pidfile.string() + "; echo up; exec sleep 12"});
    REQUIRE(wrapper.read_line() == "up");
    const pid_t command = std::stoi(read_file(pidfile));
    REQUIRE(alive(command));
    ::kill(wrapper.pid(), SIGKILL);
    wrapper.wait();
    // The lease ends about 2 s later; a second run that gets the lock must
    // not find the first COMMAND still running.
    const std::string check = "kill -0 " + std::to_string(command) +
                              " 2>/dev/null && ! grep -q '^[^(]*([^)]*) Z' /proc/" +
                              std::to_string(command) + "/stat && exit 3; exit 0";
    std::string err;
    CHECK(run({filelock_run_path(), "-w", "6", target(name), "sh", "-c", check}, &err) == 0);
    INFO(err);
    CHECK(!alive(command));
}

TEST_CASE("filelock-run etcd://: SIGKILLed, what COMMAND started ends with it, before the TTL") {
    scratch s;
    const auto pidfile = s / "pid";
    const std::string name = "tool-tree/" + std::to_string(::getpid());
    // A background child in COMMAND's group; one that left the group
    // (setsid) and was orphaned by a subshell (a daemon's double fork).
    const std::string pf = pidfile.string();
    for (const std::string& start :
         {"sleep 30 & echo $! > " + pf, "( setsid sleep 30 & echo $! > " + pf + " )"}) {
        CAPTURE(start);
        std::filesystem::remove(pidfile);
        program wrapper({filelock_run_path(), "--ttl", "3", target(name), "sh", "-c",
                         start + "; echo up; wait; sleep 30"});
        REQUIRE(wrapper.read_line() == "up");
        const pid_t grandchild = std::stoi(read_file(pidfile));
        REQUIRE(alive(grandchild));
        ::kill(wrapper.pid(), SIGKILL);
        wrapper.wait();
        const auto killed = std::chrono::steady_clock::now();
        // Gone well before the lease can expire (3 s after the last
        // keep-alive): before the fix it ran its 30 s.
        while (alive(grandchild) && std::chrono::steady_clock::now() - killed < 2500ms)
            std::this_thread::sleep_for(10ms);
        CHECK(!alive(grandchild));
        // A second run that gets the lock never finds it running.
        const std::string check = "kill -0 " + std::to_string(grandchild) +
                                  " 2>/dev/null && ! grep -q '^[^(]*([^)]*) Z' /proc/" +
                                  std::to_string(grandchild) + "/stat && exit 3; exit 0";
        std::string err;
        CHECK(run({filelock_run_path(), "-w", "8", target(name), "sh", "-c", check}, &err) == 0);
        INFO(err);
        if (alive(grandchild)) ::kill(grandchild, SIGKILL);
    }
}

TEST_CASE("filelock-run etcd://: the keeper SIGKILLed, what COMMAND started ends too") {
    scratch s;
    const auto pidfile = s / "pid";
    const std::string name = "tool-keeper/" + std::to_string(::getpid());
    program wrapper(
        {filelock_run_path(), "--ttl", "3", target(name), "sh", "-c",
         "( setsid sleep 30 & echo $! > " + pidfile.string() + " ); echo up; sleep 30"});
    REQUIRE(wrapper.read_line() == "up");
    const pid_t grandchild = std::stoi(read_file(pidfile));
    // The keeper: filelock-run's only child (forked by its main thread).
    const std::string w = std::to_string(wrapper.pid());
    const std::string kids = read_file("/proc/" + w + "/task/" + w + "/children");
    REQUIRE(!kids.empty());
    const pid_t keeper = std::stoi(kids);
    ::kill(keeper, SIGKILL);
    // COMMAND dies with its keeper; the sleep that left COMMAND's group,
    // adopted by the keeper, is filelock-run's now, which kills it, then
    // releases the lock.
    CHECK(wrapper.wait() == 128 + SIGKILL);
    CHECK(!alive(grandchild));
    CHECK(member().keys(name + "/").empty());
    if (alive(grandchild)) ::kill(grandchild, SIGKILL);
}

TEST_CASE(
    "filelock-run etcd://: its process group SIGKILLed, the keeper ends what COMMAND started") {
    scratch s;
    const auto pidfile = s / "pid";
    const std::string name = "tool-group/" + std::to_string(::getpid());
    // filelock-run leads a group of its own (a CI runner's job); the keeper
    // is in none of the groups a kill -9 -PGID reaches.
    program wrapper({"setsid", filelock_run_path(), "--ttl", "3", target(name), "sh", "-c",
                     "sleep 30 & echo $! > " + pidfile.string() + "; echo up; wait"});
    REQUIRE(wrapper.read_line() == "up");
    const pid_t grandchild = std::stoi(read_file(pidfile));
    // filelock-run leads the session setsid(1) made, and its group.
    const pid_t tool_group = ::getsid(grandchild);
    REQUIRE(tool_group == wrapper.pid());
    ::kill(-tool_group, SIGKILL);
    const auto killed = std::chrono::steady_clock::now();
    while (alive(grandchild) && std::chrono::steady_clock::now() - killed < 2500ms)
        std::this_thread::sleep_for(10ms);
    CHECK(!alive(grandchild));
    if (alive(grandchild)) ::kill(grandchild, SIGKILL);
    wrapper.wait();
}

TEST_CASE("filelock-run etcd://: COMMAND's status, stops and signals pass through the keeper") {
    const std::string name = "tool-status/" + std::to_string(::getpid());
    CHECK(run({filelock_run_path(), target(name), "sh", "-c", "exit 7"}) == 7);
    CHECK(run({filelock_run_path(), target(name), "sh", "-c", "kill -TERM $$"}) == 128 + SIGTERM);
    // A signal sent to filelock-run reaches COMMAND once; COMMAND's exit
    // status comes back.
    program wrapper({filelock_run_path(), target(name), "sh", "-c",
                     "trap 'echo term; exit 3' TERM; echo up; while :; do sleep 0.02; done"});
    REQUIRE(wrapper.read_line() == "up");
    ::kill(wrapper.pid(), SIGTERM);
    CHECK(wrapper.read_line() == "term");
    CHECK(wrapper.wait() == 3);
    CHECK(member().keys(name + "/").empty());
}

TEST_CASE("filelock-run etcd://: -o, -u, --fcntl and ranges are refused with a reason") {
    std::string err;
    for (const auto& opt :
         std::vector<std::string>{"-o", "--close", "-u", "--fcntl", "--start=1", "--length=1"}) {
        CAPTURE(opt);
        CHECK(run({filelock_run_path(), opt, target("refused"), "true"}, &err) == 64);
        CHECK(!err.empty());
        CHECK(member().keys("refused/").empty());
    }
    CHECK(run({filelock_run_path(), "-o", target("refused"), "true"}, &err) == 64);
    CHECK(err.find("--close") != std::string::npos);
}

TEST_CASE("filelock-run etcd://: silent on conflict unless --verbose") {
    const std::string name = "tool-quiet/" + std::to_string(::getpid());
    program holder({filelock_run_path(), target(name), "sh", "-c", "echo up; read x; exit 0"});
    REQUIRE(holder.read_line() == "up");
    std::string err;
    CHECK(run({filelock_run_path(), "-n", target(name), "true"}, &err) == 1);
    CHECK(err.empty());
    CHECK(run({filelock_run_path(), "-w", "0.3", "-E", "7", target(name), "true"}, &err) == 7);
    CHECK(err.empty());
    CHECK(run({filelock_run_path(), "-n", "--verbose", target(name), "true"}, &err) == 1);
    CHECK(err.find("failed to get lock\n") != std::string::npos);
    CHECK(err.find("held by ") != std::string::npos);
    holder.close_stdin();
    CHECK(holder.wait() == 0);
}

TEST_CASE("filelock-run etcd://: a release etcd never confirms is reported, non-zero") {
    // A member of this test's own, killed while COMMAND runs: the key's
    // delete cannot be sent. Before, filelock-run exited 0 in silence.
    test::etcd_cluster own(1);
    const std::string t = "etcd://" + own.endpoint().substr(7) + "/tool-release";
    program wrapper({"sh", "-c",
                     "\"$0\" --ttl 3 \"$1\" sh -c 'echo up; read x; exit 0' 2>&1; echo status=$?",
                     filelock_run_path(), t});
    REQUIRE(wrapper.read_line() == "up");
    own.kill_member(0);
    wrapper.close_stdin();  // COMMAND ends at once, long before the TTL
    std::string line, all;
    while (!(line = wrapper.read_line()).empty()) all += line + "\n";
    INFO(all);
    CHECK(all.find("release failed") != std::string::npos);
    CHECK(all.find("status=0") == std::string::npos);
    CHECK(wrapper.wait() == 0);
}

namespace {

// The fields of /proc/PID/task/TID/syscall: the call's number and its
// arguments, in hex; empty while the thread runs.
std::vector<std::string> syscall_of(pid_t pid, pid_t tid) {
    std::istringstream in(
        read_file("/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/syscall"));
    std::vector<std::string> f;
    for (std::string w; in >> w;) f.push_back(w);
    return f;
}

std::string hex(long v) {
    std::ostringstream o;
    o << "0x" << std::hex << v;
    return o.str();
}

bool is_epoll_wait(long nr) {
#ifdef SYS_epoll_wait
    if (nr == SYS_epoll_wait) return true;
#endif
    return nr == SYS_epoll_pwait;
}

// The thread of `pid` that waits in epoll (filelock-run's etcd loop), or 0.
pid_t loop_thread(pid_t pid) {
    for (int i = 0; i < 400; ++i) {
        for (const auto& e :
             std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task")) {
            const pid_t tid = std::stoi(e.path().filename().string());
            const auto f = tid == pid ? std::vector<std::string>{} : syscall_of(pid, tid);
            if (!f.empty() && is_epoll_wait(std::atol(f[0].c_str()))) return tid;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return 0;
}

// Stops the thread `tid` (ptrace) as it enters epoll_wait, and leaves it
// stopped there: whatever comes due meanwhile (timers, posts) is seen by
// that one call, as when a loaded machine runs the thread late. Empty when
// done, else why not.
std::string stop_entering_epoll(pid_t tid) {
    if (::ptrace(PTRACE_SEIZE, tid, nullptr, PTRACE_O_TRACESYSGOOD) != 0)
        return std::string("ptrace refused here: ") + std::strerror(errno);
    int st = 0;
    if (::ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr) != 0 ||
        ::waitpid(tid, &st, __WALL) != tid)
        return std::string("ptrace interrupt: ") + std::strerror(errno);
    for (int sig = 0;;) {
        if (::ptrace(PTRACE_SYSCALL, tid, nullptr, sig) != 0 || ::waitpid(tid, &st, __WALL) != tid)
            return std::string("ptrace syscall: ") + std::strerror(errno);
        if (!WIFSTOPPED(st)) return "the thread ended";
        sig = 0;
        if (WSTOPSIG(st) != (SIGTRAP | 0x80)) {
            if (st >> 16 == 0) sig = WSTOPSIG(st);  // a signal for the thread: delivered
            continue;
        }
        __ptrace_syscall_info info{};
        if (::ptrace(PTRACE_GET_SYSCALL_INFO, tid, sizeof info, &info) <= 0)
            return std::string("no PTRACE_GET_SYSCALL_INFO here: ") + std::strerror(errno);
        if (info.op == PTRACE_SYSCALL_INFO_ENTRY && is_epoll_wait(static_cast<long>(info.entry.nr)))
            return {};
    }
}

}  // namespace

TEST_CASE(
    "filelock-run etcd://: ends after COMMAND though its loop ran late, past a keep-alive tick") {
    // filelock-run's loop tells the keeper each later deadline every 100 ms.
    // Stopping, it posts the end of that timer; a tick that had come due
    // before the loop ran that post still ran after it, re-armed the
    // destroyed timer, and kept the loop, and filelock-run, running forever
    // (`fault etcd` saw it on a loaded machine). The loop is made late here:
    // its thread alone is stopped, at its wait for events, until filelock-run
    // waits for it to end.
    const std::string name = "tool-late-loop/" + std::to_string(::getpid());
    program wrapper({"sh", "-c",
                     "exec 2>&1; exec \"$0\" --ttl 1 \"$1\" sh -c 'echo up; read x; exit 0'",
                     filelock_run_path(), target(name)});
    REQUIRE(wrapper.read_line() == "up");
    const pid_t pid = wrapper.pid();
    const pid_t loop = loop_thread(pid);
    REQUIRE(loop > 0);
    if (const std::string why = stop_entering_epoll(loop); !why.empty()) {
        ::ptrace(PTRACE_DETACH, loop, nullptr, nullptr);
        WARN("NOT RUN: " << why);
        return;
    }
    wrapper.close_stdin();  // COMMAND ends; the release gets no answer in time
    // The main thread joins the loop's: futex(&tid, ..., tid, NULL).
    bool joining = false;
    for (int i = 0; i < 2000 && !joining; ++i) {
        const auto f = syscall_of(pid, pid);
        joining = f.size() > 4 && std::atol(f[0].c_str()) == SYS_futex && f[3] == hex(loop) &&
                  f[4] == "0x0";
        if (!joining) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    ::ptrace(PTRACE_DETACH, loop, nullptr, nullptr);
    REQUIRE(joining);
    std::string line, all;
    while (!(line = wrapper.read_line()).empty()) all += line + "\n";  // EOF, or 20 s
    bool ended = false;
    for (int i = 0; i < 200 && !(ended = !alive(pid)); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (!ended) ::kill(pid, SIGKILL);
    INFO(all);
    CHECK(ended);
    const int status = wrapper.wait();
    // No answer to the release in time (69), or the keeper's deadline passed
    // first (75).
    CHECK((status == 69 || status == 75));
}

namespace {

// A shell test that exits 3 if one of `pids` is alive (a zombie is gone):
// the COMMAND a second filelock-run runs, once it holds the lock.
std::string none_alive(const std::vector<pid_t>& pids) {
    std::string check;
    for (pid_t p : pids) {
        const std::string s = std::to_string(p);
        check += "kill -0 " + s + " 2>/dev/null && ! grep -q '^[^(]*([^)]*) Z' /proc/" + s +
                 "/stat && exit 3; ";
    }
    return check + "exit 0";
}

// COMMAND for the tests below: writes its pid, a background child's (in
// its group) and a setsid'd orphan's, one a line, then "up" on stdout.
std::string leaves_children(const std::filesystem::path& pidfile) {
    const std::string pf = pidfile.string();
    return "echo $$ > " + pf + "; sleep 30 & echo $! >> " + pf +
           "; ( setsid sleep 30 & echo $! >> " + pf + " ); echo up; wait; sleep 30";
}

std::vector<pid_t> pids_in(const std::filesystem::path& pidfile) {
    std::vector<pid_t> pids;
    std::istringstream in(read_file(pidfile));
    for (pid_t p; in >> p;) pids.push_back(p);
    return pids;
}

// filelock-run --ttl 2 TARGET sh -c PREFIX+leaves_children(): the wrapper,
// once COMMAND said "up", and COMMAND's three pids; whatever the test's
// outcome, none of them outlives it.
struct command_tree {
    program wrapper;
    std::vector<pid_t> pids;

    command_tree(const std::string& t, const std::filesystem::path& pidfile,
                 const std::string& prefix = "")
        : wrapper({filelock_run_path(), "--ttl", "2", t, "sh", "-c",
                   prefix + leaves_children(pidfile)}) {
        REQUIRE(wrapper.read_line() == "up");
        pids = pids_in(pidfile);
        REQUIRE(pids.size() == 3);
    }
    command_tree(const command_tree&) = delete;
    command_tree& operator=(const command_tree&) = delete;
    ~command_tree() {
        for (pid_t p : pids)
            if (alive(p)) ::kill(p, SIGKILL);
    }
};

// A second filelock-run of TARGET, whose COMMAND finds none of pids alive.
void check_second_holder_sees_none(const std::string& t, const std::vector<pid_t>& pids) {
    std::string err;
    const int status = run({filelock_run_path(), "-w", "8", t, "sh", "-c", none_alive(pids)}, &err);
    INFO(err);
    CHECK(status == 0);
}

}  // namespace

TEST_CASE(
    "filelock-run etcd://: COMMAND killed by a signal, what it started ends before the release") {
    scratch s;
    const auto pidfile = s / "pids";
    const std::string name = "tool-oom/" + std::to_string(::getpid());
    command_tree tree(target(name), pidfile);
    // As the OOM killer would: COMMAND alone, SIGKILL.
    ::kill(tree.pids[0], SIGKILL);
    CHECK(tree.wrapper.wait() == 128 + SIGKILL);
    // The lock is released at once (no lease to wait for): a second holder
    // never finds them running.
    check_second_holder_sees_none(target(name), tree.pids);
}

TEST_CASE(
    "filelock-run etcd://: stopped (SIGSTOP), the keeper ends COMMAND before the lease expires") {
    scratch s;
    const auto pidfile = s / "pids";
    const std::string name = "tool-stop/" + std::to_string(::getpid());
    command_tree tree(target(name), pidfile);
    // No keep-alive goes any more; etcd ends the lease after the TTL and
    // grants the lock to the second run.
    ::kill(tree.wrapper.pid(), SIGSTOP);
    check_second_holder_sees_none(target(name), tree.pids);
    ::kill(tree.wrapper.pid(), SIGCONT);
    CHECK(tree.wrapper.wait() == 75);  // the lock was lost
}

TEST_CASE(
    "filelock-run etcd://: keep-alives failing, a COMMAND that ignores the lost signal is "
    "killed at the lease's deadline") {
    test::etcd_cluster own(1);
    scratch s;
    const auto pidfile = s / "pids";
    const std::string t = "etcd://" + own.endpoint().substr(7) + "/tool-deadline";
    command_tree tree(t, pidfile, "trap '' TERM; ");
    own.kill_member(0);  // no keep-alive is answered any more
    // End of file once filelock-run and every process of COMMAND's tree
    // (they share its stdout) are gone; before, they ran their 30 s.
    CHECK(tree.wrapper.read_line().empty());
    for (pid_t p : tree.pids) CHECK(!alive(p));
    CHECK(tree.wrapper.wait() == 75);
}

TEST_CASE(
    "filelock-run etcd://: pkill -9 -f of its command line leaves the keeper, which ends COMMAND's "
    "tree") {
    scratch s;
    const auto pidfile = s / "pids";
    const std::string name = "tool-pkill/" + std::to_string(::getpid());
    command_tree tree(target(name), pidfile);
    // What `pkill -9 -f filelock-run` and `killall -9 filelock-run` do: every
    // process whose command line or name is filelock-run's. COMMAND's
    // command line is not.
    const std::string t = target(name);
    for (const auto& e : std::filesystem::directory_iterator("/proc")) {
        const std::string pid = e.path().filename();
        if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
        std::string cmdline = read_file(e.path() / "cmdline");
        std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
        if (cmdline.find(t) != std::string::npos) ::kill(std::stoi(pid), SIGKILL);
    }
    tree.wrapper.wait();
    check_second_holder_sees_none(target(name), tree.pids);
}
