// SPDX-License-Identifier: MIT
// The sync facade and the lock primitive, in one process (plus forked
// children where a second process is the point).

#include <filelock/detail/file_backend.hpp>
#include <filelock/lock_file.hpp>

#include "../src/file/content.hpp"
#include "../src/posix/sys.hpp"
#include "support.hpp"

#include <atomic>
#include <climits>
#include <functional>
#include <map>
#include <sched.h>
#include <sys/stat.h>
#include <thread>

using namespace test;
using filelock::errc;
using filelock::lock_file;
using filelock::lock_options;
using filelock::simple_lock_file;

namespace {

// An earlier holder's line of `n` bytes (longer than ours: ftruncate runs).
std::string leftover_line(std::size_t n) { return " " + std::string(n - 2, '9') + "\n"; }

std::string hostname() {
    char h[HOST_NAME_MAX + 1] = {};
    ::gethostname(h, sizeof h - 1);
    return h;
}

// Replaces entries of the syscall table for one test and restores them.
struct seam {
    filelock::detail::sys_table saved = filelock::detail::sys();
    ~seam() { filelock::detail::sys() = saved; }
    filelock::detail::sys_table& table() { return filelock::detail::sys(); }
};

// Injections need plain function pointers: the current plan lives here.
struct plan {
    std::string call;  // which call fails
    int err = 0;       // with which errno
    int times = 1;     // how many times (then it succeeds)
    int seen = 0;
};
plan g_plan;

bool inject(const char* call) {
    if (g_plan.call != call || g_plan.times == 0) return false;
    --g_plan.times;
    ++g_plan.seen;
    errno = g_plan.err;
    return true;
}

const filelock::detail::sys_table& real() { return filelock::detail::default_sys(); }

int f_open(const char* p, int fl, mode_t m) { return inject("open") ? -1 : real().open(p, fl, m); }
int f_flock(int fd, int op) { return inject("flock") ? -1 : real().flock(fd, op); }
int f_fcntl(int fd, int cmd, struct ::flock* l) {
    return inject("fcntl") ? -1 : real().fcntl_lock(fd, cmd, l);
}
int f_fstat(int fd, struct ::stat* st) { return inject("fstat") ? -1 : real().fstat(fd, st); }
int f_stat(const char* p, struct ::stat* st) { return inject("stat") ? -1 : real().stat(p, st); }
int f_lstat(const char* p, struct ::stat* st) { return inject("lstat") ? -1 : real().lstat(p, st); }
ssize_t f_pwrite(int fd, const void* b, size_t n, off_t o) {
    return inject("pwrite") ? -1 : real().pwrite(fd, b, n, o);
}
int f_ftruncate(int fd, off_t n) { return inject("ftruncate") ? -1 : real().ftruncate(fd, n); }

struct injecting_seam : seam {
    injecting_seam(std::string call, int err, int times = 1) {
        g_plan = {std::move(call), err, times, 0};
        auto& t = table();
        t.open = f_open;
        t.flock = f_flock;
        t.fcntl_lock = f_fcntl;
        t.fstat = f_fstat;
        t.stat = f_stat;
        t.lstat = f_lstat;
        t.pwrite = f_pwrite;
        t.ftruncate = f_ftruncate;
    }
};

}  // namespace

TEST_CASE("lock_file: writes ' {pid}\\n' and leaves the file after close") {
    scratch s;
    const auto p = s / "app.lock";
    {
        lock_file l(p);
        CHECK(l.is_locked());
        CHECK(l.native_handle() >= 0);
        CHECK(l.path() == p);
        CHECK(read_file(p) == pid_content());
    }
    CHECK(fs::exists(p));
    CHECK(read_file(p) == pid_content());
}

TEST_CASE("lock_file: the hostname template gives zc.lockfile's format") {
    scratch s;
    lock_options o;
    o.content_template = "{pid};{hostname}";
    lock_file l(s / "a.lock", o);
    CHECK(read_file(s / "a.lock") == " " + std::to_string(::getpid()) + ";" + hostname() + "\n");
}

TEST_CASE("lock_file: braces are escaped with {{ and }}") {
    std::string out;
    REQUIRE(!filelock::detail::expand_content("{{x}}-{pid}", out));
    CHECK(out == " {x}-" + std::to_string(::getpid()) + "\n");
}

TEST_CASE("lock_file: the default template names the process that locks, a forked child too") {
    std::string fast, general;
    REQUIRE(!filelock::detail::expand_content("{pid}", fast));
    REQUIRE(!filelock::detail::expand_content("{pid}{{}}", general));
    CHECK(fast == pid_content());
    CHECK(general == " " + std::to_string(::getpid()) + "{}\n");
    scratch s;
    const auto p = s / "a.lock";
    { lock_file parent(p); }
    CHECK(read_file(p) == pid_content());
    // The child writes its own pid over the parent's line.
    CHECK(run_in_child([&] {
              std::string line;
              if (filelock::detail::expand_content("{pid}", line) || line != pid_content())
                  return 1;
              lock_file l(p);
              return read_file(p) == pid_content() ? 0 : 2;
          }) == 0);
    const std::string left = read_file(p);
    CHECK(left != pid_content());
    CHECK(left.front() == ' ');
}

TEST_CASE("lock_file: a malformed template is rejected before the file is touched") {
    // The last three made lines with control bytes: before, they were
    // written, and every later lock that writes a line failed on the file
    // (foreign content).
    for (std::string bad : {"{", "}", "{pid", "{nope}", "a}b", "{}", "{pid}{", "job\nname",
                            "{pid}\t{hostname}", "\x1b[31m{pid}"}) {
        CAPTURE(bad);
        scratch s;
        const auto p = s / "a.lock";
        lock_options o;
        o.content_template = bad;
        std::error_code ec;
        auto l = filelock::try_lock(p, o, ec);
        CHECK(ec == errc::invalid_template);
        CHECK(ec == std::errc::invalid_argument);
        CHECK(!l.is_locked());
        CHECK(!fs::exists(p));
        CHECK_THROWS_AS(lock_file(p, o), std::filesystem::filesystem_error);
        CHECK(!fs::exists(p));
    }
}

TEST_CASE(
    "lock_file: options whose enumerators name no value are rejected before the file is "
    "touched") {
    // Before, mode 7 took an exclusive lock writing nothing, backend 7 fell
    // back to flock, on_foreign_content 7 acted as lock_without_content.
    for (int which = 0; which < 3; ++which) {
        CAPTURE(which);
        scratch s;
        const auto p = s / "a.lock";
        lock_options o;
        if (which == 0) o.mode = static_cast<filelock::lock_mode>(7);
        if (which == 1) o.backend = static_cast<filelock::lock_backend>(7);
        if (which == 2) o.on_foreign_content = static_cast<filelock::foreign_content>(7);
        std::error_code ec;
        auto l = filelock::try_lock(p, o, ec);
        CHECK(ec == std::errc::invalid_argument);
        CHECK(!l.is_locked());
        CHECK(!fs::exists(p));
        CHECK_THROWS_AS(lock_file(p, o), std::filesystem::filesystem_error);
        l = filelock::lock(p, 1s, o, ec);
        CHECK(ec == std::errc::invalid_argument);
        CHECK(!fs::exists(p));
    }
}

TEST_CASE("lock_file: the content is truncated after a longer previous one") {
    scratch s;
    const auto p = s / "a.lock";
    write_file(p, " 99999999999 some long leftover from an earlier holder\n");
    lock_file l(p);
    CHECK(read_file(p) == pid_content());
}

TEST_CASE("lock_file: a second attempt in the same process fails with lock_error") {
    scratch s;
    const auto p = s / "a.lock";
    lock_file first(p);
    try {
        lock_file second(p);
        FAIL("second lock succeeded");
    } catch (const filelock::lock_error& e) {
        CHECK(std::string(e.what()) == "Couldn't lock '" + p.string() + "'");
        CHECK(e.path() == p);
        CHECK(e.holder() == std::to_string(::getpid()));
        CHECK(e.code() == errc::locked);
    }
    // the holder's pid stays after the failed attempt
    CHECK(read_file(p) == pid_content());
}

TEST_CASE("lock_file: try_lock reports contention as errc::locked without throwing") {
    scratch s;
    const auto p = s / "a.lock";
    lock_file first(p);
    std::error_code ec;
    auto second = filelock::try_lock(p, ec);
    CHECK(ec == errc::locked);
    CHECK(ec == std::errc::resource_unavailable_try_again);
    CHECK(!second.is_locked());
    first.close();
    auto third = filelock::try_lock(p, ec);
    CHECK(!ec);
    CHECK(third.is_locked());
}

TEST_CASE("lock_file: close releases, is idempotent, and the destructor closes") {
    scratch s;
    const auto p = s / "a.lock";
    lock_file l(p);
    CHECK(!lock_is_free(p));
    l.close();
    CHECK(!l.is_locked());
    CHECK(l.native_handle() == -1);
    CHECK(lock_is_free(p));
    l.close();
    CHECK(lock_is_free(p));
    { lock_file again(p); }
    CHECK(lock_is_free(p));
}

TEST_CASE("lock_file: moving transfers the lock; the moved-from object holds nothing") {
    scratch s;
    const auto p = s / "a.lock";
    lock_file a(p);
    lock_file b(std::move(a));
    CHECK(!a.is_locked());
    CHECK(a.native_handle() == -1);
    CHECK(a.path().empty());
    CHECK(b.is_locked());
    CHECK(b.path() == p);
    a.close();  // must not release b's lock
    CHECK(!lock_is_free(p));
    lock_file c;
    c = std::move(b);
    CHECK(c.is_locked());
    CHECK(!b.is_locked());
    CHECK(b.path().empty());
    CHECK(c.path() == p);
    CHECK(!lock_is_free(p));
    c = lock_file();
    CHECK(lock_is_free(p));
}

TEST_CASE("simple_lock_file: writes nothing") {
    scratch s;
    const auto p = s / "a.lock";
    write_file(p, "keep me");
    simple_lock_file l(p);
    CHECK(l.is_locked());
    CHECK(read_file(p) == "keep me");
    CHECK_THROWS_AS(lock_file(p), filelock::lock_error);
}

TEST_CASE("simple_lock_file: works on a file the caller can only read") {
    scratch s;
    const auto p = s / "ro.lock";
    write_file(p, " 42\n");
    fs::permissions(p, fs::perms::owner_read | fs::perms::group_read | fs::perms::others_read);
    fs::permissions(s.dir, fs::perms::all);
    // Run as an unprivileged user (root ignores permission bits).
    child c([&](int) {
        if (::geteuid() == 0 && (::setgid(65534) != 0 || ::setuid(65534) != 0)) return 10;
        std::error_code ec;
        auto simple = filelock::try_lock(
            p,
            [] {
                lock_options o;
                o.write_content = false;
                return o;
            }(),
            ec);
        if (ec || !simple.is_locked()) return 11;
        simple.close();
        auto full = filelock::try_lock(p, ec);
        if (ec != std::errc::permission_denied || full.is_locked()) return 12;
        return read_file(p) == " 42\n" ? 0 : 13;
    });
    c.release();
    CHECK(c.wait() == 0);
}

TEST_CASE("lock_file: a created file gets file_mode minus the umask") {
    scratch s;
    const mode_t old = ::umask(022);
    lock_options o;
    o.file_mode = 0640;
    { lock_file l(s / "a.lock", o); }
    { lock_file l(s / "b.lock"); }
    ::umask(old);
    struct ::stat st {};
    REQUIRE(::stat((s / "a.lock").c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0640);
    REQUIRE(::stat((s / "b.lock").c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0644);
}

TEST_CASE("lock_file: shared locks coexist and exclude an exclusive one") {
    scratch s;
    const auto p = s / "a.lock";
    lock_options sh;
    sh.mode = filelock::lock_mode::shared;
    lock_file a(p, sh), b(p, sh);
    CHECK(a.is_locked());
    CHECK(b.is_locked());
    CHECK(read_file(p).empty());  // shared holders write nothing
    CHECK_THROWS_AS(lock_file(p), filelock::lock_error);
    a.close();
    b.close();
    lock_file ex(p);
    CHECK_THROWS_AS(lock_file(p, sh), filelock::lock_error);
}

TEST_CASE("lock_file: OFD locks exclude each other in one process and write the pid") {
    scratch s;
    const auto p = s / "a.lock";
    lock_options o;
    o.backend = filelock::lock_backend::ofd;
    lock_file a(p, o);
    CHECK(read_file(p) == pid_content());
    std::error_code ec;
    filelock::try_lock(p, o, ec);
    CHECK(ec == errc::locked);
    a.close();
    CHECK(filelock::try_lock(p, o, ec).is_locked());
    CHECK(!ec);
}

TEST_CASE("lock_file: OFD shared locks coexist and exclude an exclusive one") {
    scratch s;
    const auto p = s / "a.lock";
    lock_options sh;
    sh.backend = filelock::lock_backend::ofd;
    sh.mode = filelock::lock_mode::shared;
    lock_options ex = sh;
    ex.mode = filelock::lock_mode::exclusive;
    lock_file a(p, sh), b(p, sh);
    std::error_code ec;
    filelock::try_lock(p, ex, ec);
    CHECK(ec == errc::locked);
}

TEST_CASE("lock_file: 50 threads each increment a counter under the lock: exactly 50") {
    scratch s;
    const auto p = s / "a.lock";
    const auto counter = s / "counter";
    write_file(counter, "0");
    std::vector<std::thread> threads;
    std::atomic<int> inside{0}, overlaps{0};
    for (int i = 0; i < 50; ++i)
        threads.emplace_back([&] {
            auto l = filelock::lock(p, 30s);
            if (inside.fetch_add(1) != 0) ++overlaps;
            const int n = std::stoi(read_file(counter));
            std::this_thread::sleep_for(100us);
            write_file(counter, std::to_string(n + 1));
            inside.fetch_sub(1);
        });
    for (auto& t : threads) t.join();
    CHECK(overlaps == 0);
    CHECK(read_file(counter) == "50");
}

TEST_CASE("lock: timeout 0 under contention is errc::timeout, the throwing form timeout_error") {
    scratch s;
    const auto p = s / "a.lock";
    lock_file held(p);
    std::error_code ec;
    auto l = filelock::lock(p, 0s, {}, ec);
    CHECK(ec == errc::timeout);
    CHECK(ec == std::errc::timed_out);
    CHECK(!l.is_locked());
    try {
        filelock::lock(p, 0s);
        FAIL("no timeout");
    } catch (const filelock::timeout_error& e) {
        CHECK(e.path() == p);
        CHECK(e.holder() == std::to_string(::getpid()));
        CHECK(e.code() == errc::timeout);
    }
    CHECK_THROWS_AS(filelock::lock(p, 20ms),
                    filelock::lock_error);  // timeout_error is a lock_error
}

TEST_CASE("lock: a timed acquisition wins once the holder releases") {
    scratch s;
    const auto p = s / "a.lock";
    auto held = std::make_unique<lock_file>(p);
    std::thread releaser([&] {
        std::this_thread::sleep_for(50ms);
        held.reset();
    });
    auto l = filelock::lock(p, 30s);
    CHECK(l.is_locked());
    releaser.join();
}

TEST_CASE("lock: wait_forever waits for the release") {
    scratch s;
    const auto p = s / "a.lock";
    auto held = std::make_unique<lock_file>(p);
    std::thread releaser([&] {
        std::this_thread::sleep_for(30ms);
        held.reset();
    });
    auto l = filelock::lock(p, filelock::wait_forever);
    CHECK(l.is_locked());
    releaser.join();
}

TEST_CASE("lock_file: bad paths report their own error with the path, never 'locked'") {
    scratch s;
    write_file(s / "file", "x");
    struct row {
        std::string name;
        fs::path path;
        std::errc expected;
    };
    const std::vector<row> rows = {
        {"missing directory", s / "nope" / "a.lock", std::errc::no_such_file_or_directory},
        {"a directory", s.dir, std::errc::is_a_directory},
        {"a file as a directory", s / "file" / "a.lock", std::errc::not_a_directory},
        {"empty path", fs::path(), std::errc::no_such_file_or_directory},
        {"name too long", s / std::string(300, 'x'), std::errc::filename_too_long},
        {"path too long", fs::path(std::string(5000, '/') + "x"), std::errc::filename_too_long},
    };
    for (const auto& r : rows) {
        for (bool simple : {false, true}) {
            CAPTURE(r.name, simple);
            const int fds = settled_fd_count();
            lock_options o;
            o.write_content = !simple;
            std::error_code ec;
            auto l = filelock::try_lock(r.path, o, ec);
            CHECK(ec == r.expected);
            CHECK(ec != errc::locked);
            CHECK(!l.is_locked());
            l = filelock::lock(r.path, 10s, o, ec);  // an error is never retried
            CHECK(ec == r.expected);
            CHECK(open_fd_count() == fds);
            try {
                lock_file x(r.path, o);
                FAIL("no error");
            } catch (const filelock::lock_error&) {
                FAIL("reported as contention");
            } catch (const fs::filesystem_error& e) {
                CHECK(e.code() == r.expected);
                CHECK(e.path1() == r.path);
                CHECK(std::string(e.what()).find(r.path.string().substr(0, 50)) !=
                      std::string::npos);
            }
        }
    }
}

TEST_CASE("lock_file: a FIFO is not a regular file and is left alone") {
    scratch s;
    const auto p = s / "fifo";
    REQUIRE(::mkfifo(p.c_str(), 0644) == 0);
    const int fds = settled_fd_count();
    std::error_code ec;
    filelock::try_lock(p, ec);
    CHECK(ec == errc::not_a_regular_file);
    CHECK(open_fd_count() == fds);
}

TEST_CASE("lock_file: never writes through a symlink at the last component by default") {
    scratch s;
    const auto victim = s / "bashrc";
    write_file(victim, "precious\n");
    const auto link = s / "app.lock";
    fs::create_symlink(victim, link);
    std::error_code ec;
    auto l = filelock::try_lock(link, ec);
    CHECK(ec == errc::symlink_not_followed);
    CHECK(read_file(victim) == "precious\n");
    CHECK_THROWS_AS(lock_file(link), fs::filesystem_error);
    // a dangling link is not followed to create a file either
    const auto dangling = s / "dangling.lock";
    fs::create_symlink(s / "created-through-link", dangling);
    filelock::try_lock(dangling, ec);
    CHECK(ec == errc::symlink_not_followed);
    CHECK(!fs::exists(s / "created-through-link"));
    // simple locks write nothing, so they may follow
    CHECK(simple_lock_file(link).is_locked());
    // an explicit opt-in follows, and still never overwrites what is not a
    // lock holder's line
    lock_options follow;
    follow.follow_symlinks = true;
    filelock::try_lock(link, follow, ec);
    CHECK(ec == errc::foreign_content);
    CHECK(read_file(victim) == "precious\n");
    write_file(victim, "");
    {
        lock_file f(link, follow);
        CHECK(read_file(victim) == pid_content());
    }
}

TEST_CASE("lock_file: EINTR is retried on every call that may return it") {
    scratch s;
    const auto p = s / "a.lock";
    for (const char* call : {"open", "flock", "pwrite", "ftruncate"}) {
        CAPTURE(call);
        write_file(p, leftover_line(100));  // so that ftruncate runs
        injecting_seam inj(call, EINTR, 3);
        lock_file l(p);
        CHECK(l.is_locked());
        CHECK(g_plan.seen == 3);
        CHECK(read_file(p) == pid_content());
    }
}

TEST_CASE("lock_file: a failing call is reported with its errno and leaks nothing") {
    scratch s;
    const auto p = s / "a.lock";
    struct row {
        const char* call;
        int err;
    };
    const std::vector<row> rows = {
        {"open", EMFILE},   {"open", ENFILE},     {"open", EACCES},   {"open", EROFS},
        {"flock", ENOLCK},  {"flock", EBADF},     {"flock", EIO},     {"fstat", EIO},
        {"lstat", EACCES},  {"lstat", EIO},       {"pwrite", ENOSPC}, {"pwrite", EIO},
        {"ftruncate", EIO}, {"ftruncate", EROFS},
    };
    for (const auto& r : rows) {
        CAPTURE(r.call, r.err);
        write_file(p, leftover_line(100));
        // Counted once the release watcher an earlier test left lingering is
        // closed: its closing meanwhile would look like a descriptor lost.
        const int fds = settled_fd_count();
        {
            injecting_seam inj(r.call, r.err);
            std::error_code ec;
            auto l = filelock::try_lock(p, ec);
            CHECK(ec == std::error_code(r.err, std::system_category()));
            CHECK(!l.is_locked());
            CHECK(g_plan.seen == 1);
        }
        CHECK(open_fd_count() == fds);
        CHECK(lock_is_free(p));  // nothing left held by nobody
        {
            injecting_seam inj(r.call, r.err);
            try {
                lock_file l(p);
                FAIL("no error");
            } catch (const fs::filesystem_error& e) {
                CHECK(e.code().value() == r.err);
                CHECK(e.path1() == p);
                CHECK(std::string(e.what()).find(std::string("(") + r.call) != std::string::npos);
            }
        }
    }
}

TEST_CASE("lock_file: OFD errors other than contention are reported") {
    scratch s;
    lock_options o;
    o.backend = filelock::lock_backend::ofd;
    injecting_seam inj("fcntl", ENOLCK);
    std::error_code ec;
    filelock::try_lock(s / "a.lock", o, ec);
    CHECK(ec == std::errc::no_lock_available);
}

TEST_CASE("lock_file: ftruncate is skipped when the file is no longer than the content") {
    scratch s;
    const auto p = s / "a.lock";
    seam sm;
    static int truncates;
    truncates = 0;
    sm.table().ftruncate = [](int fd, off_t n) {
        ++truncates;
        return filelock::detail::default_sys().ftruncate(fd, n);
    };
    { lock_file l(p); }  // new file
    { lock_file l(p); }  // same length
    CHECK(truncates == 0);
    write_file(p, leftover_line(64));
    { lock_file l(p); }
    CHECK(truncates == 1);
    CHECK(read_file(p) == pid_content());
}

TEST_CASE(
    "lock_file: a lock won on a file that was replaced meanwhile is retried on the new file") {
    scratch s;
    const auto p = s / "a.lock";
    write_file(p, " old\n");
    seam sm;
    static fs::path target;
    static int replaced;
    target = p;
    replaced = 0;
    // Between open and flock, another tool replaces the file.
    sm.table().flock = [](int fd, int op) {
        if ((op & LOCK_UN) == 0 && replaced++ == 0) {
            write_file(target.string() + ".new", " new\n");
            fs::rename(target.string() + ".new", target);
        }
        return filelock::detail::default_sys().flock(fd, op);
    };
    lock_file l(p);
    CHECK(replaced == 2);  // won twice: the stale inode, then the current one
    struct ::stat held {
    }, named{};
    REQUIRE(::fstat(l.native_handle(), &held) == 0);
    REQUIRE(::stat(p.c_str(), &named) == 0);
    CHECK(held.st_ino == named.st_ino);
    CHECK(read_file(p) == pid_content());
}

TEST_CASE("lock_file: a lock won on a file unlinked meanwhile is retried on a new file") {
    scratch s;
    const auto p = s / "a.lock";
    seam sm;
    static fs::path target;
    static int calls;
    target = p;
    calls = 0;
    sm.table().flock = [](int fd, int op) {
        if ((op & LOCK_UN) == 0 && calls++ == 0) fs::remove(target);
        return filelock::detail::default_sys().flock(fd, op);
    };
    lock_file l(p);
    CHECK(calls == 2);
    CHECK(fs::exists(p));
    CHECK(read_file(p) == pid_content());
}

TEST_CASE(
    "lock_file: a waiter that wins a stale inode after unlink+release retries on the new file") {
    // The race that gave py-filelock two holders: a waiter opened the old file,
    // the holder unlinked it and released, a newcomer locked a new file.
    scratch s;
    const auto p = s / "a.lock";
    auto holder = std::make_unique<lock_file>(p);
    filelock::detail::file_backend waiter(p, {});
    REQUIRE(waiter.try_acquire() == errc::locked);  // keeps its descriptor on the old inode
    fs::remove(p);
    holder.reset();         // the old inode is free now
    lock_file newcomer(p);  // a new file, held
    CHECK(waiter.try_acquire() == errc::locked);
    newcomer.close();
    CHECK(!waiter.try_acquire());
    lock_file won = filelock::detail::adopt(waiter.take());
    struct ::stat held {
    }, named{};
    REQUIRE(::fstat(won.native_handle(), &held) == 0);
    REQUIRE(::stat(p.c_str(), &named) == 0);
    CHECK(held.st_ino == named.st_ino);
}

TEST_CASE("lock_file: holder content read on contention is bounded and stripped") {
    CHECK(filelock::detail::holder_from_bytes(" 1234\n") == "1234");
    CHECK(filelock::detail::holder_from_bytes("no newline") == "no newline");
    CHECK(filelock::detail::holder_from_bytes(std::string(100000, 'a')).size() == 1024);
    CHECK(filelock::detail::holder_from_bytes(std::string("\0\1\2 9\n", 6)) ==
          std::string("\1\2 9"));
    scratch s;
    const auto p = s / "big.lock";
    write_file(p, std::string(10 << 20, 'z'));
    simple_lock_file held(p);
    try {
        lock_file l(p);
        FAIL("no contention");
    } catch (const filelock::lock_error& e) {
        CHECK(e.holder().size() == 1024);
    }
    CHECK(filelock::read_holder(p).size() == 1024);
    CHECK(filelock::read_holder(s / "missing").empty());
}

TEST_CASE("lock_file: descriptors are close-on-exec") {
    scratch s;
    lock_file l(s / "a.lock");
    CHECK((::fcntl(l.native_handle(), F_GETFD) & FD_CLOEXEC) != 0);
}

TEST_CASE("lock_file: a forked child destroying its copy does not release the parent's lock") {
    scratch s;
    const auto p = s / "a.lock";
    lock_file held(p);
    child c([&](int ready) {
        held.close();  // the child's copy of the descriptor
        (void)!::write(ready, "r", 1);
        return 0;
    });
    REQUIRE(c.ready());
    c.release();
    CHECK(c.wait() == 0);
    CHECK(!lock_is_free(p));
    child other([&](int) {
        std::error_code ec;
        filelock::try_lock(p, ec);
        return ec == errc::locked ? 0 : 1;
    });
    other.release();
    CHECK(other.wait() == 0);
}

TEST_CASE("lock_file: another process cannot lock while we hold it, and can once we release") {
    scratch s;
    const auto p = s / "a.lock";
    auto probe = [&] {
        child c([&](int) {
            std::error_code ec;
            auto l = filelock::try_lock(p, ec);
            return ec == errc::locked ? 1 : (ec ? 2 : 0);
        });
        c.release();
        return c.wait();
    };
    lock_file l(p);
    CHECK(probe() == 1);
    l.close();
    CHECK(probe() == 0);
}

TEST_CASE("lock_file: release and re-acquire while a child process is alive") {
    scratch s;
    const auto p = s / "a.lock";
    {
        child holder = hold_in_child(p);
        REQUIRE(holder.ready());
        CHECK_THROWS_AS(lock_file(p), filelock::lock_error);
        holder.release();
        CHECK(holder.wait() == 0);
    }
    lock_file mine(p);
    child contender([&](int) {
        std::error_code ec;
        filelock::try_lock(p, ec);
        return ec == errc::locked ? 0 : 1;
    });
    contender.release();
    CHECK(contender.wait() == 0);
    mine.close();
    lock_file again(p);
    CHECK(again.is_locked());
}

TEST_CASE("lock_file: a killed holder's lock is free at once, and its pid stays") {
    scratch s;
    const auto p = s / "a.lock";
    child holder = hold_in_child(p);
    REQUIRE(holder.ready());
    const std::string content = read_file(p);
    CHECK(content != pid_content());
    holder.kill();
    holder.wait();
    lock_file mine(p);
    CHECK(read_file(p) == pid_content());
}

TEST_CASE("simple_lock_file: a failing stat in the identity check is reported and releases") {
    scratch s;
    const auto p = s / "a.lock";
    injecting_seam inj("stat", EIO);
    std::error_code ec;
    lock_options o;
    o.write_content = false;
    auto l = filelock::try_lock(p, o, ec);
    CHECK(ec == std::errc::io_error);
    CHECK(g_plan.seen == 1);
    CHECK(lock_is_free(p));
}

TEST_CASE("remove_on_release: the holder removes the file it holds when it releases") {
    scratch s;
    const auto p = s / "a.lock";
    lock_options o;
    o.remove_on_release = true;
    {
        lock_file l(p, o);
        CHECK(fs::exists(p));
    }
    CHECK(!fs::exists(p));
    // without the option the file stays
    { lock_file l(p); }
    CHECK(fs::exists(p));
}

TEST_CASE("remove_on_release: a file that no longer is the one held is not removed") {
    scratch s;
    const auto p = s / "a.lock";
    lock_options o;
    o.remove_on_release = true;
    lock_file l(p, o);
    write_file(s / "other", "someone else's");
    fs::rename(s / "other", p);  // another tool replaced the path
    l.close();
    CHECK(read_file(p) == "someone else's");
}

TEST_CASE("remove_on_release: a file with other content, taken as it was, is never removed") {
    // Before, the option removed whatever file the lock was on: a script
    // locked without content, data locked by a simple_lock_file.
    scratch s;
    const auto script = s / "deploy.sh";
    const auto data = s / "data.csv";
    write_file(script, "#!/bin/sh\necho deploying\n");
    write_file(data, "id,amount\n1,100\n");
    lock_options o;
    o.remove_on_release = true;
    o.on_foreign_content = filelock::foreign_content::lock_without_content;
    { lock_file l(script, o); }
    CHECK(read_file(script) == "#!/bin/sh\necho deploying\n");
    lock_options plain;
    plain.remove_on_release = true;
    { simple_lock_file l(data, plain); }
    CHECK(read_file(data) == "id,amount\n1,100\n");
    // A lock file is: one that holds the line of the lock that writes none
    // is empty, and goes.
    const auto empty = s / "e.lock";
    write_file(empty, "");
    { simple_lock_file l(empty, plain); }
    CHECK_FALSE(fs::exists(empty));
    // Another holder's line is a lock file's: overwritten, then removed.
    const auto other = s / "o.lock";
    write_file(other, " 1\n");
    { lock_file l(other, o); }
    CHECK_FALSE(fs::exists(other));
}

TEST_CASE("remove_on_release: a waiter holding the removed file retries on the new one") {
    scratch s;
    const auto p = s / "a.lock";
    lock_options o;
    o.remove_on_release = true;
    auto holder = std::make_unique<lock_file>(p, o);
    filelock::detail::file_backend waiter(p, o);
    REQUIRE(waiter.try_acquire() == errc::locked);  // descriptor on the file about to go
    holder.reset();                                 // unlinks, then releases
    CHECK(!fs::exists(p));
    lock_file newcomer(p, o);                     // creates and holds a new file
    CHECK(waiter.try_acquire() == errc::locked);  // the stale inode is not a win
    newcomer.close();
    REQUIRE(!waiter.try_acquire());
    auto won = filelock::detail::adopt(waiter.take());
    CHECK(fs::exists(p));
    CHECK(read_file(p) == pid_content());
}

TEST_CASE("remove_on_release: shared locks and forked children never remove") {
    scratch s;
    const auto p = s / "a.lock";
    lock_options o;
    o.remove_on_release = true;
    o.mode = filelock::lock_mode::shared;
    { lock_file l(p, o); }
    CHECK(fs::exists(p));
    lock_options ex;
    ex.remove_on_release = true;
    lock_file held(p, ex);
    child c([&](int) {
        held.close();  // the child's copy
        return 0;
    });
    c.release();
    CHECK(c.wait() == 0);
    CHECK(fs::exists(p));
    CHECK(!lock_is_free(p));
}

TEST_CASE("lock_file: a device node is not a regular file, for simple locks too") {
    for (bool simple : {false, true}) {
        lock_options o;
        o.write_content = !simple;
        std::error_code ec;
        filelock::try_lock("/dev/null", o, ec);
        CHECK(ec == errc::not_a_regular_file);
    }
}

TEST_CASE("lock_file: a holder's content without a newline is reported as is") {
    scratch s;
    const auto p = s / "a.lock";
    write_file(p, "4321");
    simple_lock_file held(p);
    try {
        lock_file l(p);
        FAIL("no contention");
    } catch (const filelock::lock_error& e) {
        CHECK(e.holder() == "4321");
    }
}

TEST_CASE("lock_file: another user's 0644 lock file and a read-only directory, as nobody") {
    scratch s;
    fs::permissions(s.dir, fs::perms::all);
    const auto theirs = s / "theirs.lock";
    write_file(theirs, " 1\n");
    fs::permissions(theirs, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                                fs::perms::others_read);
    fs::create_directory(s / "ro");
    fs::permissions(s / "ro", fs::perms::owner_read | fs::perms::owner_exec |
                                  fs::perms::group_read | fs::perms::group_exec |
                                  fs::perms::others_read | fs::perms::others_exec);
    // Runs as nobody (root ignores permission bits); as a normal user the
    // files are still someone else's only if the test runs as root.
    if (::geteuid() != 0) return;
    child c([&](int) {
        if (::setgid(65534) != 0 || ::setuid(65534) != 0) return 10;
        std::error_code ec;
        filelock::try_lock(theirs, ec);
        if (ec != std::errc::permission_denied) return 11;
        lock_options simple;
        simple.write_content = false;
        if (!filelock::try_lock(theirs, simple, ec).is_locked() || ec) return 12;
        filelock::try_lock(s / "ro" / "a.lock", ec);
        if (ec != std::errc::permission_denied) return 13;
        filelock::try_lock(s / "ro" / "a.lock", simple, ec);
        if (ec != std::errc::permission_denied) return 14;
        return read_file(theirs) == " 1\n" ? 0 : 15;
    });
    c.release();
    CHECK(c.wait() == 0);
}

TEST_CASE("lock: when inotify fails (no instance, no watch) waiting falls back to the backoff") {
    // A fresh thread: lock() keeps one inotify instance per thread.
    for (const char* call : {"inotify_init1", "inotify_add_watch"}) {
        for (int err : {EMFILE, ENOSPC, ENOMEM}) {
            CAPTURE(call, err);
            scratch s;
            const auto p = s / "a.lock";
            auto held = std::make_unique<lock_file>(p);
            seam sm;
            static const char* failing;
            static int failing_err;
            failing = call;
            failing_err = err;
            sm.table().inotify_init1 = [](int flags) {
                if (std::string(failing) == "inotify_init1") return errno = failing_err, -1;
                return filelock::detail::default_sys().inotify_init1(flags);
            };
            sm.table().inotify_add_watch = [](int fd, const char* path, uint32_t mask) {
                if (std::string(failing) == "inotify_add_watch") return errno = failing_err, -1;
                return filelock::detail::default_sys().inotify_add_watch(fd, path, mask);
            };
            std::thread releaser([&] {
                std::this_thread::sleep_for(30ms);
                held.reset();
            });
            std::error_code ec;
            lock_file got;
            std::thread waiter([&] { got = filelock::lock(p, 30s, {}, ec); });
            waiter.join();
            releaser.join();
            CHECK(!ec);
            CHECK(got.is_locked());
        }
    }
}

TEST_CASE("lock_file: a failing close is not retried and leaves nothing held") {
    for (int err : {EIO, EINTR}) {
        CAPTURE(err);
        scratch s;
        const auto p = s / "a.lock";
        // Settled first: the linger thread closing an earlier test's idle
        // instance would look like a descriptor lost, and go through the
        // seam's close.
        const int fds = settled_fd_count();
        seam sm;
        static int closes, close_err;
        closes = 0;
        close_err = err;
        // Linux releases the descriptor even when close reports an error.
        sm.table().close = [](int fd) {
            ++closes;
            filelock::detail::default_sys().close(fd);
            errno = close_err;
            return -1;
        };
        {
            lock_file l(p);
            l.close();
            CHECK(closes == 1);  // never retried: a retry could close someone else's descriptor
            l.close();
            CHECK(closes == 1);
        }
        CHECK(lock_is_free(p));
        CHECK(open_fd_count() == fds);
    }
}

// ---------------------------------------------------------------------------
// Never destroy what is not a lock file.

namespace {

// Runs `body` in a forked child inside private UTS and mount-less namespaces
// (root only). Returns the child's exit code, or -1 when namespaces cannot be
// made here (then the caller reports the test as not run).
template <class F>
int in_private_uts(F body) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        if (::unshare(CLONE_NEWUTS) != 0) ::_exit(200);
        ::_exit(body());
    }
    int st = 0;
    while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    const int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return code == 200 ? -1 : code;
}

std::string current_hostname() {
    char h[HOST_NAME_MAX + 1] = {};
    ::gethostname(h, sizeof h);
    return std::string(h, ::strnlen(h, sizeof h));
}

}  // namespace

TEST_CASE("lock_file: content is never written to a file on a pseudo filesystem") {
    CHECK(filelock::detail::is_pseudo_filesystem(0x9fa0));       // proc
    CHECK(filelock::detail::is_pseudo_filesystem(0x62656572));   // sysfs
    CHECK(filelock::detail::is_pseudo_filesystem(0x63677270));   // cgroup2
    CHECK(!filelock::detail::is_pseudo_filesystem(0xef53));      // ext4
    CHECK(!filelock::detail::is_pseudo_filesystem(0x01021994));  // tmpfs
    // /proc/self/comm is writable by its process: a write renames the thread.
    const fs::path comm = "/proc/self/comm";
    const std::string before = read_file(comm);
    std::error_code ec;
    auto l = filelock::try_lock(comm, ec);
    CHECK(ec == errc::pseudo_file);
    CHECK(!l.is_locked());
    CHECK(read_file(comm) == before);
    try {
        lock_file thrown(comm);
        FAIL("no error");
    } catch (const fs::filesystem_error& e) {
        CHECK(e.code() == errc::pseudo_file);
        CHECK(e.path1() == comm);
    }
    auto timed = filelock::lock(comm, 5s, {}, ec);
    CHECK(ec == errc::pseudo_file);  // at once, never retried
    // A lock that writes nothing may use such a file.
    CHECK(simple_lock_file(comm).is_locked());
    CHECK(read_file(comm) == before);
}

TEST_CASE("lock_file: a /proc/sys setting is never changed (private UTS namespace, as root)") {
    const int code = in_private_uts([] {
        if (::sethostname("filelock-uts", 12) != 0) return 10;
        std::error_code ec;
        auto l = filelock::try_lock("/proc/sys/kernel/hostname", ec);
        if (ec != errc::pseudo_file || l.is_locked()) return 11;
        lock_options o;
        o.on_foreign_content = filelock::foreign_content::lock_without_content;
        l = filelock::try_lock("/proc/sys/kernel/hostname", o, ec);
        if (ec != errc::pseudo_file) return 12;
        return current_hostname() == "filelock-uts" ? 0 : 13;
    });
    if (code < 0) {
        WARN("NOT RUN: needs CAP_SYS_ADMIN for a private UTS namespace");
        return;
    }
    CHECK(code == 0);
}

TEST_CASE("lock_file: {hostname} takes a name of the full legal length (64)") {
    const std::string name64(HOST_NAME_MAX, 'h');
    REQUIRE(name64.size() == 64);
    {
        // Through the seam: gethostname as glibc's, which needs room for the
        // terminator.
        seam sm;
        sm.table().gethostname = [](char* out, size_t len) {
            const std::string n(HOST_NAME_MAX, 'h');
            if (len < n.size() + 1) return errno = ENAMETOOLONG, -1;
            std::memcpy(out, n.c_str(), n.size() + 1);
            return 0;
        };
        std::string out;
        CHECK(!filelock::detail::expand_content("{pid}@{hostname}", out));
        CHECK(out == " " + std::to_string(::getpid()) + "@" + name64 + "\n");
    }
    // For real, in a private UTS namespace.
    const int code = in_private_uts([&] {
        if (::sethostname(name64.c_str(), name64.size()) != 0) return 10;
        scratch s;
        lock_options o;
        o.content_template = "{hostname}";
        std::error_code ec;
        auto l = filelock::try_lock(s / "a.lock", o, ec);
        if (ec) return 11;
        return read_file(s / "a.lock") == " " + name64 + "\n" ? 0 : 12;
    });
    if (code < 0) {
        WARN("NOT RUN: needs CAP_SYS_ADMIN for a private UTS namespace");
        return;
    }
    CHECK(code == 0);
}

TEST_CASE("lock_file: only a lock holder's line counts as lock content") {
    using filelock::detail::is_holder_line;
    for (const char* ok : {"", "\n", " 1234\n", " 1234", " 1234@host\n", " ", " a b c\n"})
        CHECK(is_holder_line(ok));
    for (const std::string& bad :
         {std::string("1234\n"), std::string("#!/bin/sh\necho hi\n"), std::string(" 1\n 2\n"),
          std::string(" 1\n\n"), std::string(" a\0b", 4), std::string(" \r\n"),
          std::string(" \x1b[31m\n"), std::string(" a\tb\n"), " " + std::string(1100, 'x') + "\n"})
        CHECK(!is_holder_line(bad));
    CHECK(is_holder_line(" " + std::string(1022, 'x') + "\n"));
    // What a crash can leave of a holder's line: zeros.
    CHECK(is_holder_line(std::string(7, '\0')));
    CHECK(!is_holder_line(std::string(2000, '\0')));
    CHECK(!is_holder_line(std::string("\0\0x", 3)));
}

TEST_CASE("lock_file: a file holding foreign content is never overwritten") {
    scratch s;
    const auto p = s / "data";
    const std::vector<std::string> foreign = {
        "#!/bin/sh\n[ \"${FLOCKER}\" != \"$0\" ] && exec env FLOCKER=\"$0\" flock -en \"$0\" "
        "\"$0\" "
        "\"$@\"\necho work\n",
        "1234\n",  // a pid file of another program
        std::string("\x7f"
                    "ELF\x02\x01\x01\0\0\0",
                    10),
        " 12\n 34\n",
        "counter=41\n",
        std::string(1 << 20, 'd'),
    };
    for (const auto& content : foreign) {
        CAPTURE(content.substr(0, 20));
        write_file(p, content);
        // Counted once the release watcher an earlier test left lingering is
        // closed: its closing meanwhile would look like a descriptor lost.
        const int fds = settled_fd_count();
        std::error_code ec;
        auto l = filelock::try_lock(p, ec);
        CHECK(ec == errc::foreign_content);
        CHECK(!l.is_locked());
        CHECK(lock_is_free(p));
        CHECK(open_fd_count() == fds);
        CHECK_THROWS_AS(lock_file(p), fs::filesystem_error);
        l = filelock::lock(p, 10s, {}, ec);
        CHECK(ec == errc::foreign_content);  // at once: never retried until the timeout
        CHECK(read_file(p) == content);
        // Asked to, the lock is held without writing (flock(1)'s behaviour).
        lock_options keep;
        keep.on_foreign_content = filelock::foreign_content::lock_without_content;
        {
            lock_file held(p, keep);
            CHECK(held.is_locked());
            CHECK(!lock_is_free(p));
        }
        CHECK(read_file(p) == content);
        // Locks that write nothing never looked.
        CHECK(simple_lock_file(p).is_locked());
        CHECK(read_file(p) == content);
    }
}

TEST_CASE("lock_file: a lock holder's line, or an empty file, is overwritten as before") {
    scratch s;
    const auto p = s / "a.lock";
    for (const std::string& earlier : {std::string(), std::string("\n"), std::string(" 99\n"),
                                       std::string(" 1"), std::string(" 123456789@some-host\n")}) {
        CAPTURE(earlier);
        write_file(p, earlier);
        { lock_file l(p); }
        CHECK(read_file(p) == pid_content());
    }
}

TEST_CASE("lock_file: file_mode keeps the permission bits only") {
    scratch s;
    lock_options o;
    o.file_mode = 07777;
    const auto old = ::umask(0);
    { lock_file l(s / "a.lock", o); }
    ::umask(old);
    struct ::stat st {};
    REQUIRE(::stat((s / "a.lock").c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0777);
}

// ---------------------------------------------------------------------------
// The API as users write it.

namespace adl_check {
using namespace filelock;  // with <mutex> visible (support.hpp pulls it in through <thread>)

// Unqualified calls whose arguments would bring std::lock / std::try_lock in
// through argument-dependent lookup (std::filesystem::path, std::chrono,
// std::error_code arguments).
inline lock_file unqualified_lock(const std::filesystem::path& p, std::chrono::seconds t) {
    return lock(p, t);
}
inline lock_file unqualified_try_lock(std::error_code& ec) { return try_lock("adl.lock", ec); }
}  // namespace adl_check

TEST_CASE("api: unqualified lock() and try_lock() under `using namespace filelock` are ours") {
    static_assert(std::is_same_v<decltype(adl_check::unqualified_lock(fs::path(), 1s)), lock_file>);
    scratch s;
    const auto p = s / "a.lock";
    auto l = adl_check::unqualified_lock(p, 1s);
    CHECK(l.is_locked());
    CHECK(read_file(p) == pid_content());
}

TEST_CASE("api: lock_options is an aggregate: designated initializers") {
    static_assert(std::is_aggregate_v<lock_options>);
    static_assert(std::is_trivially_destructible_v<lock_options>);
    scratch s;
    const auto p = s / "a.lock";
    {
        auto l = filelock::lock(p, 1s, {.mode = filelock::lock_mode::shared});
        CHECK(l.is_locked());
        CHECK(read_file(p).empty());  // shared locks write nothing
    }
    {
        auto l = filelock::lock(p, 1s, {.content_template = "{pid}@{hostname}"});
        CHECK(read_file(p) == " " + std::to_string(::getpid()) + "@" + hostname() + "\n");
    }
    const std::string built = std::string("{pid}") + "-built";
    lock_options o{.content_template = built, .backoff = {.initial = 2ms}};
    CHECK(o.content_template.view() == "{pid}-built");
    CHECK(o.backoff.initial == 2ms);
    CHECK(o.backoff.cap == 100ms);  // the other defaults stay
}

TEST_CASE("api: a content template longer than template_string::max_size is rejected") {
    scratch s;
    const auto p = s / "a.lock";
    lock_options o;
    o.content_template = std::string(filelock::template_string::max_size + 1, 'x');
    CHECK(!o.content_template.fits());
    std::error_code ec;
    filelock::try_lock(p, o, ec);
    CHECK(ec == errc::invalid_template);
    CHECK(!fs::exists(p));
    o.content_template = std::string(filelock::template_string::max_size, 'x');
    CHECK(o.content_template.fits());
    auto l = filelock::try_lock(p, o, ec);
    CHECK(!ec);
    CHECK(read_file(p) == " " + std::string(filelock::template_string::max_size, 'x') + "\n");
}
