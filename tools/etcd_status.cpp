// SPDX-License-Identifier: MIT
// filelock-run --status [--json] etcd://...: who holds an etcd lock and who
// waits (etcd::sync_client::inspect), as the short table files have or as
// JSON. Exits 0 when the lock is free, 1 (-E) when it is held, 69 when etcd
// cannot be read.
#include "cli.hpp"
#include "etcd_mode.hpp"

#include <filelock/etcd_asio.hpp>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <string>

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

}  // namespace

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
        nlohmann::json j = {{"target", target},
                            {"name", st.name},
                            {"endpoint", st.endpoint},
                            {"revision", st.revision},
                            {"held", st.held()},
                            {"holders", nlohmann::json::array()},
                            {"waiters", nlohmann::json::array()}};
        for (const auto& h : st.holders) j["holders"].push_back(json_party(h));
        for (const auto& w : st.waiters) j["waiters"].push_back(json_party(w));
        std::printf("%s\n",
                    j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
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
