// SPDX-License-Identifier: MIT
#pragma once

// The Asio adapter (standalone Asio 1.22+): acquire a lock file from an event
// loop without ever blocking its thread, bounded by a timeout, cancellable.
//
//     asio::awaitable<void> work() {
//         auto lock = co_await filelock::async_lock("app.lock", 5s);
//         ...                               // held until `lock` is destroyed
//     }
//
//     filelock::async_lock(io.get_executor(), "app.lock", 5s,
//         [](std::error_code ec, filelock::lock_file lock) { ... });
//
// Attempts are non-blocking; between them the operation waits on a
// steady_timer with the options' backoff (capped exponential, jittered), and
// makes a last attempt at the deadline. On Linux it also wakes when the holder
// closes the lock file (inotify, read through a stream_descriptor; one instance
// per execution context while operations wait). Operations of one process for
// one lock file queue (lock_options::queue_local_waiters): only the head
// attempts, the others wait for their turn in the order of their initiations,
// and a release by a holder in this process hands the lock to the head at once.

// Asio 1.22 enables co_await support for clang only with libc++'s
// <experimental/coroutine>; clang 14 with libstdc++'s <coroutine> works too.
// The filelock-asio pkg-config module, the filelock::asio CMake target and
// the meson dependency define ASIO_HAS_CO_AWAIT=1; without them this header
// defines it, which works unless Asio's coroutine headers came first.
#if !defined(ASIO_HAS_CO_AWAIT) && defined(__cpp_impl_coroutine)
#if defined(ASIO_AWAITABLE_HPP) || defined(ASIO_USE_AWAITABLE_HPP) || defined(ASIO_CO_SPAWN_HPP)
#error \
    "<filelock/asio.hpp>: Asio's coroutine headers were included without co_await support \
(clang with libstdc++). Compile with -DASIO_HAS_CO_AWAIT=1 (the filelock-asio pkg-config \
module and the filelock::asio CMake target do), or include <filelock/asio.hpp> first."
#endif
#define ASIO_HAS_CO_AWAIT 1
#endif

#include <filelock/detail/file_target.hpp>
#include <filelock/detail/local_queue.hpp>
#include <filelock/detail/release_watcher.hpp>
#include <filelock/lock_file.hpp>
#include <filelock/options.hpp>

#include <asio/associated_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/awaitable.hpp>
#include <asio/cancellation_type.hpp>
#include <asio/compose.hpp>
#include <asio/error.hpp>
#include <asio/execution.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/is_executor.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <unistd.h>
#include <unordered_map>
#include <vector>
#include <system_error>
#include <type_traits>

namespace filelock {
namespace detail {

// What a waiting operation shares with those that may end its wait early:
// the service reading release events, and the path's local queue.
struct release_wake final : queue_waiter, std::enable_shared_from_this<release_wake> {
    std::mutex mutex;
    std::function<void()> cancel_timer;  // empty once the operation stopped waiting
    bool woken = false;                  // a release event
    bool turn = false;                   // the local queue: this is the head now
    bool rewatch = false;                // the service dropped the watch: the file moved
    std::uint64_t arrival = 0;           // order of the operations' first waits (0: none yet)
    asio::any_io_executor executor;      // where the operation's handlers run

    // Ends the operation's wait: on its executor, since timers are not
    // thread-safe. A flag set while the operation is not waiting on its
    // timer is seen when it next arms it.
    template <class Flag>
    void end_wait(Flag flag) {
        asio::post(executor, [w = shared_from_this(), flag] {
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
};

// One inotify instance per execution context, read through a
// stream_descriptor while some operation waits for a release event; closed
// again when none waits (an idle context holds no descriptor).
class release_service : public asio::execution_context::service {
public:
    inline static asio::execution_context::id id;

    explicit release_service(asio::execution_context& ctx) : service(ctx) {}

    /// Registers `w` for events on the file `path` names now; returns the
    /// watch descriptor, or -1 (then the operation relies on its timer).
    int watch(const std::filesystem::path& path, const std::shared_ptr<release_wake>& w) {
        std::lock_guard<std::mutex> g(mutex_);
        if (shut_down_) return -1;
        forget_parent();
        if (!watcher_) watcher_.emplace();
        if (!watcher_->valid()) {
            watcher_.reset();
            return -1;
        }
        if (!stream_) {
            const int fd = ::dup(watcher_->native_handle());
            if (fd < 0) return -1;
            stream_.emplace(w->executor, fd);
        }
        const int wd = watcher_->add(path);
        if (wd < 0) return -1;
        if (w->arrival == 0) w->arrival = ++arrivals_;  // the first wait fixes its place
        waiting_.emplace(wd, w);
        if (!reading_) {
            reading_ = true;
            stream_->async_wait(asio::posix::descriptor_base::wait_read,
                                [this](std::error_code ec) { on_readable(ec); });
        }
        return wd;
    }

    /// Operations that may wait for a wake (their turn, a release) register
    /// here, so that a fork can wake them in the child.
    void track(const std::shared_ptr<release_wake>& w) {
        std::lock_guard<std::mutex> g(mutex_);
        tracked_.emplace(w.get(), w);
    }
    void untrack(const release_wake* w) {
        std::lock_guard<std::mutex> g(mutex_);
        tracked_.erase(w);
    }

    /// Drops `w`'s watch (if `wd` >= 0); closes the instance if nobody waits.
    void unwatch(int wd, const release_wake* w) {
        std::lock_guard<std::mutex> g(mutex_);
        forget_parent();
        auto [b, e] = waiting_.equal_range(wd);
        for (auto it = b; it != e; ++it)
            if (it->second.lock().get() == w || it->second.expired()) {
                waiting_.erase(it);
                watcher_->remove(wd);
                break;
            }
        // Nobody waits: stop reading (so that run() can return) and close.
        if (waiting_.empty()) {
            if (reading_)
                stream_->cancel();  // on_readable closes
            else
                close();
        }
    }

private:
    void shutdown() override {
        std::lock_guard<std::mutex> g(mutex_);
        shut_down_ = true;
        waiting_.clear();
        close();
    }

    // fork(): the child shares the inotify instance (and its events) with the
    // parent. It gets one of its own: the operations that were watching
    // watch anew (and, waking, attempt on descriptors of their own). The
    // instance is dropped at the child's next use rather than here, once the
    // reactor has its own epoll set again (an earlier deregistration would
    // act on the set it shares with the parent).
    void notify_fork(asio::execution_context::fork_event event) override {
        if (event == asio::execution_context::fork_prepare) {
            mutex_.lock();  // never inherited locked by another thread
            return;
        }
        mutex_.unlock();
        if (event != asio::execution_context::fork_child) return;
        std::vector<std::shared_ptr<release_wake>> woken;
        {
            std::lock_guard<std::mutex> g(mutex_);
            forked_ = true;
            waiting_.clear();
            // Every waiting operation looks again: a watcher watches anew, a
            // queued one finds its (parent's) queue gone and joins the child's.
            for (auto& [ptr, weak] : tracked_)
                if (auto w = weak.lock()) {
                    std::lock_guard<std::mutex> wg(w->mutex);
                    w->rewatch = true;
                    woken.push_back(std::move(w));
                }
        }
        for (auto& w : woken) w->end_wait(&release_wake::turn);
    }

    // With the mutex held: after a fork, drops the parent's instance.
    void forget_parent() {
        if (!forked_) return;
        forked_ = false;
        reading_ = false;
        close();
    }

    void close() {
        stream_.reset();
        watcher_.reset();
    }

    void on_readable(std::error_code ec) {
        std::vector<std::shared_ptr<release_wake>> woken;
        {
            std::lock_guard<std::mutex> g(mutex_);
            reading_ = false;
            if (shut_down_) return;
            if (forked_) {  // the parent's events: not ours to read
                forget_parent();
                return;
            }
            if (!ec && watcher_) {
                for (const auto& ev : watcher_->drain()) {
                    auto [b, e] = waiting_.equal_range(ev.wd);
                    std::shared_ptr<release_wake> first;
                    for (auto it = b; it != e; ++it)
                        if (auto w = it->second.lock()) {
                            if (ev.moved) {
                                std::lock_guard<std::mutex> wg(w->mutex);
                                w->rewatch = true;
                                woken.push_back(std::move(w));
                            } else if (!first || w->arrival < first->arrival) {
                                first = std::move(w);
                            }
                        }
                    // A release lets one waiter in: wake the longest-waiting
                    // one only; the others keep their fallback timers.
                    if (first) woken.push_back(std::move(first));
                    if (ev.moved) {  // the path may name another file now
                        for (auto it = b; it != e; ++it) watcher_->remove(ev.wd);
                        waiting_.erase(ev.wd);
                    }
                }
            }
            if (waiting_.empty()) {
                // Idle. The woken usually watch again at once: keep the
                // instance unless we were cancelled because nobody waits.
                if (ec) close();
            } else if (stream_) {
                reading_ = true;
                stream_->async_wait(asio::posix::descriptor_base::wait_read,
                                    [this](std::error_code e) { on_readable(e); });
            }
        }
        for (auto& w : woken) w->end_wait(&release_wake::woken);
    }

    std::mutex mutex_;
    std::optional<release_watcher> watcher_;
    std::optional<asio::posix::stream_descriptor> stream_;
    std::unordered_multimap<int, std::weak_ptr<release_wake>> waiting_;
    std::unordered_map<const release_wake*, std::weak_ptr<release_wake>> tracked_;
    std::uint64_t arrivals_ = 0;
    bool reading_ = false;
    bool shut_down_ = false;
    bool forked_ = false;  // a fork_child notification not yet acted on
};

template <class Executor>
class async_lock_op {
public:
    async_lock_op(const Executor& ex, acquisition acq)
        : timer_(std::make_unique<timer_type>(ex)),
          acq_(std::make_unique<acquisition>(std::move(acq))) {}

    template <class Self>
    void operator()(Self& self, std::error_code ec = {}) {
        switch (state_) {
            case state::starting:
                // No side effect survives a cancellation (a won lock is released
                // again), so every kind of cancellation is supported.
                self.reset_cancellation_state(asio::enable_total_cancellation());
                acq_->start(clock::now());
                // Timed exclusive attempts queue once there is contention,
                // or at once (in the order of the initiations) when this
                // process already has waiters.
                may_queue_ = detail::may_queue(*acq_);
                if (may_queue_ && local_waiters() > 0 && !enqueue()) return wait_turn(self, true);
                attempt(self, true, false);
                return;
            case state::waiting: {
                bool woken = false, turn = false;
                if (wake_) {
                    std::lock_guard<std::mutex> g(wake_->mutex);
                    woken = std::exchange(wake_->woken, false);
                    turn = std::exchange(wake_->turn, false);
                    if (std::exchange(wake_->rewatch, false)) {  // the file moved
                        wd_ = -1;
                        wake_->watching.store(false);
                        acq_->target().drop_file();
                    }
                }
                if (cancelled(self) || (ec == asio::error::operation_aborted && !woken && !turn))
                    return finish(self, asio::error::operation_aborted);
                if (wake_ && wake_->joined() && !turn && !wake_->is_head())
                    return wait_turn(self, false);
                attempt(self, false, woken);
                return;
            }
            case state::delivering:
                // Won before a fork(), delivered in the child: that lock is
                // the parent's. Attempt again, on a descriptor of our own.
                if (!result_ && acq_->target().won_inherited()) return attempt(self, false, false);
                return finish(self, result_);
        }
    }

private:
    using timer_type = asio::basic_waitable_timer<clock, asio::wait_traits<clock>, Executor>;
    enum class state { starting, waiting, delivering };

    template <class Self>
    static bool cancelled(Self& self) {
        return self.get_cancellation_state().cancelled() != asio::cancellation_type::none;
    }

    // Joins the path's local queue; returns whether this is its head.
    bool enqueue() {
        make_wake();
        return wake_->join(acq_->target().path());
    }

    void make_wake() {
        if (wake_) return;
        wake_ = std::make_shared<release_wake>();
        wake_->executor = timer_->get_executor();
        service().track(wake_);
    }

    release_service& service() {
        if (!service_)
            service_ = &asio::use_service<release_service>(
                asio::query(timer_->get_executor(), asio::execution::context));
        return *service_;
    }

    // Registers for release events (once per watch: the service drops it
    // when it wakes us).
    void watch_release() {
        if (wd_ >= 0 || !acq_->target().wake_on_release()) return;
        make_wake();
        wd_ = service().watch(acq_->target().path(), wake_);
        wake_->watching.store(wd_ >= 0);
    }

    // Behind another waiter of this process: only the deadline, or the
    // queue making this the head, ends the wait.
    template <class Self>
    void wait_turn(Self& self, bool inline_call) {
        if (acq_->expired(clock::now())) {
            result_ = errc::timeout;
            if (!inline_call) return finish(self, result_);
            state_ = state::delivering;
            return asio::post(std::move(self));
        }
        state_ = state::waiting;
        arm(self, acq_->deadline());
    }

    template <class Self>
    void arm(Self& self, clock::time_point expiry) {
        if (!wake_) {
            timer_->expires_at(expiry);
            timer_->async_wait(std::move(self));
            return;
        }
        // The service and the queue may cancel the timer from other threads
        // (through a post to our executor).
        std::lock_guard<std::mutex> g(wake_->mutex);
        wake_->cancel_timer = [t = timer_.get()] { t->cancel(); };
        // A wake that came while we were attempting ends this wait at once.
        timer_->expires_at(wake_->woken || wake_->turn ? clock::now() : expiry);
        timer_->async_wait(std::move(self));
    }

    template <class Self>
    void attempt(Self& self, bool inline_call, bool woken) {
        const auto now = clock::now();
        if (wake_ && wake_->joined()) {
            // The queue yields this turn to other processes for a moment.
            if (const auto d = wake_->hold_off(); d > d.zero()) {
                state_ = state::waiting;
                return arm(self, now + d);
            }
        }
        const next_action next = acq_->resume(now, woken, wd_ >= 0);
        if (!next.is_done()) {
            if (may_queue_ && (!wake_ || !wake_->joined()) && !enqueue()) {
                // Contention, behind other waiters of this process: the
                // head's descriptor is the only one.
                acq_->target().drop_file();
                return wait_turn(self, inline_call);
            }
            state_ = state::waiting;
            watch_release();
            arm(self, now + next.delay);
            return;
        }
        result_ = next.ec;
        if (!inline_call) return finish(self, result_);
        // Never complete from inside the initiating function.
        state_ = state::delivering;
        asio::post(std::move(self));
    }

    template <class Self>
    void finish(Self& self, std::error_code ec) {
        // A cancellation that arrived after the lock was won but before the
        // handler ran: release it, so no lock is left held by nobody.
        if (!ec && cancelled(self)) ec = asio::error::operation_aborted;
        // Not taken: released with the acquisition below.
        lock_file lock = ec ? lock_file() : acq_->target().take();
        auto wake = std::move(wake_);
        if (wake) {
            wake->leave();  // the next local waiter attempts now
            std::lock_guard<std::mutex> g(wake->mutex);
            wake->cancel_timer = nullptr;
        }
        acq_.reset();
        timer_.reset();
        release_service* service = service_;
        const int wd = wd_;
        self.complete(ec, std::move(lock));
        // Watch clean-up after the handler: it is not on the way from the
        // release to the new holder. (Only locals: `this` may be gone.)
        if (service) {
            service->untrack(wake.get());
            service->unwatch(wd, wake.get());
        }
    }

    std::unique_ptr<timer_type> timer_;
    std::unique_ptr<acquisition> acq_;
    std::shared_ptr<release_wake> wake_;
    release_service* service_ = nullptr;
    int wd_ = -1;
    bool may_queue_ = false;
    std::error_code result_;
    state state_ = state::starting;
};

template <class T>
inline constexpr bool is_executor_v =
    asio::execution::is_executor<T>::value || asio::is_executor<T>::value;

}  // namespace detail

/// Acquires the lock file at `path`, retrying non-blocking attempts until it
/// is won or `timeout` passed (`timeout <= 0`: one attempt; `wait_forever`:
/// no deadline).
///
/// Completion signature: `void(std::error_code ec, lock_file lock)`.
///  - success: `ec` is empty and `lock` holds the lock (a lock_file, or a
///    simple one when `options.write_content` is false);
///  - deadline: `errc::timeout` (== std::errc::timed_out);
///  - cancellation: `asio::error::operation_aborted`;
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
template <class Executor, class CompletionToken = asio::default_completion_token_t<Executor>,
          std::enable_if_t<detail::is_executor_v<Executor>, int> = 0>
auto async_lock(const Executor& ex, const std::filesystem::path& path,
                std::chrono::nanoseconds timeout, const lock_options& options,
                CompletionToken&& token = asio::default_completion_token_t<Executor>()) {
    return asio::async_compose<CompletionToken, void(std::error_code, lock_file)>(
        detail::async_lock_op<Executor>(ex, detail::make_acquisition(path, timeout, options)),
        token, ex);
}

/// As above with default options.
template <class Executor, class CompletionToken = asio::default_completion_token_t<Executor>,
          std::enable_if_t<detail::is_executor_v<Executor> &&
                               !std::is_convertible_v<CompletionToken, const lock_options&>,
                           int> = 0>
auto async_lock(const Executor& ex, const std::filesystem::path& path,
                std::chrono::nanoseconds timeout,
                CompletionToken&& token = asio::default_completion_token_t<Executor>()) {
    return async_lock(ex, path, timeout, lock_options{}, std::forward<CompletionToken>(token));
}

/// As above on an execution context's executor (e.g. an io_context).
template <
    class ExecutionContext, class... Args,
    std::enable_if_t<std::is_convertible_v<ExecutionContext&, asio::execution_context&>, int> = 0>
auto async_lock(ExecutionContext& ctx, const std::filesystem::path& path,
                std::chrono::nanoseconds timeout, Args&&... args) {
    return async_lock(ctx.get_executor(), path, timeout, std::forward<Args>(args)...);
}

/// The coroutine form, for `asio::awaitable` code:
///
///     auto lock = co_await filelock::async_lock("app.lock", 5s);
///
/// Runs on the coroutine's executor (`this_coro::executor`) and is cancelled
/// through the coroutine's cancellation slot. Returns the held lock; throws
/// timeout_error (a lock_error) when the deadline passed, std::system_error
/// with `code() == asio::error::operation_aborted` (which matches
/// condition::cancelled) on cancellation, and
/// std::filesystem::filesystem_error naming the path for any other error.
inline asio::awaitable<lock_file> async_lock(std::filesystem::path path,
                                             std::chrono::nanoseconds timeout,
                                             lock_options options = {}) {
    auto ex = co_await asio::this_coro::executor;
    auto [ec, held] = co_await async_lock(ex, path, timeout, options,
                                          asio::experimental::as_tuple(asio::use_awaitable));
    if (ec) detail::throw_error(ec, path, ec == errc::timeout ? read_holder(path) : std::string());
    co_return std::move(held);
}

}  // namespace filelock
