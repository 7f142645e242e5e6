// SPDX-License-Identifier: MIT
#pragma once

// etcd v3's JSON gateway: the requests the lock needs and the parsing of
// their answers. Keys and values are base64; int64 values are JSON strings.

#include "transport.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace filelock::etcd::detail {

using json = nlohmann::json;

std::string base64(std::string_view in);
bool unbase64(std::string_view in, std::string& out);
/// The end of the range of keys that start with `prefix`.
std::string prefix_end(std::string prefix);
/// Lowercase hex, as etcd's Mutex names its keys (`%x`).
std::string hex(std::int64_t v);

struct kv {
    std::string key, value;
    std::int64_t create_revision = 0, mod_revision = 0, lease = 0;
};

/// Reads an int64 that the gateway sends as a string (or a number); absent: 0.
std::int64_t int64_of(const json& j, const char* field);
/// The answer's JSON, or the error it stands for: the HTTP status, an etcd
/// error (`{"error": ..., "code": ...}`) or malformed JSON. `why` names the
/// cause.
std::error_code parse(const http_reply& r, json& out, std::string& why);
/// The token of an answer to /v3/auth/authenticate, or the error as parse()
/// gives it (an answer with no token is errc::bad_reply).
std::error_code parse_token(const http_reply& r, std::string& token, std::string& why);
/// The gRPC status code of an error answer of the gateway (`{"code": N}`,
/// or a stream's `{"error": {"grpc_code": N}}`); 0 when it is none.
int grpc_code(const json& answer) noexcept;
/// gRPC status codes etcd uses for what another try may cure, and for a
/// refused auth token.
namespace grpc {
constexpr int deadline_exceeded = 4, not_found = 5, permission_denied = 7, resource_exhausted = 8,
              aborted = 10, unavailable = 14, unauthenticated = 16;
}
/// Whether `r` is etcd refusing the request's auth token (expired, or
/// unknown to the member after a restart).
bool token_refused(const http_reply& r);
/// The kvs of a range response (`response_range`), decoded.
bool kvs_of(const json& range, std::vector<kv>& out);

/// A lease grant's answer: the lease and its TTL, or the error.
struct grant_reply {
    std::int64_t id = 0;
    std::int64_t ttl = 0;
};
std::error_code decode_grant(const http_reply& r, grant_reply& out, std::string& why);
/// A keep-alive's answer: the TTL left (<= 0: the lease is gone), or the
/// error.
std::error_code decode_keepalive(const http_reply& r, std::int64_t& ttl, std::string& why);

/// One message of a watch stream.
struct watch_message {
    struct deletion {
        std::string key;
        bool key_ok = true;  // the key decoded (base64)
        std::int64_t mod_revision = 0;
        bool revision_ok = true;
    };
    bool ok = false;  // an object with a "result" object
    bool created = false, canceled = false;
    std::int64_t revision = 0;          // the header's; 0: none or unreadable
    std::int64_t compact_revision = 0;  // a cancelled watch's, when compacted
    std::size_t events = 0;             // of every type (puts and deletions)
    std::vector<deletion> deletions;
    std::vector<deletion> puts;  // keys created or written
};
watch_message decode_watch(std::string_view text);

/// A range's answer: its keys (in the order asked) and the store's revision.
std::error_code decode_range(const http_reply& r, std::vector<kv>& out, std::int64_t& revision,
                             std::string& why);
/// A lease's time-to-live answer: the TTL left (-1: the lease is gone).
std::error_code decode_time_to_live(const http_reply& r, std::int64_t& ttl, std::string& why);

namespace request {
std::string grant(std::chrono::seconds ttl);
std::string keepalive(std::int64_t lease);
std::string revoke(std::int64_t lease);
std::string authenticate(const std::string& user, const std::string& password);
/// etcd's Mutex: If(create_revision(key) == 0) Then(put(key, value, lease),
/// range(first of prefix by create revision)) Else(range(key), range(first
/// of prefix)).
std::string acquire(const std::string& key, const std::string& value, std::int64_t lease,
                    const std::string& prefix);
/// As acquire, reading every key of the prefix by create revision (the
/// kinds other than one holder decide on all of them).
std::string acquire_all(const std::string& key, const std::string& value, std::int64_t lease,
                        const std::string& prefix);
/// If(create_revision(key) == rev) Then(range(every key of prefix created
/// before rev, by create revision)).
std::string earlier(const std::string& key, std::int64_t rev, const std::string& prefix);
/// If(create_revision(key) == rev) Then(range(last of prefix created before
/// rev), range(first of prefix)): the predecessor to wait for, and the
/// holder, while the key still exists.
std::string predecessor(const std::string& key, std::int64_t rev, const std::string& prefix);
/// If(create_revision(key) == rev) Then(delete(key)).
std::string release(const std::string& key, std::int64_t rev);
/// If(create_revision(key) == rev) Then(put(key) keeping its value and
/// lease): a write that only its watchers see (an admitted slot waiter
/// tells the waiter behind it).
std::string touch(const std::string& key, std::int64_t rev);
/// If(lease(key) == lease) Then(delete(key)): the key only while it is
/// bound to `lease` (ours), whatever its revision.
std::string release_leased(const std::string& key, std::int64_t lease);
/// Every key of `prefix`, by create revision, ascending (for /v3/kv/range).
std::string range_by_create(const std::string& prefix);
/// The TTL left of `lease` (for /v3/lease/timetolive).
std::string time_to_live(std::int64_t lease);
/// Watches `key` (with `range_end`: the keys in [key, range_end)) from
/// `start_revision`; without `puts`, deletions only (filter NOPUT).
std::string watch(const std::string& key, std::int64_t start_revision,
                  const std::string& range_end = {}, bool puts = true);
}  // namespace request

/// Splits a watch stream into its JSON objects (one per message).
class stream_splitter {
public:
    /// Appends bytes; calls `f(object_text)` for every complete object.
    template <class F>
    bool feed(std::string_view bytes, F&& f) {
        buf_.append(bytes);
        std::size_t start = 0;
        for (std::size_t i = scan_; i < buf_.size(); ++i) {
            const char c = buf_[i];
            if (in_string_) {
                if (escape_)
                    escape_ = false;
                else if (c == '\\')
                    escape_ = true;
                else if (c == '"')
                    in_string_ = false;
                continue;
            }
            if (c == '"') {
                in_string_ = true;
            } else if (c == '{') {
                if (depth_++ == 0) start = i;
            } else if (c == '}') {
                if (depth_ == 0) return false;
                if (--depth_ == 0) {
                    f(std::string_view(buf_).substr(start, i + 1 - start));
                    buf_.erase(0, i + 1);
                    i = static_cast<std::size_t>(-1);
                    start = 0;
                }
            }
        }
        scan_ = buf_.size();
        return buf_.size() < (16u << 20);
    }

private:
    std::string buf_;
    std::size_t scan_ = 0;
    int depth_ = 0;
    bool in_string_ = false, escape_ = false;
};

}  // namespace filelock::etcd::detail
