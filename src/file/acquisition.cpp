// SPDX-License-Identifier: MIT
// The file acquisition that the event-loop drivers execute: the state machine
// over the file backend, compiled here so that neither is in an installed
// header.
#include <filelock/detail/file_acquisition.hpp>
#include <filelock/detail/file_backend.hpp>

#include <utility>

namespace filelock::detail {

struct file_acquisition::impl {
    impl(const std::filesystem::path& path, std::chrono::nanoseconds timeout,
         const lock_options& options)
        : acq(std::in_place, timeout, options.backoff, random_seed(), path, options) {}
    file_acquire acq;
};

file_acquisition::file_acquisition(const std::filesystem::path& path,
                                   std::chrono::nanoseconds timeout, const lock_options& options)
    : impl_(std::make_unique<impl>(path, timeout, options)) {}

file_acquisition::~file_acquisition() = default;

void file_acquisition::use_queue(queue_waiter* place, const void* domain) noexcept {
    impl_->acq.use_queue(place, domain);
}

void file_acquisition::drop_queue() noexcept { impl_->acq.drop_queue(); }

action file_acquisition::resume(const input& in) { return impl_->acq.resume(in); }

bool file_acquisition::identity(lock_identity& id) const noexcept {
    return impl_->acq.backend().identity(id);
}

const std::filesystem::path& file_acquisition::path() const noexcept {
    return impl_->acq.backend().path();
}

int file_acquisition::queue_turn() const noexcept { return impl_->acq.backend().queue_turn(); }

lock_file file_acquisition::take() noexcept { return adopt(impl_->acq.backend().take()); }

}  // namespace filelock::detail
