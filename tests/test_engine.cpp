// SPDX-License-Identifier: MIT
// The acquisition engine, driven by a fake clock and a scripted target.

#include <filelock/detail/engine.hpp>

#include <catch2/catch.hpp>

#include <deque>
#include <limits>
#include <vector>

using namespace std::chrono_literals;
using filelock::errc;
using filelock::detail::backoff;
using sclock = filelock::detail::clock;
using filelock::detail::engine;
using filelock::detail::next_action;

namespace {

// Answers each attempt from a script; contention once the script runs out.
struct scripted_target {
    std::deque<std::error_code>* script;
    int* attempts;
    std::error_code try_acquire() {
        ++*attempts;
        if (script->empty()) return errc::locked;
        auto ec = script->front();
        script->pop_front();
        return ec;
    }
};

struct fixture {
    std::deque<std::error_code> script;
    int attempts = 0;
    sclock::time_point now = sclock::time_point() + 1000h;
    filelock::backoff_policy policy{};

    engine<scripted_target> make(sclock::duration timeout, std::uint64_t seed = 42) {
        return engine<scripted_target>(scripted_target{&script, &attempts}, timeout, policy, seed);
    }
};

}  // namespace

TEST_CASE("engine: an uncontended lock is won on the first attempt") {
    fixture f;
    f.script = {std::error_code()};
    auto e = f.make(5s);
    const auto a = e.resume(f.now);
    CHECK(a.is_done());
    CHECK(!a.ec);
    CHECK(f.attempts == 1);
}

TEST_CASE("engine: timeout 0 is exactly one attempt and reports errc::timeout") {
    fixture f;
    auto e = f.make(0s);
    const auto a = e.resume(f.now);
    CHECK(a.is_done());
    CHECK(a.ec == errc::timeout);
    CHECK(a.ec == std::errc::timed_out);
    CHECK(f.attempts == 1);
}

TEST_CASE("engine: a negative timeout is one attempt too") {
    fixture f;
    auto e = f.make(-5s);
    CHECK(e.resume(f.now).ec == errc::timeout);
    CHECK(f.attempts == 1);
}

TEST_CASE("engine: a real error ends the acquisition at once, without retries") {
    fixture f;
    f.script = {std::error_code(EACCES, std::system_category())};
    auto e = f.make(10s);
    const auto a = e.resume(f.now);
    CHECK(a.is_done());
    CHECK(a.ec == std::errc::permission_denied);
    CHECK(f.attempts == 1);
}

TEST_CASE("engine: an error after some contention is reported as that error") {
    fixture f;
    f.script = {errc::locked, errc::locked, std::error_code(ENOLCK, std::system_category())};
    auto e = f.make(10s);
    next_action a;
    while (!(a = e.resume(f.now)).is_done()) f.now += a.delay;
    CHECK(a.ec == std::errc::no_lock_available);
    CHECK(f.attempts == 3);
}

TEST_CASE("engine: contention waits within the exponential bounds, then wins") {
    fixture f;
    f.policy = {1ms, 2.0, 64ms, 1.0};
    f.script = {errc::locked, errc::locked, errc::locked, errc::locked, std::error_code()};
    auto e = f.make(10s);
    std::vector<sclock::duration> waits;
    next_action a;
    while (!(a = e.resume(f.now)).is_done()) {
        waits.push_back(a.delay);
        f.now += a.delay;
    }
    CHECK(!a.ec);
    REQUIRE(waits.size() == 4);
    sclock::duration ceiling = 1ms;
    for (auto w : waits) {
        CHECK(w > 0ns);
        CHECK(w <= ceiling);
        ceiling *= 2;
    }
}

TEST_CASE("engine: the backoff is capped") {
    filelock::backoff_policy p{1ms, 3.0, 20ms, 0.0};  // no jitter: exact ceilings
    backoff b(p, 7);
    std::vector<sclock::duration> seq;
    for (int i = 0; i < 6; ++i) seq.push_back(b.next());
    CHECK(seq == std::vector<sclock::duration>{1ms, 3ms, 9ms, 20ms, 20ms, 20ms});
}

TEST_CASE("engine: full jitter spreads waits over [0, ceiling]") {
    filelock::backoff_policy p{10ms, 1.0, 10ms, 1.0};
    backoff b(p, 12345);
    sclock::duration lo = 10ms, hi = 0ms;
    for (int i = 0; i < 1000; ++i) {
        const auto w = b.next();
        REQUIRE(w > 0ns);
        REQUIRE(w <= 10ms);
        lo = std::min(lo, w);
        hi = std::max(hi, w);
    }
    CHECK(lo < 1ms);
    CHECK(hi > 9ms);
}

TEST_CASE("engine: different seeds give different wait sequences") {
    filelock::backoff_policy p{};
    backoff a(p, 1), b(p, 2);
    bool differ = false;
    for (int i = 0; i < 8; ++i) differ |= a.next() != b.next();
    CHECK(differ);
}

TEST_CASE("engine: waits are clamped to the deadline and one last attempt is made there") {
    fixture f;
    f.policy = {40ms, 2.0, 1s, 0.0};
    auto e = f.make(100ms);
    const auto start = f.now;
    std::vector<sclock::duration> waits;
    next_action a;
    while (!(a = e.resume(f.now)).is_done()) {
        waits.push_back(a.delay);
        f.now += a.delay;
    }
    CHECK(a.ec == errc::timeout);
    // 40 ms, then 80 ms clamped to the 60 ms left, then the attempt at the deadline.
    CHECK(waits == std::vector<sclock::duration>{40ms, 60ms});
    CHECK(f.now - start == 100ms);
    CHECK(f.attempts == 3);
}

TEST_CASE("engine: the lock won at the final attempt is delivered, not a timeout") {
    fixture f;
    f.policy = {40ms, 2.0, 1s, 0.0};
    f.script = {errc::locked, errc::locked, std::error_code()};
    auto e = f.make(100ms);
    next_action a;
    while (!(a = e.resume(f.now)).is_done()) f.now += a.delay;
    CHECK(!a.ec);
    CHECK(f.attempts == 3);
}

TEST_CASE("engine: a driver that wakes late still makes one attempt before timing out") {
    fixture f;
    f.script = {errc::locked, std::error_code()};
    auto e = f.make(10ms);
    auto a = e.resume(f.now);
    REQUIRE(!a.is_done());
    f.now += 1h;  // the loop was busy
    a = e.resume(f.now);
    CHECK(a.is_done());
    CHECK(!a.ec);
}

TEST_CASE("engine: wait_forever never times out") {
    fixture f;
    f.policy = {1ms, 2.0, 100ms, 1.0};
    auto e = f.make(filelock::wait_forever);
    for (int i = 0; i < 10000; ++i) {
        const auto a = e.resume(f.now);
        REQUIRE(!a.is_done());
        REQUIRE(a.delay <= 100ms);
        f.now += 24h;
    }
    f.script = {std::error_code()};
    CHECK(!e.resume(f.now).ec);
}

TEST_CASE("engine: a time near the clock's end does not overflow the deadline") {
    fixture f;
    f.now = sclock::time_point::max() - 1s;
    auto e = f.make(1h);
    const auto a = e.resume(f.now);
    CHECK(!a.is_done());
}

TEST_CASE("engine: a failed attempt after a release event is retried quickly, then backs off") {
    fixture f;
    f.policy = {50ms, 2.0, 1s, 0.0};
    auto e = f.make(10s);
    auto a = e.resume(f.now);
    REQUIRE(!a.is_done());
    CHECK(a.delay == 50ms);  // no event yet: plain backoff
    f.now += 10ms;           // an event ends the wait early
    std::vector<sclock::duration> waits;
    a = e.resume(f.now, true);
    for (int i = 0; i < 4; ++i) {
        REQUIRE(!a.is_done());
        waits.push_back(a.delay);
        f.now += a.delay;
        a = e.resume(f.now);
    }
    CHECK(waits == std::vector<sclock::duration>{20us, 100us, 500us, 100ms});
}

TEST_CASE("engine: quick retries never pass the deadline") {
    fixture f;
    auto e = f.make(50us);
    auto a = e.resume(f.now, true);
    REQUIRE(!a.is_done());
    CHECK(a.delay == 20us);
    f.now += a.delay;
    a = e.resume(f.now);
    CHECK(a.delay == 30us);  // clamped: 100 us would pass the deadline
    f.now += a.delay;
    CHECK(e.resume(f.now).ec == errc::timeout);
}

TEST_CASE("engine: while release events are watched, the fallback waits are stretched") {
    fixture f;
    f.policy = {10ms, 2.0, 100ms, 0.0};
    auto plain = f.make(1h);
    auto watched = f.make(1h);
    std::vector<sclock::duration> a, b;
    for (int i = 0; i < 6; ++i) {
        a.push_back(plain.resume(f.now).delay);
        b.push_back(watched.resume(f.now, false, true).delay);
    }
    CHECK(a == std::vector<sclock::duration>{10ms, 20ms, 40ms, 80ms, 100ms, 100ms});
    CHECK(b == std::vector<sclock::duration>{40ms, 80ms, 160ms, 320ms, 400ms, 400ms});
}

TEST_CASE("engine: NaN and infinite backoff fields are replaced, never converted") {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const double inf = std::numeric_limits<double>::infinity();
    for (const double m : {nan, inf, -inf}) {
        CAPTURE(m);
        filelock::backoff_policy p;
        p.initial = 1ms;
        p.cap = 100ms;
        p.jitter = 0;
        p.multiplier = m;
        backoff b(p, 1);
        CHECK(b.next() == 1ms);
        // NaN falls back to 2, +inf is clamped to 1000 (the cap at once),
        // -inf to 1 (no growth): never a collapse to nanoseconds.
        const auto second = b.next();
        CHECK(second == (m != m ? 2ms : m > 0 ? 100ms : 1ms));
    }
    for (const double j : {nan, inf, -inf}) {
        CAPTURE(j);
        filelock::backoff_policy p;
        p.initial = 8ms;
        p.cap = 8ms;
        p.jitter = j;
        backoff b(p, 7);
        sclock::duration longest{};
        for (int i = 0; i < 200; ++i) {
            const auto w = b.next();
            CHECK(w >= 1ns);
            CHECK(w <= 8ms);
            longest = std::max(longest, w);
        }
        CHECK(longest >= 4ms);  // not collapsed to nanoseconds
    }
}

TEST_CASE("engine: huge or negative backoff durations are clamped to [1 ns, 1 h]") {
    filelock::backoff_policy p;
    p.initial = std::chrono::nanoseconds::max();
    p.cap = std::chrono::nanoseconds::max();
    p.multiplier = 1000;
    p.jitter = 0;
    backoff b(p, 3);
    for (int i = 0; i < 5; ++i) CHECK(b.next() == backoff::max_wait);
    p.initial = -5s;
    p.cap = -1s;
    backoff small(p, 3);
    CHECK(small.next() == 1ns);
    // And through the engine: a wait_forever acquisition with such a policy
    // asks for a wait that a driver can add to the clock without overflow.
    fixture f;
    f.policy.initial = std::chrono::nanoseconds::max();
    f.policy.cap = std::chrono::nanoseconds::max();
    auto e = f.make(filelock::wait_forever);
    const auto a = e.resume(f.now);
    REQUIRE(!a.is_done());
    CHECK(a.delay <= backoff::max_wait);
    CHECK(a.delay > 0ns);
}
