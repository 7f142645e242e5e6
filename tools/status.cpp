// SPDX-License-Identifier: MIT
// filelock-run --status [--json] FILE: who holds the lock and who waits
// (filelock::inspect), as a short table or as JSON. Exits 0 when the lock is
// free, 1 when it is held, 66 when the file cannot be inspected.
#include "status.hpp"

#include <filelock/inspect.hpp>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <string>
#include <string_view>

namespace cli {
namespace {

const char* kind_name(filelock::lock_kind k) {
    switch (k) {
        case filelock::lock_kind::exclusive: return "exclusive";
        case filelock::lock_kind::shared: return "shared";
        case filelock::lock_kind::slot: return "slot";
    }
    return "?";
}

const char* api_name(filelock::lock_api a) {
    switch (a) {
        case filelock::lock_api::flock: return "flock";
        case filelock::lock_api::ofd: return "ofd";
        case filelock::lock_api::posix: return "posix";
        case filelock::lock_api::unknown: break;
    }
    return "unknown";
}

std::string json_string(const std::string& s) {
    std::string out = "\"";
    for (const unsigned char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += static_cast<char>(c);
        } else if (c < 0x20 || c == 0x7f) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            out += buf;
        } else {
            out += static_cast<char>(c);  // UTF-8 passes through
        }
    }
    return out + "\"";
}

std::string iso_time(std::chrono::system_clock::time_point t) {
    const std::time_t tt = std::chrono::system_clock::to_time_t(t);
    std::tm tm{};
#if defined(_WIN32)
    gmtime_s(&tm, &tt);
#else
    gmtime_r(&tt, &tm);
#endif
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

std::string json_party(const filelock::lock_party& p) {
    std::string s = "{\"pid\":" + std::to_string(p.pid);
    s += ",\"host\":" + (p.host.empty() ? std::string("null") : json_string(p.host));
    s += ",\"mode\":\"" + std::string(kind_name(p.kind)) + "\"";
    s += ",\"lock\":\"" + std::string(api_name(p.api)) + "\"";
    if (p.kind == filelock::lock_kind::slot)
        s += ",\"start\":" + std::to_string(p.start) + ",\"length\":" + std::to_string(p.length);
    s += ",\"since\":" + (p.since ? "\"" + iso_time(*p.since) + "\"" : std::string("null"));
    s += ",\"content\":" + (p.content.empty() ? std::string("null") : json_string(p.content));
    s += ",\"verified\":" + std::string(p.verified ? "true" : "false");
    if (p.ticket) s += ",\"queue_position\":" + std::to_string(p.ticket);
    return s + "}";
}

std::string pid_text(long long pid) { return pid > 0 ? std::to_string(pid) : "?"; }

void print_row(const char* role, const filelock::lock_party& p) {
    std::string what = kind_name(p.kind);
    if (p.kind == filelock::lock_kind::slot)
        what.append(" ")
            .append(std::to_string(p.start))
            .append("+")
            .append(p.length ? std::to_string(p.length) : std::string("EOF"));
    // Appended, not `"literal" + string`: g++ 12 at -O3 reports a false
    // -Wrestrict in that operator+ (GCC bug 105329).
    std::string note;
    if (p.ticket)
        note.append("queued #").append(std::to_string(p.ticket));
    else if (p.since)
        note.append("since ").append(iso_time(*p.since));
    if (!p.verified) note += note.empty() ? "unverified" : ", unverified";
    char line[512];
    std::snprintf(line, sizeof line, "%-8s %-8s %-16s %-6s %-10s %s", role, pid_text(p.pid).c_str(),
                  p.host.empty() ? "-" : p.host.c_str(), api_name(p.api), what.c_str(),
                  note.c_str());
    std::string s = line;
    s.erase(s.find_last_not_of(' ') + 1);
    std::printf("%s\n", s.c_str());
}

}  // namespace

int status_form(const command_line& cl) {
    if (!cl.status) usage_error("--json goes with --status");
    if (!cl.target || cl.has_command() || cl.fd >= 0)
        usage_error("--status takes a lock file and no command");
    if (std::string_view(cl.target).rfind("etcd://", 0) == 0)
        usage_fail("--status does not support etcd:// targets yet");
    std::error_code ec;
    const filelock::lock_status st = filelock::inspect(cl.target, ec);
    if (ec) {
        warn(std::string("cannot inspect ") + cl.target + ": " + ec.message());
        return ex_noinput;
    }
    if (cl.json) {
        std::string s = "{\"path\":" + json_string(cl.target);
        s += ",\"held\":" + std::string(st.held() ? "true" : "false");
        s += ",\"holders\":[";
        for (std::size_t i = 0; i < st.holders.size(); ++i)
            s.append(i ? "," : "").append(json_party(st.holders[i]));
        s += "],\"waiters\":[";
        for (std::size_t i = 0; i < st.waiters.size(); ++i)
            s.append(i ? "," : "").append(json_party(st.waiters[i]));
        s += "],\"content\":" + json_string(st.content);
        s += ",\"content_live\":" + std::string(st.content_live ? "true" : "false");
        s += ",\"complete\":" + std::string(st.complete ? "true" : "false");
        s += ",\"note\":" + (st.note.empty() ? std::string("null") : json_string(st.note));
        std::printf("%s}\n", s.c_str());
    } else {
        std::printf("%s: %s\n", cl.target, st.held() ? "held" : "free");
        if (!st.holders.empty() || !st.waiters.empty())
            std::printf("%-8s %-8s %-16s %-6s %s\n", "ROLE", "PID", "HOST", "LOCK", "MODE");
        for (const auto& h : st.holders) print_row("holder", h);
        for (const auto& w : st.waiters) print_row("waiter", w);
        if (!st.note.empty()) std::printf("note: %s\n", st.note.c_str());
    }
    std::fflush(stdout);
    return st.held() ? cl.conflict_code : 0;
}

}  // namespace cli
