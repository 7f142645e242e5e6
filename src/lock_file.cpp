// SPDX-License-Identifier: MIT
// The synchronous facade: lock_file, simple_lock_file, try_lock.
#include <filelock/detail/file_backend.hpp>
#include <filelock/detail/local_queue.hpp>
#include <filelock/lock_file.hpp>

#include "posix/release.hpp"
#include "sys.hpp"

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
    *this = detail::adopt(target.take());
}

lock_file::lock_file(lock_file&& other) noexcept
    : h_(std::exchange(other.h_, detail::held_file{})) {}

lock_file& lock_file::operator=(lock_file&& other) noexcept {
    if (this != &other) {
        close();
        h_ = std::exchange(other.h_, detail::held_file{});
    }
    return *this;
}

lock_file::~lock_file() { close(); }

void lock_file::close() noexcept {
    if (h_.fd < 0) return;
    const int fd = std::exchange(h_.fd, -1);
    const detail::fork_stamp stamp{h_.generation, h_.forks};
    // A lock another process may share after a fork() is only closed (see
    // release_fd), and its file is not removed from under the other holder.
    if (h_.remove && stamp.is_private()) {
        // Unlink while still holding, and only the file we hold: a waiter that
        // then wins this inode sees that the path no longer names it.
        struct ::stat named {};
        if (detail::sys().lstat(h_.path.c_str(), &named) == 0 &&
            static_cast<unsigned long long>(named.st_dev) == h_.dev &&
            static_cast<unsigned long long>(named.st_ino) == h_.ino)
            detail::sys().unlink(h_.path.c_str());
    }
    detail::release_fd(fd, h_.ofd, stamp);
    // The next waiter of this process, at once (a forked child's copy of its
    // parent's lock has no waiters of ours to hand it to).
    if (!stamp.inherited()) detail::local_release({h_.dev, h_.ino, h_.ofd ? 1 : 0});
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
