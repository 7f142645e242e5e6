// SPDX-License-Identifier: MIT
// The synchronous facade: lock_file, simple_lock_file, try_lock.
#include <filelock/detail/file_backend.hpp>
#include <filelock/detail/local_queue.hpp>
#include <filelock/lock_file.hpp>

#include "platform.hpp"

#include <new>
#include <utility>

namespace filelock {

lock_file detail::adopt(held_file&& h) noexcept {
    lock_file lock;
    lock.h_ = std::move(h);
    return lock;
}

lock_file::lock_file(const std::filesystem::path& path, const lock_options& options) {
    detail::file_backend target(path, options);
    if (auto ec = target.try_acquire())
        detail::throw_error(ec, path, ec == errc::locked ? target.holder() : std::string(),
                            target.failed_call());
    h_ = target.take();
}

// A held_file moved from holds nothing (see held_file.hpp).
lock_file::lock_file(lock_file&& other) noexcept : h_(std::move(other.h_)) {}

lock_file& lock_file::operator=(lock_file&& other) noexcept {
    if (this != &other) {
        close();
        h_ = std::move(other.h_);
    }
    return *this;
}

lock_file::~lock_file() { close(); }

void lock_file::close() noexcept {
    if (h_.fd == detail::no_handle) return;
    // The unlock first: what follows is not between a release and its next
    // holder (release_held() leaves what identifies the lock as it was).
    detail::release_held(h_);
    // The next waiter of this process, at once (a forked child's copy of its
    // parent's lock has no waiters of ours to hand it to).
    if (!detail::fork_stamp{h_.generation, h_.forks}.inherited())
        detail::local_release(detail::identity_of(h_));
}

simple_lock_file::simple_lock_file(const std::filesystem::path& path, lock_options options)
    : lock_file(path, [&] {
          options.write_content = false;
          return options;
      }()) {}

lock_file detail::try_lock_once(const std::filesystem::path& path, const lock_options& options,
                                std::error_code& ec) noexcept {
    try {
        detail::file_backend target(path, options);
        ec = target.try_acquire();
        return ec ? lock_file() : detail::adopt(target.take());
    } catch (const std::bad_alloc&) {
        ec = std::make_error_code(std::errc::not_enough_memory);
        return {};
    }
}

}  // namespace filelock
