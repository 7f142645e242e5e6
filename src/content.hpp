// SPDX-License-Identifier: MIT
#pragma once

// Internal helpers shared by the primitive and the facade.

#include <cstddef>
#include <filesystem>
#include <string>

namespace filelock::detail {

/// The most of a holder's content ever read.
inline constexpr std::size_t max_holder_bytes = 1024;

/// The holder's content read through `fd` (bounded), or "".
std::string read_holder_fd(int fd) noexcept;
/// The holder's content of the file at `path`, or "" (filelock::read_holder).
std::string read_holder_at(const std::filesystem::path& path) noexcept;

}  // namespace filelock::detail
