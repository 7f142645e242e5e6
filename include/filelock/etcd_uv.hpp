// SPDX-License-Identifier: MIT
#pragma once

// etcd locks on libuv (the library filelock-etcd-uv):
//
//     filelock::etcd::uv_client etcd(loop, cfg);
//     etcd.async_lock("jobs/nightly", 5s, [](filelock::etcd::lock_result r) { ... });
//     // or, in a coroutine:
//     filelock::etcd::lock l = co_await etcd.lock("jobs/nightly", 5s, stop_token);
//
// The client's HTTP requests (libcurl's multi interface on uv_poll_t and
// uv_timer_t handles) and its lease's keep-alives run on the loop: it must
// run while locks are held. Use the client and its locks on the loop's
// thread; `request::cancel` and a stop_token may come from any thread.
// Handles are freed in their close callbacks: once the client and its locks
// are gone and the loop ran dry, `uv_loop_close()` returns 0.

#include <filelock/etcd.hpp>

#include <coroutine>
#include <memory>
#include <optional>
#include <stop_token>

#include <uv.h>

namespace filelock::etcd {

/// A client of etcd on a uv loop: one session (one lease, kept alive every
/// TTL/3 on the loop) shared by all its locks.
class FILELOCK_API uv_client {
public:
    /// Throws std::system_error (etcd::errc::invalid_argument) on a bad
    /// configuration, with the cause.
    uv_client(uv_loop_t* loop, const config& cfg);
    /// Cancels the pending acquisitions; the lease is revoked once the locks
    /// it granted are released.
    ~uv_client();
    uv_client(const uv_client&) = delete;
    uv_client& operator=(const uv_client&) = delete;

    /// A pending acquisition.
    class request {
    public:
        request() = default;
        /// It completes with std::errc::operation_canceled (which matches
        /// filelock::condition::cancelled), its key deleted; from any thread;
        /// no-op once completed.
        void cancel() const;

    private:
        friend class uv_client;
        request(std::weak_ptr<detail::session_handle> s, std::uint64_t id) : s_(s), id_(id) {}
        std::weak_ptr<detail::session_handle> s_;
        std::uint64_t id_ = 0;
    };

    /// Acquires `name` within `timeout` (<= 0: one attempt). `callback` runs
    /// once on the loop, never inline, with the lock or the error and its
    /// message (contention at the deadline: filelock::errc::timeout).
    request async_lock(std::string name, std::chrono::nanoseconds timeout,
                       std::function<void(lock_result)> callback);
    /// As above, for the kind of lock `opts` asks for (shared, slots).
    request async_lock(std::string name, std::chrono::nanoseconds timeout, const lock_options& opts,
                       std::function<void(lock_result)> callback);

    /// Reads who holds `name` and who waits for it, taking nothing (no
    /// lease, no key): see etcd::lock_status. `callback` runs once on the
    /// loop, never inline, with the status or the error and its message
    /// (the endpoint and the cause; cancelled: std::errc::operation_canceled).
    request async_inspect(std::string name, std::function<void(inspect_result)> callback);

    /// Waits for the next change under `name` after `revision` (an
    /// inspection's lock_status::revision; see client::async_wait_change in
    /// <filelock/etcd_asio.hpp>). `callback` runs once on the loop, never
    /// inline, with the revision of the change or the error and its message.
    request async_wait_change(std::string name, std::int64_t revision,
                              std::function<void(change_result)> callback);

    /// The awaitable form for any C++20 coroutine: returns the lock; throws
    /// timeout_error naming the holder, or std::system_error (the endpoint
    /// and the cause; a stop request: std::errc::operation_canceled).
    class awaitable {
    public:
        /// What uv_client::lock returns.
        awaitable(uv_client& c, std::string name, std::chrono::nanoseconds timeout,
                  lock_options opts, std::stop_token stop)
            : c_(c),
              name_(std::move(name)),
              timeout_(timeout),
              opts_(opts),
              stop_(std::move(stop)) {}
        awaitable(awaitable&&) = delete;
        /// Never ready: the acquisition starts on suspension.
        bool await_ready() const noexcept { return false; }
        /// Starts the acquisition; resumes `h` on the loop.
        void await_suspend(std::coroutine_handle<> h) {
            h_ = h;
            req_ = c_.async_lock(name_, timeout_, opts_, [this](lock_result r) {
                r_ = std::move(r);
                h_.resume();
            });
            if (stop_.stop_possible()) stop_cb_.emplace(stop_, canceller{req_});
        }
        /// The lock, or the exception (see uv_client::lock).
        etcd::lock await_resume() {
            stop_cb_.reset();
            if (r_.ec == filelock::errc::timeout) throw timeout_error(r_.name, r_.holder);
            if (r_.ec == filelock::errc::locked) throw lock_error(r_.name, r_.holder);
            if (r_.ec) throw std::system_error(r_.ec, r_.message);
            return std::move(r_.held);
        }

    private:
        struct canceller {
            request req;
            void operator()() const noexcept {
                try {
                    req.cancel();
                } catch (...) {
                }
            }
        };
        uv_client& c_;
        std::string name_;
        std::chrono::nanoseconds timeout_;
        lock_options opts_;
        std::stop_token stop_;
        std::coroutine_handle<> h_;
        request req_;
        std::optional<std::stop_callback<canceller>> stop_cb_;
        lock_result r_;
    };

    /// `co_await client.lock(name, timeout, stop)` (see awaitable).
    awaitable lock(std::string name, std::chrono::nanoseconds timeout, std::stop_token stop = {}) {
        return {*this, std::move(name), timeout, lock_options{}, std::move(stop)};
    }
    /// `co_await client.lock(name, timeout, opts, stop)`: of the kind `opts`
    /// asks for.
    awaitable lock(std::string name, std::chrono::nanoseconds timeout, lock_options opts,
                   std::stop_token stop = {}) {
        return {*this, std::move(name), timeout, opts, std::move(stop)};
    }

    /// Requests sent so far (benchmarks; watch streams not counted).
    std::uint64_t requests() const noexcept;
    /// Watch streams opened so far (benchmarks).
    std::uint64_t watches() const noexcept;

private:
    std::shared_ptr<detail::session_handle> s_;
};

}  // namespace filelock::etcd
