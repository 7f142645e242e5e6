// SPDX-License-Identifier: MIT
// The libuv client of the etcd backend against a real etcd member: callbacks,
// the awaitable with a stop_token, cancellation without leftovers, and
// uv_loop_close() == 0 after every outcome.
#include <filelock/etcd_uv.hpp>
#include <filelock/uv.hpp>

#include <catch2/catch.hpp>

#include "etcd_member.hpp"

#include <optional>

using namespace std::chrono_literals;
namespace etcd = filelock::etcd;

namespace {

test::etcd_cluster& member() {
    static test::etcd_cluster c(1);
    return c;
}

std::string unique_name(const char* what) {
    static int n = 0;
    return std::string("test-uv/") + what + "/" + std::to_string(::getpid()) + "-" +
           std::to_string(++n);
}

etcd::config cfg() {
    etcd::config c;
    c.endpoints = {member().endpoint()};
    return c;
}

struct loop_fixture {
    uv_loop_t loop;
    loop_fixture() { uv_loop_init(&loop); }
    ~loop_fixture() {
        uv_run(&loop, UV_RUN_DEFAULT);
        CHECK(uv_loop_close(&loop) == 0);  // every handle closed
    }
    template <class Pred>
    bool run_until(Pred done, std::chrono::seconds bound = 30s) {
        const auto until = std::chrono::steady_clock::now() + bound;
        uv_timer_t tick;
        uv_timer_init(&loop, &tick);
        uv_timer_start(
            &tick, [](uv_timer_t*) {}, 5, 5);  // keeps the loop turning
        bool ok = true;
        while (!done()) {
            if (std::chrono::steady_clock::now() > until) {
                ok = false;
                break;
            }
            uv_run(&loop, UV_RUN_ONCE);
        }
        uv_close(reinterpret_cast<uv_handle_t*>(&tick), nullptr);
        uv_run(&loop, UV_RUN_NOWAIT);
        return ok;
    }
};

bool keys_become(loop_fixture& f, const std::string& prefix, std::size_t n) {
    return f.run_until([&] { return member().keys(prefix).size() == n; }, 10s);
}

}  // namespace

TEST_CASE("etcd uv: a callback gets the lock; release deletes the key; the loop closes", "[etcd]") {
    loop_fixture f;
    const auto name = unique_name("plain");
    {
        etcd::uv_client c(&f.loop, cfg());
        std::optional<etcd::lock_result> r;
        c.async_lock(name, 5s, [&](etcd::lock_result x) { r = std::move(x); });
        CHECK_FALSE(r);  // never inline
        REQUIRE(f.run_until([&] { return r.has_value(); }));
        REQUIRE_FALSE(r->ec);
        CHECK(r->held.fencing_token() > 0);
        CHECK(member().keys(name + "/").size() == 1);
        bool released = false;
        r->held.release([&](std::error_code ec) {
            CHECK_FALSE(ec);
            released = true;
        });
        REQUIRE(f.run_until([&] { return released; }));
        CHECK(member().keys(name + "/").empty());
    }
}

TEST_CASE("etcd uv: cancel and a timeout end the wait with nothing left in etcd", "[etcd]") {
    loop_fixture f;
    const auto name = unique_name("cancel");
    etcd::uv_client a(&f.loop, cfg()), b(&f.loop, cfg());
    std::optional<etcd::lock_result> ra;
    a.async_lock(name, 5s, [&](etcd::lock_result x) { ra = std::move(x); });
    REQUIRE(f.run_until([&] { return ra.has_value(); }));
    REQUIRE_FALSE(ra->ec);

    std::optional<etcd::lock_result> rb;
    auto req = b.async_lock(name, 30s, [&](etcd::lock_result x) { rb = std::move(x); });
    REQUIRE(keys_become(f, name + "/", 2));
    req.cancel();
    REQUIRE(f.run_until([&] { return rb.has_value(); }));
    CHECK(rb->ec == std::errc::operation_canceled);
    CHECK(rb->ec == filelock::condition::cancelled);
    CHECK(keys_become(f, name + "/", 1));

    rb.reset();
    b.async_lock(name, 200ms, [&](etcd::lock_result x) { rb = std::move(x); });
    REQUIRE(f.run_until([&] { return rb.has_value(); }));
    CHECK(rb->ec == filelock::errc::timeout);
    CHECK(keys_become(f, name + "/", 1));
    ra->held.release();
    CHECK(keys_become(f, name + "/", 0));
}

TEST_CASE(
    "etcd uv: the awaitable returns the lock, throws timeout_error, and stops on a stop "
    "request",
    "[etcd]") {
    loop_fixture f;
    const auto name = unique_name("await");
    etcd::uv_client a(&f.loop, cfg()), b(&f.loop, cfg());
    std::stop_source stop;
    int stage = 0;
    auto body = [&]() -> filelock::uv::task<> {
        auto held = co_await a.lock(name, 5s);
        CHECK(held.held());
        stage = 1;
        try {
            co_await b.lock(name, 100ms);
        } catch (const filelock::timeout_error& e) {
            CHECK(e.holder().find(std::to_string(::getpid()) + "@") == 0);
            stage = 2;
        }
        try {
            co_await b.lock(name, 30s, stop.get_token());
        } catch (const std::system_error& e) {
            CHECK(e.code() == filelock::condition::cancelled);
            stage = 3;
        }
        held.release();
    };
    auto t = body();
    t.start();
    REQUIRE(f.run_until([&] { return stage == 2 && member().keys(name + "/").size() == 2; }));
    std::thread([&] { stop.request_stop(); }).join();  // from another thread
    REQUIRE(f.run_until([&] { return t.done(); }));
    CHECK(stage == 3);
    t.result();
    CHECK(keys_become(f, name + "/", 0));
}

TEST_CASE("etcd uv: a destroyed client cancels its pending acquisition", "[etcd]") {
    loop_fixture f;
    const auto name = unique_name("destroyed");
    etcd::uv_client a(&f.loop, cfg());
    std::optional<etcd::lock_result> ra, rb;
    a.async_lock(name, 5s, [&](etcd::lock_result x) { ra = std::move(x); });
    REQUIRE(f.run_until([&] { return ra.has_value(); }));
    {
        etcd::uv_client b(&f.loop, cfg());
        b.async_lock(name, 30s, [&](etcd::lock_result x) { rb = std::move(x); });
        REQUIRE(keys_become(f, name + "/", 2));
    }
    REQUIRE(f.run_until([&] { return rb.has_value(); }));
    CHECK(rb->ec == filelock::condition::cancelled);
    CHECK(keys_become(f, name + "/", 1));
    ra->held.release();
    CHECK(keys_become(f, name + "/", 0));
}

TEST_CASE("etcd uv: slots and shared locks: two holders at once, a writer waits for them",
          "[etcd][slots]") {
    loop_fixture f;
    const auto name = unique_name("kinds");
    {
        etcd::uv_client c(&f.loop, cfg());
        for (const auto kind : {etcd::lock_options{.slots = 2},
                                etcd::lock_options{.mode = filelock::lock_mode::shared}}) {
            std::optional<etcd::lock_result> a, b, w;
            c.async_lock(name, 5s, kind, [&](etcd::lock_result x) { a = std::move(x); });
            c.async_lock(name, 5s, kind, [&](etcd::lock_result x) { b = std::move(x); });
            REQUIRE(f.run_until([&] { return a && b; }));
            REQUIRE_FALSE(a->ec);
            REQUIRE_FALSE(b->ec);
            CHECK(a->held.key() != b->held.key());  // a key each, one lease
            CHECK(a->held.lease() == b->held.lease());
            c.async_lock(name, 5s, [&](etcd::lock_result x) { w = std::move(x); });
            REQUIRE(f.run_until([&] { return member().keys(name + "/").size() == 3; }));
            CHECK_FALSE(w);
            a->held.release();
            b->held.release();
            REQUIRE(f.run_until([&] { return w.has_value(); }));
            REQUIRE_FALSE(w->ec);
            bool released = false;
            w->held.release([&](std::error_code) { released = true; });
            REQUIRE(f.run_until([&] { return released; }));
            CHECK(keys_become(f, name + "/", 0));
        }
    }
}

TEST_CASE("etcd uv: async_inspect sees the holder and the waiter in order; cancel; the loop closes",
          "[etcd][inspect]") {
    loop_fixture f;
    const auto name = unique_name("inspect");
    {
        etcd::uv_client a(&f.loop, cfg()), b(&f.loop, cfg()), viewer(&f.loop, cfg());
        std::optional<etcd::lock_result> ra, rb;
        a.async_lock(name, 5s, [&](etcd::lock_result x) { ra = std::move(x); });
        REQUIRE(f.run_until([&] { return ra.has_value(); }));
        REQUIRE_FALSE(ra->ec);
        b.async_lock(name, 30s, [&](etcd::lock_result x) { rb = std::move(x); });
        REQUIRE(keys_become(f, name + "/", 2));
        std::optional<etcd::inspect_result> r;
        viewer.async_inspect(name, [&](etcd::inspect_result x) { r = std::move(x); });
        CHECK_FALSE(r);  // never inline
        REQUIRE(f.run_until([&] { return r.has_value(); }));
        REQUIRE_FALSE(r->ec);
        REQUIRE(r->status.holders.size() == 1);
        REQUIRE(r->status.waiters.size() == 1);
        CHECK(r->status.holders[0].key == ra->held.key());
        CHECK(r->status.holders[0].fencing_token == ra->held.fencing_token());
        CHECK(r->status.holders[0].pid == ::getpid());
        CHECK(r->status.holders[0].ttl.has_value());
        CHECK(r->status.waiters[0].position == 1);
        CHECK(r->status.waiters[0].fencing_token > ra->held.fencing_token());

        std::optional<etcd::change_result> changed;
        viewer.async_wait_change(name, r->status.revision,
                                 [&](etcd::change_result x) { changed = std::move(x); });
        r.reset();
        auto req = viewer.async_inspect(name, [&](etcd::inspect_result x) { r = std::move(x); });
        req.cancel();
        REQUIRE(f.run_until([&] { return r.has_value(); }));
        CHECK(r->ec == filelock::condition::cancelled);

        CHECK_FALSE(changed);
        ra->held.release();
        REQUIRE(f.run_until([&] { return rb.has_value() && changed.has_value(); }));
        REQUIRE_FALSE(rb->ec);
        CHECK_FALSE(changed->ec);  // the holder's key deleted
        CHECK(changed->revision > ra->held.fencing_token());
        bool released = false;
        rb->held.release([&](std::error_code) { released = true; });
        REQUIRE(f.run_until([&] { return released; }));
        CHECK(keys_become(f, name + "/", 0));
    }
}
