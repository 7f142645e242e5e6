// SPDX-License-Identifier: MIT
// One attempt on a lock file, written once over the platform seam
// (ops.hpp): the lock, the identity check (the lock counts only if the path
// still names the locked file), the content decision (only an empty file or
// a holder's line is overwritten, never a pseudo file) and truncate-then-
// write. Also the lock's identity, reading a holder back, and releasing.
#include <filelock/detail/file_backend.hpp>
#include <filelock/lock_file.hpp>

#include "../inspect/live_holder.hpp"
#include "../platform.hpp"
#include "content.hpp"
#include "ops.hpp"

#include <algorithm>
#include <new>
#include <utility>

namespace filelock::detail {
namespace {

// How often one attempt follows a path whose file is being unlinked or
// replaced under it before it counts as contention.
constexpr int max_identity_rounds = 16;

// How many opens of one attempt a fork may come in the middle of (see
// file_backend::open_fd) before the last is made with fork() held off.
constexpr int max_open_rounds = 4;

file::lock_spec spec_of(const file_policy& p) noexcept {
    return {p.backend == lock_backend::ofd, p.mode == lock_mode::shared, p.range};
}

file::lock_spec spec_of(const held_file& h) noexcept { return {h.ofd, false, {h.start, h.length}}; }

// A slot holder's locks: the shared whole-file lock, which an exclusive
// whole-file user (flock -x, zc.lockfile, a one-holder lock) waits for and
// excludes, and the exclusive byte lock of its slot, which makes it one of
// at most `slots` holders.
constexpr file::lock_spec gate_spec{false, true, {}};

constexpr file::lock_spec slot_spec(unsigned slot) noexcept {
    return {true, false, {slot_offset + slot, 1}};
}

// The identity of a lock with slots: the one lock file, a tag of its own
// (flock is 0, OFD 1, etcd 2) and the slots' bytes.
constexpr int slots_tag = 3;

lock_identity identity(unsigned long long dev, unsigned long long ino, lock_backend backend,
                       const byte_range& range, unsigned slots) noexcept {
    if (slots > 1) return {dev, ino, slots_tag, slot_offset, slots};
    return {dev, ino, backend == lock_backend::ofd ? 1 : 0, range.start, range.length};
}

// Unlocks what a holder holds on `fd` (its slot first), then closes it.
void unlock_close(const file::ops& os, native_handle_type fd, const file::lock_spec& s,
                  unsigned slots, unsigned slot) noexcept {
    if (slots <= 1) return os.unlock_close(fd, s);
    os.unlock(fd, slot_spec(slot));
    os.unlock_close(fd, gate_spec);
}

}  // namespace

// Opens fd_ as one that a forked child closes at the fork (fork_closed),
// from the open on: the child never shares a pending attempt, nor the lock
// won on it before it is handed over (a child forked between the open and a
// lock that wins would keep that lock held after the parent's release). The
// open itself is made without the list's lock, which fork() waits for (an
// open on NFS or FUSE may take long): a fork between the stamp and the
// listing shows in the stamp, and the descriptor, which the child may have
// kept, is closed (nothing is locked on it yet) and opened again. After
// `max_open_rounds - 1` such forks in a row the last open is made with the
// lock held: a fork storm delays the forks then, it never starves the
// attempt. Not over a test's seam, whose descriptors are not the process's.
file::failure file_backend::open_fd() noexcept {
    const file::ops& os = *ops_;
    const bool listed = ops_ == &file::platform_ops();
    for (int round = 1;; ++round) {
        // Stamped before the open: a fork that may have copied the
        // descriptor always shows.
        const fork_stamp stamp = fork_stamp::now();
        fd_generation_ = stamp.generation;
        fd_forks_ = stamp.forks;
        std::unique_lock<std::mutex> g;
        if (listed && round == max_open_rounds) g = fork_closed_lock();
        // Never truncated: a contender must not touch the holder's content.
        if (auto f = os.open(path_, {policy_.writable, policy_.nofollow, policy_.file_mode}, fd_))
            return f;
        if (!listed) return {};
        if (!g.owns_lock()) g = fork_closed_lock();
        if (stamp.is_private()) {
            fd_listed_ = fork_closed_add(fd_);  // out of memory: try_acquire's check
            return {};
        }
        g.unlock();
        os.close(fd_);
        fd_ = no_handle;
    }
}

// A listed descriptor leaves the list as it closes or is handed over, under
// the list's lock (fork() finds it listed or gone). A forked child's copy of
// one was closed at the fork: its number may be a file of the child's own.
void file_backend::unlist_fd(bool close, bool unlock) noexcept {
    if (fd_ == no_handle) return;
    const auto release = [&] {
        if (!close) return;
        if (unlock)
            unlock_close(*ops_, fd_, spec_of(policy_), policy_.slots, slot_);
        else
            ops_->close(fd_);
    };
    if (!fd_listed_) {
        release();
    } else {
        std::unique_lock<std::mutex> g = fork_closed_lock();
        if (fd_generation_ == fork_generation()) {
            fork_closed_remove(fd_);
            release();
            // Handed over: listed since its open, it was closed by every
            // child forked since, so it is private as of now.
            if (!close) fd_forks_ = fork_stamp::now().forks;
        }
        fd_listed_ = false;
    }
    fd_ = no_handle;
    fd_known_ = fd_writable_fs_ = false;
    path_looked_ = {};
}

void file_backend::close_fd() noexcept { unlist_fd(true, false); }

bool file_backend::fd_open() const noexcept {
    return fd_ != no_handle && !(fd_listed_ && fd_generation_ != fork_generation());
}

// Contended: whether the path has come to name another file than fd_'s
// (looked at every path_look, the first time a path_look after the first
// contention on the descriptor). A path that names nothing is waited on as
// before: the holder's release tells (a directory swapped by two renames
// names nothing for a moment).
bool file_backend::path_names_another() noexcept {
    const auto now = clock::now();
    if (path_looked_ == clock::time_point{}) path_looked_ = now;
    if (now - path_looked_ < path_look) return false;
    path_looked_ = now;
    file::file_info held, named;
    if (fd_info(held) || ops_->info_at(path_, policy_.nofollow, named)) return false;
    return named.dev != held.dev || named.ino != held.ino;
}

// The open descriptor's file (its size left 0), asked of the system once: a
// waiter's identity, and the check after each win, cost no call on the
// descriptor.
file::failure file_backend::fd_info(file::file_info& out) const noexcept {
    if (!fd_known_) {
        file::file_info st;
        if (auto f = ops_->info(fd_, st)) return f;
        fd_dev_ = st.dev;
        fd_ino_ = st.ino;
        fd_type_ = static_cast<unsigned char>(st.type);
        fd_known_ = true;
    }
    out = {};
    out.dev = fd_dev_;
    out.ino = fd_ino_;
    out.type = static_cast<file::file_type>(fd_type_);
    return {};
}

// After a fork() the parent and the child share the descriptor's open file
// description, and with it the lock, so an unlock in either would release
// it for both: a descriptor that is not private (see fork_stamp) is only
// closed, and the lock stays held until every copy is closed (as
// flock(1)'s is). A listed one's copies are closed by the children at the
// fork, unused: it is unlocked.
void file_backend::unlock_and_close() noexcept {
    unlist_fd(true, fd_listed_ || fork_stamp{fd_generation_, fd_forks_}.is_private());
    won_ = false;
    process_queue::close_bell(std::exchange(bell_, -1), fd_generation_);  // after the unlock
}

bool file_backend::won_inherited() const noexcept {
    return won_ && fork_stamp{fd_generation_, fd_forks_}.inherited();
}

std::error_code file_backend::try_acquire() noexcept {
    if (init_error_) return init_error_;
    if (auto f = ops_->supports(spec_of(policy_))) {
        failed_call_ = f.call;
        return f.ec;
    }
    // Attempts are made only on a descriptor opened since the last fork():
    // one shared with a parent or child would share a won lock with it.
    if (fd_ != no_handle && !fork_stamp{fd_generation_, fd_forks_}.is_private()) {
        close_fd();  // never unlocked: the other process's lock, if any
        won_ = false;
        process_queue::close_bell(std::exchange(bell_, -1), fd_generation_);
    }
    if (won_) return {};
    failed_call_ = nullptr;
    // Slot waiters line up as readers do: the holders hold the file shared.
    const bool reader = policy_.mode == lock_mode::shared || policy_.slots > 1;
    // An exclusive wait's last attempt is made on the lock whatever the
    // queue says: it wins only a free lock, which a stalled head left free.
    // A reader's is not (it would get in beside other readers, and starve
    // the writer the queue keeps it behind).
    const bool last = std::exchange(at_deadline_, false) && !reader;
    if (!policy_.order) return attempt();
    // Behind an earlier waiter of another process: its turn, not ours.
    const auto now = clock::now();
    if (!last && !order_.may_attempt(now)) return errc::locked;
    if (reader && order_.writer_waits(path_)) {
        // A writer waits: a reader does not attempt (it would get in while
        // readers hold the lock, and starve the writer) but counts it as
        // contention, and lines up behind it at the second.
        order_.contended(path_, policy_.file_mode, now, reader, policy_.slots);
        return errc::locked;
    }
    const std::error_code ec = attempt();
    if (ec == errc::locked)
        order_.contended(path_, policy_.file_mode, now, reader, policy_.slots);
    else if (ec)
        order_.leave();  // failed: the next in line is the head
    else
        bell_ = order_.leave_won();  // rung once the lock is released (release_held)
    return ec;
}

std::error_code file_backend::attempt() noexcept {
    const file::ops& os = *ops_;
    // Begun before a fork(), attempted in the child: the line names the
    // child. (The general template's expansion may allocate.)
    if (!content_.empty() && !pid_template_.empty() && content_generation_ != fork_generation()) {
        try {
            if (auto ec = expand_content(pid_template_, content_)) return ec;
        } catch (const std::bad_alloc&) {
            return std::make_error_code(std::errc::not_enough_memory);
        }
        content_generation_ = fork_generation();
    }
    // Gives up what the round holds and reports `f`.
    const auto fail = [this](const file::failure& f) {
        unlock_and_close();
        failed_call_ = f.call;
        return f.ec;
    };
    for (int round = 0; round < max_identity_rounds; ++round) {
        if (fd_ == no_handle) {
            if (auto f = open_fd()) return fail(f);
        }
        if (auto f = lock()) {
            // Contention keeps the descriptor for the next attempt: reopening
            // would generate close events that wake other waiters.
            if (f.ec != errc::locked) {
                close_fd();  // nothing to unlock
                failed_call_ = f.call;
            } else if (path_names_another()) {
                // The lock to wait for is that file's now: attempted on at
                // once, and watched.
                close_fd();
                path_moved_ = true;
                continue;
            }
            return f.ec;
        }
        won_ = true;

        // The descriptor's file: asked once per descriptor (a waiter's
        // contention asked it already), as is its filesystem.
        file::file_info held;
        if (auto f = fd_info(held)) return fail(f);
        if (held.type != file::file_type::regular) return fail(os.not_regular(held.type));
        if (!content_.empty() && !fd_writable_fs_) {
            // Writing to /proc/sys/... changes kernel settings: never.
            long magic = 0;
            if (auto f = os.fs_type(fd_, held, magic)) return fail(f);
            if (is_pseudo_filesystem(magic)) return fail({errc::pseudo_file});
            fd_writable_fs_ = true;
        }
        // The lock counts only if the path still names the locked file.
        // (Then the path's size is the file's.)
        file::file_info named;
        if (auto f = os.info_at(path_, policy_.nofollow, named)) {
            if (!f.gone) return fail(f);
            unlock_and_close();  // unlinked after we opened it: retry on a new file
            continue;
        }
        if (named.dev != held.dev || named.ino != held.ino) {
            unlock_and_close();  // replaced: retry on the file the path names now
            continue;
        }
        dev_ = held.dev;
        ino_ = held.ino;
        bool write = !content_.empty();
        // A file with other content, kept as it is, is never removed.
        removable_ = policy_.remove && (write || named.size == 0);
        std::uint64_t old_size = named.size;  // what the truncation must cut
        if (write && named.size > 0) {
            // Only a lock holder's line is overwritten, never a script or data.
            bool holder_line = named.size <= max_holder_bytes;
            if (holder_line) {
                // One byte more than a holder line may have: a file that grew
                // since the size was taken is seen as what it is now.
                char buf[max_holder_bytes + 1];
                std::size_t n = 0;
                if (auto f = os.read_at(fd_, buf, sizeof buf, 0, n)) return fail(f);
                const std::string_view old(buf, n);
                old_size = std::max<std::uint64_t>(old_size, n);
                holder_line = is_holder_line(old);
                // Our own line already (this process locked it last): no
                // write needed, and the file's mtime stays.
                if (old == content_) write = false;
            }
            if (!holder_line) {
                if (policy_.on_foreign == foreign_content::fail)
                    return fail({errc::foreign_content});
                write = removable_ = false;
            }
        }
        if (write) {
            // Truncate first (only what is left over), then write: whichever
            // call fails, the file still holds one line that is a prefix of a
            // holder's, never foreign bytes.
            if (old_size > content_.size()) {
                if (auto f = os.truncate(fd_, content_.size())) return fail(f);
            }
            for (std::size_t done = 0, n = 0; done < content_.size(); done += n) {
                if (auto f =
                        os.write_at(fd_, content_.data() + done, content_.size() - done, done, n))
                    return fail(f);
            }
        }
        return {};
    }
    return errc::locked;  // the path keeps changing under us
}

// The kernel lock of the policy on fd_. With slots: the shared whole-file
// lock, then the first free slot's byte in turn; when every slot is taken the
// whole-file lock is given back (a waiter holds nothing an exclusive user
// would wait for), the descriptor stays.
file::failure file_backend::lock() noexcept {
    const file::ops& os = *ops_;
    if (policy_.slots <= 1) return os.try_lock(fd_, spec_of(policy_));
    if (auto f = os.try_lock(fd_, gate_spec)) return f;
    for (unsigned slot = 0; slot < policy_.slots; ++slot) {
        auto f = os.try_lock(fd_, slot_spec(slot));
        if (!f) {
            slot_ = slot;
            return {};
        }
        if (f.ec != errc::locked) return f;  // the caller closes: nothing stays held
    }
    os.unlock(fd_, gate_spec);
    return {errc::locked};
}

bool file_backend::identity(lock_identity& id) const noexcept {
    file::file_info st;
    if (fd_open() ? fd_info(st) : ops_->info_at(path_, policy_.nofollow, st)) return false;
    id = detail::identity(st.dev, st.ino, policy_.backend, policy_.range, policy_.slots);
    return true;
}

std::string file_backend::holder() const noexcept {
    if (policy_.slots > 1) {
        // Slot holders write nothing: the holders are the processes holding
        // the file's whole-file locks.
        file::file_info st;
        if (fd_open() ? fd_info(st) : ops_->info_at(path_, false, st)) return {};
        return ops_->flock_holders(st);
    }
    return fd_open() ? file::read_holder_handle(*ops_, fd_) : read_holder_at(path_);
}

lock_identity identity_of(const held_file& h) noexcept {
    return identity(h.dev, h.ino, h.ofd ? lock_backend::ofd : lock_backend::flock,
                    {h.start, h.length}, h.slots);
}

namespace file {

bool content_readable(const ops& os, native_handle_type h, const file_info& f) noexcept {
    long magic = 0;
    return f.type == file_type::regular && !os.fs_type(h, f, magic) && !is_pseudo_filesystem(magic);
}

std::string read_holder_handle(const ops& os, native_handle_type h) noexcept {
    try {
        file_info f;
        if (os.info(h, f) || !content_readable(os, h, f)) return {};
        char buf[max_holder_bytes];
        const std::uint64_t at = os.holder_offset();
        std::size_t n = 0;
        if (os.read_at(h, buf, sizeof buf - at, at, n) || n == 0) n = 0;
        // The line may be an earlier holder's: name the live one.
        return live_holder(os, h, std::string_view(buf, n));
    } catch (...) {
        return {};
    }
}

void release_held(const ops& os, held_file& h) noexcept {
    if (h.fd == no_handle) return;
    const native_handle_type fd = std::exchange(h.fd, no_handle);
    const fork_stamp stamp{h.generation, h.forks};
    // The doorbell after the unlock: the next in line finds the lock free.
    struct ring_after {
        int bell;
        unsigned generation;
        ~ring_after() { process_queue::close_bell(bell, generation); }
    } ring{std::exchange(h.bell, -1), h.generation};
    // A lock another process may share after a fork() is only closed (see
    // file_backend::unlock_and_close), and its file is not removed from
    // under the other holder.
    if (!stamp.is_private()) return os.close(fd);
    if (h.remove) {
        // Removed while still held, and only the file held: a waiter that
        // then wins this file sees that the path no longer names it.
        file_info named;
        if (!os.info_at(h.path, true, named) && named.dev == h.dev && named.ino == h.ino)
            os.remove(h.path);
    }
    unlock_close(os, fd, spec_of(h), h.slots, h.slot);
}

}  // namespace file

void release_held(held_file& h) noexcept { file::release_held(file::platform_ops(), h); }

std::string read_holder_at(const std::filesystem::path& path) noexcept {
    const file::ops& os = file::platform_ops();
    native_handle_type h = no_handle;
    if (os.open_to_read(path, h)) return {};
    std::string holder = file::read_holder_handle(os, h);
    os.close(h);
    return holder;
}

}  // namespace filelock::detail

std::string filelock::read_holder(const std::filesystem::path& path) noexcept {
    return detail::read_holder_at(path);
}
