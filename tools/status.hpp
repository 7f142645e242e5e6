// SPDX-License-Identifier: MIT
#pragma once

// filelock-run --status [--json] FILE (status.cpp).

#include "cli.hpp"

namespace cli {

/// Prints who holds and who waits for cl.target; returns 0 (free),
/// cl.conflict_code (held) or ex_noinput (cannot be inspected).
int status_form(const command_line& cl);

}  // namespace cli
