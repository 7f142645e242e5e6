// SPDX-License-Identifier: MIT
#pragma once

// The standalone Asio flavour of the Asio adapter: what its one
// implementation (detail/asio_impl.hpp, detail/etcd_asio_impl.hpp) needs of
// the Asio it is compiled for. Included by <filelock/asio.hpp> and
// <filelock/etcd_asio.hpp>; the Boost.Asio flavour is detail/boost_asio.hpp.

// Before Asio's headers: with mingw-w64's POSIX thread model, <mutex> brings
// pthread.h, and whether it came first decides whether Asio takes POSIX or
// Win32 threads (its Win32 timer thread does not start under wine).
#include <mutex>
#include <system_error>

#include <asio/any_io_executor.hpp>
#include <asio/associated_cancellation_slot.hpp>
#include <asio/associated_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/awaitable.hpp>
#include <asio/cancellation_type.hpp>
#include <asio/compose.hpp>
#include <asio/dispatch.hpp>
#include <asio/error.hpp>
#include <asio/execution.hpp>
#include <asio/execution_context.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/is_executor.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#if defined(ASIO_HAS_POSIX_STREAM_DESCRIPTOR)
#include <asio/posix/stream_descriptor.hpp>
#endif

namespace filelock {
/// The standalone Asio flavour of the Asio adapter (<filelock/asio.hpp>,
/// <filelock/etcd_asio.hpp>), an inline namespace: its names are
/// filelock::async_lock, filelock::etcd::client, ... Name it
/// (filelock::standalone_asio::async_lock) only where a translation unit
/// includes both flavours.
inline namespace standalone_asio {
namespace asio_detail {

namespace net = ::asio;
/// The error code of completion signatures: Asio's own (std::error_code).
using error_code = std::error_code;

/// The library's code as a completion's.
inline error_code to_net_error(const std::error_code& ec) noexcept { return ec; }

/// The flavour's operation_aborted, as the library's code (what the acquire
/// machine and the etcd session are cancelled with).
inline std::error_code operation_aborted() noexcept {
    return std::error_code(error_code(net::error::operation_aborted));
}

}  // namespace asio_detail
}  // namespace standalone_asio
}  // namespace filelock
