// SPDX-License-Identifier: MIT
// filelock-run, the flock(1)-compatible command-line tool.

#include <filelock/lock_file.hpp>
#include <filelock/version.hpp>

#include "support.hpp"

#include <poll.h>
#include <termios.h>
#include <thread>

using namespace test;
using filelock::lock_file;

namespace {

// Polls until the lock on `p` is free, for at most `limit`.
bool becomes_free(const fs::path& p, std::chrono::milliseconds limit = 5000ms) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
        if (lock_is_free(p)) return true;
        std::this_thread::sleep_for(5ms);
    }
    return lock_is_free(p);
}

// A shell line for `sh -c`, quoting `s` for the shell.
std::string sh_quote(const std::string& s) {
    std::string out = "'";
    for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out + "'";
}

}  // namespace

TEST_CASE("filelock-run: runs the command under the lock and exits with its status") {
    scratch s;
    const auto p = s / "a.lock";
    const auto tool = filelock_run_path();
    CHECK(run({tool, p.string(), "true"}) == 0);
    CHECK(run({tool, p.string(), "sh", "-c", "exit 7"}) == 7);
    CHECK(run({tool, p.string(), "sh", "-c", "kill -TERM $$"}) == 128 + SIGTERM);
    // the command sees the lock held (and our content in the file)
    CHECK(run({tool, p.string(), "sh", "-c",
               "flock -n \"$0\" true && exit 3; grep -q '^ [0-9]*$' \"$0\"", p.string()}) == 0);
    CHECK(lock_is_free(p));
    CHECK(fs::exists(p));
}

TEST_CASE("filelock-run: a lock file's run loads nothing of etcd, curl or TLS") {
    // flock(1)'s start-up is the yardstick: the etcd client and its tree
    // (libcurl, TLS, Kerberos, LDAP...) are for etcd:// targets alone.
    scratch s;
    const auto p = s / "a.lock";
    program wrapper({filelock_run_path(), p.string(), "sh", "-c", "echo up; read x; exit 0"});
    REQUIRE(wrapper.read_line() == "up");
    const std::string maps = read_file("/proc/" + std::to_string(wrapper.pid()) + "/maps");
    REQUIRE(!maps.empty());
    INFO(maps);
    for (const char* lib : {"filelock-etcd", "libcurl", "libssl", "libcrypto", "libgnutls",
                            "libnghttp2", "libkrb5", "libldap"})
        CHECK(maps.find(lib) == std::string::npos);
    wrapper.close_stdin();
    CHECK(wrapper.wait() == 0);
}

TEST_CASE("filelock-run: the command inherits the lock's descriptor; -o closes it first") {
    scratch s;
    const auto p = s / "a.lock";
    const std::string has_fd =
        "for f in /proc/$$/fd/*; do [ \"$(readlink \"$f\")\" = \"$0\" ] && exit 5; done; exit 0";
    CHECK(run({filelock_run_path(), p.string(), "sh", "-c", has_fd, p.string()}) == 5);
    CHECK(run({filelock_run_path(), "-o", p.string(), "sh", "-c", has_fd, p.string()}) == 0);
    CHECK(run({filelock_run_path(), "--close", p.string(), "sh", "-c", has_fd, p.string()}) == 0);
}

TEST_CASE("filelock-run: SIGKILLed while the command runs, the command keeps the lock") {
    scratch s;
    const auto p = s / "a.lock";
    // The command says it runs, then waits for its stdin to close.
    program wrapper({filelock_run_path(), p.string(), "sh", "-c", "echo up; read x; exit 0"});
    REQUIRE(wrapper.read_line() == "up");
    REQUIRE(!lock_is_free(p));
    ::kill(wrapper.pid(), SIGKILL);
    CHECK(wrapper.wait() == 128 + SIGKILL);
    // The wrapper is gone; the command still runs and must still hold.
    std::this_thread::sleep_for(50ms);
    CHECK(!lock_is_free(p));
    std::error_code ec;
    filelock::try_lock(p, ec);
    CHECK(ec == filelock::errc::locked);  // the next cron run does not start
    wrapper.close_stdin();                // the command ends
    CHECK(becomes_free(p));
}

TEST_CASE("filelock-run: with -o a killed wrapper releases at once (the command holds nothing)") {
    scratch s;
    const auto p = s / "a.lock";
    program wrapper({filelock_run_path(), "-o", p.string(), "sh", "-c", "echo up; read x"});
    REQUIRE(wrapper.read_line() == "up");
    REQUIRE(!lock_is_free(p));
    ::kill(wrapper.pid(), SIGKILL);
    wrapper.wait();
    CHECK(becomes_free(p, 2000ms));
    wrapper.close_stdin();
}

TEST_CASE(
    "filelock-run: SIGTERM, SIGHUP and SIGINT sent to it reach the command, which keeps "
    "the lock while it cleans up") {
    scratch s;
    const auto p = s / "a.lock";
    for (const int sig : {SIGTERM, SIGHUP, SIGINT}) {
        CAPTURE(sig);
        const std::string script =
            "trap 'echo cleaning; read x; exit 3' TERM HUP INT; echo up; "
            "while :; do sleep 0.02; done";
        program wrapper({filelock_run_path(), p.string(), "sh", "-c", script});
        REQUIRE(wrapper.read_line() == "up");
        ::kill(wrapper.pid(), sig);
        CHECK(wrapper.read_line() == "cleaning");  // forwarded
        CHECK(!lock_is_free(p));                   // still held during the clean-up
        wrapper.close_stdin();
        CHECK(wrapper.wait() == 3);  // the command's status
        CHECK(lock_is_free(p));
    }
}

TEST_CASE("filelock-run: started with SIGCHLD ignored, it still reports COMMAND's status") {
    scratch s;
    const auto p = s / "a.lock";
    CHECK(run({"bash", "-c", "trap '' CHLD; exec \"$0\" \"$1\" sh -c 'exit 7'", filelock_run_path(),
               p.string()}) == 7);
}

TEST_CASE("filelock-run: a signal while waiting for the lock ends the wait; nothing runs") {
    scratch s;
    const auto p = s / "a.lock";
    lock_file held(p);
    program wrapper({filelock_run_path(), p.string(), "sh", "-c", "echo ran"});
    std::this_thread::sleep_for(100ms);
    ::kill(wrapper.pid(), SIGTERM);
    CHECK(wrapper.wait() == 128 + SIGTERM);
    CHECK(wrapper.read_line().empty());
}

TEST_CASE("filelock-run: flock(1)'s self-locking script idiom leaves the script intact") {
    scratch s;
    const auto script = s / "job.sh";
    const std::string text =
        "#!/bin/sh\n"
        "[ \"${FLOCKER}\" != \"$0\" ] && exec env FLOCKER=\"$0\" " +
        sh_quote(filelock_run_path()) +
        " -en \"$0\" \"$0\" \"$@\" || :\n"
        "flock -n \"$0\" true && exit 9\n"  // we hold it
        "echo ran\n";
    write_file(script, text);
    fs::permissions(script, fs::perms::owner_all);
    program first({script.string()});
    CHECK(first.read_line() == "ran");
    CHECK(first.wait() == 0);
    CHECK(read_file(script) == text);
    // A second instance while one runs: -n fails, the script still intact.
    lock_file held(script, [] {
        filelock::lock_options o;
        o.write_content = false;
        return o;
    }());
    CHECK(run({script.string()}) == 1);
    CHECK(read_file(script) == text);
}

TEST_CASE("filelock-run: data files, pid files and /proc files are locked without writing") {
    scratch s;
    for (const std::string& content : {std::string("1234\n"), std::string("a,b\n1,2\n")}) {
        const auto p = s / "data";
        write_file(p, content);
        CHECK(run({filelock_run_path(), p.string(), "sh", "-c",
                   "flock -n \"$0\" true && exit 3; exit 0", p.string()}) == 0);
        CHECK(read_file(p) == content);
    }
    const std::string comm = read_file("/proc/self/comm");
    CHECK(run({filelock_run_path(), "/proc/self/comm", "true"}) == 0);
    CHECK(read_file("/proc/self/comm") == comm);
    // A symbolic link is followed to lock, never to write.
    const auto victim = s / "bashrc";
    write_file(victim, "");
    fs::create_symlink(victim, s / "link.lock");
    CHECK(run({filelock_run_path(), (s / "link.lock").string(), "true"}) == 0);
    CHECK(read_file(victim).empty());
}

TEST_CASE("filelock-run: -n on a held lock exits 1 (or -E), silent; --verbose names the holder") {
    scratch s;
    const auto p = s / "a.lock";
    lock_file held(p);
    std::string err;
    CHECK(run({filelock_run_path(), "-n", p.string(), "true"}, &err) == 1);
    CHECK(err.empty());  // as flock(1): cron mails nothing every minute
    CHECK(run({filelock_run_path(), "-n", "--verbose", p.string(), "true"}, &err) == 1);
    CHECK(err.find("failed to get lock") != std::string::npos);
    CHECK(err.find(p.string()) != std::string::npos);
    CHECK(err.find(std::to_string(::getpid())) != std::string::npos);
    CHECK(run({filelock_run_path(), "-n", "-E", "42", p.string(), "true"}) == 42);
    CHECK(run({filelock_run_path(), "-nE42", p.string(), "true"}) == 42);
    CHECK(run({filelock_run_path(), "--conflict-exit-code=43", "-n", p.string(), "true"}) == 43);
    CHECK(run({filelock_run_path(), "-w", "0.05", p.string(), "true"}, &err) == 1);
    CHECK(err.empty());
    CHECK(run({filelock_run_path(), "--verbose", "-w0.05", p.string(), "true"}, &err) == 1);
    CHECK(err.find("timeout while waiting to get lock") != std::string::npos);
}

TEST_CASE("filelock-run --slots: with every slot taken, --verbose names the holders") {
    scratch s;
    const auto p = s / "a.lock";
    write_file(p, "");
    const std::string tool = filelock_run_path();
    lock_file mine(p, {.slots = 2});
    program other({tool, "--slots", "2", "-o", p.string(), "sh", "-c", "echo locked; exec cat"});
    REQUIRE(other.read_line() == "locked");
    std::string err;
    CHECK(run({tool, "-n", "--slots", "2", "--verbose", p.string(), "true"}, &err) == 1);
    INFO(err);
    CHECK(err.find("failed to get lock") != std::string::npos);
    const auto held_by = err.find(p.string() + ": held by ");
    REQUIRE(held_by != std::string::npos);
    const std::string names = err.substr(held_by, err.find('\n', held_by) - held_by);
    CHECK(names.find(std::to_string(::getpid())) != std::string::npos);
    CHECK(names.find(std::to_string(other.pid())) != std::string::npos);
    other.close_stdin();
    CHECK(other.wait() == 0);
}

TEST_CASE("filelock-run: waits for a release by default") {
    scratch s;
    const auto p = s / "a.lock";
    child holder([&](int ready) {
        lock_file l(p);
        (void)!::write(ready, "r", 1);
        ::usleep(100000);
        return 0;
    });
    REQUIRE(holder.ready());
    holder.release();
    CHECK(run({filelock_run_path(), p.string(), "true"}) == 0);
    CHECK(run({filelock_run_path(), "-w", "10", p.string(), "true"}) == 0);
}

TEST_CASE("filelock-run: --content, --simple and -s") {
    scratch s;
    const auto p = s / "a.lock";
    const auto tool = filelock_run_path();
    CHECK(run({tool, "--content", "{pid}@{hostname}", p.string(), "sh", "-c",
               "grep -q '^ [0-9]*@' \"$0\"", p.string()}) == 0);
    write_file(p, " untouched\n");
    CHECK(run({tool, "--simple", p.string(), "true"}) == 0);
    CHECK(read_file(p) == " untouched\n");
    lock_file shared_holder(p, [] {
        filelock::lock_options o;
        o.mode = filelock::lock_mode::shared;
        return o;
    }());
    CHECK(run({tool, "-n", "-s", p.string(), "true"}) == 0);
    CHECK(run({tool, "-n", p.string(), "true"}) == 1);
    CHECK(run({tool, "-n", "-s", "-x", p.string(), "true"}) == 1);  // the last one counts
}

TEST_CASE("filelock-run: -c, -F, the descriptor form, -u and directories") {
    scratch s;
    const auto p = s / "a.lock";
    const auto tool = filelock_run_path();
    CHECK(run({tool, p.string(), "-c", "exit 5"}) == 5);
    CHECK(run({tool, p.string(), "--command", "test -n \"$0\""}) == 0);
    // -F: the command is this process and holds the lock itself.
    CHECK(run({tool, "-F", p.string(), "sh", "-c", "flock -n \"$0\" true && exit 3; exit 0",
               p.string()}) == 0);
    // ( filelock-run -n 9 || exit 1; ... ) 9>FILE
    const auto fd_form = [&](const std::string& body) {
        return run(
            {"sh", "-c", "( " + sh_quote(tool) + " " + body + " ) 9>" + sh_quote(p.string())});
    };
    CHECK(fd_form("-n 9 || exit 1; flock -n " + sh_quote(p.string()) + " true && exit 3; exit 0") ==
          0);
    CHECK(fd_form("9 && " + sh_quote(tool) + " -u 9 && flock -n " + sh_quote(p.string()) +
                  " true") == 0);
    {
        lock_file held(p);
        CHECK(fd_form("-n 9 || exit 4") == 4);
        CHECK(fd_form("-w 0.05 -E 7 9") == 7);
    }
    // A directory is locked read-only, as flock(1) does.
    CHECK(run({tool, s.dir.string(), "sh", "-c", "flock -n \"$0\" true && exit 3; exit 0",
               s.dir.string()}) == 0);
    // With --slots it is refused, naming it: a slot is a byte of a file.
    std::string dir_err;
    CHECK(run({tool, "-n", "--slots", "2", s.dir.string(), "true"}, &dir_err) == 66);
    CHECK(dir_err.find(s.dir.string()) != std::string::npos);
    CHECK(dir_err.find("slots need a regular file") != std::string::npos);
    CHECK(run({tool, "-V"}) == 0);
    std::string out;
    program version({tool, "--version"});
    CHECK(version.read_line() == std::string("filelock-run (filelock) ") + FILELOCK_VERSION_STRING);
}

TEST_CASE("filelock-run: usage errors exit 64, open errors 66, unrunnable commands 69") {
    scratch s;
    const auto tool = filelock_run_path();
    std::string err;
    CHECK(run({tool}) == 64);
    CHECK(run({tool, (s / "a.lock").string()}) == 64);  // neither a command nor a descriptor
    CHECK(run({tool, "-w", "soon", (s / "a.lock").string(), "true"}) == 64);
    CHECK(run({tool, "-w", "-1", (s / "a.lock").string(), "true"}) == 64);
    CHECK(run({tool, "-E", "300", (s / "a.lock").string(), "true"}) == 64);
    CHECK(run({tool, "--bogus", (s / "a.lock").string(), "true"}) == 64);
    CHECK(run({tool, "-o", "-F", (s / "a.lock").string(), "true"}) == 64);
    CHECK(run({tool, (s / "a.lock").string(), "-c", "true", "extra"}) == 64);
    CHECK(run({tool, "--content", "{nope}", (s / "a.lock").string(), "true"}) == 64);
    CHECK(run({tool, "--content", "x", "--simple", (s / "a.lock").string(), "true"}) == 64);
    CHECK(!fs::exists(s / "a.lock"));
    const auto missing = s / "no" / "such" / "dir.lock";
    CHECK(run({tool, missing.string(), "true"}, &err) == 66);
    CHECK(err.find(missing.string()) != std::string::npos);
    CHECK(err.find("No such file or directory") != std::string::npos);
    CHECK(run({tool, (s / "a.lock").string(), "/no/such/command"}, &err) == 69);
    CHECK(err.find("/no/such/command") != std::string::npos);
    CHECK(run({tool, "9"}) == 65);  // not open
    CHECK(run({tool, "abc"}) == 64);
    CHECK(run({tool, "--help"}) == 0);
}

TEST_CASE("filelock-run: exit statuses match util-linux flock(1) side by side") {
    scratch s;
    const auto p = (s / "a.lock").string();
    const auto tool = filelock_run_path();
    struct row {
        std::vector<std::string> args;
        bool contended;  // run while another process holds the lock
    };
    const std::vector<row> rows = {
        {{}, false},
        {{p}, false},
        {{"-w", "soon", p, "true"}, false},
        {{"-E", "300", p, "true"}, false},
        {{"--bogus", p, "true"}, false},
        {{"-o", "-F", p, "true"}, false},
        {{p, "-c", "true", "extra"}, false},
        {{"abc"}, false},
        {{(s / "no" / "dir.lock").string(), "true"}, false},
        {{p, "/no/such/command"}, false},
        {{p, "true"}, false},
        {{p, "sh", "-c", "exit 7"}, false},
        {{p, "sh", "-c", "kill -TERM $$"}, false},
        {{p, "-c", "exit 5"}, false},
        {{p, "--command", "exit 6"}, false},
        {{"-n", "-w", "1", p, "true"}, false},
        {{"-w10", p, "true"}, false},
        {{"-nw", "1", p, "true"}, false},
        {{"--timeout=1", p, "true"}, false},
        {{"--conflict-exit-code=9", p, "true"}, false},
        {{"-x", "-s", p, "true"}, false},
        {{"-e", p, "true"}, false},
        {{"-F", p, "true"}, false},
        {{"-o", p, "true"}, false},
        {{"--verbose", p, "true"}, false},
        {{"9"}, false},
        {{"-u", "9"}, false},
        {{s.dir.string(), "true"}, false},
        {{"-n", p, "true"}, true},
        {{"-n", "-E", "9", p, "true"}, true},
        {{"-w", "0.1", p, "true"}, true},
        {{"-w", "0.1", "-E", "0", p, "true"}, true},
        {{"-s", "-n", p, "true"}, true},
    };
    for (const auto& r : rows) {
        std::string line;
        for (const auto& a : r.args) line += a + " ";
        CAPTURE(line);
        std::unique_ptr<child> holder;
        if (r.contended) {
            holder = std::make_unique<child>([&](int ready) {
                const int fd = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
                ::flock(fd, LOCK_EX);
                (void)!::write(ready, "r", 1);
                await_release();
                return 0;
            });
            REQUIRE(holder->ready());
        }
        std::vector<std::string> ours{tool}, theirs{"flock"};
        ours.insert(ours.end(), r.args.begin(), r.args.end());
        theirs.insert(theirs.end(), r.args.begin(), r.args.end());
        CHECK(run(ours) == run(theirs));
    }
}

namespace {

std::string signal_counter() {
    const char* p = std::getenv("FILELOCK_SIGNAL_COUNTER");
    REQUIRE(p);
    return p;
}

// Runs argv in a new session (no terminal; a group it does not lead, as
// under cron, a CI runner or timeout(1)): `sh` leads the group and runs
// filelock-run. Returns sh's pid, which is the group's id.
struct session {
    pid_t sh = -1;
    int out = -1;
    explicit session(const std::string& line) {
        int p[2];
        REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
        sh = ::fork();
        REQUIRE(sh >= 0);
        if (sh == 0) {
            ::setsid();
            ::dup2(p[1], 1);
            sigset_t none;
            sigemptyset(&none);
            ::sigprocmask(SIG_SETMASK, &none, nullptr);
            // `; :` keeps sh from exec'ing filelock-run in its place.
            ::execl("/bin/sh", "sh", "-c", (line + "; :").c_str(), static_cast<char*>(nullptr));
            ::_exit(127);
        }
        ::close(p[1]);
        out = p[0];
    }
    std::string read_line() const {
        std::string line;
        char c;
        pollfd pfd{out, POLLIN, 0};
        while (::poll(&pfd, 1, 20000) == 1 && ::read(out, &c, 1) == 1 && c != '\n') line += c;
        return line;
    }
    ~session() {
        ::kill(-sh, SIGKILL);
        ::waitpid(sh, nullptr, 0);
        ::close(out);
    }
};

}  // namespace

TEST_CASE("filelock-run: a signal sent to its process group reaches COMMAND once") {
    scratch s;
    const auto p = s / "a.lock";
    // COMMAND counts SIGTERM deliveries for 1.5 s. filelock-run is a member
    // of sh's group, or (exec, as under setsid(1)) leads it.
    for (const std::string exec : {"", "exec "}) {
        CAPTURE(exec);
        session job(exec + sh_quote(filelock_run_path()) + " " + sh_quote(p.string()) + " " +
                    sh_quote(signal_counter()) + " 1500");
        REQUIRE(job.read_line() == "up");
        ::kill(-job.sh, SIGTERM);  // the group: filelock-run (and COMMAND before the fix)
        CHECK(job.read_line() == "1");
    }
}

namespace {

// Runs argv as the session leader of a new pseudo-terminal (no echo), as a
// terminal emulator runs a shell: the leader's group is the terminal's
// foreground group.
struct terminal {
    pid_t leader = -1;
    int master = -1;
    explicit terminal(std::vector<std::string> argv) {
        master = ::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        REQUIRE(master >= 0);
        REQUIRE(::grantpt(master) == 0);
        REQUIRE(::unlockpt(master) == 0);
        const std::string slave = ::ptsname(master);
        std::vector<char*> args;
        for (auto& a : argv) args.push_back(a.data());
        args.push_back(nullptr);
        leader = ::fork();
        REQUIRE(leader >= 0);
        if (leader == 0) {
            ::setsid();
            const int fd = ::open(slave.c_str(), O_RDWR);  // the controlling terminal
            if (fd < 0) ::_exit(127);
            termios t{};
            ::tcgetattr(fd, &t);
            t.c_lflag &= ~static_cast<tcflag_t>(ECHO | ECHOCTL);
            ::tcsetattr(fd, TCSANOW, &t);
            for (int i = 0; i < 3; ++i) ::dup2(fd, i);
            sigset_t none;
            sigemptyset(&none);
            ::sigprocmask(SIG_SETMASK, &none, nullptr);
            ::signal(SIGPIPE, SIG_DFL);
            ::execvp(args[0], args.data());
            ::_exit(127);
        }
    }
    // A line of output, without its "\r"; empty after 20 s of silence
    // (`silent` then set).
    std::string read_line(bool* silent = nullptr) const {
        std::string line;
        char c = 0;
        pollfd pfd{master, POLLIN, 0};
        while (::poll(&pfd, 1, 20000) == 1 && ::read(master, &c, 1) == 1 && c != '\n')
            if (c != '\r') line += c;
        if (silent) *silent = c != '\n';
        return line;
    }
    // Reads lines until one contains `what`; false after 20 s of silence.
    bool expect(const std::string& what) const {
        for (bool silent = false; !silent;) {
            const std::string line = read_line(&silent);
            UNSCOPED_INFO(line);
            if (line.find(what) != std::string::npos && !silent) return true;
        }
        return false;
    }
    // Reads lines until one is `what`; false after 20 s of silence.
    bool expect_line(const std::string& what) const {
        for (bool silent = false; !silent;) {
            const std::string line = read_line(&silent);
            UNSCOPED_INFO(line);
            if (line == what && !silent) return true;
        }
        return false;
    }
    void type(const std::string& keys) const {
        REQUIRE(::write(master, keys.data(), keys.size()) == static_cast<ssize_t>(keys.size()));
    }
    int wait() {
        int st = 0;
        while (::waitpid(leader, &st, 0) < 0 && errno == EINTR) {
        }
        leader = -1;
        return st;
    }
    ~terminal() {
        if (leader > 0) {
            ::kill(-leader, SIGKILL);
            wait();
        }
        ::close(master);
    }
};

}  // namespace

TEST_CASE("filelock-run at a terminal: a signal sent to its group reaches COMMAND once") {
    scratch s;
    const auto p = s / "a.lock";
    const std::string line = sh_quote(filelock_run_path()) + " " + sh_quote(p.string()) + " " +
                             sh_quote(signal_counter()) + " 1500";
    SECTION("filelock-run leads the foreground group (an interactive shell's job)") {
        terminal t({filelock_run_path(), p.string(), signal_counter(), "1500"});
        REQUIRE(t.read_line() == "up");
        ::kill(-t.leader, SIGTERM);  // before the fix: from the kernel, and forwarded
        CHECK(t.read_line() == "1");
        const int st = t.wait();
        CHECK(WIFEXITED(st));
    }
    SECTION("filelock-run is a member of the foreground group (a script run at a terminal)") {
        // sh takes SIGTERM once filelock-run returned (a trap, not an
        // ignored signal, which filelock-run would inherit).
        terminal t({"sh", "-c", "trap 'echo sh-term' TERM; " + line + "; echo sh-done"});
        REQUIRE(t.read_line() == "up");
        ::kill(-t.leader, SIGTERM);
        CHECK(t.read_line() == "1");
        CHECK(t.read_line() == "sh-term");
        CHECK(t.read_line() == "sh-done");
    }
    SECTION("the terminal's ^C reaches COMMAND once") {
        terminal t({filelock_run_path(), p.string(), signal_counter(), "1500", "INT"});
        REQUIRE(t.read_line() == "up");
        t.type("\x03");
        CHECK(t.read_line() == "1");
        const int st = t.wait();
        CHECK(WIFEXITED(st));  // COMMAND handled it and exited 0
    }
    SECTION("COMMAND killed by the terminal's ^C: filelock-run dies of it too") {
        // As it would have had it got the ^C itself: a script stops there.
        terminal t({filelock_run_path(), p.string(), "sh", "-c", "echo up; exec sleep 20"});
        REQUIRE(t.read_line() == "up");
        t.type("\x03");
        const int st = t.wait();
        CHECK((WIFSIGNALED(st) && WTERMSIG(st) == SIGINT));
    }
}

TEST_CASE("filelock-run at a terminal: ^Z stops the job, fg continues it; the lock stays held") {
    scratch s;
    const auto p = s / "a.lock";
    terminal t({"bash", "--norc", "--noprofile", "--noediting", "-i"});
    t.type("PS1=; PS2=; stty -echo; echo rea''dy\n");
    REQUIRE(t.expect("ready"));  // after the first prompt
    // u''p, g''ot: the lines COMMAND prints, never an echo of the typed line.
    t.type(sh_quote(filelock_run_path()) + " " + sh_quote(p.string()) +
           " sh -c 'echo u\"\"p; read x; echo g\"\"ot $x'\n");
    REQUIRE(t.expect_line("up"));
    t.type("\x1a");  // ^Z: COMMAND stops, and the job with it
    CHECK(t.expect("Stopped"));
    CHECK(!lock_is_free(p));
    t.type("fg\n");  // COMMAND reads the terminal again, in the foreground
    t.type("hello\n");
    CHECK(t.expect_line("got hello"));
    CHECK(becomes_free(p));
    t.type("exit\n");
}

TEST_CASE(
    "filelock-run at a terminal: a background job that reads the terminal stops; fg runs it") {
    scratch s;
    const auto p = s / "a.lock";
    terminal t({"bash", "--norc", "--noprofile", "--noediting", "-i"});
    t.type("PS1=; PS2=; stty -echo; echo rea''dy\n");
    REQUIRE(t.expect("ready"));  // after the first prompt
    t.type(sh_quote(filelock_run_path()) + " " + sh_quote(p.string()) +
           " sh -c 'read x; echo g\"\"ot $x' &\n");
    // COMMAND's read stops it (SIGTTIN), and the job with it.
    t.type(
        "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 0.5; jobs | grep -q Stopped && break; done; "
        "jobs\n");
    CHECK(t.expect("Stopped"));
    t.type("fg\n");
    t.type("hello\n");
    CHECK(t.expect_line("got hello"));
    CHECK(becomes_free(p));
    t.type("exit\n");
}

TEST_CASE("filelock-run: a signal sent to it alone still reaches COMMAND, once") {
    scratch s;
    const auto p = s / "a.lock";
    for (const bool in_session : {false, true}) {
        CAPTURE(in_session);
        const std::string line = sh_quote(filelock_run_path()) + " " + sh_quote(p.string()) + " " +
                                 sh_quote(signal_counter()) + " 1500";
        if (in_session) {
            // filelock-run's pid: sh's only child.
            session job(line);
            REQUIRE(job.read_line() == "up");
            const std::string kids = read_file("/proc/" + std::to_string(job.sh) + "/task/" +
                                               std::to_string(job.sh) + "/children");
            REQUIRE(!kids.empty());
            ::kill(std::stoi(kids), SIGTERM);
            CHECK(job.read_line() == "1");
        } else {
            program wrapper({filelock_run_path(), p.string(), signal_counter(), "1500"});
            REQUIRE(wrapper.read_line() == "up");
            ::kill(wrapper.pid(), SIGTERM);
            CHECK(wrapper.read_line() == "1");
        }
    }
}

TEST_CASE("filelock-run: a signal its caller ignores (nohup) is not forwarded, as flock(1)") {
    // Before, a blocked signal that was ignored still came to sigwaitinfo,
    // and was forwarded: under nohup, COMMAND got the HUP.
    scratch s;
    const auto p = s / "a.lock";
    program wrapper({"/bin/sh", "-c", "trap '' HUP; exec \"$0\" \"$@\"", filelock_run_path(),
                     p.string(), signal_counter(), "500", "HUP"});
    REQUIRE(wrapper.read_line() == "up");
    ::kill(wrapper.pid(), SIGHUP);       // sh exec'd filelock-run: its pid
    std::this_thread::sleep_for(100ms);  // (a forwarded copy would be there by now)
    const std::string pid = std::to_string(wrapper.pid());
    const std::string kids = read_file("/proc/" + pid + "/task/" + pid + "/children");
    REQUIRE(!kids.empty());
    ::kill(std::stoi(kids), SIGHUP);  // COMMAND's own, which it handles
    CHECK(wrapper.read_line() == "1");
    CHECK(wrapper.wait() == 0);
}

TEST_CASE("filelock-run: killed with SIGTERM, it dies of SIGTERM when COMMAND does") {
    scratch s;
    const auto p = s / "a.lock";
    program wrapper({filelock_run_path(), p.string(), "sh", "-c", "echo up; exec sleep 20"});
    REQUIRE(wrapper.read_line() == "up");
    ::kill(wrapper.pid(), SIGTERM);
    int st = 0;
    while (::waitpid(wrapper.pid(), &st, 0) < 0 && errno == EINTR) {
    }
    CHECK(WIFSIGNALED(st));  // as flock(1); it exited 143 before
    CHECK((WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM));
    // COMMAND that handles the signal and exits: its status, as before.
    CHECK(run({filelock_run_path(), p.string(), "sh", "-c",
               "trap 'exit 3' TERM; kill -TERM $$; exit 0"}) == 3);
}

TEST_CASE("filelock-run: a lock file it may read but not write is locked without content") {
    scratch s;
    const auto p = s / "shared.lock";
    write_file(p, "");
    fs::permissions(p, fs::perms::owner_read | fs::perms::group_read | fs::perms::others_read);
    fs::permissions(s.dir, fs::perms::owner_all | fs::perms::others_read | fs::perms::others_exec |
                               fs::perms::group_read | fs::perms::group_exec);
    // root may write anything: run it as nobody then.
    std::vector<std::string> as_user;
    if (::getuid() == 0) {
        if (::access("/usr/bin/setpriv", X_OK) != 0)
            FAIL("root without setpriv: cannot drop to a user");
        as_user = {"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"};
    }
    const auto cmd = [&](std::vector<std::string> args) {
        std::vector<std::string> v = as_user;
        v.push_back(filelock_run_path());
        v.insert(v.end(), args.begin(), args.end());
        return v;
    };
    std::string err;
    CHECK(run(cmd({p.string(), "sh", "-c", "flock -n \"$0\" true && exit 3; exit 0", p.string()}),
              &err) == 0);
    CHECK(err.empty());
    CHECK(run(cmd({"--verbose", p.string(), "true"}), &err) == 0);
    CHECK(err.find("not writable (Permission denied); locked without writing content") !=
          std::string::npos);
    CHECK(read_file(p).empty());
    {
        lock_file held(p, [] {
            filelock::lock_options o;
            o.write_content = false;
            return o;
        }());
        CHECK(run(cmd({"-n", p.string(), "true"})) == 1);  // still a lock
    }
    // Not even readable: the error, as flock(1).
    fs::permissions(p, fs::perms::none);
    if (!as_user.empty()) CHECK(run(cmd({p.string(), "true"}), &err) == 66);
}

TEST_CASE("filelock-run: content it cannot write (a file size limit) is left out, as flock(1)") {
    // Before, a full disk, a quota, a size limit or an immutable file made
    // it refuse (exit 73 or 66) where flock(1), which writes nothing, ran
    // COMMAND. RLIMIT_FSIZE 0 (SIGXFSZ ignored) fails the write with EFBIG.
    scratch s;
    const auto p = s / "full.lock";
    write_file(p, "");
    const std::string limited = "ulimit -f 0; trap '' XFSZ; exec \"$0\" \"$@\"";
    std::string err;
    CHECK(run({"/bin/sh", "-c", limited, filelock_run_path(), "--verbose", p.string(), "sh", "-c",
               "flock -n \"$0\" true && exit 3; exit 0", p.string()},
              &err) == 0);
    CHECK(err.find("locked without writing content") != std::string::npos);
    CHECK(read_file(p).empty());
}

TEST_CASE("filelock-run: started with standard output closed, it writes nothing into the lock") {
    // Before, the lock file was opened on descriptor 1: --verbose's lines
    // (and COMMAND's output) went into it, over the holder's line.
    scratch s;
    const auto p = s / "a.lock";
    CHECK(run({"/bin/sh", "-c", "exec \"$0\" --verbose \"$1\" echo out >&-", filelock_run_path(),
               p.string()}) == 0);
    const std::string content = read_file(p);
    CHECK(content.find("executing") == std::string::npos);
    CHECK(content.find("out") == std::string::npos);
    CHECK(
        (content.empty() || (content.front() == ' ' && content.find('\n') == content.size() - 1)));
}

TEST_CASE("filelock-run: -u FILE COMMAND runs COMMAND at once, as flock(1)") {
    scratch s;
    const auto p = s / "a.lock";
    lock_file held(p);
    std::string err;
    // Before: an exclusive lock, waited for; -w bounds it here.
    CHECK(run({filelock_run_path(), "-u", "-w", "2", p.string(), "sh", "-c", "exit 5"}, &err) == 5);
    CHECK(!lock_is_free(p));  // the holder's lock untouched
}

namespace {

// --watch's output: reads lines until one contains every one of `parts`
// (at most 50 lines, each within program::read_line's 20 s); "" if none.
// `seen` collects every line read, for the failure's message.
std::string watch_line(program& w, std::vector<std::string> parts, std::string& seen) {
    for (int i = 0; i < 50; ++i) {
        const std::string line = w.read_line();
        if (line.empty()) return {};
        seen += line + "\n";
        bool all = true;
        for (const auto& p : parts) all = all && line.find(p) != std::string::npos;
        if (all) return line;
    }
    return {};
}

}  // namespace

TEST_CASE("filelock-run --watch: a join, a leave and a handoff, each a line; ^C ends it") {
    scratch s;
    const auto p = s / "a.lock";
    write_file(p, "");
    const std::string tool = filelock_run_path();
    program watch({tool, "--watch", p.string()});
    std::string seen;
    const std::string first = watch.read_line();
    CHECK(first.find(p.string() + ": free") != std::string::npos);
    // flock(1) takes it, two filelock waiters line up behind it.
    program holder({"flock", p.string(), "-c", "echo locked; exec cat"});
    REQUIRE(holder.read_line() == "locked");
    const std::string flock_pid = std::to_string(holder.pid());
    CHECK(
        !watch_line(watch, {" acquired holder " + flock_pid + " (flock exclusive"}, seen).empty());
    program first_waiter({tool, "-w", "60", p.string(), "sh", "-c", "echo ran; exec cat"});
    const std::string first_pid = std::to_string(first_waiter.pid());
    CHECK(!watch_line(watch, {" joined waiter " + first_pid + " (", "queued #1"}, seen).empty());
    program second_waiter({tool, "-w", "60", p.string(), "true"});
    const std::string second_pid = std::to_string(second_waiter.pid());
    CHECK(!watch_line(watch, {" joined waiter " + second_pid + " (", "queued #2"}, seen).empty());
    // The second gives up: it leaves.
    ::kill(second_waiter.pid(), SIGTERM);
    CHECK(second_waiter.wait() == 128 + SIGTERM);
    CHECK(!watch_line(watch, {" left waiter " + second_pid + " ("}, seen).empty());
    // flock(1) releases: the first waiter holds (a handoff: two lines).
    holder.close_stdin();
    CHECK(holder.wait() == 0);
    CHECK(!watch_line(watch, {" released holder " + flock_pid + " ("}, seen).empty());
    CHECK(!watch_line(watch, {" acquired holder " + first_pid + " ("}, seen).empty());
    CHECK(first_waiter.read_line() == "ran");
    INFO(seen);
    // ^C: it dies of SIGINT, as flock(1) waiting for a lock does (130 in a shell).
    ::kill(watch.pid(), SIGINT);
    CHECK(watch.wait() == 128 + SIGINT);
    first_waiter.close_stdin();
    CHECK(first_waiter.wait() == 0);
}

TEST_CASE("filelock-run --watch: a lock file replaced or deleted and created again is followed") {
    scratch s;
    const auto p = s / "a.lock";
    write_file(p, "");
    program watch({filelock_run_path(), "--watch", p.string()});
    CHECK(watch.read_line().find(p.string() + ": free") != std::string::npos);
    std::string seen;
    // Another file renamed over the path, then locked by flock(1).
    write_file(s / "new.lock", "");
    fs::rename(s / "new.lock", p);
    {
        program holder({"flock", p.string(), "-c", "echo locked; exec cat"});
        REQUIRE(holder.read_line() == "locked");
        const std::string pid = std::to_string(holder.pid());
        CHECK(!watch_line(watch, {" acquired holder " + pid + " ("}, seen).empty());
        holder.close_stdin();
        CHECK(holder.wait() == 0);
        CHECK(!watch_line(watch, {" released holder " + pid + " ("}, seen).empty());
    }
    // Deleted, then created again by flock(1).
    fs::remove(p);
    program holder({"flock", p.string(), "-c", "echo locked; exec cat"});
    REQUIRE(holder.read_line() == "locked");
    CHECK(!watch_line(watch, {" acquired holder " + std::to_string(holder.pid()) + " ("}, seen)
               .empty());
    INFO(seen);
    holder.close_stdin();
    CHECK(holder.wait() == 0);
    ::kill(watch.pid(), SIGTERM);
    CHECK(watch.wait() == 128 + SIGTERM);
}

TEST_CASE("filelock-run --watch --json: a JSON object a line, state then events; SIGTERM ends it") {
    scratch s;
    const auto p = s / "a.lock";
    write_file(p, "");
    const std::string tool = filelock_run_path();
    // Python reads the lines as they come: the state, then a flock(1)
    // holder's "acquired" and "released"; then it sends SIGTERM.
    const std::string script =
        "import json, os, signal, subprocess, sys\n"
        "tool, path = sys.argv[1], sys.argv[2]\n"
        "w = subprocess.Popen([tool, '--watch', '--json', path], stdout=subprocess.PIPE, "
        "text=True)\n"
        "d = json.loads(w.stdout.readline())\n"
        "assert d['event'] == 'state' and d['path'] == path and not d['held'], d\n"
        "assert d['holders'] == [] and d['waiters'] == [] and d['time'].endswith('Z'), d\n"
        "h = subprocess.Popen(['flock', path, '-c', 'echo locked; exec cat'],\n"
        "                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)\n"
        "assert h.stdout.readline() == 'locked\\n'\n"
        "d = json.loads(w.stdout.readline())\n"
        "assert d['event'] == 'acquired' and d['role'] == 'holder', d\n"
        "assert d['party']['pid'] == h.pid and d['party']['lock'] == 'flock', d\n"
        "h.stdin.close(); h.wait()\n"
        "d = json.loads(w.stdout.readline())\n"
        "assert d['event'] == 'released' and d['party']['pid'] == h.pid, d\n"
        "w.send_signal(signal.SIGTERM)\n"
        "sys.exit(0 if w.wait() == -signal.SIGTERM else 12)\n";
    CHECK(run({python(), "-c", script, tool, p.string()}) == 0);
}

TEST_CASE(
    "filelock-run --status --json: bytes that are not UTF-8 come out as latin-1, valid JSON") {
    scratch s;
    const auto p = s / "n\xff.lock";
    write_file(p, "\xff\xfe bad \xc3\xa9 \xe2\x82");
    program status({filelock_run_path(), "--status", "--json", p.string()});
    const std::string line = status.read_line();
    CHECK(status.wait() == 0);
    INFO(line);
    CHECK(line.find("\"path\":\"" + (s / "n").string() + "\\u00ff.lock\"") != std::string::npos);
    // Valid UTF-8 (é) kept; each byte of an invalid sequence, a truncated
    // one too, written as the latin-1 character of its number.
    CHECK(line.find("\"content\":\"\\u00ff\\u00fe bad \xc3\xa9 \\u00e2\\u0082\"") !=
          std::string::npos);
    for (const char c : line)
        if (static_cast<unsigned char>(c) >= 0x80) CHECK((c == '\xc3' || c == '\xa9'));
}

TEST_CASE("filelock-run --watch: a bad target names the path and the cause (66), usage 64") {
    scratch s;
    const std::string tool = filelock_run_path();
    std::string err;
    const auto missing = s / "missing.lock";
    CHECK(run({tool, "--watch", missing.string()}, &err) == 66);
    CHECK(err.find(missing.string()) != std::string::npos);
    CHECK(err.find("No such file or directory") != std::string::npos);
    CHECK(!fs::exists(missing));  // never created
    const auto p = s / "a.lock";
    write_file(p, "");
    CHECK(run({tool, "--watch", p.string(), "true"}, &err) == 64);
    CHECK(err.find("no command") != std::string::npos);
    CHECK(run({tool, "--watch"}, &err) == 64);
    CHECK(run({tool, "--json", p.string()}, &err) == 64);
    // etcd:// targets: filelock-run-etcd's (69: etcd unreachable), or a
    // usage error in a build without etcd.
    const bool etcd = fs::exists(fs::path(tool).parent_path() / "filelock-run-etcd");
    CHECK(run({tool, "--watch", "etcd://127.0.0.1:1/x"}, &err) == (etcd ? 69 : 64));
    if (etcd) CHECK(err.find("127.0.0.1:1") != std::string::npos);
}

TEST_CASE("filelock-run: the holder named on conflict is the live one, not an earlier line") {
    // An exited filelock-run left its line; flock(1), which writes nothing,
    // holds the lock now: --verbose names flock(1).
    scratch s;
    const auto p = s / "a.lock";
    const std::string tool = filelock_run_path();
    REQUIRE(run({tool, p.string(), "true"}) == 0);
    const std::string stale = read_file(p);
    REQUIRE(stale.size() > 2);
    const std::string stale_pid = stale.substr(1, stale.size() - 2);
    program holder({"flock", p.string(), "-c", "echo locked; exec cat"});
    REQUIRE(holder.read_line() == "locked");
    REQUIRE(read_file(p) == stale);
    for (const std::vector<std::string>& args :
         {std::vector<std::string>{tool, "-n", "--verbose", p.string(), "true"},
          std::vector<std::string>{tool, "-w", "0.05", "--verbose", p.string(), "true"}}) {
        std::string err;
        CHECK(run(args, &err) == 1);
        INFO(err);
        CHECK(err.find(p.string() + ": held by " + std::to_string(holder.pid()) + "\n") !=
              std::string::npos);
        CHECK(err.find(stale_pid) == std::string::npos);
    }
    holder.close_stdin();
    CHECK(holder.wait() == 0);
}

TEST_CASE("filelock-run --status: a short table, a row per holder and waiter") {
    scratch s;
    const auto p = s / "a.lock";
    write_file(p, "");
    const std::string tool = filelock_run_path();
    program holder({"flock", p.string(), "-c", "echo locked; exec cat"});
    REQUIRE(holder.read_line() == "locked");
    program queued({tool, "-w", "60", p.string(), "true"});
    program blocked({"flock", p.string(), "true"});
    // Until both wait (the queued one takes its ticket at its second
    // attempt; the other blocks in the kernel).
    std::vector<std::string> lines;
    for (int i = 0; i < 1000; ++i) {
        program status({tool, "--status", p.string()});
        lines.clear();
        for (std::string l; !(l = status.read_line()).empty();) lines.push_back(l);
        CHECK(status.wait() == 1);  // held
        if (lines.size() >= 5) break;
        std::this_thread::sleep_for(10ms);
    }
    std::string all;
    for (const auto& l : lines) all += l + "\n";
    INFO(all);
    REQUIRE(lines.size() == 5);
    CHECK(lines[0] == p.string() + ": held");
    CHECK(lines[1].rfind("ROLE     PID      HOST", 0) == 0);
    const auto row = [](const std::string& role, pid_t pid) {
        char start[32];
        std::snprintf(start, sizeof start, "%-8s %-8d ", role.c_str(), static_cast<int>(pid));
        return std::string(start);
    };
    CHECK(lines[2].rfind(row("holder", holder.pid()), 0) == 0);
    CHECK(lines[2].find(" flock  exclusive") != std::string::npos);
    CHECK(lines[3].rfind(row("waiter", queued.pid()), 0) == 0);
    CHECK(lines[3].find("queued #1") != std::string::npos);
    CHECK(lines[4].rfind(row("waiter", blocked.pid()), 0) == 0);
    CHECK(lines[4].find("queued") == std::string::npos);
    holder.close_stdin();
    CHECK(holder.wait() == 0);
    CHECK(queued.wait() == 0);
    CHECK(blocked.wait() == 0);
}
