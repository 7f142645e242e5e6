// SPDX-License-Identifier: MIT
// The file backend's state: its policy (computed once from the options), its
// moves, and handing a won lock over. The attempt is src/file/attempt.cpp.
#include <filelock/detail/file_backend.hpp>

#include "../platform.hpp"
#include "content.hpp"
#include "ops.hpp"

#include <atomic>
#include <cstdint>
#include <limits>
#include <utility>

namespace filelock::detail {
namespace {

file_policy policy_of(const lock_options& o) noexcept {
    file_policy p;
    const bool exclusive = o.mode == lock_mode::exclusive;
    p.mode = o.mode;
    p.backend = o.backend;
    p.range = o.range;
    p.on_foreign = o.on_foreign_content;
    // A range holder does not own the file: it writes nothing and never
    // removes the file other ranges' holders use.
    const bool owns_file = o.range.whole_file();
    const bool writes = o.write_content && exclusive && owns_file;
    p.nofollow = writes && !o.follow_symlinks;
    // Writing needs a writable descriptor, and so does an exclusive OFD lock
    // (F_WRLCK); everything else locks through a read-only one, which also
    // works on a file the caller may only read.
    p.writable = writes || (o.backend == lock_backend::ofd && exclusive);
    p.remove = o.remove_on_release && exclusive && owns_file;
    p.wake = o.wake_on_release;
    p.queue = o.queue_local_waiters && exclusive;
    // Processes line up for a flock(2) lock on the whole file, readers and
    // slot waiters too (a slot holder holds the file shared): they wait for
    // the writers before them, which are not starved, and not for each other.
    p.order = o.queue_local_waiters && o.backend == lock_backend::flock && owns_file;
    p.file_mode = o.file_mode & 0777;
    // A slot holder shares the file with the other holders: it writes
    // nothing, never removes it, and its byte lock (F_WRLCK) needs a
    // writable descriptor.
    p.slots = o.slots;
    if (o.slots > 1) {
        p.writable = true;
        p.nofollow = false;
        p.remove = false;
    }
    return p;
}

static_assert(max_slots == 1024, "the message below names the maximum");

// What makes the options unusable, before the file is touched.
std::error_code check_range(const lock_options& o, const char*& call) noexcept {
    // An enumerator that names none of its values (a cast, a newer header).
    call = o.mode != lock_mode::exclusive && o.mode != lock_mode::shared
               ? "lock_options::mode is neither exclusive nor shared"
           : o.backend != lock_backend::flock && o.backend != lock_backend::ofd
               ? "lock_options::backend is neither flock nor ofd"
           : o.on_foreign_content != foreign_content::fail &&
                   o.on_foreign_content != foreign_content::lock_without_content
               ? "lock_options::on_foreign_content is neither fail nor lock_without_content"
               : nullptr;
    if (call) return std::make_error_code(std::errc::invalid_argument);
    if (o.slots != 1) {
        call = o.slots == 0 || o.slots > max_slots
                   ? "lock_options::slots must be from 1 to filelock::max_slots (1024)"
               : o.mode == lock_mode::shared      ? "lock_options::slots with lock_mode::shared"
               : o.backend != lock_backend::flock ? "lock_options::slots with lock_backend::ofd"
               : !o.range.whole_file()            ? "lock_options::slots with a byte range"
                                                  : nullptr;
        if (call) return std::make_error_code(std::errc::invalid_argument);
    }
    if (o.range.whole_file()) return {};
    constexpr std::uint64_t max_offset = std::numeric_limits<std::int64_t>::max();
    if (o.backend != lock_backend::ofd) {
        call = "lock_options::range needs lock_backend::ofd";
        return std::make_error_code(std::errc::invalid_argument);
    }
    // (fcntl's l_len is an off_t too: a length past max_offset cannot be
    // asked for, whatever the start.)
    if (o.range.start > max_offset || o.range.length > max_offset ||
        (o.range.length != 0 && o.range.length - 1 > max_offset - o.range.start)) {
        call = "lock_options::range past the largest file offset";
        return std::make_error_code(std::errc::invalid_argument);
    }
    return {};
}

}  // namespace

// The path is taken by reference and copied once, into path_: the callers
// keep theirs, and a by-value parameter would add a move on the way in.
file_backend::file_backend(const std::filesystem::path& path, const lock_options& options)
    : file_backend(path, options, file::platform_ops()) {}

file_backend::file_backend(const std::filesystem::path& path, const lock_options& options,
                           const file::ops& os)
    : ops_(&os), path_(path), policy_(policy_of(options)) {
    // The queue is the platform's, beside the seam: not over a test's seam.
    policy_.order = policy_.order && &os == &file::platform_ops();
    init_error_ = check_range(options, failed_call_);
    if (options.write_content && !init_error_) {
        init_error_ = options.content_template.fits()
                          ? expand_content(options.content_template.view(), content_)
                          : make_error_code(errc::invalid_template);
        content_generation_ = fork_generation();
        if (options.content_template.view().find("{pid}") != std::string_view::npos)
            pid_template_ = options.content_template.view();
    }
    if (!(options.write_content && options.mode == lock_mode::exclusive &&
          options.range.whole_file() && options.slots == 1))
        content_.clear();
}

file_backend::file_backend(file_backend&& other) noexcept
    : ops_(other.ops_),
      path_(std::move(other.path_)),
      policy_(other.policy_),
      content_(std::move(other.content_)),
      pid_template_(std::move(other.pid_template_)),
      content_generation_(other.content_generation_),
      init_error_(other.init_error_),
      failed_call_(other.failed_call_),
      fd_(std::exchange(other.fd_, no_handle)),
      fd_listed_(std::exchange(other.fd_listed_, false)),
      won_(std::exchange(other.won_, false)),
      slot_(other.slot_),
      dev_(other.dev_),
      ino_(other.ino_),
      fd_dev_(other.fd_dev_),
      fd_ino_(other.fd_ino_),
      fd_type_(other.fd_type_),
      fd_known_(std::exchange(other.fd_known_, false)),
      fd_writable_fs_(std::exchange(other.fd_writable_fs_, false)),
      path_looked_(other.path_looked_),
      path_moved_(std::exchange(other.path_moved_, false)),
      fd_generation_(other.fd_generation_),
      fd_forks_(other.fd_forks_),
      order_(std::move(other.order_)),
      bell_(std::exchange(other.bell_, -1)) {}

file_backend::~file_backend() {
    if (won_)
        unlock_and_close();
    else
        close_fd();
}

held_file file_backend::take() noexcept {
    held_file h;  // returned on every path: built in the caller's place, never moved
    if (!won_) return h;
    won_ = false;
    h.fd = fd_;
    unlist_fd(false, false);  // a held lock is shared with children, as flock(1)'s
    h.ofd = policy_.backend == lock_backend::ofd;
    h.start = policy_.range.start;
    h.length = policy_.range.length;
    h.remove = removable_;
    h.slots = policy_.slots;
    h.slot = slot_;
    h.generation = fd_generation_;
    h.forks = fd_forks_;
    h.dev = dev_;
    h.ino = ino_;
    h.path = std::move(path_);  // the backend is spent once its lock is taken
    h.bell = std::exchange(bell_, -1);
    return h;
}

std::uint64_t random_seed() noexcept {
    static std::atomic<std::uint64_t> counter{0};
    const auto now = static_cast<std::uint64_t>(clock::now().time_since_epoch().count());
    std::uint64_t x = now ^ (static_cast<std::uint64_t>(current_pid()) << 32) ^
                      (counter.fetch_add(0x9e3779b97f4a7c15ull, std::memory_order_relaxed));
    // splitmix64 finaliser
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

}  // namespace filelock::detail
