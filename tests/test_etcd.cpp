// SPDX-License-Identifier: MIT
// The etcd backend against a real etcd member (tests/etcd_member.hpp): the
// Asio client, the synchronous client, interoperation with etcdctl, the lost
// signal, cancellation without leftovers, and bad input. Compiled once per
// Asio flavour (tests/asio_flavour.hpp): test_etcd and test_etcd_boost_asio.
// The tag [session] marks cases about what libfilelock-etcd does once for
// every driver (the session, its transport, the protocol, the member's
// side): the Boost.Asio copy leaves them out, as it leaves out filelock-run.
// The tag [faults] marks the cases that stop, kill or cut off members: they
// spend their time waiting out TTLs, and run as a test of their own beside
// the others (tests/meson.build).
#include "asio_flavour.hpp"
#include FILELOCK_TEST_ETCD_ASIO

#include <catch2/catch.hpp>

#include "etcd_member.hpp"
#include "tcp_proxy.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>

using namespace std::chrono_literals;
namespace etcd = filelock::etcd;

namespace {

test::etcd_cluster& member() {
    static test::etcd_cluster c(1);
    return c;
}

// The member's leases, by ID. Earlier tests' leases may expire at any time,
// so a test compares these as sets ("no new lease"), never as equal lists.
std::set<std::string> lease_ids() {
    std::set<std::string> ids;
    std::istringstream in(member().ctl("lease list"));
    for (std::string line; std::getline(in, line);)
        if (line.rfind("found ", 0) != 0 && !line.empty()) ids.insert(line);
    return ids;
}

bool no_new_lease(const std::set<std::string>& before) {
    const auto now = lease_ids();
    return std::includes(before.begin(), before.end(), now.begin(), now.end());
}

std::string unique_name(const char* what) {
    static int n = 0;
    return std::string("test/") + what + "/" + std::to_string(::getpid()) + "-" +
           std::to_string(++n);
}

// Adds the user root (password rootpw) to `m` and turns authentication on.
void enable_root_auth(test::etcd_cluster& m) {
    int st = -1;
    m.ctl("user add root:rootpw", &st);
    REQUIRE(st == 0);
    m.ctl("auth enable", &st);
    REQUIRE(st == 0);
}

etcd::config cfg(std::chrono::seconds ttl = 10s) {
    etcd::config c;
    c.endpoints = {member().endpoint()};
    c.ttl = ttl;
    return c;
}

// Runs the io_context until `done` or a generous bound (a hang fails).
template <class Pred>
bool run_until(asio::io_context& io, Pred done, std::chrono::seconds bound = 30s) {
    const auto until = std::chrono::steady_clock::now() + bound;
    while (!done()) {
        if (std::chrono::steady_clock::now() > until) return false;
        io.restart();
        io.run_for(10ms);
    }
    return true;
}

struct outcome {
    bool done = false;
    std::error_code ec;
    etcd::lock held;
};

void start_lock(etcd::client& c, const std::string& name, std::chrono::nanoseconds timeout,
                outcome& o) {
    c.async_lock(name, timeout, [&o](std::error_code ec, etcd::lock l) {
        o.done = true;
        o.ec = ec;
        o.held = std::move(l);
    });
}

void release_and_wait(asio::io_context& io, etcd::lock& l) {
    bool released = false;
    l.release([&](std::error_code) { released = true; });
    REQUIRE(run_until(io, [&] { return released; }));
}

// Runs the loop until the keys under `prefix` are `n` (a cleanup request
// may still be in flight when the operation completed).
bool keys_become(asio::io_context& io, const std::string& prefix, std::size_t n) {
    return run_until(
        io, [&] { return member().keys(prefix).size() == n; }, 10s);
}

}  // namespace

TEST_CASE("etcd: an uncontended lock is etcd's Mutex key, with a fencing token", "[etcd]") {
    asio::io_context io;
    etcd::client c(io.get_executor(), cfg());
    const auto name = unique_name("plain");
    outcome o;
    start_lock(c, name, 5s, o);
    REQUIRE(run_until(io, [&] { return o.done; }));
    REQUIRE_FALSE(o.ec);
    REQUIRE(o.held.held());
    CHECK(o.held.name() == name);
    char hex[32];
    std::snprintf(hex, sizeof hex, "%llx", static_cast<unsigned long long>(o.held.lease()));
    CHECK(o.held.key() == name + "/" + hex);
    CHECK(o.held.fencing_token() > 0);
    CHECK(member().keys(name + "/") == std::vector<std::string>{o.held.key()});
    // The value is the content template, as in lock files.
    const auto value = member().ctl("get --print-value-only '" + o.held.key() + "'");
    CHECK(value.find(" " + std::to_string(::getpid()) + "@") == 0);
    release_and_wait(io, o.held);
    CHECK(member().keys(name + "/").empty());
}

TEST_CASE("etcd: the uncontended acquire and release cost two requests", "[etcd]") {
    asio::io_context io;
    etcd::client c(io.get_executor(), cfg());
    {  // the session (lease) first
        outcome o;
        start_lock(c, unique_name("warm"), 5s, o);
        REQUIRE(run_until(io, [&] { return o.done; }));
        release_and_wait(io, o.held);
    }
    const auto before = c.requests();
    outcome o;
    start_lock(c, unique_name("two"), 5s, o);
    REQUIRE(run_until(io, [&] { return o.done; }));
    REQUIRE_FALSE(o.ec);
    release_and_wait(io, o.held);
    // One txn, one delete (the held lock's watch of its key is a stream).
    CHECK(c.requests() - before == 2);
}

TEST_CASE("etcd: successive holders get strictly increasing fencing tokens, in FIFO order",
          "[etcd]") {
    asio::io_context io;
    etcd::client a(io.get_executor(), cfg()), b(io.get_executor(), cfg()),
        d(io.get_executor(), cfg());
    const auto name = unique_name("fifo");
    outcome oa, ob, od;
    start_lock(a, name, 5s, oa);
    REQUIRE(run_until(io, [&] { return oa.done; }));
    REQUIRE_FALSE(oa.ec);
    start_lock(b, name, 10s, ob);
    REQUIRE(run_until(io, [&] { return member().keys(name + "/").size() == 2; }));
    start_lock(d, name, 10s, od);
    REQUIRE(run_until(io, [&] { return member().keys(name + "/").size() == 3; }));
    CHECK_FALSE(ob.done);
    CHECK_FALSE(od.done);
    const auto t1 = oa.held.fencing_token();
    oa.held.release();
    REQUIRE(run_until(io, [&] { return ob.done; }));
    REQUIRE_FALSE(ob.ec);
    CHECK_FALSE(od.done);  // b was first in line
    CHECK(ob.held.fencing_token() > t1);
    const auto t2 = ob.held.fencing_token();
    ob.held.release();
    REQUIRE(run_until(io, [&] { return od.done; }));
    REQUIRE_FALSE(od.ec);
    CHECK(od.held.fencing_token() > t2);
    release_and_wait(io, od.held);
}

TEST_CASE("etcd: timeout 0 and a timeout leave no key behind and name the holder", "[etcd]") {
    asio::io_context io;
    etcd::client a(io.get_executor(), cfg()), b(io.get_executor(), cfg());
    const auto name = unique_name("timeout");
    outcome oa;
    start_lock(a, name, 5s, oa);
    REQUIRE(run_until(io, [&] { return oa.done; }));
    REQUIRE_FALSE(oa.ec);
    for (auto t : {0ms, 300ms}) {
        std::optional<etcd::lock_result> r;
        b.async_lock_result(name, t, [&](etcd::lock_result x) { r = std::move(x); });
        REQUIRE(run_until(io, [&] { return r.has_value(); }));
        CHECK(r->ec == filelock::errc::timeout);
        CHECK(r->holder.find(std::to_string(::getpid()) + "@") == 0);
        CHECK(r->message.find(name) != std::string::npos);
        CHECK(keys_become(io, name + "/", 1));
    }
    release_and_wait(io, oa.held);
}

TEST_CASE("etcd: every kind of cancellation ends the wait and leaves no key", "[etcd]") {
    asio::io_context io;
    etcd::client a(io.get_executor(), cfg()), b(io.get_executor(), cfg());
    const auto name = unique_name("cancel");
    outcome oa;
    start_lock(a, name, 5s, oa);
    REQUIRE(run_until(io, [&] { return oa.done; }));
    for (auto type : {asio::cancellation_type::terminal, asio::cancellation_type::partial,
                      asio::cancellation_type::total}) {
        asio::cancellation_signal sig;
        outcome ob;
        b.async_lock(
            name, 30s,
            asio::bind_cancellation_slot(sig.slot(), [&](std::error_code ec, etcd::lock l) {
                ob.done = true;
                ob.ec = ec;
                ob.held = std::move(l);
            }));
        REQUIRE(run_until(io, [&] { return member().keys(name + "/").size() == 2; }));
        sig.emit(type);
        REQUIRE(run_until(io, [&] { return ob.done; }));
        CHECK(ob.ec == test::asio_error_code(asio::error::operation_aborted));
        CHECK(ob.ec == filelock::condition::cancelled);
        CHECK_FALSE(ob.held.held());
        CHECK(keys_become(io, name + "/", 1));
    }
    release_and_wait(io, oa.held);
}

TEST_CASE("etcd: waiters of one client queue locally: one key, one watch", "[etcd]") {
    asio::io_context io;
    etcd::client a(io.get_executor(), cfg()), b(io.get_executor(), cfg());
    const auto name = unique_name("queue");
    outcome oa;
    start_lock(a, name, 5s, oa);
    REQUIRE(run_until(io, [&] { return oa.done; }));
    constexpr int n = 20;
    std::vector<outcome> os(n);
    const auto watches_before = b.watches();
    for (auto& o : os) start_lock(b, name, 30s, o);
    REQUIRE(run_until(io, [&] { return member().keys(name + "/").size() == 2; }));
    // The head's watch comes after its key (and its read of the earlier
    // keys): waited for, then 200 ms more for any other to show.
    REQUIRE(run_until(io, [&] { return b.watches() > watches_before; }));
    io.restart();
    io.run_for(200ms);
    CHECK(member().keys(name + "/").size() == 2);  // a's and b's queue head's
    CHECK(b.watches() - watches_before == 1);
    oa.held.release();
    // They hold in turn, one at a time, each with a higher token.
    std::int64_t last = 0;
    for (int i = 0; i < n; ++i) {
        REQUIRE(run_until(io, [&] {
            int held = 0;
            for (auto& o : os) held += o.done && o.held.held();
            return held == 1;
        }));
        int held = 0;
        for (auto& o : os) {
            if (!(o.done && o.held.held())) continue;
            ++held;
            REQUIRE_FALSE(o.ec);
            CHECK(o.held.fencing_token() > last);
            last = o.held.fencing_token();
            o.held.release();
        }
        CHECK(held == 1);
    }
    CHECK(keys_become(io, name + "/", 0));
}

TEST_CASE("etcd: etcdctl lock and this library exclude each other both ways", "[etcd][interop]") {
    const auto name = unique_name("interop");
    const auto dir =
        std::filesystem::temp_directory_path() / ("filelock-etcd-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    const auto marker = dir / "etcdctl-holds";
    std::filesystem::remove(marker);
    asio::io_context io;
    etcd::client c(io.get_executor(), cfg());

    SECTION("etcdctl holds, we wait") {
        const std::string cmd = "ETCDCTL_API=3 etcdctl --endpoints=" + member().endpoint() +
                                " lock '" + name + "' -- sh -c 'touch " + marker.string() +
                                "; sleep 1; rm -f " + marker.string() + "' >/dev/null 2>&1 &";
        REQUIRE(std::system(cmd.c_str()) == 0);
        for (int i = 0; i < 500 && !std::filesystem::exists(marker); ++i)
            std::this_thread::sleep_for(10ms);
        REQUIRE(std::filesystem::exists(marker));
        outcome o;
        start_lock(c, name, 20s, o);
        REQUIRE(run_until(io, [&] { return o.done; }));
        REQUIRE_FALSE(o.ec);
        CHECK_FALSE(std::filesystem::exists(marker));  // etcdctl's command had finished
        release_and_wait(io, o.held);
    }
    SECTION("we hold, etcdctl waits") {
        outcome o;
        start_lock(c, name, 5s, o);
        REQUIRE(run_until(io, [&] { return o.done; }));
        REQUIRE_FALSE(o.ec);
        const auto out = dir / "etcdctl-out";
        const std::string cmd = "ETCDCTL_API=3 etcdctl --endpoints=" + member().endpoint() +
                                " lock '" + name + "' -- sh -c 'echo got > " + out.string() +
                                "' >/dev/null 2>&1 &";
        std::filesystem::remove(out);
        REQUIRE(std::system(cmd.c_str()) == 0);
        REQUIRE(run_until(io, [&] { return member().keys(name + "/").size() == 2; }));
        io.restart();
        io.run_for(300ms);
        CHECK_FALSE(std::filesystem::exists(out));  // still waiting
        release_and_wait(io, o.held);
        for (int i = 0; i < 500 && !std::filesystem::exists(out); ++i)
            std::this_thread::sleep_for(10ms);
        CHECK(std::filesystem::exists(out));
    }
    CHECK(keys_become(io, name + "/", 0));
    std::filesystem::remove_all(dir);
}

namespace {

void start_lock_kind(etcd::client& c, const std::string& name, std::chrono::nanoseconds timeout,
                     etcd::lock_options opts, outcome& o) {
    c.async_lock(name, timeout, opts, [&o](std::error_code ec, etcd::lock l) {
        o.done = true;
        o.ec = ec;
        o.held = std::move(l);
    });
}

constexpr etcd::lock_options reader{filelock::lock_mode::shared, 1};

// Waits until `path` exists (true) or 5 s passed.
bool appears(const std::filesystem::path& path) {
    for (int i = 0; i < 500 && !std::filesystem::exists(path); ++i)
        std::this_thread::sleep_for(10ms);
    return std::filesystem::exists(path);
}

}  // namespace

TEST_CASE("etcd slots: N+1 contenders, never more than N holders at once, and N reached",
          "[etcd][slots]") {
    constexpr unsigned n = 3;
    constexpr int rounds = 6;
    asio::io_context io;
    // Four contenders on three sessions: two of them share one client (one
    // lease, a key each).
    etcd::client a(io.get_executor(), cfg()), b(io.get_executor(), cfg()),
        d(io.get_executor(), cfg());
    const auto name = unique_name("slots");
    int inside = 0, most = 0, done = 0;
    std::set<unsigned> slots_seen;
    bool over = false, failed = false;
    struct contender {
        etcd::client* c;
        int left = rounds;
    };
    std::vector<contender> cs{{&a}, {&a}, {&b}, {&d}};
    std::function<void(contender&)> go = [&](contender& k) {
        k.c->async_lock(name, 20s, etcd::lock_options{.slots = n},
                        [&, pk = &k](std::error_code ec, etcd::lock l) {
                            if (ec) {
                                failed = true;
                                ++done;
                                return;
                            }
                            if (++inside > static_cast<int>(n)) over = true;
                            most = std::max(most, inside);
                            slots_seen.insert(l.slot());
                            auto t = std::make_shared<asio::steady_timer>(io, 30ms);
                            t->async_wait([&, t, pk, l = std::move(l)](std::error_code) mutable {
                                --inside;
                                l.release();
                                if (--pk->left > 0)
                                    go(*pk);
                                else
                                    ++done;
                            });
                        });
    };
    for (auto& k : cs) go(k);
    REQUIRE(run_until(
        io, [&] { return done == static_cast<int>(cs.size()); }, 60s));
    CHECK_FALSE(failed);
    CHECK_FALSE(over);
    CHECK(most == static_cast<int>(n));
    for (auto s : slots_seen) CHECK(s < n);
    CHECK(keys_become(io, name + "/", 0));
}

TEST_CASE("etcd slots: a slot is free again on release and when its holder's lease expires",
          "[etcd][slots]") {
    asio::io_context io, dead;
    const auto name = unique_name("slots-free");
    const etcd::lock_options two{.slots = 2};
    etcd::client keeper(io.get_executor(), cfg());
    auto gone = std::make_unique<etcd::client>(dead.get_executor(), cfg(1s));
    outcome o1, o2, o3;
    start_lock_kind(keeper, name, 5s, two, o1);
    REQUIRE(run_until(io, [&] { return o1.done; }));
    REQUIRE_FALSE(o1.ec);
    start_lock_kind(*gone, name, 5s, two, o2);
    REQUIRE(run_until(dead, [&] { return o2.done; }));
    REQUIRE_FALSE(o2.ec);
    CHECK(o1.held.slot() == 0);
    CHECK(o2.held.slot() == 1);
    // Both slots taken: a third waits. `dead` runs (on a thread of its own,
    // so that etcdctl's slowness under load cannot starve its keep-alives)
    // until the third's key is there: the 1 s lease cannot expire before the
    // third queues. Then `dead` stops, its lease is no longer kept alive and
    // etcd deletes its key within the TTL, which must free the slot.
    auto keep_alive = asio::make_work_guard(dead);
    dead.restart();
    std::thread alive([&] { dead.run(); });
    etcd::client third(io.get_executor(), cfg());
    start_lock_kind(third, name, 15s, two, o3);
    const bool queued = run_until(io, [&] { return member().keys(name + "/").size() == 3; });
    dead.stop();
    alive.join();
    REQUIRE(queued);
    CHECK_FALSE(o3.done);
    REQUIRE(run_until(
        io, [&] { return o3.done; }, 15s));
    REQUIRE_FALSE(o3.ec);
    CHECK(o3.held.slot() == 1);
    CHECK(o3.held.fencing_token() > o2.held.fencing_token());
    // A release frees a slot at once.
    outcome o4;
    start_lock_kind(third, name, 15s, two, o4);
    REQUIRE(run_until(io, [&] { return member().keys(name + "/").size() == 3; }));
    CHECK_FALSE(o4.done);
    release_and_wait(io, o1.held);
    REQUIRE(run_until(io, [&] { return o4.done; }));
    REQUIRE_FALSE(o4.ec);
    CHECK(o4.held.slot() == 1);
    release_and_wait(io, o3.held);
    release_and_wait(io, o4.held);
    o2.held = etcd::lock();
    gone.reset();
    CHECK(keys_become(io, name + "/", 0));
}

TEST_CASE("etcd slots: each holder has its own key, fencing token and lost signal",
          "[etcd][slots]") {
    asio::io_context io;
    etcd::client c(io.get_executor(), cfg());
    const auto name = unique_name("slots-lost");
    const etcd::lock_options two{.slots = 2};
    outcome a, b;
    start_lock_kind(c, name, 5s, two, a);
    start_lock_kind(c, name, 5s, two, b);
    REQUIRE(run_until(io, [&] { return a.done && b.done; }));
    REQUIRE_FALSE(a.ec);
    REQUIRE_FALSE(b.ec);
    CHECK(a.held.key() != b.held.key());
    CHECK(a.held.fencing_token() != b.held.fencing_token());
    CHECK(a.held.lease() == b.held.lease());
    std::error_code lost_a, lost_b;
    a.held.on_lost([&](std::error_code ec) { lost_a = ec; });
    b.held.on_lost([&](std::error_code ec) { lost_b = ec; });
    io.restart();
    io.run_for(200ms);  // the held watches are up
    // Someone deletes b's key: b is lost, a holds on.
    member().ctl("del '" + b.held.key() + "'");
    REQUIRE(run_until(io, [&] { return static_cast<bool>(lost_b); }));
    CHECK(lost_b == etcd::errc::lost);
    io.restart();
    io.run_for(300ms);
    CHECK_FALSE(lost_a);
    CHECK_FALSE(a.held.lost());
    CHECK(member().keys(name + "/") == std::vector<std::string>{a.held.key()});
    release_and_wait(io, b.held);
    release_and_wait(io, a.held);
    CHECK(keys_become(io, name + "/", 0));
}

TEST_CASE(
    "etcd shared: readers hold together, a writer excludes them, and later readers wait "
    "for a waiting writer",
    "[etcd][shared]") {
    asio::io_context io;
    etcd::client a(io.get_executor(), cfg()), b(io.get_executor(), cfg()),
        w(io.get_executor(), cfg());
    const auto name = unique_name("rw");
    outcome r1, r2, wr, r3;
    start_lock_kind(a, name, 5s, reader, r1);
    start_lock_kind(b, name, 5s, reader, r2);
    REQUIRE(run_until(io, [&] { return r1.done && r2.done; }));
    REQUIRE_FALSE(r1.ec);
    REQUIRE_FALSE(r2.ec);
    CHECK(r1.held.held());
    CHECK(r2.held.held());
    start_lock(w, name, 15s, wr);
    REQUIRE(run_until(io, [&] { return member().keys(name + "/").size() == 3; }));
    // A reader after the waiting writer waits for it, though readers hold.
    start_lock_kind(a, name, 15s, reader, r3);
    REQUIRE(run_until(io, [&] { return member().keys(name + "/").size() == 4; }));
    io.restart();
    io.run_for(300ms);
    CHECK_FALSE(wr.done);
    CHECK_FALSE(r3.done);
    release_and_wait(io, r1.held);
    io.restart();
    io.run_for(200ms);
    CHECK_FALSE(wr.done);  // r2 still reads
    release_and_wait(io, r2.held);
    REQUIRE(run_until(io, [&] { return wr.done; }));
    REQUIRE_FALSE(wr.ec);
    io.restart();
    io.run_for(200ms);
    CHECK_FALSE(r3.done);  // the writer holds
    release_and_wait(io, wr.held);
    REQUIRE(run_until(io, [&] { return r3.done; }));
    REQUIRE_FALSE(r3.ec);
    release_and_wait(io, r3.held);
    CHECK(keys_become(io, name + "/", 0));
}

TEST_CASE("etcd slots and shared: etcdctl lock's COMMAND never runs beside them, either order",
          "[etcd][interop][slots]") {
    const auto name = unique_name("kinds-interop");
    const auto dir = std::filesystem::temp_directory_path() /
                     ("filelock-etcd-kinds-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    const auto marker = dir / "etcdctl-holds";
    const auto ran = dir / "etcdctl-ran";
    std::filesystem::remove(marker);
    std::filesystem::remove(ran);
    asio::io_context io;
    etcd::client c(io.get_executor(), cfg()), c2(io.get_executor(), cfg());
    const auto kind = GENERATE(etcd::lock_options{filelock::lock_mode::shared, 1},
                               etcd::lock_options{filelock::lock_mode::exclusive, 3});
    CAPTURE(kind.mode == filelock::lock_mode::shared, kind.slots);

    SECTION("etcdctl holds: ours wait until its command ended") {
        const std::string cmd = "ETCDCTL_API=3 etcdctl --endpoints=" + member().endpoint() +
                                " lock '" + name + "' -- sh -c 'touch " + marker.string() +
                                "; sleep 1; rm -f " + marker.string() + "' >/dev/null 2>&1 &";
        REQUIRE(std::system(cmd.c_str()) == 0);
        REQUIRE(appears(marker));
        outcome o1, o2;
        start_lock_kind(c, name, 20s, kind, o1);
        start_lock_kind(c2, name, 20s, kind, o2);
        REQUIRE(run_until(io, [&] { return o1.done; }));
        CHECK_FALSE(std::filesystem::exists(marker));  // etcdctl's command had ended
        REQUIRE(run_until(io, [&] { return o2.done; }));
        REQUIRE_FALSE(o1.ec);
        REQUIRE_FALSE(o2.ec);
        CHECK(o1.held.held());
        CHECK(o2.held.held());  // and both of ours hold together
        release_and_wait(io, o1.held);
        release_and_wait(io, o2.held);
    }
    SECTION("ours hold: etcdctl's command waits for every one of them") {
        outcome o1, o2;
        start_lock_kind(c, name, 5s, kind, o1);
        start_lock_kind(c2, name, 5s, kind, o2);
        REQUIRE(run_until(io, [&] { return o1.done && o2.done; }));
        REQUIRE_FALSE(o1.ec);
        REQUIRE_FALSE(o2.ec);
        const std::string cmd = "ETCDCTL_API=3 etcdctl --endpoints=" + member().endpoint() +
                                " lock '" + name + "' -- sh -c 'touch " + ran.string() +
                                "' >/dev/null 2>&1 &";
        REQUIRE(std::system(cmd.c_str()) == 0);
        REQUIRE(run_until(io, [&] { return member().keys(name + "/").size() == 3; }));
        // A later one of ours waits behind etcdctl (an exclusive key).
        outcome o3;
        start_lock_kind(c, name, 20s, kind, o3);
        REQUIRE(run_until(io, [&] { return member().keys(name + "/").size() == 4; }));
        io.restart();
        io.run_for(300ms);
        CHECK_FALSE(std::filesystem::exists(ran));
        CHECK_FALSE(o3.done);
        release_and_wait(io, o1.held);
        io.restart();
        io.run_for(300ms);
        CHECK_FALSE(std::filesystem::exists(ran));  // o2 still holds
        release_and_wait(io, o2.held);
        CHECK(appears(ran));
        REQUIRE(run_until(io, [&] { return o3.done; }));
        REQUIRE_FALSE(o3.ec);
        release_and_wait(io, o3.held);
    }
    CHECK(keys_become(io, name + "/", 0));
    std::filesystem::remove_all(dir);
}

TEST_CASE("etcd kinds: bad slots are a clear error before anything is sent", "[etcd][slots]") {
    asio::io_context io;
    etcd::client c(io.get_executor(), cfg());
    const auto name = unique_name("bad-slots");
    for (auto bad : {etcd::lock_options{filelock::lock_mode::exclusive, 0},
                     etcd::lock_options{filelock::lock_mode::exclusive, 1025},  // max_slots + 1
                     etcd::lock_options{filelock::lock_mode::shared, 2}}) {
        etcd::lock_result r;
        bool done = false;
        c.async_lock_result(name, 1s, bad, [&](etcd::lock_result x) {
            r = std::move(x);
            done = true;
        });
        REQUIRE(run_until(io, [&] { return done; }));
        CHECK(r.ec == etcd::errc::invalid_argument);
        CHECK(r.message.find(name) != std::string::npos);
    }
    CHECK(c.requests() == 0);
}

TEST_CASE(
    "etcd slots and shared: timeouts, cancellation and release leave no key and no lease; the "
    "timeout names every holder",
    "[etcd][slots]") {
    const auto before = lease_ids();
    const auto kind = GENERATE(etcd::lock_options{filelock::lock_mode::exclusive, 2},
                               etcd::lock_options{filelock::lock_mode::shared, 1});
    CAPTURE(kind.mode == filelock::lock_mode::shared, kind.slots);
    const auto name = unique_name("kinds-leftovers");
    asio::io_context io;
    {
        auto a = std::make_unique<etcd::client>(io.get_executor(), cfg());
        auto b = std::make_unique<etcd::client>(io.get_executor(), cfg());
        auto w = std::make_unique<etcd::client>(io.get_executor(), cfg());
        // Two holders: both slots, or two readers; then a writer waits
        // behind them, which fills the lock for the waiter below.
        outcome h1, h2, wr;
        start_lock_kind(*a, name, 5s, kind, h1);
        start_lock_kind(*b, name, 5s, kind, h2);
        REQUIRE(run_until(io, [&] { return h1.done && h2.done; }));
        REQUIRE_FALSE(h1.ec);
        REQUIRE_FALSE(h2.ec);
        if (kind.mode == filelock::lock_mode::shared) {
            start_lock(*w, name, 20s, wr);
            REQUIRE(run_until(io, [&] { return member().keys(name + "/").size() == 3; }));
        }
        const std::size_t taken = member().keys(name + "/").size();
        etcd::client c(io.get_executor(), cfg());
        for (auto t : {0ms, 300ms}) {
            std::optional<etcd::lock_result> r;
            c.async_lock_result(name, t, kind, [&](etcd::lock_result x) { r = std::move(x); });
            REQUIRE(run_until(io, [&] { return r.has_value(); }));
            CHECK(r->ec == filelock::errc::timeout);
            CAPTURE(r->holder);
            // Both holders (slots, or the readers), not just the first.
            const std::string me = std::to_string(::getpid()) + "@";
            CHECK(r->holder.find(me) == 0);
            CHECK(r->holder.find(", " + me) != std::string::npos);
            CHECK(keys_become(io, name + "/", taken));
        }
        asio::cancellation_signal sig;
        outcome oc;
        c.async_lock(
            name, 30s, kind,
            asio::bind_cancellation_slot(sig.slot(), [&](std::error_code ec, etcd::lock l) {
                oc.done = true;
                oc.ec = ec;
                oc.held = std::move(l);
            }));
        REQUIRE(run_until(io, [&] { return member().keys(name + "/").size() == taken + 1; }));
        sig.emit(asio::cancellation_type::terminal);
        REQUIRE(run_until(io, [&] { return oc.done; }));
        CHECK(oc.ec == filelock::condition::cancelled);
        CHECK(keys_become(io, name + "/", taken));
        release_and_wait(io, h1.held);
        release_and_wait(io, h2.held);
        if (kind.mode == filelock::lock_mode::shared) {
            REQUIRE(run_until(io, [&] { return wr.done; }));
            REQUIRE_FALSE(wr.ec);
            release_and_wait(io, wr.held);
        }
        // A win after the timeouts and the cancellation, released.
        outcome won;
        start_lock_kind(c, name, 5s, kind, won);
        REQUIRE(run_until(io, [&] { return won.done; }));
        REQUIRE_FALSE(won.ec);
        release_and_wait(io, won.held);
        CHECK(keys_become(io, name + "/", 0));
        a.reset();
        b.reset();
        w.reset();
    }
    // Every client gone: its lease revoked (none there that was not before;
    // earlier tests' leases may expire meanwhile).
    CHECK(run_until(
        io, [&] { return no_new_lease(before); }, 10s));
}

TEST_CASE("etcd: a mixed counter of etcdctl lock and our clients comes out exact",
          "[etcd][interop]") {
    const auto name = unique_name("counter");
    const auto dir = std::filesystem::temp_directory_path() /
                     ("filelock-etcd-counter-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    const auto counter = dir / "n";
    { std::ofstream(counter) << 0; }
    constexpr int ctl_rounds = 5, our_rounds = 20;
    const std::string incr =
        "n=$(cat " + counter.string() + "); sleep 0.01; echo $((n+1)) > " + counter.string();
    const std::string cmd = "for i in $(seq " + std::to_string(ctl_rounds) +
                            "); do ETCDCTL_API=3 etcdctl --endpoints=" + member().endpoint() +
                            " lock '" + name + "' -- sh -c '" + incr + "' >/dev/null; done &";
    REQUIRE(std::system(cmd.c_str()) == 0);
    asio::io_context io;
    etcd::client c(io.get_executor(), cfg());
    for (int i = 0; i < our_rounds; ++i) {
        outcome o;
        start_lock(c, name, 30s, o);
        REQUIRE(run_until(io, [&] { return o.done; }));
        REQUIRE_FALSE(o.ec);
        int n = 0;
        { std::ifstream(counter) >> n; }
        std::this_thread::sleep_for(5ms);
        { std::ofstream(counter) << n + 1; }
        release_and_wait(io, o.held);
    }
    // The etcdctl loop finishes.
    for (int i = 0; i < 1000; ++i) {
        int n = 0;
        { std::ifstream(counter) >> n; }
        if (n == ctl_rounds + our_rounds) break;
        std::this_thread::sleep_for(20ms);
    }
    int n = 0;
    { std::ifstream(counter) >> n; }
    CHECK(n == ctl_rounds + our_rounds);
    std::filesystem::remove_all(dir);
}

TEST_CASE("etcd: the lost signal fires when the lease is revoked or the key deleted", "[etcd]") {
    asio::io_context io;
    etcd::client c(io.get_executor(), cfg());
    const auto name = unique_name("lost");
    outcome o;
    start_lock(c, name, 5s, o);
    REQUIRE(run_until(io, [&] { return o.done; }));
    REQUIRE_FALSE(o.ec);
    std::optional<std::error_code> lost;
    c.async_wait_lost(o.held, [&](std::error_code ec) { lost = ec; });
    io.restart();
    io.run_for(50ms);
    CHECK_FALSE(lost);

    SECTION("revoked") {
        char hex[32];
        std::snprintf(hex, sizeof hex, "%llx", static_cast<unsigned long long>(o.held.lease()));
        member().ctl(std::string("lease revoke ") + hex);
    }
    SECTION("key deleted by someone else") { member().ctl("del '" + o.held.key() + "'"); }
    REQUIRE(run_until(
        io, [&] { return lost.has_value(); }, 15s));
    CHECK(*lost == etcd::errc::lost);
    CHECK(o.held.lost());
    // A new lock of this client works (a new lease when the old one is gone).
    outcome again;
    start_lock(c, name, 10s, again);
    REQUIRE(run_until(io, [&] { return again.done; }));
    CHECK_FALSE(again.ec);
    release_and_wait(io, again.held);
    release_and_wait(io, o.held);
}

TEST_CASE("etcd: a released lock's lost wait completes with operation_aborted", "[etcd]") {
    asio::io_context io;
    etcd::client c(io.get_executor(), cfg());
    outcome o;
    start_lock(c, unique_name("lost-release"), 5s, o);
    REQUIRE(run_until(io, [&] { return o.done; }));
    std::optional<std::error_code> lost;
    c.async_wait_lost(o.held, [&](std::error_code ec) { lost = ec; });
    o.held.release();
    REQUIRE(run_until(io, [&] { return lost.has_value(); }));
    CHECK(*lost == test::asio_error_code(asio::error::operation_aborted));
}

TEST_CASE("etcd: bad input is a clear error naming the endpoint and the cause", "[etcd]") {
    asio::io_context io;
    SECTION("unreachable endpoint, within the dial timeout") {
        auto c = cfg();
        c.endpoints = {"http://127.0.0.1:" + std::to_string(test::free_port())};
        c.dial_timeout = 500ms;
        etcd::client cl(io.get_executor(), c);
        std::optional<etcd::lock_result> r;
        cl.async_lock_result("x", 5s, [&](etcd::lock_result x) { r = std::move(x); });
        REQUIRE(run_until(io, [&] { return r.has_value(); }));
        CHECK(r->ec == etcd::errc::unreachable);
        CHECK(r->ec == std::errc::host_unreachable);
        CHECK(r->message.find(c.endpoints[0]) != std::string::npos);
    }
    SECTION("an HTTP error status") {
        auto c = cfg();
        c.endpoints = {member().endpoint() + "/not-the-gateway"};
        etcd::client cl(io.get_executor(), c);
        std::optional<etcd::lock_result> r;
        cl.async_lock_result("x", 5s, [&](etcd::lock_result x) { r = std::move(x); });
        REQUIRE(run_until(io, [&] { return r.has_value(); }));
        CHECK(r->ec == etcd::errc::http_status);
        CHECK(r->message.find("404") != std::string::npos);
    }
    SECTION("an empty name") {
        etcd::client cl(io.get_executor(), cfg());
        outcome o;
        start_lock(cl, "", 5s, o);
        REQUIRE(run_until(io, [&] { return o.done; }));
        CHECK(o.ec == etcd::errc::invalid_argument);
    }
    SECTION("a bad configuration throws with the cause") {
        auto c = cfg();
        c.endpoints = {"ftp://127.0.0.1:1"};
        CHECK_THROWS_WITH(etcd::client(io.get_executor(), c), Catch::Contains("ftp://"));
        c = cfg();
        c.endpoints.clear();
        CHECK_THROWS_AS(etcd::client(io.get_executor(), c), std::system_error);
        c = cfg();
        c.ttl = 0s;
        CHECK_THROWS_AS(etcd::client(io.get_executor(), c), std::system_error);
    }
    SECTION("bad credentials") {
        auto c = cfg();
        c.user = "nobody";
        c.password = "wrong";
        etcd::client cl(io.get_executor(), c);
        std::optional<etcd::lock_result> r;
        cl.async_lock_result("x", 5s, [&](etcd::lock_result x) { r = std::move(x); });
        REQUIRE(run_until(io, [&] { return r.has_value(); }));
        // Auth is not enabled on the member: etcd refuses the request.
        CHECK(r->ec);
        CHECK(r->message.find(member().endpoint()) != std::string::npos);
    }
}

TEST_CASE("etcd: the coroutine form throws timeout_error naming the holder", "[etcd]") {
    asio::io_context io;
    etcd::client a(io.get_executor(), cfg()), b(io.get_executor(), cfg());
    const auto name = unique_name("coro");
    std::optional<etcd::lock> held;
    std::string what, holder;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            held = co_await a.async_lock(name, 5s);
            try {
                co_await b.async_lock(name, 200ms);
            } catch (const filelock::timeout_error& e) {
                what = e.what();
                holder = e.holder();
            }
            held->release();
        },
        asio::detached);
    REQUIRE(run_until(io, [&] { return !what.empty(); }));
    CHECK(what.find(name) != std::string::npos);
    CHECK(holder.find(std::to_string(::getpid()) + "@") == 0);
}

TEST_CASE("etcd: the synchronous client takes readers together, and a slot of N", "[etcd][slots]") {
    const auto name = unique_name("sync-kinds");
    etcd::sync_client a(cfg()), b(cfg());
    auto r1 = a.lock(name, 5s, reader);
    auto r2 = b.lock(name, 5s, reader);
    CHECK(r1.held());
    CHECK(r2.held());
    std::error_code ec;
    auto w = b.lock(name, 0ms, ec);  // a writer: not beside readers
    CHECK(ec == filelock::errc::timeout);
    CHECK_FALSE(w.held());
    r1.release();
    r2.release();
    const auto slots = unique_name("sync-slots");
    auto s1 = a.lock(slots, 5s, {.slots = 2});
    auto s2 = b.lock(slots, 5s, {.slots = 2}, ec);
    CHECK_FALSE(ec);
    CHECK(s1.slot() == 0);
    CHECK(s2.slot() == 1);
    CHECK_THROWS_AS(a.lock(slots, 0ms, {.slots = 2}), filelock::timeout_error);
}

TEST_CASE("etcd: the synchronous client locks, times out and releases from any thread", "[etcd]") {
    const auto name = unique_name("sync");
    etcd::sync_client a(cfg()), b(cfg());
    auto held = a.lock(name, 5s);
    CHECK(held.held());
    CHECK_THROWS_AS(b.lock(name, 100ms), filelock::timeout_error);
    std::error_code ec;
    auto none = b.lock(name, 0ms, ec);
    CHECK(ec == filelock::errc::timeout);
    CHECK_FALSE(none.held());
    std::thread t([&] { held.release(); });
    auto next = b.lock(name, 5s);
    t.join();
    CHECK(next.held());
}

namespace {

etcd::inspect_result inspect_now(asio::io_context& io, etcd::client& c, const std::string& name) {
    std::optional<etcd::inspect_result> r;
    c.async_inspect_result(name, [&](etcd::inspect_result x) { r = std::move(x); });
    REQUIRE(run_until(io, [&] { return r.has_value(); }));
    return std::move(*r);
}

std::string lease_hex(std::int64_t lease) {
    char hex[32];
    std::snprintf(hex, sizeof hex, "%llx", static_cast<unsigned long long>(lease));
    return hex;
}

}  // namespace

TEST_CASE("etcd inspect: etcdctl lock's holder, then waiters in queue order with their tokens",
          "[etcd][inspect][interop][session]") {
    const auto name = unique_name("inspect-ctl");
    const auto dir = std::filesystem::temp_directory_path() /
                     ("filelock-etcd-inspect-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    const auto gate = dir / "gate";
    std::ofstream(gate.string()).put('x');
    asio::io_context io;
    etcd::client a(io.get_executor(), cfg(5s)), b(io.get_executor(), cfg()),
        viewer(io.get_executor(), cfg());
    // etcdctl holds until the gate file is removed.
    const std::string ctl =
        "ETCDCTL_API=3 etcdctl --endpoints=" + member().endpoint() + " lock '" + name + "' -- ";
    REQUIRE(std::system((ctl + "sh -c 'while [ -e " + gate.string() +
                         " ]; do sleep 0.05; done' >/dev/null 2>&1 &")
                            .c_str()) == 0);
    REQUIRE(keys_become(io, name + "/", 1));
    const std::string ctl_key = member().keys(name + "/").at(0);
    outcome oa, ob;
    start_lock(a, name, 30s, oa);
    REQUIRE(keys_become(io, name + "/", 2));
    // A waiting etcdctl between our two waiters.
    REQUIRE(std::system((ctl + "true >/dev/null 2>&1 &").c_str()) == 0);
    REQUIRE(keys_become(io, name + "/", 3));
    start_lock(b, name, 30s, ob);
    REQUIRE(keys_become(io, name + "/", 4));

    const auto sent = viewer.requests();
    const auto r = inspect_now(io, viewer, name);
    REQUIRE_FALSE(r.ec);
    // One range, then one time-to-live per lease (four sessions).
    CHECK(viewer.requests() - sent == 1 + 4);
    const auto& st = r.status;
    CHECK(st.name == name);
    CHECK(st.endpoint == member().endpoint());
    REQUIRE(st.holders.size() == 1);
    REQUIRE(st.waiters.size() == 3);
    const auto& h = st.holders[0];
    CHECK(h.key == ctl_key);
    CHECK(h.kind == filelock::lock_kind::exclusive);  // etcdctl's empty value
    CHECK(h.pid == 0);
    CHECK(h.content.empty());
    REQUIRE(h.ttl.has_value());  // etcdctl lock's lease: --ttl 10 by default
    CHECK(*h.ttl > 0s);
    CHECK(*h.ttl <= 10s);
    CHECK(h.position == 0);
    CHECK(st.waiters[0].key == name + "/" + lease_hex(a.lease()));
    CHECK(st.waiters[2].key == name + "/" + lease_hex(b.lease()));
    CHECK(st.waiters[1].pid == 0);  // the second etcdctl
    for (std::size_t i : {0u, 2u}) {
        CHECK(st.waiters[i].pid == ::getpid());
        CHECK_FALSE(st.waiters[i].host.empty());
        REQUIRE(st.waiters[i].ttl.has_value());
    }
    CHECK(*st.waiters[0].ttl <= 5s);  // a's lease's TTL
    CHECK(st.waiters[0].lease == a.lease());
    std::int64_t last = h.fencing_token;
    for (std::size_t i = 0; i < st.waiters.size(); ++i) {
        CHECK(st.waiters[i].position == i + 1);
        CHECK(st.waiters[i].fencing_token > last);
        last = st.waiters[i].fencing_token;
    }
    // The viewer took nothing: no lease, no key.
    CHECK(viewer.lease() == 0);
    CHECK(member().keys(name + "/").size() == 4);

    // The tokens inspect gave are the ones the waiters hold with.
    std::filesystem::remove(gate);
    REQUIRE(run_until(io, [&] { return oa.done; }));
    REQUIRE_FALSE(oa.ec);
    CHECK(oa.held.fencing_token() == st.waiters[0].fencing_token);
    const auto r2 = inspect_now(io, viewer, name);
    REQUIRE_FALSE(r2.ec);
    REQUIRE(r2.status.holders.size() == 1);
    CHECK(r2.status.holders[0].key == oa.held.key());
    CHECK(r2.status.holders[0].fencing_token == oa.held.fencing_token());
    REQUIRE(r2.status.waiters.size() == 2);
    CHECK(r2.status.waiters[0].position == 1);
    release_and_wait(io, oa.held);
    REQUIRE(run_until(io, [&] { return ob.done; }));
    REQUIRE_FALSE(ob.ec);
    CHECK(ob.held.fencing_token() == st.waiters[2].fencing_token);
    release_and_wait(io, ob.held);
    CHECK(keys_become(io, name + "/", 0));
    const auto free = inspect_now(io, viewer, name);
    REQUIRE_FALSE(free.ec);
    CHECK_FALSE(free.status.held());
    CHECK(free.status.waiters.empty());
    CHECK(viewer.lease() == 0);
    std::filesystem::remove_all(dir);
}

TEST_CASE("etcd inspect: readers before the first writer hold, and the N lowest slots",
          "[etcd][inspect][slots][session]") {
    asio::io_context io;
    etcd::client a(io.get_executor(), cfg()), b(io.get_executor(), cfg()),
        viewer(io.get_executor(), cfg());
    SECTION("shared") {
        const auto name = unique_name("inspect-shared");
        outcome r1, r2, w, r3;
        start_lock_kind(a, name, 5s, reader, r1);
        start_lock_kind(b, name, 5s, reader, r2);
        REQUIRE(run_until(io, [&] { return r1.done && r2.done; }));
        REQUIRE(r1.held.held());
        REQUIRE(r2.held.held());
        start_lock(a, name, 30s, w);  // a writer waits for the readers
        REQUIRE(keys_become(io, name + "/", 3));
        start_lock_kind(b, name, 30s, reader, r3);  // a reader waits for the writer
        REQUIRE(keys_become(io, name + "/", 4));
        const auto r = inspect_now(io, viewer, name);
        REQUIRE_FALSE(r.ec);
        REQUIRE(r.status.holders.size() == 2);
        REQUIRE(r.status.waiters.size() == 2);
        std::set<std::string> holders{r.status.holders[0].key, r.status.holders[1].key};
        CHECK(holders == std::set<std::string>{r1.held.key(), r2.held.key()});
        for (const auto& h : r.status.holders) {
            CHECK(h.kind == filelock::lock_kind::shared);
            CHECK(h.pid == ::getpid());
        }
        CHECK(r.status.holders[0].fencing_token ==
              std::min(r1.held.fencing_token(), r2.held.fencing_token()));
        CHECK(r.status.waiters[0].kind == filelock::lock_kind::exclusive);
        CHECK(r.status.waiters[0].key == name + "/" + lease_hex(a.lease()));
        CHECK(r.status.waiters[1].kind == filelock::lock_kind::shared);
        r1.held.release();
        r2.held.release();
        REQUIRE(run_until(io, [&] { return w.done; }));
        CHECK(w.held.fencing_token() == r.status.waiters[0].fencing_token);
        w.held.release();
        REQUIRE(run_until(io, [&] { return r3.done; }));
        CHECK(r3.held.fencing_token() == r.status.waiters[1].fencing_token);
        release_and_wait(io, r3.held);
        CHECK(keys_become(io, name + "/", 0));
    }
    SECTION("slots") {
        const auto name = unique_name("inspect-slots");
        const etcd::lock_options two{.slots = 2};
        outcome s1, s2, s3;
        start_lock_kind(a, name, 5s, two, s1);
        start_lock_kind(a, name, 5s, two, s2);  // one client, two keys
        REQUIRE(run_until(io, [&] { return s1.done && s2.done; }));
        start_lock_kind(b, name, 30s, two, s3);
        REQUIRE(keys_become(io, name + "/", 3));
        const auto r = inspect_now(io, viewer, name);
        REQUIRE_FALSE(r.ec);
        REQUIRE(r.status.holders.size() == 2);
        REQUIRE(r.status.waiters.size() == 1);
        for (const auto& h : r.status.holders) {
            CHECK(h.kind == filelock::lock_kind::slot);
            CHECK(h.slots == 2);
            CHECK(h.lease == a.lease());
        }
        CHECK(r.status.waiters[0].lease == b.lease());
        s1.held.release();
        REQUIRE(run_until(io, [&] { return s3.done; }));
        CHECK(s3.held.fencing_token() == r.status.waiters[0].fencing_token);
        s2.held.release();
        release_and_wait(io, s3.held);
        CHECK(keys_become(io, name + "/", 0));
    }
    CHECK(viewer.lease() == 0);
}

TEST_CASE("etcd wait_change: a key created or deleted after the revision ends it, none missed",
          "[etcd][inspect][session]") {
    asio::io_context io;
    etcd::client a(io.get_executor(), cfg()), viewer(io.get_executor(), cfg());
    const auto name = unique_name("change");
    const auto st = inspect_now(io, viewer, name);
    REQUIRE_FALSE(st.ec);
    // A change before the wait starts: the watch begins after the revision
    // read, so it is seen.
    outcome oa;
    start_lock(a, name, 5s, oa);
    REQUIRE(run_until(io, [&] { return oa.done; }));
    std::optional<std::pair<test::asio_error_code, std::int64_t>> got;
    viewer.async_wait_change(
        name, st.status.revision,
        [&](test::asio_error_code e, std::int64_t rev) { got.emplace(e, rev); });
    REQUIRE(run_until(io, [&] { return got.has_value(); }));
    CHECK_FALSE(got->first);
    CHECK(got->second >= oa.held.fencing_token());
    // Nothing changes: the wait goes on (the run ends by its bound);
    // a release ends it.
    const auto now = inspect_now(io, viewer, name);
    got.reset();
    viewer.async_wait_change(
        name, now.status.revision,
        [&](test::asio_error_code e, std::int64_t rev) { got.emplace(e, rev); });
    io.restart();
    io.run_for(200ms);
    CHECK_FALSE(got.has_value());
    oa.held.release();
    REQUIRE(run_until(io, [&] { return got.has_value(); }));
    CHECK_FALSE(got->first);
    CHECK(got->second > now.status.revision);
    // Keys under another name change nothing here; cancellation ends it.
    asio::cancellation_signal sig;
    const auto released_at = got->second;
    got.reset();
    viewer.async_wait_change(
        name, released_at,
        asio::bind_cancellation_slot(
            sig.slot(), [&](test::asio_error_code e, std::int64_t rev) { got.emplace(e, rev); }));
    outcome other;
    start_lock(a, name + "-other", 5s, other);
    REQUIRE(run_until(io, [&] { return other.done; }));
    io.restart();
    io.run_for(100ms);
    CHECK_FALSE(got.has_value());
    sig.emit(asio::cancellation_type::terminal);
    REQUIRE(run_until(io, [&] { return got.has_value(); }));
    CHECK(got->first == test::asio_error_code(asio::error::operation_aborted));
    release_and_wait(io, other.held);
    CHECK(viewer.lease() == 0);
}

TEST_CASE("etcd inspect: the synchronous and coroutine forms, cancellation and bad input",
          "[etcd][inspect]") {
    const auto name = unique_name("inspect-sync");
    etcd::sync_client a(cfg()), viewer(cfg());
    auto held = a.lock(name, 5s);
    const auto st = viewer.inspect(name);
    REQUIRE(st.holders.size() == 1);
    CHECK(st.holders[0].key == held.key());
    CHECK(st.holders[0].fencing_token == held.fencing_token());
    CHECK(st.holders[0].content == std::to_string(::getpid()) + "@" + st.holders[0].host);
    std::error_code ec = make_error_code(etcd::errc::lost);
    CHECK(viewer.inspect(name, ec).held());
    CHECK_FALSE(ec);
    held.release();
    CHECK_THROWS_WITH(viewer.inspect(""), Catch::Contains("empty"));
    viewer.inspect("", ec);
    CHECK(ec == etcd::errc::invalid_argument);

    auto bad = cfg();
    bad.endpoints = {"http://127.0.0.1:" + std::to_string(test::free_port())};
    bad.dial_timeout = 500ms;
    etcd::sync_client nowhere(bad);
    CHECK(nowhere.inspect(name, ec).holders.empty());
    CHECK(ec == etcd::errc::unreachable);
    CHECK_THROWS_WITH(nowhere.inspect(name), Catch::Contains(bad.endpoints[0]));

    asio::io_context io;
    etcd::client c(io.get_executor(), cfg());
    bool got = false;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            // The synchronous release does not wait for etcd's answer.
            for (int i = 0; i < 250 && !got; ++i) {
                const auto s = co_await c.async_inspect(name);
                got = !s.held();
                asio::steady_timer t(io, 20ms);
                if (!got) co_await t.async_wait(asio::use_awaitable);
            }
        },
        asio::detached);
    REQUIRE(run_until(io, [&] { return got; }));
    asio::cancellation_signal sig;
    std::optional<test::asio_error_code> cancelled;
    c.async_inspect(
        name, asio::bind_cancellation_slot(
                  sig.slot(), [&](test::asio_error_code e, etcd::lock_status) { cancelled = e; }));
    sig.emit(asio::cancellation_type::terminal);
    REQUIRE(run_until(io, [&] { return cancelled.has_value(); }));
    CHECK(*cancelled == test::asio_error_code(asio::error::operation_aborted));
}

TEST_CASE("etcd: a SIGKILLed holder's lock is granted when its lease expires, not at a deadline",
          "[etcd][session][faults]") {
    const auto name = unique_name("killed");
    // The member is started here, before the fork: one that the child
    // started would die with it (PR_SET_PDEATHSIG), and the waiter would
    // find a new member with the lock free (the case ran first in its
    // process, as in the test `etcd faults`, and passed without a lease).
    const auto holder_cfg = cfg(2s);
    int pipefd[2];
    REQUIRE(::pipe(pipefd) == 0);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::close(pipefd[0]);
        try {
            asio::io_context io;
            etcd::client c(io.get_executor(), holder_cfg);
            c.async_lock(name, 5s, [&](std::error_code ec, etcd::lock l) {
                if (ec) ::_exit(3);
                static etcd::lock keep;
                keep = std::move(l);
                (void)!::write(pipefd[1], "x", 1);
            });
            io.run();
        } catch (...) {
        }
        ::_exit(4);
    }
    ::close(pipefd[1]);
    char x;
    const bool held = ::read(pipefd[0], &x, 1) == 1;
    ::close(pipefd[0]);
    // The holder's key is on this member while it lives (it keeps its
    // lease alive): only the lease's expiry can free the lock.
    const auto keys = held ? member().keys(name + "/") : std::vector<std::string>{};
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    const auto killed = std::chrono::steady_clock::now();
    REQUIRE(held);
    REQUIRE(keys.size() == 1);
    asio::io_context io;
    etcd::client c(io.get_executor(), cfg());
    outcome o;
    start_lock(c, name, 30s, o);
    REQUIRE(run_until(
        io, [&] { return o.done; }, 40s));
    REQUIRE_FALSE(o.ec);
    // The dead holder's key went with its lease.
    CHECK(member().keys(name + "/") == std::vector<std::string>{o.held.key()});
    const auto waited = std::chrono::steady_clock::now() - killed;
    // The lease's TTL (2 s), then etcd's look for expired leases (every
    // 500 ms), its revoke and the waiter's wake-up: 2.2-2.4 s here, idle or
    // loaded; the bound leaves room for a slower machine (it was TTL + 1 s)
    // and is still far from what a wrong lease gives (the default TTL,
    // 10 s) or a waiter that wins at its own deadline only (30 s).
    CAPTURE(std::chrono::duration_cast<std::chrono::milliseconds>(waited).count());
    CHECK(waited < 6s);
    release_and_wait(io, o.held);
}

TEST_CASE(
    "etcd: a holder cut off from etcd is told it lost the lock before another is granted "
    "it",
    "[etcd][faults]") {
    // Its own member: it is stopped for longer than the TTL.
    test::etcd_cluster m(1);
    auto c = cfg(2s);
    c.endpoints = {m.endpoint()};
    c.request_timeout = 1000ms;
    asio::io_context io;
    etcd::client holder(io.get_executor(), c), waiter(io.get_executor(), c);
    const auto name = unique_name("cutoff");
    outcome oh, ow;
    start_lock(holder, name, 5s, oh);
    REQUIRE(run_until(io, [&] { return oh.done; }));
    REQUIRE_FALSE(oh.ec);
    start_lock(waiter, name, 60s, ow);
    REQUIRE(run_until(io, [&] { return m.keys(name + "/").size() == 2; }));
    std::optional<std::chrono::steady_clock::time_point> lost_at;
    std::error_code lost_ec;
    holder.async_wait_lost(oh.held, [&](std::error_code ec) {
        lost_at = std::chrono::steady_clock::now();
        lost_ec = ec;
    });
    m.signal(0, SIGSTOP);
    const auto stopped = std::chrono::steady_clock::now();
    // The holder's keep-alives get no answer: it learns of the loss on its
    // own deadline (last keep-alive sent + TTL - margin), with etcd stopped.
    REQUIRE(run_until(
        io, [&] { return lost_at.has_value(); }, 10s));
    CHECK(lost_ec == etcd::errc::lost);
    CHECK(*lost_at - stopped < 2s);
    CHECK_FALSE(ow.done);
    std::this_thread::sleep_for(1s);  // etcd stays stopped past the TTL
    m.signal(0, SIGCONT);
    REQUIRE(run_until(
        io, [&] { return ow.done; }, 40s));
    const auto granted = std::chrono::steady_clock::now();
    REQUIRE_FALSE(ow.ec);
    CHECK(*lost_at < granted);
    CHECK(ow.held.fencing_token() > oh.held.fencing_token());
    release_and_wait(io, ow.held);
}

namespace {
// The member that is the cluster's leader (etcdctl endpoint status).
int leader_of(const test::etcd_cluster& c, int members) {
    for (int i = 0; i < members; ++i) {
        const auto out = test::sh("ETCDCTL_API=3 etcdctl --endpoints=" + c.endpoint(i) +
                                  " endpoint status -w table 2>/dev/null");
        for (std::size_t pos = 0; (pos = out.find(c.endpoint(i), pos)) != std::string::npos;
             ++pos) {
            const auto eol = out.find('\n', pos);
            if (out.substr(pos, eol - pos).find("true") != std::string::npos) return i;
        }
    }
    return -1;
}
}  // namespace

TEST_CASE("etcd: on a 3-member cluster, killing the leader never gives two holders",
          "[etcd][session][faults]") {
    test::etcd_cluster cl(3);
    etcd::config c;
    c.endpoints = cl.endpoints();
    c.request_timeout = 2000ms;
    asio::io_context io;
    constexpr int clients = 3;
    std::vector<std::unique_ptr<etcd::client>> cs;
    for (int i = 0; i < clients; ++i)
        cs.push_back(std::make_unique<etcd::client>(io.get_executor(), c));
    const auto name = unique_name("cluster");
    std::vector<std::int64_t> tokens;
    int inside = 0, overlaps = 0, rounds = 0, errors = 0;
    bool killed = false;
    std::vector<std::function<void()>> loops(clients);
    for (int i = 0; i < clients; ++i) {
        loops[i] = [&, i] {
            cs[i]->async_lock(name, 30s, [&, i](std::error_code ec, etcd::lock l) {
                if (ec) {
                    ++errors;
                    UNSCOPED_INFO("client " << i << ": " << ec.message());
                    if (rounds < 60) loops[i]();
                    return;
                }
                if (++inside > 1) ++overlaps;
                tokens.push_back(l.fencing_token());
                auto t = std::make_shared<asio::steady_timer>(io, 10ms);
                auto held = std::make_shared<etcd::lock>(std::move(l));
                t->async_wait([&, i, t, held](std::error_code) {
                    --inside;
                    ++rounds;
                    held->release();
                    if (rounds < 60) loops[i]();
                });
            });
        };
        loops[i]();
    }
    const bool finished = run_until(
        io,
        [&] {
            if (!killed && rounds >= 15) {
                const int leader = leader_of(cl, 3);
                REQUIRE(leader >= 0);
                cl.kill_member(leader);
                killed = true;
            }
            return rounds >= 60 && inside == 0;
        },
        120s);
    CHECK(finished);
    CHECK(killed);
    CHECK(overlaps == 0);
    CHECK(errors == 0);
    CHECK(rounds >= 60);
    for (std::size_t i = 1; i < tokens.size(); ++i) CHECK(tokens[i] > tokens[i - 1]);
    cs.clear();
    io.restart();
    io.run_for(500ms);
}

namespace {
std::string run_tool() {
    const char* p = std::getenv("FILELOCK_RUN");
    return p && *p ? p : "filelock-run";
}
std::string etcd_target(const std::string& name) {
    return "etcd://" + member().endpoint().substr(7) + "/" + name;
}
}  // namespace

TEST_CASE("etcd: filelock-run runs COMMAND under an etcd lock and passes its status", "[etcd]") {
    const auto name = unique_name("tool");
    int st = -1;
    const auto out =
        test::sh(run_tool() + " " + etcd_target(name) +
                     " sh -c 'echo token=$FILELOCK_FENCING_TOKEN; "
                     "ETCDCTL_API=3 etcdctl --endpoints=" +
                     member().endpoint() + " get --prefix --keys-only " + name + "/; exit 7' 2>&1",
                 &st);
    CHECK(st == 7);
    CHECK(out.find("token=") != std::string::npos);
    CHECK(out.find(name + "/") != std::string::npos);  // held while COMMAND ran
    CHECK(member().keys(name + "/").empty());          // and released after
}

TEST_CASE("etcd: filelock-run -n and -w report the holder with the conflict status", "[etcd]") {
    asio::io_context io;
    etcd::client c(io.get_executor(), cfg());
    const auto name = unique_name("tool-conflict");
    outcome o;
    start_lock(c, name, 5s, o);
    REQUIRE(run_until(io, [&] { return o.done; }));
    int st = -1;
    auto out = test::sh(run_tool() + " -n --verbose " + etcd_target(name) + " true 2>&1", &st);
    CHECK(st == 1);
    CHECK(out.find("held by " + std::to_string(::getpid()) + "@") != std::string::npos);
    out = test::sh(run_tool() + " -E 9 -w 0.2 --verbose " + etcd_target(name) + " true 2>&1", &st);
    CHECK(st == 9);
    CHECK(out.find("timeout while waiting to get lock") != std::string::npos);
    CHECK(keys_become(io, name + "/", 1));
    release_and_wait(io, o.held);
}

TEST_CASE("etcd: filelock-run -s takes a reader, --slots N one of N slots", "[etcd][slots]") {
    asio::io_context io;
    etcd::client c(io.get_executor(), cfg());
    int st = -1;
    SECTION("-s beside a reader, not beside a writer") {
        const auto name = unique_name("tool-shared");
        outcome r;
        start_lock_kind(c, name, 5s, reader, r);
        REQUIRE(run_until(io, [&] { return r.done; }));
        REQUIRE_FALSE(r.ec);
        test::sh(run_tool() + " -s -n " + etcd_target(name) + " true 2>&1", &st);
        CHECK(st == 0);
        const auto out =
            test::sh(run_tool() + " -n --verbose " + etcd_target(name) + " true 2>&1", &st);
        CHECK(st == 1);  // a writer waits for the reader
        CHECK(out.find("held by " + std::to_string(::getpid()) + "@") != std::string::npos);
        release_and_wait(io, r.held);
        outcome w;
        start_lock(c, name, 5s, w);
        REQUIRE(run_until(io, [&] { return w.done; }));
        test::sh(run_tool() + " -s -n " + etcd_target(name) + " true 2>&1", &st);
        CHECK(st == 1);  // a reader waits for the writer
        release_and_wait(io, w.held);
        CHECK(keys_become(io, name + "/", 0));
    }
    SECTION("--slots 2: a second holder, not a third") {
        const auto name = unique_name("tool-slots");
        const etcd::lock_options two{.slots = 2};
        outcome a, b;
        start_lock_kind(c, name, 5s, two, a);
        REQUIRE(run_until(io, [&] { return a.done; }));
        REQUIRE_FALSE(a.ec);
        test::sh(run_tool() + " --slots 2 -n " + etcd_target(name) + " true 2>&1", &st);
        CHECK(st == 0);
        start_lock_kind(c, name, 5s, two, b);
        REQUIRE(run_until(io, [&] { return b.done; }));
        REQUIRE_FALSE(b.ec);
        test::sh(run_tool() + " --slots 2 -n " + etcd_target(name) + " true 2>&1", &st);
        CHECK(st == 1);
        release_and_wait(io, a.held);
        release_and_wait(io, b.held);
        CHECK(keys_become(io, name + "/", 0));
    }
    SECTION("bad counts are usage errors") {
        for (const char* bad : {"0", "1025", "x"}) {
            const auto out = test::sh(run_tool() + " --slots " + bad + " " +
                                          etcd_target(unique_name("tool-bad")) + " true 2>&1",
                                      &st);
            CHECK(st == 64);
            CHECK(out.find("--slots") != std::string::npos);
        }
        test::sh(
            run_tool() + " -s --slots 2 " + etcd_target(unique_name("tool-bad")) + " true 2>&1",
            &st);
        CHECK(st == 64);
    }
}

TEST_CASE("etcd: filelock-run --status [--json] shows the holder and the waiters, exit 1 held",
          "[etcd][inspect]") {
    asio::io_context io;
    etcd::client a(io.get_executor(), cfg()), b(io.get_executor(), cfg());
    const auto name = unique_name("tool-status");
    const auto target = etcd_target(name);
    int st = -1;
    auto out = test::sh(run_tool() + " --status " + target + " 2>&1", &st);
    CHECK(st == 0);
    CHECK(out == target + ": free\n");
    outcome oa, ob;
    start_lock(a, name, 5s, oa);
    REQUIRE(run_until(io, [&] { return oa.done; }));
    REQUIRE_FALSE(oa.ec);
    start_lock_kind(b, name, 30s, reader, ob);
    REQUIRE(keys_become(io, name + "/", 2));
    const auto leases = lease_ids();

    out = test::sh(run_tool() + " --status --json " + target, &st);
    CHECK(st == 1);
    const auto j = nlohmann::json::parse(out, nullptr, false);
    REQUIRE(j.is_object());
    CHECK(j["held"] == true);
    REQUIRE(j["holders"].size() == 1);
    REQUIRE(j["waiters"].size() == 1);
    const auto& h = j["holders"][0];
    CHECK(h["key"] == oa.held.key());
    CHECK(h["fencing_token"] == oa.held.fencing_token());
    CHECK(h["pid"] == ::getpid());
    CHECK(h["mode"] == "exclusive");
    CHECK(h["lease"] == a.lease());
    CHECK(h["ttl"].is_number());
    CHECK_FALSE(h.contains("queue_position"));
    const auto& w = j["waiters"][0];
    CHECK(w["key"].get<std::string>().rfind(name + "/" + lease_hex(b.lease()) + "/", 0) == 0);
    CHECK(w["mode"] == "shared");
    CHECK(w["queue_position"] == 1);
    CHECK(w["fencing_token"].get<std::int64_t>() > oa.held.fencing_token());

    out = test::sh(run_tool() + " -E 7 --status " + target + " 2>&1", &st);
    CHECK(st == 7);
    CHECK(out.find(target + ": held\n") == 0);
    CHECK(out.find("holder   " + std::to_string(::getpid())) != std::string::npos);
    CHECK(out.find(oa.held.key()) != std::string::npos);
    CHECK(out.find("queued #1") != std::string::npos);
    // It took nothing: no key, no lease.
    CHECK(member().keys(name + "/").size() == 2);
    CHECK(no_new_lease(leases));

    out = test::sh(
        run_tool() + " --status etcd://127.0.0.1:" + std::to_string(test::free_port()) + "/x 2>&1",
        &st);
    CHECK(st == 69);
    CHECK(out.find("127.0.0.1") != std::string::npos);
    test::sh(run_tool() + " --json " + target + " 2>&1", &st);
    CHECK(st == 64);
    test::sh(run_tool() + " --status " + target + " true 2>&1", &st);
    CHECK(st == 64);

    oa.held.release();
    REQUIRE(run_until(io, [&] { return ob.done; }));
    release_and_wait(io, ob.held);
    CHECK(keys_become(io, name + "/", 0));
}

namespace {

// The lines of `path` (a watcher's output) once it has at least `n`, or
// what it has after 10 s; runs `io` meanwhile (the clients' keep-alives and
// acquisitions).
std::vector<std::string> lines_of(asio::io_context& io, const std::filesystem::path& path,
                                  std::size_t n) {
    std::vector<std::string> lines;
    run_until(
        io,
        [&] {
            lines.clear();
            std::ifstream in(path);
            for (std::string l; std::getline(in, l);) lines.push_back(l);
            return lines.size() >= n;
        },
        10s);
    return lines;
}

}  // namespace

TEST_CASE(
    "etcd: filelock-run --watch --json: lines for a join, a leave and a handoff, until SIGINT",
    "[etcd][inspect]") {
    asio::io_context io;
    etcd::client a(io.get_executor(), cfg()), b(io.get_executor(), cfg());
    const auto name = unique_name("tool-watch");
    const auto out = std::filesystem::temp_directory_path() /
                     ("filelock-etcd-watch-" + std::to_string(::getpid()));
    const std::string tool = run_tool(), target = etcd_target(name);
    const pid_t watcher = ::fork();
    REQUIRE(watcher >= 0);
    if (watcher == 0) {
        std::freopen(out.c_str(), "w", stdout);
        ::execl(tool.c_str(), tool.c_str(), "--watch", "--json", target.c_str(), nullptr);
        ::_exit(127);
    }
    auto events = [&](std::size_t n) {
        std::vector<nlohmann::json> v;
        for (const auto& l : lines_of(io, out, n))
            v.push_back(nlohmann::json::parse(l, nullptr, false));
        return v;
    };
    auto e = events(1);
    REQUIRE(e.size() == 1);
    CHECK(e[0]["event"] == "state");
    CHECK(e[0]["held"] == false);

    outcome oa, ob, oc;
    start_lock(a, name, 5s, oa);
    REQUIRE(run_until(io, [&] { return oa.done; }));
    e = events(2);
    REQUIRE(e.size() == 2);
    CHECK(e[1]["event"] == "acquired");
    CHECK(e[1]["party"]["key"] == oa.held.key());
    CHECK(e[1]["party"]["fencing_token"] == oa.held.fencing_token());

    asio::cancellation_signal sig;
    b.async_lock(name, 30s,
                 asio::bind_cancellation_slot(sig.slot(), [&](std::error_code ec, etcd::lock l) {
                     ob.done = true;
                     ob.ec = ec;
                     ob.held = std::move(l);
                 }));
    e = events(3);
    REQUIRE(e.size() == 3);
    CHECK(e[2]["event"] == "joined");
    CHECK(e[2]["role"] == "waiter");
    CHECK(e[2]["party"]["key"] == name + "/" + lease_hex(b.lease()));
    CHECK(e[2]["party"]["queue_position"] == 1);
    sig.emit(asio::cancellation_type::terminal);
    REQUIRE(run_until(io, [&] { return ob.done; }));
    e = events(4);
    REQUIRE(e.size() == 4);
    CHECK(e[3]["event"] == "left");
    CHECK(e[3]["party"]["key"] == name + "/" + lease_hex(b.lease()));

    start_lock(b, name, 30s, oc);
    REQUIRE(events(5).size() == 5);
    oa.held.release();
    REQUIRE(run_until(io, [&] { return oc.done; }));
    e = events(7);
    REQUIRE(e.size() == 7);
    CHECK(e[5]["event"] == "released");
    CHECK(e[5]["party"]["key"] == e[1]["party"]["key"]);
    CHECK(e[6]["event"] == "acquired");
    CHECK(e[6]["party"]["key"] == oc.held.key());
    release_and_wait(io, oc.held);
    REQUIRE(events(8).size() == 8);

    ::kill(watcher, SIGINT);
    int status = 0;
    REQUIRE(::waitpid(watcher, &status, 0) == watcher);
    CHECK(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGINT);
    const auto all = events(8);
    CHECK(all.size() == 8);  // nothing more than the changes
    for (const auto& j : all) CHECK(j.is_object());
    std::filesystem::remove(out);
    CHECK(keys_become(io, name + "/", 0));
}

TEST_CASE("etcd: filelock-run sends the lost signal to COMMAND and exits 75", "[etcd]") {
    const auto name = unique_name("tool-lost");
    const auto dir = std::filesystem::temp_directory_path() /
                     ("filelock-etcd-tool-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    const auto got = dir / "got";
    const std::string cmd = "(" + run_tool() + " --lost-signal USR1 " + etcd_target(name) +
                            " sh -c 'trap \"echo usr1 > " + got.string() +
                            "; exit 3\" USR1; sleep 20 & wait' >/dev/null 2>&1; echo $? > " +
                            (dir / "status.tmp").string() + "; mv " +
                            (dir / "status.tmp").string() + " " + (dir / "status").string() + ") &";
    REQUIRE(std::system(cmd.c_str()) == 0);
    std::vector<std::string> keys;
    for (int i = 0; i < 500 && keys.empty(); ++i) {
        keys = member().keys(name + "/");
        std::this_thread::sleep_for(10ms);
    }
    REQUIRE(keys.size() == 1);
    member().ctl("lease revoke " + keys[0].substr(keys[0].rfind('/') + 1));
    // The status file appears whole (renamed into place): no sleep that
    // guesses when the shell has written it.
    for (int i = 0; i < 3000 && !std::filesystem::exists(dir / "status"); ++i)
        std::this_thread::sleep_for(10ms);
    int status = -1;
    std::ifstream(dir / "status") >> status;
    CHECK(status == 75);
    CHECK(std::filesystem::exists(got));
    std::filesystem::remove_all(dir);
}

TEST_CASE("etcd: filelock-run refuses bad etcd targets and options", "[etcd]") {
    int st = -1;
    test::sh(run_tool() + " etcd://127.0.0.1:2379/ true 2>&1", &st);
    CHECK(st == 64);
    test::sh(run_tool() + " " + etcd_target("x") + " 2>&1", &st);
    CHECK(st == 64);
    test::sh(run_tool() + " --ttl 5 /tmp/x.lock true 2>&1", &st);
    CHECK(st == 64);
    const auto out = test::sh(
        run_tool() + " etcd://127.0.0.1:" + std::to_string(test::free_port()) + "/x true 2>&1",
        &st);
    CHECK(st == 69);
    CHECK(out.find("127.0.0.1") != std::string::npos);
}

TEST_CASE("etcd: a watch whose connection drops resumes and misses no deletion",
          "[etcd][session]") {
    test::tcp_proxy proxy(
        std::stoi(member().endpoint().substr(member().endpoint().rfind(':') + 1)));
    asio::io_context io;
    etcd::client holder(io.get_executor(), cfg());
    auto wcfg = cfg();
    wcfg.endpoints = {proxy.endpoint()};
    etcd::client waiter(io.get_executor(), wcfg);
    const auto name = unique_name("dropped");
    outcome oh, ow;
    start_lock(holder, name, 5s, oh);
    REQUIRE(run_until(io, [&] { return oh.done; }));
    start_lock(waiter, name, 60s, ow);
    REQUIRE(run_until(io, [&] { return member().keys(name + "/").size() == 2; }));
    io.restart();
    io.run_for(200ms);  // the waiter's watch is up
    const auto watches = waiter.watches();
    const auto accepted = proxy.accepted();
    // Every connection of the waiter goes; the holder releases meanwhile.
    proxy.drop_all();
    release_and_wait(io, oh.held);
    REQUIRE(run_until(
        io, [&] { return ow.done; }, 20s));
    REQUIRE_FALSE(ow.ec);
    CHECK(proxy.accepted() > accepted);  // it came back through new connections
    CHECK(waiter.watches() >= watches);
    CHECK(ow.held.fencing_token() > oh.held.fencing_token());
    release_and_wait(io, ow.held);
    CHECK(keys_become(io, name + "/", 0));
}

TEST_CASE("etcd: a held lock whose watch cannot be made again backs off, then is lost",
          "[etcd][session][faults]") {
    test::tcp_proxy proxy(
        std::stoi(member().endpoint().substr(member().endpoint().rfind(':') + 1)));
    asio::io_context io;
    auto pcfg = cfg(2s);
    pcfg.endpoints = {proxy.endpoint()};
    etcd::client c(io.get_executor(), pcfg);
    const auto name = unique_name("unwatched");
    outcome o;
    start_lock(c, name, 5s, o);
    REQUIRE(run_until(io, [&] { return o.done; }));
    REQUIRE_FALSE(o.ec);
    const auto lease = c.lease();
    bool lost = false;
    o.held.on_lost([&](std::error_code ec) { lost = ec == etcd::errc::lost; });
    io.restart();
    io.run_for(200ms);  // the held watch is up
    // Keep-alives and ranges go through, watches never again.
    proxy.refuse_watches(true);
    const auto watches = c.watches();
    const auto began = std::chrono::steady_clock::now();
    proxy.drop_all();
    REQUIRE(run_until(
        io, [&] { return lost; }, 20s));
    const auto took = std::chrono::steady_clock::now() - began;
    // Its tries back off (100 ms, 200 ms, ... until the TTL of 2 s), not
    // one every 100 ms; the lease itself was kept alive throughout.
    CHECK(c.watches() - watches <= 8);
    CHECK(took >= 2s);
    CHECK(c.lease() == lease);
    CHECK(member().keys(name + "/").size() == 1);
    proxy.refuse_watches(false);
    release_and_wait(io, o.held);
    CHECK(keys_become(io, name + "/", 0));
}

TEST_CASE("etcd: malformed, truncated and error answers are clear errors naming the endpoint",
          "[etcd][session][faults]") {
    struct canned {
        const char* what;
        std::string response;
        std::error_code expected;
    };
    const canned cases[] = {
        {"malformed JSON",
         "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{\"ID\": "
         "[}",
         etcd::errc::bad_reply},
        {"a truncated body (the connection closed mid-answer: nothing malformed came)",
         "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
         "200\r\n\r\n{\"ID\":\"1",
         etcd::errc::connection_reset},
        {"an HTTP server that is not etcd's gateway",
         "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: 9\r\n\r\n"
         "not here!",
         etcd::errc::http_status},
        {"HTTP 500", "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\noops!",
         etcd::errc::http_status},
        {"HTTP 503 with etcd's error body",
         "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
         "Content-Length: 57\r\n\r\n{\"error\":\"etcdserver: no "
         "leader\",\"message\":\"x\",\"code\":14}",
         etcd::errc::server},
        {"JSON without the fields",
         "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
         etcd::errc::bad_reply},
    };
    for (const auto& k : cases) {
        INFO(k.what);
        test::tcp_proxy fake(0, k.response);
        asio::io_context io;
        auto c = cfg();
        c.endpoints = {fake.endpoint()};
        c.request_timeout = 2000ms;
        std::optional<etcd::lock_result> r;
        {
            etcd::client cl(io.get_executor(), c);
            // Transient failures (5xx, a cut connection) are tried again
            // until the deadline, then reported as themselves.
            cl.async_lock_result("x", 1s, [&](etcd::lock_result x) { r = std::move(x); });
            REQUIRE(run_until(
                io, [&] { return r.has_value(); }, 20s));
        }
        CHECK(r->ec == k.expected);
        CHECK(r->message.find(fake.endpoint()) != std::string::npos);
        if (r->ec == etcd::errc::connection_reset)
            CHECK(r->message.find("malformed") == std::string::npos);
        if (r->ec == etcd::errc::http_status && r->message.find("404") != std::string::npos)
            CHECK(r->message.find("not an etcd v3 gateway") != std::string::npos);
        io.restart();
        io.run_for(100ms);
    }
}

TEST_CASE("etcd: TLS verifies the server against the CA given; a wrong CA is a clear error",
          "[etcd][session]") {
    const auto dir = std::filesystem::temp_directory_path() /
                     ("filelock-etcd-tls-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    const std::string d = dir.string();
    int st = -1;
    test::sh("(cd " + d +
                 " && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 "
                 "-subj /CN=filelock-test-ca"
                 " && openssl req -x509 -newkey rsa:2048 -nodes -keyout other.key -out other.pem "
                 "-days 1 -subj /CN=another-ca"
                 " && openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr "
                 "-subj /CN=127.0.0.1"
                 " && printf 'subjectAltName=IP:127.0.0.1' > ext"
                 " && openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
                 "-out srv.pem -days 1 -extfile ext) >/dev/null 2>&1",
             &st);
    REQUIRE(st == 0);
    {
        test::etcd_cluster m(1, d + "/srv.pem", d + "/srv.key", d + "/ca.pem");
        REQUIRE(m.endpoint().rfind("https://", 0) == 0);
        asio::io_context io;
        etcd::config c;
        c.endpoints = {m.endpoint()};
        c.ca_file = d + "/ca.pem";
        {
            etcd::client cl(io.get_executor(), c);
            outcome o;
            start_lock(cl, unique_name("tls"), 5s, o);
            REQUIRE(run_until(io, [&] { return o.done; }));
            CHECK_FALSE(o.ec);
            if (o.held) release_and_wait(io, o.held);
        }
        c.ca_file = d + "/other.pem";
        {
            etcd::client cl(io.get_executor(), c);
            std::optional<etcd::lock_result> r;
            cl.async_lock_result("tls-wrong", 5s, [&](etcd::lock_result x) { r = std::move(x); });
            REQUIRE(run_until(io, [&] { return r.has_value(); }));
            CHECK(r->ec == etcd::errc::tls);
            CHECK(r->message.find(m.endpoint()) != std::string::npos);
        }
        io.restart();
        io.run_for(100ms);
    }
    std::filesystem::remove_all(dir);
}

TEST_CASE("etcd: user authentication: the right password locks, a wrong one is errc::auth",
          "[etcd][session]") {
    test::etcd_cluster m(1);
    enable_root_auth(m);
    asio::io_context io;
    etcd::config c;
    c.endpoints = {m.endpoint()};
    c.user = "root";
    c.password = "rootpw";
    {
        etcd::client cl(io.get_executor(), c);
        outcome o;
        start_lock(cl, unique_name("auth"), 5s, o);
        REQUIRE(run_until(io, [&] { return o.done; }));
        CHECK_FALSE(o.ec);
        CHECK(o.held.fencing_token() > 0);
        if (o.held) release_and_wait(io, o.held);
    }
    c.password = "wrong";
    {
        etcd::client cl(io.get_executor(), c);
        std::optional<etcd::lock_result> r;
        cl.async_lock_result("auth-wrong", 5s, [&](etcd::lock_result x) { r = std::move(x); });
        REQUIRE(run_until(io, [&] { return r.has_value(); }));
        CHECK(r->ec == etcd::errc::auth);
        CHECK(r->message.find(m.endpoint()) != std::string::npos);
        CHECK(r->message.find("authentication failed") != std::string::npos);
    }
    io.restart();
    io.run_for(100ms);
}

TEST_CASE("etcd: a short TTL's keep-alives come every TTL/3, not in a storm", "[etcd][session]") {
    asio::io_context io;
    etcd::client c(io.get_executor(), cfg(1s));
    outcome o;
    start_lock(c, unique_name("keepalive"), 5s, o);
    REQUIRE(run_until(io, [&] { return o.done; }));
    REQUIRE_FALSE(o.ec);
    const auto before = c.requests();
    const auto until = std::chrono::steady_clock::now() + 1500ms;
    run_until(io, [&] { return std::chrono::steady_clock::now() >= until; });
    const auto keepalives = c.requests() - before;
    // 1 s / 3: about 4-5 in 1.5 s (whole seconds made it 0 s: thousands).
    CHECK(keepalives >= 2);
    CHECK(keepalives <= 8);
    CHECK_FALSE(o.held.lost());
    release_and_wait(io, o.held);
}

TEST_CASE("etcd: a waiter paused past its lease never wins while etcdctl lock holds (#19597)",
          "[etcd][slow]") {
    // The holder releases while the waiter is stopped; the waiter's lease
    // expires, etcd deletes its key and grants the lock to `etcdctl lock`,
    // queued behind it. Resumed, the waiter reads the holder's deletion from
    // its watch: it must line up again, not run COMMAND inside etcdctl's.
    asio::io_context io;
    etcd::client c(io.get_executor(), cfg());
    const auto name = unique_name("paused");
    const auto dir = std::filesystem::temp_directory_path() /
                     ("filelock-etcd-paused-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    const auto holds = (dir / "etcdctl-holds").string();
    const auto result = (dir / "result").string();
    outcome o;
    start_lock(c, name, 5s, o);
    REQUIRE(run_until(io, [&] { return o.done; }));
    REQUIRE_FALSE(o.ec);

    const std::string waiter = "exec " + run_tool() + " --ttl 2 -w 30 " + etcd_target(name) +
                               " sh -c 'if [ -e " + holds + " ]; then echo overlap; else echo " +
                               "clean; fi >> " + result + "' >/dev/null 2>" +
                               (dir / "stderr").string();
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::execl("/bin/sh", "sh", "-c", waiter.c_str(), static_cast<char*>(nullptr));
        ::_exit(127);
    }
    REQUIRE(keys_become(io, name + "/", 2));
    ::kill(pid, SIGSTOP);
    const std::string ctl = "ETCDCTL_API=3 etcdctl --endpoints=" + member().endpoint() +
                            " lock --ttl 10 '" + name + "' -- sh -c 'touch " + holds +
                            "; sleep 4; rm " + holds + "' >/dev/null 2>&1 &";
    REQUIRE(std::system(ctl.c_str()) == 0);
    REQUIRE(keys_become(io, name + "/", 3));
    release_and_wait(io, o.held);
    // The waiter's lease expires (TTL 2 s) and etcdctl gets the lock.
    bool granted = false;
    run_until(
        io, [&] { return granted = std::filesystem::exists(holds); }, 15s);
    CHECK(granted);
    ::kill(pid, SIGCONT);
    int st = 0;
    for (int i = 0; i < 2000 && ::waitpid(pid, &st, WNOHANG) == 0; ++i)
        std::this_thread::sleep_for(10ms);
    std::string outcome_text;
    std::ifstream(result) >> outcome_text;
    std::string err;
    std::getline(std::ifstream(dir / "stderr"), err, '\0');
    INFO("filelock-run: status " << st << ", stderr: " << err);
    CHECK(outcome_text == "clean");  // COMMAND ran after etcdctl's section, not inside it
    CHECK(WIFEXITED(st));
    CHECK(WEXITSTATUS(st) == 0);
    CHECK(keys_become(io, name + "/", 0));
    std::filesystem::remove_all(dir);
}

TEST_CASE("etcd: an expired auth token is renewed: the release and the revoke go through",
          "[etcd][session][faults]") {
    // The server forgets a token after --auth-token-ttl; keep-alives go on
    // without one, so a lock held longer than that is released with a
    // refused token unless the client authenticates again.
    test::etcd_cluster m(1, {}, {}, {}, {"--auth-token-ttl=1"});
    enable_root_auth(m);
    asio::io_context io;
    etcd::config c;
    c.endpoints = {m.endpoint()};
    c.user = "root";
    c.password = "rootpw";
    c.ttl = 5s;
    const auto name = unique_name("auth-ttl");
    std::int64_t lease = 0;
    {
        etcd::client cl(io.get_executor(), c);
        outcome o;
        start_lock(cl, name, 5s, o);
        REQUIRE(run_until(io, [&] { return o.done; }));
        REQUIRE_FALSE(o.ec);
        lease = o.held.lease();
        const auto until = std::chrono::steady_clock::now() + 3s;
        run_until(io, [&] { return std::chrono::steady_clock::now() >= until; });
        CHECK_FALSE(o.held.lost());
        bool released = false;
        std::error_code rec = etcd::errc::bad_reply;
        o.held.release([&](std::error_code ec) {
            released = true;
            rec = ec;
        });
        REQUIRE(run_until(io, [&] { return released; }));
        CHECK_FALSE(rec);  // was errc::auth ("invalid auth token"), the key left behind
        CHECK(m.ctl("--user root:rootpw get --prefix --keys-only '" + name + "/'").empty());
        // A second lock after another second without requests: its txn too.
        const auto later = std::chrono::steady_clock::now() + 1500ms;
        run_until(io, [&] { return std::chrono::steady_clock::now() >= later; });
        outcome o2;
        start_lock(cl, name, 5s, o2);
        REQUIRE(run_until(io, [&] { return o2.done; }));
        CHECK_FALSE(o2.ec);
        if (o2.held) release_and_wait(io, o2.held);
        const auto more = std::chrono::steady_clock::now() + 1500ms;
        run_until(io, [&] { return std::chrono::steady_clock::now() >= more; });
    }
    // The client is gone: its lease was revoked, with a renewed token. The
    // loop runs on a thread of its own meanwhile: the revoke does not wait
    // for the etcdctl calls below (each authenticates: 0.7 s under load;
    // run between them, the revoke was seen at the third, after up to 2.2 s).
    char hex[32];
    std::snprintf(hex, sizeof hex, "%llx", static_cast<unsigned long long>(lease));
    const auto gone = std::chrono::steady_clock::now();
    auto work = asio::make_work_guard(io);
    io.restart();
    std::thread revoking([&] { io.run(); });
    bool revoked = false;
    auto listed = gone;
    for (;;) {
        revoked = m.ctl("--user root:rootpw lease list").find(hex) == std::string::npos;
        listed = std::chrono::steady_clock::now();
        if (revoked || listed - gone >= 3s) break;
        std::this_thread::sleep_for(10ms);
    }
    work.reset();
    io.stop();
    revoking.join();
    // Not its expiry: the TTL (5 s) was renewed every 1.7 s, so etcd could
    // end the lease 3.3 s after the client at the earliest; a listing that
    // ended before 3 s saw it revoked.
    CAPTURE(std::chrono::duration_cast<std::chrono::milliseconds>(listed - gone).count());
    CHECK(revoked);
    CHECK(listed - gone < 3s);
}

TEST_CASE("etcd: a held watch made anew with an expired token still reports the key's deletion",
          "[etcd][slow]") {
    // The held key's watch stream ends (its member went away) and is made
    // again after the token expired (--auth-token-ttl): etcd answers
    // HTTP 200 with a cancelled watch ("invalid auth token"). That watch was
    // taken as alive: a deletion of the key was never reported.
    test::etcd_cluster m(1, {}, {}, {}, {"--auth-token-ttl=1"});
    enable_root_auth(m);
    test::tcp_proxy proxy(std::stoi(m.endpoint().substr(m.endpoint().rfind(':') + 1)));
    asio::io_context io;
    etcd::config c;
    c.endpoints = {proxy.endpoint()};
    c.user = "root";
    c.password = "rootpw";
    c.ttl = 10s;
    etcd::client cl(io.get_executor(), c);
    outcome o;
    start_lock(cl, unique_name("auth-watch"), 5s, o);
    REQUIRE(run_until(io, [&] { return o.done; }));
    REQUIRE_FALSE(o.ec);
    std::optional<std::error_code> lost;
    cl.async_wait_lost(o.held, [&](std::error_code ec) { lost = ec; });
    // The token expires (keep-alives do not renew it).
    const auto until = std::chrono::steady_clock::now() + 2500ms;
    run_until(io, [&] { return std::chrono::steady_clock::now() >= until; });
    proxy.drop_all();  // the watch is made again, with the expired token
    const auto later = std::chrono::steady_clock::now() + 1s;
    run_until(io, [&] { return std::chrono::steady_clock::now() >= later; });
    REQUIRE_FALSE(lost);
    int st = -1;
    m.ctl("--user root:rootpw del '" + o.held.key() + "'", &st);
    REQUIRE(st == 0);
    REQUIRE(run_until(
        io, [&] { return lost.has_value(); }, 5s));
    CHECK(*lost == etcd::errc::lost);
    release_and_wait(io, o.held);
}

namespace {
// A member that accepts connections and never answers (a paused process):
// the kernel completes the handshake from its backlog.
struct stalled_endpoint {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int port = 0;
    stalled_endpoint() {
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 64) != 0)
            throw std::runtime_error("stalled endpoint: bind/listen");
        socklen_t len = sizeof a;
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
        port = ntohs(a.sin_port);
    }
    ~stalled_endpoint() { ::close(fd); }
    std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port); }
};
}  // namespace

TEST_CASE("etcd: a request timed out or reset by one member is tried again on another",
          "[etcd][session][faults]") {
    stalled_endpoint stalled;
    test::tcp_proxy cut(0,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                        "200\r\n\r\n{\"ID\":\"1");
    for (const auto& first : {stalled.endpoint(), cut.endpoint()}) {
        INFO("first endpoint: " << first);
        asio::io_context io;
        auto c = cfg();
        c.endpoints = {first, member().endpoint()};
        c.dial_timeout = 300ms;
        c.request_timeout = 300ms;
        etcd::client cl(io.get_executor(), c);
        std::optional<etcd::lock_result> r;
        cl.async_lock_result(unique_name("failover"), 10s,
                             [&](etcd::lock_result x) { r = std::move(x); });
        REQUIRE(run_until(io, [&] { return r.has_value(); }));
        CHECK_FALSE(r->ec);
        CHECK(r->message.empty());
        CHECK(r->held.endpoint() == member().endpoint());
        if (r->held) release_and_wait(io, r->held);
    }
    SECTION("no endpoint answers for the whole deadline: that is the error, named") {
        asio::io_context io;
        auto c = cfg();
        c.endpoints = {stalled.endpoint()};
        c.dial_timeout = 200ms;
        c.request_timeout = 200ms;
        etcd::client cl(io.get_executor(), c);
        std::optional<etcd::lock_result> r;
        cl.async_lock_result("x", 1s, [&](etcd::lock_result x) { r = std::move(x); });
        REQUIRE(run_until(io, [&] { return r.has_value(); }));
        CHECK(r->ec == etcd::errc::request_timeout);
        CHECK(r->ec == std::errc::timed_out);
        CHECK(r->message.find(stalled.endpoint()) != std::string::npos);
        CHECK(r->message.find("timed out") != std::string::npos);
        CHECK(r->message.find("could not be reached") == std::string::npos);
    }
}

TEST_CASE("etcd: a lost lock is not granted to another before its owner releases it",
          "[etcd][slow]") {
    // The holder's member stalls past the lease deadline: the lost signal
    // fires (last keep-alive sent + TTL - margin). The margin is the owner's
    // time to stop: the lease was revoked at once, so the next waiter was
    // granted within milliseconds while the owner was still in its section.
    test::tcp_proxy proxy(
        std::stoi(member().endpoint().substr(member().endpoint().rfind(':') + 1)));
    asio::io_context io;
    auto hc = cfg(4s);
    hc.endpoints = {proxy.endpoint()};
    hc.lost_margin = 2000ms;
    etcd::client holder(io.get_executor(), hc);
    etcd::client other(io.get_executor(), cfg(10s));
    const auto name = unique_name("lost-no-revoke");
    outcome o, w;
    start_lock(holder, name, 5s, o);
    REQUIRE(run_until(io, [&] { return o.done; }));
    REQUIRE_FALSE(o.ec);
    start_lock(other, name, 30s, w);
    std::optional<std::error_code> lost;
    holder.async_wait_lost(o.held, [&](std::error_code ec) { lost = ec; });
    io.restart();
    io.run_for(200ms);
    REQUIRE_FALSE(w.done);
    proxy.pause(true);
    REQUIRE(run_until(
        io, [&] { return lost.has_value(); }, 10s));
    CHECK(*lost == etcd::errc::lost);
    proxy.pause(false);  // the member is reachable again: a revoke would go through
    // The server keeps the lease at least the margin longer; its owner has
    // not released it: nobody else is granted meanwhile.
    const auto until = std::chrono::steady_clock::now() + 1s;
    run_until(io, [&] { return w.done || std::chrono::steady_clock::now() >= until; });
    CHECK_FALSE(w.done);
    // Released by its owner: the waiter is granted.
    release_and_wait(io, o.held);
    REQUIRE(run_until(io, [&] { return w.done; }));
    CHECK_FALSE(w.ec);
    release_and_wait(io, w.held);
}

TEST_CASE("etcd: a holder whose member stalls keeps its lock: keep-alives go to another",
          "[etcd][session][faults]") {
    // The first endpoint stops answering (a paused member) with the
    // connections open: a keep-alive that waited for the whole request
    // timeout (7 s) outlived the lease's deadline (TTL 3 s - 1 s).
    test::tcp_proxy proxy(
        std::stoi(member().endpoint().substr(member().endpoint().rfind(':') + 1)));
    asio::io_context io;
    auto c = cfg(3s);
    c.endpoints = {proxy.endpoint(), member().endpoint()};
    etcd::client cl(io.get_executor(), c);
    outcome o;
    start_lock(cl, unique_name("stalled-member"), 5s, o);
    REQUIRE(run_until(io, [&] { return o.done; }));
    REQUIRE_FALSE(o.ec);
    CHECK(o.held.endpoint() == proxy.endpoint());
    proxy.pause(true);
    const auto until = std::chrono::steady_clock::now() + 4s;
    run_until(io, [&] { return o.held.lost() || std::chrono::steady_clock::now() >= until; });
    CHECK_FALSE(o.held.lost());
    bool released = false;
    std::error_code rec = etcd::errc::bad_reply;
    o.held.release([&](std::error_code ec) {
        released = true;
        rec = ec;
    });
    REQUIRE(run_until(io, [&] { return released; }));
    CHECK_FALSE(rec);
    proxy.pause(false);
}
