// SPDX-License-Identifier: MIT
#include "proto.hpp"

#include <cstdio>

namespace filelock::etcd::detail {

namespace {
constexpr char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

json put_op(const std::string& key, const std::string& value, std::int64_t lease) {
    json p = {{"key", base64(key)}, {"value", base64(value)}};
    if (lease) p["lease"] = std::to_string(lease);
    return {{"request_put", p}};
}

json create_is(const std::string& key, std::int64_t rev) {
    return {{"target", "CREATE"},
            {"key", base64(key)},
            {"result", "EQUAL"},
            {"create_revision", std::to_string(rev)}};
}

json range_op(const std::string& key) { return {{"request_range", {{"key", base64(key)}}}}; }

json first_of(const std::string& prefix) {
    return {{"request_range",
             {{"key", base64(prefix)},
              {"range_end", base64(prefix_end(prefix))},
              {"sort_order", "ASCEND"},
              {"sort_target", "CREATE"},
              {"limit", "1"}}}};
}

// Every key of the prefix by create revision (those created before `before`).
json all_of(const std::string& prefix, std::int64_t before = 0) {
    json r = {{"key", base64(prefix)},
              {"range_end", base64(prefix_end(prefix))},
              {"sort_order", "ASCEND"},
              {"sort_target", "CREATE"}};
    if (before) r["max_create_revision"] = std::to_string(before - 1);
    return {{"request_range", r}};
}
}  // namespace

std::string base64(std::string_view in) {
    std::string out;
    out.reserve((in.size() + 2) / 3 * 4);
    std::size_t i = 0;
    for (; i + 2 < in.size(); i += 3) {
        const unsigned v = static_cast<unsigned char>(in[i]) << 16 |
                           static_cast<unsigned char>(in[i + 1]) << 8 |
                           static_cast<unsigned char>(in[i + 2]);
        out += b64chars[v >> 18];
        out += b64chars[(v >> 12) & 63];
        out += b64chars[(v >> 6) & 63];
        out += b64chars[v & 63];
    }
    if (i < in.size()) {
        unsigned v = static_cast<unsigned char>(in[i]) << 16;
        if (i + 1 < in.size()) v |= static_cast<unsigned char>(in[i + 1]) << 8;
        out += b64chars[v >> 18];
        out += b64chars[(v >> 12) & 63];
        out += i + 1 < in.size() ? b64chars[(v >> 6) & 63] : '=';
        out += '=';
    }
    return out;
}

bool unbase64(std::string_view in, std::string& out) {
    out.clear();
    unsigned acc = 0;
    int bits = 0;
    for (const char c : in) {
        int v;
        if (c >= 'A' && c <= 'Z')
            v = c - 'A';
        else if (c >= 'a' && c <= 'z')
            v = c - 'a' + 26;
        else if (c >= '0' && c <= '9')
            v = c - '0' + 52;
        else if (c == '+' || c == '-')
            v = 62;
        else if (c == '/' || c == '_')
            v = 63;
        else if (c == '=')
            break;
        else
            return false;
        acc = (acc << 6) | static_cast<unsigned>(v);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out += static_cast<char>((acc >> bits) & 0xff);
        }
    }
    return true;
}

std::string prefix_end(std::string prefix) {
    while (!prefix.empty()) {
        auto& c = prefix.back();
        if (static_cast<unsigned char>(c) < 0xff) {
            ++c;
            return prefix;
        }
        prefix.pop_back();
    }
    return std::string(1, '\0');  // every key
}

std::string hex(std::int64_t v) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(v));
    return buf;
}

std::int64_t int64_of(const json& j, const char* field) {
    const auto it = j.find(field);
    if (it == j.end()) return 0;
    if (it->is_number_integer()) return it->get<std::int64_t>();
    if (!it->is_string()) throw std::invalid_argument(field);
    const auto& s = it->get_ref<const std::string&>();
    std::size_t used = 0;
    const long long v = std::stoll(s, &used);
    if (used != s.size()) throw std::invalid_argument(field);
    return v;
}

std::error_code parse(const http_reply& r, json& out, std::string& why) {
    if (r.ec) {
        why = r.detail.empty() ? r.ec.message() : r.detail;
        return r.ec;
    }
    out = json::parse(r.body, nullptr, false);
    const bool object = !out.is_discarded() && out.is_object();
    if (object && out.contains("error")) {
        // grpc-gateway's error body: {"error": msg, "code": grpc code, ...}
        const auto& e = out["error"];
        why = e.is_string() ? e.get<std::string>() : e.dump();
        const int code = out.value("code", 0);
        if (code == 16 || why.find("authentication failed") != std::string::npos ||
            why.find("invalid auth token") != std::string::npos ||
            why.find("user name is empty") != std::string::npos ||
            why.find("permission denied") != std::string::npos)
            return errc::auth;
        return errc::server;
    }
    if (r.status < 200 || r.status >= 300) {
        // etcd's gateway answers its errors with the body above.
        why = "not an etcd v3 gateway: HTTP status " + std::to_string(r.status);
        return errc::http_status;
    }
    if (!object) {
        why = "malformed JSON in the answer";
        return errc::bad_reply;
    }
    return {};
}

std::error_code parse_token(const http_reply& r, std::string& token, std::string& why) {
    json j;
    if (auto ec = parse(r, j, why)) return ec;
    if (!j.contains("token") || !j["token"].is_string()) {
        why = "no token in the answer";
        return errc::bad_reply;
    }
    token = j["token"].get<std::string>();
    return {};
}

int grpc_code(const json& answer) noexcept {
    if (!answer.is_object()) return 0;
    const auto code_of = [](const json& o, const char* field) {
        const auto it = o.find(field);
        return it != o.end() && it->is_number_integer() ? it->get<int>() : 0;
    };
    if (const int c = code_of(answer, "code")) return c;
    const auto e = answer.find("error");
    return e != answer.end() && e->is_object() ? code_of(*e, "grpc_code") : 0;
}

bool token_refused(const http_reply& r) {
    if (r.ec || r.body.empty()) return false;
    return grpc_code(json::parse(r.body, nullptr, false)) == grpc::unauthenticated;
}

bool kvs_of(const json& range, std::vector<kv>& out) {
    out.clear();
    const auto it = range.find("kvs");
    if (it == range.end()) return true;
    if (!it->is_array()) return false;
    for (const auto& k : *it) {
        kv x;
        if (!unbase64(k.value("key", ""), x.key) || !unbase64(k.value("value", ""), x.value))
            return false;
        x.create_revision = int64_of(k, "create_revision");
        x.mod_revision = int64_of(k, "mod_revision");
        x.lease = int64_of(k, "lease");
        out.push_back(std::move(x));
    }
    return true;
}

std::error_code decode_grant(const http_reply& r, grant_reply& out, std::string& why) {
    json j;
    if (auto ec = parse(r, j, why)) return ec;
    try {
        out.id = int64_of(j, "ID");
        out.ttl = int64_of(j, "TTL");
    } catch (const std::exception& e) {
        why = e.what();
        return errc::bad_reply;
    }
    if (!out.id || out.ttl <= 0) {
        why = "the lease grant has no ID or TTL";
        return errc::bad_reply;
    }
    return {};
}

std::error_code decode_keepalive(const http_reply& r, std::int64_t& ttl, std::string& why) {
    json j;
    if (auto ec = parse(r, j, why)) return ec;
    try {
        ttl = int64_of(j.at("result"), "TTL");
    } catch (const std::exception& e) {
        why = e.what();
        return errc::bad_reply;
    }
    return {};
}

std::error_code decode_range(const http_reply& r, std::vector<kv>& out, std::int64_t& revision,
                             std::string& why) {
    json j;
    if (auto ec = parse(r, j, why)) return ec;
    try {
        revision = j.contains("header") ? int64_of(j.at("header"), "revision") : 0;
        if (!kvs_of(j, out)) {
            why = "malformed key or value in the answer";
            return errc::bad_reply;
        }
    } catch (const std::exception& e) {
        why = std::string("unexpected answer: ") + e.what();
        return errc::bad_reply;
    }
    return {};
}

std::error_code decode_time_to_live(const http_reply& r, std::int64_t& ttl, std::string& why) {
    json j;
    if (auto ec = parse(r, j, why)) return ec;
    try {
        ttl = int64_of(j, "TTL");
    } catch (const std::exception& e) {
        why = std::string("unexpected answer: ") + e.what();
        return errc::bad_reply;
    }
    return {};
}

watch_message decode_watch(std::string_view text) {
    watch_message m;
    const json j = json::parse(text, nullptr, false);
    const json* r = j.is_object() && j.contains("result") ? &j["result"] : nullptr;
    if (!r || !r->is_object()) return m;
    m.ok = true;
    m.created = r->value("created", false);
    m.canceled = r->value("canceled", false);
    if (const auto h = r->find("header"); h != r->end() && h->is_object()) {
        try {
            m.revision = int64_of(*h, "revision");
        } catch (const std::exception&) {
            m.revision = 0;
        }
    }
    try {
        m.compact_revision = int64_of(*r, "compact_revision");
    } catch (const std::exception&) {
        m.compact_revision = 0;
    }
    if (const auto ev = r->find("events"); ev != r->end() && ev->is_array()) {
        m.events = ev->size();
        for (const auto& e : *ev) {
            if (!e.is_object()) continue;
            // A put's type is the enum's default, which the gateway leaves out.
            const bool deleted = e.value("type", "") == "DELETE";
            watch_message::deletion d;
            const auto kv = e.find("kv");
            if (kv == e.end() || !kv->is_object()) {
                d.key_ok = d.revision_ok = false;
            } else {
                const auto key = kv->find("key");
                d.key_ok = key == kv->end() ||
                           (key->is_string() && unbase64(key->get<std::string>(), d.key));
                try {
                    d.mod_revision = int64_of(*kv, "mod_revision");
                } catch (const std::exception&) {
                    d.revision_ok = false;
                }
            }
            (deleted ? m.deletions : m.puts).push_back(std::move(d));
        }
    }
    return m;
}

namespace request {

std::string grant(std::chrono::seconds ttl) {
    return json{{"TTL", std::to_string(ttl.count())}}.dump();
}
std::string keepalive(std::int64_t lease) { return json{{"ID", std::to_string(lease)}}.dump(); }
std::string revoke(std::int64_t lease) { return json{{"ID", std::to_string(lease)}}.dump(); }
std::string authenticate(const std::string& user, const std::string& password) {
    return json{{"name", user}, {"password", password}}.dump();
}

std::string acquire(const std::string& key, const std::string& value, std::int64_t lease,
                    const std::string& prefix) {
    return json{{"compare", json::array({create_is(key, 0)})},
                {"success", json::array({put_op(key, value, lease), first_of(prefix)})},
                {"failure", json::array({range_op(key), first_of(prefix)})}}
        .dump();
}

std::string acquire_all(const std::string& key, const std::string& value, std::int64_t lease,
                        const std::string& prefix) {
    return json{{"compare", json::array({create_is(key, 0)})},
                {"success", json::array({put_op(key, value, lease), all_of(prefix)})},
                {"failure", json::array({range_op(key), all_of(prefix)})}}
        .dump();
}

std::string earlier(const std::string& key, std::int64_t rev, const std::string& prefix) {
    return json{{"compare", json::array({create_is(key, rev)})},
                {"success", json::array({all_of(prefix, rev)})},
                {"failure", json::array()}}
        .dump();
}

std::string predecessor(const std::string& key, std::int64_t rev, const std::string& prefix) {
    json last = {{"request_range",
                  {{"key", base64(prefix)},
                   {"range_end", base64(prefix_end(prefix))},
                   {"sort_order", "DESCEND"},
                   {"sort_target", "CREATE"},
                   {"max_create_revision", std::to_string(rev - 1)},
                   {"limit", "1"}}}};
    return json{{"compare", json::array({create_is(key, rev)})},
                {"success", json::array({last, first_of(prefix)})},
                {"failure", json::array()}}
        .dump();
}

std::string release(const std::string& key, std::int64_t rev) {
    return json{{"compare", json::array({create_is(key, rev)})},
                {"success", json::array({{{"request_delete_range", {{"key", base64(key)}}}}})},
                {"failure", json::array()}}
        .dump();
}

std::string touch(const std::string& key, std::int64_t rev) {
    const json put = {{"key", base64(key)}, {"ignore_value", true}, {"ignore_lease", true}};
    return json{{"compare", json::array({create_is(key, rev)})},
                {"success", json::array({{{"request_put", put}}})},
                {"failure", json::array()}}
        .dump();
}

std::string release_leased(const std::string& key, std::int64_t lease) {
    const json bound = {{"target", "LEASE"},
                        {"key", base64(key)},
                        {"result", "EQUAL"},
                        {"lease", std::to_string(lease)}};
    return json{{"compare", json::array({bound})},
                {"success", json::array({{{"request_delete_range", {{"key", base64(key)}}}}})},
                {"failure", json::array()}}
        .dump();
}

std::string range_by_create(const std::string& prefix) {
    return all_of(prefix).at("request_range").dump();
}

std::string time_to_live(std::int64_t lease) { return json{{"ID", std::to_string(lease)}}.dump(); }

std::string watch(const std::string& key, std::int64_t start_revision, const std::string& range_end,
                  bool puts) {
    json c = {{"key", base64(key)}, {"start_revision", std::to_string(start_revision)}};
    if (!range_end.empty()) c["range_end"] = base64(range_end);
    if (!puts) c["filters"] = json::array({"NOPUT"});
    return json{{"create_request", c}}.dump();
}

}  // namespace request
}  // namespace filelock::etcd::detail
