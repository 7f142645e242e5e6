// SPDX-License-Identifier: MIT
// Byte-range locks (lock_options::range with lock_backend::ofd): exclusion
// on the same bytes against other processes' F_OFD_SETLK, none on other
// bytes nor against flock(2), no content written, the local queue keyed by
// range, and the same choice through the sync, Asio and libuv drivers.
#include <filelock/asio.hpp>
#include <filelock/detail/local_queue.hpp>
#include <filelock/lock_file.hpp>
#include <filelock/uv.hpp>

#include "support.hpp"

#include <asio/io_context.hpp>

#include <atomic>
#include <thread>

using namespace test;
using filelock::errc;
using filelock::lock_file;

namespace {

filelock::lock_options range_opts(std::uint64_t start, std::uint64_t length,
                                  filelock::lock_mode mode = filelock::lock_mode::exclusive) {
    filelock::lock_options o;
    o.backend = filelock::lock_backend::ofd;
    o.range = {start, length};
    o.mode = mode;
    return o;
}

}  // namespace

TEST_CASE("range: another process's F_OFD_SETLK on the same byte excludes us, both ways") {
    scratch s;
    const auto p = s / "r.lock";
    {
        lock_file mine(p, range_opts(7, 1));
        CHECK(probe_in_child(p, F_WRLCK, 7) == 1);
        CHECK(probe_in_child(p, F_RDLCK, 7) == 1);
        CHECK(probe_in_child(p, F_WRLCK, 6) == 0);  // other bytes are free
        CHECK(probe_in_child(p, F_WRLCK, 8) == 0);
    }
    CHECK(probe_in_child(p, F_WRLCK, 7) == 0);  // released

    child other = hold_byte_in_child(p, F_WRLCK, 7);
    REQUIRE(other.ready());
    std::error_code ec;
    auto l = filelock::try_lock(p, range_opts(7, 1), ec);
    CHECK(ec == errc::locked);
    CHECK_THROWS_AS(lock_file(p, range_opts(7, 1)), filelock::lock_error);
    CHECK(filelock::try_lock(p, range_opts(7, 1, filelock::lock_mode::shared), ec).is_locked() ==
          false);
    CHECK(ec == errc::locked);
    auto next = filelock::try_lock(p, range_opts(8, 1), ec);  // the next byte is free
    CHECK(!ec);
    CHECK(next.is_locked());
    auto before = filelock::try_lock(p, range_opts(0, 7), ec);  // [0, 7) ends before byte 7
    CHECK(!ec);
    auto to_end = filelock::try_lock(p, range_opts(7, 0), ec);  // [7, EOF) holds byte 7
    CHECK(ec == errc::locked);
    other.release();
    CHECK(other.wait() == 0);
    auto won = filelock::try_lock(p, range_opts(7, 1), ec);
    CHECK(!ec);
}

TEST_CASE("range: shared ranges coexist, and exclude a writer of the same bytes") {
    scratch s;
    const auto p = s / "r.lock";
    const auto sh = range_opts(100, 10, filelock::lock_mode::shared);
    lock_file a(p, sh);
    lock_file b(p, sh);
    CHECK(probe_in_child(p, F_RDLCK, 105) == 0);
    CHECK(probe_in_child(p, F_WRLCK, 105) == 1);
    std::error_code ec;
    auto w = filelock::try_lock(p, range_opts(109, 1), ec);
    CHECK(ec == errc::locked);
    auto past = filelock::try_lock(p, range_opts(110, 1), ec);
    CHECK(!ec);
}

TEST_CASE("range: two OFD descriptors of one process exclude each other on the same bytes only") {
    scratch s;
    const auto p = s / "r.lock";
    lock_file a(p, range_opts(0, 1));
    std::error_code ec;
    auto b = filelock::try_lock(p, range_opts(0, 1), ec);
    CHECK(ec == errc::locked);
    auto c = filelock::try_lock(p, range_opts(1, 1), ec);
    CHECK(!ec);
    a.close();
    auto d = filelock::try_lock(p, range_opts(0, 1), ec);
    CHECK(!ec);
}

TEST_CASE("range: an OFD range lock and a flock(2) lock on one file do not exclude each other") {
    // Linux keeps the two kinds apart (util-linux's fcntl-vs-flock test).
    scratch s;
    const auto p = s / "r.lock";
    lock_file flocked(p, [] {
        filelock::lock_options o;
        o.write_content = false;
        return o;
    }());
    std::error_code ec;
    auto ranged = filelock::try_lock(p, range_opts(0, 1), ec);
    CHECK(!ec);
    CHECK(ranged.is_locked());
    flocked.close();
    CHECK(lock_is_free(p));  // a flock(2) user does not see the OFD range lock
}

TEST_CASE("range: a range lock writes no content, even over foreign content") {
    scratch s;
    const auto p = s / "r.lock";
    {
        lock_file l(p, range_opts(3, 1));
        CHECK(read_file(p).empty());
    }
    write_file(p, "#!/bin/sh\necho data\n");
    {
        lock_file l(p, range_opts(0, 4));
        CHECK(read_file(p) == "#!/bin/sh\necho data\n");
        auto o = range_opts(0, 4);
        o.remove_on_release = true;  // a range holder never removes the file
        l.close();
        lock_file r(p, o);
    }
    CHECK(fs::exists(p));
    // The whole file, as before: the holder's line.
    fs::remove(p);
    lock_file whole(p, range_opts(0, 0));
    CHECK(read_file(p) == pid_content());
}

TEST_CASE("range: a range with the flock backend is rejected before the file is touched") {
    scratch s;
    const auto p = s / "r.lock";
    filelock::lock_options o;
    o.range = {5, 1};
    std::error_code ec;
    auto l = filelock::try_lock(p, o, ec);
    CHECK(ec == std::errc::invalid_argument);
    CHECK(!fs::exists(p));
    l = filelock::lock(p, 1s, o, ec);
    CHECK(ec == std::errc::invalid_argument);
    try {
        lock_file x(p, o);
        FAIL("accepted");
    } catch (const std::filesystem::filesystem_error& e) {
        CHECK(e.code() == std::errc::invalid_argument);
        CHECK(e.path1() == p);
        CHECK(std::string(e.what()).find("lock_backend::ofd") != std::string::npos);
    }
    o.range = {0, 0};  // the whole file is the flock default
    auto ok = filelock::try_lock(p, o, ec);
    CHECK(!ec);
    ok.close();
    // Past the largest offset, with OFD.
    fs::remove(p);
    auto far = filelock::try_lock(p, range_opts(std::uint64_t(1) << 63, 1), ec);
    CHECK(ec == std::errc::invalid_argument);
    far = filelock::try_lock(p, range_opts(10, (std::uint64_t(1) << 63) - 9), ec);
    CHECK(ec == std::errc::invalid_argument);
    // A length no off_t holds (before, it passed, and fcntl refused it once
    // the file was made).
    far = filelock::try_lock(p, range_opts(0, std::uint64_t(1) << 63), ec);
    CHECK(ec == std::errc::invalid_argument);
    CHECK(!fs::exists(p));
    far = filelock::try_lock(p, range_opts(10, (std::uint64_t(1) << 63) - 10), ec);
    CHECK(!ec);  // its last byte is the largest offset, 2^63 - 1
}

TEST_CASE("range: a timed lock waits for the same bytes and wins once they are released") {
    scratch s;
    const auto p = s / "r.lock";
    child other = hold_byte_in_child(p, F_WRLCK, 2);
    REQUIRE(other.ready());
    std::error_code ec;
    auto l = filelock::lock(p, 0s, range_opts(2, 1), ec);
    CHECK(ec == errc::timeout);
    std::thread releaser([&] {
        std::this_thread::sleep_for(50ms);
        other.release();
    });
    l = filelock::lock(p, 20s, range_opts(2, 1), ec);
    releaser.join();
    CHECK(!ec);
    CHECK(l.is_locked());
    CHECK(other.wait() == 0);
}

TEST_CASE("range: local waiters for different ranges of one file do not queue behind each other") {
    scratch s;
    const auto p = s / "r.lock";
    lock_file zero(p, range_opts(0, 1));
    lock_file one(p, range_opts(1, 1));
    // A waits for byte 0, which stays held meanwhile.
    std::atomic<bool> a_done{false};
    std::error_code a_ec;
    lock_file a_lock;
    std::thread a([&] {
        a_lock = filelock::lock(p, 30s, range_opts(0, 1), a_ec);
        a_done = true;
    });
    while (filelock::detail::local_waiters() == 0) std::this_thread::sleep_for(1ms);
    // B waits for byte 1: a queue of its own, so its release reaches B even
    // though A, which arrived first, cannot progress. Keyed by file alone, B
    // would wait behind A until its own timeout.
    std::error_code b_ec;
    lock_file b_lock;
    std::thread b([&] { b_lock = filelock::lock(p, 10s, range_opts(1, 1), b_ec); });
    while (filelock::detail::local_waiters() < 2) std::this_thread::sleep_for(1ms);
    one.close();
    b.join();
    CHECK(!b_ec);
    CHECK(b_lock.is_locked());
    CHECK(!a_done);
    zero.close();
    a.join();
    CHECK(!a_ec);
    CHECK(a_lock.is_locked());
}

TEST_CASE("range: asio and libuv async_lock take, wait for and time out on a range") {
    scratch s;
    const auto p = s / "r.lock";
    child other = hold_byte_in_child(p, F_WRLCK, 4);
    REQUIRE(other.ready());
    asio::io_context io;
    async_outcome free_byte, timed_out, waited;
    filelock::async_lock(io, p, 5s, range_opts(5, 1), capture(free_byte));
    filelock::async_lock(io, p, 20ms, range_opts(4, 1), capture(timed_out));
    io.run();
    CHECK(!free_byte.ec);
    CHECK(free_byte.lock.is_locked());
    CHECK(timed_out.ec == errc::timeout);
    filelock::async_lock(io, p, 20s, range_opts(4, 1), capture(waited));
    std::thread releaser([&] {
        std::this_thread::sleep_for(50ms);
        other.release();
    });
    io.restart();
    io.run();
    releaser.join();
    CHECK(other.wait() == 0);
    CHECK(!waited.ec);
    CHECK(waited.lock.is_locked());
    CHECK(probe_in_child(p, F_WRLCK, 4) == 1);
    CHECK(read_file(p).empty());

    uv_loop_t loop;
    REQUIRE(uv_loop_init(&loop) == 0);
    async_outcome uv_free, uv_busy;
    filelock::uv::async_lock(&loop, p, 5s, range_opts(6, 1), capture(uv_free));
    filelock::uv::async_lock(&loop, p, 20ms, range_opts(4, 1), capture(uv_busy));
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(!uv_free.ec);
    CHECK(uv_free.lock.is_locked());
    CHECK(uv_busy.ec == errc::timeout);
    CHECK(probe_in_child(p, F_WRLCK, 6) == 1);
    CHECK(uv_loop_close(&loop) == 0);
}
