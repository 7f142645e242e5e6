// SPDX-License-Identifier: MIT
// What a lock file holds: the content template, a holder's line, the pseudo
// filesystems never written.
#include "content.hpp"

#include <filelock/error.hpp>

#include "../platform.hpp"

#include <charconv>
#include <string>

namespace filelock {
namespace detail {

std::error_code expand_content(std::string_view tmpl, std::string& out) {
    // The default template, expanded for every lock taken: its line written
    // directly, the same bytes as the general case below makes. The pid is
    // read at each expansion (a backend built in a forked child has the
    // child's).
    if (tmpl == "{pid}") {
        char line[24] = " ";
        char* end = std::to_chars(line + 1, line + sizeof line - 1, current_pid()).ptr;
        *end++ = '\n';
        out.assign(line, end);
        return {};
    }
    std::string result = " ";
    for (std::size_t i = 0; i < tmpl.size(); ++i) {
        const char c = tmpl[i];
        if (c == '}') {
            if (i + 1 < tmpl.size() && tmpl[i + 1] == '}') {
                result += '}';
                ++i;
                continue;
            }
            return errc::invalid_template;  // a lone '}'
        }
        if (c != '{') {
            result += c;
            continue;
        }
        if (i + 1 < tmpl.size() && tmpl[i + 1] == '{') {
            result += '{';
            ++i;
            continue;
        }
        const auto close = tmpl.find('}', i + 1);
        if (close == std::string_view::npos) return errc::invalid_template;
        const auto field = tmpl.substr(i + 1, close - i - 1);
        if (field == "pid") {
            result += std::to_string(current_pid());
        } else if (field == "hostname") {
            if (auto ec = append_hostname(result)) return ec;
        } else {
            return errc::invalid_template;
        }
        i = close;
    }
    result += '\n';
    // A line that no holder could take for a holder's (control bytes, more
    // than max_holder_bytes) would make every later lock that writes one
    // fail on this file (errc::foreign_content): never written.
    if (!is_holder_line(result)) return errc::invalid_template;
    out = std::move(result);
    return {};
}

bool is_holder_line(std::string_view bytes) noexcept {
    if (bytes.empty()) return true;
    if (bytes.size() > max_holder_bytes) return false;
    // Zeros only: what a crash can leave of an unsynced holder's line on
    // some filesystems. Nothing to keep.
    if (bytes.find_first_not_of('\0') == std::string_view::npos) return true;
    if (bytes.back() == '\n') bytes.remove_suffix(1);
    if (bytes.empty()) return true;  // a lone newline
    if (bytes.front() != ' ') return false;
    for (const char ch : bytes) {
        const auto c = static_cast<unsigned char>(ch);
        if (c < 0x20 || c == 0x7f) return false;  // newlines, NUL, other control bytes
    }
    return true;
}

bool is_pseudo_filesystem(long magic) noexcept {
    // <linux/magic.h>; spelled out so that the list does not depend on the
    // kernel headers' age.
    switch (static_cast<unsigned long>(magic) & 0xffffffffUL) {
        case 0x9fa0UL:      // proc
        case 0x62656572UL:  // sysfs
        case 0x27e0ebUL:    // cgroup
        case 0x63677270UL:  // cgroup2
        case 0x64626720UL:  // debugfs
        case 0x74726163UL:  // tracefs
        case 0x73636673UL:  // securityfs
        case 0x62656570UL:  // configfs
        case 0xcafe4a11UL:  // bpf
        case 0x6165676cUL:  // pstore
        case 0xde5e81e4UL:  // efivarfs
        case 0xf97cff8cUL:  // selinuxfs
        case 0x43415d53UL:  // smackfs
        case 0x42494e4dUL:  // binfmt_misc
        case 0x65735543UL:  // fusectl
        case 0x6e736673UL:  // nsfs
        case 0x19800202UL:  // mqueue
        case 0x1cd1UL:      // devpts
        case 0x67596969UL:  // rpc_pipefs
        case 0x6e667364UL:  // nfsd (writing /proc/fs/nfsd/threads sets the thread count)
        case 0x07655821UL:  // resctrl
        case 0xabba1974UL:  // xenfs
        case 0x9fa1UL:      // openprom
        case 0x57ac6e9dUL:  // stack_end (never a file, listed for completeness)
            return true;
        default: return false;
    }
}

std::string holder_from_bytes(std::string_view bytes) {
    bytes = bytes.substr(0, max_holder_bytes);
    const auto space = [](char c) {
        return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\0';
    };
    while (!bytes.empty() && space(bytes.front())) bytes.remove_prefix(1);
    while (!bytes.empty() && space(bytes.back())) bytes.remove_suffix(1);
    return std::string(bytes);
}

}  // namespace detail
}  // namespace filelock
