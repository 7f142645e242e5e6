// SPDX-License-Identifier: MIT
// etcd's Mutex protocol as a backend of the acquire state machine, without
// I/O: scripted answers in, the requests and decisions out (a fake clock).
#include "../src/etcd/held_watch.hpp"
#include "../src/etcd/inspect.hpp"
#include "../src/etcd/lock_backend.hpp"

#include <catch2/catch.hpp>
#if defined(__linux__)
#include <time.h>
#endif

using namespace std::chrono_literals;
using namespace filelock::etcd::detail;
using filelock::detail::action;
using filelock::detail::wake_reason;

namespace {

constexpr std::int64_t lease = 0x2040a238;

struct fixture {
    claims names;
    int session_tag = 0;
    lease_state live{lease, lease_clock::time_point::max()};
    filelock::detail::clock::time_point now{};
    std::unique_ptr<etcd_acquire> m;

    explicit fixture(std::chrono::nanoseconds timeout = 10s, lock_kind kind = {}) {
        m = std::make_unique<etcd_acquire>(
            lock_backend(names, &session_tag, "job", " 1@h\n", live, kind), timeout,
            filelock::backoff_policy{}, 7);
    }
    lock_backend& b() { return m->backend(); }
    action resume(wake_reason why, std::error_code ec = {}) {
        auto a = m->resume({why, now, ec});
        // Contention with nothing to watch yet (a retried failure): the
        // driver reports that no watch was armed.
        if (a.what == action::kind::watch && b().watch_key().empty())
            a = m->resume({wake_reason::unwatched, now});
        return a;
    }
    action reply(const json& j, long status = 200) {
        http_reply r;
        r.status = status;
        r.body = j.dump();
        r.endpoint = "http://etcd:2379";
        b().set_reply(std::move(r));
        return resume(wake_reason::reply);
    }
};

json kv_json(const std::string& key, std::int64_t create_rev, const std::string& value = "") {
    return {{"key", base64(key)},
            {"create_revision", std::to_string(create_rev)},
            {"value", base64(value)}};
}
json range(std::vector<json> kvs) {
    json r = {{"response_range", json::object()}};
    if (!kvs.empty()) r["response_range"]["kvs"] = kvs;
    return r;
}
json header(std::int64_t rev) { return {{"revision", std::to_string(rev)}}; }
const std::string mine = "job/" + hex(lease);

}  // namespace

TEST_CASE("etcd protocol: an uncontended lock is one transaction, won at its revision") {
    fixture f;
    auto a = f.resume(wake_reason::start);
    REQUIRE(a.what == action::kind::send);
    CHECK(f.b().path() == "/v3/kv/txn");
    const json body = json::parse(f.b().body());
    CHECK(body["compare"][0]["target"] == "CREATE");
    CHECK(body["success"][0]["request_put"]["lease"] == std::to_string(lease));
    a = f.reply({{"header", header(10)},
                 {"succeeded", true},
                 {"responses", {{{"response_put", json::object()}}, range({kv_json(mine, 10)})}}});
    REQUIRE(a.is_done());
    CHECK_FALSE(a.ec);
    CHECK(f.b().revision() == 10);
    CHECK(f.b().won_at() == 10);
}

TEST_CASE(
    "etcd protocol: a waiter reads its predecessor, watches the prefix, and wins on the "
    "holder's deletion without another request") {
    fixture f;
    f.resume(wake_reason::start);
    auto a =
        f.reply({{"header", header(12)},
                 {"succeeded", true},
                 {"responses",
                  {{{"response_put", json::object()}}, range({kv_json("job/1", 5, " 9@x\n")})}}});
    REQUIRE(a.what == action::kind::send);  // the predecessor, at once
    CHECK(json::parse(f.b().body())["success"][0]["request_range"]["max_create_revision"] == "11");
    a = f.reply(
        {{"header", header(12)},
         {"succeeded", true},
         {"responses", {range({kv_json("job/1", 5)}), range({kv_json("job/1", 5, " 9@x\n")})}}});
    REQUIRE(a.what == action::kind::watch);
    CHECK(f.b().watch_key() == "job/");
    CHECK(f.b().watch_revision() == 13);  // no deletion after the answer is missed
    CHECK(f.b().holder() == " 9@x\n");
    f.b().watch_armed();
    a = f.resume(wake_reason::watched);
    REQUIRE(a.what == action::kind::send);
    a = f.reply({{"header", header(12)},
                 {"succeeded", true},
                 {"responses", {range({kv_json("job/1", 5)}), range({kv_json("job/1", 5)})}}});
    REQUIRE(a.what == action::kind::wait);
    CHECK(a.on_release);
    // Another waiter's key is not a release; the holder's deletion is.
    CHECK_FALSE(f.b().on_delete("job/other", 14));
    CHECK(f.b().on_delete("job/1", 15));
    a = f.resume(wake_reason::release);
    REQUIRE(a.is_done());
    CHECK_FALSE(a.ec);
    CHECK(f.b().won_at() == 15);
}

TEST_CASE("etcd protocol: a predecessor that was not the holder means another look") {
    fixture f;
    f.resume(wake_reason::start);
    f.reply({{"header", header(12)},
             {"succeeded", true},
             {"responses", {{{"response_put", json::object()}}, range({kv_json("job/1", 5)})}}});
    auto a = f.reply({{"header", header(12)},
                      {"succeeded", true},
                      {"responses", {range({kv_json("job/2", 8)}), range({kv_json("job/1", 5)})}}});
    REQUIRE(a.what == action::kind::watch);
    f.b().watch_armed();
    f.resume(wake_reason::watched);
    a = f.reply({{"header", header(12)},
                 {"succeeded", true},
                 {"responses", {range({kv_json("job/2", 8)}), range({kv_json("job/1", 5)})}}});
    REQUIRE(a.what == action::kind::wait);
    CHECK(f.b().on_delete("job/2", 14));
    a = f.resume(wake_reason::release);
    CHECK(a.what == action::kind::send);  // job/1 may still hold it
}

TEST_CASE("etcd protocol: a waiter whose key vanished never wins (etcd issue #9921)") {
    fixture f;
    f.resume(wake_reason::start);
    f.reply({{"header", header(12)},
             {"succeeded", true},
             {"responses", {{{"response_put", json::object()}}, range({kv_json("job/1", 5)})}}});
    // Our key is gone: the guarded transaction fails.
    auto a = f.reply({{"header", header(20)}, {"responses", json::array()}});
    REQUIRE(a.is_done());
    CHECK(a.ec == filelock::etcd::errc::lost);
}

TEST_CASE("etcd protocol: the holder's deletion after our own key's is not a win") {
    fixture f;
    f.resume(wake_reason::start);
    f.reply({{"header", header(12)},
             {"succeeded", true},
             {"responses", {{{"response_put", json::object()}}, range({kv_json("job/1", 5)})}}});
    f.reply({{"header", header(12)},
             {"succeeded", true},
             {"responses", {range({kv_json("job/1", 5)}), range({kv_json("job/1", 5)})}}});
    f.b().watch_armed();
    f.resume(wake_reason::watched);
    f.reply({{"header", header(12)},
             {"succeeded", true},
             {"responses", {range({kv_json("job/1", 5)}), range({kv_json("job/1", 5)})}}});
    CHECK(f.b().on_delete(mine, 13));  // our lease expired first
    CHECK(f.b().on_delete("job/1", 14));
    auto a = f.resume(wake_reason::release);
    REQUIRE(a.what == action::kind::send);  // a look, not a win
    a = f.reply({{"header", header(14)}, {"responses", json::array()}});
    CHECK(a.ec == filelock::etcd::errc::lost);
}

namespace {
// A waiter behind job/1 (the holder), with its watch armed, waiting.
void line_up(fixture& f) {
    f.resume(wake_reason::start);
    f.reply({{"header", header(12)},
             {"succeeded", true},
             {"responses", {{{"response_put", json::object()}}, range({kv_json("job/1", 5)})}}});
    f.reply({{"header", header(12)},
             {"succeeded", true},
             {"responses", {range({kv_json("job/1", 5)}), range({kv_json("job/1", 5)})}}});
    f.b().watch_armed();
    f.resume(wake_reason::watched);
    const auto a =
        f.reply({{"header", header(12)},
                 {"succeeded", true},
                 {"responses", {range({kv_json("job/1", 5)}), range({kv_json("job/1", 5)})}}});
    REQUIRE(a.what == action::kind::wait);
}
}  // namespace

TEST_CASE("etcd protocol: a deletion read after the lease deadline never wins (etcd #19597)") {
    // A paused waiter (or one behind a stalled member) reads the holder's
    // deletion after its own lease could have expired on the server.
    fixture f;
    line_up(f);
    f.live.deadline = lease_clock::now() - 1ms;
    CHECK(f.b().on_delete("job/1", 15));
    const auto a = f.resume(wake_reason::release);
    REQUIRE(a.is_done());
    CHECK(a.ec == filelock::etcd::errc::lost);
    CHECK(f.b().lease_gone());  // the driver lines up again on a new lease
    CHECK(f.b().won_at() == 0);
}

TEST_CASE("etcd protocol: a session that gave its lease up wins nothing on it") {
    fixture f;
    line_up(f);
    f.live.id = 0;  // lost (the lost timer fired, a keep-alive said TTL 0)
    CHECK(f.b().on_delete("job/1", 15));
    const auto a = f.resume(wake_reason::release);
    REQUIRE(a.is_done());
    CHECK(a.ec == filelock::etcd::errc::lost);
}

TEST_CASE("etcd protocol: a first-in-line answer read after the deadline is not a win") {
    SECTION("the create's answer") {
        fixture f;
        f.resume(wake_reason::start);
        f.live.deadline = lease_clock::now() - 1ms;
        const auto a = f.reply(
            {{"header", header(10)},
             {"succeeded", true},
             {"responses", {{{"response_put", json::object()}}, range({kv_json(mine, 10)})}}});
        REQUIRE(a.is_done());
        CHECK(a.ec == filelock::etcd::errc::lost);
        CHECK(f.b().lease_gone());
    }
    SECTION("a retried look at the predecessor") {
        fixture f;
        line_up(f);
        auto a = f.resume(wake_reason::timer);  // the fallback timer: another look
        REQUIRE(a.what == action::kind::send);
        f.live.deadline = lease_clock::now() - 1ms;
        a = f.reply({{"header", header(16)},
                     {"succeeded", true},
                     {"responses", {range({}), range({kv_json(mine, 12)})}}});
        REQUIRE(a.is_done());
        CHECK(a.ec == filelock::etcd::errc::lost);
    }
    SECTION("the same answers before the deadline win") {
        fixture f;
        line_up(f);
        f.live.deadline = lease_clock::now() + 1h;
        CHECK(f.b().on_delete("job/1", 15));
        const auto a = f.resume(wake_reason::release);
        REQUIRE(a.is_done());
        CHECK_FALSE(a.ec);
        CHECK(f.b().won_at() == 15);
    }
}

TEST_CASE("etcd protocol: a key left by an earlier holder is deleted, never adopted") {
    fixture f;
    f.resume(wake_reason::start);
    auto a = f.reply({{"header", header(30)},
                      {"responses", {range({kv_json(mine, 9)}), range({kv_json(mine, 9)})}}});
    REQUIRE(a.what == action::kind::send);
    const json del = json::parse(f.b().body());
    CHECK(del["compare"][0]["create_revision"] == "9");
    CHECK(del["success"][0].contains("request_delete_range"));
    a = f.reply({{"header", header(31)}, {"succeeded", true}, {"responses", json::array()}});
    REQUIRE(a.what == action::kind::send);  // create ours anew
    a = f.reply({{"header", header(32)},
                 {"succeeded", true},
                 {"responses", {{{"response_put", json::object()}}, range({kv_json(mine, 32)})}}});
    REQUIRE(a.is_done());
    CHECK(f.b().revision() == 32);  // a new fencing token, not 9 again
}

TEST_CASE("etcd protocol: a lost answer to our create is adopted on the next attempt") {
    fixture f;
    f.resume(wake_reason::start);
    auto a = f.resume(wake_reason::reply, filelock::etcd::errc::request_timeout);
    if (a.what == action::kind::wait) {  // transient: retried
        f.now = a.until;
        a = f.resume(wake_reason::timer);
    }
    REQUIRE(a.what == action::kind::send);
    a = f.reply({{"header", header(40)},
                 {"responses", {range({kv_json(mine, 33)}), range({kv_json(mine, 33)})}}});
    REQUIRE(a.is_done());
    CHECK_FALSE(a.ec);
    CHECK(f.b().revision() == 33);
}

TEST_CASE("etcd protocol: errors are themselves, transient ones ride to the deadline") {
    SECTION("a missing lease") {
        fixture f;
        f.resume(wake_reason::start);
        auto a = f.reply({{"error", "etcdserver: requested lease not found"}, {"code", 5}}, 400);
        REQUIRE(a.is_done());
        CHECK(a.ec == filelock::etcd::errc::lost);
        CHECK(f.b().lease_gone());
    }
    SECTION("refused credentials") {
        fixture f;
        f.resume(wake_reason::start);
        auto a = f.reply({{"error", "etcdserver: permission denied"}, {"code", 7}}, 403);
        REQUIRE(a.is_done());
        CHECK(a.ec == filelock::etcd::errc::auth);
    }
    SECTION("a leader election until the deadline") {
        fixture f(1s);
        f.resume(wake_reason::start);
        action a;
        int sends = 0, waits = 0;
        for (int i = 0; i < 10000; ++i) {
            a = f.reply({{"error", "etcdserver: no leader"}, {"code", 14}}, 503);
            ++sends;
            while (a.what == action::kind::wait) {
                ++waits;
                f.now = a.until;
                a = f.resume(wake_reason::timer);
            }
            if (a.is_done()) break;
            REQUIRE(a.what == action::kind::send);
        }
        REQUIRE(a.is_done());
        CHECK(a.ec == filelock::errc::timeout);
        CHECK(sends > 2);
        CHECK(waits > 1);  // backed off, not spinning
        CHECK(f.b().why() == "etcdserver: no leader");
    }
    SECTION("malformed JSON") {
        fixture f;
        f.resume(wake_reason::start);
        f.b().set_reply({{}, 200, "{\"header\": ", "http://etcd:2379", {}});
        auto a = f.resume(wake_reason::reply);
        // A complete answer that is not etcd's: reported, not retried.
        REQUIRE(a.is_done());
        CHECK(a.ec == filelock::etcd::errc::bad_reply);
        CHECK(f.b().why().find("JSON") != std::string::npos);
    }
}

TEST_CASE("etcd protocol: a cut connection and a 5xx are retried, a 4xx is not") {
    fixture f;
    f.resume(wake_reason::start);
    auto a = f.resume(wake_reason::reply, filelock::etcd::errc::bad_reply);  // cut mid-answer
    CHECK_FALSE(a.is_done());
    fixture g;
    g.resume(wake_reason::start);
    a = g.reply({{"x", 1}}, 502);
    CHECK_FALSE(a.is_done());
    fixture h;
    h.resume(wake_reason::start);
    a = h.reply({{"x", 1}}, 404);
    REQUIRE(a.is_done());
    CHECK(a.ec == filelock::etcd::errc::http_status);
}

TEST_CASE("etcd protocol: a name held by the session is local contention, no request") {
    fixture f;
    REQUIRE(f.names.claim(mine));  // the session's Mutex key of the name
    auto a = f.resume(wake_reason::start);
    REQUIRE(a.what != action::kind::send);
    CHECK_FALSE(f.b().claimed());
    f.names.unclaim(mine);
}

// The session's lease without I/O (src/etcd/lease.hpp).

TEST_CASE("etcd session: ownership lasts from the renewing request's send + TTL - margin") {
    using clock = lease_clock;
    const clock::time_point t0{};
    lease_keeper k(10s, 1000ms);
    CHECK(k.id() == 0);
    CHECK_FALSE(k.state().live(lease, t0));
    k.granted(lease, t0, 10s);
    CHECK(k.id() == lease);
    CHECK(k.deadline() == t0 + 9s);
    CHECK(k.state().live(lease, t0 + 8999ms));
    CHECK_FALSE(k.state().live(lease, t0 + 9s));
    CHECK_FALSE(k.state().live(lease + 1, t0));
    // An answered keep-alive moves the deadline from its send time, by the
    // TTL the server reports.
    CHECK(k.answered(t0 + 3s, false, 8) == lease_keeper::verdict::renewed);
    CHECK(k.deadline() == t0 + 3s + 8s - 1s);
    // A failure leaves it; the server saying the lease is gone ends it.
    CHECK(k.answered(t0 + 6s, true, -1) == lease_keeper::verdict::failed);
    CHECK(k.deadline() == t0 + 10s);
    CHECK(k.answered(t0 + 7s, false, 0) == lease_keeper::verdict::gone);
    CHECK(k.give_up() == lease);
    CHECK(k.id() == 0);
    CHECK_FALSE(k.state().live(lease, t0));
}

#if defined(__linux__)
TEST_CASE("etcd session: the lease's time counts a suspend (CLOCK_BOOTTIME, not monotonic)") {
    // etcd expires the lease while this machine is suspended; steady_clock
    // (CLOCK_MONOTONIC) does not count the suspend, so a deadline on it
    // still looked live after one longer than the TTL.
    const auto boot = [] {
        timespec ts{};
        ::clock_gettime(CLOCK_BOOTTIME, &ts);
        return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
    };
    const auto b0 = boot();
    const auto t = lease_clock::now().time_since_epoch();
    const auto b1 = boot();
    CHECK(b0 <= t);
    CHECK(t <= b1);
    // A deadline set before a suspend longer than the TTL: the boot time
    // after it is past the deadline, whatever monotonic time says.
    lease_keeper k(10s, 1000ms);
    const lease_clock::time_point sent{b0};
    k.granted(lease, sent, 10s);
    CHECK(k.state().live(lease, lease_clock::time_point{b1}));
    CHECK_FALSE(k.state().live(lease, lease_clock::time_point{b1 + 30s}));
}
#endif

TEST_CASE("etcd session: keep-alives every TTL/3 in milliseconds, the margin at most TTL/2") {
    using clock = lease_clock;
    const clock::time_point t0{};
    lease_keeper k(1s, 1000ms);
    k.granted(lease, t0, 1s);
    CHECK(k.next_keepalive(t0, false) == t0 + 333ms);  // whole seconds made it 0 s
    CHECK(k.deadline() == t0 + 500ms);                 // margin clamped to TTL/2
    k.granted(lease, t0, 60s);
    CHECK(k.next_keepalive(t0, false) == t0 + 20s);
    CHECK(k.next_keepalive(t0, true) == t0 + 1s);  // sooner after a failure
    CHECK(k.request_timeout() == 10s);
    // TTL 3 s, the deadline 2 s after a keep-alive's send: one that stalls
    // gives up at 0.5 s and the next goes 0.25 s later, to another member.
    k.granted(lease, t0, 3s);
    CHECK(k.request_timeout() == 500ms);
    CHECK(k.next_keepalive(t0, true) == t0 + 250ms);
    k.granted(lease, t0, 1s);
    CHECK(k.next_keepalive(t0, true) == t0 + 100ms);
}

TEST_CASE("etcd replies: grants, keep-alives and watch messages decoded") {
    auto reply = [](const std::string& body, long status = 200) {
        http_reply r;
        r.status = status;
        r.body = body;
        return r;
    };
    grant_reply g;
    std::string why;
    CHECK_FALSE(decode_grant(reply(R"({"ID":"7","TTL":"10"})"), g, why));
    CHECK(g.id == 7);
    CHECK(g.ttl == 10);
    CHECK(decode_grant(reply(R"({"ID":"7"})"), g, why) == filelock::etcd::errc::bad_reply);
    CHECK(decode_grant(reply(R"({"error":"etcdserver: no leader","code":14})", 503), g, why) ==
          filelock::etcd::errc::server);
    CHECK(transient(reply(R"({"error":"etcdserver: no leader","code":14})", 503),
                    filelock::etcd::errc::server));
    CHECK_FALSE(transient(reply(R"({"error":"etcdserver: leader? no","code":3})", 400),
                          filelock::etcd::errc::server));  // the code decides, not words
    std::int64_t ttl = 0;
    CHECK_FALSE(decode_keepalive(reply(R"({"result":{"ID":"7","TTL":"9"}})"), ttl, why));
    CHECK(ttl == 9);
    CHECK_FALSE(decode_keepalive(reply(R"({"result":{"ID":"7"}})"), ttl, why));
    CHECK(ttl == 0);  // expired: no TTL field
    CHECK(decode_keepalive(reply(R"({"nothing":1})"), ttl, why) == filelock::etcd::errc::bad_reply);

    auto m = decode_watch(R"({"result":{"header":{"revision":"12"},"created":true}})");
    CHECK(m.ok);
    CHECK(m.created);
    CHECK(m.revision == 12);
    m = decode_watch(R"({"result":{"header":{"revision":"15"},"events":[)"
                     R"({"kv":{"key":"am9iLzE=","mod_revision":"14"}},)"
                     R"({"type":"DELETE","kv":{"key":"am9iLzE=","mod_revision":"15"}}]}})");
    REQUIRE(m.deletions.size() == 1);  // the put is not a deletion
    CHECK(m.deletions[0].key == "job/1");
    CHECK(m.deletions[0].mod_revision == 15);
    m = decode_watch(
        R"({"result":{"events":[{"type":"DELETE","kv":{"key":"!!","mod_revision":"x"}}]}})");
    REQUIRE(m.deletions.size() == 1);
    CHECK_FALSE(m.deletions[0].key_ok);
    CHECK_FALSE(m.deletions[0].revision_ok);
    CHECK_FALSE(decode_watch("[1]").ok);
    CHECK(decode_watch(R"({"result":{"canceled":true}})").canceled);
}

TEST_CASE("etcd protocol: after a failure: line up again, time out, or report what happened") {
    using filelock::etcd::errc;
    fixture f;
    line_up(f);
    // A waiter's key or lease died under it: again while the deadline allows.
    auto v = f.b().after_failure(errc::lost, true, 0);
    CHECK(v.line_up_again);
    v = f.b().after_failure(errc::lost, false, 0);
    CHECK_FALSE(v.line_up_again);
    CHECK(v.outcome == filelock::errc::timeout);
    v = f.b().after_failure(errc::lost, true, lock_backend::max_restarts);
    CHECK_FALSE(v.line_up_again);
    CHECK(v.outcome == errc::lost);
    // Contention at the deadline, after answers: a timeout.
    CHECK(f.b().after_failure(filelock::errc::timeout, false, 0).outcome ==
          filelock::errc::timeout);
    // The key the waiter created is deleted, guarded by its revision.
    std::string path, body;
    REQUIRE(f.b().cleanup(path, body));
    CHECK(path == "/v3/kv/txn");
    CHECK(json::parse(body)["compare"][0]["create_revision"] == "12");

    // No endpoint ever answered: that failure, not contention.
    fixture g;
    g.resume(wake_reason::start);
    auto a = g.resume(wake_reason::reply, errc::request_timeout);
    CHECK_FALSE(a.is_done());
    CHECK(g.b().after_failure(filelock::errc::timeout, false, 0).outcome == errc::request_timeout);
    // Its create may have been applied with the answer lost: the key goes,
    // whatever its revision, but only while it is bound to our lease (a key
    // of that name on another lease is not ours: never deleted).
    REQUIRE(g.b().cleanup(path, body));
    CHECK(path == "/v3/kv/txn");
    json guarded = json::parse(body);
    REQUIRE(guarded["compare"].size() == 1);
    CHECK(guarded["compare"][0]["target"] == "LEASE");
    CHECK(guarded["compare"][0]["key"] == base64(mine));
    CHECK(guarded["compare"][0]["result"] == "EQUAL");
    CHECK(guarded["compare"][0]["lease"] == std::to_string(lease));
    CHECK(guarded["success"][0]["request_delete_range"]["key"] == base64(mine));
}

TEST_CASE("etcd protocol: a release is sent again on transient failures only, bounded") {
    http_reply cut;
    cut.ec = filelock::etcd::errc::connection_reset;
    CHECK(retry_release(cut, cut.ec, 0, true));
    CHECK_FALSE(retry_release(cut, cut.ec, 50, true));
    CHECK_FALSE(retry_release(cut, cut.ec, 0, false));  // the lease is gone: the key with it
    http_reply refused;
    refused.status = 401;
    refused.body = R"({"error":"etcdserver: permission denied","code":7})";
    CHECK_FALSE(retry_release(refused, filelock::etcd::errc::auth, 0, true));
}

TEST_CASE(
    "etcd held lock: its watch is made again with a backoff, and lost once unwatched past "
    "the TTL") {
    using tp = rewatch_policy::time_point;
    const tp t0{};
    rewatch_policy p(10s, t0);
    // Each failed try waits twice as long as the last, at most 2 s.
    std::vector<std::chrono::milliseconds> waits;
    tp now = t0;
    for (int i = 0; i < 7; ++i) {
        const auto n = p.failed(now);
        REQUIRE_FALSE(n.give_up);
        waits.push_back(std::chrono::duration_cast<std::chrono::milliseconds>(n.at - now));
        now = n.at;
    }
    CHECK(waits == std::vector<std::chrono::milliseconds>{100ms, 200ms, 400ms, 800ms, 1600ms,
                                                          2000ms, 2000ms});
    // A watch up again starts the backoff over, and the unwatched time.
    p.watching(now);
    CHECK(p.failed(now).at - now == 100ms);
    // Unwatched past the limit: the lock is lost, whatever the tries.
    CHECK_FALSE(p.failed(now + 10s).give_up);
    CHECK(p.failed(now + 10s + 1ms).give_up);
}

namespace {

struct kind_fixture : fixture {
    explicit kind_fixture(lock_kind k) : fixture(10s, k) {}
};

json kv_val(const std::string& key, std::int64_t create_rev, const std::string& value) {
    return kv_json(key, create_rev, value);
}

const std::string slots2 = "filelock:slots=2\n";
const std::string reader = "filelock:shared\n";

}  // namespace

TEST_CASE("etcd kinds: a key's value says its kind; an untagged one is exclusive") {
    CHECK(value_for({}, " 1@h\n") == " 1@h\n");  // the one-holder lock, as before
    CHECK(value_for({filelock::lock_mode::shared, 1}, " 1@h\n") == "filelock:shared\n 1@h\n");
    CHECK(value_for({filelock::lock_mode::exclusive, 4}, "") == "filelock:slots=4\n");
    CHECK(kind_of("").exclusive());  // etcdctl lock, Go's Mutex
    CHECK(kind_of(" 1@h\n").exclusive());
    CHECK(kind_of("filelock:shared").exclusive());  // not the whole tag
    CHECK(kind_of("filelock:slots=x\n").exclusive());
    CHECK(kind_of("filelock:slots=0\n").exclusive());
    CHECK(kind_of("filelock:shared\n 1@h\n").shared);
    CHECK(kind_of("filelock:slots=4\n 1@h\n").slots == 4);
    CHECK(content_of("filelock:slots=4\n 1@h\n") == " 1@h\n");
    CHECK(content_of(" 1@h\n") == " 1@h\n");
}

namespace {
kv key_at(std::string key, std::int64_t rev, std::string value, std::int64_t lease = 0) {
    kv k;
    k.key = std::move(key);
    k.create_revision = rev;
    k.mod_revision = rev;
    k.value = std::move(value);
    k.lease = lease;
    return k;
}
std::vector<std::string> keys_of(const std::vector<filelock::etcd::lock_party>& v) {
    std::vector<std::string> out;
    for (const auto& p : v) out.push_back(p.key);
    return out;
}
}  // namespace

TEST_CASE("etcd inspect: holders are what the lock's rules admit, waiters in revision order") {
    using filelock::lock_kind;
    using strings = std::vector<std::string>;
    const std::string sh = "filelock:shared\n 7@a\n", two = "filelock:slots=2\n 8@b\n";
    SECTION("etcdctl's empty value is an exclusive writer: one holder, the rest wait") {
        const auto st = status_of("n", {key_at("n/1", 5, ""), key_at("n/2", 6, " 42@h\n", 0x2)}, 9);
        CHECK(keys_of(st.holders) == strings{"n/1"});
        CHECK(keys_of(st.waiters) == strings{"n/2"});
        CHECK(st.holders[0].kind == lock_kind::exclusive);
        CHECK(st.holders[0].pid == 0);
        CHECK(st.holders[0].fencing_token == 5);
        CHECK(st.waiters[0].position == 1);
        CHECK(st.waiters[0].pid == 42);
        CHECK(st.waiters[0].host == "h");
        CHECK(st.waiters[0].lease == 0x2);
        CHECK(st.revision == 9);
        CHECK(st.held());
    }
    SECTION("readers before the first writer hold; a reader after it waits") {
        const auto st = status_of("n",
                                  {key_at("n/1", 5, sh), key_at("n/2", 6, sh), key_at("n/3", 7, ""),
                                   key_at("n/4", 8, sh)},
                                  9);
        CHECK(keys_of(st.holders) == strings{"n/1", "n/2"});
        CHECK(keys_of(st.waiters) == strings{"n/3", "n/4"});
        CHECK(st.holders[1].kind == lock_kind::shared);
        CHECK(st.holders[1].pid == 7);
        CHECK(st.holders[1].content == "7@a");
        CHECK(st.waiters[0].kind == lock_kind::exclusive);
        CHECK(st.waiters[1].position == 2);
    }
    SECTION("the N lowest slot holders hold; a writer first excludes them all") {
        auto st = status_of(
            "n", {key_at("n/1", 5, two), key_at("n/2", 6, two), key_at("n/3", 7, two)}, 9);
        CHECK(keys_of(st.holders) == strings{"n/1", "n/2"});
        CHECK(keys_of(st.waiters) == strings{"n/3"});
        CHECK(st.holders[0].kind == lock_kind::slot);
        CHECK(st.holders[0].slots == 2);
        st = status_of("n", {key_at("n/0", 4, ""), key_at("n/1", 5, two)}, 9);
        CHECK(keys_of(st.holders) == strings{"n/0"});
        CHECK(keys_of(st.waiters) == strings{"n/1"});
    }
    SECTION("no key: free") {
        const auto st = status_of("n", {}, 3);
        CHECK_FALSE(st.held());
        CHECK(st.waiters.empty());
    }
    SECTION("a value of another form names no process") {
        const auto p = party_of(key_at("n/1", 5, "backup job"));
        CHECK(p.pid == 0);
        CHECK(p.host.empty());
        CHECK(p.content == "backup job");
        CHECK(party_of(key_at("n/1", 5, " 12x\n")).pid == 0);
        CHECK(party_of(key_at("n/1", 5, " 12\n")).pid == 12);
    }
}

TEST_CASE("etcd inspect: range and time-to-live answers decoded, errors named") {
    http_reply r;
    r.status = 200;
    r.body = json{{"header", {{"revision", "12"}}},
                  {"kvs",
                   {{{"key", base64("n/1")},
                     {"value", base64("")},
                     {"create_revision", "5"},
                     {"lease", "26957"}}}}}
                 .dump();
    std::vector<kv> keys;
    std::int64_t rev = 0;
    std::string why;
    REQUIRE_FALSE(decode_range(r, keys, rev, why));
    CHECK(rev == 12);
    REQUIRE(keys.size() == 1);
    CHECK(keys[0].key == "n/1");
    CHECK(keys[0].lease == 26957);
    r.body = json{{"header", {{"revision", "12"}}}}.dump();  // no key: no "kvs"
    REQUIRE_FALSE(decode_range(r, keys, rev, why));
    CHECK(keys.empty());
    r.body = json{{"kvs", {{{"key", "!!"}}}}}.dump();
    CHECK(decode_range(r, keys, rev, why) == filelock::etcd::errc::bad_reply);
    std::int64_t ttl = 0;
    r.body = json{{"ID", "7"}, {"TTL", "-1"}}.dump();
    REQUIRE_FALSE(decode_time_to_live(r, ttl, why));
    CHECK(ttl == -1);
    r.body = json{{"ID", "7"}, {"TTL", "8"}, {"grantedTTL", "10"}}.dump();
    REQUIRE_FALSE(decode_time_to_live(r, ttl, why));
    CHECK(ttl == 8);
    r.body = R"({"error":"etcdserver: permission denied","code":7})";
    r.status = 400;
    CHECK(decode_time_to_live(r, ttl, why) == filelock::etcd::errc::auth);
    CHECK(why.find("permission denied") != std::string::npos);
    auto m =
        decode_watch(R"({"result":{"header":{"revision":"9"},"events":[{"kv":{"key":"bi8x"}}]}})");
    CHECK(m.events == 1);  // a put: a change, no deletion
    CHECK(m.deletions.empty());
    CHECK(m.revision == 9);
    m = decode_watch(R"({"result":{"canceled":true,"compact_revision":"7"}})");
    CHECK(m.canceled);
    CHECK(m.compact_revision == 7);
    CHECK(m.events == 0);
    const json body = json::parse(request::range_by_create("n/"));
    CHECK(body["sort_target"] == "CREATE");
    CHECK(body["sort_order"] == "ASCEND");
    CHECK(body["range_end"] == base64("n0"));
}

TEST_CASE("etcd slots: a holder is one of the N lowest create revisions, with a key of its own") {
    kind_fixture f({filelock::lock_mode::exclusive, 3});
    auto a = f.resume(wake_reason::start);
    REQUIRE(a.what == action::kind::send);
    CHECK(f.b().key() == mine + "/0");
    const json body = json::parse(f.b().body());
    CHECK(body["success"][0]["request_put"]["value"] == base64("filelock:slots=3\n 1@h\n"));
    CHECK_FALSE(body["success"][1]["request_range"].contains("limit"));  // every key
    const std::string three = "filelock:slots=3\n";
    a = f.reply({{"header", header(20)},
                 {"succeeded", true},
                 {"responses",
                  {{{"response_put", json::object()}},
                   range({kv_val("job/a", 5, three), kv_val("job/b", 7, three),
                          kv_val(mine + "/0", 20, three)})}}});
    REQUIRE(a.is_done());
    CHECK_FALSE(a.ec);
    CHECK(f.b().slot() == 2);
    CHECK(f.b().won_at() == 20);
    CHECK_FALSE(f.b().touch_after_win());  // nobody behind it waited on it
}

namespace {
// The touch an admitted slot waiter sends: its key written, value and lease
// kept, while it is still the key created at `rev`.
void check_touch(const std::string& body, std::int64_t rev) {
    const json t = json::parse(body);
    CHECK(t["compare"][0]["key"] == base64(mine + "/0"));
    CHECK(t["compare"][0]["create_revision"] == std::to_string(rev));
    const json& put = t["success"][0]["request_put"];
    CHECK(put["key"] == base64(mine + "/0"));
    CHECK(put["ignore_value"] == true);
    CHECK(put["ignore_lease"] == true);
    CHECK_FALSE(put.contains("value"));
}
}  // namespace

TEST_CASE(
    "etcd slots: the next in line watches the prefix's deletions; only the one that admits it "
    "wakes it") {
    kind_fixture f({filelock::lock_mode::exclusive, 2});
    f.resume(wake_reason::start);
    const json keys = range(
        {kv_val("job/a", 5, slots2), kv_val("job/b", 7, slots2), kv_val(mine + "/0", 20, slots2)});
    auto a = f.reply({{"header", header(20)},
                      {"succeeded", true},
                      {"responses", {{{"response_put", json::object()}}, keys}}});
    REQUIRE(a.what == action::kind::watch);
    // Any of the 2 holders' deletions admits it: the prefix, deletions only.
    CHECK(f.b().watch_key() == "job/");
    CHECK(f.b().watch_range_end() == "job0");
    CHECK_FALSE(f.b().watch_puts());
    CHECK(json::parse(request::watch("job/", 21, "job0", false))["create_request"]["filters"] ==
          json::array({"NOPUT"}));
    CHECK(f.b().watch_revision() == 21);
    CHECK(f.b().holder() == "job/a, job/b");
    f.b().watch_armed();
    a = f.resume(wake_reason::watched);
    REQUIRE(a.what == action::kind::send);  // the earlier keys, read again
    const json again = json::parse(f.b().body());
    CHECK(again["success"][0]["request_range"]["max_create_revision"] == "19");
    a = f.reply({{"header", header(21)},
                 {"succeeded", true},
                 {"responses", {range({kv_val("job/a", 5, slots2), kv_val("job/b", 7, slots2)})}}});
    REQUIRE(a.what == action::kind::wait);
    CHECK(a.on_release);
    CHECK_FALSE(f.b().on_delete("job/zz", 23));  // a later key: not ours to count
    CHECK(f.b().on_delete("job/b", 24));
    // Admitted after waiting: it holds, and its key is written beside the win
    // (the waiter behind it watches that key alone).
    a = f.resume(wake_reason::release);
    REQUIRE(a.is_done());
    CHECK(f.b().touch_after_win());
    check_touch(f.b().touch_body(), 20);
    CHECK_FALSE(a.ec);
    CHECK(f.b().won_at() == 24);
    CHECK(f.b().slot() == 1);
}

TEST_CASE(
    "etcd slots: a waiter behind the next in line watches only the key before its own, and "
    "reads again when that one is admitted or gone") {
    kind_fixture f({filelock::lock_mode::exclusive, 2});
    f.resume(wake_reason::start);
    const json keys = range({kv_val("job/a", 5, slots2), kv_val("job/b", 7, slots2),
                             kv_val("job/c", 9, slots2), kv_val(mine + "/0", 20, slots2)});
    auto a = f.reply({{"header", header(20)},
                      {"succeeded", true},
                      {"responses", {{{"response_put", json::object()}}, keys}}});
    REQUIRE(a.what == action::kind::watch);
    CHECK(f.b().watch_key() == "job/c");  // one key, its writes too
    CHECK(f.b().watch_range_end().empty());
    CHECK(f.b().watch_puts());
    CHECK_FALSE(json::parse(request::watch("job/c", 21))["create_request"].contains("filters"));
    CHECK(f.b().holder() == "job/a, job/b");
    f.b().watch_armed();
    a = f.resume(wake_reason::watched);
    REQUIRE(a.what == action::kind::send);
    a = f.reply({{"header", header(21)},
                 {"succeeded", true},
                 {"responses",
                  {range({kv_val("job/a", 5, slots2), kv_val("job/b", 7, slots2),
                          kv_val("job/c", 9, slots2)})}}});
    REQUIRE(a.what == action::kind::wait);
    CHECK_FALSE(f.b().on_put("job/a", 22));  // not the watched key
    CHECK_FALSE(f.b().on_put("job/c", 21));  // already read
    // job/c admitted (job/a went) and wrote its key: this one is next now.
    CHECK(f.b().on_put("job/c", 23));
    a = f.resume(wake_reason::release);
    REQUIRE(a.what == action::kind::send);
    a = f.reply({{"header", header(23)},
                 {"succeeded", true},
                 {"responses", {range({kv_val("job/b", 7, slots2), kv_val("job/c", 9, slots2)})}}});
    REQUIRE(a.what == action::kind::watch);  // the prefix now, from after that answer
    CHECK(f.b().watch_key() == "job/");
    CHECK(f.b().watch_revision() == 24);
    CHECK_FALSE(f.b().watch_puts());
    f.b().watch_armed();
    a = f.resume(wake_reason::watched);
    REQUIRE(a.what == action::kind::send);
    a = f.reply({{"header", header(24)},
                 {"succeeded", true},
                 {"responses", {range({kv_val("job/b", 7, slots2), kv_val("job/c", 9, slots2)})}}});
    REQUIRE(a.what == action::kind::wait);
    CHECK(f.b().on_delete("job/c", 25));
    a = f.resume(wake_reason::release);
    REQUIRE(a.is_done());
    CHECK(f.b().touch_after_win());
    check_touch(f.b().touch_body(), 20);
    CHECK_FALSE(a.ec);
    CHECK(f.b().slot() == 1);
}

TEST_CASE("etcd slots: an exclusive key before a slot waiter (etcdctl's empty value) excludes it") {
    kind_fixture f({filelock::lock_mode::exclusive, 4});
    f.resume(wake_reason::start);
    auto a = f.reply({{"header", header(20)},
                      {"succeeded", true},
                      {"responses",
                       {{{"response_put", json::object()}},
                        range({kv_val("job/694d", 5, ""), kv_val(mine + "/0", 20, "")})}}});
    REQUIRE(a.what == action::kind::watch);
    CHECK(f.b().watch_key() == "job/694d");  // the only key whose deletion admits it
    CHECK(f.b().watch_range_end().empty());
    f.b().watch_armed();
    f.resume(wake_reason::watched);
    a = f.reply({{"header", header(20)},
                 {"succeeded", true},
                 {"responses", {range({kv_val("job/694d", 5, "")})}}});
    REQUIRE(a.what == action::kind::wait);
    CHECK(f.b().on_delete("job/694d", 25));
    a = f.resume(wake_reason::release);
    REQUIRE(a.is_done());
    CHECK(f.b().touch_after_win());
    check_touch(f.b().touch_body(), 20);
    CHECK_FALSE(a.ec);
    CHECK(f.b().slot() == 0);
}

TEST_CASE("etcd shared: a reader waits only for earlier writers, never for readers") {
    SECTION("readers only before it: held at once") {
        kind_fixture f({filelock::lock_mode::shared, 1});
        f.resume(wake_reason::start);
        auto a = f.reply({{"header", header(20)},
                          {"succeeded", true},
                          {"responses",
                           {{{"response_put", json::object()}},
                            range({kv_val("job/r1", 5, reader), kv_val("job/r2", 6, reader),
                                   kv_val(mine + "/0", 20, reader)})}}});
        REQUIRE(a.is_done());
        CHECK_FALSE(a.ec);
    }
    SECTION("a writer waiting between: the reader waits for it (no writer starvation)") {
        kind_fixture f({filelock::lock_mode::shared, 1});
        f.resume(wake_reason::start);
        auto a = f.reply({{"header", header(20)},
                          {"succeeded", true},
                          {"responses",
                           {{{"response_put", json::object()}},
                            range({kv_val("job/r1", 5, reader), kv_val("job/w", 7, " 9@x\n"),
                                   kv_val(mine + "/0", 20, reader)})}}});
        REQUIRE(a.what == action::kind::watch);
        CHECK(f.b().watch_key() == "job/w");  // the last earlier writer alone
        CHECK(f.b().watch_range_end().empty());
        CHECK(f.b().holder() == "job/r1");
        f.b().watch_armed();
        f.resume(wake_reason::watched);
        // Deletions seen while the earlier keys are read again: the reader's
        // wakes nothing, the writer's admits it; an answer read before them
        // (at 20) does not undo them.
        CHECK_FALSE(f.b().on_delete("job/r1", 21));
        CHECK(f.b().on_delete("job/w", 22));
        a = f.reply(
            {{"header", header(20)},
             {"succeeded", true},
             {"responses", {range({kv_val("job/r1", 5, reader), kv_val("job/w", 7, " 9@x\n")})}}});
        REQUIRE(a.is_done());
        CHECK_FALSE(a.ec);
        CHECK(f.b().won_at() == 22);
        CHECK_FALSE(f.b().touch_after_win());  // a reader: nobody waits on its admission
    }
}

TEST_CASE("etcd kinds: one session's acquisitions of one name have keys of their own") {
    claims names;
    int tag = 0;
    lease_state live{lease, lease_clock::time_point::max()};
    lock_backend a(names, &tag, "job", "", live, {filelock::lock_mode::exclusive, 2});
    lock_backend b(names, &tag, "job", "", live, {filelock::lock_mode::shared, 1});
    lock_backend c(names, &tag, "job", "", live);
    lock_backend d(names, &tag, "job", "", live);
    CHECK(a.try_acquire() == std::errc::operation_in_progress);
    CHECK(b.try_acquire() == std::errc::operation_in_progress);
    CHECK(c.try_acquire() == std::errc::operation_in_progress);
    CHECK(d.try_acquire() == filelock::errc::locked);  // the Mutex key: one per lease
    CHECK(a.key() == mine + "/0");
    CHECK(b.key() == mine + "/1");
    CHECK(c.key() == mine);
}

namespace {

http_reply answer(const json& j, long status = 200) {
    http_reply r;
    r.status = status;
    r.body = j.dump();
    return r;
}

watch_message message(const json& result) { return decode_watch(json{{"result", result}}.dump()); }

}  // namespace

TEST_CASE("etcd held lock: its watch, step by step, from scripted messages and replies") {
    using kind = held_watch::action::kind;
    using tp = held_watch::time_point;
    tp now{};
    held_watch w(40, 42, 10s, now);
    auto a = w.start();
    REQUIRE(a.what == kind::watch);
    CHECK(a.from == 43);  // from the revision after the win
    CHECK(w.on_message(message({{"header", header(44)}, {"created", true}}), now).what ==
          kind::none);
    CHECK(w.from() == 45);
    SECTION("a deletion of the key: lost, and the lease is asked about") {
        a = w.on_message(message({{"header", header(50)},
                                  {"events", {{{"type", "DELETE"}, {"kv", kv_json("k", 0)}}}}}),
                         now);
        CHECK(a.what == kind::lost);
        CHECK(a.ask_lease);
    }
    SECTION("the server cancels the watch: the key is checked, then watched from the answer") {
        a = w.on_message(message({{"header", header(46)}, {"canceled", true}}), now);
        REQUIRE(a.what == kind::check);
        a = w.on_check(answer({{"header", header(60)}, {"kvs", {kv_json("k", 40)}}}), now);
        REQUIRE(a.what == kind::watch);
        CHECK(a.from == 61);
    }
    SECTION("the key is someone else's now: lost") {
        a = w.on_check(answer({{"header", header(60)}, {"kvs", {kv_json("k", 55)}}}), now);
        CHECK(a.what == kind::lost);
        a = held_watch(40, 42, 10s, now).on_check(answer({{"header", header(60)}}), now);
        CHECK(a.what == kind::lost);  // gone
    }
    SECTION("a refusal that is no failure of the transport: lost at once") {
        a = w.on_check(answer({{"error", "etcdserver: permission denied"}, {"code", 7}}, 403), now);
        CHECK(a.what == kind::lost);
        CHECK_FALSE(a.ask_lease);
    }
    SECTION("a stream that ends and checks unanswered: a backoff, then lost past the limit") {
        http_reply cut;
        cut.ec = filelock::etcd::errc::connection_reset;
        a = w.on_stream_end(now);
        REQUIRE(a.what == kind::wait);
        CHECK(a.until - now == 100ms);
        CHECK(w.on_timer().what == kind::check);
        now = a.until;
        a = w.on_check(cut, now);
        REQUIRE(a.what == kind::wait);
        CHECK(a.until - now == 200ms);
        now += 10s;
        a = w.on_check(cut, now);
        CHECK(a.what == kind::lost);
        CHECK(a.ask_lease);
    }
}

TEST_CASE("etcd session: a failed grant is tried again only when another try may answer") {
    using tp = std::chrono::steady_clock::time_point;
    grant_retry g;
    // Never reached etcd (refused, unresolvable): at once, no retry.
    CHECK_FALSE(g.failed(0, true, true));
    // A member that timed out or reset: again.
    CHECK(g.failed(0, true, false));
    // Not transient (a refusal): never again.
    CHECK_FALSE(g.failed(401, false, false));
    // Once an endpoint answered, an unreachable one is a member down: again.
    CHECK(g.failed(0, true, true));
    // The delays grow by 100 ms up to 1 s, and start over after a success.
    const tp t0{};
    std::vector<std::chrono::milliseconds> waits;
    for (int i = 0; i < 12; ++i)
        waits.push_back(std::chrono::duration_cast<std::chrono::milliseconds>(g.next(t0) - t0));
    CHECK(waits.front() == 100ms);
    CHECK(waits[4] == 500ms);
    CHECK(waits.back() == 1000ms);
    g.succeeded();
    CHECK(g.next(t0) - t0 == 100ms);
    // A waiter waits for the next try only while its deadline allows.
    CHECK(grant_retry::waits(t0 + 1s, t0));
    CHECK_FALSE(grant_retry::waits(t0, t0));
}
