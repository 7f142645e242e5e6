// SPDX-License-Identifier: MIT
// The release registry with scripted events, no descriptor: which waiters an
// event wakes (the wake rule), what a moved file and lost events do, and when
// nobody waits any more.

#include "../src/wait/release_registry.hpp"

#include <filelock/detail/release_source.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <vector>

using filelock::detail::release_event;
using filelock::detail::release_registry;

namespace {

// Waiters are keys; these give them distinct addresses.
const char a = 0, b = 0, c = 0, d = 0, e = 0;

std::vector<release_registry::wakeup> woken_by(release_registry& r,
                                               std::vector<release_event> events,
                                               std::vector<int>* moved = nullptr) {
    std::vector<int> m;
    auto w = r.dispatch(events, m);
    if (moved) *moved = m;
    std::sort(w.begin(), w.end(), [](const auto& x, const auto& y) { return x.waiter < y.waiter; });
    return w;
}

bool has(const std::vector<release_registry::wakeup>& w, const void* key, bool moved) {
    return std::any_of(w.begin(), w.end(),
                       [&](const auto& x) { return x.waiter == key && x.moved == moved; });
}

}  // namespace

TEST_CASE("release_registry: a release wakes the longest-waiting writer and every reader") {
    release_registry r;
    r.add(1, &b, 20, false);
    r.add(1, &a, 10, false);  // arrived first, registered later
    r.add(1, &c, 30, true);
    r.add(1, &d, 40, true);
    r.add(2, &e, 5, false);  // another file
    const auto w = woken_by(r, {{1, false}});
    CHECK(w.size() == 3);
    CHECK(has(w, &a, false));
    CHECK(has(w, &c, false));
    CHECK(has(w, &d, false));
    CHECK(!has(w, &b, false));
    CHECK(!has(w, &e, false));
    // A release keeps every watch: the next one wakes the same writer
    // (it has not left), and the other file's waiter on its own event.
    CHECK(woken_by(r, {{1, false}}).size() == 3);
    const auto other = woken_by(r, {{2, false}});
    REQUIRE(other.size() == 1);
    CHECK(has(other, &e, false));
}

TEST_CASE("release_registry: a writer that leaves hands the next release to the next writer") {
    release_registry r;
    r.add(7, &a, 1, false);
    r.add(7, &b, 2, false);
    CHECK(r.remove(&a) == 7);
    CHECK(r.remove(&a) == -1);  // not registered any more
    const auto w = woken_by(r, {{7, false}});
    REQUIRE(w.size() == 1);
    CHECK(has(w, &b, false));
    CHECK(!r.idle());
    CHECK(r.remove(&b) == 7);
    CHECK(r.idle());
    CHECK(woken_by(r, {{7, false}}).empty());
}

TEST_CASE("release_registry: a moved file wakes all its waiters, who watch anew") {
    release_registry r;
    r.add(1, &a, 1, false);
    r.add(1, &b, 2, false);
    r.add(1, &c, 3, true);
    r.add(2, &d, 4, false);
    std::vector<int> moved;
    const auto w = woken_by(r, {{1, true}}, &moved);
    CHECK(w.size() == 3);
    CHECK(has(w, &a, true));
    CHECK(has(w, &b, true));
    CHECK(has(w, &c, true));
    // Forgotten, one watch reference each to drop; the other file's waiter
    // stays.
    CHECK(moved == std::vector<int>{1, 1, 1});
    CHECK(r.remove(&a) == -1);
    CHECK(woken_by(r, {{1, false}}).empty());
    CHECK(!r.idle());
    CHECK(r.remove(&d) == 2);
    CHECK(r.idle());
}

TEST_CASE("release_registry: lost events count as every watched file moved") {
    release_registry r;
    r.add(1, &a, 1, false);
    r.add(2, &b, 2, false);
    r.add(3, &c, 3, true);
    std::vector<int> moved;
    const auto w = woken_by(r, {{release_event::all, true}}, &moved);
    CHECK(w.size() == 3);
    CHECK(has(w, &a, true));
    CHECK(has(w, &b, true));
    CHECK(has(w, &c, true));
    std::sort(moved.begin(), moved.end());
    CHECK(moved == std::vector<int>{1, 2, 3});
    CHECK(r.idle());
}

TEST_CASE("release_registry: events of several watches in one read each wake their own") {
    release_registry r;
    r.add(1, &a, 1, false);
    r.add(1, &b, 2, false);
    r.add(2, &c, 3, false);
    r.add(3, &d, 4, false);
    std::vector<int> moved;
    const auto w = woken_by(r, {{1, false}, {2, true}, {9, false}}, &moved);
    CHECK(w.size() == 2);
    CHECK(has(w, &a, false));
    CHECK(has(w, &c, true));
    CHECK(moved == std::vector<int>{2});
    CHECK(r.remove(&b) == 1);
    CHECK(r.remove(&d) == 3);
}

TEST_CASE("release_registry: after a fork every waiter is forgotten and returned") {
    release_registry r;
    r.add(1, &a, 1, false);
    r.add(2, &b, 2, true);
    std::vector<int> wds;
    auto all = r.clear(wds);
    std::sort(all.begin(), all.end());
    std::vector<release_registry::key> expected{&a, &b};
    std::sort(expected.begin(), expected.end());
    CHECK(all == expected);
    std::sort(wds.begin(), wds.end());
    CHECK(wds == std::vector<int>{1, 2});  // one reference each, for the caller to drop
    CHECK(r.idle());
    CHECK(woken_by(r, {{release_event::all, true}}).empty());
}

TEST_CASE("release_source: an instance that still has a waiter is never kept for the next driver") {
    using filelock::detail::release_source;
    release_source::take().reset();  // none kept
    auto s = release_source::take();
    if (!s) {
        WARN("no release watcher on this platform: not run");
        return;
    }
    const auto dir = std::filesystem::temp_directory_path();
    REQUIRE(s->watch(dir, &a, 1, false));
    release_source::recycle(std::move(s));  // a driver that lost track of `a`
    auto next = release_source::take();
    REQUIRE(next);
    CHECK(next->idle());
    CHECK(next->read().empty());
}

TEST_CASE("release_registry: a release wakes the first writer of each lock on the file") {
    // One file, three locks: OFD bytes 0-1, OFD bytes 1-2, flock. The
    // release may be of any of them: each lock's longest-waiting writer
    // attempts; a later writer of a lock already woken does not.
    using filelock::detail::lock_identity;
    const lock_identity range_a{0, 0, 1, 0, 1}, range_b{0, 0, 1, 1, 1}, whole_flock{0, 0, 0, 0, 0};
    release_registry r;
    r.add(1, &a, 10, false, range_a);
    r.add(1, &b, 20, false, range_b);
    r.add(1, &c, 30, false, whole_flock);
    r.add(1, &d, 40, false, range_b);
    const auto w = woken_by(r, {{1, false}});
    CHECK(w.size() == 3);
    CHECK(has(w, &a, false));
    CHECK(has(w, &b, false));
    CHECK(has(w, &c, false));
    CHECK(!has(w, &d, false));
}

TEST_CASE(
    "release_registry: a queue turn wakes its waiter alone; lost events leave it registered") {
    release_registry r;
    const int turn = release_event::turn - 7;  // a turn's watch descriptor
    r.add(1, &a, 10, false);
    r.add(turn, &b, 20, false);
    // The file's release wakes its writer, not the waiter behind another
    // process's waiter, which is older here but waits for its turn.
    auto w = woken_by(r, {{1, false}});
    REQUIRE(w.size() == 1);
    CHECK(has(w, &a, false));
    w = woken_by(r, {{turn, false}});
    REQUIRE(w.size() == 1);
    CHECK(has(w, &b, false));
    // Lost events move every file's waiter, never a turn's.
    std::vector<int> moved;
    w = woken_by(r, {{release_event::all, true}}, &moved);
    REQUIRE(w.size() == 1);
    CHECK(has(w, &a, true));
    CHECK(moved == std::vector<int>{1});
    CHECK(!r.idle());
    CHECK(r.remove(&b) == turn);
    CHECK(r.idle());
}
