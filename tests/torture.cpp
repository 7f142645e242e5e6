// SPDX-License-Identifier: MIT
// Torture test: many processes, each with threads and coroutines, take one
// lock every way there is (sync lock_file / filelock::lock, the Asio adapter,
// the libuv adapter, Python's zc.lockfile, flock(1)) while faults are
// injected: SIGKILLed holders and waiters, cancellations, timeouts, and the
// lock file deleted, renamed or replaced while held and waited on.
//
// Every holder runs the same critical section: it checks an occupancy marker
// that a second live holder would have left, writes its own token there,
// appends the token to a log, and checks the marker again before clearing it.
// A process acknowledges an operation only after the release.
//
//   torture [--seconds N]      (default 60, or $TORTURE_SECONDS; --long = 600)
//   torture --negative-control (sync workers skip the lock: must report violations)
//   torture --slots N [--seconds S]  (a lock with N holders: see below)
//
// Phase 1 (mixed, 50% of the time) runs every kind of worker, with kills,
// cancellations and timeouts. Phase 2 (filelock only, 30%) adds replacing the
// lock file and holders that remove it on release: zc.lockfile and flock(1)
// do not check which file they locked, so in their presence a replaced lock
// file can legitimately have two holders (see README); they sit phase 2 out.
// Phase 3 (20%) weighs on fork() and filelock-run: "forker" workers fork
// while an Asio or libuv acquisition waits (both processes go on with it)
// and fork while holding (the parent closes first, the child works under
// the inherited lock); "wrapper" workers run the critical section as
// filelock-run's COMMAND and SIGKILL filelock-run while it runs.
//
// With --slots N, one phase: sync, Asio, libuv and filelock-run --slots N
// workers take one of N slots (lock_options::slots) and flock(1) workers take
// the file exclusively (flock -x), with kills, cancellations and timeouts.
// Each holder enters an occupancy directory (an entry named by its token),
// counts the live holders there on entering and again on leaving, and
// leaves. It is a violation if a slot holder counts more than N, or any
// holder counts a live exclusive holder beside itself; the run also fails
// unless N holders at once were counted at least once.
//
// Exit status 0 only if there were no violations, the log holds every
// acknowledged operation exactly once (plus at most one unacknowledged entry
// per killed process), no worker leaked a descriptor, and none hung.

#include <filelock/asio.hpp>
#include <filelock/lock_file.hpp>
#include <filelock/uv.hpp>

#include "proc_fds.hpp"

#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <asio/strand.hpp>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <poll.h>
#include <random>
#include <set>
#include <spawn.h>
#include <string>
#include <sys/stat.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

extern char** environ;

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

// ---------------------------------------------------------------------------
// The critical section, shared by the C++ workers and `torture --cs`.

// Is the process that wrote `token` ("pid:...") still alive and not exiting?
bool holder_alive(const std::string& token) {
    const long pid = std::strtol(token.c_str(), nullptr, 10);
    if (pid <= 0) return false;
    FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/stat").c_str(), "r");
    if (!f) return false;
    char comm[256] = {};
    char state = 0;
    int ppid, pgrp, session, tty, tpgid;
    unsigned flags = 0;
    const int n = std::fscanf(f, "%*d (%255[^)]) %c %d %d %d %d %d %u", comm, &state, &ppid, &pgrp,
                              &session, &tty, &tpgid, &flags);
    std::fclose(f);
    if (n < 8) return false;
    constexpr unsigned pf_exiting = 0x4;  // a killed holder on its way out
    if (state == 'Z' || state == 'X' || (flags & pf_exiting) != 0) return false;
    // A SIGKILL sent but not yet acted on: the process is as good as dead.
    // (A wrapper's token names its worker, which a process-group kill may
    // reach a moment after COMMAND, the real holder, is gone.)
    std::ifstream status("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(status, line)) {
        if (line.rfind("SigPnd:", 0) != 0 && line.rfind("ShdPnd:", 0) != 0) continue;
        const unsigned long long pending = std::strtoull(line.c_str() + 7, nullptr, 16);
        if (pending & (1ull << (SIGKILL - 1))) return false;
    }
    return true;
}

struct files {
    fs::path dir, lock, marker, log, violations, stop;
    explicit files(fs::path d)
        : dir(d),
          lock(d / "lock"),
          marker(d / "marker"),
          log(d / "log"),
          violations(d / "violations"),
          stop(d / "stop") {}
};

void append(const fs::path& p, const std::string& line) {
    const int fd = ::open(p.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return;
    (void)!::write(fd, line.data(), line.size());
    ::close(fd);
}

// Slots mode: the lock admits this many holders (0: the one-holder lock).
unsigned g_slots = 0;

// The live holders in the occupancy directory: how many, and whether one
// other than `me` is exclusive. Entries of killed holders stay behind and
// are not counted.
struct occupancy {
    unsigned live = 0;
    bool other_exclusive = false;
};

occupancy count_inside(const files& f, const std::string& me) {
    occupancy o;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(f.dir / "inside", ec)) {
        const std::string name = e.path().filename().string();
        if (name.size() < 2) continue;
        const std::string token = name.substr(1);
        if (name != me && !holder_alive(token)) continue;
        ++o.live;
        o.other_exclusive |= name != me && name[0] == 'x';
    }
    return o;
}

// The critical section as one of `limit` holders (1: an exclusive holder of
// the file, flock -x). Returns false if it saw too many holders.
bool occupy(const files& f, const std::string& token, unsigned spin_us, unsigned limit) {
    const std::string me = (limit == 1 ? "x" : "s") + token;
    const fs::path entry = f.dir / "inside" / me;
    ::close(::open(entry.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
    append(f.log, token + "\n");
    bool ok = true;
    for (const char* when : {"enter", "leave"}) {
        const occupancy o = count_inside(f, me);
        append(f.dir / "counts", std::to_string(o.live) + "\n");
        if (o.live > limit || o.other_exclusive) {
            ok = false;
            append(f.violations, std::string(when) + " " + token + " counted " +
                                     std::to_string(o.live) + " holders" +
                                     (o.other_exclusive ? ", one exclusive" : "") + "\n");
        }
        if (spin_us && when[0] == 'e')
            std::this_thread::sleep_for(std::chrono::microseconds(spin_us));
    }
    ::unlink(entry.c_str());
    return ok;
}

// Returns false if another live holder was seen.
bool critical_section(const files& f, const std::string& token, unsigned spin_us) {
    if (g_slots) return occupy(f, token, spin_us, g_slots);
    const int fd = ::open(f.marker.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return false;
    bool ok = true;
    char buf[128];
    ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
    std::string seen(buf, n > 0 ? static_cast<size_t>(n) : 0);
    if (!seen.empty() && seen != token && holder_alive(seen)) {
        ok = false;
        append(f.violations, "enter " + token + " saw " + seen + "\n");
    }
    (void)!::pwrite(fd, token.data(), token.size(), 0);
    (void)!::ftruncate(fd, static_cast<off_t>(token.size()));
    append(f.log, token + "\n");
    if (spin_us) std::this_thread::sleep_for(std::chrono::microseconds(spin_us));
    n = ::pread(fd, buf, sizeof buf - 1, 0);
    seen.assign(buf, n > 0 ? static_cast<size_t>(n) : 0);
    if (seen != token) {
        ok = false;
        append(f.violations, "leave " + token + " saw " + seen + "\n");
    }
    (void)!::ftruncate(fd, 0);
    ::close(fd);
    return ok;
}

// ---------------------------------------------------------------------------
// Workers (child processes). Each prints "ack TOKEN" after each release and a
// final "stat ..." line when told to stop.

struct tally {
    std::atomic<long> acquired{0}, timeouts{0}, cancels{0}, errors{0};
    std::mutex out;
    void ack(const std::string& token) {
        std::lock_guard<std::mutex> g(out);
        std::printf("ack %s\n", token.c_str());
        std::fflush(stdout);
    }
    void error(const std::string& what) {
        ++errors;
        std::lock_guard<std::mutex> g(out);
        std::fprintf(stderr, "torture worker %d: %s\n", ::getpid(), what.c_str());
    }

    // The end of one async acquisition: counts it and, if the lock was won,
    // runs the critical section, releases and acknowledges.
    void settle(const files& f, std::error_code ec, std::error_code cancelled, const char* who,
                filelock::lock_file& l, const std::string& token, unsigned spin_us) {
        if (ec == cancelled)
            ++cancels;
        else if (ec == filelock::errc::timeout)
            ++timeouts;
        else if (ec)
            error(std::string(who) + ": " + ec.message());
        if (ec) return;
        ++acquired;
        if (g_slots && l.slot() >= g_slots) error(std::string(who) + ": slot out of range");
        critical_section(f, token, spin_us);
        l.close();
        ack(token);
    }
};

std::chrono::nanoseconds pick_timeout(std::mt19937& rng) {
    static const std::chrono::nanoseconds choices[] = {0ms, 1ms, 20ms, 200ms, 2s};
    return choices[std::uniform_int_distribution<int>(0, 4)(rng)];
}

filelock::lock_options pick_options(std::mt19937& rng, bool replacing) {
    filelock::lock_options o;
    o.backoff.cap = 20ms;
    o.remove_on_release = replacing && std::uniform_int_distribution<int>(0, 3)(rng) == 0;
    if (g_slots) o.slots = g_slots;
    return o;
}

bool g_no_lock = false;  // negative control: the sync workers do not lock at all

void sync_worker(const files& f, tally& t, unsigned seed, bool replacing) {
    std::vector<std::thread> threads;
    for (unsigned k = 0; k < 3; ++k)
        threads.emplace_back([&, k] {
            std::mt19937 rng(seed * 7 + k);
            for (long i = 0; !fs::exists(f.stop); ++i) {
                const std::string token =
                    std::to_string(::getpid()) + ":s" + std::to_string(k) + ":" + std::to_string(i);
                auto opts = pick_options(rng, replacing);
                filelock::lock_file l;
                std::error_code ec;
                if (g_no_lock)
                    ;
                else if (rng() % 2)
                    l = filelock::try_lock(f.lock, opts, ec);
                else
                    l = filelock::lock(f.lock, pick_timeout(rng), opts, ec);
                if (ec == filelock::errc::locked || ec == filelock::errc::timeout) {
                    ++t.timeouts;
                    std::this_thread::sleep_for(1ms);
                    continue;
                }
                if (ec) {
                    t.error("sync lock: " + ec.message());
                    continue;
                }
                ++t.acquired;
                if (g_slots && l.slot() >= g_slots) t.error("sync lock: slot out of range");
                critical_section(f, token, static_cast<unsigned>(rng() % 300));
                l.close();
                t.ack(token);
            }
        });
    for (auto& th : threads) th.join();
}

void asio_worker(const files& f, tally& t, unsigned seed, bool replacing) {
    asio::io_context io(2);
    for (unsigned k = 0; k < 4; ++k) {
        auto strand = asio::make_strand(io);
        asio::co_spawn(
            strand,
            [&, k]() -> asio::awaitable<void> {
                auto ex = co_await asio::this_coro::executor;
                std::mt19937 rng(seed * 13 + k);
                for (long i = 0; !fs::exists(f.stop); ++i) {
                    const std::string token = std::to_string(::getpid()) + ":a" +
                                              std::to_string(k) + ":" + std::to_string(i);
                    // Shared: a timer handler already queued may still emit.
                    auto sig = std::make_shared<asio::cancellation_signal>();
                    auto armed = std::make_shared<bool>(true);
                    asio::steady_timer canceller(ex);
                    if (rng() % 4 == 0) {
                        canceller.expires_after(std::chrono::microseconds(rng() % 20000));
                        canceller.async_wait([sig, armed](std::error_code e) {
                            if (!e && *armed) sig->emit(asio::cancellation_type::terminal);
                        });
                    }
                    auto [ec, l] = co_await filelock::async_lock(
                        ex, f.lock, pick_timeout(rng), pick_options(rng, replacing),
                        asio::bind_cancellation_slot(
                            sig->slot(), asio::experimental::as_tuple(asio::use_awaitable)));
                    *armed = false;
                    canceller.cancel();
                    t.settle(f, ec, asio::error::operation_aborted, "asio async_lock", l, token,
                             static_cast<unsigned>(rng() % 300));
                }
            },
            asio::detached);
    }
    std::thread other([&] { io.run(); });
    io.run();
    other.join();
}

// fork() at the points that matter, one process at a time (a single thread:
// fork is safe). Each child reports its own acknowledgements.
void forker_worker(const files& f, tally& t, unsigned seed) {
    std::mt19937 rng(seed);
    long forks = 0;
    const auto child_done = [&](pid_t pid) {
        int st = 0;
        while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
        }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) t.error("forked child failed");
    };
    for (long i = 0; !fs::exists(f.stop); ++i) {
        const auto token = [&] { return std::to_string(::getpid()) + ":k:" + std::to_string(i); };
        const unsigned spin = static_cast<unsigned>(rng() % 2000);
        switch (rng() % 3) {
            case 0: {  // libuv: fork while the acquisition waits; both run it
                uv_loop_t loop;
                uv_loop_init(&loop);
                filelock::uv::async_lock(
                    &loop, f.lock, 500ms, [&](std::error_code ec, filelock::lock_file l) {
                        t.settle(f, ec, std::make_error_code(std::errc::operation_canceled),
                                 "uv (forked)", l, token(), spin);
                    });
                uv_run(&loop, UV_RUN_NOWAIT);
                std::fflush(stdout);
                const pid_t pid = ::fork();
                ++forks;
                if (pid == 0) {
                    uv_loop_fork(&loop);
                    uv_run(&loop, UV_RUN_DEFAULT);
                    const bool closed = uv_loop_close(&loop) == 0;
                    std::fflush(stdout);
                    ::_exit(closed && t.errors == 0 ? 0 : 1);
                }
                uv_run(&loop, UV_RUN_DEFAULT);
                if (uv_loop_close(&loop) != 0) t.error("uv_loop_close: handles left");
                if (pid > 0) child_done(pid);
                break;
            }
            case 1: {  // Asio, the same
                asio::io_context io;
                filelock::async_lock(
                    io, f.lock, 500ms, [&](std::error_code ec, filelock::lock_file l) {
                        t.settle(f, ec, std::make_error_code(std::errc::operation_canceled),
                                 "asio (forked)", l, token(), spin);
                    });
                std::fflush(stdout);
                io.notify_fork(asio::execution_context::fork_prepare);
                const pid_t pid = ::fork();
                ++forks;
                if (pid == 0) {
                    io.notify_fork(asio::execution_context::fork_child);
                    io.run();
                    std::fflush(stdout);
                    ::_exit(t.errors == 0 ? 0 : 1);
                }
                io.notify_fork(asio::execution_context::fork_parent);
                io.run();
                if (pid > 0) child_done(pid);
                break;
            }
            default: {  // the daemon pattern: take, fork, the parent returns at once
                std::error_code ec;
                filelock::lock_file l;
                // On a thread of its own, as the sync workers do: lock()
                // keeps per-thread waiting resources until the thread exits.
                std::thread([&] { l = filelock::lock(f.lock, 200ms, {}, ec); }).join();
                if (ec) {
                    if (ec == filelock::errc::timeout)
                        ++t.timeouts;
                    else
                        t.error("sync lock: " + ec.message());
                    break;
                }
                std::fflush(stdout);
                const pid_t pid = ::fork();
                ++forks;
                if (pid == 0) {
                    // Works under the inherited lock while the parent has
                    // closed its copy; exiting closes the last one.
                    critical_section(f, token(), spin);
                    t.ack(token());
                    std::fflush(stdout);
                    ::_exit(0);
                }
                ++t.acquired;
                l.close();
                if (pid > 0) child_done(pid);
            }
        }
    }
    std::printf("forks %ld\n", forks);
}

// The critical section as filelock-run's COMMAND; a third of the runs
// SIGKILL filelock-run (not COMMAND) in the middle. COMMAND must keep the
// lock until it is done.
void wrapper_worker(const files& f, tally& t, unsigned seed, const std::string& self) {
    std::mt19937 rng(seed);
    const char* env = std::getenv("FILELOCK_RUN");
    const std::string tool =
        env ? env
            : (fs::path(self).parent_path().parent_path() / "tools" / "filelock-run").string();
    long kills = 0;
    for (long i = 0; !fs::exists(f.stop); ++i) {
        const std::string token = std::to_string(::getpid()) + ":w:" + std::to_string(i);
        const std::string spin = std::to_string(5000 + rng() % 25000);
        std::vector<std::string> argv = {tool, "-w", "0.5"};
        if (g_slots) argv.insert(argv.end(), {"--slots", std::to_string(g_slots)});
        argv.insert(argv.end(), {f.lock.string(), self, "--cs", f.dir.string(), token, spin});
        if (g_slots) argv.push_back(std::to_string(g_slots));
        std::vector<char*> args;
        for (auto& a : argv) args.push_back(a.data());
        args.push_back(nullptr);
        pid_t pid = -1;
        if (::posix_spawn(&pid, args[0], nullptr, nullptr, args.data(), environ) != 0) {
            t.error("cannot spawn " + tool);
            std::this_thread::sleep_for(10ms);
            continue;
        }
        if (rng() % 2 == 0) {
            // Once COMMAND is inside (its token in the marker), kill the
            // wrapper: the lock must stay with COMMAND.
            const auto give_up = clk::now() + 600ms;
            while (clk::now() < give_up) {
                if (g_slots && fs::exists(f.dir / "inside" / ("s" + token))) break;
                std::ifstream in(f.marker);
                std::string seen;
                std::getline(in, seen);
                if (seen == token) break;
                std::this_thread::sleep_for(200us);
            }
            ::kill(pid, SIGKILL);
        }
        int st = 0;
        while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
        }
        if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) {
            ++kills;  // COMMAND may still be in its critical section: unacknowledged
        } else if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
            ++t.acquired;
            t.ack(token);
        } else if (WIFEXITED(st) && WEXITSTATUS(st) == 1) {
            ++t.timeouts;
        } else {
            t.error("filelock-run exited with " + std::to_string(st));
        }
    }
    std::this_thread::sleep_for(100ms);  // orphaned commands finish
    std::printf("wrapper_kills %ld\n", kills);
}

void uv_worker(const files& f, tally& t, unsigned seed, bool replacing) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    std::mutex stops_mutex;
    std::vector<std::stop_source*> stops;
    std::atomic<bool> done{false};
    auto body = [&](unsigned k) -> filelock::uv::task<> {
        std::mt19937 rng(seed * 17 + k);
        for (long i = 0; !fs::exists(f.stop); ++i) {
            const std::string token =
                std::to_string(::getpid()) + ":u" + std::to_string(k) + ":" + std::to_string(i);
            std::stop_source stop;
            {
                std::lock_guard<std::mutex> g(stops_mutex);
                stops.push_back(&stop);
            }
            std::error_code ec;
            auto l = co_await filelock::uv::async_lock(&loop, f.lock, pick_timeout(rng),
                                                       pick_options(rng, replacing),
                                                       stop.get_token(), ec);
            {
                std::lock_guard<std::mutex> g(stops_mutex);
                std::erase(stops, &stop);
            }
            t.settle(f, ec, std::make_error_code(std::errc::operation_canceled), "uv async_lock", l,
                     token, static_cast<unsigned>(rng() % 300));
        }
    };
    std::vector<filelock::uv::task<>> tasks;
    for (unsigned k = 0; k < 4; ++k) {
        tasks.push_back(body(k));
        tasks.back().start();
    }
    // Cancellations from another thread, at random.
    std::thread canceller([&] {
        std::mt19937 rng(seed);
        while (!done) {
            std::this_thread::sleep_for(std::chrono::microseconds(rng() % 30000));
            std::lock_guard<std::mutex> g(stops_mutex);
            if (!stops.empty()) stops[rng() % stops.size()]->request_stop();
        }
    });
    uv_run(&loop, UV_RUN_DEFAULT);
    done = true;
    canceller.join();
    for (auto& task : tasks)
        if (!task.done()) t.error("uv task did not finish");
    if (uv_loop_close(&loop) != 0) t.error("uv_loop_close: handles left");
}

int worker_main(const std::string& kind, const fs::path& dir, unsigned seed, bool replacing,
                const std::string& self) {
    files f(dir);
    tally t;
    // Warm up what the libraries open once per process, then take the baseline.
    {
        asio::io_context io;
        asio::steady_timer warm(io);
        uv_loop_t l;
        uv_loop_init(&l);
        uv_async_t a;
        uv_async_init(&l, &a, nullptr);
        uv_close(reinterpret_cast<uv_handle_t*>(&a), nullptr);
        uv_run(&l, UV_RUN_DEFAULT);
        uv_loop_close(&l);
    }
    const int baseline = test::open_fd_count();
    const int inotify_baseline = test::inotify_instances();
    const int eventfd_baseline = test::eventfds();
    const int epoll_baseline = test::anon_fds("anon_inode:[eventpoll]");
    if (kind == "sync")
        sync_worker(f, t, seed, replacing);
    else if (kind == "asio")
        asio_worker(f, t, seed, replacing);
    else if (kind == "uv")
        uv_worker(f, t, seed, replacing);
    else if (kind == "forker")
        forker_worker(f, t, seed);
    else if (kind == "wrapper")
        wrapper_worker(f, t, seed, self);
    // What the library keeps for the process's next waits (bounded) is not a
    // leak; anything else is.
    const int cached = test::inotify_instances() - inotify_baseline;
    const int cached_efd = test::eventfds() - eventfd_baseline;
    // (each cached instance comes with its epoll set)
    const int cached_ep = test::anon_fds("anon_inode:[eventpoll]") - epoll_baseline;
    const int fds = test::open_fd_count() -
                    (cached > 0 && cached <= test::max_cached_inotify_instances ? cached : 0) -
                    (cached_efd > 0 && cached_efd <= test::max_cached_eventfds ? cached_efd : 0) -
                    (cached_ep > 0 && cached_ep <= cached ? cached_ep : 0);
    std::printf("stat acquired=%ld timeouts=%ld cancels=%ld errors=%ld fd_leak=%d\n",
                t.acquired.load(), t.timeouts.load(), t.cancels.load(), t.errors.load(),
                fds - baseline);
    std::fflush(stdout);
    return 0;
}

const char python_worker[] = R"(
import os, sys, time, zc.lockfile
d = sys.argv[1]
lock, marker, log, viol, stop = (os.path.join(d, n) for n in ('lock', 'marker', 'log', 'violations', 'stop'))
def alive(token):
    try:
        pid = int(token.split(':')[0])
        with open('/proc/%d/stat' % pid) as f:
            fields = f.read().rsplit(')', 1)[1].split()
        return fields[0] not in 'ZX' and not (int(fields[6]) & 4)
    except Exception:
        return False
def note(line):
    with open(viol, 'a') as f: f.write(line + '\n')
i = 0
while not os.path.exists(stop):
    token = '%d:p:%d' % (os.getpid(), i)
    i += 1
    try:
        l = zc.lockfile.LockFile(lock)
    except zc.lockfile.LockError:
        time.sleep(0.002)
        continue
    fd = os.open(marker, os.O_RDWR | os.O_CREAT, 0o644)
    seen = os.pread(fd, 127, 0).decode(errors='replace')
    if seen and seen != token and alive(seen): note('enter %s saw %s' % (token, seen))
    os.pwrite(fd, token.encode(), 0); os.ftruncate(fd, len(token))
    with open(log, 'a') as f: f.write(token + '\n')
    seen = os.pread(fd, 127, 0).decode(errors='replace')
    if seen != token: note('leave %s saw %s' % (token, seen))
    os.ftruncate(fd, 0); os.close(fd)
    l.close()
    print('ack', token, flush=True)
print('stat acquired=%d timeouts=0 cancels=0 errors=0 fd_leak=0' % i, flush=True)
)";

// Slots mode passes "100 1": the critical section as the file's exclusive holder.
const char flock_worker[] = R"(
d=$1; self=$2; shift 2; i=0
while [ ! -e "$d/stop" ]; do
  t="$$:f:$i"; i=$((i+1))
  if flock -w 0.5 "$d/lock" "$self" --cs "$d" "$t" "$@"; then echo "ack $t"; fi
done
echo "stat acquired=$i timeouts=0 cancels=0 errors=0 fd_leak=0"
)";

// ---------------------------------------------------------------------------
// The orchestrator.

struct worker {
    pid_t pid = 0;
    std::string kind;
    int out = -1;
    std::string buf;
    bool stopped = false;
};

struct totals {
    std::set<std::string> acked;
    std::set<std::string> killed_pids;  // workers killed: their in-flight entries stay unacked
    long kills = 0, replacements = 0, cancels = 0, timeouts = 0, errors = 0, fd_leaks = 0, hung = 0,
         acquired = 0, stat_lines = 0, forks = 0, wrapper_kills = 0;
};

pid_t spawn(const std::vector<std::string>& argv, int& out_fd) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return -1;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p[1], 1);
    // Own process group: a kill takes flock(1)'s command along with the shell.
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
    posix_spawnattr_setpgroup(&attr, 0);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_t pid = -1;
    if (::posix_spawnp(&pid, args[0], &fa, &attr, args.data(), environ) != 0) pid = -1;
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    ::close(p[1]);
    out_fd = p[0];
    ::fcntl(out_fd, F_SETFL, O_NONBLOCK);
    return pid;
}

void consume(worker& w, totals& t) {
    char buf[4096];
    ssize_t n;
    while ((n = ::read(w.out, buf, sizeof buf)) > 0) w.buf.append(buf, static_cast<size_t>(n));
    size_t pos;
    while ((pos = w.buf.find('\n')) != std::string::npos) {
        const std::string line = w.buf.substr(0, pos);
        w.buf.erase(0, pos + 1);
        if (line.rfind("ack ", 0) == 0) {
            t.acked.insert(line.substr(4));
        } else if (line.rfind("forks ", 0) == 0) {
            t.forks += std::atol(line.c_str() + 6);
        } else if (line.rfind("wrapper_kills ", 0) == 0) {
            const long n = std::atol(line.c_str() + 14);
            t.wrapper_kills += n;
            t.kills += n;  // each may leave one unacknowledged entry
        } else if (line.rfind("stat ", 0) == 0) {
            long a = 0, to = 0, c = 0, e = 0;
            int leak = 0;
            std::sscanf(line.c_str(),
                        "stat acquired=%ld timeouts=%ld cancels=%ld errors=%ld fd_leak=%d", &a, &to,
                        &c, &e, &leak);
            t.acquired += a;
            t.timeouts += to;
            t.cancels += c;
            t.errors += e;
            t.fd_leaks += leak != 0;
            if (leak != 0)
                std::fprintf(stderr, "torture: a %s worker leaked %d descriptors\n", w.kind.c_str(),
                             leak);
            ++t.stat_lines;
        }
    }
}

int orchestrate(const std::string& self, double seconds) {
    char tmpl[] = "/tmp/filelock-torture-XXXXXX";
    if (!::mkdtemp(tmpl)) return 2;
    files f{fs::path(tmpl)};
    std::mt19937 rng(12345);
    totals t;
    std::vector<worker> workers;
    const bool have_python = ::system("/usr/bin/python3 -c 'import zc.lockfile' 2>/dev/null") == 0;

    auto start_worker = [&](const std::string& kind, bool replacing) {
        worker w;
        w.kind = kind;
        const std::string seed = std::to_string(rng());
        if (kind == "zc")
            w.pid = spawn({"/usr/bin/python3", "-c", python_worker, f.dir.string()}, w.out);
        else if (kind == "flock1")
            w.pid = spawn(g_slots ? std::vector<std::string>{"bash", "-c", flock_worker, "flock1",
                                                             f.dir.string(), self, "100", "1"}
                                  : std::vector<std::string>{"bash", "-c", flock_worker, "flock1",
                                                             f.dir.string(), self},
                          w.out);
        else
            w.pid = spawn({self, "--worker", kind, f.dir.string(), seed,
                           std::string(replacing ? "r" : "-") + (g_no_lock ? "n" : "-"),
                           std::to_string(g_slots)},
                          w.out);
        if (w.pid > 0) workers.push_back(std::move(w));
    };

    auto run_phase = [&](const std::vector<std::string>& kinds, double secs, bool replacing) {
        ::unlink(f.stop.c_str());
        for (const auto& k : kinds) start_worker(k, replacing);
        const auto end = clk::now() + std::chrono::duration<double>(secs);
        auto next_kill = clk::now() + 100ms, next_replace = clk::now() + 150ms;
        while (clk::now() < end) {
            std::vector<pollfd> pfds;
            for (auto& w : workers) pfds.push_back({w.out, POLLIN, 0});
            ::poll(pfds.data(), pfds.size(), 10);
            for (auto& w : workers) consume(w, t);
            if (clk::now() >= next_kill && !workers.empty()) {
                next_kill = clk::now() + std::chrono::milliseconds(50 + rng() % 250);
                const size_t i = rng() % workers.size();
                auto w = std::move(workers[i]);
                workers.erase(workers.begin() + static_cast<long>(i));
                ::kill(-w.pid, SIGKILL);
                ::waitpid(w.pid, nullptr, 0);
                consume(w, t);
                ::close(w.out);
                ++t.kills;
                t.killed_pids.insert(std::to_string(w.pid));
                start_worker(w.kind, replacing);
            }
            if (replacing && clk::now() >= next_replace) {
                next_replace = clk::now() + std::chrono::milliseconds(50 + rng() % 200);
                // Replace the lock file while holding it (others wait on it).
                std::error_code ec;
                auto held = filelock::lock(f.lock, 2s, {}, ec);
                if (!ec) {
                    const std::string token =
                        std::to_string(::getpid()) + ":r:" + std::to_string(t.replacements);
                    critical_section(f, token, 0);
                    switch (rng() % 3) {
                        case 0: ::unlink(f.lock.c_str()); break;
                        case 1: ::rename(f.lock.c_str(), (f.dir / "lock.old").c_str()); break;
                        default: {
                            const auto tmp = f.dir / "lock.new";
                            ::close(::open(tmp.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644));
                            ::rename(tmp.c_str(), f.lock.c_str());
                        }
                    }
                    held.close();
                    t.acked.insert(token);
                    ++t.replacements;
                }
            }
        }
        // Stop: every worker finishes its current operation and reports.
        append(f.stop, "");
        const auto deadline = clk::now() + 20s;
        for (auto& w : workers) {
            int status = 0;
            pid_t r;
            while ((r = ::waitpid(w.pid, &status, WNOHANG)) == 0 && clk::now() < deadline) {
                consume(w, t);
                std::this_thread::sleep_for(5ms);
            }
            if (r == 0) {
                ++t.hung;
                std::fprintf(stderr, "torture: %s worker %d hung\n", w.kind.c_str(), w.pid);
                ::kill(-w.pid, SIGKILL);
                ::waitpid(w.pid, nullptr, 0);
            } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                ++t.errors;
                std::fprintf(stderr, "torture: %s worker %d exited badly (%d)\n", w.kind.c_str(),
                             w.pid, status);
            }
            ::fcntl(w.out, F_SETFL, 0);
            consume(w, t);
            ::close(w.out);
        }
        workers.clear();
    };

    long phase1_kills = 0;
    if (g_slots) {
        // One phase: slot holders of every driver beside flock -x users.
        fs::create_directory(f.dir / "inside");
        run_phase({"sync", "sync", "asio", "asio", "uv", "wrapper", "flock1"}, seconds, false);
        phase1_kills = t.kills;
    } else {
        std::vector<std::string> mixed = {"sync", "sync",   "asio",   "asio",   "uv",
                                          "uv",   "flock1", "forker", "wrapper"};
        if (have_python) mixed.insert(mixed.end(), {"zc", "zc"});
        run_phase(mixed, seconds * 0.5, false);
        phase1_kills = t.kills;
        run_phase({"sync", "sync", "asio", "asio", "uv", "uv"}, seconds * 0.3, true);
        run_phase({"forker", "forker", "forker", "wrapper", "wrapper", "sync", "asio", "uv"},
                  seconds * 0.2, false);
    }
    // Slots mode: the most holders counted at once.
    unsigned most = 0;
    {
        std::ifstream counts(f.dir / "counts");
        for (unsigned k = 0; counts >> k;) most = std::max(most, k);
    }

    // Check the log against the acknowledgements.
    std::map<std::string, int> logged;
    {
        FILE* lf = std::fopen(f.log.c_str(), "r");
        char line[256];
        while (lf && std::fgets(line, sizeof line, lf)) {
            std::string s(line);
            if (!s.empty() && s.back() == '\n') s.pop_back();
            ++logged[s];
        }
        if (lf) std::fclose(lf);
    }
    // Unacknowledged entries: a killed worker may leave one per thread that
    // was between its critical section and its acknowledgement (its threads
    // hand the lock to one another directly); any other may only come from a
    // killed filelock-run (one each).
    long duplicates = 0, missing = 0, unacked = 0, unexplained = 0;
    for (auto& [token, n] : logged) {
        duplicates += n > 1;
        if (t.acked.count(token)) continue;
        ++unacked;
        unexplained += !t.killed_pids.count(token.substr(0, token.find(':')));
    }
    for (auto& token : t.acked) missing += !logged.count(token);
    long violations = 0;
    {
        FILE* vf = std::fopen(f.violations.c_str(), "r");
        char line[512];
        while (vf && std::fgets(line, sizeof line, vf)) {
            ++violations;
            std::fprintf(stderr, "torture: violation: %s", line);
        }
        if (vf) std::fclose(vf);
    }
    if (g_slots)
        std::printf(
            "torture summary (%.0f s, %u slots: sync+asio+uv+filelock-run --slots %u, "
            "flock -x beside them)\n  most holders counted at once: %u (must be %u)\n",
            seconds, g_slots, g_slots, most, g_slots);
    else
        std::printf(
            "torture summary (%.0f s, phase 1 mixed %s+zc.lockfile+flock(1)+fork+filelock-run, "
            "phase 2 with replacements, phase 3 fork and killed wrappers)\n",
            seconds, have_python ? "sync+asio+uv" : "sync+asio+uv (no python3-zc.lockfile!)");
    std::printf(

        "  forks: %ld  filelock-run SIGKILLed while COMMAND ran: %ld\n"
        "  operations acknowledged: %zu (log entries %zu; unacknowledged entries %ld, all from "
        "%ld killed processes at most; %ld not from a killed worker, at most one per other kill "
        "(filelock-run, fork children))\n"
        "  kills: %ld (phase 1: %ld)  replacements: %ld  cancellations: %ld  timeouts/contention: "
        "%ld\n"
        "  violations: %ld  duplicate log entries: %ld  acknowledged but missing: %ld\n"
        "  worker errors: %ld  descriptor leaks: %ld  hung workers: %ld\n",
        t.forks, t.wrapper_kills, t.acked.size(), logged.size(), unacked, t.kills, unexplained,
        t.kills, phase1_kills, t.replacements, t.cancels, t.timeouts, violations, duplicates,
        missing, t.errors, t.fd_leaks, t.hung);
    std::error_code ec;
    fs::remove_all(f.dir, ec);
    const bool ok = violations == 0 && duplicates == 0 && missing == 0 && unexplained <= t.kills &&
                    t.errors == 0 && t.fd_leaks == 0 && t.hung == 0 && !t.acked.empty() &&
                    (g_slots ? most == g_slots : have_python);
    std::printf("torture: %s\n", ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    std::signal(SIGPIPE, SIG_IGN);
    const std::string self = fs::canonical("/proc/self/exe").string();
    if (argc >= 4 && std::string(argv[1]) == "--cs") {
        files f{fs::path(argv[2])};
        const unsigned spin = argc >= 5 ? static_cast<unsigned>(std::atol(argv[4])) : 100;
        if (argc >= 6)
            return occupy(f, argv[3], spin, static_cast<unsigned>(std::atol(argv[5]))) ? 0 : 3;
        return critical_section(f, argv[3], spin) ? 0 : 3;
    }
    if (argc >= 6 && std::string(argv[1]) == "--worker") {
        const std::string flags = argv[5];
        g_no_lock = flags.find('n') != std::string::npos;
        if (argc >= 7) g_slots = static_cast<unsigned>(std::stoul(argv[6]));
        return worker_main(argv[2], argv[3], static_cast<unsigned>(std::stoul(argv[4])),
                           flags.find('r') != std::string::npos, self);
    }
    double seconds = 60;
    if (const char* s = std::getenv("TORTURE_SECONDS")) seconds = std::atof(s);
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--seconds" && i + 1 < argc) seconds = std::atof(argv[++i]);
        if (a == "--long") seconds = 600;
        if (a == "--negative-control") g_no_lock = true;  // must FAIL: proves detection works
        if (a == "--slots" && i + 1 < argc) g_slots = static_cast<unsigned>(std::atol(argv[++i]));
    }
    if (g_slots > filelock::max_slots) return 2;
    return orchestrate(self, seconds);
}
