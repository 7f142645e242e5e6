// SPDX-License-Identifier: MIT
// The cross-process queue of a lock file (see
// include/filelock/detail/process_queue.hpp): tickets are one-byte OFD
// locks in the sibling file "<lock file>.queue".
#include <filelock/detail/process_queue.hpp>
#include <filelock/inspect.hpp>

#include "../platform.hpp"

#include <utility>

#if defined(__linux__)
#include <cerrno>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

namespace filelock::detail {

process_queue::process_queue(process_queue&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      ticket_(std::exchange(other.ticket_, 0)),
      contentions_(other.contentions_),
      unusable_(other.unusable_),
      write_(other.write_),
      head_(other.head_),
      head_write_(other.head_write_),
      head_since_(other.head_since_),
      suspect_since_(other.suspect_since_),
      suspect_(other.suspect_),
      generation_(other.generation_),
      forks_(other.forks_) {}

#if defined(F_OFD_SETLK)

namespace {

// Tickets live at offsets [1, max_ticket]; byte 0 is left alone.
constexpr std::uint64_t max_ticket = std::uint64_t(1) << 62;
// However crowded the queue, registering looks at so many tickets at most.
constexpr int max_probes = 100000;

int set_lock(int fd, short type, std::uint64_t at) noexcept {
    struct ::flock lk {};
    lk.l_type = type;
    lk.l_whence = SEEK_SET;
    lk.l_start = static_cast<off_t>(at);
    lk.l_len = 1;
    int r;
    do r = ::fcntl(fd, F_OFD_SETLK, &lk);
    while (r == -1 && errno == EINTR);
    return r;
}

// A ticket held by another description in [from, to) (to == 0: to the end):
// true and its offset and type in `at` and `write`.
bool held_in(int fd, std::uint64_t from, std::uint64_t to, std::uint64_t& at,
             bool& write) noexcept {
    struct ::flock lk {};
    lk.l_type = F_WRLCK;
    lk.l_whence = SEEK_SET;
    lk.l_start = static_cast<off_t>(from);
    lk.l_len = to == 0 ? 0 : static_cast<off_t>(to - from);
    int r;
    do r = ::fcntl(fd, F_OFD_GETLK, &lk);
    while (r == -1 && errno == EINTR);
    if (r == -1 || lk.l_type == F_UNLCK) return false;
    at = static_cast<std::uint64_t>(lk.l_start);
    write = lk.l_type == F_WRLCK;
    return true;
}

}  // namespace

void process_queue::contended(const std::filesystem::path& lock_path, unsigned mode,
                              clock::time_point now) noexcept {
    if (fd_ >= 0 || unusable_ || ++contentions_ < 2) return;
    try {
        const std::filesystem::path q = queue_path(lock_path);
        const fork_stamp stamp = fork_stamp::now();
        int fd;
        do
            fd =
                ::open(q.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW | O_NONBLOCK,
                       static_cast<mode_t>(mode & 0777));
        while (fd == -1 && errno == EINTR);
        if (fd < 0) {
            unusable_ = true;  // a read-only directory, a file of another user: no order
            return;
        }
        struct ::stat st {};
        if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
            ::close(fd);
            unusable_ = true;
            return;
        }
        // One past the highest ticket held; a ticket taken by another
        // registrant in between makes us look further.
        std::uint64_t at = 1, found = 0;
        bool write = false;
        for (int probe = 0; probe < max_probes && at <= max_ticket; ++probe) {
            if (held_in(fd, at, 0, found, write)) {
                at = found >= at ? found + 1 : at + 1;
                continue;
            }
            if (set_lock(fd, F_WRLCK, at) == 0) {
                fd_ = fd;
                ticket_ = at;
                write_ = true;
                head_ = 0;
                head_since_ = now;
                generation_ = stamp.generation;
                forks_ = stamp.forks;
                return;
            }
            if (errno != EAGAIN && errno != EACCES) break;  // no OFD locks here
        }
        ::close(fd);
        unusable_ = true;
    } catch (...) {
        unusable_ = true;
    }
}

bool process_queue::may_attempt(clock::time_point now) noexcept {
    if (fd_ < 0) return true;
    if (!fork_stamp{generation_, forks_}.is_private()) {
        // A forked child's copy: the ticket is the parent's (an unlock here
        // would drop it for both). Close it only, and register anew.
        ::close(std::exchange(fd_, -1));
        ticket_ = 0;
        contentions_ = 0;
        return true;
    }
    // The lowest ticket below ours: the head.
    std::uint64_t head = 0, at = 0;
    bool head_write = false, write = false;
    for (std::uint64_t to = ticket_; to > 1 && held_in(fd_, 1, to, at, write) && at < to; to = at) {
        head = at;
        head_write = write;
    }
    if (head == 0) {
        // The head's heartbeat: its ticket flips at every attempt.
        write_ = !write_;
        (void)set_lock(fd_, write_ ? F_WRLCK : F_RDLCK, ticket_);
        return true;
    }
    if (head != head_ || head_write != head_write_) {
        head_ = head;
        head_write_ = head_write;
        head_since_ = now;
        suspect_ = false;
        return false;
    }
    if (now - head_since_ < stall_limit) return false;
    // The head seems stalled. Confirmed only by a later look: a release
    // wakes the head and us at once, and the head that wins leaves the
    // queue before then (one bit of heartbeat can also alias once).
    if (!suspect_) {
        suspect_ = true;
        suspect_since_ = now;
        return false;
    }
    if (now - suspect_since_ < confirm_stall) return false;
    head_since_ = now;  // attempt, then again a stall later
    suspect_ = false;
    return true;
}

void process_queue::leave() noexcept {
    if (fd_ >= 0) {
        // Closing drops the ticket (the only lock on this description),
        // unless a forked child shares it: the ticket then stays until
        // both have closed it, which only delays the order.
        ::close(fd_);
        fd_ = -1;
    }
    ticket_ = 0;
    contentions_ = 0;
}

#else  // no OFD locks: never registers

void process_queue::contended(const std::filesystem::path&, unsigned, clock::time_point) noexcept {
    unusable_ = true;
}
bool process_queue::may_attempt(clock::time_point) noexcept { return true; }
void process_queue::leave() noexcept {
    ticket_ = 0;
    contentions_ = 0;
}

#endif

}  // namespace filelock::detail
