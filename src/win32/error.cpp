// SPDX-License-Identifier: MIT
// Windows error codes as std::error_code: the "win32" category, with the
// portable conditions (std::errc) that callers compare against.
#include "sys.hpp"

#include <string>

namespace filelock::detail {
namespace {

class win32_category final : public std::error_category {
public:
    const char* name() const noexcept override { return "win32"; }

    std::string message(int ev) const override {
        wchar_t* text = nullptr;
        const DWORD n = ::FormatMessageW(
            FORMAT_MESSAGE_ALLOCATE_BUFFER | FORMAT_MESSAGE_FROM_SYSTEM |
                FORMAT_MESSAGE_IGNORE_INSERTS,
            nullptr, static_cast<DWORD>(ev), 0, reinterpret_cast<wchar_t*>(&text), 0, nullptr);
        std::string out;
        if (n > 0 && text) {
            try {
                out = narrow(text, n);
            } catch (...) {
            }
        }
        if (text) ::LocalFree(text);
        while (!out.empty() &&
               (out.back() == '\n' || out.back() == '\r' || out.back() == ' ' || out.back() == '.'))
            out.pop_back();
        return out.empty() ? "Windows error " + std::to_string(ev) : out;
    }

    std::error_condition default_error_condition(int ev) const noexcept override {
        using std::errc;
        switch (static_cast<DWORD>(ev)) {
            case ERROR_FILE_NOT_FOUND:
            case ERROR_PATH_NOT_FOUND:
            case ERROR_INVALID_DRIVE:
            case ERROR_BAD_NETPATH:
            case ERROR_BAD_NET_NAME: return errc::no_such_file_or_directory;
            case ERROR_ACCESS_DENIED:
            case ERROR_CANNOT_MAKE:
            case ERROR_NETWORK_ACCESS_DENIED: return errc::permission_denied;
            case ERROR_LOCK_VIOLATION:
            case ERROR_SHARING_VIOLATION: return errc::resource_unavailable_try_again;
            case ERROR_INVALID_NAME:
            case ERROR_BAD_PATHNAME:
            case ERROR_INVALID_PARAMETER:
            case ERROR_DIRECTORY: return errc::invalid_argument;
            case ERROR_FILENAME_EXCED_RANGE: return errc::filename_too_long;
            case ERROR_DISK_FULL:
            case ERROR_HANDLE_DISK_FULL: return errc::no_space_on_device;
            case ERROR_WRITE_PROTECT: return errc::read_only_file_system;
            case ERROR_NOT_ENOUGH_MEMORY:
            case ERROR_OUTOFMEMORY: return errc::not_enough_memory;
            case ERROR_INVALID_HANDLE: return errc::bad_file_descriptor;
            case ERROR_NOT_SUPPORTED: return errc::not_supported;
            case ERROR_TOO_MANY_OPEN_FILES: return errc::too_many_files_open;
            case ERROR_CANT_RESOLVE_FILENAME: return errc::too_many_symbolic_link_levels;
            case ERROR_FILE_EXISTS:
            case ERROR_ALREADY_EXISTS: return errc::file_exists;
            case ERROR_DIR_NOT_EMPTY: return errc::directory_not_empty;
            case ERROR_CRC:
            case ERROR_READ_FAULT:
            case ERROR_WRITE_FAULT:
            case ERROR_GEN_FAILURE:
            case ERROR_IO_DEVICE: return errc::io_error;
            default: return {ev, *this};
        }
    }
};

}  // namespace

std::error_code win32_error(DWORD code) noexcept {
    static const win32_category category;
    return {static_cast<int>(code), category};
}

}  // namespace filelock::detail
