// SPDX-License-Identifier: MIT
// The keeper of an etcd lock's COMMAND (see keeper.hpp). It is forked from a
// threaded filelock-run: only async-signal-safe calls here (no allocation).
#include "keeper.hpp"

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <ctime>
#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <unistd.h>

namespace keeper {

namespace {

// SIGKILLs the children listed in /proc/self/task/TID/children; false when
// the list cannot be read.
bool kill_children_of(const char* list) {
    const int fd = ::open(list, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    char buf[4096];
    long pid = 0;
    for (;;) {
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        for (ssize_t i = 0; i < n; ++i) {
            if (buf[i] >= '0' && buf[i] <= '9') {
                pid = pid * 10 + (buf[i] - '0');
            } else if (pid > 0) {
                ::kill(static_cast<pid_t>(pid), SIGKILL);
                pid = 0;
            }
        }
    }
    if (pid > 0) ::kill(static_cast<pid_t>(pid), SIGKILL);
    ::close(fd);
    return true;
}

// The calling thread's children. Called by the keeper (one thread) and by
// filelock-run's main thread: the kernel hands an orphan to a subreaper's
// main thread while it lives.
void kill_children() {
    char path[64] = "/proc/self/task/";
    char* p = path + 16;
    // The calling thread's id, written without allocation.
    long tid = static_cast<long>(::gettid());
    char digits[24];
    int n = 0;
    do digits[n++] = static_cast<char>('0' + tid % 10);
    while ((tid /= 10) > 0);
    while (n > 0) *p++ = digits[--n];
    const char tail[] = "/children";
    for (const char* t = tail; *t;) *p++ = *t++;
    *p = '\0';
    kill_children_of(path);
}

void report(int fd, message m) {
    while (::write(fd, &m, sizeof m) < 0 && errno == EINTR) {
    }
}

// A timer on the deadlines' clock (a suspend counts): readable at `at`.
void arm(int tfd, std::int64_t at) {
    itimerspec its{};
    its.it_value.tv_sec = static_cast<time_t>(at / 1000000000);
    its.it_value.tv_nsec = static_cast<long>(at % 1000000000);
    if (at <= 0) its.it_value.tv_nsec = 1;  // 0 would disarm it
    ::timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, nullptr);
}

}  // namespace

std::int64_t now() noexcept {
    timespec ts{};
    ::clock_gettime(CLOCK_BOOTTIME, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

std::string program_path() {
    char self[4096];
    const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return {};
    std::string dir(self, static_cast<std::size_t>(n));
    return dir.substr(0, dir.rfind('/') + 1) + "filelock-keeper";
}

namespace {

// `v` in decimal at `out` (room for 21 characters and the NUL).
void decimal(char* out, long long v) {
    char digits[24];
    int n = 0;
    const bool negative = v < 0;
    unsigned long long u =
        negative ? 0ULL - static_cast<unsigned long long>(v) : static_cast<unsigned long long>(v);
    do digits[n++] = static_cast<char>('0' + u % 10);
    while ((u /= 10) > 0);
    if (negative) *out++ = '-';
    while (n > 0) *out++ = digits[--n];
    *out = '\0';
}

}  // namespace

void exec_program(const char* program, int life, int report, pid_t command, std::int64_t deadline) {
    if (program && *program) {
        char a[4][24];
        decimal(a[0], life);
        decimal(a[1], report);
        decimal(a[2], command);
        decimal(a[3], deadline);
        char name[] = "filelock-keeper";
        char* argv[] = {name, a[0], a[1], a[2], a[3], nullptr};
        // The pipes stay open across the exec (COMMAND, forked before,
        // closes them at its own).
        ::fcntl(life, F_SETFD, 0);
        ::fcntl(report, F_SETFD, 0);
        ::execv(program, argv);
        ::fcntl(life, F_SETFD, FD_CLOEXEC);
        ::fcntl(report, F_SETFD, FD_CLOEXEC);
    }
    // Not installed beside this program: at least a name of its own
    // (killall, pkill without -f); its command line stays filelock-run's.
    ::prctl(PR_SET_NAME, "filelock-keeper");
}

void report_started(int report_fd, pid_t command) {
    report(report_fd, {message::started, command});
}

void set_deadline(int life, std::int64_t deadline) noexcept {
    // One message, atomic on a pipe; a full pipe (a stopped keeper) drops it.
    while (::write(life, &deadline, sizeof deadline) < 0 && errno == EINTR) {
    }
}

int kill_descendants(pid_t group) {
    int group_status = -1;
    for (;;) {
        if (group > 0) ::kill(-group, SIGKILL);
        kill_children();
        // Each death may hand us its children: kill again after each.
        int status = 0;
        const pid_t w = ::waitpid(-1, &status, 0);
        if (w < 0 && errno == ECHILD) return group_status;
        if (w > 0 && w == group) group_status = status;
    }
}

[[noreturn]] void run(int life, int report_fd, pid_t command, std::int64_t deadline) {
    // A report written as filelock-run dies must not kill the keeper before
    // it has done its work.
    ::signal(SIGPIPE, SIG_IGN);
    if (command < 0) ::_exit(1);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    ::sigprocmask(SIG_BLOCK, &chld, nullptr);
    const int sfd = ::signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    const int tfd = ::timerfd_create(CLOCK_BOOTTIME, TFD_CLOEXEC | TFD_NONBLOCK);
    if (deadline > 0 && tfd >= 0) arm(tfd, deadline);
    for (;;) {
        if (deadline > 0 && now() >= deadline) {
            // No keep-alive answered in time: etcd may soon end the lease.
            const int status = kill_descendants(command);
            report(report_fd, {message::expired, status < 0 ? SIGKILL : status});
            ::kill(::getppid(), SIGCHLD);
            ::_exit(0);
        }
        pollfd fds[3] = {{life, POLLIN, 0}, {sfd, POLLIN, 0}, {tfd, POLLIN, 0}};
        // Without a signalfd, COMMAND is looked at every 50 ms; without a
        // timerfd, the deadline too.
        const int n = ::poll(fds, 3, sfd >= 0 && tfd >= 0 ? -1 : 50);
        if (n < 0 && errno != EINTR) ::_exit(1);
        if (n > 0 && fds[0].revents != 0) {
            std::int64_t told[64];
            const ssize_t got = ::read(life, told, sizeof told);
            if (got == 0 || (got < 0 && errno != EINTR && errno != EAGAIN)) {
                // filelock-run died: nothing renews the lease any more.
                kill_descendants(command);
                ::_exit(0);
            }
            if (got >= static_cast<ssize_t>(sizeof told[0])) {
                deadline = told[static_cast<std::size_t>(got) / sizeof told[0] - 1];
                if (tfd >= 0) arm(tfd, deadline);
            }
        }
        std::uint64_t expirations;
        while (tfd >= 0 && ::read(tfd, &expirations, sizeof expirations) > 0) {
        }
        signalfd_siginfo si;
        while (sfd >= 0 && ::read(sfd, &si, sizeof si) > 0) {
        }
        int status = 0;
        pid_t w;
        while ((w = ::waitpid(-1, &status, WNOHANG | WUNTRACED)) > 0) {
            if (w != command) continue;  // an adopted orphan that ended
            if (WIFSTOPPED(status)) {
                report(report_fd, {message::stopped, WSTOPSIG(status)});
                ::kill(::getppid(), SIGCHLD);  // wakes filelock-run's wait
                continue;
            }
            // Killed (the OOM killer, kill -9, a forwarded signal): what it
            // left would run on unlocked once filelock-run releases the lock.
            // Exited: what it left running goes on, as with flock(1)
            // (adopted by filelock-run, then by its ancestors).
            if (WIFSIGNALED(status)) kill_descendants(command);
            report(report_fd, {message::exited, status});
            ::_exit(0);
        }
    }
}

}  // namespace keeper
