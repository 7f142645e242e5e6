// SPDX-License-Identifier: MIT
#pragma once

// etcd locks on Boost.Asio (header-only over the library filelock-etcd):
// the client of <filelock/etcd_asio.hpp>, with the same names and contract,
// on Boost.Asio executors, tokens and awaitables:
//
//     filelock::etcd::client etcd(io.get_executor(), cfg);   // a boost::asio executor
//     auto lock = co_await etcd.async_lock("jobs/nightly", 5s);
//
// Completion signatures carry boost::system::error_code where the
// standalone flavour's carry std::error_code (async_lock, async_wait_lost);
// async_lock_result's `void(lock_result)` is the same. One implementation
// (detail/etcd_asio_impl.hpp) is compiled for either Asio; the names are in
// the inline namespace filelock::etcd::boost_asio (see
// <filelock/boost_asio.hpp>).

#include <filelock/detail/etcd_session.hpp>
#include <filelock/etcd.hpp>
#include <filelock/detail/boost_asio.hpp>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/prefer.hpp>

#define FILELOCK_DETAIL_ASIO_FLAVOUR boost_asio
#include <filelock/detail/etcd_asio_impl.hpp>
