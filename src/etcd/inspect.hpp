// SPDX-License-Identifier: MIT
#pragma once

// Who holds an etcd lock and who waits (sans-I/O): the keys under NAME/ by
// create revision, sorted into holders and waiters by the rules the
// acquisition follows (lock_backend.hpp's admits). The executor that reads
// the keys and their leases' TTL is inspect_op.cpp.

#include <filelock/etcd.hpp>

#include "lock_backend.hpp"
#include "proto.hpp"

#include <charconv>
#include <string>
#include <string_view>
#include <vector>

namespace filelock::etcd::detail {

/// The party a key stands for (its TTL is filled in later).
inline lock_party party_of(const kv& k) {
    lock_party p;
    p.key = k.key;
    const key_kind kind = kind_of(k.value);
    p.kind = kind.shared  ? filelock::lock_kind::shared
             : kind.slots ? filelock::lock_kind::slot
                          : filelock::lock_kind::exclusive;
    p.slots = kind.slots;
    p.fencing_token = k.create_revision;
    p.lease = k.lease;
    // " 1234@host\n" (the default template) names the process and its host.
    std::string_view c = content_of(k.value);
    while (!c.empty() && (c.front() == ' ' || c.front() == '\n')) c.remove_prefix(1);
    while (!c.empty() && (c.back() == ' ' || c.back() == '\n')) c.remove_suffix(1);
    p.content = std::string(c);
    long long pid = 0;
    const auto end = c.data() + c.size();
    const auto r = std::from_chars(c.data(), end, pid);
    if (r.ec == std::errc() && pid > 0 && (r.ptr == end || *r.ptr == '@')) {
        p.pid = pid;
        if (r.ptr != end) p.host.assign(r.ptr + 1, end);
    }
    return p;
}

/// Sorts `keys` (every key under the name, by create revision ascending)
/// into holders and waiters: a key holds when its kind admits it beside the
/// keys created before it (an exclusive key: none before it; a slot of N:
/// fewer than N before it, all slot holders; a reader: only readers before
/// it), as its acquisition decides.
inline lock_status status_of(std::string name, const std::vector<kv>& keys, std::int64_t revision) {
    lock_status st;
    st.name = std::move(name);
    st.revision = revision;
    std::vector<key_kind> earlier;
    earlier.reserve(keys.size());
    for (const auto& k : keys) {
        const key_kind kind = kind_of(k.value);
        lock_kind as_asked;  // what its acquisition asked for
        if (kind.shared)
            as_asked.mode = lock_mode::shared;
        else if (kind.slots)
            as_asked.slots = kind.slots;
        lock_party p = party_of(k);
        if (admits(as_asked, earlier)) {
            st.holders.push_back(std::move(p));
        } else {
            p.position = st.waiters.size() + 1;
            st.waiters.push_back(std::move(p));
        }
        earlier.push_back(kind);
    }
    return st;
}

}  // namespace filelock::etcd::detail
