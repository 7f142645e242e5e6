// SPDX-License-Identifier: MIT
// The file backend's parts that do not depend on the platform: its options,
// its moves, and handing a won lock over. The attempt itself is the
// platform's (src/posix/file_backend.cpp, src/win32/file_backend.cpp).
#include <filelock/detail/file_backend.hpp>

#include <cstdint>
#include <limits>
#include <utility>

namespace filelock::detail {

file_backend::file_backend(std::filesystem::path path, const lock_options& options)
    : path_(std::move(path)),
      shared_(options.mode == lock_mode::shared),
      ofd_(options.backend == lock_backend::ofd),
      writes_(options.write_content && options.mode == lock_mode::exclusive),
      remove_(options.remove_on_release && options.mode == lock_mode::exclusive),
      wake_(options.wake_on_release),
      queue_(options.queue_local_waiters && options.mode == lock_mode::exclusive),
      keep_foreign_(options.on_foreign_content == foreign_content::lock_without_content),
      file_mode_(options.file_mode & 0777),
      range_(options.range) {
    if (!range_.whole_file()) {
        // A range holder does not own the file: it writes nothing and never
        // removes the file other ranges' holders use.
        writes_ = false;
        remove_ = false;
        constexpr std::uint64_t max_offset = std::numeric_limits<std::int64_t>::max();
        if (!ofd_) {
            failed_call_ = "lock_options::range needs lock_backend::ofd";
            init_error_ = std::make_error_code(std::errc::invalid_argument);
        } else if (range_.start > max_offset ||
                   (range_.length != 0 && range_.length - 1 > max_offset - range_.start)) {
            failed_call_ = "lock_options::range past the largest file offset";
            init_error_ = std::make_error_code(std::errc::invalid_argument);
        }
    }
    nofollow_ = writes_ && !options.follow_symlinks;
    // Writing needs a writable descriptor, and so does an exclusive OFD lock
    // (F_WRLCK); everything else locks through a read-only one, which also
    // works on a file the caller may only read.
    read_only_ = !writes_ && !(ofd_ && !shared_);
    if (options.write_content && !init_error_)
        init_error_ = options.content_template.fits()
                          ? expand_content(options.content_template.view(), content_)
                          : make_error_code(errc::invalid_template);
    if (!writes_) content_.clear();
}

file_backend::file_backend(file_backend&& other) noexcept
    : path_(std::move(other.path_)),
      content_(std::move(other.content_)),
      init_error_(other.init_error_),
      failed_call_(other.failed_call_),
      fd_(std::exchange(other.fd_, no_handle)),
      won_(std::exchange(other.won_, false)),
      shared_(other.shared_),
      ofd_(other.ofd_),
      writes_(other.writes_),
      nofollow_(other.nofollow_),
      read_only_(other.read_only_),
      remove_(other.remove_),
      wake_(other.wake_),
      queue_(other.queue_),
      keep_foreign_(other.keep_foreign_),
      file_mode_(other.file_mode_),
      range_(other.range_),
      dev_(other.dev_),
      ino_(other.ino_),
      fd_generation_(other.fd_generation_),
      fd_forks_(other.fd_forks_) {}

file_backend::~file_backend() {
    if (won_)
        unlock_and_close();
    else
        close_fd();
}

held_file file_backend::take() noexcept {
    if (!won_) return {};
    won_ = false;
    held_file h;
    h.fd = std::exchange(fd_, no_handle);
    h.ofd = ofd_;
    h.start = range_.start;
    h.length = range_.length;
    h.remove = remove_;
    h.generation = fd_generation_;
    h.forks = fd_forks_;
    h.dev = dev_;
    h.ino = ino_;
    h.path = std::move(path_);  // the backend is spent once its lock is taken
    return h;
}

}  // namespace filelock::detail
