// SPDX-License-Identifier: MIT
#include <filelock/detail/file_target.hpp>
#include <filelock/detail/local_queue.hpp>
#include <filelock/detail/release_watcher.hpp>
#include <filelock/lock_file.hpp>

#include "sys.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <limits.h>
#include <new>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <optional>
#include <poll.h>
#include <thread>
#include <utility>
#include <atomic>
#include <unistd.h>

namespace filelock {
namespace detail {
namespace {

// How often one attempt follows a path whose file is being unlinked or
// replaced under it before it counts as contention.
constexpr int max_identity_rounds = 16;
// The most of a holder's content ever read.
constexpr std::size_t max_holder_bytes = 1024;

std::error_code sys_error(int err) noexcept { return {err, std::system_category()}; }

template <class F>
auto retry_eintr(F f) noexcept {
    decltype(f()) r;
    do r = f();
    while (r == -1 && errno == EINTR);
    return r;
}

int set_ofd_lock(int fd, short type) noexcept {
    struct ::flock lk {};
    lk.l_type = type;
    lk.l_whence = SEEK_SET;
    return retry_eintr([&] { return sys().fcntl_lock(fd, F_OFD_SETLK, &lk); });
}

// Releases a lock held on `fd`: unlock, then close. After a fork() the
// parent and the child share the descriptor's open file description, and
// with it the lock, so an unlock in either would release it for both: a
// descriptor that is not private (see fork_stamp) is only closed, and the
// lock stays held until every copy is closed (as flock(1)'s is).
void release_fd(int fd, bool ofd, fork_stamp stamp) noexcept {
    if (stamp.is_private()) {
        if (ofd)
            set_ofd_lock(fd, F_UNLCK);
        else
            retry_eintr([&] { return sys().flock(fd, LOCK_UN); });
    }
    sys().close(fd);  // never retried: the descriptor is gone whatever it returns
}

std::string read_holder_fd(int fd) noexcept {
    try {
        char buf[max_holder_bytes];
        const ssize_t n = retry_eintr([&] { return sys().pread(fd, buf, sizeof buf, 0); });
        return n > 0 ? holder_from_bytes(std::string_view(buf, static_cast<std::size_t>(n))) : "";
    } catch (...) {
        return {};
    }
}

std::error_code append_hostname(std::string& out) {
    // HOST_NAME_MAX bytes and the terminator: a name of the full legal length
    // fits (gethostname fails with ENAMETOOLONG when the buffer is smaller).
    char host[HOST_NAME_MAX + 1] = {};
    if (sys().gethostname(host, sizeof host) != 0) return sys_error(errno);
    out.append(host, ::strnlen(host, sizeof host));
    return {};
}

// Whether the file behind `fd` (of device `dev`) is on a pseudo filesystem.
// Block-device filesystems (a non-zero major) never are: only the others pay
// for the fstatfs.
std::error_code check_pseudo(int fd, dev_t dev, bool& pseudo) noexcept {
    pseudo = false;
    if (major(dev) != 0) return {};
    struct ::statfs fs {};
    if (retry_eintr([&] { return sys().fstatfs(fd, &fs); }) != 0) return sys_error(errno);
    pseudo = is_pseudo_filesystem(static_cast<long>(fs.f_type));
    return {};
}

}  // namespace

std::error_code expand_content(std::string_view tmpl, std::string& out) {
    std::string result = " ";
    for (std::size_t i = 0; i < tmpl.size(); ++i) {
        const char c = tmpl[i];
        if (c == '}') {
            if (i + 1 < tmpl.size() && tmpl[i + 1] == '}') {
                result += '}';
                ++i;
                continue;
            }
            return errc::invalid_template;  // a lone '}'
        }
        if (c != '{') {
            result += c;
            continue;
        }
        if (i + 1 < tmpl.size() && tmpl[i + 1] == '{') {
            result += '{';
            ++i;
            continue;
        }
        const auto close = tmpl.find('}', i + 1);
        if (close == std::string_view::npos) return errc::invalid_template;
        const auto field = tmpl.substr(i + 1, close - i - 1);
        if (field == "pid") {
            result += std::to_string(current_pid());
        } else if (field == "hostname") {
            if (auto ec = append_hostname(result)) return ec;
        } else {
            return errc::invalid_template;
        }
        i = close;
    }
    result += '\n';
    out = std::move(result);
    return {};
}

bool is_holder_line(std::string_view bytes) noexcept {
    if (bytes.empty()) return true;
    if (bytes.size() > max_holder_bytes) return false;
    // Zeros only: what a crash can leave of an unsynced holder's line on
    // some filesystems. Nothing to keep.
    if (bytes.find_first_not_of('\0') == std::string_view::npos) return true;
    if (bytes.back() == '\n') bytes.remove_suffix(1);
    if (bytes.empty()) return true;  // a lone newline
    if (bytes.front() != ' ') return false;
    for (const char ch : bytes) {
        const auto c = static_cast<unsigned char>(ch);
        if (c < 0x20 || c == 0x7f) return false;  // newlines, NUL, other control bytes
    }
    return true;
}

bool is_pseudo_filesystem(long magic) noexcept {
    // <linux/magic.h>; spelled out so that the list does not depend on the
    // kernel headers' age.
    switch (static_cast<unsigned long>(magic) & 0xffffffffUL) {
        case 0x9fa0UL:      // proc
        case 0x62656572UL:  // sysfs
        case 0x27e0ebUL:    // cgroup
        case 0x63677270UL:  // cgroup2
        case 0x64626720UL:  // debugfs
        case 0x74726163UL:  // tracefs
        case 0x73636673UL:  // securityfs
        case 0x62656570UL:  // configfs
        case 0xcafe4a11UL:  // bpf
        case 0x6165676cUL:  // pstore
        case 0xde5e81e4UL:  // efivarfs
        case 0xf97cff8cUL:  // selinuxfs
        case 0x43415d53UL:  // smackfs
        case 0x42494e4dUL:  // binfmt_misc
        case 0x65735543UL:  // fusectl
        case 0x6e736673UL:  // nsfs
        case 0x19800202UL:  // mqueue
        case 0x1cd1UL:      // devpts
        case 0x67596969UL:  // rpc_pipefs
        case 0x57ac6e9dUL:  // stack_end (never a file, listed for completeness)
            return true;
        default: return false;
    }
}

std::string holder_from_bytes(std::string_view bytes) {
    bytes = bytes.substr(0, max_holder_bytes);
    const auto space = [](char c) {
        return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\0';
    };
    while (!bytes.empty() && space(bytes.front())) bytes.remove_prefix(1);
    while (!bytes.empty() && space(bytes.back())) bytes.remove_suffix(1);
    return std::string(bytes);
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

file_target::file_target(std::filesystem::path path, const lock_options& options)
    : path_(std::move(path)),
      shared_(options.mode == lock_mode::shared),
      ofd_(options.backend == lock_backend::ofd),
      writes_(options.write_content && options.mode == lock_mode::exclusive),
      remove_(options.remove_on_release && options.mode == lock_mode::exclusive),
      wake_(options.wake_on_release),
      queue_(options.queue_local_waiters && options.mode == lock_mode::exclusive),
      keep_foreign_(options.on_foreign_content == foreign_content::lock_without_content),
      file_mode_(options.file_mode & 0777) {
    nofollow_ = writes_ && !options.follow_symlinks;
    // Writing needs a writable descriptor, and so does an exclusive OFD lock
    // (F_WRLCK); everything else locks through a read-only one, which also
    // works on a file the caller may only read.
    read_only_ = !writes_ && !(ofd_ && !shared_);
    if (options.write_content)
        init_error_ = options.content_template.fits()
                          ? expand_content(options.content_template.view(), content_)
                          : make_error_code(errc::invalid_template);
    if (!writes_) content_.clear();
}

file_target::file_target(file_target&& other) noexcept
    : path_(std::move(other.path_)),
      content_(std::move(other.content_)),
      init_error_(other.init_error_),
      failed_call_(other.failed_call_),
      fd_(std::exchange(other.fd_, -1)),
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
      dev_(other.dev_),
      ino_(other.ino_),
      fd_generation_(other.fd_generation_),
      fd_forks_(other.fd_forks_) {}

file_target::~file_target() {
    if (won_)
        unlock_and_close();
    else
        close_fd();
}

std::error_code file_target::fail(int err, const char* call) noexcept {
    failed_call_ = call;
    return sys_error(err);
}

void file_target::close_fd() noexcept {
    if (fd_ >= 0) sys().close(fd_);
    fd_ = -1;
}

void file_target::unlock_and_close() noexcept {
    if (fd_ >= 0) release_fd(fd_, ofd_, {fd_generation_, fd_forks_});
    fd_ = -1;
    won_ = false;
}

bool file_target::won_inherited() const noexcept {
    return won_ && fork_stamp{fd_generation_, fd_forks_}.inherited();
}

std::error_code file_target::open_file() noexcept {
    // Never O_TRUNC: a contender must not touch the holder's content.
    const int flags = (read_only_ ? O_RDONLY : O_RDWR) | O_CREAT | O_CLOEXEC | O_NOCTTY |
                      O_NONBLOCK | (nofollow_ ? O_NOFOLLOW : 0);
    const char* p = path_.c_str();
    // Stamped before the open: a fork that may have copied the descriptor
    // always shows.
    const fork_stamp stamp = fork_stamp::now();
    fd_generation_ = stamp.generation;
    fd_forks_ = stamp.forks;
    fd_ = retry_eintr([&] { return sys().open(p, flags, file_mode_); });
    if (fd_ >= 0) return {};
    const int err = errno;
    if (err == ELOOP && nofollow_) {
        struct ::stat st {};
        if (sys().lstat(p, &st) == 0 && S_ISLNK(st.st_mode)) {
            failed_call_ = "open";
            return errc::symlink_not_followed;
        }
    }
    return fail(err, "open");
}

std::error_code file_target::lock_nb() noexcept {
    int rc;
    if (ofd_) {
        rc = set_ofd_lock(fd_, shared_ ? F_RDLCK : F_WRLCK);
        // POSIX lets a conflicting fcntl lock fail with EACCES or EAGAIN.
        if (rc == -1 && (errno == EAGAIN || errno == EACCES)) return errc::locked;
        if (rc == -1) return fail(errno, "fcntl(F_OFD_SETLK)");
    } else {
        rc = retry_eintr([&] { return sys().flock(fd_, (shared_ ? LOCK_SH : LOCK_EX) | LOCK_NB); });
        if (rc == -1 && errno == EWOULDBLOCK) return errc::locked;
        if (rc == -1) return fail(errno, "flock");
    }
    return {};
}

std::error_code file_target::try_acquire() noexcept {
    if (init_error_) return init_error_;
    // Attempts are made only on a descriptor opened since the last fork():
    // one shared with a parent or child would share a won lock with it.
    if (fd_ >= 0 && !fork_stamp{fd_generation_, fd_forks_}.is_private()) {
        close_fd();  // never unlocked: the other process's lock, if any
        won_ = false;
    }
    if (won_) return {};
    failed_call_ = nullptr;
    for (int round = 0; round < max_identity_rounds; ++round) {
        if (fd_ < 0) {
            if (auto ec = open_file()) return ec;
        }
        if (auto ec = lock_nb()) {
            // Contention keeps the descriptor for the next attempt: reopening
            // would generate close events that wake other waiters.
            if (ec != errc::locked) close_fd();
            return ec;
        }
        won_ = true;

        struct ::stat held {};
        if (sys().fstat(fd_, &held) != 0) {
            const int err = errno;
            unlock_and_close();
            return fail(err, "fstat");
        }
        if (!S_ISREG(held.st_mode)) {
            unlock_and_close();
            failed_call_ = "fstat";
            return S_ISDIR(held.st_mode) ? sys_error(EISDIR)
                                         : make_error_code(errc::not_a_regular_file);
        }
        if (!content_.empty()) {
            // Writing to /proc/sys/... changes kernel settings: never.
            bool pseudo = false;
            if (auto ec = check_pseudo(fd_, held.st_dev, pseudo)) {
                unlock_and_close();
                failed_call_ = "fstatfs";
                return ec;
            }
            if (pseudo) {
                unlock_and_close();
                return errc::pseudo_file;
            }
        }
        // The lock counts only if the path still names the locked file.
        struct ::stat named {};
        const int rc = (nofollow_ ? sys().lstat : sys().stat)(path_.c_str(), &named);
        if (rc != 0) {
            const int err = errno;
            unlock_and_close();
            if (err == ENOENT) continue;  // unlinked after we opened it: retry on a new file
            return fail(err, nofollow_ ? "lstat" : "stat");
        }
        if (named.st_dev != held.st_dev || named.st_ino != held.st_ino) {
            unlock_and_close();  // replaced: retry on the file the path names now
            continue;
        }
        dev_ = held.st_dev;
        ino_ = held.st_ino;
        bool write = !content_.empty();
        off_t old_size = held.st_size;  // what the truncation must cut
        if (write && held.st_size > 0) {
            // Only a lock holder's line is overwritten, never a script or data.
            bool holder_line = held.st_size <= static_cast<off_t>(max_holder_bytes);
            if (holder_line) {
                // One byte more than a holder line may have: a file that grew
                // since the fstat is seen as what it is now.
                char buf[max_holder_bytes + 1];
                const ssize_t n = retry_eintr([&] { return sys().pread(fd_, buf, sizeof buf, 0); });
                if (n < 0) {
                    const int err = errno;
                    unlock_and_close();
                    return fail(err, "pread");
                }
                const std::string_view old(buf, static_cast<std::size_t>(n));
                old_size = std::max(old_size, static_cast<off_t>(n));
                holder_line = is_holder_line(old);
                // Our own line already (this process locked it last): no
                // write needed, and the file's mtime stays.
                if (old == content_) write = false;
            }
            if (!holder_line) {
                if (!keep_foreign_) {
                    unlock_and_close();
                    return errc::foreign_content;
                }
                write = false;
            }
        }
        if (write) {
            // Truncate first (only what is left over: the fstat gave the
            // size), then write: whichever call fails, the file still holds
            // one line that is a prefix of a holder's, never foreign bytes.
            if (old_size > static_cast<off_t>(content_.size()) &&
                retry_eintr([&] {
                    return sys().ftruncate(fd_, static_cast<off_t>(content_.size()));
                }) != 0) {
                const int err = errno;
                unlock_and_close();
                return fail(err, "ftruncate");
            }
            std::size_t done = 0;
            while (done < content_.size()) {
                const ssize_t n = retry_eintr([&] {
                    return sys().pwrite(fd_, content_.data() + done, content_.size() - done,
                                        static_cast<off_t>(done));
                });
                if (n <= 0) {
                    const int err = n < 0 ? errno : EIO;
                    unlock_and_close();
                    return fail(err, "pwrite");
                }
                done += static_cast<std::size_t>(n);
            }
        }
        return {};
    }
    return errc::locked;  // the path keeps changing under us
}

lock_file file_target::take() noexcept {
    if (!won_) return {};
    won_ = false;
    lock_file::held h;
    h.fd = std::exchange(fd_, -1);
    h.ofd = ofd_;
    h.remove = remove_;
    h.generation = fd_generation_;
    h.forks = fd_forks_;
    h.dev = dev_;
    h.ino = ino_;
    // The target is spent once its lock is taken: its path moves along.
    return lock_file(h, std::move(path_));
}

std::string file_target::holder() const noexcept {
    return fd_ >= 0 ? read_holder_fd(fd_) : read_holder(path_);
}

}  // namespace detail

lock_file::lock_file(const held& h, std::filesystem::path path) noexcept
    : h_(h), path_(std::move(path)) {}

lock_file::lock_file(const std::filesystem::path& path, const lock_options& options) {
    detail::file_target target(path, options);
    if (auto ec = target.try_acquire())
        detail::throw_error(ec, path, ec == errc::locked ? target.holder() : std::string(),
                            target.failed_call());
    *this = target.take();
}

lock_file::lock_file(lock_file&& other) noexcept
    : h_(std::exchange(other.h_, held{})), path_(std::move(other.path_)) {}

lock_file& lock_file::operator=(lock_file&& other) noexcept {
    if (this != &other) {
        close();
        h_ = std::exchange(other.h_, held{});
        path_ = std::move(other.path_);
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
        if (detail::sys().lstat(path_.c_str(), &named) == 0 &&
            static_cast<unsigned long long>(named.st_dev) == h_.dev &&
            static_cast<unsigned long long>(named.st_ino) == h_.ino)
            detail::sys().unlink(path_.c_str());
    }
    detail::release_fd(fd, h_.ofd, stamp);
    // The next waiter of this process, at once (a forked child's copy of its
    // parent's lock has no waiters of ours to hand it to).
    if (!stamp.inherited()) detail::local_release(path_);
}

simple_lock_file::simple_lock_file(const std::filesystem::path& path, lock_options options)
    : lock_file(path, [&] {
          options.write_content = false;
          return options;
      }()) {}

lock_file detail::try_lock_once(const std::filesystem::path& path, const lock_options& options,
                                std::error_code& ec) noexcept {
    try {
        detail::file_target target(path, options);
        ec = target.try_acquire();
        return ec ? lock_file() : target.take();
    } catch (const std::bad_alloc&) {
        ec = std::make_error_code(std::errc::not_enough_memory);
        return {};
    }
}

namespace {

// Each thread that waits keeps one inotify instance and its watches for the
// next wait (creating and closing an instance costs tens of microseconds on
// the path from release to acquisition). At most a few watches are kept.
class thread_watches {
public:
    detail::release_watcher& watcher() {
        // A forked child must not read its parent's events from the shared
        // instance: it gets one of its own.
        if (generation_ != detail::fork_generation()) {
            generation_ = detail::fork_generation();
            cache_.clear();
            watcher_.emplace();
        }
        return *watcher_;
    }

    int watch(const std::filesystem::path& path) {
        for (auto& [p, wd] : cache_)
            if (p == path) return wd;
        const int wd = watcher().add(path);
        if (wd < 0) return -1;
        if (cache_.size() == max_cached) {
            watcher().remove(cache_.front().second);
            cache_.erase(cache_.begin());
        }
        cache_.emplace_back(path, wd);
        return wd;
    }

    void forget(int wd) {
        for (auto it = cache_.begin(); it != cache_.end(); ++it)
            if (it->second == wd) {
                watcher().remove(wd);
                cache_.erase(it);
                return;
            }
    }

private:
    static constexpr std::size_t max_cached = 8;
    std::optional<detail::release_watcher> watcher_;
    unsigned generation_ = ~0u;
    std::vector<std::pair<std::filesystem::path, int>> cache_;
};

// A thread's place in a local queue: the queue wakes it through an eventfd
// (one per thread, kept for the next wait; a forked child makes its own).
class thread_place final : public detail::queue_waiter {
public:
    static thread_place* make() {
        struct thread_eventfd {
            int fd = -1;
            unsigned generation = ~0u;
            ~thread_eventfd() {
                if (fd >= 0) ::close(fd);
            }
        };
        static thread_local thread_eventfd efd;
        if (efd.generation != detail::fork_generation()) {
            efd.generation = detail::fork_generation();
            if (efd.fd >= 0) ::close(efd.fd);  // a forked child's copy: the parent's stays theirs
            efd.fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        }
        if (efd.fd < 0) return nullptr;  // no queue: attempt on our own
        static thread_local std::optional<thread_place> place;
        place.emplace(efd.fd);  // a wake left over from an earlier wait costs one look
        return &*place;
    }

    explicit thread_place(int efd) noexcept : efd_(efd) {}
    void wake() noexcept override {
        const std::uint64_t one = 1;
        (void)!::write(efd_, &one, sizeof one);
    }
    int native_handle() const noexcept { return efd_; }
    /// Whether a wake came (and takes it).
    bool consume() noexcept {
        std::uint64_t n = 0;
        return ::read(efd_, &n, sizeof n) == sizeof n;
    }

private:
    int efd_;
};

// The sync driver: between attempts it waits for a release event (inotify
// close on the lock file), a wake from the local queue, or the backoff delay,
// whichever comes first. Behind another waiter of this process it waits for
// its turn (or its deadline) only.
lock_file lock_impl(const std::filesystem::path& path, std::chrono::nanoseconds timeout,
                    const lock_options& options, std::error_code& ec, bool throwing) {
    auto acq = detail::make_acquisition(path, timeout, options);
    acq.start(detail::clock::now());
    // Timed exclusive attempts queue once there is contention, or at once
    // when this process already has waiters.
    const bool may_queue = detail::may_queue(acq);
    thread_place* place = nullptr;
    bool head = true;
    const auto enqueue = [&] {
        if ((place = thread_place::make())) head = place->join(path);
    };
    if (may_queue && detail::local_waiters() > 0) enqueue();
    struct leave_queue {
        thread_place*& p;
        ~leave_queue() {
            if (p) p->leave();  // on every way out: the next waiter's turn
        }
    } leaving{place};

    const auto done = [&](std::error_code e) -> lock_file {
        ec = e;
        if (!ec) return acq.target().take();
        if (throwing)
            detail::throw_error(ec, path,
                                ec == errc::timeout ? acq.target().holder() : std::string(),
                                acq.target().failed_call());
        return {};
    };
    const auto until = [](detail::clock::duration d) {
        const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
        return ::timespec{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
    };

    thread_watches* watches = nullptr;  // at the first contention
    int wd = -1;
    for (bool woken = false;;) {
        const auto now = detail::clock::now();
        if (!head) {
            if (acq.expired(now)) return done(errc::timeout);
            ::pollfd pfd{place->native_handle(), POLLIN, 0};
            const bool forever = acq.deadline() == detail::clock::time_point::max();
            const ::timespec ts = until(acq.deadline() - now);
            if (::ppoll(&pfd, 1, forever ? nullptr : &ts, nullptr) > 0 && place->consume())
                head = place->is_head();
            continue;
        }
        if (place) {
            // The queue yields this turn to other processes for a moment.
            if (const auto d = place->hold_off(); d > d.zero()) {
                std::this_thread::sleep_for(d);
                continue;
            }
        }
        const auto next = acq.resume(now, woken, wd >= 0);
        woken = false;
        if (next.is_done()) return done(next.ec);
        if (may_queue && !place) {
            enqueue();
            if (!head) {
                acq.target().drop_file();  // the head's descriptor is the only one
                continue;
            }
        }
        if (!watches && acq.target().wake_on_release()) {
            static thread_local thread_watches per_thread;
            watches = &per_thread;
        }
        if (watches) {
            // Events not consumed yet (stale, or those that woke the last
            // attempt): a moved file must be watched anew.
            for (const auto& ev : watches->watcher().drain())
                if (ev.moved) {
                    watches->forget(ev.wd);
                    if (ev.wd != wd) continue;
                    wd = -1;
                    acq.target().drop_file();  // wait on the file the path names now
                }
            if (wd < 0) wd = watches->watch(path);
            if (place) place->watching.store(wd >= 0);
        }
        ::pollfd pfds[2];
        ::nfds_t n = 0;
        if (wd >= 0) pfds[n++] = {watches->watcher().native_handle(), POLLIN, 0};
        if (place) pfds[n++] = {place->native_handle(), POLLIN, 0};
        if (n == 0) {  // no events here: the backoff alone
            std::this_thread::sleep_for(next.delay);
            continue;
        }
        const ::timespec ts = until(next.delay);
        // Readable: attempt at once. Release events are read after a failed
        // attempt (above), or at the next wait of this thread; a wake from the
        // queue (a local holder released) needs no quick retries.
        if (::ppoll(pfds, n, &ts, nullptr) > 0) {
            const bool turn = place && place->consume();
            woken = wd >= 0 && (pfds[0].revents & POLLIN) && !turn;
        }
    }
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

std::string read_holder(const std::filesystem::path& path) noexcept {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) return {};
    struct ::stat st {};
    std::string holder;
    if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) holder = detail::read_holder_fd(fd);
    ::close(fd);
    return holder;
}

}  // namespace filelock
