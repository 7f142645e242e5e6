// SPDX-License-Identifier: MIT
// libFuzzer target: reading a holder's content, from bytes and from a file.

#include "../../src/file/content.hpp"
#include <filelock/lock_file.hpp>

#include <cstdint>
#include <cstdlib>
#include <fcntl.h>
#include <string>
#include <unistd.h>

namespace {
bool space(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\0'; }

const std::string& scratch_file() {
    static const std::string path = [] {
        char tmpl[] = "/tmp/filelock-fuzz-XXXXXX";
        const int fd = ::mkstemp(tmpl);
        ::close(fd);
        return std::string(tmpl);
    }();
    return path;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view bytes(reinterpret_cast<const char*>(data), size);
    const std::string h = filelock::detail::holder_from_bytes(bytes);
    if (h.size() > 1024) std::abort();
    if (!h.empty() && (space(h.front()) || space(h.back()))) std::abort();
    if (bytes.substr(0, 1024).find(h) == std::string_view::npos) std::abort();

    // The same through a file: bounded read, same answer.
    const int fd = ::open(scratch_file().c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
    if (fd < 0) std::abort();
    if (size && ::write(fd, data, size) != static_cast<ssize_t>(size)) std::abort();
    ::close(fd);
    if (filelock::read_holder(scratch_file()) != h) std::abort();
    return 0;
}
