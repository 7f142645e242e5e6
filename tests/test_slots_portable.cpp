// SPDX-License-Identifier: MIT
// Locks with N holders (lock_options::slots) as every platform keeps them
// (Linux and, under wine, Windows): N holders and no more, each on its own
// slot, an exclusive holder of the file excluding them all, the content left
// alone, and filelock-run --slots across processes. The same program is its
// own COMMAND (--exit). Linux-only parts (/proc/locks,
// flock(1), fork, libuv) are in test_slots.cpp.
#include <filelock/lock_file.hpp>

#include "portable.hpp"

#include <cstdlib>
#include <set>

using namespace portable;
using filelock::errc;
using filelock::lock_file;

TEST_CASE("slots portable: N holders and no more, each on its own slot; content left alone") {
    scratch s;
    const auto p = s / "n.lock";
    write_file(p, " 42\n");
    std::vector<lock_file> held;
    std::set<unsigned> taken;
    for (int i = 0; i < 3; ++i) {
        held.emplace_back(p, slots(3));
        taken.insert(held.back().slot());
    }
    CHECK(taken == std::set<unsigned>{0, 1, 2});
    std::error_code ec;
    auto fourth = filelock::try_lock(p, slots(3), ec);
    CHECK(ec == errc::locked);
    auto timed = filelock::lock(p, std::chrono::milliseconds(20), slots(3), ec);
    CHECK(ec == errc::timeout);
    // An exclusive holder of the file (zc.lockfile's lock) is excluded too.
    auto one = filelock::try_lock(p, {}, ec);
    CHECK(ec == errc::locked);
    CHECK(read_file(p) == " 42\n");
    const unsigned freed = held[1].slot();
    held[1].close();
    fourth = filelock::try_lock(p, slots(3), ec);
    REQUIRE(!ec);
    CHECK(fourth.slot() == freed);
    held.clear();
    fourth.close();
    CHECK(read_file(p) == " 42\n");
    // Once every slot holder is gone, the one-holder lock is free.
    one = filelock::try_lock(p, {}, ec);
    CHECK(!ec);
    // ... and while it holds, no slot can be taken.
    fourth = filelock::try_lock(p, slots(3), ec);
    CHECK(ec == errc::locked);
}

TEST_CASE("slots portable: filelock-run --slots excludes the N+1-th process, and 64 on bad N") {
    scratch s;
    const auto p = s / "n.lock";
    const std::string run = filelock_run();
    const std::string ok = self().string();
    {
        lock_file a(p, slots(2));
        lock_file b(p, slots(2));
        CHECK(portable::run({run, "--slots", "2", "-n", p.string(), ok, "--exit", "0"}) == 1);
        CHECK(portable::run({run, "--slots", "2", "-w", "0.1", "-E", "9", p.string(), ok, "--exit",
                             "0"}) == 9);
        CHECK(portable::run({run, "--slots", "3", "-n", p.string(), ok, "--exit", "5"}) == 5);
        b.close();
        CHECK(portable::run({run, "--slots", "2", "-n", p.string(), ok, "--exit", "0"}) == 0);
    }
    std::string err;
    CHECK(portable::run({run, "--slots", "0", p.string(), ok, "--exit", "0"}, &err) == 64);
    CHECK(err.find("--slots") != std::string::npos);
    CHECK(portable::run({run, "--slots", "1025", p.string(), ok, "--exit", "0"}) == 64);
    CHECK(portable::run({run, "--slots", "2", "-s", p.string(), ok, "--exit", "0"}) == 64);
}

int run_catch(int argc, char** argv);  // catch_runner.cpp

int main(int argc, char** argv) {
    self() = fs::absolute(argv[0]);
    if (argc == 3 && std::string(argv[1]) == "--exit") return std::atoi(argv[2]);
    return run_catch(argc, argv);
}
