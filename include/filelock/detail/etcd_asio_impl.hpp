// SPDX-License-Identifier: MIT
// No #pragma once: the etcd client's Asio forms, one implementation compiled
// once per Asio flavour, as detail/asio_impl.hpp is (see there):
// <filelock/etcd_asio.hpp> and <filelock/etcd_boost_asio.hpp> include their
// flavour's header, define FILELOCK_DETAIL_ASIO_FLAVOUR and include this
// file, which undefines it. The names are the flavour's
// (filelock::etcd::boost_asio::client, ...); the session, the protocol and
// the transport are libfilelock-etcd's, shared by both.
// Included on its own (no flavour chosen), it declares nothing.

#if defined(FILELOCK_DETAIL_ASIO_FLAVOUR)

#include <filelock/detail/etcd_session.hpp>
#include <filelock/etcd.hpp>

#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>

namespace filelock::etcd {
inline namespace FILELOCK_DETAIL_ASIO_FLAVOUR {
namespace asio_detail {

namespace net = filelock::FILELOCK_DETAIL_ASIO_FLAVOUR::asio_detail::net;
using filelock::FILELOCK_DETAIL_ASIO_FLAVOUR::asio_detail::error_code;
using filelock::FILELOCK_DETAIL_ASIO_FLAVOUR::asio_detail::operation_aborted;
using filelock::FILELOCK_DETAIL_ASIO_FLAVOUR::asio_detail::to_net_error;

/// Tells the etcd sessions of an execution context that it shuts down.
class shutdown_registry final : public net::execution_context::service {
public:
    using key_type = shutdown_registry;
    static inline net::execution_context::id id;
    explicit shutdown_registry(net::execution_context& ctx)
        : net::execution_context::service(ctx) {}
    std::uint64_t add(std::function<void()> f) {
        std::lock_guard<std::mutex> g(m_);
        fs_.emplace(++next_, std::move(f));
        return next_;
    }
    void remove(std::uint64_t k) {
        std::lock_guard<std::mutex> g(m_);
        fs_.erase(k);
    }

private:
    void shutdown() override {
        std::map<std::uint64_t, std::function<void()>> fs;
        {
            std::lock_guard<std::mutex> g(m_);
            fs.swap(fs_);
        }
        for (auto& [k, f] : fs) f();
    }
    std::mutex m_;
    std::map<std::uint64_t, std::function<void()>> fs_;
    std::uint64_t next_ = 0;
};

/// The reactor of the etcd core on an Asio executor.
class asio_reactor final : public detail::reactor {
public:
    explicit asio_reactor(net::any_io_executor ex)
        : ex_(std::move(ex)),
          registry_(
              &net::use_service<shutdown_registry>(net::query(ex_, net::execution::context))) {}
    ~asio_reactor() override {
        if (key_) registry_->remove(key_);
    }
    void on_shutdown(std::function<void()> f) override { key_ = registry_->add(std::move(f)); }

    std::unique_ptr<timer> make_timer() override { return std::make_unique<timer_impl>(ex_); }
    std::unique_ptr<socket> make_socket(native_socket fd) override {
        return std::make_unique<socket_impl>(ex_, fd);
    }
    void post(std::function<void()> f) override { net::post(ex_, std::move(f)); }

private:
    class timer_impl final : public timer {
    public:
        explicit timer_impl(const net::any_io_executor& ex) : st_(std::make_shared<state>(ex)) {}
        ~timer_impl() override { cancel(); }
        void arm(time_point when, std::function<void()> f) override {
            const auto gen = ++st_->gen;
            st_->f = std::move(f);
            st_->t.expires_at(when);
            st_->t.async_wait([st = st_, gen](error_code) {
                if (st->gen != gen) return;  // cancelled or re-armed since
                auto call = std::move(st->f);
                st->f = nullptr;
                ++st->gen;
                call();  // may destroy the timer: `st` keeps the state
            });
        }
        void cancel() override {
            ++st_->gen;
            st_->f = nullptr;
            st_->t.cancel();
        }

    private:
        struct state {
            explicit state(const net::any_io_executor& ex) : t(ex) {}
            net::steady_timer t;
            std::function<void()> f;
            unsigned gen = 0;
        };
        std::shared_ptr<state> st_;
    };

    class socket_impl final : public socket {
    public:
        socket_impl(const net::any_io_executor& ex, native_socket fd)
            : st_(std::make_shared<state>(ex, fd)) {}
        ~socket_impl() override {
            st_->alive = false;
            st_->f = nullptr;
            error_code ec;
            st_->sd.cancel(ec);
            st_->sd.release();  // the descriptor is libcurl's: never closed here
        }
        void want(bool read, bool write, std::function<void(bool, bool)> f) override {
            st_->f = std::move(f);
            st_->read = read;
            st_->write = write;
            arm(st_, net::posix::stream_descriptor::wait_read);
            arm(st_, net::posix::stream_descriptor::wait_write);
        }

    private:
        struct state {
            state(const net::any_io_executor& ex, native_socket fd) : sd(ex, fd) {}
            net::posix::stream_descriptor sd;
            std::function<void(bool, bool)> f;
            bool read = false, write = false;
            bool reading = false, writing = false;  // a wait is pending
            bool alive = true;
        };
        static void arm(const std::shared_ptr<state>& st,
                        net::posix::stream_descriptor::wait_type type) {
            const bool rd = type == net::posix::stream_descriptor::wait_read;
            bool& pending = rd ? st->reading : st->writing;
            if (pending || !(rd ? st->read : st->write)) return;
            pending = true;
            st->sd.async_wait(type, [st, type, rd](error_code ec) {
                (rd ? st->reading : st->writing) = false;
                if (!st->alive || ec == net::error::operation_aborted) return;
                if (!(rd ? st->read : st->write)) return;
                auto call = st->f;  // the call may change or drop the watch
                call(rd, !rd);
                if (st->alive) arm(st, type);
            });
        }
        std::shared_ptr<state> st_;
    };

    net::any_io_executor ex_;
    shutdown_registry* registry_;
    std::uint64_t key_ = 0;
};

}  // namespace asio_detail

/// Waits until `held` is lost (see <filelock/etcd.hpp>).
///
/// Completion signature: `void(error_code reason)` (std::error_code on
/// standalone Asio, boost::system::error_code on Boost.Asio): etcd::errc::lost
/// when ownership can no longer be guaranteed; `asio::error::operation_aborted`
/// when the lock is released first or the wait is cancelled (both match
/// filelock::condition::cancelled). Per-operation cancellation: terminal.
/// The handler runs on its associated executor (default: `ex`, normally the
/// client's), never inline.
template <class Executor, class CompletionToken>
auto async_wait_lost(const Executor& ex, lock& held, CompletionToken&& token) {
    return asio_detail::net::async_initiate<CompletionToken, void(asio_detail::error_code)>(
        [&held, fallback = ex](auto handler) {
            using handler_t = std::decay_t<decltype(handler)>;
            auto work = asio_detail::net::prefer(
                asio_detail::net::get_associated_executor(handler, fallback),
                asio_detail::net::execution::outstanding_work.tracked);
            auto slot = asio_detail::net::get_associated_cancellation_slot(handler);
            auto h = std::make_shared<std::optional<handler_t>>(std::move(handler));
            auto fire = [h, work](std::error_code ec) {
                if (!h->has_value()) return;
                if (ec == std::errc::operation_canceled) ec = asio_detail::operation_aborted();
                auto call = [h, ec]() mutable {
                    if (!h->has_value()) return;
                    auto done = std::move(**h);
                    h->reset();
                    asio_detail::net::get_associated_cancellation_slot(done).clear();
                    std::move(done)(asio_detail::to_net_error(ec));
                };
                asio_detail::net::post(work, std::move(call));
            };
            if (!held.held()) return fire(asio_detail::operation_aborted());
            if (slot.is_connected())
                slot.assign([fire](asio_detail::net::cancellation_type t) {
                    if (t != asio_detail::net::cancellation_type::none)
                        fire(asio_detail::operation_aborted());
                });
            held.on_lost(fire);
        },
        token);
}

/// A client of etcd on an Asio executor: one session (one lease, kept alive
/// every TTL/3) shared by all its locks. Destroying it cancels its pending
/// acquisitions; its lease is revoked once the locks it granted are
/// released. Destroy it, and its locks, before the execution context.
class client {
public:
    /// The executor its requests and timers run on.
    using executor_type = asio_detail::net::any_io_executor;

    /// Throws std::system_error (etcd::errc::invalid_argument) on a bad
    /// configuration, with the cause.
    client(executor_type ex, const config& cfg)
        : ex_(ex),
          s_(std::make_shared<detail::session_handle>(
              std::make_unique<asio_detail::asio_reactor>(ex), cfg)) {}

    /// The client's executor.
    executor_type get_executor() const noexcept { return ex_; }

    /// Acquires the lock `name` within `timeout` (<= 0: one attempt), of the
    /// kind `opts` asks for (another overload: the default, etcd's Mutex).
    ///
    /// Completion signature: `void(error_code ec, etcd::lock lock)`, with
    /// Asio's error_code (boost::system::error_code on Boost.Asio);
    /// contention at the deadline is filelock::errc::timeout, cancellation
    /// `asio::error::operation_aborted`, other failures the etcd::errc or
    /// system error at once. Per-operation cancellation: terminal, partial
    /// and total (nothing is left in etcd: a key created is deleted before
    /// the name is free for this client again). The handler runs on its
    /// associated executor, never inline. Call on the client's executor.
    template <class CompletionToken>
    auto async_lock(std::string name, std::chrono::nanoseconds timeout, CompletionToken&& token) {
        return async_lock(std::move(name), timeout, lock_options{},
                          std::forward<CompletionToken>(token));
    }
    /// As above, for the kind of lock `opts` asks for (shared, slots).
    template <class CompletionToken>
    auto async_lock(std::string name, std::chrono::nanoseconds timeout, lock_options opts,
                    CompletionToken&& token) {
        return asio_detail::net::async_initiate<CompletionToken,
                                                void(asio_detail::error_code, lock)>(
            initiate{s_, ex_}, token, std::move(name), timeout, opts);
    }

    /// As async_lock, with the completion signature `void(lock_result)`: the
    /// outcome with its message (the endpoint and the cause, or the holder).
    template <class CompletionToken>
    auto async_lock_result(std::string name, std::chrono::nanoseconds timeout,
                           CompletionToken&& token) {
        return async_lock_result(std::move(name), timeout, lock_options{},
                                 std::forward<CompletionToken>(token));
    }
    /// As above, for the kind of lock `opts` asks for.
    template <class CompletionToken>
    auto async_lock_result(std::string name, std::chrono::nanoseconds timeout, lock_options opts,
                           CompletionToken&& token) {
        return asio_detail::net::async_initiate<CompletionToken, void(lock_result)>(
            initiate{s_, ex_}, token, std::move(name), timeout, opts);
    }

    /// The coroutine form: returns the held lock; throws lock_error (a
    /// timeout_error at the deadline) naming the holder, std::system_error
    /// with the endpoint and the cause otherwise.
    asio_detail::net::awaitable<lock> async_lock(std::string name, std::chrono::nanoseconds timeout,
                                                 lock_options opts = {}) {
        auto r = co_await async_lock_result(std::move(name), timeout, opts,
                                            asio_detail::net::use_awaitable);
        throw_if(r);
        co_return std::move(r.held);
    }

    /// Throws what the coroutine form throws for `r` (nothing on success).
    static void throw_if(const lock_result& r) {
        if (r.ec == filelock::errc::timeout) throw timeout_error(r.name, r.holder);
        if (r.ec == filelock::errc::locked) throw lock_error(r.name, r.holder);
        if (r.ec) throw std::system_error(r.ec, r.message);
    }

    /// Reads who holds the lock `name` and who waits for it, taking nothing
    /// (no lease, no key): the keys under `NAME/` by create revision, sorted
    /// by the lock's rules, with their leases' TTL left (see lock_status).
    ///
    /// Completion signature: `void(error_code ec, etcd::lock_status status)`
    /// (Asio's error_code, as async_lock): the etcd::errc or system error,
    /// `asio::error::operation_aborted` when cancelled. Per-operation
    /// cancellation: terminal, partial and total (nothing is left in etcd).
    /// The handler runs on its associated executor, never inline. Call on
    /// the client's executor.
    template <class CompletionToken>
    auto async_inspect(std::string name, CompletionToken&& token) {
        return asio_detail::net::async_initiate<CompletionToken,
                                                void(asio_detail::error_code, lock_status)>(
            initiate_inspect{s_, ex_}, token, std::move(name));
    }
    /// As async_inspect, with the completion signature
    /// `void(inspect_result)`: the outcome with its message (the endpoint
    /// and the cause).
    template <class CompletionToken>
    auto async_inspect_result(std::string name, CompletionToken&& token) {
        return asio_detail::net::async_initiate<CompletionToken, void(inspect_result)>(
            initiate_inspect{s_, ex_}, token, std::move(name));
    }
    /// The coroutine form: returns the status; throws std::system_error
    /// naming the endpoint and the cause.
    asio_detail::net::awaitable<lock_status> async_inspect(std::string name) {
        auto r = co_await async_inspect_result(std::move(name), asio_detail::net::use_awaitable);
        if (r.ec) throw std::system_error(r.ec, r.message);
        co_return std::move(r.status);
    }

    /// Waits for the next change under the lock `name` after `revision` (an
    /// inspection's lock_status::revision): a key created, changed or
    /// deleted under `NAME/` (a holder released, a waiter joined or left). A
    /// watch of the prefix from the next revision: no change in between is
    /// missed, and nothing is taken. Inspect again from the revision it
    /// gives.
    ///
    /// Completion signature: `void(error_code ec, std::int64_t revision)`:
    /// the revision with the change, or the etcd::errc or system error
    /// (`asio::error::operation_aborted` when cancelled). Per-operation
    /// cancellation: terminal, partial and total. The handler runs on its
    /// associated executor, never inline. Call on the client's executor.
    template <class CompletionToken>
    auto async_wait_change(std::string name, std::int64_t revision, CompletionToken&& token) {
        return asio_detail::net::async_initiate<CompletionToken,
                                                void(asio_detail::error_code, std::int64_t)>(
            initiate_change{s_, ex_}, token, std::move(name), revision);
    }
    /// As async_wait_change, with the completion signature
    /// `void(change_result)`: the outcome with its message.
    template <class CompletionToken>
    auto async_wait_change_result(std::string name, std::int64_t revision,
                                  CompletionToken&& token) {
        return asio_detail::net::async_initiate<CompletionToken, void(change_result)>(
            initiate_change{s_, ex_}, token, std::move(name), revision);
    }

    /// Waits until `held` (a lock of this client) is lost: async_wait_lost
    /// on the client's executor.
    template <class CompletionToken>
    auto async_wait_lost(lock& held, CompletionToken&& token) {
        return etcd::async_wait_lost(ex_, held, std::forward<CompletionToken>(token));
    }

    /// Requests sent so far (benchmarks; watch streams not counted).
    std::uint64_t requests() const noexcept { return s_->requests(); }
    /// Watch streams opened so far (benchmarks).
    std::uint64_t watches() const noexcept { return s_->watches(); }
    /// The session's lease (0 before the first lock).
    std::int64_t lease() const noexcept { return s_->lease(); }

private:
    // Runs the session operation `begin(done)` (it returns the operation's
    // id) for `handler`: the result goes to the handler on its executor,
    // whole (a handler taking `Result`) or as its error code and what the
    // capture-less `Value` takes from it; the handler's cancellation slot
    // cancels the operation.
    template <class Result, class Handler, class Begin, class Value>
    static void start(const std::shared_ptr<detail::session_handle>& s, const executor_type& ex,
                      Handler handler, Begin begin, Value) {
        auto work = asio_detail::net::prefer(asio_detail::net::get_associated_executor(handler, ex),
                                             asio_detail::net::execution::outstanding_work.tracked);
        auto slot = asio_detail::net::get_associated_cancellation_slot(handler);
        auto h = std::make_shared<Handler>(std::move(handler));
        const auto id = begin([h, work](Result r) {
            asio_detail::net::get_associated_cancellation_slot(*h).clear();
            asio_detail::net::dispatch(work, [h, r = std::move(r)]() mutable {
                if (r.ec == std::errc::operation_canceled) r.ec = asio_detail::operation_aborted();
                if constexpr (std::is_invocable_v<Handler, Result>) {
                    std::move (*h)(std::move(r));
                } else {
                    std::move (*h)(asio_detail::to_net_error(r.ec), Value{}(r));
                }
            });
        });
        if (slot.is_connected()) {
            std::weak_ptr<detail::session_handle> w = s;
            slot.assign([w, id](asio_detail::net::cancellation_type t) {
                if (t == asio_detail::net::cancellation_type::none) return;
                if (auto session = w.lock()) session->cancel(id, asio_detail::operation_aborted());
            });
        }
    }

    struct initiate {
        std::shared_ptr<detail::session_handle> s;
        executor_type ex;  // the default for handlers without one
        template <class Handler>
        void operator()(Handler handler, std::string name, std::chrono::nanoseconds timeout,
                        const lock_options& opts) const {
            start<lock_result>(
                s, ex, std::move(handler),
                [&](auto done) { return s->lock(std::move(name), timeout, opts, std::move(done)); },
                [](lock_result& r) { return std::move(r.held); });
        }
    };

    struct initiate_inspect {
        std::shared_ptr<detail::session_handle> s;
        executor_type ex;
        template <class Handler>
        void operator()(Handler handler, std::string name) const {
            start<inspect_result>(
                s, ex, std::move(handler),
                [&](auto done) { return s->inspect(std::move(name), std::move(done)); },
                [](inspect_result& r) { return std::move(r.status); });
        }
    };

    struct initiate_change {
        std::shared_ptr<detail::session_handle> s;
        executor_type ex;
        template <class Handler>
        void operator()(Handler handler, std::string name, std::int64_t revision) const {
            start<change_result>(
                s, ex, std::move(handler),
                [&](auto done) {
                    return s->wait_change(std::move(name), revision, std::move(done));
                },
                [](change_result& r) { return r.revision; });
        }
    };

    executor_type ex_;
    std::shared_ptr<detail::session_handle> s_;
};

/// The synchronous client: an io_context on an internal thread runs the
/// session (its requests and keep-alives); `lock()` blocks the calling
/// thread until the lock is won, the deadline passes or an error occurs.
/// Thread-safe. Locks it returns may be released from any thread.
class sync_client {
public:
    /// Starts the internal thread; throws std::system_error on a bad
    /// configuration.
    explicit sync_client(const config& cfg)
        : work_(io_.get_executor()), c_(std::make_unique<client>(io_.get_executor(), cfg)) {
        thread_ = std::thread([this] { io_.run(); });
    }
    ~sync_client() {
        asio_detail::net::post(io_, [this] { c_.reset(); });
        work_.reset();
        thread_.join();
    }
    sync_client(const sync_client&) = delete;
    sync_client& operator=(const sync_client&) = delete;

    /// Throws lock_error (timeout_error at the deadline) naming the holder,
    /// std::system_error naming the endpoint and the cause otherwise.
    etcd::lock lock(const std::string& name, std::chrono::nanoseconds timeout,
                    const lock_options& opts = {}) {
        auto r = run(name, timeout, opts);
        client::throw_if(r);
        return std::move(r.held);
    }
    /// As above; reports the failure through `ec` instead.
    etcd::lock lock(const std::string& name, std::chrono::nanoseconds timeout,
                    std::error_code& ec) {
        return lock(name, timeout, lock_options{}, ec);
    }
    /// As above, for the kind of lock `opts` asks for.
    etcd::lock lock(const std::string& name, std::chrono::nanoseconds timeout,
                    const lock_options& opts, std::error_code& ec) {
        auto r = run(name, timeout, opts);
        ec = r.ec;
        return std::move(r.held);
    }

    /// Who holds `name` and who waits (client::async_inspect); throws
    /// std::system_error naming the endpoint and the cause.
    lock_status inspect(const std::string& name) {
        auto r = run_inspect(name);
        if (r.ec) throw std::system_error(r.ec, r.message);
        return std::move(r.status);
    }
    /// As above; reports the failure through `ec` instead (cleared on
    /// success).
    lock_status inspect(const std::string& name, std::error_code& ec) {
        auto r = run_inspect(name);
        ec = r.ec;
        return std::move(r.status);
    }

    /// Blocks until a change under `name` after `revision`
    /// (client::async_wait_change); returns the revision with the change.
    /// Throws std::system_error naming the endpoint and the cause.
    std::int64_t wait_change(const std::string& name, std::int64_t revision) {
        auto r = run_change(name, revision);
        if (r.ec) throw std::system_error(r.ec, r.message);
        return r.revision;
    }
    /// As above; reports the failure through `ec` instead (0 returned).
    std::int64_t wait_change(const std::string& name, std::int64_t revision, std::error_code& ec) {
        auto r = run_change(name, revision);
        ec = r.ec;
        return r.revision;
    }

private:
    change_result run_change(const std::string& name, std::int64_t revision) {
        std::promise<change_result> p;
        auto f = p.get_future();
        asio_detail::net::post(io_, [&] {
            c_->async_wait_change_result(name, revision,
                                         [&p](change_result r) { p.set_value(std::move(r)); });
        });
        return f.get();
    }

    inspect_result run_inspect(const std::string& name) {
        std::promise<inspect_result> p;
        auto f = p.get_future();
        asio_detail::net::post(io_, [&] {
            c_->async_inspect_result(name, [&p](inspect_result r) { p.set_value(std::move(r)); });
        });
        return f.get();
    }

    lock_result run(const std::string& name, std::chrono::nanoseconds timeout,
                    const lock_options& opts) {
        std::promise<lock_result> p;
        auto f = p.get_future();
        asio_detail::net::post(io_, [&] {
            c_->async_lock_result(name, timeout, opts,
                                  [&p](lock_result r) { p.set_value(std::move(r)); });
        });
        return f.get();
    }

    asio_detail::net::io_context io_{1};
    asio_detail::net::executor_work_guard<asio_detail::net::io_context::executor_type> work_;
    std::unique_ptr<client> c_;
    std::thread thread_;
};

}  // namespace FILELOCK_DETAIL_ASIO_FLAVOUR
}  // namespace filelock::etcd

#undef FILELOCK_DETAIL_ASIO_FLAVOUR
#endif
