// SPDX-License-Identifier: MIT
// The file backend's seam on Windows: LockFileEx on byte 0 of the lock file
// (the byte zc.lockfile and py-filelock lock with msvcrt.locking), file
// identity from GetFileInformationByHandle, ReadFile/WriteFile at offsets,
// through the table of system calls (src/win32/sys.hpp). Byte 0 is locked,
// so others read a holder's line from offset 1: the leading space of
// " {pid}\n" is what they cannot read. Also the machine's name.
#include "../ops.hpp"

#include "../../win32/sys.hpp"

namespace filelock::detail {
namespace file {
namespace {

constexpr DWORD share_all = FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE;

HANDLE handle_of(native_handle_type h) noexcept { return static_cast<HANDLE>(h); }

failure win32_failure(const char* call, DWORD err = ::GetLastError()) noexcept {
    return {win32_error(err), call};
}

OVERLAPPED at_offset(std::uint64_t offset) noexcept {
    OVERLAPPED o{};
    o.Offset = static_cast<DWORD>(offset & 0xffffffffULL);
    o.OffsetHigh = static_cast<DWORD>(offset >> 32);
    return o;
}

DWORD low(std::uint64_t n) noexcept { return static_cast<DWORD>(n & 0xffffffffULL); }
DWORD high(std::uint64_t n) noexcept { return static_cast<DWORD>(n >> 32); }

// Devices, pipes and directories are refused when opened: what a handle
// names here is a regular file.
file_info info_of(const BY_HANDLE_FILE_INFORMATION& i) noexcept {
    file_info f;
    f.dev = i.dwVolumeSerialNumber;
    f.ino = (static_cast<unsigned long long>(i.nFileIndexHigh) << 32) | i.nFileIndexLow;
    f.size = (static_cast<std::uint64_t>(i.nFileSizeHigh) << 32) | i.nFileSizeLow;
    return f;
}

// Opens what `path` names now for its identity alone (no data access: works
// while others lock it).
HANDLE open_for_identity(const std::filesystem::path& path, bool nofollow) noexcept {
    return sys().create_file(
        path.c_str(), FILE_READ_ATTRIBUTES, share_all, OPEN_EXISTING,
        FILE_FLAG_BACKUP_SEMANTICS | (nofollow ? FILE_FLAG_OPEN_REPARSE_POINT : 0));
}

class win32_ops final : public ops {
public:
    std::uint64_t holder_offset() const noexcept override { return 1; }

    failure supports(const lock_spec& s) const noexcept override {
        // Open file description locks (and with them byte ranges) are Linux's.
        if (s.ofd) return {errc::unsupported, "LockFileEx"};
        return {};
    }

    failure open(const std::filesystem::path& path, const open_spec& o,
                 native_handle_type& out) const noexcept override {
        out = no_handle;
        // OPEN_ALWAYS: created if missing, never truncated. Every sharing
        // mode: others open, read, write and delete while we hold (the lock,
        // not the sharing mode, is what excludes).
        const DWORD access = o.writable ? GENERIC_READ | GENERIC_WRITE : GENERIC_READ;
        const DWORD flags = FILE_ATTRIBUTE_NORMAL | (o.nofollow ? FILE_FLAG_OPEN_REPARSE_POINT : 0);
        const HANDLE h = sys().create_file(path.c_str(), access, share_all, OPEN_ALWAYS, flags);
        if (h == INVALID_HANDLE_VALUE) {
            const DWORD err = ::GetLastError();
            // A process that opened the file without sharing it (rare:
            // Python's open() shares reading and writing) holds it as a lock
            // would.
            if (err == ERROR_SHARING_VIOLATION) return {errc::locked};
            if (err == ERROR_ACCESS_DENIED) {
                const DWORD attrs = sys().get_file_attributes(path.c_str());
                if (attrs != INVALID_FILE_ATTRIBUTES && (attrs & FILE_ATTRIBUTE_DIRECTORY))
                    return {std::make_error_code(std::errc::is_a_directory), "CreateFileW"};
            }
            return win32_failure("CreateFileW", err);
        }
        if (sys().get_file_type(h) != FILE_TYPE_DISK) {  // a device, a pipe, a console
            sys().close_handle(h);
            return {errc::not_a_regular_file, "GetFileType"};
        }
        if (o.nofollow) {
            BY_HANDLE_FILE_INFORMATION info{};
            if (!sys().get_file_information(h, &info)) {
                const DWORD err = ::GetLastError();
                sys().close_handle(h);
                return win32_failure("GetFileInformationByHandle", err);
            }
            if (info.dwFileAttributes & FILE_ATTRIBUTE_REPARSE_POINT) {  // a symbolic link
                sys().close_handle(h);
                return {errc::symlink_not_followed, "CreateFileW"};
            }
        }
        out = h;
        return {};
    }

    failure open_to_read(const std::filesystem::path& path,
                         native_handle_type& out) const noexcept override {
        out = no_handle;
        const HANDLE h = sys().create_file(path.c_str(), GENERIC_READ, share_all, OPEN_EXISTING,
                                           FILE_ATTRIBUTE_NORMAL);
        if (h == INVALID_HANDLE_VALUE) return win32_failure("CreateFileW");
        if (sys().get_file_type(h) != FILE_TYPE_DISK) {
            sys().close_handle(h);
            return {errc::not_a_regular_file, "GetFileType"};
        }
        out = h;
        return {};
    }

    failure try_lock(native_handle_type h, const lock_spec& s) const noexcept override {
        // The whole-file lock is byte 0's; a range (a slot's byte) is its own.
        const byte_range r = s.ofd ? s.range : byte_range{0, 1};
        OVERLAPPED o = at_offset(r.start);
        const DWORD flags = LOCKFILE_FAIL_IMMEDIATELY | (s.shared ? 0 : LOCKFILE_EXCLUSIVE_LOCK);
        if (sys().lock_file_ex(handle_of(h), flags, low(r.length), high(r.length), &o)) return {};
        const DWORD err = ::GetLastError();
        if (err == ERROR_LOCK_VIOLATION || err == ERROR_IO_PENDING) return {errc::locked};
        return win32_failure("LockFileEx", err);
    }

    failure info(native_handle_type h, file_info& out) const noexcept override {
        BY_HANDLE_FILE_INFORMATION i{};
        if (!sys().get_file_information(handle_of(h), &i))
            return win32_failure("GetFileInformationByHandle");
        out = info_of(i);
        return {};
    }

    failure info_at(const std::filesystem::path& path, bool nofollow,
                    file_info& out) const noexcept override {
        const HANDLE named = open_for_identity(path, nofollow);
        if (named == INVALID_HANDLE_VALUE) {
            const DWORD err = ::GetLastError();
            failure f = win32_failure("CreateFileW", err);
            // Deleted: gone, or still pending deletion while handles stay open.
            f.gone = err == ERROR_FILE_NOT_FOUND || err == ERROR_ACCESS_DENIED;
            return f;
        }
        BY_HANDLE_FILE_INFORMATION i{};
        const BOOL ok = sys().get_file_information(named, &i);
        const DWORD err = ok ? 0 : ::GetLastError();
        sys().close_handle(named);
        if (!ok) return win32_failure("GetFileInformationByHandle", err);
        out = info_of(i);
        return {};
    }

    failure not_regular(file_type) const noexcept override {
        return {errc::not_a_regular_file, "GetFileType"};
    }

    failure fs_type(native_handle_type, const file_info&, long& magic) const noexcept override {
        magic = 0;  // no pseudo filesystems
        return {};
    }

    failure read_at(native_handle_type h, char* buf, std::size_t size, std::uint64_t offset,
                    std::size_t& n) const noexcept override {
        OVERLAPPED o = at_offset(offset);
        DWORD done = 0;
        n = 0;
        if (!sys().read_file(handle_of(h), buf, static_cast<DWORD>(size), &done, &o)) {
            const DWORD err = ::GetLastError();
            return err == ERROR_HANDLE_EOF ? failure{} : win32_failure("ReadFile", err);
        }
        n = done;
        return {};
    }

    failure truncate(native_handle_type h, std::uint64_t size) const noexcept override {
        if (!sys().set_end_of_file(handle_of(h), static_cast<LONGLONG>(size)))
            return win32_failure("SetEndOfFile");
        return {};
    }

    failure write_at(native_handle_type h, const char* buf, std::size_t size, std::uint64_t offset,
                     std::size_t& n) const noexcept override {
        OVERLAPPED o = at_offset(offset);
        DWORD done = 0;
        const BOOL ok = sys().write_file(handle_of(h), buf, static_cast<DWORD>(size), &done, &o);
        n = done;
        if (ok && done > 0) return {};
        const DWORD err = ::GetLastError();
        return win32_failure("WriteFile", done == 0 && err == 0 ? ERROR_WRITE_FAULT : err);
    }

    void remove(const std::filesystem::path& path) const noexcept override {
        sys().delete_file(path.c_str());
    }

    void unlock(native_handle_type h, const lock_spec& s) const noexcept override {
        const byte_range r = s.ofd ? s.range : byte_range{0, 1};
        OVERLAPPED o = at_offset(r.start);
        (void)sys().unlock_file_ex(handle_of(h), low(r.length), high(r.length), &o);
    }

    std::string flock_holders(const file_info&) const noexcept override {
        return {};  // Windows lists no lock holders
    }

    void unlock_close(native_handle_type h, const lock_spec& s) const noexcept override {
        unlock(h, s);
        close(h);
    }

    void close(native_handle_type h) const noexcept override { sys().close_handle(handle_of(h)); }
};

}  // namespace

const ops& platform_ops() noexcept {
    static const win32_ops os;
    return os;
}

}  // namespace file

std::error_code append_hostname(std::string& out) {
    wchar_t name[256] = {};
    DWORD size = 256;
    if (!sys().get_computer_name(name, &size)) return win32_error(::GetLastError());
    out += narrow(name, size);
    return {};
}

}  // namespace filelock::detail
