// SPDX-License-Identifier: MIT
#pragma once

// The Windows side of the platform seam (src/platform.hpp): the one table
// through which every system call of the lock primitive goes, so that tests
// inject failures (SetLastError, then fail) as they do with errno on POSIX.
// Entries are our own functions (the API's calling convention stays inside
// src/win32/sys.cpp).

#include <filelock/export.hpp>

#include "../platform.hpp"
#include "../sys_entry.hpp"

#include <windows.h>

#include <system_error>

namespace filelock::detail {

struct sys_table {
    sys_entry<HANDLE(const wchar_t* path, DWORD access, DWORD share, DWORD disposition,
                     DWORD flags)>
        create_file;
    sys_entry<BOOL(HANDLE h, DWORD flags, DWORD bytes_low, DWORD bytes_high, OVERLAPPED* at)>
        lock_file_ex;
    sys_entry<BOOL(HANDLE h, DWORD bytes_low, DWORD bytes_high, OVERLAPPED* at)> unlock_file_ex;
    sys_entry<BOOL(HANDLE h, const void* buf, DWORD n, DWORD* done, OVERLAPPED* at)> write_file;
    sys_entry<BOOL(HANDLE h, void* buf, DWORD n, DWORD* done, OVERLAPPED* at)> read_file;
    sys_entry<BOOL(HANDLE h, LONGLONG size)> set_end_of_file;  // SetFilePointerEx + SetEndOfFile
    sys_entry<BOOL(HANDLE h, BY_HANDLE_FILE_INFORMATION* info)> get_file_information;
    sys_entry<DWORD(HANDLE h)> get_file_type;
    sys_entry<BOOL(HANDLE h)> close_handle;
    sys_entry<BOOL(const wchar_t* path)> delete_file;
    sys_entry<DWORD(const wchar_t* path)> get_file_attributes;
    sys_entry<BOOL(wchar_t* name, DWORD* size)> get_computer_name;
};

/// The table in use. Tests replace entries and restore them.
FILELOCK_API sys_table& sys() noexcept;
/// The API's functions.
FILELOCK_API const sys_table& default_sys() noexcept;

/// A Windows error code (GetLastError()) as an error_code of the "win32"
/// category, whose conditions are the std::errc ones (ERROR_ACCESS_DENIED ==
/// std::errc::permission_denied, ERROR_PATH_NOT_FOUND ==
/// std::errc::no_such_file_or_directory, ...).
FILELOCK_API std::error_code win32_error(DWORD code) noexcept;

/// UTF-16 to UTF-8.
std::string narrow(const wchar_t* s, std::size_t n);

}  // namespace filelock::detail
