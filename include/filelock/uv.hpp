// SPDX-License-Identifier: MIT
#pragma once

// The libuv adapter (library and pkg-config module `filelock-uv`): acquire a
// lock file from a uv_loop_t without ever blocking the loop's thread.
//
//     // callbacks
//     auto req = filelock::uv::async_lock(loop, "app.lock", 5s,
//         [](std::error_code ec, filelock::lock_file lock) { ... });
//     req.cancel();                               // from any thread
//
//     // any C++20 coroutine
//     filelock::lock_file lock = co_await filelock::uv::async_lock(loop, "app.lock", 5s);
//
// Attempts are non-blocking; between them the operation waits on a uv_timer_t
// with the options' backoff (millisecond resolution), and makes a last attempt
// at the deadline. On Linux it also wakes when the holder closes the lock file
// (inotify, polled with uv_poll_t; one instance per loop while the loop has
// operations). Operations of one loop for one lock queue
// (lock_options::queue_local_waiters): only the head attempts, the others wait
// for their turn in the order of the async_lock calls, and a release by a
// holder in this process hands the lock to the head at once. Each loop has
// queues of its own: a loop that stops running never holds up the waiters of
// another loop or thread. The first attempt is made inside async_lock().
//
// Outcomes: the lock (empty error code); errc::timeout when the deadline
// passed (== std::errc::timed_out); std::errc::operation_canceled after a
// cancel() or a stop request; any other error (missing directory, EACCES,
// EISDIR, bad content template, ...) at once, without retries.
//
// Lifetime rules:
//  - async_lock() must be called on the loop's thread (or while the loop is
//    not running). It allocates the operation and its uv handles on the heap;
//    they are freed in their uv_close callbacks, never while active.
//  - The callback runs on the loop's thread, never from inside async_lock()
//    (even a lock won at once is delivered on a later loop iteration), exactly
//    once, unless the operation is abandoned.
//  - A cancellation that arrives after the lock was won but before the
//    callback ran releases the lock and completes with operation_canceled: a
//    lock is delivered or released, never orphaned.
//  - When the loop must go down with operations pending (after uv_stop, say):
//    call cancel_all(loop) on the loop's thread, then uv_run(loop,
//    UV_RUN_DEFAULT) until it returns; uv_loop_close(loop) then returns 0.
//    Do not uv_close() this library's handles yourself (e.g. from uv_walk):
//    the operation's memory would never be freed.

#include <filelock/error.hpp>
#include <filelock/export.hpp>
#include <filelock/lock_file.hpp>
#include <filelock/options.hpp>

#include <chrono>
#include <coroutine>
#include <exception>
#include <filesystem>
#include <memory>
#include <optional>
#include <stop_token>
#include <system_error>
#include <type_traits>
#include <utility>
#include <uv.h>

/// The libuv adapter (library and pkg-config module `filelock-uv`).
namespace filelock::uv {

class request;

class callback;

namespace detail {
struct control;

/// What `callback` wraps. No decay_t<F> here: clang 14 tries F = void& for
/// a braced options list, and decay<void&> is a hard error, where forming
/// `void&` below only fails the constraint.
template <class F>
concept callable_as_callback =
    !std::is_same_v<std::remove_cvref_t<F>, callback> &&
    std::is_invocable_v<std::remove_cvref_t<F>&, std::error_code, lock_file>;
}  // namespace detail

/// What the callback forms call: a move-only `void(std::error_code,
/// lock_file)`, made from any callable that can be called so (lambdas that
/// own move-only state included).
class callback {
public:
    /// Wraps `f`.
    template <detail::callable_as_callback F>
    callback(F&& f) : impl_(std::make_unique<model<std::decay_t<F>>>(std::forward<F>(f))) {}

    /// Whether it holds a callable (not after being moved from).
    explicit operator bool() const noexcept { return impl_ != nullptr; }
    /// Calls it.
    void operator()(std::error_code ec, lock_file lock) { impl_->call(ec, std::move(lock)); }

private:
    struct concept_t {
        virtual ~concept_t() = default;
        virtual void call(std::error_code ec, lock_file&& lock) = 0;
    };
    template <class F>
    struct model final : concept_t {
        explicit model(F&& fn) : f(std::move(fn)) {}
        explicit model(const F& fn) : f(fn) {}
        void call(std::error_code ec, lock_file&& lock) override { f(ec, std::move(lock)); }
        F f;
    };
    std::unique_ptr<concept_t> impl_;
};

/// Callback form: `cb(std::error_code, lock_file)` runs on the loop's thread
/// when the lock is won, the timeout passed, the operation was cancelled, or
/// an error occurred. See the lifetime rules above. Throws std::system_error
/// if libuv cannot create its handles.
FILELOCK_API request async_lock(uv_loop_t* loop, const std::filesystem::path& path,
                                std::chrono::nanoseconds timeout, const lock_options& options,
                                callback cb);

/// A handle on a pending operation. Copyable; outliving the operation is
/// fine (cancel() then does nothing).
class FILELOCK_API request {
public:
    request() noexcept = default;

    /// Cancels the operation: it completes with std::errc::operation_canceled
    /// unless it already completed. Safe from any thread (routed to the loop
    /// with uv_async_send).
    void cancel() const noexcept;

    /// Loop thread only: the callback will never be invoked (and the
    /// operation is cancelled). For awaiters whose coroutine is destroyed.
    void abandon() const noexcept;

    /// True until the operation completed (or was abandoned).
    bool pending() const noexcept;

private:
    friend request async_lock(uv_loop_t*, const std::filesystem::path&, std::chrono::nanoseconds,
                              const lock_options&, callback);
    explicit request(std::shared_ptr<detail::control> c) noexcept : control_(std::move(c)) {}
    std::shared_ptr<detail::control> control_;
};

/// Callback form with default options.
inline request async_lock(uv_loop_t* loop, const std::filesystem::path& path,
                          std::chrono::nanoseconds timeout, callback cb) {
    return async_lock(loop, path, timeout, lock_options{}, std::move(cb));
}

/// Cancels every pending operation of `loop` (loop thread only). Their
/// callbacks run with operation_canceled; run the loop once more to let the
/// handles close.
FILELOCK_API void cancel_all(uv_loop_t* loop) noexcept;

/// The awaitable of the coroutine forms. It imposes nothing on the awaiting
/// coroutine's promise. The coroutine is resumed on the loop's thread.
/// Destroying a coroutine suspended on it (on the loop's thread) abandons the
/// operation: no lock is left held.
class lock_awaitable {
public:
    /// Made by async_lock(); `ec`, when not null, receives the outcome
    /// instead of an exception.
    lock_awaitable(uv_loop_t* loop, std::filesystem::path path, std::chrono::nanoseconds timeout,
                   lock_options options, std::stop_token stop, std::error_code* ec) noexcept
        : loop_(loop),
          path_(std::move(path)),
          timeout_(timeout),
          options_(std::move(options)),
          stop_(std::move(stop)),
          ec_out_(ec) {}
    lock_awaitable(lock_awaitable&&) = delete;
    ~lock_awaitable() {
        if (req_.pending()) req_.abandon();
    }

    /// Never ready: the operation starts when the coroutine suspends.
    bool await_ready() const noexcept { return false; }

    /// Starts the operation; the coroutine resumes on the loop's thread.
    void await_suspend(std::coroutine_handle<> h) {
        waiter_ = h;
        req_ = async_lock(loop_, path_, timeout_, options_,
                          [this](std::error_code ec, lock_file lock) {
                              ec_ = ec;
                              lock_ = std::move(lock);
                              waiter_.resume();
                          });
        if (stop_.stop_possible()) stop_cb_.emplace(stop_, canceller{req_});
    }

    /// The held lock, or the outcome thrown (or stored in `ec`).
    lock_file await_resume() {
        stop_cb_.reset();
        if (ec_out_) {
            *ec_out_ = ec_;
            return std::move(lock_);
        }
        if (ec_)
            filelock::detail::throw_error(
                ec_, path_, ec_ == errc::timeout ? read_holder(path_) : std::string());
        return std::move(lock_);
    }

private:
    struct canceller {
        request req;
        void operator()() const noexcept { req.cancel(); }
    };

    uv_loop_t* loop_;
    std::filesystem::path path_;
    std::chrono::nanoseconds timeout_;
    lock_options options_;
    std::stop_token stop_;
    std::error_code* ec_out_;
    std::coroutine_handle<> waiter_;
    request req_;
    std::optional<std::stop_callback<canceller>> stop_cb_;
    std::error_code ec_;
    lock_file lock_;
};

/// Coroutine form: `co_await async_lock(loop, path, timeout[, options][, stop])`
/// returns the held lock or throws: timeout_error on the deadline,
/// std::system_error with `code() == std::errc::operation_canceled` (which
/// matches condition::cancelled) after a stop request, and
/// std::filesystem::filesystem_error naming the path otherwise.
inline lock_awaitable async_lock(uv_loop_t* loop, std::filesystem::path path,
                                 std::chrono::nanoseconds timeout, lock_options options = {},
                                 std::stop_token stop = {}) {
    return {loop, std::move(path), timeout, std::move(options), std::move(stop), nullptr};
}

/// Coroutine form with default options, cancelled by `stop`.
inline lock_awaitable async_lock(uv_loop_t* loop, std::filesystem::path path,
                                 std::chrono::nanoseconds timeout, std::stop_token stop) {
    return {loop, std::move(path), timeout, lock_options{}, std::move(stop), nullptr};
}

/// Coroutine form that never throws: the outcome goes to `ec`, and the lock
/// returned is empty unless `ec` is.
inline lock_awaitable async_lock(uv_loop_t* loop, std::filesystem::path path,
                                 std::chrono::nanoseconds timeout, lock_options options,
                                 std::stop_token stop, std::error_code& ec) {
    return {loop, std::move(path), timeout, std::move(options), std::move(stop), &ec};
}

/// A minimal lazy coroutine type for code that has none of its own:
/// `co_await`-able from another task (symmetric transfer), or started with
/// start() from plain code, which then runs the loop and reads result().
template <class T = void>
class task;

namespace detail {

// Resumes the awaiting coroutine by symmetric transfer (no stack growth).
struct final_awaiter {
    bool await_ready() noexcept { return false; }
    template <class P>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<P> h) noexcept {
        return h.promise().continuation;
    }
    void await_resume() noexcept {}
};

template <class T>
struct task_promise_base {
    std::coroutine_handle<> continuation = std::noop_coroutine();
    std::exception_ptr error;

    std::suspend_always initial_suspend() noexcept { return {}; }
    final_awaiter final_suspend() noexcept { return {}; }
    void unhandled_exception() noexcept { error = std::current_exception(); }
};

template <class T>
struct task_promise : task_promise_base<T> {
    std::optional<T> value;
    task<T> get_return_object() noexcept;
    template <class U>
    void return_value(U&& v) {
        value.emplace(std::forward<U>(v));
    }
    T take() {
        if (this->error) std::rethrow_exception(this->error);
        return std::move(*value);
    }
};

template <>
struct task_promise<void> : task_promise_base<void> {
    task<void> get_return_object() noexcept;
    void return_void() noexcept {}
    void take() {
        if (error) std::rethrow_exception(error);
    }
};

}  // namespace detail

template <class T>
class [[nodiscard]] task {
public:
    /// The coroutine's promise (C++20's coroutine protocol).
    using promise_type = detail::task_promise<T>;

    /// Takes over `other`'s coroutine.
    task(task&& other) noexcept : h_(std::exchange(other.h_, {})) {}
    /// Destroys the coroutine held (if any), then takes over `other`'s.
    task& operator=(task&& other) noexcept {
        if (this != &other) {
            if (h_) h_.destroy();
            h_ = std::exchange(other.h_, {});
        }
        return *this;
    }
    ~task() {
        if (h_) h_.destroy();
    }

    /// Starts the task from non-coroutine code (it runs until its first
    /// suspension).
    void start() { h_.resume(); }
    /// Whether the task ran to its end.
    bool done() const noexcept { return h_ && h_.done(); }
    /// The task's value, or its exception rethrown. Only once done().
    T result() { return h_.promise().take(); }

    /// Awaits the task from another coroutine (it starts then; symmetric
    /// transfer back when it ends).
    auto operator co_await() && noexcept {
        struct awaiter {
            std::coroutine_handle<promise_type> h;
            bool await_ready() noexcept { return false; }
            std::coroutine_handle<> await_suspend(std::coroutine_handle<> caller) noexcept {
                h.promise().continuation = caller;
                return h;
            }
            T await_resume() { return h.promise().take(); }
        };
        return awaiter{h_};
    }

private:
    friend struct detail::task_promise<T>;
    explicit task(std::coroutine_handle<promise_type> h) noexcept : h_(h) {}
    std::coroutine_handle<promise_type> h_;
};

namespace detail {
template <class T>
task<T> task_promise<T>::get_return_object() noexcept {
    return task<T>(std::coroutine_handle<task_promise<T>>::from_promise(*this));
}
inline task<void> task_promise<void>::get_return_object() noexcept {
    return task<void>(std::coroutine_handle<task_promise<void>>::from_promise(*this));
}
}  // namespace detail

}  // namespace filelock::uv
