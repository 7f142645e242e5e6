// SPDX-License-Identifier: MIT
// filelock-run's etcd target: etcd://host:port[,host:port]/NAME. The lock is
// etcd's Mutex (as `etcdctl lock NAME`); COMMAND runs while it is held; if
// it is lost while COMMAND runs, COMMAND gets the lost signal (SIGTERM by
// default) and filelock-run exits with status 75 (EX_TEMPFAIL) once it ended.
#include "etcd_mode.hpp"

#include "cli.hpp"

#include <filelock/etcd_asio.hpp>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
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

int usage(const std::string& msg) {
    std::fprintf(stderr, "filelock-run: %s\nTry 'filelock-run --help' for more information.\n",
                 msg.c_str());
    return ex_usage;
}

int run(const options& o, const char* target, char** argv) {
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
    sigset_t set;
    sigemptyset(&set);
    for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCHLD, notify_signal()})
        sigaddset(&set, sig);
    sigset_t old;
    ::pthread_sigmask(SIG_BLOCK, &set, &old);
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

    // Waiting: TERM, INT or HUP end the wait (nothing held, nothing runs).
    for (;;) {
        if (got_f.wait_for(std::chrono::seconds(0)) == std::future_status::ready) break;
        siginfo_t info{};
        if (::sigwaitinfo(&set, &info) < 0) continue;
        const int sig = info.si_signo;
        if (sig == SIGTERM || sig == SIGINT || sig == SIGHUP) {
            stop();
            return 128 + sig;
        }
    }
    auto r = got_f.get();
    if (r.ec == filelock::errc::timeout) {
        std::fprintf(stderr, "filelock-run: %s: %s%s%s\n", target,
                     o.nonblock ? "already locked" : "timed out waiting for the lock",
                     r.holder.empty() ? "" : "; held by ", r.holder.c_str());
        stop();
        return o.conflict_code;
    }
    if (r.ec) {
        std::fprintf(stderr, "filelock-run: %s: %s\n", target, r.message.c_str());
        stop();
        return ex_unavailable;
    }
    if (o.verbose)
        std::fprintf(stderr, "filelock-run: holding %s (fencing token %lld)\n",
                     r.held.key().c_str(), static_cast<long long>(r.held.fencing_token()));
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
    const pid_t child = ::fork();
    if (child < 0) {
        std::fprintf(stderr, "filelock-run: cannot fork: %s\n", std::strerror(errno));
        held.release();
        stop();
        return ex_oserr;
    }
    if (child == 0) {
        ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
        ::execvp(argv[0], argv);
        const int err = errno;
        std::fprintf(stderr, "filelock-run: failed to execute %s: %s\n", argv[0],
                     std::strerror(err));
        ::_exit(err == ENOMEM ? ex_oserr : ex_unavailable);
    }
    int status = 0;
    bool told = false;
    for (;;) {
        int st = 0;
        const pid_t w = ::waitpid(child, &st, WNOHANG);
        if (w == child) {
            status = WIFSIGNALED(st) ? 128 + WTERMSIG(st) : WEXITSTATUS(st);
            break;
        }
        if (lost && !told) {
            told = true;
            std::fprintf(stderr, "filelock-run: %s: the lock was lost; sending %s to %s\n", target,
                         strsignal(o.lost_signal), argv[0]);
            ::kill(child, o.lost_signal);
        }
        siginfo_t info{};
        if (::sigwaitinfo(&set, &info) < 0) continue;
        const int sig = info.si_signo;
        if (sig == SIGCHLD || sig == notify_signal()) continue;
        if (info.si_code <= 0) ::kill(child, sig);  // forwarded, as for lock files
    }
    const bool was_lost = lost || held.lost();
    asio::post(io, [&] { held.release(); });
    stop();
    return was_lost ? ex_tempfail : status;
}

}  // namespace etcd_mode
