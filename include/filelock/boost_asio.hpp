// SPDX-License-Identifier: MIT
#pragma once

// The Asio adapter on Boost.Asio (Boost 1.81+): the same names and the same
// contract as <filelock/asio.hpp>, for Boost.Asio executors, tokens and
// awaitables, e.g. in a Boost.Beast server:
//
//     boost::asio::awaitable<void> handle() {
//         auto lock = co_await filelock::async_lock("app.lock", 2s);
//         ...                               // held until `lock` is destroyed
//     }
//
//     filelock::async_lock(io.get_executor(), "app.lock", 5s,
//         [](boost::system::error_code ec, filelock::lock_file lock) { ... });
//
// Completion signature: `void(boost::system::error_code, filelock::lock_file)`
// (use_future and use_awaitable treat a failure as one); a deadline is
// filelock::errc::timeout, a cancellation boost::asio::error::operation_aborted.
// The coroutine form throws what the standalone flavour's throws
// (timeout_error, std::system_error on cancellation, filesystem_error).
//
// One implementation (detail/asio_impl.hpp) is compiled for either Asio;
// each flavour's names are in an inline namespace of their own
// (filelock::boost_asio, filelock::standalone_asio), so a program may use
// both, in different translation units or in one (there, name the flavour:
// filelock::boost_asio::async_lock). Release events, local queues and the
// acquisition are the library's, shared by both: waiters of both flavours
// in one process queue together on a lock.

#include <filelock/detail/file_acquisition.hpp>
#include <filelock/detail/local_queue.hpp>
#include <filelock/detail/release_source.hpp>
#include <filelock/lock_file.hpp>
#include <filelock/options.hpp>

#include <filelock/detail/boost_asio.hpp>

#if defined(BOOST_ASIO_HAS_POSIX_STREAM_DESCRIPTOR)
#define FILELOCK_DETAIL_ASIO_DESCRIPTOR 1
#endif
#define FILELOCK_DETAIL_ASIO_FLAVOUR boost_asio
#include <filelock/detail/asio_impl.hpp>
