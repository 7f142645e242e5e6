// SPDX-License-Identifier: MIT
#include "transport.hpp"

#include "proto.hpp"

#include <algorithm>
#include <mutex>
#include <vector>

namespace filelock::etcd::detail {

namespace {

// curl_global_init is not thread-safe before libcurl 7.84: once per process.
void global_init() {
    static std::once_flag once;
    std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// Failures where nothing reached the server: the next endpoint may answer.
bool connect_failure(CURLcode c) {
    switch (c) {
        case CURLE_COULDNT_CONNECT:
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_COULDNT_RESOLVE_PROXY: return true;
        default: return false;
    }
}

std::error_code map_curl(CURLcode c, bool connected) {
    switch (c) {
        case CURLE_OK: return {};
        case CURLE_OPERATION_TIMEDOUT: return connected ? errc::request_timeout : errc::unreachable;
        case CURLE_SSL_CONNECT_ERROR:
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_CERTPROBLEM:
        case CURLE_SSL_CIPHER:
        case CURLE_SSL_CACERT_BADFILE:
        case CURLE_SSL_ISSUER_ERROR:
        case CURLE_SSL_CRL_BADFILE: return errc::tls;
        case CURLE_OUT_OF_MEMORY: return std::make_error_code(std::errc::not_enough_memory);
        // The member was reached, and the connection ended before its whole
        // answer: nothing malformed came.
        case CURLE_GOT_NOTHING:
        case CURLE_RECV_ERROR:
        case CURLE_SEND_ERROR:
        case CURLE_PARTIAL_FILE: return errc::connection_reset;
        default: return errc::unreachable;
    }
}

}  // namespace

struct transport::request {
    transport* owner = nullptr;
    std::uint64_t id = 0;
    std::string path, body;
    done_fn done;
    chunk_fn chunk;
    CURL* easy = nullptr;
    curl_slist* headers = nullptr;
    http_reply reply;
    std::size_t tries = 0;
    bool got_bytes = false;
    bool reauthenticated = false;
    bool anonymous = false;
    std::chrono::milliseconds
        timeout{};  // 0: the configured ones  // sent without the token (authentication itself)
    std::string pending;  // a stream's bytes, delivered after curl returns
    char error[CURL_ERROR_SIZE] = {};

    ~request() {
        if (easy) curl_easy_cleanup(easy);
        if (headers) curl_slist_free_all(headers);
    }
};

transport::transport(reactor& r, const config& cfg) : reactor_(r), cfg_(cfg) {
    global_init();
    multi_ = curl_multi_init();
    if (!multi_) throw std::system_error(std::make_error_code(std::errc::not_enough_memory));
    timer_ = reactor_.make_timer();
    curl_multi_setopt(multi_, CURLMOPT_SOCKETFUNCTION, &transport::on_socket);
    curl_multi_setopt(multi_, CURLMOPT_SOCKETDATA, this);
    curl_multi_setopt(multi_, CURLMOPT_TIMERFUNCTION, &transport::on_timer);
    curl_multi_setopt(multi_, CURLMOPT_TIMERDATA, this);
}

transport::~transport() {
    for (auto& [id, r] : requests_) {
        if (r->easy) curl_multi_remove_handle(multi_, r->easy);
    }
    requests_.clear();
    curl_multi_cleanup(multi_);  // closes the sockets: their watches go first
    socks_.clear();
    timer_.reset();
}

std::uint64_t transport::post(std::string path, std::string body, done_fn done, chunk_fn chunk,
                              std::chrono::milliseconds timeout) {
    auto r = std::make_unique<request>();
    r->owner = this;
    r->id = next_id_++;
    r->path = std::move(path);
    r->body = std::move(body);
    r->done = std::move(done);
    r->chunk = std::move(chunk);
    r->timeout = timeout;
    auto& ref = *r;
    requests_.emplace(ref.id, std::move(r));
    // Never complete inline: the first step runs from the loop.
    const auto id = ref.id;
    reactor_.post([this, id, alive = alive_token()] {
        if (alive.expired()) return;
        auto it = requests_.find(id);
        if (it != requests_.end() && !it->second->easy) start(*it->second);
    });
    return id;
}

void transport::start(request& r) {
    if (!r.chunk) ++sent_;  // streams are counted by their owners
    if (r.easy) {
        curl_multi_remove_handle(multi_, r.easy);
        curl_easy_cleanup(r.easy);
    }
    if (r.headers) curl_slist_free_all(r.headers);
    r.headers = nullptr;
    r.easy = curl_easy_init();
    r.got_bytes = false;
    r.error[0] = 0;
    r.reply = {};
    r.reply.endpoint = endpoint();
    if (!r.easy) {
        r.reply.ec = std::make_error_code(std::errc::not_enough_memory);
        const auto id = r.id;
        reactor_.post([this, id, alive = alive_token()] {
            if (alive.expired()) return;
            auto it = requests_.find(id);
            if (it == requests_.end()) return;
            auto req = std::move(it->second);
            requests_.erase(it);
            req->done(req->reply);
        });
        return;
    }
    CURL* e = r.easy;
    const std::string url = endpoint() + r.path;
    r.headers = curl_slist_append(r.headers, "Content-Type: application/json");
    if (!token_.empty() && !r.anonymous)
        r.headers = curl_slist_append(r.headers, ("Authorization: " + token_).c_str());
    curl_easy_setopt(e, CURLOPT_URL, url.c_str());
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r.headers);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, r.body.c_str());
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, static_cast<long>(r.body.size()));
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &transport::on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(e, CURLOPT_PRIVATE, &r);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r.error);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    auto dial = cfg_.dial_timeout, whole = cfg_.dial_timeout + cfg_.request_timeout;
    if (r.timeout.count() > 0) {
        dial = std::min(dial, r.timeout);
        whole = std::min(whole, r.timeout);
    }
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(dial.count()));
    if (!r.chunk)
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, static_cast<long>(whole.count()));
    else  // a stream: a dead peer shows as a connection without traffic
        curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    if (!cfg_.ca_file.empty()) curl_easy_setopt(e, CURLOPT_CAINFO, cfg_.ca_file.c_str());
    if (!cfg_.cert_file.empty()) curl_easy_setopt(e, CURLOPT_SSLCERT, cfg_.cert_file.c_str());
    if (!cfg_.key_file.empty()) curl_easy_setopt(e, CURLOPT_SSLKEY, cfg_.key_file.c_str());
    if (curl_multi_add_handle(multi_, e) != CURLM_OK) {
        r.reply.ec = std::make_error_code(std::errc::not_enough_memory);
    }
}

void transport::cancel(std::uint64_t id) noexcept {
    auto it = requests_.find(id);
    if (it == requests_.end()) return;
    if (it->second->easy) curl_multi_remove_handle(multi_, it->second->easy);
    requests_.erase(it);
}

void transport::drop_all() noexcept {
    auto requests = std::move(requests_);
    requests_.clear();
    for (auto& [id, r] : requests)
        if (r->easy) curl_multi_remove_handle(multi_, r->easy);
    // `requests` goes last: its callbacks' captures may hold this transport's
    // owner, and nothing of `this` is touched after.
}

std::size_t transport::on_write(char* p, std::size_t, std::size_t n, void* rp) {
    auto& r = *static_cast<request*>(rp);
    r.got_bytes = true;
    if (r.chunk) {
        long status = 0;
        curl_easy_getinfo(r.easy, CURLINFO_RESPONSE_CODE, &status);
        if (status >= 200 && status < 300) {
            // Delivered once curl_multi_socket_action returned: the consumer
            // may then cancel requests.
            r.pending.append(p, n);
            return n;
        }
    }
    if (r.reply.body.size() + n > (16u << 20)) return 0;  // not an etcd answer: stop
    r.reply.body.append(p, n);
    return n;
}

int transport::on_socket(CURL*, curl_socket_t fd, int what, void* self, void*) {
    auto& t = *static_cast<transport*>(self);
    if (what == CURL_POLL_REMOVE) {
        t.socks_.erase(fd);
        return 0;
    }
    auto& s = t.socks_[fd];
    if (!s) s = t.reactor_.make_socket(static_cast<reactor::native_socket>(fd));
    const bool rd = what == CURL_POLL_IN || what == CURL_POLL_INOUT;
    const bool wr = what == CURL_POLL_OUT || what == CURL_POLL_INOUT;
    s->want(rd, wr, [&t, fd](bool readable, bool writable) {
        t.drive(fd, (readable ? CURL_CSELECT_IN : 0) | (writable ? CURL_CSELECT_OUT : 0));
    });
    return 0;
}

int transport::on_timer(CURLM*, long ms, void* self) {
    auto& t = *static_cast<transport*>(self);
    if (ms < 0) {
        t.timer_->cancel();
        return 0;
    }
    t.timer_->arm(std::chrono::steady_clock::now() + std::chrono::milliseconds(ms),
                  [&t] { t.drive(CURL_SOCKET_TIMEOUT, 0); });
    return 0;
}

void transport::drive(curl_socket_t fd, int flags) {
    int running = 0;
    auto alive = alive_token();
    curl_multi_socket_action(multi_, fd, flags, &running);
    if (!alive.expired()) deliver_chunks();
    if (!alive.expired()) finished();
}

void transport::deliver_chunks() {
    std::vector<std::uint64_t> ids;
    for (auto& [id, r] : requests_)
        if (!r->pending.empty()) ids.push_back(id);
    auto alive = alive_token();
    for (auto id : ids) {
        auto it = requests_.find(id);
        if (it == requests_.end()) continue;
        std::string data = std::move(it->second->pending);
        it->second->pending.clear();
        auto chunk = it->second->chunk;  // the request may go in the call
        chunk(data);
        if (alive.expired()) return;
    }
}

void transport::finished() {
    // Gather first, call back after: a callback may destroy this transport
    // (it may hold the session's last reference), so nothing of `this` is
    // touched once callbacks begin.
    std::vector<std::unique_ptr<request>> done;
    int left = 0;
    while (CURLMsg* m = curl_multi_info_read(multi_, &left)) {
        if (m->msg != CURLMSG_DONE) continue;
        request* rp = nullptr;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &rp);
        const CURLcode code = m->data.result;
        auto it = requests_.find(rp->id);
        if (it == requests_.end()) continue;
        auto& r = *it->second;
        if (connect_failure(code) && !r.got_bytes && ++r.tries < cfg_.endpoints.size()) {
            // Nothing reached this endpoint: the next one may answer.
            current_ = (current_ + 1) % cfg_.endpoints.size();
            start(r);
            continue;
        }
        // A member that failed without a whole answer (gone mid-request,
        // timed out, paused): the next request tries the next endpoint.
        if (code != CURLE_OK) current_ = (current_ + 1) % cfg_.endpoints.size();
        curl_off_t connected_us = 0;
        curl_easy_getinfo(r.easy, CURLINFO_CONNECT_TIME_T, &connected_us);
        r.reply.ec = map_curl(code, r.got_bytes || connected_us > 0);
        if (code != CURLE_OK) r.reply.detail = r.error[0] ? r.error : curl_easy_strerror(code);
        curl_easy_getinfo(r.easy, CURLINFO_RESPONSE_CODE, &r.reply.status);
        if (reauthenticate(r)) continue;
        curl_multi_remove_handle(multi_, r.easy);
        done.push_back(std::move(it->second));
        requests_.erase(it);
    }
    auto alive = alive_token();
    for (auto& r : done) {
        if (alive.expired()) break;  // the rest are dropped with the transport
        r->done(r->reply);
        r.reset();  // its callback's captures go now, while `alive` is checked next
    }
}

bool transport::reauthenticate(request& r) {
    if (token_.empty() || cfg_.user.empty() || r.reauthenticated || !token_refused(r.reply))
        return false;
    r.reauthenticated = true;
    curl_multi_remove_handle(multi_, r.easy);
    after_auth_.push_back(r.id);
    if (authenticating_) return true;  // one authentication for all
    authenticating_ = true;
    const auto id =
        post("/v3/auth/authenticate", detail::request::authenticate(cfg_.user, cfg_.password),
             [this](http_reply& a) { authenticated(a); });
    requests_[id]->anonymous = true;  // the refused token would refuse it too
    return true;
}

void transport::authenticated(http_reply& a) {
    authenticating_ = false;
    const json j = a.ec ? json() : json::parse(a.body, nullptr, false);
    const bool ok = a.status == 200 && j.is_object() && j.contains("token") &&
                    j["token"].is_string() && !j["token"].get_ref<const std::string&>().empty();
    if (ok) token_ = j["token"].get<std::string>();
    auto ids = std::move(after_auth_);
    after_auth_.clear();
    std::vector<std::unique_ptr<request>> refused;
    for (auto id : ids) {
        auto it = requests_.find(id);
        if (it == requests_.end()) continue;  // cancelled meanwhile
        if (ok) {
            start(*it->second);
        } else {
            refused.push_back(std::move(it->second));
            requests_.erase(it);
        }
    }
    // Authentication failed: the requests end with the refusal they got.
    auto alive = alive_token();
    for (auto& r : refused) {
        if (alive.expired()) break;
        r->done(r->reply);
        r.reset();
    }
}

}  // namespace filelock::etcd::detail
