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
// per execution context while operations wait). Operations of one execution
// context for one lock queue (lock_options::queue_local_waiters): only the head
// attempts, the others wait for their turn in the order of their initiations,
// and a release by a holder in this process hands the lock to the head at once.
// Each execution context has queues of its own: a context that stops running
// never holds up the waiters of another context or thread.

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

#include <filelock/detail/file_acquisition.hpp>
#include <filelock/detail/local_queue.hpp>
#include <filelock/detail/release_source.hpp>
#include <filelock/lock_file.hpp>
#include <filelock/options.hpp>

#include <filelock/detail/standalone_asio.hpp>

#if defined(ASIO_HAS_POSIX_STREAM_DESCRIPTOR)
#define FILELOCK_DETAIL_ASIO_DESCRIPTOR 1
#endif
#define FILELOCK_DETAIL_ASIO_FLAVOUR standalone_asio
#include <filelock/detail/asio_impl.hpp>
