// SPDX-License-Identifier: MIT
// filelock-run --watch [--json] FILE: the state of a lock file, then a line
// per change (status.hpp has the lines), until SIGINT, SIGTERM or SIGHUP.
//
// Woken by the release watcher's events (inotify), not by a busy poll. A
// look (inspect) follows each event, and looks again 1 ms, 10 ms and
// 100 ms after the last one: an event comes before what it announces (a
// holder's close before the kernel drops its lock and a waiter takes it;
// a waiter's open of the lock file before it blocks in flock(2); its open
// of "<FILE>.queue" before it takes its ticket there). The events watched:
//   - FILE: opens (a process about to lock or wait), writes (a filelock
//     holder writes its line once it holds), closes (releases, a waiter
//     that gave up or died), and its unlink, rename or replacement;
//   - FILE.queue: opens (a filelock waiter takes a ticket) and closes (it
//     won, gave up or died: its ticket goes);
//   - the directory: FILE.queue or FILE created or renamed into it.
// What has no event: a lock taken or dropped on a descriptor that stays
// open (flock(fd, LOCK_UN); a filelock waiter that wins without writing,
// outside the 100 ms after the release's close). For these it reads the
// kernel's lock lines about FILE and its queue file every second
// (safety_interval), and looks when they changed: such a change shows at
// most that late. Its own looks make no event: FILE is read through a
// descriptor it keeps open, and the queue file is only stat()ed. Looks
// take at most a quarter of a CPU (inspect may read every process's fdinfo
// to name the owners of queue tickets): under a stream of events they come
// less often. What happens between two looks and undoes itself is not
// seen: a holder that takes and releases the lock in between shows as
// nothing, or, if it was a waiter, as a waiter that left.
#include "status.hpp"

#include "../src/inspect/inspect_handle.hpp"
#include "../src/inspect/kernel_locks.hpp"
#include "../src/wait/release_watcher.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <string>
#include <string_view>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>
#if defined(__linux__)
#include <sys/inotify.h>
#endif

namespace cli {
namespace {

using clock = std::chrono::steady_clock;
namespace kernel = filelock::detail::kernel;
using namespace std::chrono_literals;

// Looks after an event, counted from the last event.
constexpr clock::duration follow_ups[] = {0ms, 1ms, 10ms, 100ms};
// Looks with no event, for what makes none.
constexpr clock::duration safety_interval = 1s;
// How long a process blocked in the kernel may be missing from its waiters
// before it is shown as left (see carry_blocked).
constexpr clock::duration settle_time = 10ms;

volatile std::sig_atomic_t stop_signal = 0;
int interrupt_fd = -1;

extern "C" void on_stop(int sig) {
    stop_signal = sig;
    const std::uint64_t one = 1;
    if (interrupt_fd >= 0) (void)!::write(interrupt_fd, &one, sizeof one);  // ends the wait
}

// Ends the watch on SIGINT, SIGTERM and SIGHUP, unless ignored when it
// started (a background job of a non-interactive shell ignores SIGINT).
void catch_stop_signals() {
    for (const int sig : {SIGINT, SIGTERM, SIGHUP}) {
        struct sigaction old {};
        if (::sigaction(sig, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) continue;
        struct sigaction sa {};
        sa.sa_handler = on_stop;
        sigemptyset(&sa.sa_mask);
        ::sigaction(sig, &sa, nullptr);
        sigset_t one;
        sigemptyset(&one);
        sigaddset(&one, sig);
        ::sigprocmask(SIG_UNBLOCK, &one, nullptr);
    }
}

bool same_file(const struct ::stat& a, const struct ::stat& b) {
    return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

class file_watch {
public:
    explicit file_watch(const char* path)
        : path_(path), queue_(filelock::queue_path(path)), dir_(parent_of(path_)) {}
    ~file_watch() {
        if (fd_ >= 0) ::close(fd_);
    }
    file_watch(const file_watch&) = delete;
    file_watch& operator=(const file_watch&) = delete;

    // Opens and watches FILE, its queue file and its directory; "" or why not
    // (the call and the cause).
    std::string start() {
        if (!w_.valid() || !w_.enable_interrupts())
            return std::string("inotify_init1: ") + std::strerror(errno ? errno : ENOSYS);
        interrupt_fd = w_.interrupt_handle();
#if defined(__linux__)
        dir_wd_ = ::inotify_add_watch(w_.inotify_handle(), dir_.c_str(),
                                      IN_CREATE | IN_MOVED_TO | IN_ONLYDIR);
#endif
        // (No directory watch, e.g. one we may not read: a queue file created
        // later, or FILE renamed over, is then seen by the safety look.)
        if (std::string why = attach(); !why.empty()) return why;
        watch_queue();
        return {};
    }

    int native_handle() const noexcept { return fd_; }
    // The kernel's lock lines about FILE and its queue file (in /proc/locks
    // order); false when they cannot be read.
    bool lock_lines(std::vector<kernel::lock_line>& out) const {
        std::vector<kernel::file_key> files{kernel::key_of(file_.st_dev, file_.st_ino)};
        if (queue_wd_ >= 0) files.push_back(kernel::key_of(queue_file_.st_dev, queue_file_.st_ino));
        out.clear();
        return kernel::read_locks(files, out);
    }
    void wait(clock::time_point until) { w_.wait(until); }
    void clear_interrupts() { w_.clear_interrupts(); }

    // Reads the events; true if any may announce a change of holders or
    // waiters (FILE's or the queue file's, or a file of theirs that changed).
    bool read_events() {
        bool changed = false, recheck = false;
        for (const auto& e : w_.drain()) {
            if (e.wd == filelock::detail::release_event::all) {
                recheck = changed = true;  // events lost
            } else if (e.wd == dir_wd_) {
                recheck = true;
            } else {
                changed = true;
                recheck |= e.moved;
            }
        }
        if (recheck) changed |= check_names();
        return changed;
    }

private:
    static std::filesystem::path parent_of(const std::filesystem::path& p) {
        const auto d = p.parent_path();
        return d.empty() ? std::filesystem::path(".") : d;
    }

    // Watches the file at `p` for what announces a change: the release
    // watcher's events (closes, unlink, rename, replacement) and opens and
    // writes. -1 if it cannot.
    int add_watch(const std::filesystem::path& p) {
        const int wd = w_.add(p);
#if defined(__linux__)
        if (wd >= 0 && ::inotify_add_watch(w_.inotify_handle(), p.c_str(),
                                           IN_OPEN | IN_MODIFY | IN_MASK_ADD) != wd) {
            w_.remove(wd);  // replaced in between: the caller looks again
            return -1;
        }
#endif
        return wd;
    }

    void drop(int& wd) {
        if (wd >= 0) {
            w_.remove(wd);
            w_.moved(wd);  // gone, or another file now: no use keeping it
        }
        wd = -1;
    }

    // Opens FILE and watches the file it opened. The file is read through
    // this descriptor, so that its own looks make no open or close event.
    std::string attach() {
        for (int tries = 0; tries < 10; ++tries) {
            const int fd =
                ::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | O_NOFOLLOW);
            const int fd2 =
                fd < 0 && errno == ELOOP
                    ? ::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)
                    : fd;
            if (fd2 < 0) return std::string("open: ") + std::strerror(errno);
            errno = 0;
            const int wd = add_watch(path_);
            if (wd < 0 && errno != 0 && errno != ENOENT) {
                const int err = errno;
                ::close(fd2);
                return std::string("inotify_add_watch: ") + std::strerror(err);
            }
            struct ::stat a {
            }, b{};
            if (wd >= 0 && ::fstat(fd2, &a) == 0 && ::stat(path_.c_str(), &b) == 0 &&
                same_file(a, b)) {
                if (fd_ >= 0) ::close(fd_);
                drop(lock_wd_);
                fd_ = fd2;
                lock_wd_ = wd;
                file_ = a;
                return {};
            }
            // Replaced between the open and the watch: once more.
            if (wd >= 0) w_.remove(wd);
            ::close(fd2);
        }
        return "open: the file keeps being replaced";
    }

    void watch_queue() {
        struct ::stat q {};
        if (::stat(queue_.c_str(), &q) != 0) {
            drop(queue_wd_);
            return;
        }
        if (queue_wd_ >= 0 && same_file(q, queue_file_)) return;
        drop(queue_wd_);
        queue_wd_ = add_watch(queue_);
        queue_file_ = q;
    }

    // After a directory event, an unlink or a rename: whether FILE or its
    // queue file is another file now (watched anew, then).
    bool check_names() {
        bool changed = false;
        struct ::stat now {};
        if (::stat(path_.c_str(), &now) == 0 && !same_file(now, file_)) {
            // FILE names another file: watch that one. (When FILE names no
            // file, the one open is still the one holders may hold.)
            changed |= attach().empty();
        }
        const int old_queue = queue_wd_;
        const struct ::stat old_file = queue_file_;
        watch_queue();
        changed |= queue_wd_ != old_queue || !same_file(old_file, queue_file_);
        return changed;
    }

    std::filesystem::path path_, queue_, dir_;
    filelock::detail::release_watcher w_;
    int fd_ = -1;
    int lock_wd_ = -1, queue_wd_ = -1, dir_wd_ = -1;
    struct ::stat file_ {};
    struct ::stat queue_file_ {};
};

bool same_party(const filelock::lock_party& a, const filelock::lock_party& b) {
    return a.pid == b.pid && a.api == b.api && a.kind == b.kind && a.start == b.start &&
           a.length == b.length;
}

// A process blocked in the kernel (flock(1) without -n) that a release
// wakes is off the kernel's list of waiters until it blocks again, when
// another process took the lock first. Such a waiter, missing from `now`
// and neither holding nor gone, is kept in it until a look `settle_time`
// after the first that missed it still misses it. Returns when to look
// again (max(): no need).
clock::time_point carry_blocked(
    const filelock::lock_status& shown, filelock::lock_status& now,
    std::vector<std::pair<filelock::lock_party, clock::time_point>>& absent, clock::time_point at) {
    const auto in = [](const std::vector<filelock::lock_party>& v, const filelock::lock_party& p) {
        return std::any_of(v.begin(), v.end(), [&](const auto& q) { return same_party(p, q); });
    };
    std::vector<std::pair<filelock::lock_party, clock::time_point>> still;
    clock::time_point look = clock::time_point::max();
    for (const auto& w : shown.waiters) {
        if (w.ticket != 0 || w.pid <= 0 || in(now.waiters, w) || in(now.holders, w) ||
            !kernel::alive(w.pid))
            continue;
        clock::time_point since = at;
        for (const auto& [p, t] : absent)
            if (same_party(p, w)) since = t;
        if (at - since >= settle_time) continue;  // left
        now.waiters.push_back(w);
        still.emplace_back(w, since);
        look = std::min(look, since + settle_time);
    }
    absent = std::move(still);
    return look;
}

bool print(const std::string& line) {
    return std::fputs(line.c_str(), stdout) >= 0 && std::fputc('\n', stdout) != EOF;
}

}  // namespace

int watch_form(const command_line& cl) {
    if (!cl.target || cl.has_command() || cl.fd >= 0)
        usage_error("--watch takes a lock file and no command");
    if (std::string_view(cl.target).rfind("etcd://", 0) == 0)
        usage_fail("--watch does not support etcd:// targets yet");
    std::error_code ec;
    filelock::inspect(cl.target, ec);
    if (ec) {
        warn(std::string("cannot inspect ") + cl.target + ": " + ec.message());
        return ex_noinput;
    }
    catch_stop_signals();
    file_watch fw(cl.target);
    if (const std::string why = fw.start(); !why.empty()) {
        warn(std::string("cannot watch ") + cl.target + ": " + why);
        return why.rfind("inotify_init1", 0) == 0 ? ex_oserr : ex_noinput;
    }

    status_view last;
    filelock::lock_status shown;
    std::vector<std::pair<filelock::lock_party, clock::time_point>> absent;
    clock::time_point recheck = clock::time_point::max();
    std::vector<kernel::lock_line> last_lines;
    bool first = true;
    clock::time_point event_at = clock::now(), next_safety{}, not_before{};
    std::size_t follow_up = 0;  // the next of follow_ups to do
    for (;;) {
        if (stop_signal) break;
        const clock::time_point now = clock::now();
        const bool follow_up_due = follow_up < std::size(follow_ups) && now >= not_before &&
                                   now >= event_at + follow_ups[follow_up];
        bool look = first || follow_up_due || (now >= recheck && now >= not_before);
        if (!look && now >= next_safety) {
            // The safety look: a full one only when the kernel's lock lines
            // changed (inspect may read every process's fdinfo to name the
            // owners of OFD locks, such as queue tickets: milliseconds).
            std::vector<kernel::lock_line> lines;
            look = !fw.lock_lines(lines) || !kernel::same_lines(lines, last_lines);
            next_safety = now + safety_interval;
        }
        if (look) {
            fw.lock_lines(last_lines);
            while (follow_up < std::size(follow_ups) && now >= event_at + follow_ups[follow_up])
                ++follow_up;
            filelock::lock_status st =
                filelock::detail::inspect_handle(cl.target, fw.native_handle(), ec);
            const auto at = std::chrono::system_clock::now();
            const clock::time_point done = clock::now();
            // At most a quarter of a CPU, however busy the lock.
            not_before = done + 3 * (done - now);
            next_safety = done + safety_interval;
            if (!ec) {
                recheck = carry_blocked(shown, st, absent, now);
                status_view v = view_of(cl.target, st);
                bool ok = true;
                if (first)
                    ok = print(watch_state_line(v, cl.json, at));
                else
                    for (const auto& line : watch_change_lines(last, v, cl.json, at))
                        ok = ok && print(line);
                if (!ok || std::fflush(stdout) != 0) {
                    if (errno != EPIPE) warn(std::string("write error: ") + std::strerror(errno));
                    return ex_oserr;
                }
                last = std::move(v);
                shown = std::move(st);
                first = false;
            } else if (first) {
                warn(std::string("cannot inspect ") + cl.target + ": " + ec.message());
                return ex_noinput;
            }
        }
        clock::time_point until = std::min(next_safety, std::max(recheck, not_before));
        if (follow_up < std::size(follow_ups))
            until = std::min(until, std::max(event_at + follow_ups[follow_up], not_before));
        fw.wait(until);
        if (stop_signal) break;
        fw.clear_interrupts();
        if (fw.read_events()) {
            event_at = clock::now();
            follow_up = 0;
            if (event_at < not_before) event_at = not_before;
        }
    }
    std::fflush(stdout);
    const int sig = stop_signal;
    // Dies of the signal, as flock(1) waiting for a lock does: a shell sees
    // 128 + N (130 for ^C), a supervisor a death by signal.
    ::signal(sig, SIG_DFL);
    ::raise(sig);
    return 128 + sig;
}

}  // namespace cli
