// SPDX-License-Identifier: MIT
// The acquire state machine, driven by a fake clock and a scripted backend:
// the protocol, tested once for every driver.

#include <filelock/detail/acquire.hpp>

#include <catch2/catch.hpp>

#include <deque>
#include <limits>
#include <vector>

using namespace std::chrono_literals;
using filelock::errc;
using filelock::detail::action;
using filelock::detail::backoff;
using filelock::detail::input;
using filelock::detail::wake_reason;
using sclock = filelock::detail::clock;

namespace {

// Answers each attempt from a script; contention once the script runs out.
struct scripted_backend {
    std::deque<std::error_code>* script;
    int* attempts;
    bool watch = false;  // wake_on_release
    bool queue = false;  // queues
    unsigned long long ino = 1;
    int* drops = nullptr;
    bool* released = nullptr;
    bool inherited = false;
    std::deque<std::error_code>* replies = nullptr;

    static constexpr sclock::duration quick_retries[] = {20us, 100us, 500us};

    std::error_code try_acquire() {
        ++*attempts;
        if (script->empty()) return errc::locked;
        auto ec = script->front();
        script->pop_front();
        return ec;
    }
    std::error_code on_reply(std::error_code transport) {
        if (transport) return transport;
        auto ec = replies->front();
        replies->pop_front();
        return ec;
    }
    void drop_file() {
        if (drops) ++*drops;
    }
    void release_won() {
        if (released) *released = true;
    }
    bool won_inherited() const { return inherited; }
    bool identity(filelock::detail::lock_identity& id) const {
        id = {7, ino, 0};
        return true;
    }
    bool wake_on_release() const { return watch; }
    bool queues() const { return queue; }
};

using machine = filelock::detail::acquire<scripted_backend>;

struct fixture {
    std::deque<std::error_code> script;
    int attempts = 0;
    int drops = 0;
    bool released = false;
    sclock::time_point now = sclock::time_point() + 1000h;
    filelock::backoff_policy policy{};

    scripted_backend backend(bool watch = false, bool queue = false) {
        return scripted_backend{&script, &attempts, watch, queue, 1, &drops, &released};
    }
    machine make(sclock::duration timeout, std::uint64_t seed = 42) {
        return machine(backend(), timeout, policy, seed);
    }
    action start(machine& m) { return m.resume({wake_reason::start, now}); }
    action at(machine& m, wake_reason why = wake_reason::timer) { return m.resume({why, now}); }
    // Sleeps the wait out, then resumes: the wait's length.
    sclock::duration sleep(const action& a) {
        const auto d = a.until - now;
        now = a.until;
        return d;
    }
};

// A queue place that records its wakes.
struct test_place final : filelock::detail::queue_waiter {
    int wakes = 0;
    void wake() noexcept override { ++wakes; }
    ~test_place() override = default;
};

const char domain_a = 0, domain_b = 0;

}  // namespace

// Runs the machine to its end on the fake clock, recording every wait.
std::vector<sclock::duration> run_out(fixture& f, machine& m, action& a) {
    std::vector<sclock::duration> waits;
    a = f.start(m);
    while (!a.is_done()) {
        REQUIRE(a.what == action::kind::wait);
        waits.push_back(f.sleep(a));
        a = f.at(m);
    }
    return waits;
}

TEST_CASE("acquire: an uncontended lock is won on the first attempt") {
    fixture f;
    f.script = {std::error_code()};
    auto m = f.make(5s);
    const auto a = f.start(m);
    CHECK(a.is_done());
    CHECK(!a.ec);
    CHECK(f.attempts == 1);
}

TEST_CASE("acquire: timeout 0 is exactly one attempt and reports errc::timeout") {
    fixture f;
    auto m = f.make(0s);
    const auto a = f.start(m);
    CHECK(a.is_done());
    CHECK(a.ec == errc::timeout);
    CHECK(a.ec == std::errc::timed_out);
    CHECK(f.attempts == 1);
}

TEST_CASE("acquire: a negative timeout is one attempt too") {
    fixture f;
    auto m = f.make(-5s);
    CHECK(f.start(m).ec == errc::timeout);
    CHECK(f.attempts == 1);
}

TEST_CASE("acquire: a real error ends the acquisition at once, without retries") {
    fixture f;
    f.script = {std::make_error_code(std::errc::permission_denied)};
    auto m = f.make(10s);
    const auto a = f.start(m);
    CHECK(a.is_done());
    CHECK(a.ec == std::errc::permission_denied);
    CHECK(f.attempts == 1);
}

TEST_CASE("acquire: an error after some contention is reported as that error") {
    fixture f;
    f.script = {errc::locked, errc::locked, std::make_error_code(std::errc::no_lock_available)};
    auto m = f.make(10s);
    action a;
    run_out(f, m, a);
    CHECK(a.ec == std::errc::no_lock_available);
    CHECK(f.attempts == 3);
}

TEST_CASE("acquire: contention waits within the exponential bounds, then wins") {
    fixture f;
    f.policy = {1ms, 2.0, 64ms, 1.0};
    f.script = {errc::locked, errc::locked, errc::locked, errc::locked, std::error_code()};
    auto m = f.make(10s);
    action a;
    const auto waits = run_out(f, m, a);
    CHECK(!a.ec);
    REQUIRE(waits.size() == 4);
    sclock::duration ceiling = 1ms;
    for (auto w : waits) {
        CHECK(w > 0ns);
        CHECK(w <= ceiling);
        ceiling *= 2;
    }
}

TEST_CASE("acquire: the backoff is capped") {
    filelock::backoff_policy p{1ms, 3.0, 20ms, 0.0};  // no jitter: exact ceilings
    backoff b(p, 7);
    std::vector<sclock::duration> seq;
    for (int i = 0; i < 6; ++i) seq.push_back(b.next());
    CHECK(seq == std::vector<sclock::duration>{1ms, 3ms, 9ms, 20ms, 20ms, 20ms});
}

TEST_CASE("acquire: full jitter spreads waits over [0, ceiling]") {
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

TEST_CASE("acquire: different seeds give different wait sequences") {
    filelock::backoff_policy p{};
    backoff a(p, 1), b(p, 2);
    bool differ = false;
    for (int i = 0; i < 8; ++i) differ |= a.next() != b.next();
    CHECK(differ);
}

TEST_CASE("acquire: waits are clamped to the deadline and one last attempt is made there") {
    fixture f;
    f.policy = {40ms, 2.0, 1s, 0.0};
    auto m = f.make(100ms);
    const auto start = f.now;
    action a;
    const auto waits = run_out(f, m, a);
    CHECK(a.ec == errc::timeout);
    // 40 ms, then 80 ms clamped to the 60 ms left, then the attempt at the deadline.
    CHECK(waits == std::vector<sclock::duration>{40ms, 60ms});
    CHECK(f.now - start == 100ms);
    CHECK(f.attempts == 3);
}

TEST_CASE("acquire: the lock won at the final attempt is delivered, not a timeout") {
    fixture f;
    f.policy = {40ms, 2.0, 1s, 0.0};
    f.script = {errc::locked, errc::locked, std::error_code()};
    auto m = f.make(100ms);
    action a;
    run_out(f, m, a);
    CHECK(!a.ec);
    CHECK(f.attempts == 3);
}

TEST_CASE("acquire: a driver that wakes late still makes one attempt before timing out") {
    fixture f;
    f.script = {errc::locked, std::error_code()};
    auto m = f.make(10ms);
    auto a = f.start(m);
    REQUIRE(!a.is_done());
    f.now += 1h;  // the loop was busy
    a = f.at(m);
    CHECK(a.is_done());
    CHECK(!a.ec);
}

TEST_CASE("acquire: wait_forever never times out") {
    fixture f;
    f.policy = {1ms, 2.0, 100ms, 1.0};
    auto m = f.make(filelock::wait_forever);
    auto a = f.start(m);
    for (int i = 0; i < 10000; ++i) {
        REQUIRE(!a.is_done());
        REQUIRE(a.until - f.now <= 100ms);
        f.now += 24h;
        a = f.at(m);
    }
    f.script = {std::error_code()};
    CHECK(!f.at(m).ec);
}

TEST_CASE("acquire: a time near the clock's end does not overflow the deadline") {
    fixture f;
    f.now = sclock::time_point::max() - 1s;
    auto m = f.make(1h);
    const auto a = f.start(m);
    CHECK(!a.is_done());
}

// A machine whose backend watches for release events, armed.
action start_watched(fixture& f, machine& m) {
    auto a = f.start(m);
    REQUIRE(a.what == action::kind::watch);
    return m.resume({wake_reason::watched, f.now});
}

TEST_CASE("acquire: a failed attempt after a release event is retried quickly, then backs off") {
    fixture f;
    f.policy = {50ms, 2.0, 1s, 0.0};
    machine m(f.backend(true), 10s, f.policy, 42);
    auto a = start_watched(f, m);
    REQUIRE(a.what == action::kind::wait);
    CHECK(a.on_release);
    CHECK(a.until - f.now == 200ms);  // no event yet: the stretched fallback
    f.now += 10ms;                    // an event ends the wait early
    std::vector<sclock::duration> waits;
    a = f.at(m, wake_reason::release);
    for (int i = 0; i < 4; ++i) {
        REQUIRE(a.what == action::kind::wait);
        waits.push_back(f.sleep(a));
        a = f.at(m);
    }
    CHECK(waits == std::vector<sclock::duration>{20us, 100us, 500us, 400ms});
}

TEST_CASE("acquire: quick retries never pass the deadline") {
    fixture f;
    machine m(f.backend(true), 50us, f.policy, 42);
    auto a = start_watched(f, m);
    REQUIRE(a.what == action::kind::wait);
    a = f.at(m, wake_reason::release);
    CHECK(a.until - f.now == 20us);
    f.sleep(a);
    a = f.at(m);
    CHECK(a.until - f.now == 30us);  // clamped: 100 us would pass the deadline
    f.sleep(a);
    CHECK(f.at(m).ec == errc::timeout);
}

TEST_CASE("acquire: while release events are watched, the fallback waits are stretched") {
    fixture f;
    f.policy = {10ms, 2.0, 100ms, 0.0};
    auto plain = f.make(1h);
    machine watched(f.backend(true), 1h, f.policy, 42);
    std::vector<sclock::duration> a, b;
    auto x = f.start(plain);
    auto y = start_watched(f, watched);
    for (int i = 0; i < 6; ++i) {
        a.push_back(x.until - f.now);
        b.push_back(y.until - f.now);
        x = f.at(plain);
        y = f.at(watched);
    }
    CHECK(a == std::vector<sclock::duration>{10ms, 20ms, 40ms, 80ms, 100ms, 100ms});
    CHECK(b == std::vector<sclock::duration>{40ms, 80ms, 160ms, 320ms, 400ms, 400ms});
}

TEST_CASE("acquire: NaN and infinite backoff fields are replaced, never converted") {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const double inf = std::numeric_limits<double>::infinity();
    for (const double mul : {nan, inf, -inf}) {
        CAPTURE(mul);
        filelock::backoff_policy p;
        p.initial = 1ms;
        p.cap = 100ms;
        p.jitter = 0;
        p.multiplier = mul;
        backoff b(p, 1);
        CHECK(b.next() == 1ms);
        // NaN falls back to 2, +inf is clamped to 1000 (the cap at once),
        // -inf to 1 (no growth): never a collapse to nanoseconds.
        const auto second = b.next();
        CHECK(second == (mul != mul ? 2ms : mul > 0 ? 100ms : 1ms));
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

TEST_CASE("acquire: huge or negative backoff durations are clamped to [1 ns, 1 h]") {
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
    // And through the machine: a wait_forever acquisition with such a policy
    // asks for a wait that a driver can add to the clock without overflow.
    fixture f;
    f.policy.initial = std::chrono::nanoseconds::max();
    f.policy.cap = std::chrono::nanoseconds::max();
    auto m = f.make(filelock::wait_forever);
    const auto a = f.start(m);
    REQUIRE(!a.is_done());
    CHECK(a.until - f.now <= backoff::max_wait);
    CHECK(a.until - f.now > 0ns);
}

// --- the watch: armed before the attempt that it must not miss -------------

TEST_CASE("acquire: at the first contention it asks for a watch, then attempts again") {
    // (757dff8 attempted, then watched, then slept: a release in between was
    // lost and the waiter slept its stretched fallback.)
    fixture f;
    machine m(f.backend(true), 10s, f.policy, 42);
    auto a = f.start(m);
    CHECK(a.what == action::kind::watch);
    CHECK(f.attempts == 1);
    f.script = {std::error_code()};  // released between the attempt and the watch
    a = m.resume({wake_reason::watched, f.now});
    CHECK(a.is_done());
    CHECK(!a.ec);
    CHECK(f.attempts == 2);
    CHECK(m.watching());
}

TEST_CASE("acquire: without a watch the backoff alone, unstretched") {
    fixture f;
    f.policy = {10ms, 2.0, 100ms, 0.0};
    machine m(f.backend(true), 10s, f.policy, 42);
    REQUIRE(f.start(m).what == action::kind::watch);
    const auto a = m.resume({wake_reason::unwatched, f.now});
    REQUIRE(a.what == action::kind::wait);
    CHECK(!a.on_release);
    CHECK(a.until - f.now == 10ms);
    CHECK(!m.watching());
}

TEST_CASE("acquire: a moved file is dropped and watched anew before the next attempt") {
    fixture f;
    machine m(f.backend(true), 10s, f.policy, 42);
    REQUIRE(start_watched(f, m).what == action::kind::wait);
    const int before = f.attempts;
    auto a = f.at(m, wake_reason::moved);
    CHECK(f.drops == 1);
    CHECK(a.what == action::kind::watch);
    CHECK(f.attempts == before);  // not yet: the watch first
    a = m.resume({wake_reason::watched, f.now});
    CHECK(f.attempts == before + 1);
    CHECK(a.what == action::kind::wait);
}

TEST_CASE("acquire: a single attempt never asks for a watch or a queue") {
    fixture f;
    test_place place;
    scripted_backend b = f.backend(true, true);
    machine m(b, 0s, f.policy, 42);
    m.use_queue(&place, &domain_a);
    const auto a = f.start(m);
    CHECK(a.ec == errc::timeout);
    CHECK(!m.queued());
    CHECK(filelock::detail::local_waiters() == 0);
}

// --- cancellation and delivery ---------------------------------------------

TEST_CASE("acquire: a cancellation while waiting ends it with the driver's code") {
    fixture f;
    auto m = f.make(10s);
    REQUIRE(!f.start(m).is_done());
    const auto ec = std::make_error_code(std::errc::operation_canceled);
    const auto a = m.resume({wake_reason::cancel, f.now, ec});
    CHECK(a.is_done());
    CHECK(a.ec == ec);
    CHECK(!f.released);
}

TEST_CASE("acquire: a cancellation after the win releases the lock: delivered or released") {
    fixture f;
    f.script = {std::error_code()};
    auto m = f.make(10s);
    REQUIRE(!f.start(m).ec);
    const auto ec = std::make_error_code(std::errc::operation_canceled);
    const auto a = m.resume({wake_reason::cancel, f.now, ec});
    CHECK(a.ec == ec);
    CHECK(f.released);
    // And once more: nothing left to release, the outcome stays.
    f.released = false;
    CHECK(m.resume({wake_reason::deliver, f.now}).ec == ec);
    CHECK(!f.released);
}

TEST_CASE("acquire: a lock won before a fork and delivered in the child is attempted again") {
    fixture f;
    f.script = {std::error_code(), errc::locked};
    auto b = f.backend();
    b.inherited = true;
    machine m(b, 10s, f.policy, 42);
    REQUIRE(!f.start(m).ec);
    const auto a = m.resume({wake_reason::deliver, f.now});
    CHECK(a.what == action::kind::wait);
    CHECK(f.attempts == 2);
}

TEST_CASE("acquire: delivery of a lock of our own is the outcome") {
    fixture f;
    f.script = {std::error_code()};
    auto m = f.make(10s);
    REQUIRE(!f.start(m).ec);
    const auto a = m.resume({wake_reason::deliver, f.now});
    CHECK(a.is_done());
    CHECK(!a.ec);
    CHECK(f.attempts == 1);
}

// --- a backend whose attempt is a chain of round trips ---------------------

TEST_CASE("acquire: an attempt that is I/O asks to send, and the reply decides") {
    fixture f;
    const auto in_progress = std::make_error_code(std::errc::operation_in_progress);
    std::deque<std::error_code> replies = {in_progress, errc::locked, std::error_code()};
    f.script = {in_progress, in_progress};
    auto b = f.backend();
    b.replies = &replies;
    machine m(b, 10s, f.policy, 42);
    auto a = f.start(m);
    CHECK(a.what == action::kind::send);
    a = m.resume({wake_reason::reply, f.now});
    CHECK(a.what == action::kind::send);  // a second round trip
    a = m.resume({wake_reason::reply, f.now});
    CHECK(a.what == action::kind::wait);  // contention: the backoff
    f.sleep(a);
    a = f.at(m);
    CHECK(a.what == action::kind::send);
    a = m.resume({wake_reason::reply, f.now});
    CHECK(a.is_done());
    CHECK(!a.ec);
}

TEST_CASE("acquire: a transport failure ends the acquisition as that error") {
    fixture f;
    std::deque<std::error_code> replies;
    f.script = {std::make_error_code(std::errc::operation_in_progress)};
    auto b = f.backend();
    b.replies = &replies;
    machine m(b, 10s, f.policy, 42);
    REQUIRE(f.start(m).what == action::kind::send);
    const auto a =
        m.resume({wake_reason::reply, f.now, std::make_error_code(std::errc::connection_refused)});
    CHECK(a.ec == std::errc::connection_refused);
}

// --- the local queue --------------------------------------------------------

struct queued_pair {
    fixture f;
    test_place pa, pb;
    std::deque<std::error_code> script_b;
    int attempts_b = 0;
    machine a, b;
    queued_pair(const void* da, const void* db, unsigned long long ino_b = 1)
        : a(f.backend(false, true), 10s, f.policy, 1),
          b(scripted_backend{&script_b, &attempts_b, false, true, ino_b}, 10s, f.policy, 2) {
        a.use_queue(&pa, da);
        b.use_queue(&pb, db);
    }
};

TEST_CASE("acquire: behind the head of its domain a waiter makes no attempt until its turn") {
    queued_pair q(&domain_a, &domain_a);
    auto x = q.f.start(q.a);  // contention: a joins the queue, its head
    REQUIRE(x.what == action::kind::wait);
    CHECK(q.a.queued());
    auto y = q.b.resume({wake_reason::start, q.f.now});  // the domain has a waiter: b lines up
    REQUIRE(y.what == action::kind::wait);
    CHECK(q.attempts_b == 0);
    CHECK(y.until == q.b.deadline());  // only its turn (or the deadline) ends it
    CHECK(!y.on_release);
    // A release event that reaches b is not its turn.
    y = q.b.resume({wake_reason::release, q.f.now});
    CHECK(y.what == action::kind::wait);
    CHECK(q.attempts_b == 0);
    // a wins and leaves: b's turn.
    q.f.script = {std::error_code()};
    REQUIRE(!q.f.at(q.a).ec);
    CHECK(q.pb.wakes == 1);
    q.script_b = {std::error_code()};
    CHECK(!q.b.resume({wake_reason::turn, q.f.now}).ec);
    CHECK(q.attempts_b == 1);
    CHECK(filelock::detail::local_waiters() == 0);
}

TEST_CASE("acquire: a waiter behind a head of another domain attempts on its own") {
    // (757dff8: one queue per path for the whole process, so a waiter behind
    // the head of a stopped loop waited on a free lock until its deadline.)
    queued_pair q(&domain_a, &domain_b);
    REQUIRE(q.f.start(q.a).what == action::kind::wait);
    q.script_b = {std::error_code()};
    const auto y = q.b.resume({wake_reason::start, q.f.now});
    CHECK(y.is_done());
    CHECK(!y.ec);
    CHECK(q.attempts_b == 1);
}

TEST_CASE("acquire: a waiter for another file (same spelling or not) never queues behind") {
    // (757dff8 keyed queues by the path as spelled.)
    queued_pair q(&domain_a, &domain_a, 2);
    REQUIRE(q.f.start(q.a).what == action::kind::wait);
    q.script_b = {std::error_code()};
    const auto y = q.b.resume({wake_reason::start, q.f.now});
    CHECK(!y.ec);
    CHECK(q.attempts_b == 1);
}

TEST_CASE("acquire: a queued waiter times out at its deadline and leaves the queue") {
    queued_pair q(&domain_a, &domain_a);
    REQUIRE(q.f.start(q.a).what == action::kind::wait);
    auto y = q.b.resume({wake_reason::start, q.f.now});
    REQUIRE(y.what == action::kind::wait);
    q.f.now = y.until;
    y = q.b.resume({wake_reason::timer, q.f.now});
    CHECK(y.ec == errc::timeout);
    CHECK(q.attempts_b == 0);
    CHECK(!q.b.queued());
    CHECK(filelock::detail::local_waiters() == 1);  // a only
    (void)q.a.resume({wake_reason::cancel, q.f.now, errc::timeout});
    CHECK(filelock::detail::local_waiters() == 0);
}

TEST_CASE("acquire: a machine destroyed while queued leaves its queue") {
    fixture f;
    test_place p;
    {
        machine m(f.backend(false, true), 10s, f.policy, 1);
        m.use_queue(&p, &domain_a);
        REQUIRE(f.start(m).what == action::kind::wait);
        CHECK(filelock::detail::local_waiters() == 1);
    }
    CHECK(filelock::detail::local_waiters() == 0);
}
