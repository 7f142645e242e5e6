// SPDX-License-Identifier: MIT
#pragma once

// The Boost.Asio flavour of the Asio adapter: what its one implementation
// (detail/asio_impl.hpp, detail/etcd_asio_impl.hpp) needs of the Asio it is
// compiled for. Included by <filelock/boost_asio.hpp> and
// <filelock/etcd_boost_asio.hpp>; the standalone flavour is
// detail/standalone_asio.hpp.

// Before Asio's headers: with mingw-w64's POSIX thread model, <mutex> brings
// pthread.h, and whether it came first decides whether Asio takes POSIX or
// Win32 threads (its Win32 timer thread does not start under wine).
#include <mutex>
#include <system_error>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/compose.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/execution.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/experimental/as_tuple.hpp>
#include <boost/asio/is_executor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#if defined(BOOST_ASIO_HAS_POSIX_STREAM_DESCRIPTOR)
#include <boost/asio/posix/stream_descriptor.hpp>
#endif
#include <boost/system/error_code.hpp>

namespace filelock {
/// The Boost.Asio flavour of the Asio adapter (<filelock/boost_asio.hpp>,
/// <filelock/etcd_boost_asio.hpp>), an inline namespace: its names are
/// filelock::async_lock, filelock::etcd::client, ... as the standalone
/// flavour's. Name it (filelock::boost_asio::async_lock) only where a
/// translation unit includes both flavours.
inline namespace boost_asio {
namespace asio_detail {

namespace net = ::boost::asio;
/// The error code of completion signatures: Boost.Asio's, so that
/// use_future and use_awaitable treat a failure as one.
using error_code = boost::system::error_code;

/// The library's code as a completion's. Boost's system and generic
/// categories become the standard ones when converted to std::error_code;
/// they are mapped back, so that a cancellation compares equal to
/// boost::asio::error::operation_aborted. Other categories (filelock's
/// errc) are held as they are: `ec == filelock::errc::timeout` holds.
inline error_code to_net_error(const std::error_code& ec) noexcept {
    if (ec.category() == std::system_category())
        return {ec.value(), boost::system::system_category()};
    if (ec.category() == std::generic_category())
        return {ec.value(), boost::system::generic_category()};
    return ec;
}

/// The flavour's operation_aborted, as the library's code (what the acquire
/// machine and the etcd session are cancelled with).
inline std::error_code operation_aborted() noexcept {
    return std::error_code(error_code(net::error::operation_aborted));
}

}  // namespace asio_detail
}  // namespace boost_asio
}  // namespace filelock
