// SPDX-License-Identifier: MIT
// The Windows primitive through its system-call seam (src/win32/sys.hpp):
// every failing call is reported as itself, with the path and the call,
// never as contention, and leaves nothing held or open.
#include <filelock/lock_file.hpp>

#include "../src/win32/sys.hpp"
#include "portable.hpp"

using namespace portable;
using filelock::errc;
using filelock::lock_file;
namespace d = filelock::detail;

namespace {

// Replaces one entry of the table for the scope; restores the whole table.
struct inject {
    inject() : saved(d::sys()) {}
    ~inject() { d::sys() = saved; }
    d::sys_table saved;
};

std::atomic<DWORD> failure{0};

template <class R>
R fail_with() {
    ::SetLastError(failure.load());
    if constexpr (std::is_same_v<R, HANDLE>)
        return INVALID_HANDLE_VALUE;
    else
        return 0;
}

}  // namespace

TEST_CASE("win32: byte 0 is locked, as zc.lockfile locks it; the holder is read from offset 1") {
    scratch s;
    const auto p = s / "a.lock";
    lock_file l(p);
    const HANDLE h = ::CreateFileW(p.c_str(), GENERIC_READ, FILE_SHARE_READ | FILE_SHARE_WRITE,
                                   nullptr, OPEN_EXISTING, 0, nullptr);
    REQUIRE(h != INVALID_HANDLE_VALUE);
    // What zc.lockfile's msvcrt.locking(fd, LK_NBLCK, 1) does: byte 0, held.
    OVERLAPPED at0{};
    CHECK(!::LockFileEx(h, LOCKFILE_EXCLUSIVE_LOCK | LOCKFILE_FAIL_IMMEDIATELY, 0, 1, 0, &at0));
    CHECK(::GetLastError() == ERROR_LOCK_VIOLATION);
    DWORD n = 0;
    OVERLAPPED at1{};
    at1.Offset = 1;
    char buf[32] = {};
    CHECK(::ReadFile(h, buf, sizeof buf, &n, &at1));
    CHECK(std::string(buf, n) == std::to_string(this_pid()) + "\n");
    ::CloseHandle(h);
    CHECK(filelock::read_holder(p) == std::to_string(this_pid()));
}

TEST_CASE("win32: the handle is not inheritable") {
    scratch s;
    lock_file l(s / "a.lock");
    DWORD flags = 0;
    REQUIRE(::GetHandleInformation(static_cast<HANDLE>(l.native_handle()), &flags));
    CHECK((flags & HANDLE_FLAG_INHERIT) == 0);
}

TEST_CASE("win32: ofd is errc::unsupported, naming the path") {
    scratch s;
    filelock::lock_options o;
    o.backend = filelock::lock_backend::ofd;
    std::error_code ec;
    auto l = filelock::try_lock(s / "a.lock", o, ec);
    CHECK(ec == errc::unsupported);
    CHECK(ec == std::errc::operation_not_supported);
    try {
        lock_file x(s / "a.lock", o);
        FAIL("ofd accepted");
    } catch (const std::filesystem::filesystem_error& e) {
        CHECK(std::string(e.what()).find("a.lock") != std::string::npos);
    }
}

TEST_CASE("win32: a device is not a regular file") {
    std::error_code ec;
    auto l = filelock::try_lock("NUL", ec);
    CHECK(ec == errc::not_a_regular_file);
}

TEST_CASE("win32: every failing call is itself, with the path and the call, and leaks nothing") {
    scratch s;
    const auto p = s / "a.lock";
    struct row {
        const char* call;
        DWORD error;
        std::errc cond;
        void (*arm)(d::sys_table&);
    };
    const row rows[] = {
        {"CreateFileW", ERROR_ACCESS_DENIED, std::errc::permission_denied,
         [](d::sys_table& t) {
             t.create_file = [](const wchar_t*, DWORD, DWORD, DWORD, DWORD) {
                 return fail_with<HANDLE>();
             };
         }},
        {"LockFileEx", ERROR_NOT_ENOUGH_MEMORY, std::errc::not_enough_memory,
         [](d::sys_table& t) {
             t.lock_file_ex = [](HANDLE, DWORD, DWORD, DWORD, OVERLAPPED*) {
                 return fail_with<BOOL>();
             };
         }},
        {"GetFileInformationByHandle", ERROR_INVALID_HANDLE, std::errc::bad_file_descriptor,
         [](d::sys_table& t) {
             t.get_file_information = [](HANDLE, BY_HANDLE_FILE_INFORMATION*) {
                 return fail_with<BOOL>();
             };
         }},
        {"ReadFile", ERROR_CRC, std::errc::io_error,
         [](d::sys_table& t) {
             t.read_file = [](HANDLE, void*, DWORD, DWORD*, OVERLAPPED*) {
                 return fail_with<BOOL>();
             };
         }},
        {"SetEndOfFile", ERROR_DISK_FULL, std::errc::no_space_on_device,
         [](d::sys_table& t) {
             t.set_end_of_file = [](HANDLE, LONGLONG) { return fail_with<BOOL>(); };
         }},
        {"WriteFile", ERROR_HANDLE_DISK_FULL, std::errc::no_space_on_device,
         [](d::sys_table& t) {
             t.write_file = [](HANDLE, const void*, DWORD, DWORD*, OVERLAPPED*) {
                 return fail_with<BOOL>();
             };
         }},
    };
    for (const auto& r : rows) {
        INFO(r.call);
        // A longer holder's line than ours, so every call runs.
        write_file(p, " 123456789012345678901234567890\n");
        std::error_code ec;
        {
            inject guard;
            failure = r.error;
            r.arm(d::sys());
            auto l = filelock::try_lock(p, ec);
            CHECK(!l.is_locked());
            try {
                lock_file x(p);
                FAIL("locked through a failing call");
            } catch (const std::filesystem::filesystem_error& e) {
                CHECK(e.code() == r.cond);
                CHECK(std::string(e.what()).find(r.call) != std::string::npos);
                CHECK(e.path1() == p);
            }
        }
        CHECK(ec.value() == static_cast<int>(r.error));
        CHECK(ec == r.cond);
        CHECK(ec != errc::locked);
        CHECK(nothing_open_on(p));
        // Nothing held: the lock is free.
        std::error_code free_ec;
        auto free = filelock::try_lock(p, free_ec);
        CHECK(!free_ec);
    }
    // A sharing violation on open is contention, as a lock is.
    {
        inject guard;
        failure = ERROR_SHARING_VIOLATION;
        d::sys().create_file = [](const wchar_t*, DWORD, DWORD, DWORD, DWORD) {
            return fail_with<HANDLE>();
        };
        std::error_code ec;
        auto l = filelock::try_lock(p, ec);
        CHECK(ec == errc::locked);
    }
}

TEST_CASE("win32: a reparse point at the last component is refused for writing locks") {
    // Wine cannot make symbolic links: the seam reports the attribute that
    // a link opened with FILE_FLAG_OPEN_REPARSE_POINT has.
    scratch s;
    const auto p = s / "a.lock";
    static std::atomic<bool> reparse_opened{false};
    inject guard;
    d::sys().create_file = [](const wchar_t* path, DWORD access, DWORD share, DWORD disposition,
                              DWORD flags) {
        if (flags & FILE_FLAG_OPEN_REPARSE_POINT) reparse_opened = true;
        return d::default_sys().create_file(path, access, share, disposition, flags);
    };
    d::sys().get_file_information = [](HANDLE h, BY_HANDLE_FILE_INFORMATION* info) {
        const BOOL ok = d::default_sys().get_file_information(h, info);
        info->dwFileAttributes |= FILE_ATTRIBUTE_REPARSE_POINT;
        return ok;
    };
    std::error_code ec;
    auto l = filelock::try_lock(p, ec);
    CHECK(ec == errc::symlink_not_followed);
    CHECK(reparse_opened);
    CHECK(read_file(p).empty());  // nothing written
    CHECK(nothing_open_on(p));
    filelock::lock_options follow;
    follow.follow_symlinks = true;
    reparse_opened = false;
    l = filelock::try_lock(p, follow, ec);
    CHECK(!ec);
    CHECK(!reparse_opened);
    CHECK(read_file(p) == " " + std::to_string(this_pid()) + "\n");
    l.close();
    filelock::simple_lock_file simple(p);  // writes nothing: follows links
    CHECK(simple.is_locked());
}
