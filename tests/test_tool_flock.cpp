// SPDX-License-Identifier: MIT
// filelock-run against util-linux flock(1), table-driven: each spelling and
// each outcome (success, conflict, timeout, bad usage) through a link named
// `flock`, comparing the exit status, stdout and stderr with flock(1)'s.
// Rows that Debian 12's flock (util-linux 2.38.1) already knows are also run
// through /usr/bin/flock when it exists, so that the table says what
// flock(1) does rather than what we think it does; the rest (--fcntl,
// --start, --length, --fd, --nonblocking, util-linux 2.41 and 2.42) follow
// util-linux's sys-utils/flock.c and its tests (tests/ts/flock/).

#include "support.hpp"

#include <regex>

using namespace test;

namespace {

struct output {
    int status = -1;
    std::string out, err;
};

// Runs `exe` with argv (argv[0] as given); stdout and stderr apart (both
// small).
output run_both(const std::vector<std::string>& argv, const std::string& exe = {}) {
    int outp[2], errp[2];
    REQUIRE(::pipe2(outp, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(errp, O_CLOEXEC) == 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, outp[1], 1);
    posix_spawn_file_actions_adddup2(&fa, errp[1], 2);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_t pid = 0;
    portable::default_signals sig;
    const int rc = ::posix_spawn(&pid, exe.empty() ? args[0] : exe.c_str(), &fa, &sig.attr,
                                 args.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    ::close(outp[1]);
    ::close(errp[1]);
    REQUIRE(rc == 0);
    output o;
    const auto drain = [](int fd, std::string& to) {
        char buf[512];
        ssize_t n;
        while ((n = ::read(fd, buf, sizeof buf)) > 0) to.append(buf, static_cast<size_t>(n));
        ::close(fd);
    };
    drain(outp[0], o.out);
    drain(errp[0], o.err);
    int st = 0;
    while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    o.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    // The seconds --verbose prints differ from run to run.
    static const std::regex took("took [0-9]+\\.[0-9]{6} seconds");
    o.out = std::regex_replace(o.out, took, "took <n> seconds");
    return o;
}

enum class holder { none, flock, ofd };

// A process holding the lock on `p` the way `h` says, until destroyed.
std::unique_ptr<child> hold(const std::string& p, holder h) {
    if (h == holder::none) return nullptr;
    auto c = std::make_unique<child>([p, h](int ready) {
        const int fd = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (h == holder::flock) {
            ::flock(fd, LOCK_EX);
        } else {
            struct ::flock fl {};
            fl.l_type = F_WRLCK;
            fl.l_whence = SEEK_SET;
            ::fcntl(fd, F_OFD_SETLK, &fl);
        }
        (void)!::write(ready, "r", 1);
        await_release();
        return 0;
    });
    REQUIRE(c->ready());
    return c;
}

struct row {
    std::vector<std::string> args;  // "FILE": the lock file
    holder held;
    int status;
    std::string out, err;  // "FILE" as above
    bool in_238;           // util-linux 2.38.1 behaves so too
};

std::string subst(std::string s, const std::string& file) {
    for (std::size_t at; (at = s.find("FILE")) != std::string::npos;) s.replace(at, 4, file);
    return s;
}

}  // namespace

TEST_CASE("filelock-run as flock(1): spellings and outcomes, status, stdout and stderr") {
    scratch s;
    const std::string file = (s / "a.lock").string();
    const std::string link = (s / "flock").string();
    fs::create_symlink(filelock_run_path(), link);
    const std::string try_help = "Try 'flock --help' for more information.\n";
    const std::string took = "flock: getting lock took <n> seconds\n";
    const auto H = holder::flock;
    const auto O = holder::ofd;
    const auto N = holder::none;
    const std::vector<row> rows = {
        // success: silent without --verbose; --verbose on stdout
        {{"FILE", "true"}, N, 0, "", "", true},
        {{"FILE", "sh", "-c", "echo out; echo err >&2; exit 3"}, N, 3, "out\n", "err\n", true},
        {{"--verbose", "FILE", "true"}, N, 0, took + "flock: executing true\n", "", true},
        {{"-s", "FILE", "true"}, N, 0, "", "", true},
        {{"--s", "FILE", "true"}, N, 0, "", "", true},  // --shared (2.38), not --simple
        {{"--sh", "FILE", "true"}, N, 0, "", "", true},
        {{"--ex", "FILE", "true"}, N, 0, "", "", true},
        {{"-e", "FILE", "true"}, N, 0, "", "", true},
        {{"--nonblocking", "FILE", "true"}, N, 0, "", "", true},
        {{"--nonblock", "FILE", "true"}, N, 0, "", "", true},
        {{"--nonb", "FILE", "true"}, N, 0, "", "", true},
        {{"--nb", "FILE", "true"}, N, 0, "", "", true},
        {{"--t", "1", "FILE", "true"}, N, 0, "", "", true},  // --timeout, not --ttl
        {{"--ti=1", "FILE", "true"}, N, 0, "", "", true},
        {{"--wait", "1", "FILE", "true"}, N, 0, "", "", true},
        {{"--wa=1", "FILE", "true"}, N, 0, "", "", true},
        {{"--co", "3", "FILE", "true"}, N, 0, "", "", true},  // not --content
        {{"--con=3", "FILE", "true"}, N, 0, "", "", true},
        {{"--conflict-exit-code=3", "FILE", "true"}, N, 0, "", "", true},
        {{"--cl", "FILE", "true"}, N, 0, "", "", true},
        {{"--close", "FILE", "true"}, N, 0, "", "", true},
        {{"--no-f", "FILE", "true"}, N, 0, "", "", true},
        {{"--verb", "FILE", "true"}, N, 0, took + "flock: executing true\n", "", true},
        {{"--fcntl", "FILE", "true"}, N, 0, "", "", false},
        {{"--fc", "FILE", "true"}, N, 0, "", "", false},
        {{"--start", "1", "--length", "2", "FILE", "true"}, N, 0, "", "", false},
        {{"--st=1", "--le=1", "FILE", "true"}, N, 0, "", "", false},
        {{"--fcntl", "--verbose", "FILE", "true"},
         N,
         0,
         took + "flock: executing true\n",
         "",
         false},
        {{"-w", "0", "--verbose", "FILE", "true"},
         N,
         0,
         took + "flock: executing true\n",
         "",
         true},
        {{"FILE", "-c", "echo $0 >/dev/null; echo c"}, N, 0, "c\n", "", true},
        {{"FILE", "--command", "exit 6"}, N, 6, "", "", true},
        // -u with a command: a harmless unlock, then the command
        {{"-u", "FILE", "true"}, H, 0, "", "", true},
        {{"--u", "FILE", "echo", "ran"}, H, 0, "ran\n", "", true},
        // ... with the descriptor of FILE (-o: without)
        {{"-u", "FILE", "sh", "-c",
          "for f in /proc/$$/fd/*; do readlink $f; done | grep -c '/a.lock$'"},
         N,
         0,
         "1\n",
         "",
         true},
        {{"-o", "-u", "FILE", "sh", "-c",
          "for f in /proc/$$/fd/*; do readlink $f; done | grep -c '/a.lock$'"},
         N,
         1,
         "0\n",
         "",
         true},
        // conflict and timeout: silent, the status says it
        {{"-n", "FILE", "true"}, H, 1, "", "", true},
        {{"-n", "-E", "9", "FILE", "true"}, H, 9, "", "", true},
        {{"-nE9", "FILE", "true"}, H, 9, "", "", true},
        {{"--nonb", "--co", "9", "FILE", "true"}, H, 9, "", "", true},
        {{"--nonblocking", "--conflict-exit-code=9", "FILE", "true"}, H, 9, "", "", true},
        // a timeout under a microsecond is -n (flock(1)'s timeval is zero)
        {{"-w", "0.0000001", "--verbose", "FILE", "true"},
         H,
         1,
         "",
         "flock: failed to get lock\n",
         true},
        {{"--nb", "FILE", "true"}, H, 1, "", "", true},
        {{"-n", "--verbose", "FILE", "true"}, H, 1, "", "flock: failed to get lock\n", true},
        {{"-w", "0.1", "FILE", "true"}, H, 1, "", "", true},
        {{"--timeout=0.1", "-E", "0", "FILE", "true"}, H, 0, "", "", true},
        {{"-w", "0.1", "--verbose", "FILE", "true"},
         H,
         1,
         "",
         "flock: timeout while waiting to get lock\n",
         true},
        {{"-w", "0", "--verbose", "FILE", "true"}, H, 1, "", "flock: failed to get lock\n", false},
        {{"-s", "-n", "FILE", "true"}, H, 1, "", "", true},
        // --fcntl: OFD locks and flock(2) locks do not see each other
        {{"--fcntl", "-n", "FILE", "true"}, H, 0, "", "", false},
        {{"-n", "FILE", "true"}, O, 0, "", "", true},
        {{"--fcntl", "-n", "FILE", "true"}, O, 1, "", "", false},
        {{"--fcntl", "-s", "-n", "FILE", "true"}, O, 1, "", "", false},
        {{"--start", "7", "-n", "--verbose", "FILE", "true"},
         O,
         1,
         "",
         "flock: failed to get lock\n",
         false},
        {{"--fcntl", "-w", "0.1", "-E", "5", "FILE", "true"}, O, 5, "", "", false},
        // bad usage
        {{}, N, 64, "", "flock: not enough arguments\n" + try_help, true},
        {{"--bogus", "FILE", "true"},
         N,
         64,
         "",
         "flock: unrecognized option '--bogus'\n" + try_help,
         true},
        {{"-y", "FILE", "true"}, N, 64, "", "flock: invalid option -- 'y'\n" + try_help, true},
        {{"--c=3", "FILE", "true"},
         N,
         64,
         "",
         "flock: option '--c=3' is ambiguous; possibilities: '--conflict-exit-code' '--close'\n" +
             try_help,
         true},
        // -E and the descriptor read as strtos32_or_err reads them
        {{"-E", "abc", "-n", "FILE", "true"}, N, 64, "", "flock: invalid exit code: 'abc'\n", true},
        {{"-E", "4294967297", "-n", "FILE", "true"},
         N,
         64,
         "",
         "flock: invalid exit code: '4294967297': Numerical result out of range\n",
         true},
        {{"-E", "300", "-n", "FILE", "true"},
         N,
         64,
         "",
         "flock: exit code out of range (expected 0 to 255)\n",
         true},
        {{"2000000000"}, N, 65, "", "flock: 2000000000: Bad file descriptor\n", true},
        {{"99999999999999999999"},
         N,
         64,
         "",
         "flock: bad file descriptor: '99999999999999999999': Numerical result out of range\n",
         true},
        {{"-?"}, N, 64, "", try_help, true},
        {{"--", "-1"}, N, 65, "", "flock: -1: Bad file descriptor\n", true},
        {{"--no", "FILE", "true"},
         N,
         64,
         "",
         "flock: option '--no' is ambiguous; possibilities: '--nonblocking' '--no-fork'\n" +
             try_help,
         true},
        {{"--si", "FILE", "true"},
         N,
         64,
         "",
         "flock: unrecognized option '--si'\n" + try_help,
         true},
        {{"--cont", "x", "FILE", "true"},
         N,
         64,
         "",
         "flock: unrecognized option '--cont'\n" + try_help,
         true},
        {{"-w"}, N, 64, "", "flock: option requires an argument -- 'w'\n" + try_help, true},
        {{"--timeout"},
         N,
         64,
         "",
         "flock: option '--timeout' requires an argument\n" + try_help,
         true},
        {{"--shared=1", "FILE", "true"},
         N,
         64,
         "",
         "flock: option '--shared' doesn't allow an argument\n" + try_help,
         true},
        {{"-w", "soon", "FILE", "true"}, N, 64, "", "flock: invalid timeout value: 'soon'\n", true},
        {{"-E", "300", "FILE", "true"},
         N,
         64,
         "",
         "flock: exit code out of range (expected 0 to 255)\n",
         true},
        {{"-o", "-F", "FILE", "true"},
         N,
         64,
         "",
         "flock: the --no-fork and --close options are incompatible\n",
         true},
        {{"FILE", "-c", "true", "extra"},
         N,
         64,
         "",
         "flock: -c requires exactly one command argument\n",
         true},
        {{"abc"}, N, 64, "", "flock: bad file descriptor: 'abc'\n", true},
        {{"--fd", "9"}, N, 64, "", "flock: missing command\n" + try_help, false},
        // errors that are not contention
        {{"9"}, N, 65, "", "flock: 9: Bad file descriptor\n", true},
        {{"-u", "9"}, N, 65, "", "flock: 9: Bad file descriptor\n", true},
        {{"--fd", "9", "true"}, N, 65, "", "flock: 9: Bad file descriptor\n", false},
        {{"--fd", "9", "-c", "true"}, N, 65, "", "flock: 9: Bad file descriptor\n", false},
        {{(s / "no" / "dir.lock").string(), "true"},
         N,
         66,
         "",
         "flock: cannot open lock file " + (s / "no" / "dir.lock").string() +
             ": No such file or directory\n",
         true},
        {{"FILE", "/no/such/command"},
         N,
         69,
         "",
         "flock: failed to execute /no/such/command: No such file or directory\n",
         true},
    };
    const bool have_238 = ::access("/usr/bin/flock", X_OK) == 0;
    int compared = 0;
    for (const auto& r : rows) {
        std::vector<std::string> args;
        std::string line = "flock";
        for (const auto& a : r.args) {
            args.push_back(subst(a, file));
            line += " " + a;
        }
        CAPTURE(line);
        // Bounded: a row that would wait forever (-u taking a lock, as it
        // did) fails rather than hangs.
        std::vector<std::string> ours{"/usr/bin/timeout", "-s", "KILL", "20", link};
        ours.insert(ours.end(), args.begin(), args.end());
        output got;
        {
            write_file(file, "");  // no holder's line from the row before
            const auto h = hold(file, r.held);
            got = run_both(ours);
        }
        CHECK(got.status == r.status);
        CHECK(got.out == subst(r.out, file));
        CHECK(got.err == subst(r.err, file));
        if (have_238 && r.in_238) {
            // argv[0] "flock": glibc's getopt messages name argv[0] as is.
            std::vector<std::string> theirs{"flock"};
            theirs.insert(theirs.end(), args.begin(), args.end());
            write_file(file, "");
            const auto h = hold(file, r.held);
            const output want = run_both(theirs, "/usr/bin/flock");
            INFO("the table disagrees with /usr/bin/flock");
            CHECK(want.status == r.status);
            CHECK(want.out == subst(r.out, file));
            CHECK(want.err == subst(r.err, file));
            ++compared;
        }
    }
    if (have_238) CHECK(compared > 40);
}

TEST_CASE("filelock-run names itself as invoked") {
    scratch s;
    const auto p = (s / "a.lock").string();
    const output plain = run_both({filelock_run_path(), "--bogus", p, "true"});
    CHECK(plain.err.rfind("filelock-run: unrecognized option '--bogus'\n", 0) == 0);
    const auto other = (s / "locker").string();
    fs::create_symlink(filelock_run_path(), other);
    const output renamed = run_both({other, "--verbose", p, "true"});
    CHECK(renamed.out == "locker: getting lock took <n> seconds\nlocker: executing true\n");
}

TEST_CASE("filelock-run as flock(1): a write error on its standard output is one (status 1)") {
    // util-linux's close_stdout at exit. Before, --version to /dev/full
    // exited 0, and --verbose's COMMAND's status was kept.
    scratch s;
    const auto p = (s / "a.lock").string();
    const auto tool = filelock_run_path();
    for (const std::string& prog : {std::string("/usr/bin/flock"), tool}) {
        CAPTURE(prog);
        std::string err;
        CHECK(run({"/bin/sh", "-c", "exec \"$0\" --version >&-", prog}, &err) == 0);
        CHECK(err.empty());  // no standard output at all is not a write error
        CHECK(run({"/bin/sh", "-c", "exec \"$0\" --version >/dev/full", prog}, &err) == 1);
        CHECK(err.find("write error: No space left on device\n") != std::string::npos);
        CHECK(run({"/bin/sh", "-c", "exec \"$0\" --verbose \"$1\" sh -c 'exit 3' >/dev/full", prog,
                   p},
                  &err) == 1);
        CHECK(err.find("write error: No space left on device\n") != std::string::npos);
    }
}

TEST_CASE("filelock-run --start K --length 1 and F_OFD_SETLK exclude each other on one byte") {
    scratch s;
    const auto p = (s / "slots").string();
    write_file(p, "");
    const auto tool = filelock_run_path();
    // A process holding byte 3 with F_OFD_SETLK.
    {
        auto c = std::make_unique<child>([p](int ready) {
            const int fd = ::open(p.c_str(), O_RDWR | O_CLOEXEC);
            struct ::flock fl {};
            fl.l_type = F_WRLCK;
            fl.l_whence = SEEK_SET;
            fl.l_start = 3;
            fl.l_len = 1;
            if (::fcntl(fd, F_OFD_SETLK, &fl) != 0) return 1;
            (void)!::write(ready, "r", 1);
            await_release();
            return 0;
        });
        REQUIRE(c->ready());
        CHECK(run({tool, "-n", "--start", "3", "--length", "1", p, "true"}) == 1);
        CHECK(run({tool, "-n", "-s", "--start", "3", "--length", "1", p, "true"}) == 1);
        CHECK(run({tool, "-n", "--start", "4", "--length", "1", p, "true"}) == 0);
        CHECK(run({tool, "-n", "--start", "0", "--length", "3", p, "true"}) == 0);
        CHECK(run({tool, "-n", "--start", "2", "--length", "0", p, "true"}) == 1);  // to EOF
        // util-linux's strtosize: any base, suffixes, fractions. Before,
        // base 10 only: 03 was 3 (here, too), 0x3 and 0.5K were refused.
        CHECK(run({tool, "-n", "--start", "0x3", "--length", "1", p, "true"}) == 1);
        CHECK(run({tool, "-n", "--start", "03", "--length", "1", p, "true"}) == 1);
        CHECK(run({tool, "-n", "--start", "010", "--length", "1", p, "true"}) == 0);   // 8
        CHECK(run({tool, "-n", "--start", "0", "--length", "0.5K", p, "true"}) == 1);  // 512
        CHECK(run({tool, "-n", "--start", "1KiB", "--length", "1KB", p, "true"}) == 0);
        std::string err;
        CHECK(run({tool, "--start", "1.5", p, "true"}, &err) == 64);
        CHECK(err == "filelock-run: invalid as start offset: '1.5': Invalid argument\n");
        CHECK(run({tool, "--length", "99999999999999999999", p, "true"}, &err) == 64);
        CHECK(err ==
              "filelock-run: invalid as length of lock range: '99999999999999999999': Numerical "
              "result out of range\n");
    }
    // filelock-run holding byte 3: F_OFD_SETLK on byte 3 fails, on 4 works.
    program holder(
        {tool, "--start", "3", "--length", "1", p, "sh", "-c", "echo up; read x; exit 0"});
    REQUIRE(holder.read_line() == "up");
    const auto try_byte = [&](off_t at) {
        const int fd = ::open(p.c_str(), O_RDWR | O_CLOEXEC);
        struct ::flock fl {};
        fl.l_type = F_WRLCK;
        fl.l_whence = SEEK_SET;
        fl.l_start = at;
        fl.l_len = 1;
        const int rc = ::fcntl(fd, F_OFD_SETLK, &fl);
        ::close(fd);
        return rc == 0;
    };
    CHECK(!try_byte(3));
    CHECK(try_byte(4));
    CHECK(try_byte(2));
    holder.close_stdin();
    CHECK(holder.wait() == 0);
    CHECK(try_byte(3));
    CHECK(read_file(p).empty());  // a range lock writes nothing
}

TEST_CASE("filelock-run --fd N COMMAND holds N's lock while COMMAND runs; -o closes N in it") {
    scratch s;
    const auto p = (s / "a.lock").string();
    const auto tool = filelock_run_path();
    const std::string t = "'" + tool + "'";  // no quote in the build path
    const auto sh = [&](const std::string& body) {
        return run({"sh", "-c", "exec 9>\"$0\"; " + body, p});
    };
    CHECK(sh(t + " --fd 9 sh -c 'flock -n \"$0\" true && exit 3; exit 0' \"$0\"") == 0);
    CHECK(sh(t + " --fd 9 -c 'exit 4'") == 4);
    // -o: COMMAND does not get descriptor 9 (util-linux's `close` test)
    CHECK(sh(t + " -o --fd 9 -c \"" + t + " -n --fd 9 true\"") == 65);
    CHECK(sh(t + " --fd 9 -c \"" + t + " -n --fd 9 true\"") == 0);
    // released once COMMAND ended and the shell closed 9
    CHECK(lock_is_free(p));
}
