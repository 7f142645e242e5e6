// SPDX-License-Identifier: MIT
// filelock-run's etcd target: etcd://host:port[,host:port]/NAME. The lock is
// etcd's Mutex (as `etcdctl lock NAME`); COMMAND runs while it is held; if
// it is lost while COMMAND runs, COMMAND gets the lost signal (SIGTERM by
// default) and filelock-run exits with status 75 (EX_TEMPFAIL) once it ended.
#include "etcd_mode.hpp"

#include "cli.hpp"
#include "posix_run.hpp"

#include <filelock/etcd_asio.hpp>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <memory>
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

namespace etcd_mode {

namespace {

using cli::ex_oserr;
using cli::ex_tempfail;
using cli::ex_unavailable;
using cli::ex_usage;

// The acquisition's outcome and the lost signal reach the main thread as
// this real-time signal (it waits with sigwaitinfo).
int notify_signal() { return SIGRTMIN + 1; }

const char* env(const char* name) {
    const char* v = std::getenv(name);
    return v && *v ? v : nullptr;
}

}  // namespace

bool is_target(const char* target) { return std::strncmp(target, "etcd://", 7) == 0; }

int usage(const std::string& msg) { cli::usage_error(msg); }

int run(const options& o, const cli::command_line& cl, const char* target, char** argv) {
    // etcd://host:port[,host:port]/NAME
    std::string rest = target + 7;
    const auto slash = rest.find('/');
    if (slash == std::string::npos || slash + 1 >= rest.size())
        return usage(std::string("no lock name in '") + target + "' (etcd://host:port/NAME)");
    const std::string hosts = rest.substr(0, slash), name = rest.substr(slash + 1);
    filelock::etcd::config cfg;
    cfg.endpoints.clear();
    const std::string ca = !o.cacert.empty()       ? o.cacert
                           : env("ETCDCTL_CACERT") ? env("ETCDCTL_CACERT")
                                                   : "";
    const std::string cert = !o.cert.empty()       ? o.cert
                             : env("ETCDCTL_CERT") ? env("ETCDCTL_CERT")
                                                   : "";
    const std::string key = !o.key.empty() ? o.key : env("ETCDCTL_KEY") ? env("ETCDCTL_KEY") : "";
    const bool tls = !ca.empty() || !cert.empty();
    for (std::size_t pos = 0; pos <= hosts.size();) {
        auto comma = hosts.find(',', pos);
        if (comma == std::string::npos) comma = hosts.size();
        const std::string h = hosts.substr(pos, comma - pos);
        if (h.empty()) return usage(std::string("empty endpoint in '") + target + "'");
        cfg.endpoints.push_back((tls ? "https://" : "http://") + h);
        pos = comma + 1;
    }
    cfg.ca_file = ca;
    cfg.cert_file = cert;
    cfg.key_file = key;
    std::string user = !o.user.empty() ? o.user : env("ETCDCTL_USER") ? env("ETCDCTL_USER") : "";
    if (!user.empty()) {
        const auto colon = user.find(':');
        cfg.user = user.substr(0, colon);
        if (colon != std::string::npos)
            cfg.password = user.substr(colon + 1);
        else if (const char* p = env("ETCDCTL_PASSWORD"))
            cfg.password = p;
    }
    if (o.ttl.count() > 0) cfg.ttl = o.ttl;
    if (!o.content.empty()) cfg.content = o.content;
    if (o.simple) cfg.content.clear();
    std::string why;
    if (auto ec = filelock::etcd::validate(cfg, why)) return usage(why);

    // Every signal the wrapper handles is blocked before the client's thread
    // starts (it inherits the mask): the main thread takes them all.
    sigset_t set = posix_run::forwarded_signals();
    sigaddset(&set, notify_signal());
    sigset_t blocked = set;
    sigaddset(&blocked, SIGTTOU);  // see posix_run::spawn
    sigset_t old;
    ::pthread_sigmask(SIG_BLOCK, &blocked, &old);
    const pthread_t main_thread = ::pthread_self();

    asio::io_context io(1);
    auto work = asio::make_work_guard(io);
    std::optional<filelock::etcd::client> client;
    try {
        client.emplace(io.get_executor(), cfg);
    } catch (const std::system_error& e) {
        return usage(e.what());
    }
    std::thread loop([&] { io.run(); });
    std::promise<filelock::etcd::lock_result> got;
    auto got_f = got.get_future();
    asio::post(io, [&] {
        client->async_lock_result(name, o.timeout, [&](filelock::etcd::lock_result r) {
            got.set_value(std::move(r));
            ::pthread_kill(main_thread, notify_signal());
        });
    });
    const auto stop = [&] {
        asio::post(io, [&] { client.reset(); });  // cancels a pending acquisition
        work.reset();
        loop.join();
    };

    const auto started = std::chrono::steady_clock::now();
    // Waiting: TERM, INT or HUP end the wait (nothing held, nothing runs).
    for (;;) {
        if (got_f.wait_for(std::chrono::seconds(0)) == std::future_status::ready) break;
        siginfo_t info{};
        if (::sigwaitinfo(&set, &info) < 0) continue;
        const int sig = info.si_signo;
        if (sig == SIGTSTP) posix_run::stop_like(sig);  // ^Z while waiting: as before
        if (sig == SIGTERM || sig == SIGINT || sig == SIGHUP) {
            stop();
            return posix_run::die_of(sig);  // as flock(1) dies of it
        }
    }
    auto r = got_f.get();
    if (r.ec == filelock::errc::timeout) {
        stop();
        return cli::report_conflict(cl, r.holder);  // silent unless --verbose
    }
    if (r.ec) {
        cli::warn(std::string(target) + ": " + r.message);
        stop();
        return ex_unavailable;
    }
    cli::report_took(cl, started);
    if (o.verbose)
        cli::warn("holding " + r.held.key() + " (fencing token " +
                  std::to_string(r.held.fencing_token()) + ")");
    std::atomic<bool> lost{false};
    filelock::etcd::lock held = std::move(r.held);
    asio::post(io, [&] {
        held.on_lost([&](std::error_code ec) {
            if (ec == std::errc::operation_canceled) return;  // released
            lost = true;
            ::pthread_kill(main_thread, notify_signal());
        });
    });

    // COMMAND gets the token in its environment: pass it with its writes.
    const std::string token = std::to_string(held.fencing_token());
    ::setenv("FILELOCK_FENCING_TOKEN", token.c_str(), 1);
    ::signal(SIGCHLD, SIG_DFL);
    cli::report_executing(cl, argv[0]);
    // COMMAND, and what it started, die with filelock-run (a keeper,
    // keeper.hpp; PR_SET_PDEATHSIG elsewhere): killed, filelock-run stops
    // renewing the lease, which etcd then ends after its TTL while COMMAND
    // would run on unlocked. A lock file has no such gap (COMMAND inherits
    // the lock); here only the keep-alive holds it.
    posix_run::spawn_options so;
    so.die_with_parent = true;
    so.keeper = true;
    so.mask = &old;
    posix_run::child c = posix_run::spawn(argv, so);
    if (c.pid < 0) {
        cli::warn(std::string("cannot fork: ") + std::strerror(errno));
        asio::post(io, [&] { held.release(); });
        stop();
        return ex_oserr;
    }
    int wait_status = 0;
    bool told = false;
    for (;;) {
        if (posix_run::ended(c, wait_status)) break;
        if (lost && !told) {
            told = true;
            cli::warn(std::string(target) + ": the lock was lost; sending " +
                      strsignal(o.lost_signal) + " to " + argv[0]);
            ::kill(-c.group, o.lost_signal);
        }
        siginfo_t info{};
        if (::sigwaitinfo(&set, &info) < 0) continue;
        if (info.si_signo == notify_signal()) continue;
        posix_run::forward(c, info);
    }
    const bool was_lost = lost || held.lost();
    // The release is awaited: one etcd refuses (or that never answers
    // within the TTL, after which the lease would end anyway) leaves the
    // key blocking the next waiter, and is reported.
    auto released = std::make_shared<std::promise<std::error_code>>();
    auto released_f = released->get_future();
    asio::post(io, [&, released] {
        held.release([released](std::error_code ec) { released->set_value(ec); });
    });
    bool answered = was_lost || released_f.wait_for(cfg.ttl) == std::future_status::ready;
    std::error_code release_ec;
    if (!was_lost && answered) {
        try {
            release_ec = released_f.get();
        } catch (const std::future_error&) {  // the callback was dropped uncalled
            answered = false;
        }
    }
    stop();
    if (was_lost) return ex_tempfail;
    if (!answered || release_ec) {
        cli::warn(std::string(target) + ": the lock's release failed (" +
                  (answered ? release_ec.message() : std::string("no answer")) +
                  "): the next holder may wait until the lease expires");
        const int status = posix_run::status_of(wait_status);
        return status == 0 ? ex_unavailable : posix_run::finish(c, wait_status);
    }
    return posix_run::finish(c, wait_status);
}

}  // namespace etcd_mode
