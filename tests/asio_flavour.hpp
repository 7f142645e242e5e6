// SPDX-License-Identifier: MIT
#pragma once
// The Asio tests (test_asio.cpp, test_etcd.cpp) are compiled twice from the
// same sources, once per Asio flavour: FILELOCK_TEST_BOOST_ASIO selects
// Boost.Asio (<filelock/boost_asio.hpp>), otherwise standalone Asio
// (<filelock/asio.hpp>). In the tests, `asio` names the flavour's namespace
// and test::asio_error_code its completions' error code;
// FILELOCK_TEST_ETCD_ASIO is the flavour's etcd header, to #include.

#if defined(FILELOCK_TEST_BOOST_ASIO)

#include <filelock/boost_asio.hpp>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/experimental/deferred.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/system_executor.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/system/system_error.hpp>

#define FILELOCK_TEST_ETCD_ASIO <filelock/etcd_boost_asio.hpp>

namespace asio = boost::asio;

namespace test {
/// The error code of the flavour's completion signatures.
using asio_error_code = boost::system::error_code;
/// What use_future's get() throws on a failure.
using asio_system_error = boost::system::system_error;
/// The flavour's namespace for the adapter's names.
namespace flavour = filelock::boost_asio;
}  // namespace test

#else

#include <filelock/asio.hpp>

#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/experimental/deferred.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <asio/strand.hpp>
#include <asio/system_executor.hpp>
#include <asio/use_future.hpp>

#include <system_error>

#define FILELOCK_TEST_ETCD_ASIO <filelock/etcd_asio.hpp>

namespace test {
using asio_error_code = std::error_code;
using asio_system_error = std::system_error;
namespace flavour = filelock::standalone_asio;
}  // namespace test

#endif
