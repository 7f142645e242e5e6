// SPDX-License-Identifier: MIT
// Every synchronous signature the README shows compiles and does what it
// says: the table of "The synchronous facade" and its example.

#include <filelock/lock_file.hpp>

#include "support.hpp"

using namespace test;

TEST_CASE("README: every form of the synchronous facade compiles and locks") {
    scratch s;
    const auto p = s / "app.lock";
    filelock::lock_options options;
    options.content_template = "{pid}";
    std::error_code ec;

    // filelock::lock_file(path[, options]), simple_lock_file(path), close()
    {
        filelock::lock_file a(p);
        CHECK(a.path() == p);
        a.close();
        a.close();  // idempotent
        filelock::lock_file b(p, options);
        b.close();
        filelock::simple_lock_file c(p);
        try {
            filelock::lock_file d(p);
            FAIL("a second lock_file on a held lock");
        } catch (const filelock::lock_error& e) {
            CHECK(std::string(e.what()) == "Couldn't lock '" + p.string() + "'");
            CHECK(e.path() == p);
        }
    }
    // filelock::try_lock(path, [options,] ec)
    {
        auto a = filelock::try_lock(p, ec);
        CHECK(!ec);
        auto b = filelock::try_lock(p, options, ec);
        CHECK(ec == filelock::errc::locked);
    }
    // filelock::lock(path, timeout[, options][, ec])
    {
        using namespace std::chrono_literals;
        auto a = filelock::lock(p, 1s);
        CHECK_THROWS_AS(filelock::lock(p, 0s, options), filelock::timeout_error);
        auto b = filelock::lock(p, 0s, ec);  // the form that did not compile
        CHECK(ec == filelock::errc::timeout);
        auto c = filelock::lock(p, 0s, options, ec);
        CHECK(ec == filelock::errc::timeout);
        auto d = filelock::lock(p, 10ms, {}, ec);
        CHECK(ec == filelock::errc::timeout);
        a.close();
        auto e = filelock::lock(p, 1s, ec);
        CHECK(!ec);
        CHECK(e.native_handle() >= 0);
    }
}
