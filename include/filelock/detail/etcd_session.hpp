// SPDX-License-Identifier: MIT
#pragma once

// What the header-only Asio adapter (<filelock/etcd_asio.hpp>) needs of the
// etcd core, and nothing users name: the reactor an event loop implements,
// and the session a client drives. Not part of the API.

#include <filelock/etcd.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace filelock::etcd::detail {

/// What the etcd core needs of an event loop: timers, socket readiness and a
/// thread-safe post. The adapters implement it on Asio and on libuv. Every
/// callback runs on the loop's thread.
class reactor {
public:
    using time_point = std::chrono::steady_clock::time_point;
    class timer {
    public:
        virtual ~timer() = default;
        /// Calls `f` once at `when`, unless cancelled or re-armed first.
        virtual void arm(time_point when, std::function<void()> f) = 0;
        /// After this, the callback armed last is never called.
        virtual void cancel() = 0;
    };
    class socket {
    public:
        /// Stops watching; never closes the descriptor.
        virtual ~socket() = default;
        /// Watches for readability and/or writability (neither: stop);
        /// `f(readable, writable)` on each readiness until changed.
        virtual void want(bool read, bool write, std::function<void(bool, bool)> f) = 0;
    };
    /// A socket as libcurl names it: a descriptor on POSIX, a `SOCKET` (a
    /// pointer-sized unsigned integer, which an `int` would truncate) on
    /// Windows.
#ifdef _WIN32
    using native_socket = std::uintptr_t;
#else
    using native_socket = int;
#endif
    virtual ~reactor() = default;
    virtual std::unique_ptr<timer> make_timer() = 0;
    virtual std::unique_ptr<socket> make_socket(native_socket s) = 0;
    /// Runs `f` on the loop's thread soon, never inline; callable from any
    /// thread.
    virtual void post(std::function<void()> f) = 0;
    /// Calls `f` if the loop itself goes away first (Asio: the execution
    /// context's shutdown): the session then drops its pending requests,
    /// whose callbacks may keep it alive.
    virtual void on_shutdown(std::function<void()> f) { (void)f; }
};

class session;

/// A session: the lease and the HTTP transport of one client, on one loop.
/// Reference-counted: held locks and pending operations keep it alive.
class FILELOCK_API session_handle {
public:
    /// Throws std::system_error (errc::invalid_argument) on a bad config.
    session_handle(std::unique_ptr<reactor> r, const config& cfg);
    session_handle(const session_handle&) = delete;
    session_handle& operator=(const session_handle&) = delete;
    /// Revokes the lease (best effort, on the loop) once its locks are gone.
    ~session_handle();

    /// Starts acquiring `name` (call on the loop's thread): `done` runs once,
    /// on the loop, never inline. Returns an operation id for `cancel`.
    std::uint64_t lock(std::string name, std::chrono::nanoseconds timeout,
                       std::function<void(etcd::lock_result)> done);
    /// As above, for the kind of lock `o` asks for.
    std::uint64_t lock(std::string name, std::chrono::nanoseconds timeout, const lock_options& o,
                       std::function<void(etcd::lock_result)> done);
    /// Reads who holds `name` and who waits (call on the loop's thread),
    /// taking nothing: no lease is granted for it. `done` runs once, on the
    /// loop, never inline. Returns an operation id for `cancel`.
    std::uint64_t inspect(std::string name, std::function<void(etcd::inspect_result)> done);
    /// Waits for a key under `NAME/` created, changed or deleted after
    /// `revision` (a watch of the prefix from the next one; call on the
    /// loop's thread), taking nothing. `done` runs once, on the loop, never
    /// inline. Returns an operation id for `cancel`.
    std::uint64_t wait_change(std::string name, std::int64_t revision,
                              std::function<void(etcd::change_result)> done);
    /// Cancels the operation (any thread): it completes with `code`
    /// (nothing held, its key deleted first). No-op once completed.
    void cancel(std::uint64_t op, std::error_code code);

    /// Counters (benchmarks, tests): HTTP requests sent, watch streams
    /// opened.
    std::uint64_t requests() const noexcept;
    std::uint64_t watches() const noexcept;
    /// The session's lease (0 before the first lock).
    std::int64_t lease() const noexcept;

private:
    std::shared_ptr<session> s_;
};

}  // namespace filelock::etcd::detail
