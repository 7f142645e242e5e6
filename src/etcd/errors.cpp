// SPDX-License-Identifier: MIT
// The etcd error category and the configuration's check.
#include <filelock/detail/file_backend.hpp>
#include <filelock/etcd.hpp>

#include "../file/content.hpp"

namespace filelock::etcd {

namespace {

class category_impl : public std::error_category {
public:
    const char* name() const noexcept override { return "filelock.etcd"; }
    std::string message(int v) const override {
        switch (static_cast<errc>(v)) {
            case errc::lost: return "the lock was lost";
            case errc::unreachable: return "no etcd endpoint could be reached";
            case errc::request_timeout: return "the request to etcd timed out";
            case errc::tls: return "TLS failed";
            case errc::http_status: return "etcd answered with an HTTP error";
            case errc::server: return "etcd reported an error";
            case errc::auth: return "etcd authentication failed";
            case errc::bad_reply: return "etcd's answer was malformed";
            case errc::invalid_argument: return "invalid argument";
            case errc::connection_reset: return "the connection to etcd was reset";
        }
        return "unknown etcd error";
    }
    std::error_condition default_error_condition(int v) const noexcept override {
        switch (static_cast<errc>(v)) {
            case errc::unreachable: return std::errc::host_unreachable;
            case errc::request_timeout: return std::errc::timed_out;
            case errc::invalid_argument: return std::errc::invalid_argument;
            case errc::connection_reset: return std::errc::connection_reset;
            default: return {v, *this};
        }
    }
};

}  // namespace

const std::error_category& etcd_category() noexcept {
    static const category_impl c;
    return c;
}

std::error_code validate(const config& cfg, std::string& why) {
    if (cfg.endpoints.empty()) {
        why = "no etcd endpoint";
        return errc::invalid_argument;
    }
    for (const auto& e : cfg.endpoints) {
        if (e.rfind("http://", 0) != 0 && e.rfind("https://", 0) != 0) {
            why = "the endpoint '" + e + "' is not http:// or https://";
            return errc::invalid_argument;
        }
    }
    if (cfg.ttl < std::chrono::seconds(1)) {
        why = "the lease TTL must be at least 1 s";
        return errc::invalid_argument;
    }
    std::string value;
    if (!cfg.content.empty()) {
        if (auto ec = filelock::detail::expand_content(cfg.content, value)) {
            why = "the content template '" + cfg.content + "' is invalid";
            return ec;
        }
    }
    return {};
}

}  // namespace filelock::etcd
