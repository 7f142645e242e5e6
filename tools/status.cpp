// SPDX-License-Identifier: MIT
// filelock-run --status [--json] FILE: who holds the lock and who waits
// (filelock::inspect), as a short table or as JSON. Exits 0 when the lock is
// free, 1 when it is held, 66 when the file cannot be inspected. Also the
// lines of --watch (watch.cpp), for any target (status.hpp).
#include "status.hpp"

#include <chrono>
#include <cstdio>
#include <ctime>
#include <string>
#include <string_view>
#include <utility>

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

std::string json_party(const filelock::lock_party& p) {
    std::string s = "{\"pid\":" + std::to_string(p.pid);
    s += ",\"host\":" + (p.host.empty() ? std::string("null") : json_string(p.host));
    s += ",\"mode\":\"" + std::string(kind_name(p.kind)) + "\"";
    s += ",\"lock\":\"" + std::string(api_name(p.api)) + "\"";
    if (p.kind == filelock::lock_kind::slot)
        s += ",\"start\":" + std::to_string(p.start) + ",\"length\":" + std::to_string(p.length);
    if (p.slot) s += ",\"slot\":" + std::to_string(*p.slot);
    if (p.slots) s += ",\"slots\":" + std::to_string(p.slots);
    s += ",\"since\":" + (p.since ? "\"" + iso_time(*p.since) + "\"" : std::string("null"));
    s += ",\"content\":" + (p.content.empty() ? std::string("null") : json_string(p.content));
    s += ",\"verified\":" + std::string(p.verified ? "true" : "false");
    if (p.ticket) s += ",\"queue_position\":" + std::to_string(p.ticket);
    return s + "}";
}

std::string pid_text(long long pid) { return pid > 0 ? std::to_string(pid) : "?"; }

// A range's mode: "slot 3" (filelock's slot 3), "slot of 4" (a waiter for
// one of 4 slots), "slot 5+1" (bytes 5 to 5).
std::string mode_text(const filelock::lock_party& p) {
    std::string what = kind_name(p.kind);
    if (p.slot)
        what.append(" ").append(std::to_string(*p.slot));
    else if (p.slots)
        what.append(" of ").append(std::to_string(p.slots));
    else if (p.kind == filelock::lock_kind::slot)
        what.append(" ")
            .append(std::to_string(p.start))
            .append("+")
            .append(p.length ? std::to_string(p.length) : std::string("EOF"));
    return what;
}

// What a party holds or waits for: "flock exclusive", "ofd slot 5+1".
std::string lock_text(const filelock::lock_party& p) {
    return std::string(api_name(p.api)) + " " + mode_text(p);
}

party_view party_of(const filelock::lock_party& p) {
    party_view v;
    v.id = std::to_string(p.pid) + " " + api_name(p.api) + " " + kind_name(p.kind) + " " +
           std::to_string(p.start) + " " + std::to_string(p.length);
    if (p.slot || p.slots) v.served_as = std::to_string(p.pid) + " slot";
    v.who = pid_text(p.pid);
    if (!p.verified && !p.host.empty()) v.who.append("@").append(p.host);
    v.what = lock_text(p);
    if (p.ticket) v.what.append(", queued #").append(std::to_string(p.ticket));
    if (!p.verified) v.what.append(", unverified");
    v.json = json_party(p);
    return v;
}

// The parties of `from` that `to` lacks (matched by id, each once).
std::vector<const party_view*> missing(const std::vector<party_view>& from,
                                       const std::vector<party_view>& to) {
    std::vector<bool> used(to.size(), false);
    std::vector<const party_view*> out;
    for (const auto& p : from) {
        bool found = false;
        for (std::size_t i = 0; i < to.size() && !found; ++i)
            if (!used[i] && to[i].id == p.id) used[i] = found = true;
        if (!found) out.push_back(&p);
    }
    return out;
}

std::string change_line(const char* event, const char* role, const party_view& p, bool json,
                        const std::string& time) {
    if (json)
        return "{\"time\":\"" + time + "\",\"event\":\"" + event + "\",\"role\":\"" + role +
               "\",\"party\":" + p.json + "}";
    std::string line = time;
    line.append(" ").append(event).append(" ").append(role).append(" ").append(p.who);
    if (!p.what.empty()) line.append(" (").append(p.what).append(")");
    return line;
}

void print_row(const char* role, const filelock::lock_party& p) {
    const std::string what = mode_text(p);
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

// The length of the valid UTF-8 sequence starting at s[i], or 0 when the
// bytes there are not one (a stray or truncated byte, an overlong form, a
// surrogate, or past U+10FFFF).
std::size_t utf8_length(std::string_view s, std::size_t i) {
    const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[i + k]); };
    const unsigned char c = b(0);
    std::size_t n = 0;
    unsigned char lo = 0x80, hi = 0xbf;  // the second byte's range
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
    } else
        return 0;
    if (s.size() - i < n) return 0;
    if (b(1) < lo || b(1) > hi) return 0;
    for (std::size_t k = 2; k < n; ++k)
        if (b(k) < 0x80 || b(k) > 0xbf) return 0;
    return n;
}

}  // namespace

std::string json_string(std::string_view s) {
    std::string out = "\"";
    for (std::size_t i = 0; i < s.size();) {
        const auto c = static_cast<unsigned char>(s[i]);
        const std::size_t n = utf8_length(s, i);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += static_cast<char>(c);
        } else if (c < 0x20 || c == 0x7f || n == 0) {
            // Controls, and each byte of what is not UTF-8 as the
            // character of that number (latin-1: byte 0xff is \u00ff).
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            out += buf;
        } else {
            out.append(s.substr(i, n));  // valid UTF-8 passes through
            i += n;
            continue;
        }
        ++i;
    }
    return out + "\"";
}

std::string iso_time(std::chrono::system_clock::time_point t, bool millis) {
    using namespace std::chrono;
    const auto whole = floor<seconds>(t);
    const std::time_t tt = system_clock::to_time_t(whole);
    std::tm tm{};
#if defined(_WIN32)
    gmtime_s(&tm, &tt);
#else
    gmtime_r(&tt, &tm);
#endif
    char buf[40];
    const std::size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    std::string out(buf, n);
    if (millis) {
        const auto ms = duration_cast<milliseconds>(t - whole).count();
        std::snprintf(buf, sizeof buf, ".%03d", static_cast<int>(ms));
        out += buf;
    }
    return out + "Z";
}

status_view view_of(const std::string& path, const filelock::lock_status& st) {
    status_view v;
    v.target = path;
    for (const auto& h : st.holders) v.holders.push_back(party_of(h));
    for (const auto& w : st.waiters) v.waiters.push_back(party_of(w));
    std::string& s = v.json;
    s = "{\"path\":" + json_string(path);
    s += ",\"held\":" + std::string(st.held() ? "true" : "false");
    s += ",\"holders\":[";
    for (std::size_t i = 0; i < v.holders.size(); ++i)
        s.append(i ? "," : "").append(v.holders[i].json);
    s += "],\"waiters\":[";
    for (std::size_t i = 0; i < v.waiters.size(); ++i)
        s.append(i ? "," : "").append(v.waiters[i].json);
    s += "],\"content\":" + json_string(st.content);
    s += ",\"content_live\":" + std::string(st.content_live ? "true" : "false");
    s += ",\"complete\":" + std::string(st.complete ? "true" : "false");
    s += ",\"note\":" + (st.note.empty() ? std::string("null") : json_string(st.note));
    s += "}";
    return v;
}

std::string watch_state_line(const status_view& v, bool json,
                             std::chrono::system_clock::time_point at) {
    const std::string time = iso_time(at, true);
    if (json) {
        // --status --json's object, "time" and "event" first.
        std::string line = "{\"time\":\"" + time + "\",\"event\":\"state\"";
        if (v.json.size() > 2)
            line.append(",").append(v.json, 1);
        else
            line.append("}");
        return line;
    }
    std::string line = time + " " + v.target + ": " + (v.held() ? "held by " : "free");
    for (std::size_t i = 0; i < v.holders.size(); ++i)
        line.append(i ? ", " : "").append(v.holders[i].who);
    if (!v.waiters.empty()) {
        line += "; waiting:";
        for (const auto& w : v.waiters) line.append(" ").append(w.who);
    }
    return line;
}

std::vector<std::string> watch_change_lines(const status_view& before, const status_view& after,
                                            bool json, std::chrono::system_clock::time_point at) {
    const std::string time = iso_time(at, true);
    std::vector<std::string> lines;
    for (const party_view* p : missing(before.holders, after.holders))
        lines.push_back(change_line("released", "holder", *p, json, time));
    const std::vector<const party_view*> acquired = missing(after.holders, before.holders);
    for (const party_view* p : acquired)
        lines.push_back(change_line("acquired", "holder", *p, json, time));
    // A waiter that went is one that left, unless it is among the holders
    // that came (it was served).
    const auto key = [](const party_view& v) -> const std::string& {
        return v.served_as.empty() ? v.id : v.served_as;
    };
    std::vector<bool> served(acquired.size(), false);
    for (const party_view* p : missing(before.waiters, after.waiters)) {
        bool was_served = false;
        for (std::size_t i = 0; i < acquired.size() && !was_served; ++i)
            if (!served[i] && key(*acquired[i]) == key(*p)) served[i] = was_served = true;
        if (!was_served) lines.push_back(change_line("left", "waiter", *p, json, time));
    }
    for (const party_view* p : missing(after.waiters, before.waiters))
        lines.push_back(change_line("joined", "waiter", *p, json, time));
    return lines;
}

int status_form(const command_line& cl) {
    if (!cl.status) usage_error("--json goes with --status or --watch");
#if defined(_WIN32)
    if (cl.watch) usage_fail("--watch needs Linux's inotify (not on Windows)");
#endif
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
        std::printf("%s\n", view_of(cl.target, st).json.c_str());
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
