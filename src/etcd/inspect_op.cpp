// SPDX-License-Identifier: MIT
// One inspection (inspect_op): reads the keys under NAME/ by create revision
// in one range request, sorts them into holders and waiters (inspect.hpp),
// then asks etcd for the TTL left of each lease they are bound to. It takes
// nothing: no lease, no key, no watch.
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

    void start() {
        s.with_token([w = weak_from_this()](std::error_code ec, const std::string& why) {
            auto self = w.lock();
            if (!self || self->finished) return;
            if (ec) return self->fail(self->s.http().endpoint(), ec, why);
            self->read_keys();
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
        inspect_result r;
        r.ec = ec;
        r.message = "filelock: etcd at " + (endpoint.empty() ? s.http().endpoint() : endpoint) +
                    ": cannot inspect " + name + ": " + ec.message();
        if (!why.empty() && why != ec.message()) r.message += " (" + why + ")";
        deliver(std::move(r));
    }

    void cancel(std::error_code code) {
        if (finished) return;
        inspect_result r;
        r.ec = code;
        r.message = "filelock: etcd inspect " + name + ": cancelled";
        deliver(std::move(r));
    }

    void deliver(inspect_result r) {
        finished = true;
        if (range_request) s.http().cancel(std::exchange(range_request, 0));
        for (auto& [lease, req] : asking) s.http().cancel(req);
        asking.clear();
        auto self = shared_from_this();
        s.inspect_finished(id);
        // Never inline: posted, whatever the path that got here.
        auto rp = std::make_shared<inspect_result>(std::move(r));
        s.loop().post([self, rp] { self->done(std::move(*rp)); });
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

void session::with_token(std::function<void(std::error_code, const std::string&)> f) {
    if (cfg_.user.empty() || http_.has_token()) {
        reactor_->post([f = std::move(f)] { f({}, {}); });
        return;
    }
    http_.post("/v3/auth/authenticate", request::authenticate(cfg_.user, cfg_.password),
               [w = weak_from_this(), f = std::move(f)](http_reply& r) {
                   auto self = w.lock();
                   if (!self) return;
                   json j;
                   std::string why;
                   auto ec = parse(r, j, why);
                   if (!ec && (!j.contains("token") || !j["token"].is_string())) {
                       ec = errc::bad_reply;
                       why = "no token in the answer";
                   }
                   if (!ec) self->http_.set_token(j["token"].get<std::string>());
                   f(ec, why);
               });
}

std::uint64_t session_handle::inspect(std::string name,
                                      std::function<void(etcd::inspect_result)> done) {
    return s_->inspect(std::move(name), std::move(done));
}

}  // namespace filelock::etcd::detail
