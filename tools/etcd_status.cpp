// SPDX-License-Identifier: MIT
// filelock-run --status [--json] etcd://...: who holds an etcd lock and who
// waits (etcd::sync_client::inspect), as the short table files have or as
// JSON. Exits 0 when the lock is free, 1 (-E) when it is held, 69 when etcd
// cannot be read. --watch [--json]: the state, then a line per change (the
// lines of a lock file's --watch, status.hpp), read again after each change
// an etcd watch of the prefix reports.
#include "cli.hpp"
#include "etcd_mode.hpp"
#include "status.hpp"

#include <filelock/etcd_asio.hpp>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

namespace etcd_mode {

namespace {

const char* kind_name(const filelock::etcd::lock_party& p) {
    switch (p.kind) {
        case filelock::lock_kind::exclusive: return "exclusive";
        case filelock::lock_kind::shared: return "shared";
        case filelock::lock_kind::slot: return "slot";
    }
    return "?";
}

nlohmann::json json_party(const filelock::etcd::lock_party& p) {
    nlohmann::json j = {
        {"key", p.key},
        {"fencing_token", p.fencing_token},
        {"pid", p.pid},
        {"host", p.host.empty() ? nlohmann::json() : nlohmann::json(p.host)},
        {"mode", kind_name(p)},
        {"lease", p.lease},
        {"ttl", p.ttl ? nlohmann::json(p.ttl->count()) : nlohmann::json()},
        {"since", nullptr},  // etcd keeps no time for a key
        {"content", p.content.empty() ? nlohmann::json() : nlohmann::json(p.content)}};
    if (p.kind == filelock::lock_kind::slot) j["slots"] = p.slots;
    if (p.position) j["queue_position"] = p.position;
    return j;
}

void print_row(const char* role, const filelock::etcd::lock_party& p) {
    std::string mode = kind_name(p);
    if (p.kind == filelock::lock_kind::slot) mode.append(" of ").append(std::to_string(p.slots));
    const std::string pid = p.pid > 0 ? std::to_string(p.pid) : "?";
    std::string note = cli::printable(p.key);
    note.append("  token ").append(std::to_string(p.fencing_token));
    note.append("  ttl ").append(p.ttl ? std::to_string(p.ttl->count()) + "s" : "-");
    if (p.position) note.append("  queued #").append(std::to_string(p.position));
    char line[1024];
    std::snprintf(line, sizeof line, "%-8s %-8s %-16s %-6s %-10s %s", role, pid.c_str(),
                  p.host.empty() ? "-" : cli::printable(p.host).c_str(), "etcd", mode.c_str(),
                  note.c_str());
    std::string s = line;
    s.erase(s.find_last_not_of(' ') + 1);
    std::printf("%s\n", s.c_str());
}

nlohmann::json json_status(const char* target, const filelock::etcd::lock_status& st) {
    nlohmann::json j = {{"target", target},
                        {"name", st.name},
                        {"endpoint", st.endpoint},
                        {"revision", st.revision},
                        {"held", st.held()},
                        {"holders", nlohmann::json::array()},
                        {"waiters", nlohmann::json::array()}};
    for (const auto& h : st.holders) j["holders"].push_back(json_party(h));
    for (const auto& w : st.waiters) j["waiters"].push_back(json_party(w));
    return j;
}

std::string dump(const nlohmann::json& j) {
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// A party as --watch prints it: named by its key.
cli::party_view view_of(const filelock::etcd::lock_party& p) {
    cli::party_view v;
    v.id = p.key;
    v.who = cli::printable(p.key);
    v.what = std::string("etcd ") + kind_name(p);
    if (p.kind == filelock::lock_kind::slot) v.what.append(" of ").append(std::to_string(p.slots));
    v.what.append(", token ").append(std::to_string(p.fencing_token));
    if (p.pid > 0) {
        v.what.append(", pid ").append(std::to_string(p.pid));
        if (!p.host.empty()) v.what.append("@").append(cli::printable(p.host));
    }
    if (p.position) v.what.append(", queued #").append(std::to_string(p.position));
    v.json = dump(json_party(p));
    return v;
}

cli::status_view view_of(const char* target, const filelock::etcd::lock_status& st) {
    cli::status_view v;
    v.target = target;
    for (const auto& h : st.holders) v.holders.push_back(view_of(h));
    for (const auto& w : st.waiters) v.waiters.push_back(view_of(w));
    v.json = dump(json_status(target, st));
    return v;
}

void print_lines(const std::vector<std::string>& lines) {
    for (const auto& l : lines) std::printf("%s\n", l.c_str());
    std::fflush(stdout);
}

}  // namespace

int watch(const options& o, const char* target, bool json) {
    std::string name;
    const filelock::etcd::config cfg = configuration(o, target, name);
    try {
        filelock::etcd::sync_client client(cfg);
        auto st = client.inspect(name);
        auto before = view_of(target, st);
        print_lines({cli::watch_state_line(before, json, std::chrono::system_clock::now())});
        // Until a signal ends the process (SIGINT, SIGTERM, SIGHUP: their
        // default action; every line is flushed when printed).
        for (;;) {
            client.wait_change(name, st.revision);
            st = client.inspect(name);
            auto after = view_of(target, st);
            print_lines(
                cli::watch_change_lines(before, after, json, std::chrono::system_clock::now()));
            before = std::move(after);
        }
    } catch (const std::system_error& e) {
        cli::warn(std::string(target) + ": " + e.what());
        return cli::ex_unavailable;
    }
}

int status(const options& o, const char* target, bool json) {
    std::string name;
    const filelock::etcd::config cfg = configuration(o, target, name);
    filelock::etcd::lock_status st;
    try {
        filelock::etcd::sync_client client(cfg);
        st = client.inspect(name);
    } catch (const std::system_error& e) {
        cli::warn(std::string(target) + ": " + e.what());
        return cli::ex_unavailable;
    }
    if (json) {
        std::printf("%s\n", dump(json_status(target, st)).c_str());
    } else {
        std::printf("%s: %s\n", target, st.held() ? "held" : "free");
        if (!st.holders.empty() || !st.waiters.empty())
            std::printf("%-8s %-8s %-16s %-6s %s\n", "ROLE", "PID", "HOST", "LOCK", "MODE");
        for (const auto& h : st.holders) print_row("holder", h);
        for (const auto& w : st.waiters) print_row("waiter", w);
    }
    std::fflush(stdout);
    return st.held() ? o.conflict_code : 0;
}

}  // namespace etcd_mode
