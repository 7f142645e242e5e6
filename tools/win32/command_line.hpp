// SPDX-License-Identifier: MIT
#pragma once

// A Windows command line from arguments: each one quoted so that
// CommandLineToArgvW (and the C runtime's argv) gives it back unchanged.

#include <string>

namespace cli {

/// Appends `arg` to `line`, quoted if it needs to be: spaces, tabs and
/// quotes inside quotes; backslashes doubled only before a quote.
inline void append_argument(std::wstring& line, const std::wstring& arg) {
    if (!line.empty()) line += L' ';
    if (!arg.empty() && arg.find_first_of(L" \t\n\v\"") == std::wstring::npos) {
        line += arg;
        return;
    }
    line += L'"';
    for (auto it = arg.begin();; ++it) {
        std::size_t backslashes = 0;
        while (it != arg.end() && *it == L'\\') ++it, ++backslashes;
        if (it == arg.end()) {
            line.append(backslashes * 2, L'\\');  // before the closing quote
            break;
        }
        if (*it == L'"') {
            line.append(backslashes * 2 + 1, L'\\');
        } else {
            line.append(backslashes, L'\\');
        }
        line += *it;
    }
    line += L'"';
}

}  // namespace cli
