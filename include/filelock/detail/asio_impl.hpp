// SPDX-License-Identifier: MIT
// No #pragma once: the Asio adapter's one implementation, compiled once per
// Asio flavour. <filelock/asio.hpp> (standalone Asio) and
// <filelock/boost_asio.hpp> (Boost.Asio) each include their flavour's
// header (detail/standalone_asio.hpp, detail/boost_asio.hpp: the namespace
// alias `asio_detail::net`, the completion's `error_code`), define
// FILELOCK_DETAIL_ASIO_FLAVOUR to the flavour's inline namespace
// (standalone_asio, boost_asio) and include this file, which undefines it.
// Every name below is thus the flavour's own (filelock::boost_asio::
// async_lock, filelock::boost_asio::asio_detail::release_service, ...):
// both flavours link into one program, and may be included in one
// translation unit, without two definitions of one name. What does not
// depend on Asio (the acquisition, the release registry, the local queues)
// is compiled once, in libfilelock, and shared by both.
// FILELOCK_DETAIL_ASIO_DESCRIPTOR: the flavour has posix::stream_descriptor.

// Included on its own (no flavour chosen), it declares nothing.

#if defined(FILELOCK_DETAIL_ASIO_FLAVOUR)

#include <filelock/detail/file_acquisition.hpp>
#include <filelock/detail/local_queue.hpp>
#include <filelock/detail/release_source.hpp>
#include <filelock/lock_file.hpp>
#include <filelock/options.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <system_error>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace filelock {
inline namespace FILELOCK_DETAIL_ASIO_FLAVOUR {
namespace asio_detail {

// The flavour-independent part, compiled into libfilelock.
using detail::action;
using detail::clock;
using detail::file_acquisition;
using detail::lock_identity;
using detail::queue_waiter;
using detail::release_source;
using detail::wake_reason;

// An operation's place in its local queue and in the release service: what
// may end its wait early. Signals set a flag and cancel the operation's timer
// on its executor.
struct release_wake final : queue_waiter, std::enable_shared_from_this<release_wake> {
    release_wake(net::any_io_executor ex, bool shared_mode, std::uint64_t order)
        : executor(std::move(ex)), shared(shared_mode), arrival(order) {}

    std::mutex mutex;
    std::function<void()> cancel_timer;  // set while the operation waits on its timer
    bool released = false;               // a release event
    bool turn = false;                   // the local queue woke it
    bool moved = false;                  // its watch is gone: the file moved, or a fork
    net::any_io_executor executor;       // where the operation's handlers run
    const bool shared;                   // a shared-mode acquisition
    const std::uint64_t arrival;         // the order of the operations' starts

    // Ends the operation's wait: on its executor, since timers are not
    // thread-safe. A flag set while the operation is not waiting on its
    // timer is seen when it next arms it.
    template <class Flag>
    void end_wait(Flag flag) {
        net::post(executor, [w = shared_from_this(), flag] {
            std::lock_guard<std::mutex> g(w->mutex);
            (*w).*flag = true;
            if (w->cancel_timer) w->cancel_timer();
        });
    }

    void wake() noexcept override {
        try {
            end_wait(&release_wake::turn);
        } catch (...) {
            // Cannot post (out of memory): the operation attempts at its
            // deadline, or when its timer ends.
        }
    }

    // Why the wait ended, taking the flag (none: its timer).
    wake_reason take_reason() {
        std::lock_guard<std::mutex> g(mutex);
        cancel_timer = nullptr;
        if (std::exchange(moved, false)) return released = false, wake_reason::moved;
        if (std::exchange(turn, false)) return wake_reason::turn;
        if (std::exchange(released, false)) return wake_reason::release;
        return wake_reason::timer;
    }

    static std::uint64_t next_arrival() noexcept {
        static std::atomic<std::uint64_t> n{0};
        return n.fetch_add(1, std::memory_order_relaxed);
    }
};

// The release source's descriptor, read through the reactor. Where the
// platform has no release events (Windows: release_source::take() gives
// nothing) the stream is never made.
#if defined(FILELOCK_DETAIL_ASIO_DESCRIPTOR)
using watch_stream = net::posix::stream_descriptor;
inline constexpr auto watch_readable = net::posix::descriptor_base::wait_read;
#else
/// Stands in for the descriptor's stream where there are no release events:
/// never constructed.
struct watch_stream {
    /// Nothing to wrap.
    template <class Executor>
    watch_stream(const Executor&, int) {}
    /// No descriptor to give back.
    int release() { return -1; }
    /// Never called.
    template <class Handler>
    void async_wait(int, Handler&&) {}
};
inline constexpr int watch_readable = 0;
#endif

// One release source per execution context while operations wait on it,
// read through a stream_descriptor. When none waits, the reactor lets go of
// it and it goes back to the process's idle one (closed a linger later):
// nothing is closed on the way from a release to the next holder.
class release_service : public net::execution_context::service {
public:
    inline static net::execution_context::id id;

    explicit release_service(net::execution_context& ctx) : service(ctx) {}

    /// Registers `w` for events on the file `path` names now, waiting for the
    /// lock `lock` (or for its queue `turn`), replacing its registration;
    /// false if it cannot be watched (the operation relies on its timer).
    bool watch(const std::filesystem::path& path, const std::shared_ptr<release_wake>& w,
               const lock_identity& lock, int turn) {
        release_source::start_lingering_after start;  // once the mutex is free: a system call
        std::unique_ptr<release_source> spare;        // given back once the mutex is free
        {
            std::lock_guard<std::mutex> g(mutex_);
            if (shut_down_) return false;
            drop_inherited();
            // Its descriptor is the reactor's: re-registered by the child's
            // notify_fork, closed by drop_inherited().
            if (!source_ &&
                !(source_ = release_source::take(release_source::fork_copies::closed_by_loop)))
                return false;
            if (!stream_) stream_.emplace(w->executor, source_->native_handle());
            if (source_->watch(path, w.get(), w->arrival, w->shared, lock, turn)) {
                if (!reading_) {
                    reading_ = true;
                    stream_->async_wait(watch_readable, [this](error_code ec) { on_readable(ec); });
                }
                return true;
            }
            if (source_->idle()) spare = idle();
        }
        release_source::recycle(std::move(spare));
        return false;
    }

    /// Operations that may wait for a wake register here: the events and a
    /// fork wake them through it.
    void track(const std::shared_ptr<release_wake>& w) {
        std::lock_guard<std::mutex> g(mutex_);
        tracked_.emplace(w.get(), w);
    }

    /// `w` stops waiting for events (and, when `done`, for a fork); lets go
    /// of the source if nobody waits.
    void unwatch(const release_wake* w, bool done) {
        std::unique_ptr<release_source> spare;
        {
            std::lock_guard<std::mutex> g(mutex_);
            if (done) tracked_.erase(w);
            drop_inherited();
            if (!source_) return;
            source_->unwatch(w);
            if (source_->idle()) spare = idle();
        }
        release_source::recycle(std::move(spare));
    }

private:
    void shutdown() override {
        std::unique_ptr<release_source> spare;
        {
            std::lock_guard<std::mutex> g(mutex_);
            shut_down_ = true;
            if (source_) (void)source_->forget_all();
            spare = idle();
        }
        release_source::recycle(std::move(spare));
    }

    // fork(): every waiting operation looks again. A watcher watches anew
    // on a source of the child's own (release_source::inherited(), dropped at
    // the child's next use, once the reactor has its own epoll set again); a
    // queued one finds its (parent's) queue gone and joins the child's.
    void notify_fork(net::execution_context::fork_event event) override {
        if (event == net::execution_context::fork_prepare) {
            mutex_.lock();  // never inherited locked by another thread
            return;
        }
        mutex_.unlock();
        if (event != net::execution_context::fork_child) return;
        std::vector<std::shared_ptr<release_wake>> woken;
        {
            std::lock_guard<std::mutex> g(mutex_);
            for (auto& [ptr, weak] : tracked_)
                if (auto w = weak.lock()) woken.push_back(std::move(w));
        }
        for (auto& w : woken) w->end_wait(&release_wake::moved);
    }

    // With the mutex held: a source made before a fork is the parent's.
    void drop_inherited() {
        if (!source_ || !source_->inherited()) return;
        (void)source_->forget_all();  // woken by notify_fork
        reading_ = false;
        if (stream_) (void)stream_->release();
        stream_.reset();
        source_.reset();  // closes the child's copy only
    }

    // With the mutex held: nobody waits. The reactor lets go of the
    // descriptor (cancelling the read, so that run() can return); the source
    // is returned, unclosed, for the caller to give back to the process's
    // idle one once the mutex is free (giving it back may start the thread
    // that closes it a linger later, which a watch() need not wait for).
    [[nodiscard]] std::unique_ptr<release_source> idle() {
        if (stream_) (void)stream_->release();
        stream_.reset();
        reading_ = false;
        return std::move(source_);
    }

    void on_readable(error_code ec) {
        std::vector<std::pair<std::shared_ptr<release_wake>, bool>> woken;  // moved?
        std::unique_ptr<release_source> spare;
        {
            std::lock_guard<std::mutex> g(mutex_);
            if (ec == net::error::operation_aborted || shut_down_) return;
            reading_ = false;
            drop_inherited();  // the parent's events are not ours to read
            if (!source_ || !stream_) return;
            for (const auto& [waiter, moved] : source_->read())
                if (auto it = tracked_.find(static_cast<const release_wake*>(waiter));
                    it != tracked_.end())
                    if (auto w = it->second.lock()) woken.emplace_back(std::move(w), moved);
            if (source_->idle()) {
                spare = idle();
            } else {
                reading_ = true;
                stream_->async_wait(watch_readable, [this](error_code e) { on_readable(e); });
            }
        }
        release_source::recycle(std::move(spare));
        for (auto& [w, moved] : woken)
            w->end_wait(moved ? &release_wake::moved : &release_wake::released);
    }

    std::mutex mutex_;
    std::unique_ptr<release_source> source_;
    std::optional<watch_stream> stream_;
    std::unordered_map<const release_wake*, std::weak_ptr<release_wake>> tracked_;
    bool reading_ = false;
    bool shut_down_ = false;
};

// The Asio driver: an executor of the acquire state machine. It arms the
// timer and the release watch the machine asks for, maps Asio's cancellation
// to a `cancel` input, and never completes from inside the initiation.
template <class Executor>
class async_lock_op {
public:
    async_lock_op(const Executor& ex, const std::filesystem::path& path,
                  std::chrono::nanoseconds timeout, const lock_options& options)
        : timer_(std::make_unique<timer_type>(ex)),
          wake_(std::make_shared<release_wake>(net::any_io_executor(ex),
                                               options.mode == lock_mode::shared,
                                               release_wake::next_arrival())),
          acq_(std::make_unique<file_acquisition>(path, timeout, options)) {
        acq_->use_queue(wake_.get(), &net::query(ex, net::execution::context));
    }
    async_lock_op(async_lock_op&&) = default;

    // Destroyed without finishing (its execution context went away): no
    // queue entry and no timer canceller outlive it.
    ~async_lock_op() {
        if (acq_) acq_->drop_queue();
        if (wake_) {
            std::lock_guard<std::mutex> g(wake_->mutex);
            wake_->cancel_timer = nullptr;
        }
        if (service_ && wake_) service_->unwatch(wake_.get(), true);
    }

    template <class Self>
    void operator()(Self& self, error_code ec = {}) {
        switch (state_) {
            case state::starting:
                // No side effect survives a cancellation (a won lock is released
                // again), so every kind of cancellation is supported.
                self.reset_cancellation_state(net::enable_total_cancellation());
                return run(self, acq_->resume({wake_reason::start, clock::now()}), true);
            case state::waiting: {
                const wake_reason why = wake_->take_reason();
                if (why == wake_reason::moved) drop_watch();
                if (cancelled(self) ||
                    (ec == net::error::operation_aborted && why == wake_reason::timer))
                    return run(self, cancel_input(), false);
                return run(self, acq_->resume({why, clock::now()}), false);
            }
            case state::delivering:
                if (cancelled(self)) return run(self, cancel_input(), false);
                return run(self, acq_->resume({wake_reason::deliver, clock::now()}), false);
        }
    }

private:
    using timer_type = net::basic_waitable_timer<clock, net::wait_traits<clock>, Executor>;
    enum class state { starting, waiting, delivering };

    template <class Self>
    static bool cancelled(Self& self) {
        return self.get_cancellation_state().cancelled() != net::cancellation_type::none;
    }

    action cancel_input() {
        return acq_->resume({wake_reason::cancel, clock::now(), operation_aborted()});
    }

    release_service& service() {
        if (!service_) {
            service_ = &net::use_service<release_service>(
                net::query(timer_->get_executor(), net::execution::context));
            service_->track(wake_);
        }
        return *service_;
    }

    void drop_watch() {
        if (!watching_) return;
        service().unwatch(wake_.get(), false);
        watching_ = false;
    }

    template <class Self>
    void run(Self& self, action next, bool inline_call) {
        for (;;) {
            switch (next.what) {
                case action::kind::watch: {
                    lock_identity lock{};
                    (void)acq_->identity(lock);  // (its backend and range matter here)
                    watching_ = service().watch(acq_->path(), wake_, lock, acq_->queue_turn());
                    next = acq_->resume(
                        {watching_ ? wake_reason::watched : wake_reason::unwatched, clock::now()});
                    continue;
                }
                case action::kind::wait: {
                    if (!service_) service();  // a fork may have to wake it
                    state_ = state::waiting;
                    std::lock_guard<std::mutex> g(wake_->mutex);
                    // The service and the queue cancel the timer through a post.
                    wake_->cancel_timer = [t = timer_.get()] { t->cancel(); };
                    if (!next.on_release) wake_->released = false;
                    // A signal that came since the last wait ends this one at once.
                    const bool signalled = wake_->turn || wake_->moved || wake_->released;
                    timer_->expires_at(signalled ? clock::now() : next.until);
                    timer_->async_wait(std::move(self));
                    return;
                }
                case action::kind::send:  // the file backend never sends
                    next = {action::kind::done,
                            std::make_error_code(std::errc::function_not_supported)};
                    continue;
                case action::kind::done:
                    if (inline_call) {
                        // Never complete from inside the initiating function.
                        state_ = state::delivering;
                        return net::post(std::move(self));
                    }
                    return finish(self, next.ec);
            }
        }
    }

    template <class Self>
    void finish(Self& self, std::error_code ec) {
        lock_file lock = ec ? lock_file() : acq_->take();
        acq_.reset();
        timer_.reset();
        auto wake = std::move(wake_);
        release_service* service = std::exchange(service_, nullptr);
        self.complete(to_net_error(ec), std::move(lock));
        // Watch clean-up after the handler: it is not on the way from the
        // release to the new holder. (Only locals: `this` may be gone.)
        if (service) service->unwatch(wake.get(), true);
    }

    std::unique_ptr<timer_type> timer_;
    std::shared_ptr<release_wake> wake_;
    std::unique_ptr<file_acquisition> acq_;  // destroyed first: it leaves the queue
    release_service* service_ = nullptr;
    bool watching_ = false;  // registered for release events
    state state_ = state::starting;
};

template <class T>
inline constexpr bool is_executor_v =
    net::execution::is_executor<T>::value || net::is_executor<T>::value;

// An executor of this flavour's Asio, whose execution context the operation
// queries: the other flavour's executors satisfy the traits above too, and
// must not make calls ambiguous where both flavours are included.
template <class T>
inline constexpr bool is_flavour_executor_v =
    is_executor_v<T>&& net::can_query<const T&, net::execution::context_t>::value;

}  // namespace asio_detail

/// Acquires the lock file at `path`, retrying non-blocking attempts until it
/// is won or `timeout` passed (`timeout <= 0`: one attempt; `wait_forever`:
/// no deadline).
///
/// Completion signature: `void(error_code ec, lock_file lock)`, where
/// `error_code` is Asio's: std::error_code on standalone Asio,
/// boost::system::error_code on Boost.Asio.
///  - success: `ec` is empty and `lock` holds the lock (a lock_file, or a
///    simple one when `options.write_content` is false);
///  - deadline: `errc::timeout` (== std::errc::timed_out);
///  - cancellation: `asio::error::operation_aborted` (boost::asio::error on
///    Boost.Asio);
///  - anything else (a missing directory, EACCES, EISDIR, a bad content
///    template, ...): that error, at once, without retries.
///
/// Per-operation cancellation: terminal, partial and total are all
/// supported. A cancellation that arrives after the lock was won but before
/// the handler runs releases the lock and completes with operation_aborted:
/// the lock is either delivered or released, never orphaned.
///
/// Executor: the first attempt is made inside this call, but the handler is
/// never invoked from inside it; it runs on its associated executor (default:
/// `ex`). Waits use a steady_timer on `ex` (a strand serialises them).
///
/// Object lifetimes: `path` and `options` are copied. The operation owns its
/// descriptor; destroying the execution context with the operation pending
/// closes it (a lock won but not yet delivered is released). After
/// `io_context::stop()`, a won-but-undelivered lock stays held until the
/// context runs again or is destroyed.
template <class Executor,
          class CompletionToken = asio_detail::net::default_completion_token_t<Executor>,
          std::enable_if_t<asio_detail::is_flavour_executor_v<Executor>, int> = 0>
auto async_lock(
    const Executor& ex, const std::filesystem::path& path, std::chrono::nanoseconds timeout,
    const lock_options& options,
    CompletionToken&& token = asio_detail::net::default_completion_token_t<Executor>()) {
    return asio_detail::net::async_compose<CompletionToken,
                                           void(asio_detail::error_code, lock_file)>(
        asio_detail::async_lock_op<Executor>(ex, path, timeout, options), token, ex);
}

/// As above with default options.
template <class Executor,
          class CompletionToken = asio_detail::net::default_completion_token_t<Executor>,
          std::enable_if_t<asio_detail::is_flavour_executor_v<Executor> &&
                               !std::is_convertible_v<CompletionToken, const lock_options&>,
                           int> = 0>
auto async_lock(
    const Executor& ex, const std::filesystem::path& path, std::chrono::nanoseconds timeout,
    CompletionToken&& token = asio_detail::net::default_completion_token_t<Executor>()) {
    return FILELOCK_DETAIL_ASIO_FLAVOUR::async_lock(ex, path, timeout, lock_options{},
                                                    std::forward<CompletionToken>(token));
}

/// As above on an execution context's executor (e.g. an io_context).
template <
    class ExecutionContext, class... Args,
    std::enable_if_t<std::is_convertible_v<ExecutionContext&, asio_detail::net::execution_context&>,
                     int> = 0>
auto async_lock(ExecutionContext& ctx, const std::filesystem::path& path,
                std::chrono::nanoseconds timeout, Args&&... args) {
    return FILELOCK_DETAIL_ASIO_FLAVOUR::async_lock(ctx.get_executor(), path, timeout,
                                                    std::forward<Args>(args)...);
}

/// The coroutine form, for `asio::awaitable` code:
///
///     auto lock = co_await filelock::async_lock("app.lock", 5s);
///
/// Runs on the coroutine's executor (`this_coro::executor`) and is cancelled
/// through the coroutine's cancellation slot. Returns the held lock; throws
/// timeout_error (a lock_error) when the deadline passed, std::system_error
/// with `code() == asio::error::operation_aborted` (as a std::error_code on
/// Boost.Asio; it matches condition::cancelled) on cancellation, and
/// std::filesystem::filesystem_error naming the path for any other error.
inline asio_detail::net::awaitable<lock_file> async_lock(std::filesystem::path path,
                                                         std::chrono::nanoseconds timeout,
                                                         lock_options options = {}) {
    auto ex = co_await asio_detail::net::this_coro::executor;
    auto [ec, held] = co_await FILELOCK_DETAIL_ASIO_FLAVOUR::async_lock(
        ex, path, timeout, options,
        asio_detail::net::experimental::as_tuple(asio_detail::net::use_awaitable));
    if (ec) detail::throw_error(ec, path, ec == errc::timeout ? read_holder(path) : std::string());
    co_return std::move(held);
}

}  // namespace FILELOCK_DETAIL_ASIO_FLAVOUR
}  // namespace filelock

#undef FILELOCK_DETAIL_ASIO_FLAVOUR
#undef FILELOCK_DETAIL_ASIO_DESCRIPTOR
#endif
