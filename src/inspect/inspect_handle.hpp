// SPDX-License-Identifier: MIT
#pragma once

// inspect() through a handle the caller keeps open: filelock-run --watch
// wakes on the open and close events of the lock file, and its own looks
// must not be among them.

#include <filelock/detail/held_file.hpp>
#include <filelock/export.hpp>
#include <filelock/inspect.hpp>

namespace filelock::detail {

/// inspect(path, ec), the file being the one `h` has open (its identity;
/// its content read through `h`, without opening the path): no open or
/// close of the lock file. The queue file is the path's sibling. With
/// `h == no_handle`, inspect(path, ec) itself.
FILELOCK_API lock_status inspect_handle(const std::filesystem::path& path, native_handle_type h,
                                        std::error_code& ec) noexcept;

}  // namespace filelock::detail
