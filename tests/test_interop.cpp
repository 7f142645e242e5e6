// SPDX-License-Identifier: MIT
// Interoperability, run for real: Python's zc.lockfile and flock(1) against
// this library, and a counter incremented by all three.

#include <filelock/lock_file.hpp>

#include "support.hpp"

#include <thread>

using namespace test;
using filelock::errc;
using filelock::lock_file;

namespace {

const char zc_try[] =
    "import sys, zc.lockfile\n"
    "try:\n"
    "    zc.lockfile.LockFile(sys.argv[1])\n"
    "except zc.lockfile.LockError:\n"
    "    sys.exit(1)\n"
    "sys.exit(0)\n";

const char zc_incr[] =
    "import sys, time, zc.lockfile\n"
    "path, counter, n = sys.argv[1], sys.argv[2], int(sys.argv[3])\n"
    "for _ in range(n):\n"
    "    while True:\n"
    "        try:\n"
    "            lock = zc.lockfile.LockFile(path)\n"
    "            break\n"
    "        except zc.lockfile.LockError:\n"
    "            time.sleep(0.0005)\n"
    "    with open(counter) as f: v = int(f.read())\n"
    "    time.sleep(0.0001)\n"
    "    with open(counter, 'w') as f: f.write(str(v + 1))\n"
    "    lock.close()\n";

const char flock_incr[] =
    "for i in $(seq \"$3\"); do flock \"$1\" sh -c 'v=$(cat \"$0\"); echo $((v + 1)) > \"$0\"' "
    "\"$2\"; done";

}  // namespace

TEST_CASE("interop: a zc.lockfile holder excludes us; its pid is the holder we report") {
    scratch s;
    const auto p = s / "a.lock";
    program py({python(), "-c", zc_hold, p.string()});
    REQUIRE(py.read_line() == "locked");
    try {
        lock_file l(p);
        FAIL("locked while zc.lockfile holds it");
    } catch (const filelock::lock_error& e) {
        CHECK(!e.holder().empty());
        CHECK(std::stol(e.holder()) > 0);
    }
    std::error_code ec;
    filelock::lock(p, 50ms, {}, ec);
    CHECK(ec == errc::timeout);
    py.close_stdin();
    CHECK(py.wait() == 0);
    CHECK(filelock::lock(p, 5s).is_locked());
}

TEST_CASE("interop: our holder excludes zc.lockfile, which leaves our pid in place") {
    scratch s;
    const auto p = s / "a.lock";
    {
        lock_file l(p);
        CHECK(run({python(), "-c", zc_try, p.string()}) == 1);
        CHECK(read_file(p) == " " + std::to_string(::getpid()) + "\n");
    }
    CHECK(run({python(), "-c", zc_try, p.string()}) == 0);
}

TEST_CASE("interop: zc.lockfile's content template matches ours byte for byte") {
    scratch s;
    const auto ours = s / "ours.lock", theirs = s / "theirs.lock";
    const char tmpl[] =
        "import sys, zc.lockfile\n"
        "l = zc.lockfile.LockFile(sys.argv[1], content_template='{pid};{hostname}')\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n";
    program py({python(), "-c", tmpl, theirs.string()});
    REQUIRE(py.read_line() == "locked");
    filelock::lock_options o;
    o.content_template = "{pid};{hostname}";
    lock_file l(ours, o);
    auto strip_pid = [](std::string c) { return c.substr(c.find(';')); };
    CHECK(strip_pid(read_file(ours)) == strip_pid(read_file(theirs)));
    CHECK(read_file(theirs).front() == ' ');
    CHECK(read_file(theirs).back() == '\n');
}

TEST_CASE("interop: flock(1) excludes us and we exclude flock(1)") {
    scratch s;
    const auto p = s / "a.lock";
    {
        program fl({"flock", "-n", p.string(), "sh", "-c", "echo locked; read x || true"});
        REQUIRE(fl.read_line() == "locked");
        CHECK_THROWS_AS(lock_file(p), filelock::lock_error);
        CHECK_THROWS_AS(filelock::simple_lock_file(p), filelock::lock_error);
        fl.close_stdin();
        CHECK(fl.wait() == 0);
    }
    lock_file l(p);
    CHECK(run({"flock", "-n", p.string(), "true"}) == 1);
    l.close();
    CHECK(run({"flock", "-n", p.string(), "true"}) == 0);
}

TEST_CASE("interop: shared locks are shared with flock(1) -s") {
    scratch s;
    const auto p = s / "a.lock";
    filelock::lock_options sh;
    sh.mode = filelock::lock_mode::shared;
    lock_file l(p, sh);
    CHECK(run({"flock", "-n", "-s", p.string(), "true"}) == 0);
    CHECK(run({"flock", "-n", "-x", p.string(), "true"}) == 1);
}

TEST_CASE("interop: ours, zc.lockfile and flock(1) incrementing one counter lose nothing") {
    scratch s;
    const auto p = s / "a.lock";
    const auto counter = s / "counter";
    write_file(counter, "0");
    constexpr int n = 40;
    std::vector<std::unique_ptr<child>> ours;
    for (int k = 0; k < 2; ++k)
        ours.push_back(std::make_unique<child>([&](int) {
            for (int i = 0; i < n; ++i) {
                auto l = filelock::lock(p, 60s);
                const int v = std::stoi(read_file(counter));
                std::this_thread::sleep_for(100us);
                write_file(counter, std::to_string(v + 1));
            }
            return 0;
        }));
    program zc1({python(), "-c", zc_incr, p.string(), counter.string(), std::to_string(n)});
    program zc2({python(), "-c", zc_incr, p.string(), counter.string(), std::to_string(n)});
    program fl({"bash", "-c", flock_incr, "incr", p.string(), counter.string(), std::to_string(n)});
    for (auto& c : ours) {
        c->release();
        CHECK(c->wait() == 0);
    }
    CHECK(zc1.wait() == 0);
    CHECK(zc2.wait() == 0);
    CHECK(fl.wait() == 0);
    CHECK(std::stoi(read_file(counter)) == 5 * n);
}
