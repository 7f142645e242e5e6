// SPDX-License-Identifier: MIT
#pragma once

// etcd locks on standalone Asio (header-only over the library filelock-etcd;
// on Boost.Asio: <filelock/etcd_boost_asio.hpp>):
//
//     filelock::etcd::config cfg;
//     cfg.endpoints = {"http://10.0.0.1:2379", "http://10.0.0.2:2379"};
//     filelock::etcd::client etcd(io.get_executor(), cfg);
//     auto lock = co_await etcd.async_lock("jobs/nightly", 5s);
//     write_with(lock.fencing_token());
//
// The client's HTTP requests (libcurl's multi interface) and its lease's
// keep-alives run on the client's executor: its io_context must run while
// locks are held. A strand (or a single-threaded io_context) must serialise
// them. `sync_client` runs its own io_context on an internal thread.

#include <filelock/detail/etcd_session.hpp>
#include <filelock/etcd.hpp>
#include <filelock/detail/standalone_asio.hpp>

#include <asio.hpp>

#define FILELOCK_DETAIL_ASIO_FLAVOUR standalone_asio
#include <filelock/detail/etcd_asio_impl.hpp>
