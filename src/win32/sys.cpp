// SPDX-License-Identifier: MIT
// The Windows system-call table, the process id, and no fork().
#include "sys.hpp"

namespace filelock::detail {
namespace {

HANDLE sys_create_file(const wchar_t* path, DWORD access, DWORD share, DWORD disposition,
                       DWORD flags) {
    // No security attributes: the handle is not inherited by child
    // processes (the equivalent of O_CLOEXEC).
    return ::CreateFileW(path, access, share, nullptr, disposition, flags, nullptr);
}
BOOL sys_lock_file_ex(HANDLE h, DWORD flags, DWORD low, DWORD high, OVERLAPPED* at) {
    return ::LockFileEx(h, flags, 0, low, high, at);
}
BOOL sys_unlock_file_ex(HANDLE h, DWORD low, DWORD high, OVERLAPPED* at) {
    return ::UnlockFileEx(h, 0, low, high, at);
}
BOOL sys_write_file(HANDLE h, const void* buf, DWORD n, DWORD* done, OVERLAPPED* at) {
    return ::WriteFile(h, buf, n, done, at);
}
BOOL sys_read_file(HANDLE h, void* buf, DWORD n, DWORD* done, OVERLAPPED* at) {
    return ::ReadFile(h, buf, n, done, at);
}
BOOL sys_set_end_of_file(HANDLE h, LONGLONG size) {
    LARGE_INTEGER at;
    at.QuadPart = size;
    return ::SetFilePointerEx(h, at, nullptr, FILE_BEGIN) && ::SetEndOfFile(h);
}
BOOL sys_get_file_information(HANDLE h, BY_HANDLE_FILE_INFORMATION* info) {
    return ::GetFileInformationByHandle(h, info);
}
DWORD sys_get_file_type(HANDLE h) { return ::GetFileType(h); }
BOOL sys_close_handle(HANDLE h) { return ::CloseHandle(h); }
BOOL sys_delete_file(const wchar_t* path) { return ::DeleteFileW(path); }
DWORD sys_get_file_attributes(const wchar_t* path) { return ::GetFileAttributesW(path); }
BOOL sys_get_computer_name(wchar_t* name, DWORD* size) {
    return ::GetComputerNameExW(ComputerNameDnsHostname, name, size);
}

constexpr sys_table api() {
    return {
        .create_file = sys_create_file,
        .lock_file_ex = sys_lock_file_ex,
        .unlock_file_ex = sys_unlock_file_ex,
        .write_file = sys_write_file,
        .read_file = sys_read_file,
        .set_end_of_file = sys_set_end_of_file,
        .get_file_information = sys_get_file_information,
        .get_file_type = sys_get_file_type,
        .close_handle = sys_close_handle,
        .delete_file = sys_delete_file,
        .get_file_attributes = sys_get_file_attributes,
        .get_computer_name = sys_get_computer_name,
    };
}

constinit sys_table table = api();
const sys_table api_table = api();

}  // namespace

sys_table& sys() noexcept { return table; }
const sys_table& default_sys() noexcept { return api_table; }

long long current_pid() noexcept { return static_cast<long long>(::GetCurrentProcessId()); }

// No fork(): every handle is private to this process.
unsigned fork_generation() noexcept { return 0; }
void at_fork(void (*)(), void (*)(), void (*)()) noexcept {}
fork_stamp fork_stamp::now() noexcept { return {}; }
bool fork_stamp::is_private() const noexcept { return true; }
bool fork_stamp::inherited() const noexcept { return false; }
std::unique_lock<std::mutex> fork_closed_lock() noexcept { return {}; }
bool fork_closed_add(native_handle_type) noexcept { return false; }
void fork_closed_remove(native_handle_type) noexcept {}

std::string narrow(const wchar_t* s, std::size_t n) {
    if (n == 0) return {};
    const int len =
        ::WideCharToMultiByte(CP_UTF8, 0, s, static_cast<int>(n), nullptr, 0, nullptr, nullptr);
    std::string out(static_cast<std::size_t>(len > 0 ? len : 0), '\0');
    if (len > 0)
        ::WideCharToMultiByte(CP_UTF8, 0, s, static_cast<int>(n), out.data(), len, nullptr,
                              nullptr);
    return out;
}

}  // namespace filelock::detail
