// SPDX-License-Identifier: MIT
// One inspection (inspect_op): reads the keys under NAME/ by create revision
// in one range request, sorts them into holders and waiters (inspect.hpp),
// then asks etcd for the TTL left of each lease they are bound to. It takes
// nothing: no lease, no key, no watch. The same operation waits for the next
// change under NAME/ after a revision (wait_change: a watch of the prefix
// from the next revision, ended at its first event), so that a view of the
// lock is read again when, and only when, something changed.
#include "inspect.hpp"
#include "session.hpp"

#include <algorithm>
#include <map>

namespace filelock::etcd::detail {

namespace {
// Leases asked for at once: a name with many waiting sessions is read
// without opening a connection per lease.
constexpr std::size_t max_in_flight = 8;
}  // namespace

struct inspect_op final : std::enable_shared_from_this<inspect_op> {
    inspect_op(session& s, std::uint64_t id, std::string name,
               std::function<void(inspect_result)> done)
        : s(s), id(id), name(std::move(name)), done(std::move(done)) {}
    inspect_op(session& s, std::uint64_t id, std::string name, std::int64_t after,
               std::function<void(change_result)> changed)
        : s(s), id(id), name(std::move(name)), after(after), changed(std::move(changed)) {}

    session& s;
    std::uint64_t id;
    std::shared_ptr<session> keep;  // alive while the operation is pending
    std::string name;
    std::function<void(inspect_result)> done;
    bool finished = false;
    lock_status st;
    std::vector<std::int64_t> leases;  // to ask for, distinct
    std::size_t next = 0;
    std::map<std::int64_t, std::uint64_t> asking;  // lease -> request id
    std::map<std::int64_t, std::int64_t> ttl_of;
    std::uint64_t range_request = 0;
    // wait_change: the revision after which a change is awaited, the
    // callback, the watch stream.
    std::int64_t after = -1;
    std::function<void(change_result)> changed;
    std::uint64_t watch = 0;
    stream_splitter split;

    void start() {
        s.with_token([w = weak_from_this()](std::error_code ec, const std::string& why) {
            auto self = w.lock();
            if (!self || self->finished) return;
            if (ec) return self->fail(self->s.http().endpoint(), ec, why);
            if (self->changed) return self->watch_prefix();
            self->read_keys();
        });
    }

    void watch_prefix() {
        ++s.watches;
        const std::string prefix = name + "/";
        watch = s.http().post(
            "/v3/watch", request::watch(prefix, after + 1, prefix_end(prefix)),
            [w = weak_from_this()](http_reply& r) {
                auto self = w.lock();
                if (!self || self->finished) return;
                self->watch = 0;
                if (r.ec) return self->fail(r.endpoint, r.ec, r.detail);
                if (r.status < 200 || r.status >= 300)
                    return self->fail(
                        r.endpoint, errc::http_status,
                        "not an etcd v3 gateway: HTTP status " + std::to_string(r.status));
                self->fail(r.endpoint, errc::connection_reset, "the watch stream ended");
            },
            [w = weak_from_this()](std::string_view bytes) {
                auto self = w.lock();
                if (!self || self->finished) return;
                const bool ok = self->split.feed(bytes, [&](std::string_view text) {
                    if (self->finished) return;
                    const auto m = decode_watch(text);
                    if (!m.ok) {
                        // An error object instead of a result (a refused
                        // token, a bad request).
                        http_reply e;
                        e.status = 200;
                        e.body = std::string(text);
                        json j;
                        std::string why;
                        auto ec = parse(e, j, why);
                        if (!ec) {
                            ec = errc::bad_reply;
                            why = "unexpected watch message";
                        }
                        return self->post_fail(ec, why);
                    }
                    if (m.canceled && m.compact_revision > 0)
                        return self->post_change(m.compact_revision);  // read it again
                    if (m.canceled)
                        return self->post_fail(errc::server, "etcd cancelled the watch");
                    if (m.events > 0) self->post_change(m.revision);
                });
                if (!ok) self->post_fail(errc::bad_reply, "malformed watch stream");
            });
    }

    // Acted on after the stream's callbacks return.
    void post_change(std::int64_t revision) {
        s.loop().post([w = weak_from_this(), revision] {
            auto self = w.lock();
            if (!self || self->finished) return;
            change_result r;
            r.revision = revision;
            self->deliver_change(std::move(r));
        });
    }
    void post_fail(std::error_code ec, std::string why) {
        s.loop().post([w = weak_from_this(), ec, why = std::move(why)] {
            auto self = w.lock();
            if (!self || self->finished) return;
            self->fail(self->s.http().endpoint(), ec, why);
        });
    }

    void read_keys() {
        range_request =
            s.http().post("/v3/kv/range", request::range_by_create(name + "/"),
                          [w = weak_from_this()](http_reply& r) {
                              auto self = w.lock();
                              if (!self || self->finished) return;
                              self->range_request = 0;
                              std::vector<kv> keys;
                              std::int64_t revision = 0;
                              std::string why;
                              if (auto ec = decode_range(r, keys, revision, why))
                                  return self->fail(r.endpoint, ec, why);
                              self->st = status_of(self->name, keys, revision);
                              self->st.endpoint = r.endpoint;
                              for (const auto& k : keys)
                                  if (k.lease && std::find(self->leases.begin(), self->leases.end(),
                                                           k.lease) == self->leases.end())
                                      self->leases.push_back(k.lease);
                              self->ask_leases();
                          });
    }

    void ask_leases() {
        while (asking.size() < max_in_flight && next < leases.size()) {
            const auto lease = leases[next++];
            asking[lease] = s.http().post("/v3/lease/timetolive", request::time_to_live(lease),
                                          [w = weak_from_this(), lease](http_reply& r) {
                                              auto self = w.lock();
                                              if (!self || self->finished) return;
                                              self->asking.erase(lease);
                                              std::int64_t ttl = -1;
                                              std::string why;
                                              if (auto ec = decode_time_to_live(r, ttl, why))
                                                  return self->fail(r.endpoint, ec, why);
                                              self->ttl_of[lease] = ttl;
                                              self->ask_leases();
                                          });
        }
        if (asking.empty() && next == leases.size()) succeed();
    }

    void succeed() {
        for (auto* v : {&st.holders, &st.waiters})
            for (auto& p : *v)
                if (const auto it = ttl_of.find(p.lease); it != ttl_of.end() && it->second >= 0)
                    p.ttl = std::chrono::seconds(it->second);
        inspect_result r;
        r.status = std::move(st);
        deliver(std::move(r));
    }

    void fail(const std::string& endpoint, std::error_code ec, const std::string& why) {
        std::string m = "filelock: etcd at " + (endpoint.empty() ? s.http().endpoint() : endpoint) +
                        (changed ? ": cannot watch " : ": cannot inspect ") + name + ": " +
                        ec.message();
        if (!why.empty() && why != ec.message()) m += " (" + why + ")";
        finish(ec, std::move(m));
    }

    void cancel(std::error_code code) {
        if (finished) return;
        finish(code, "filelock: etcd " + std::string(changed ? "watch " : "inspect ") + name +
                         ": cancelled");
    }

    void finish(std::error_code ec, std::string message) {
        if (changed) {
            change_result r;
            r.ec = ec;
            r.message = std::move(message);
            return deliver_change(std::move(r));
        }
        inspect_result r;
        r.ec = ec;
        r.message = std::move(message);
        deliver(std::move(r));
    }

    // Drops the requests; the operation is over.
    std::shared_ptr<inspect_op> end() {
        finished = true;
        if (range_request) s.http().cancel(std::exchange(range_request, 0));
        if (watch) s.http().cancel(std::exchange(watch, 0));
        for (auto& [lease, req] : asking) s.http().cancel(req);
        asking.clear();
        auto self = shared_from_this();
        s.inspect_finished(id);
        return self;
    }

    // Never inline: posted, whatever the path that got here.
    void deliver(inspect_result r) {
        auto self = end();
        auto rp = std::make_shared<inspect_result>(std::move(r));
        s.loop().post([self, rp] { self->done(std::move(*rp)); });
    }
    void deliver_change(change_result r) {
        auto self = end();
        auto rp = std::make_shared<change_result>(std::move(r));
        s.loop().post([self, rp] { self->changed(std::move(*rp)); });
    }
};

void cancel_inspect(inspect_op& op, std::error_code code) { op.cancel(code); }

std::uint64_t session::inspect(std::string name, std::function<void(inspect_result)> done) {
    const auto id = next_op_++;
    auto op = std::make_shared<inspect_op>(*this, id, std::move(name), std::move(done));
    if (op->name.empty()) {
        inspect_result r;
        r.ec = errc::invalid_argument;
        r.message = "filelock: etcd inspect: the name is empty";
        op->deliver(std::move(r));
        return id;
    }
    op->keep = shared_from_this();
    inspects_.emplace(id, op);
    op->start();
    return id;
}

std::uint64_t session::wait_change(std::string name, std::int64_t after,
                                   std::function<void(change_result)> done) {
    const auto id = next_op_++;
    auto op = std::make_shared<inspect_op>(*this, id, std::move(name), after, std::move(done));
    if (op->name.empty() || after < 0) {
        op->finish(errc::invalid_argument,
                   op->name.empty() ? "filelock: etcd watch: the name is empty"
                                    : "filelock: etcd watch " + op->name + ": a negative revision");
        return id;
    }
    op->keep = shared_from_this();
    inspects_.emplace(id, op);
    op->start();
    return id;
}

void session::with_token(std::function<void(std::error_code, const std::string&)> f) {
    if (cfg_.user.empty() || http_.has_token()) {
        reactor_->post([f = std::move(f)] { f({}, {}); });
        return;
    }
    http_.post("/v3/auth/authenticate", request::authenticate(cfg_.user, cfg_.password),
               [w = weak_from_this(), f = std::move(f)](http_reply& r) {
                   auto self = w.lock();
                   if (!self) return;
                   std::string token, why;
                   const auto ec = parse_token(r, token, why);
                   if (!ec) self->http_.set_token(std::move(token));
                   f(ec, why);
               });
}

std::uint64_t session_handle::inspect(std::string name,
                                      std::function<void(etcd::inspect_result)> done) {
    return s_->inspect(std::move(name), std::move(done));
}

std::uint64_t session_handle::wait_change(std::string name, std::int64_t revision,
                                          std::function<void(etcd::change_result)> done) {
    return s_->wait_change(std::move(name), revision, std::move(done));
}

}  // namespace filelock::etcd::detail
