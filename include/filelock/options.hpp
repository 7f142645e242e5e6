// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace filelock {

/// A timeout that never expires: wait until the lock is won (or cancelled).
inline constexpr std::chrono::nanoseconds wait_forever = std::chrono::nanoseconds::max();

/// The most holders a lock admits (lock_options::slots): each slot is one
/// byte lock, tried in turn by every attempt.
inline constexpr unsigned max_slots = 1024;

/// Where slot `i` of a lock with slots is locked in the lock file: the byte
/// `slot_offset + i` (2^40, past any content a lock file holds; locking past
/// the end of a file does not grow it).
inline constexpr std::uint64_t slot_offset = std::uint64_t{1} << 40;

/// Which lock to take.
enum class lock_mode {
    exclusive,  ///< one holder (LOCK_EX / F_WRLCK)
    shared,     ///< many shared holders, no exclusive one (LOCK_SH / F_RDLCK)
};

/// Which kernel lock to use.
enum class lock_backend {
    /// flock(2). The default: it interoperates with zc.lockfile, py-filelock,
    /// portalocker and flock(1).
    flock,
    /// Open file description locks (fcntl F_OFD_SETLK, over the whole file
    /// or over lock_options::range). Works over NFS, where flock may be
    /// emulated or local only. They conflict with classic POSIX fcntl locks
    /// (glibc's lckpwdf(), `flock --fcntl`), but not with flock(2) locks on
    /// Linux: an OFD lock and a flock(2) lock on the same file do not exclude
    /// each other. Linux only (errc::unsupported elsewhere).
    ofd,
};

/// A range of bytes of the lock file (lock_options::range): `length` bytes
/// from `start`; a length of 0 runs to the end of the file, however far it
/// grows (as fcntl's l_len = 0). The default, {0, 0}, is the whole file.
struct byte_range {
    /// The first byte's offset.
    std::uint64_t start = 0;
    /// How many bytes; 0: to the end of the file.
    std::uint64_t length = 0;

    /// The whole file ({0, 0}).
    constexpr bool whole_file() const noexcept { return start == 0 && length == 0; }
    /// Same start and length.
    friend constexpr bool operator==(const byte_range&, const byte_range&) noexcept = default;
};

/// What a lock that writes content does when the lock file already holds
/// something other than a lock holder's line. A lock holder's line is what
/// zc.lockfile and filelock write: at most 1 KiB, one line that starts with
/// a space, no control characters but a final newline (an empty file
/// qualifies too, and so do up to 1 KiB of zero bytes, what a crash can leave
/// of such a line on some filesystems). Anything else (a script, a data file, a pid file written
/// by another program) is never overwritten.
enum class foreign_content {
    /// The attempt fails with errc::foreign_content; nothing is written and
    /// nothing stays held. The default.
    fail,
    /// The lock is held without writing anything, as flock(1) does.
    lock_without_content,
};

/// How a timed acquisition spaces its attempts: capped exponential backoff
/// with jitter. The n-th wait is drawn from
/// `[d * (1 - jitter), d]` with `d = min(cap, initial * multiplier^n)`;
/// `jitter == 1` is "full jitter". Waits never pass the deadline, and one last
/// attempt is made at the deadline.
///
/// Out-of-range fields are clamped, never trusted: `initial` to
/// [1 ns, 1 h], `cap` to [initial, 1 h], `multiplier` to [1, 1000] (NaN: 2),
/// `jitter` to [0, 1] (NaN: 1).
struct backoff_policy {
    /// The first wait's ceiling.
    std::chrono::nanoseconds initial = std::chrono::milliseconds(1);
    /// How much the ceiling grows after each wait.
    double multiplier = 2.0;
    /// The largest ceiling.
    std::chrono::nanoseconds cap = std::chrono::milliseconds(100);
    /// The share of the ceiling drawn at random (1: waits anywhere in
    /// [0, ceiling]; 0: exactly the ceiling).
    double jitter = 1.0;
};

/// A content template (lock_options::content_template): a string of at most
/// `max_size` bytes held inline. Owning like std::string, but trivially
/// destructible, so that lock_options is an aggregate (designated
/// initializers work) that is safe in `co_await` expressions: g++ 12 destroys
/// an aggregate temporary there twice, which only a trivial destructor
/// survives. A longer string is kept as invalid and rejected as
/// errc::invalid_template before any file is touched.
class template_string {
public:
    /// The longest template kept (a holder's line is at most 1 KiB).
    static constexpr std::size_t max_size = 255;

    /// The empty template.
    constexpr template_string() noexcept = default;
    /// Copies `s` (a longer one than max_size is kept as invalid).
    constexpr template_string(std::string_view s) noexcept { assign(s); }
    /// Copies the NUL-terminated `s`.
    constexpr template_string(const char* s) noexcept : template_string(std::string_view(s)) {}
    /// Copies `s`.
    template_string(const std::string& s) noexcept : template_string(std::string_view(s)) {}

    /// The template (empty when it was too long).
    constexpr std::string_view view() const noexcept { return {data_, size_}; }
    /// The template, as view() gives it.
    constexpr operator std::string_view() const noexcept { return view(); }
    /// Whether the string given fitted in max_size bytes.
    constexpr bool fits() const noexcept { return !too_long_; }

    /// Same text (or both too long).
    friend constexpr bool operator==(const template_string& a, const template_string& b) noexcept {
        return a.too_long_ == b.too_long_ && a.view() == b.view();
    }

private:
    constexpr void assign(std::string_view s) noexcept {
        too_long_ = s.size() > max_size;
        size_ = too_long_ ? 0 : s.size();
        for (std::size_t i = 0; i < size_; ++i) data_[i] = s[i];
    }

    char data_[max_size] = {};
    std::size_t size_ = 0;
    bool too_long_ = false;
};

/// How to lock: an aggregate, so designated initializers read well:
///
///     filelock::lock("app.lock", 5s, {.mode = filelock::lock_mode::shared});
struct lock_options {
    /// Exclusive (the default) or shared.
    lock_mode mode = lock_mode::exclusive;
    /// flock(2) (the default, which every flock user shares) or OFD locks.
    lock_backend backend = lock_backend::flock;

    /// The bytes to lock, with `backend = lock_backend::ofd`: an OFD lock
    /// (F_OFD_SETLK; F_RDLCK when shared, F_WRLCK when exclusive) on
    /// [start, start + length), as `flock --fcntl --start --length` takes
    /// it. Holders of disjoint ranges of one file do not exclude each other.
    /// The default is the whole file (today's lock). A range other than the
    /// whole file:
    /// - writes no content (a range holder does not own the file's content)
    ///   and never removes the file (remove_on_release is ignored);
    /// - with `lock_backend::flock` is rejected before the file is touched
    ///   (`std::errc::invalid_argument`, the message naming the path), and
    ///   so is one past the largest file offset (2^63 - 1);
    /// - is not available on Windows, where `lock_backend::ofd` is
    ///   errc::unsupported.
    ///
    /// How a waiter learns of a release: a holder that closes its descriptor
    /// (or dies) sends a close event (wake_on_release); a holder that
    /// unlocks without closing (fcntl F_UNLCK, as POSIX-lock users such as
    /// lckpwdf() callers may) sends none, and the backoff's next attempt
    /// finds the range free: keep `backoff.cap` as short as that delay may
    /// be. Local waiters queue per file and range (disjoint or different
    /// ranges of one file never wait behind each other).
    byte_range range{};

    /// How many holders the lock admits at once ("slots"): 1, the default,
    /// is the one-holder lock, bit for bit; from 2 to max_slots, at most
    /// `slots` holders at once across processes, each holding one slot
    /// (lock_file::slot(), from 0 to slots - 1). One lock file whatever the
    /// number, and nothing else on disk. A slot holder holds (see the README,
    /// "Locks with N holders"):
    /// - a shared whole-file lock (flock(2) LOCK_SH; on Windows a shared
    ///   LockFileEx lock of byte 0), so that an exclusive user of the same
    ///   path (`flock -x`, zc.lockfile, a one-holder filelock lock) waits
    ///   for every slot holder and excludes them all, while `flock -s`
    ///   coexists with them;
    /// - an exclusive lock of one byte, `slot_offset + slot` (an OFD lock on
    ///   Linux, which the kernel drops when the holder dies and which
    ///   /proc/locks shows; LockFileEx on Windows), far past any content.
    /// A slot lock writes no content (the file is left as it is) and never
    /// removes the file (remove_on_release is ignored). Holders of one path
    /// should agree on `slots`: a holder counts against another's only in
    /// the slots both have. Waiters wake on any holder's release and queue
    /// locally as for the one-holder lock; across processes they wait for
    /// the exclusive waiters queued before them (README, "Processes in the
    /// order they came").
    ///
    /// Rejected before the file is touched (`std::errc::invalid_argument`,
    /// the message naming the path and the cause): 0, more than max_slots,
    /// and slots > 1 with lock_mode::shared (a shared lock takes no slot:
    /// it is the one-holder shared lock), with lock_backend::ofd or with a
    /// byte range (the slots are their own byte ranges). Not available on
    /// systems without OFD locks (errc::unsupported).
    unsigned slots = 1;

    /// What a `lock_file` writes once it holds the lock: `" " + expansion +
    /// "\n"` at offset 0, then the file is truncated after it (zc.lockfile's
    /// format). Fields: `{pid}`, `{hostname}`; `{{` and `}}` are literal
    /// braces. Anything else in braces is rejected (errc::invalid_template)
    /// before the file is touched, and so is a template longer than
    /// template_string::max_size, and one whose line would not read as a
    /// holder's: with a control byte (newline, tab, ESC), or longer than
    /// 1,024 bytes once expanded (`{hostname}` many times over). Such a
    /// line would make every later lock that writes one fail on the file
    /// (errc::foreign_content).
    template_string content_template = "{pid}";

    /// false: write nothing, as `simple_lock_file` does. A simple lock also
    /// works on a file the caller may only read. Shared locks never write
    /// (another shared holder's content would be overwritten). Content is
    /// never written to a file on a pseudo filesystem (errc::pseudo_file)
    /// nor over foreign content (see on_foreign_content).
    bool write_content = true;

    /// What a writing lock does with a lock file that holds something other
    /// than a lock holder's line (see foreign_content): by default it fails
    /// and leaves the file alone.
    foreign_content on_foreign_content = foreign_content::fail;

    /// Permission bits of a lock file created by the attempt; the process
    /// umask applies (so the default gives `0666 & ~umask`). Only the
    /// permission bits (0777) are used: never set-user-ID, set-group-ID or
    /// sticky. Not used on Windows (the file gets its directory's ACL).
    unsigned file_mode = 0666;

    /// By default, content is never written through a symbolic link at the
    /// last path component (a planted `/tmp/app.lock -> ~/.bashrc` must not be
    /// truncated): such a path fails with errc::symlink_not_followed. Set to
    /// true to follow links. Locks that write nothing always follow links.
    bool follow_symlinks = false;

    /// Remove the lock file when the lock is released: the holder unlinks the
    /// path while it still holds the lock (only if the path still names the
    /// locked file), then releases. Safe among filelock users only: a waiter
    /// that wins the unlinked file finds (identity check) that the path no
    /// longer names it and retries on the new file. zc.lockfile, flock(1) and
    /// other tools do not check, so one of them waiting on the old file could
    /// hold it while a filelock user holds the new one: leave this off when
    /// the lock file is shared with them. Ignored for shared locks.
    /// Only a lock file is removed: one that holds the holder's line, or,
    /// for a lock that writes none, an empty one; never a file with other
    /// content taken as it was (foreign_content::lock_without_content, or
    /// a lock that writes nothing on a script or data).
    bool remove_on_release = false;

    /// Timed and async acquisitions wake when the holder releases (Linux:
    /// an inotify close event on the lock file) instead of waiting out the
    /// backoff, which stays as the fallback (a holder that unlocks without
    /// closing, NFS, other systems). Off: the backoff alone.
    bool wake_on_release = true;

    /// Timed and async acquisitions of an exclusive lock that meet
    /// contention line up per path in this process: only the longest-waiting
    /// one makes attempts (holding the one descriptor and release watch of
    /// all of them), the others wait for their turn in arrival order, and a
    /// release by a holder in this process wakes the next at once. Other
    /// processes still get their turns (see the README, "Local waiters").
    /// Off: each waiter attempts on its own, with its own descriptor. Shared
    /// locks and single attempts (timeout 0) never queue.
    bool queue_local_waiters = true;

    /// How timed and async acquisitions space their attempts.
    backoff_policy backoff{};
};

}  // namespace filelock
