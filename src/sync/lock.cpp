// SPDX-License-Identifier: MIT
// filelock::lock(): the file backend under the sync driver.
#include <filelock/detail/file_backend.hpp>
#include <filelock/lock_file.hpp>

#include "driver.hpp"

#include <new>
#include <utility>

namespace filelock {
namespace {

lock_file lock_impl(const std::filesystem::path& path, std::chrono::nanoseconds timeout,
                    const lock_options& options, std::error_code& ec, bool throwing) {
    detail::file_acquire acq(std::in_place, timeout, options.backoff, detail::random_seed(), path,
                             options);
    ec = detail::run_sync(acq, path, options.mode == lock_mode::shared);
    if (!ec) return detail::adopt(acq.backend().take());
    if (throwing)
        detail::throw_error(ec, path, ec == errc::timeout ? acq.backend().holder() : std::string(),
                            acq.backend().failed_call());
    return {};
}

}  // namespace

lock_file detail::lock_timed(const std::filesystem::path& path, std::chrono::nanoseconds timeout,
                             const lock_options& options) {
    std::error_code ec;
    return lock_impl(path, timeout, options, ec, true);
}

lock_file detail::lock_timed(const std::filesystem::path& path, std::chrono::nanoseconds timeout,
                             const lock_options& options, std::error_code& ec) noexcept {
    try {
        return lock_impl(path, timeout, options, ec, false);
    } catch (const std::bad_alloc&) {
        ec = std::make_error_code(std::errc::not_enough_memory);
        return {};
    }
}

}  // namespace filelock
