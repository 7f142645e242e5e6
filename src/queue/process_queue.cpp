// SPDX-License-Identifier: MIT
// The cross-process queue of a lock file (see
// include/filelock/detail/process_queue.hpp): tickets are one-byte OFD
// locks in the sibling file "<lock file>.queue".
#include <filelock/detail/process_queue.hpp>
#include <filelock/inspect.hpp>

#include "../platform.hpp"

#include <mutex>
#include <utility>

#if defined(__linux__)
#include "../posix/fork_closed.hpp"

#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#endif

namespace filelock::detail {

// The descriptors of the queue that this process holds (see fork() in
// process_queue.hpp): its waiters that hold some, listed here, and the
// doorbells that winners keep until they release, in fork_closed's list
// (handed over by leave_won(), until close_bell()). fork_closed's mutex
// guards both lists and every opening and closing of what they hold, and is
// held across fork(): the child finds each descriptor listed or not yet
// open, never half done. It is a leaf: nothing else is locked while it is
// held.
struct live_tickets {
#if defined(F_OFD_SETLK)
    std::mutex& mutex = fork_closed::get().mutex();
    process_queue* first = nullptr;

    static live_tickets& get() noexcept;
    // With the mutex held.
    void link(process_queue& q) noexcept {
        q.prev_ = nullptr;
        q.next_ = std::exchange(first, &q);
        if (q.next_) q.next_->prev_ = &q;
    }
    void unlink(process_queue& q) noexcept {
        (q.prev_ ? q.prev_->next_ : first) = q.next_;
        if (q.next_) q.next_->prev_ = q.prev_;
        q.prev_ = q.next_ = nullptr;
    }
    static void close_in_child() noexcept;
#endif
    static void move(process_queue& to, process_queue& from) noexcept;
};

void live_tickets::move(process_queue& to, process_queue& from) noexcept {
#if defined(F_OFD_SETLK)
    std::unique_lock<std::mutex> g;
    if (from.fd_ >= 0) g = std::unique_lock<std::mutex>(get().mutex);
#endif
    to.fd_ = std::exchange(from.fd_, -1);
    to.bell_ = std::exchange(from.bell_, -1);
    to.turn_ = std::exchange(from.turn_, -1);
    to.behind_ = std::exchange(from.behind_, 0);
    to.known_ = std::move(from.known_);
    from.known_.clear();
    to.retarget_ = std::exchange(from.retarget_, false);
    to.dev_ = from.dev_;
    to.ino_ = from.ino_;
    to.ticket_ = std::exchange(from.ticket_, 0);
    to.contentions_ = from.contentions_;
    to.unusable_ = from.unusable_;
    to.reader_ = from.reader_;
    to.write_ = from.write_;
    to.beat_ = from.beat_;
    to.head_known_ = std::exchange(from.head_known_, false);
    to.head_ = from.head_;
    to.head_write_ = from.head_write_;
    to.head_since_ = from.head_since_;
    to.suspect_since_ = from.suspect_since_;
    to.suspect_ = from.suspect_;
#if defined(F_OFD_SETLK)
    if (to.fd_ >= 0) {
        get().unlink(from);
        get().link(to);
    }
#endif
}

process_queue::process_queue(process_queue&& other) noexcept { live_tickets::move(*this, other); }

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

bool is_writer(std::uint64_t ticket) noexcept { return ticket % 2 == 1; }

// The lowest ticket held in [1, to) (0: none). The kernel reports one
// conflicting lock of a range (the oldest first, in practice the head).
std::uint64_t lowest(int fd, std::uint64_t from, std::uint64_t to) noexcept {
    std::uint64_t low = 0, at = 0;
    bool write = false;
    for (; to > from && held_in(fd, from, to, at, write) && at < to; to = at) low = at;
    return low;
}

// The lowest writer's ticket held below `to` (0: none): readers wait for it.
std::uint64_t lowest_writer(int fd, std::uint64_t to) noexcept {
    for (std::uint64_t from = 1, t; (t = lowest(fd, from, to)) != 0; from = t + 1)
        if (is_writer(t)) return t;
    return 0;
}

// The doorbell of ticket `t` of the queue file (dev, ino): an abstract
// socket name (no file; gone with its last descriptor).
socklen_t bell_name(::sockaddr_un& a, unsigned long long dev, unsigned long long ino,
                    std::uint64_t t) noexcept {
    a = {};
    a.sun_family = AF_UNIX;
    const int n =
        std::snprintf(a.sun_path + 1, sizeof a.sun_path - 1, "filelock.queue.%llx.%llx.%llx", dev,
                      ino, static_cast<unsigned long long>(t));
    return static_cast<socklen_t>(offsetof(::sockaddr_un, sun_path) + 1 + static_cast<size_t>(n));
}

int bell_socket() noexcept {
    return ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
}

// Our doorbell for ticket `t`, or -1 (no sockets here: the successors then
// wait for the lock file's releases; `taken`: the name is still a winner's,
// see leave_won()).
int open_bell(unsigned long long dev, unsigned long long ino, std::uint64_t t,
              bool& taken) noexcept {
    taken = false;
    const int s = bell_socket();
    if (s < 0) return -1;
    ::sockaddr_un a;
    const socklen_t len = bell_name(a, dev, ino, t);
    if (::bind(s, reinterpret_cast<const ::sockaddr*>(&a), len) != 0 ||
        ::listen(s, SOMAXCONN) != 0) {
        taken = errno == EADDRINUSE;
        ::close(s);
        return -1;
    }
    return s;
}

// A connection to ticket `t`'s doorbell, or -1 (it has none).
int ring_of(unsigned long long dev, unsigned long long ino, std::uint64_t t) noexcept {
    const int s = bell_socket();
    if (s < 0) return -1;
    ::sockaddr_un a;
    const socklen_t len = bell_name(a, dev, ino, t);
    int r;
    do r = ::connect(s, reinterpret_cast<const ::sockaddr*>(&a), len);
    while (r == -1 && errno == EINTR);
    if (r != 0) {
        ::close(s);
        return -1;
    }
    return s;
}

// The process listening on the doorbell that `conn` is connected to (0:
// unknown, as for a process of another pid namespace).
int listener_pid(int conn) noexcept {
    ::ucred cred{};
    ::socklen_t len = sizeof cred;
    if (conn < 0 || ::getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return 0;
    return cred.pid > 0 ? cred.pid : 0;
}

}  // namespace

// Registered at load, not at the first registration: glibc does not run a
// child handler registered while another thread's fork() runs its prepare
// handlers, and that child would keep the tickets (as fork_closed does).
[[maybe_unused]] const bool live_tickets_ready = (live_tickets::get(), true);

live_tickets& live_tickets::get() noexcept {
    static live_tickets* t = [] {
        auto* made = new live_tickets;  // never destroyed: a lock released during exit uses it
        // fork_closed's handlers lock and unlock the mutex around the fork.
        at_fork(nullptr, nullptr, close_in_child);
        return made;
    }();
    return *t;
}

// In a forked child, at once: its copies of the parent's descriptors are
// closed, and nothing else. Closing a copy releases nothing of the parent's
// (a ticket is an OFD lock: it goes with the description's last descriptor;
// a doorbell listens until its last descriptor closes); an unlock would
// release the parent's ticket. The copies of the waiters start
// unregistered. (The doorbells of won locks are fork_closed's.)
void live_tickets::close_in_child() noexcept {
    const int saved = errno;
    live_tickets& t = get();
    for (process_queue* q = std::exchange(t.first, nullptr); q != nullptr;) {
        process_queue* next = std::exchange(q->next_, nullptr);
        q->prev_ = nullptr;
        if (q->turn_ >= 0) q->retarget_ = true;
        for (int* fd : {&q->fd_, &q->bell_, &q->turn_})
            if (*fd >= 0) ::close(std::exchange(*fd, -1));
        q->behind_ = 0;
        q->forget();
        q = next;
    }
    errno = saved;
}

void process_queue::wait_behind(std::uint64_t predecessor) noexcept {
    if (predecessor == behind_) return;
    std::lock_guard<std::mutex> g(live_tickets::get().mutex);
    const bool was_turn = turn_ >= 0;
    if (turn_ >= 0) ::close(std::exchange(turn_, -1));
    behind_ = predecessor;
    if (predecessor != 0) turn_ = ring_of(dev_, ino_, predecessor);
    if (const int pid = listener_pid(turn_); pid > 0 && !known(predecessor)) {
        try {
            known_.push_back({predecessor, pid});
        } catch (...) {  // out of memory: asked again at the next look
        }
    }
    // Waiting for a turn, or for the file after one: the driver watches anew.
    if (was_turn || turn_ >= 0) retarget_ = true;
}

void process_queue::close_all() noexcept {
    if (fd_ < 0) return;  // nothing open (a turn_ comes with a ticket)
    live_tickets& t = live_tickets::get();
    std::lock_guard<std::mutex> g(t.mutex);
    close_listed();
}

void process_queue::close_listed() noexcept {
    live_tickets::get().unlink(*this);
    // The ticket first: a successor woken by the doorbell finds it gone.
    ::close(std::exchange(fd_, -1));
    if (bell_ >= 0) ::close(std::exchange(bell_, -1));
    if (turn_ >= 0) {
        ::close(std::exchange(turn_, -1));
        retarget_ = true;
    }
    behind_ = 0;
}

namespace {

// Whether a /proc stat line ("PID (COMM) STATE ...") says stopped: T or t.
// COMM (at most 16 bytes) may hold spaces and parentheses, no field after
// it does.
bool stopped_state(const char* buf, ::ssize_t n) noexcept {
    const char* paren = nullptr;
    for (::ssize_t i = 0; i < n; ++i)
        if (buf[i] == ')') paren = buf + i;
    if (paren == nullptr || buf + n - paren < 3) return false;
    return paren[2] == 'T' || paren[2] == 't';
}

// The /proc stat line at `path`: 1 if it says stopped, 0 if not, -1 if it
// cannot be read (the registry's mutex held by the caller).
int stat_says_stopped(const char* path) noexcept {
    int fd;
    do fd = ::open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    while (fd == -1 && errno == EINTR);
    if (fd < 0) return -1;
    char buf[256];
    ::ssize_t n;
    do n = ::read(fd, buf, sizeof buf);
    while (n == -1 && errno == EINTR);
    ::close(fd);
    return n > 0 ? static_cast<int>(stopped_state(buf, n)) : -1;
}

// Whether process `pid` is stopped (SIGSTOP, ^Z, a debugger): state T or t
// in /proc/PID/stat, and in each of its threads'. Unknown is not stopped.
// Read with the registry's mutex held, so that no child forked meanwhile
// keeps a descriptor.
bool stopped(int pid) noexcept {
    if (pid <= 0) return false;
    char path[32];
    std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
    std::lock_guard<std::mutex> g(live_tickets::get().mutex);
    if (stat_says_stopped(path) != 1) return false;
    // The main thread is stopped: so is the process only if every thread
    // is (a debugger may stop one thread while the waiting one runs).
    char dir_path[32];
    std::snprintf(dir_path, sizeof dir_path, "/proc/%d/task", pid);
    DIR* dir = ::opendir(dir_path);
    if (dir == nullptr) return true;
    bool all = true;
    while (const ::dirent* e = ::readdir(dir)) {
        if (e->d_name[0] == '.') continue;
        char task[sizeof dir_path + sizeof e->d_name + 8];
        std::snprintf(task, sizeof task, "%s/%s/stat", dir_path, e->d_name);
        if (stat_says_stopped(task) == 0) {  // (one that ended meanwhile is left out)
            all = false;
            break;
        }
    }
    ::closedir(dir);
    return all;
}

}  // namespace

bool process_queue::writer_waits(const std::filesystem::path& lock_path) noexcept {
    if (fd_ >= 0 || unusable_) return false;
    try {
        const std::filesystem::path q = queue_path(lock_path);
        std::lock_guard<std::mutex> g(live_tickets::get().mutex);  // no child keeps a copy
        int fd;
        do fd = ::open(q.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW | O_NONBLOCK);
        while (fd == -1 && errno == EINTR);
        if (fd < 0) return false;  // no queue file: nobody waits
        const bool waits = lowest_writer(fd, max_ticket) != 0;
        ::close(fd);
        return waits;
    } catch (...) {
        return false;
    }
}

void process_queue::contended(const std::filesystem::path& lock_path, unsigned mode,
                              clock::time_point now, bool reader, unsigned slots) noexcept {
    if (fd_ >= 0 && std::exchange(beat_, false)) {
        // The head's heartbeat: its ticket flips at every attempt that fails
        // (not before the attempt: a winner's path has no call of it).
        write_ = !write_;
        (void)set_lock(fd_, write_ ? F_WRLCK : F_RDLCK, ticket_);
        // And it looks again now, for its next attempt (see may_attempt()).
        head_known_ = false;
        (void)may_attempt(now);
        beat_ = false;  // set again by the next attempt's may_attempt()
    }
    if (fd_ >= 0 || unusable_ || ++contentions_ < 2) return;
    reader_ = reader;
    try {
        const std::filesystem::path q = queue_path(lock_path);
        live_tickets& tickets = live_tickets::get();
        std::unique_lock<std::mutex> g(tickets.mutex);  // until listed: see fork()
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
        // A slot waiter's N, for inspect() (which reads it in our fdinfo):
        // the offset of this description, which is never read nor written
        // through. Set before the ticket is taken, so a ticket seen is
        // always seen with it.
        if (slots > 1) (void)::lseek(fd, static_cast<off_t>(slots), SEEK_SET);
        // One past the highest ticket held; a ticket taken by another
        // registrant in between makes us look further.
        std::uint64_t at = 1, found = 0;
        bool write = false;
        for (int probe = 0; probe < max_probes && at <= max_ticket; ++probe) {
            if (held_in(fd, at, 0, found, write)) {
                at = found >= at ? found + 1 : at + 1;
                continue;
            }
            // A writer's ticket is odd, a reader's even.
            if ((at % 2 == 1) == reader_) {
                ++at;
                continue;
            }
            // The doorbell first: a successor that sees the ticket finds it.
            bool taken = false;
            const int bell = open_bell(static_cast<unsigned long long>(st.st_dev),
                                       static_cast<unsigned long long>(st.st_ino), at, taken);
            if (taken) {
                ++at;  // a winner still holds this ticket's doorbell: the next one
                continue;
            }
            if (set_lock(fd, F_WRLCK, at) == 0) {
                fd_ = fd;
                bell_ = bell;
                dev_ = static_cast<unsigned long long>(st.st_dev);
                ino_ = static_cast<unsigned long long>(st.st_ino);
                ticket_ = at;
                write_ = true;
                head_ = 0;
                head_since_ = now;
                tickets.link(*this);
                g.unlock();
                const std::uint64_t p = predecessor();
                wait_behind(p);
                head_known_ = p == 0;  // nobody before us: the head
                return;
            }
            const int err = errno;
            if (bell >= 0) ::close(bell);
            if (err != EAGAIN && err != EACCES) break;  // no OFD locks here
        }
        ::close(fd);
        unusable_ = true;
    } catch (...) {
        unusable_ = true;
    }
}

bool process_queue::may_attempt(clock::time_point now) noexcept {
    if (fd_ < 0) return true;
    // The head stays the head: a registrant takes a ticket above the
    // highest one held. So a head seen at its registration or after its
    // last failed attempt attempts without looking again, and a winner's
    // way has no call of the queue's before its attempt. (A registrant that
    // took a lower ticket in the same moment as ours, its look done before
    // our ticket was taken, is seen at our next failed attempt: until then
    // both attempt, as two heads; the kernel lock decides.)
    if (head_known_) {
        beat_ = true;
        return true;
    }
    // The lowest ticket below ours: the head. A reader's: the lowest
    // writer's (readers before it attempt as it does).
    std::uint64_t head = 0, at = 0;
    bool head_write = false, write = false;
    for (std::uint64_t to = ticket_; to > 1 && held_in(fd_, 1, to, at, write) && at < to; to = at) {
        head = at;
        head_write = write;
    }
    if (reader_ && head != 0 && !is_writer(head)) {
        head = lowest_writer(fd_, ticket_);
        if (head != 0) (void)held_in(fd_, head, head + 1, at, head_write);
    }
    head_known_ = head == 0;
    if (head == 0) {
        wait_behind(0);  // the lock file's releases now
        beat_ = true;    // flipped by contended(), if this attempt fails
        return true;
    }
    // A waiter whose process is stopped makes no attempt until it is
    // continued: we wait for the nearest one before us that runs, and when
    // none does, attempt beside them on the lock file's releases, as a head
    // does, for as long as they stay stopped (continued, one attempts again
    // with us once; the kernel lock decides). One new to us is connected to
    // first: its doorbell is what we wait on if it runs, and tells its
    // process (a stopped one's is left once, then its process remembered).
    std::uint64_t ahead = predecessor();
    for (; ahead != 0; ahead = predecessor(ahead)) {
        if (ahead != behind_ && !known(ahead)) wait_behind(ahead);
        if (!stopped(pid_of(ahead))) break;
    }
    wait_behind(ahead);
    if (ahead == 0) {
        head_ = 0;  // one before us that runs again is waited for anew
        suspect_ = false;
        return true;
    }
    // Only the next in line watches for a stalled head: the others wait for
    // their predecessor (whose stall, once it is the head, its successor
    // sees), and attempting on a suspicion could put them ahead of it.
    if (head != head_ || head_write != head_write_ || ahead != head) {
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

const process_queue::known_pid* process_queue::known(std::uint64_t t) const noexcept {
    for (const known_pid& k : known_)
        if (k.ticket == t && t != 0) return &k;
    return nullptr;
}

int process_queue::pid_of(std::uint64_t t) const noexcept {
    const known_pid* k = known(t);
    return k ? k->pid : 0;
}

std::uint64_t process_queue::predecessor(std::uint64_t below) const noexcept {
    // The highest ticket held below `hi`, by halving [lo, hi), which holds
    // one (tickets are few and dense: a handful of F_OFD_GETLK).
    const auto highest = [this](std::uint64_t hi) -> std::uint64_t {
        std::uint64_t lo = 1, at = 0;
        bool write = false;
        if (hi <= lo || !held_in(fd_, lo, hi, at, write)) return 0;
        lo = at;
        while (hi - lo > 1) {
            const std::uint64_t mid = lo + (hi - lo) / 2;
            if (held_in(fd_, mid, hi, at, write))
                lo = at;
            else
                hi = mid;
        }
        return lo;
    };
    // A reader waits for the last writer before it, not for other readers.
    std::uint64_t p = highest(below);
    while (reader_ && p != 0 && !is_writer(p)) p = highest(p);
    return p;
}

void process_queue::leave() noexcept {
    // Closing drops the ticket (the only lock on this description) and
    // rings the doorbell: no forked child keeps a copy of either.
    close_all();
    forget();
}

int process_queue::leave_won() noexcept {
    // A successor connected to the doorbell would only wake to find the
    // lock held: it is woken when the lock is released (close_bell()).
    int bell = -1;
    if (fd_ >= 0) {
        std::lock_guard<std::mutex> g(live_tickets::get().mutex);
        // Out of memory, it goes with the ticket (the next in line wakes
        // once more, to find the lock held).
        if (bell_ >= 0 && fork_closed::get().add(bell_)) bell = std::exchange(bell_, -1);
        close_listed();
    }
    forget();
    return bell;
}

void process_queue::close_bell(int bell, unsigned generation) noexcept {
    // A forked child's copy of a parent's doorbell was closed at the fork,
    // and its number may be a descriptor of the child's own by now.
    if (bell < 0 || generation != fork_generation()) return;
    fork_closed::close_locked(bell);  // a child forked now never has a copy
}

#else  // no OFD locks: never registers

void process_queue::contended(const std::filesystem::path&, unsigned, clock::time_point, bool,
                              unsigned) noexcept {
    unusable_ = true;
}
bool process_queue::writer_waits(const std::filesystem::path&) noexcept { return false; }
bool process_queue::may_attempt(clock::time_point) noexcept { return true; }
void process_queue::leave() noexcept { forget(); }
int process_queue::leave_won() noexcept {
    leave();
    return -1;
}
void process_queue::close_bell(int, unsigned) noexcept {}

#endif

}  // namespace filelock::detail
