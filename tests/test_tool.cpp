// filelock-run, the flock(1)-style command-line tool.

#include <filelock/lock_file.hpp>

#include "support.hpp"

using namespace test;
using filelock::lock_file;

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

TEST_CASE("filelock-run: the command does not inherit the lock descriptor") {
    scratch s;
    const auto p = s / "a.lock";
    // The command execs a process that outlives it only if it held the
    // descriptor; instead check /proc for a descriptor on the lock file.
    const std::string script =
        "for f in /proc/$$/fd/*; do [ \"$(readlink \"$f\")\" = \"$0\" ] && exit 5; done; exit 0";
    CHECK(run({filelock_run_path(), p.string(), "sh", "-c", script, p.string()}) == 0);
}

TEST_CASE("filelock-run: -n on a held lock exits 1 (or -E) and names the holder") {
    scratch s;
    const auto p = s / "a.lock";
    lock_file held(p);
    std::string err;
    CHECK(run({filelock_run_path(), "-n", p.string(), "true"}, &err) == 1);
    CHECK(err.find(p.string()) != std::string::npos);
    CHECK(err.find(std::to_string(::getpid())) != std::string::npos);
    CHECK(run({filelock_run_path(), "-n", "-E", "42", p.string(), "true"}) == 42);
    CHECK(run({filelock_run_path(), "-w", "0.05", p.string(), "true"}, &err) == 1);
    CHECK(err.find("timed out") != std::string::npos);
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
    write_file(p, "untouched");
    CHECK(run({tool, "--simple", p.string(), "true"}) == 0);
    CHECK(read_file(p) == "untouched");
    lock_file shared_holder(p, [] {
        filelock::lock_options o;
        o.mode = filelock::lock_mode::shared;
        return o;
    }());
    CHECK(run({tool, "-n", "-s", p.string(), "true"}) == 0);
    CHECK(run({tool, "-n", p.string(), "true"}) == 1);
}

TEST_CASE("filelock-run: usage errors exit 64, system errors 71 naming the path") {
    scratch s;
    const auto tool = filelock_run_path();
    std::string err;
    CHECK(run({tool}) == 64);
    CHECK(run({tool, (s / "a.lock").string()}) == 64);
    CHECK(run({tool, "-w", "soon", (s / "a.lock").string(), "true"}) == 64);
    CHECK(run({tool, "-w", "-1", (s / "a.lock").string(), "true"}) == 64);
    CHECK(run({tool, "-w", "1", "-n", (s / "a.lock").string(), "true"}) == 64);
    CHECK(run({tool, "-E", "300", (s / "a.lock").string(), "true"}) == 64);
    CHECK(run({tool, "--bogus", (s / "a.lock").string(), "true"}) == 64);
    CHECK(run({tool, "--content", "{nope}", (s / "a.lock").string(), "true"}) == 64);
    CHECK(run({tool, "--content", "x", "--simple", (s / "a.lock").string(), "true"}) == 64);
    CHECK(!fs::exists(s / "a.lock"));
    const auto missing = s / "no" / "such" / "dir.lock";
    CHECK(run({tool, missing.string(), "true"}, &err) == 71);
    CHECK(err.find(missing.string()) != std::string::npos);
    CHECK(err.find("No such file or directory") != std::string::npos);
    CHECK(run({tool, s.dir.string(), "true"}, &err) == 71);
    CHECK(run({tool, (s / "a.lock").string(), "/no/such/command"}) == 127);
    CHECK(run({tool, "--help"}) == 0);
}
