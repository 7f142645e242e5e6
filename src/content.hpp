// SPDX-License-Identifier: MIT
#pragma once

// Internal helpers shared by the primitive and the facade.

#include <cstddef>

namespace filelock::detail {

/// The most of a holder's content ever read.
inline constexpr std::size_t max_holder_bytes = 1024;

}  // namespace filelock::detail
