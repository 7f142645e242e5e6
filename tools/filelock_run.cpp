// SPDX-License-Identifier: MIT
// filelock-run: run a command while holding a lock file; a drop-in for
// util-linux flock(1) with additions (content, the holder under --verbose).
//
//   filelock-run [options] LOCKFILE|DIRECTORY COMMAND [ARGS...]
//   filelock-run [options] LOCKFILE|DIRECTORY -c COMMAND-STRING
//   filelock-run [options] FD
//   filelock-run [options] --fd FD COMMAND [ARGS...] | -c COMMAND-STRING
//
// The lock's lifetime, as flock(1)'s: COMMAND inherits the locked descriptor
// and keeps the lock until it (and everything it spawned with the
// descriptor) exits, even if filelock-run itself is killed; -o closes it
// before COMMAND runs. While COMMAND runs, signals sent to filelock-run
// (TERM, INT, HUP, QUIT, USR1, USR2) reach COMMAND once (posix_run.hpp);
// filelock-run waits for it and dies of the signal COMMAND died of. The man
// page (doc/filelock-run.1) has the details and the exit statuses.

#include <filelock/detail/acquire.hpp>
#include <filelock/detail/file_backend.hpp>
#include <filelock/inspect.hpp>
#include <filelock/lock_file.hpp>

#include "../src/file/content.hpp"
#include "../src/sync/driver.hpp"
#include "cli.hpp"
#include "posix_run.hpp"
#include "status.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <string>
#include <string_view>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

namespace {

using namespace cli;

// Runs COMMAND as flock(1) does; `fd` is the locked descriptor, handed to
// COMMAND unless `close_fd` (-1: none to hand). `user_fd`: --fd's
// descriptor, which COMMAND inherits unless -o closes it.
int run(const command_line& cl, char** argv, int fd, int user_fd = -1) {
    report_executing(cl, argv[0]);
    if (cl.no_fork) {
        if (fd >= 0) ::fcntl(fd, F_SETFD, 0);  // the lock stays with the command
        posix_run::exec_command(argv);
    }
    // Inherited SIG_IGN for SIGCHLD would reap COMMAND behind our back.
    ::signal(SIGCHLD, SIG_DFL);
    const sigset_t set = posix_run::forwarded_signals();
    sigset_t old;
    ::sigprocmask(SIG_BLOCK, &set, &old);
    posix_run::spawn_options so;
    so.keep_fd = cl.close_fd ? -1 : fd;
    if (cl.close_fd) so.close_fd = fd >= 0 ? fd : user_fd;
    so.mask = &old;
    posix_run::child c = posix_run::spawn(argv, so);
    if (c.pid < 0) {
        warn(std::string("cannot fork: ") + std::strerror(errno));
        return ex_oserr;
    }
    for (;;) {
        int status = 0;
        if (posix_run::ended(c, status)) return posix_run::finish(c, status);
        siginfo_t info{};
        if (::sigwaitinfo(&set, &info) < 0) continue;  // EINTR: look again
        posix_run::forward(c, info);
    }
}

// The exit status for a lock file that could not be opened or locked, as
// flock(1) reports it.
int open_failure_status(std::error_code ec) {
    if (ec.category() != std::system_category()) return ex_noinput;
    switch (ec.value()) {
        case ENOMEM:
        case EMFILE:
        case ENFILE:
        case ENOLCK: return ex_oserr;
        case EROFS:
        case ENOSPC: return ex_cantcreat;
        default: return ex_noinput;
    }
}

#if FILELOCK_RUN_ETCD
// An etcd:// target is run by filelock-run-etcd, with this command line: a
// lock file's run loads nothing of etcd, curl or TLS. It is next to this
// program in a build tree, in LIBEXECDIR/filelock once installed (found
// relative to this program, so any prefix works).
[[noreturn]] void exec_etcd_helper(char** argv) {
    char self[4096];
    const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
    std::string dir = n > 0 ? std::string(self, static_cast<std::size_t>(n)) : argv[0];
    dir = dir.find('/') == std::string::npos ? "." : dir.substr(0, dir.rfind('/'));
    const std::string installed = std::string(FILELOCK_RUN_HELPER_DIR).front() == '/'
                                      ? FILELOCK_RUN_HELPER_DIR
                                      : dir + "/" FILELOCK_RUN_HELPER_DIR;
    int err = ENOENT;
    for (const std::string& where : {dir, installed}) {
        const std::string helper = where + "/filelock-run-etcd";
        ::execv(helper.c_str(), argv);
        if (errno != ENOENT) {
            err = errno;
            warn("cannot execute " + helper + ": " + std::strerror(err));
            std::exit(ex_unavailable);
        }
    }
    warn("cannot execute filelock-run-etcd (not in " + dir + " nor " + installed +
         "): " + std::strerror(err));
    std::exit(ex_unavailable);
}
#endif

// How a descriptor we do not manage as a lock file (the FD forms, a
// directory) is locked: flock(2), or with --fcntl an open-file-description
// lock on a range (F_OFD_SETLK), as flock(1) takes them.
struct fd_lock {
    int fd;
    int op;  // LOCK_SH, LOCK_EX or LOCK_UN
    bool ofd = false;
    std::uint64_t start = 0, length = 0;

    // One call; 0 or -1 with errno.
    int call(bool wait) const noexcept {
        if (!ofd) return ::flock(fd, op | (wait ? 0 : LOCK_NB));
#ifdef F_OFD_SETLK
        struct ::flock fl {};
        fl.l_type = static_cast<short>(op == LOCK_SH ? F_RDLCK : op == LOCK_EX ? F_WRLCK : F_UNLCK);
        fl.l_whence = SEEK_SET;
        fl.l_start = static_cast<off_t>(start);
        fl.l_len = static_cast<off_t>(length);
        return ::fcntl(fd, wait ? F_OFD_SETLKW : F_OFD_SETLK, &fl);
#else
        errno = ENOTSUP;
        return -1;
#endif
    }
};

// The acquire state machine over an fd_lock, with the backoff alone (no
// release watch, no local queue: the descriptor is the caller's).
struct fd_backend {
    fd_lock l;
    static constexpr filelock::detail::clock::duration quick_retries[] = {
        filelock::detail::clock::duration::zero()};
    std::error_code try_acquire() noexcept {
        while (l.call(false) != 0) {
            if (errno == EINTR) continue;
            // fcntl locks may report a conflict as EACCES.
            if (errno == EWOULDBLOCK || errno == EAGAIN || (l.ofd && errno == EACCES))
                return filelock::errc::locked;
            return {errno, std::system_category()};
        }
        return {};
    }
    std::error_code on_reply(std::error_code) noexcept { return filelock::errc::locked; }
    void drop_file() noexcept {}
    void release_won() noexcept {
        fd_lock u = l;
        u.op = LOCK_UN;
        u.call(false);
    }
    bool won_inherited() const noexcept { return false; }
    bool identity(filelock::detail::lock_identity&) const noexcept { return false; }
    bool wake_on_release() const noexcept { return false; }
    bool queues() const noexcept { return false; }
};

std::error_code lock_descriptor(const fd_lock& l, std::chrono::nanoseconds timeout) {
    if (l.op == LOCK_UN) {
        if (l.call(false) != 0) return {errno, std::system_category()};
        return {};
    }
    if (timeout == filelock::wait_forever) {  // woken by the kernel, as flock(1) is
        while (l.call(true) != 0)
            if (errno != EINTR) return {errno, std::system_category()};
        return {};
    }
    filelock::detail::acquire<fd_backend> acq(fd_backend{l}, timeout, filelock::backoff_policy{},
                                              filelock::detail::random_seed());
    return filelock::detail::run_sync(acq, {}, l.op == LOCK_SH);
}

// A descriptor form: lock (or unlock) `fd`, then run COMMAND if any; the
// errors as flock(1) reports them ("N: Bad file descriptor", 65).
int descriptor_form(const command_line& cl, int fd, char** command) {
    const auto started = std::chrono::steady_clock::now();
    fd_lock l{fd,
              cl.unlock                                        ? LOCK_UN
              : cl.options.mode == filelock::lock_mode::shared ? LOCK_SH
                                                               : LOCK_EX,
              cl.fcntl, cl.start, cl.length};
    const std::error_code ec = lock_descriptor(l, cl.timeout);
    if (ec == filelock::errc::timeout) return report_conflict(cl, {});
    if (ec) {
        warn(std::to_string(fd) + ": " + ec.message());
        return ec == std::errc::no_lock_available || ec == std::errc::not_enough_memory
                   ? ex_oserr
                   : ex_dataerr;
    }
    if (!cl.unlock) report_took(cl, started);
    if (!command) return 0;
    return run(cl, command, -1, fd);
}

// Whether LOCKFILE may get content: it does not exist yet, or it is a
// non-executable regular file that is empty or holds a lock holder's line.
// Anything else (a script, a program, a data file, a symbolic link, a pseudo
// file) is locked read-only and never written, as flock(1) locks it: a
// writable descriptor would even keep a script from being executed
// (ETXTBSY), which flock(1)'s self-locking idiom does. The library checks
// again under the lock.
bool may_write(const char* path) {
    struct ::stat st {};
    if (::lstat(path, &st) != 0) return errno == ENOENT;
    if (!S_ISREG(st.st_mode) || (st.st_mode & 0111) != 0) return false;
    if (st.st_size == 0) return true;
    const int fd = ::open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) return true;  // the lock attempt reports why
    char buf[1025];
    const ssize_t n = ::pread(fd, buf, sizeof buf, 0);
    ::close(fd);
    return n >= 0 &&
           filelock::detail::is_holder_line(std::string_view(buf, static_cast<std::size_t>(n)));
}

// Whether a lock that writes content failed where flock(1), which writes
// nothing, still locks: the file cannot be written (no write access, a
// read-only mount, an immutable or append-only file), or its content
// cannot (a full disk or quota, a file size limit).
bool content_unwritable(std::error_code ec) {
    return ec == std::errc::permission_denied || ec == std::errc::read_only_file_system ||
           ec == std::errc::operation_not_permitted || ec == std::errc::no_space_on_device ||
           ec == std::errc::file_too_large ||
           (ec.category() == std::system_category() && ec.value() == EDQUOT);
}

// Who holds the slots of `path`, as lock_error::holder() names them: the
// pids of its holders, each once, "1234, 5678" ("" when none can be named).
std::string slot_holders(const char* path) {
    std::error_code ec;
    const filelock::lock_status st = filelock::inspect(path, ec);
    std::vector<long long> pids;
    std::string out;
    for (const auto& h : st.holders) {
        if (h.pid <= 0 || std::find(pids.begin(), pids.end(), h.pid) != pids.end()) continue;
        pids.push_back(h.pid);
        out += (out.empty() ? "" : ", ") + std::to_string(h.pid);
    }
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    using namespace std::chrono;
    set_program_name(argv[0]);
    // A standard descriptor left closed by the caller is /dev/null: the lock
    // file opened on it would take our messages and COMMAND's output.
    for (int fd = 0; fd <= 2; ++fd)
        if (::fcntl(fd, F_GETFD) == -1 && errno == EBADF)
            (void)::open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY);
    std::atexit(close_stdout);
    command_line cl;
    if (auto status = parse(argc, argv, cl)) return *status;
    filelock::lock_options& options = cl.options;
    const char* target = cl.target;
    const nanoseconds timeout = cl.timeout;
    std::vector<char*> command = posix_run::command_argv(cl);

    if (target && std::string_view(target).rfind("etcd://", 0) == 0) {
#if FILELOCK_RUN_ETCD
        exec_etcd_helper(argv);
#else
        usage_error("this filelock-run was built without etcd support");
#endif
    }
    if (cl.watch) return watch_form(cl);
    if (cl.status || cl.json) return status_form(cl);
    if (cl.etcd_option) usage_error("etcd options apply to an etcd:// target");
    if (cl.slots != 1) {  // N holders of a lock file: a slot each, nothing written
        if (options.mode == filelock::lock_mode::shared)
            usage_error("--slots and --shared exclude each other (a shared lock takes no slot)");
        if (cl.fcntl) usage_error("--slots and --fcntl, --start, --length exclude each other");
        if (cl.fd >= 0 || command.empty()) usage_error("--slots applies to a lock file");
        options.slots = static_cast<unsigned>(cl.slots);
    }

    // --fd N COMMAND: the caller's descriptor, locked while COMMAND runs.
    if (cl.fd >= 0) return descriptor_form(cl, cl.fd, command.data());

    // The file descriptor form: `( filelock-run -n 9 || exit 1; ... ) 9>FILE`.
    if (command.empty()) {
        // As util-linux reads it (a 32-bit number); a number no descriptor
        // has fails in flock(2), as there (65, "N: Bad file descriptor").
        long fd = -1;
        if (const int rc = parse_s32(target, fd); rc != 0)
            usage_fail(std::string("bad file descriptor: '") + target + "'" + errno_suffix(rc));
        return descriptor_form(cl, static_cast<int>(fd), nullptr);
    }

    const auto started = steady_clock::now();
    if (cl.unlock) {
        // flock(1)'s -u FILE COMMAND: opens (creating) FILE, removes a lock
        // it cannot hold, and runs COMMAND at once.
        const int fd = ::open(target, O_RDONLY | O_CREAT | O_CLOEXEC | O_NOCTTY, 0666);
        const int dir_fd = fd < 0 && errno == EISDIR
                               ? ::open(target, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOCTTY)
                               : fd;
        if (dir_fd < 0) {
            const std::error_code ec(errno, std::system_category());
            warn(std::string("cannot open lock file ") + target + ": " + ec.message());
            return open_failure_status(ec);
        }
        // COMMAND inherits the descriptor, as flock(1)'s does (-o: not).
        const int status = run(cl, command.data(), dir_fd);
        ::close(dir_fd);
        return status;
    }

    if (cl.fcntl) {
        // An open-file-description lock (F_OFD_SETLK), as flock(1) --fcntl
        // takes it: the whole file, or --start/--length's range, on which
        // nothing is written (a range holder does not own the content).
        options.backend = filelock::lock_backend::ofd;
        options.range = {cl.start, cl.length};
        if (!options.range.whole_file()) options.write_content = false;
    }
    const bool verbose_note = cl.verbose;
    if (!may_write(target)) options.write_content = false;
    std::error_code ec;
    filelock::lock_file held = filelock::lock(target, timeout, options, ec);
    if (ec == filelock::errc::symlink_not_followed || ec == filelock::errc::pseudo_file) {
        // Content is never written through a symbolic link nor to a pseudo
        // file; flock(1) would lock it, so lock it without content.
        options.write_content = false;
        held = filelock::lock(target, timeout, options, ec);
    }
    if (options.write_content && content_unwritable(ec) && ::access(target, R_OK) == 0) {
        // A file we may read but not write (root's 0644 lock file shared by
        // users, a 0444 file, a read-only mount, an immutable or append-only
        // file, a full disk or quota): flock(2) needs no write access, so
        // lock it as flock(1) does, without content, in the time left (a
        // write that failed came after a wait).
        const std::string why = ec.message();
        options.write_content = false;
        const nanoseconds spent = steady_clock::now() - started;
        const nanoseconds left =
            timeout == filelock::wait_forever ? timeout : std::max(timeout - spent, nanoseconds{});
        held = filelock::lock(target, left, options, ec);
        if (!ec && verbose_note)
            warn(std::string(target) + ": not writable (" + why +
                 "); locked without writing content");
    }
    int dir_fd = -1;
    if (ec == std::errc::is_a_directory && options.slots > 1) {
        // A slot is a byte of the lock file: a directory has none to lock.
        warn(std::string("cannot lock ") + target + " with --slots: " + ec.message() +
             " (slots need a regular file)");
        return open_failure_status(ec);
    }
    if (ec == std::errc::is_a_directory) {
        // flock(1) locks directories too (read-only, nothing written).
        dir_fd = ::open(target, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOCTTY);
        if (dir_fd < 0) {
            ec = {errno, std::system_category()};
        } else {
            const fd_lock l{dir_fd, options.mode == filelock::lock_mode::shared ? LOCK_SH : LOCK_EX,
                            cl.fcntl, cl.start, cl.length};
            ec = lock_descriptor(l, timeout);
            if (ec && ec != filelock::errc::timeout) {
                warn(std::string(target) + ": " + ec.message());
                return ec == std::errc::no_lock_available ? ex_oserr : ex_dataerr;
            }
        }
    }
    if (ec == filelock::errc::timeout)
        return report_conflict(cl, dir_fd >= 0         ? std::string()
                                   : options.slots > 1 ? slot_holders(target)
                                                       : printable(filelock::read_holder(target)));
    if (ec == filelock::errc::invalid_template)
        usage_error("invalid --content template '" + cl.content_arg + "'");
    if (ec) {
        warn(std::string("cannot open lock file ") + target + ": " + ec.message());
        return open_failure_status(ec);
    }
    report_took(cl, started);
    // Released when this process exits; COMMAND's copy (unless -o) closes
    // when it does. A lock copied by fork() is released by closing only.
    return run(cl, command.data(), dir_fd >= 0 ? dir_fd : held.native_handle());
}
