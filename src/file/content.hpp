// SPDX-License-Identifier: MIT
#pragma once

// What a lock file holds: the content template, a holder's line, and the
// pseudo filesystems never written. Not in the installed headers; exported
// for the library's other parts (etcd, filelock-run) and its tests.

#include <filelock/export.hpp>

#include <cstddef>
#include <string>
#include <string_view>
#include <system_error>

namespace filelock::detail {

/// The most of a holder's content ever read.
inline constexpr std::size_t max_holder_bytes = 1024;

/// Expands a content template into `out` (" " + expansion + "\n").
FILELOCK_API std::error_code expand_content(std::string_view tmpl, std::string& out);

/// Strips what a holder wrote down to its content ("1234" from " 1234\n").
FILELOCK_API std::string holder_from_bytes(std::string_view bytes);

/// Whether `bytes` is what a lock holder writes (see foreign_content): empty,
/// at most 1 KiB of one line that starts with a space, with no control
/// character but one final newline, or at most 1 KiB of zero bytes (what a
/// crash can leave of such a line).
FILELOCK_API bool is_holder_line(std::string_view bytes) noexcept;

/// Whether the filesystem type `magic` (statfs f_type) is a pseudo
/// filesystem whose files must never be written as lock files.
FILELOCK_API bool is_pseudo_filesystem(long magic) noexcept;

}  // namespace filelock::detail
