// SPDX-License-Identifier: MIT
// libFuzzer target: the content-template parser.

#include "../../src/file/content.hpp"
#include <filelock/error.hpp>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view tmpl(reinterpret_cast<const char*>(data), size);
    std::string out = "untouched";
    const auto ec = filelock::detail::expand_content(tmpl, out);
    if (ec) {
        if (out != "untouched") std::abort();  // a failed expansion writes nothing
        if (ec != filelock::errc::invalid_template) std::abort();
        return 0;
    }
    if (out.size() < 2 || out.front() != ' ' || out.back() != '\n') std::abort();
    // Only a line that reads as a holder's is ever written.
    if (!filelock::detail::is_holder_line(out)) std::abort();
    // Without braces the template is copied as it is.
    if (tmpl.find_first_of("{}") == std::string_view::npos && out != " " + std::string(tmpl) + "\n")
        std::abort();
    return 0;
}
