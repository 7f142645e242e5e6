// SPDX-License-Identifier: MIT
// filelock-run's etcd target: etcd://host:port[,host:port]/NAME. The lock is
// etcd's Mutex (as `etcdctl lock NAME`); COMMAND runs while it is held; if
// it is lost while COMMAND runs, COMMAND gets the lost signal (SIGTERM by
// default) and filelock-run exits with status 75 (EX_TEMPFAIL) once it ended.
#include "etcd_mode.hpp"

#include "cli.hpp"
#include "keeper.hpp"
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

// The acquisition's outcome and the lost signal reach the main thread as
// this real-time signal (it waits with sigwaitinfo).
int notify_signal() { return SIGRTMIN + 1; }

const char* env(const char* name) {
    const char* v = std::getenv(name);
    return v && *v ? v : nullptr;
}

// An option's value, else the environment's (etcdctl's variables), else "".
std::string option_or_env(const std::string& value, const char* name) {
    if (!value.empty()) return value;
    const char* v = env(name);
    return v ? v : "";
}

[[noreturn]] void usage(const std::string& msg) { cli::usage_error(msg); }

}  // namespace

filelock::etcd::config configuration(const options& o, const char* target, std::string& name) {
    const std::string rest = target + 7;
    const auto slash = rest.find('/');
    if (slash == std::string::npos || slash + 1 >= rest.size())
        usage(std::string("no lock name in '") + target + "' (etcd://host:port/NAME)");
    const std::string hosts = rest.substr(0, slash);
    name = rest.substr(slash + 1);
    filelock::etcd::config cfg;
    cfg.ca_file = option_or_env(o.cacert, "ETCDCTL_CACERT");
    cfg.cert_file = option_or_env(o.cert, "ETCDCTL_CERT");
    cfg.key_file = option_or_env(o.key, "ETCDCTL_KEY");
    const bool tls = !cfg.ca_file.empty() || !cfg.cert_file.empty();
    cfg.endpoints.clear();
    for (std::size_t pos = 0; pos <= hosts.size();) {
        auto comma = hosts.find(',', pos);
        if (comma == std::string::npos) comma = hosts.size();
        const std::string h = hosts.substr(pos, comma - pos);
        if (h.empty()) usage(std::string("empty endpoint in '") + target + "'");
        cfg.endpoints.push_back((tls ? "https://" : "http://") + h);
        pos = comma + 1;
    }
    const std::string user = option_or_env(o.user, "ETCDCTL_USER");
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
    if (auto ec = filelock::etcd::validate(cfg, why)) usage(why);
    return cfg;
}

namespace {

// The etcd client on an io_context of its own thread. Every signal the
// wrapper handles is blocked before that thread starts (it inherits the
// mask): the main thread takes them all with sigwaitinfo, and learns of the
// acquisition's outcome and of a lost lock by notify_signal().
class session {
public:
    explicit session(const filelock::etcd::config& cfg)
        : ttl_(cfg.ttl),
          grace_(std::min<std::chrono::nanoseconds>(cfg.lost_margin,
                                                    std::chrono::milliseconds(cfg.ttl) / 2) /
                 2) {
        signals_ = posix_run::forwarded_signals();
        sigaddset(&signals_, notify_signal());
        sigset_t blocked = signals_;
        sigaddset(&blocked, SIGTTOU);  // see posix_run::spawn
        ::pthread_sigmask(SIG_BLOCK, &blocked, &old_mask_);
        try {
            client_.emplace(io_.get_executor(), cfg);
        } catch (const std::system_error& e) {
            usage(e.what());
        }
        loop_ = std::thread([this] {
            // A deadline told to a keeper that just ended: EPIPE, not death.
            sigset_t pipe;
            sigemptyset(&pipe);
            sigaddset(&pipe, SIGPIPE);
            ::pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
            io_.run();
        });
    }
    session(const session&) = delete;
    session& operator=(const session&) = delete;
    ~session() { stop(); }

    /// Ends the client (a pending acquisition is cancelled) and its thread.
    void stop() {
        if (!loop_.joinable()) return;
        asio::post(io_, [this] {
            feed_.reset();
            client_.reset();
        });
        work_.reset();
        loop_.join();
    }

    /// Waits for the lock. TERM, INT or HUP end the wait: nothing is held,
    /// nothing runs, and filelock-run dies of the signal, as flock(1).
    filelock::etcd::lock_result acquire(const std::string& name, std::chrono::nanoseconds timeout,
                                        const filelock::etcd::lock_options& kind) {
        std::promise<filelock::etcd::lock_result> got;
        auto got_f = got.get_future();
        asio::post(io_, [&] {
            client_->async_lock_result(name, timeout, kind, [&](filelock::etcd::lock_result r) {
                got.set_value(std::move(r));
                ::pthread_kill(main_thread_, notify_signal());
            });
        });
        while (got_f.wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
            const int sig = next_signal().si_signo;
            if (sig == SIGTSTP) posix_run::stop_like(sig);  // ^Z while waiting: as before
            if (sig == SIGTERM || sig == SIGINT || sig == SIGHUP) {
                stop();
                std::exit(posix_run::die_of(sig));
            }
        }
        return got_f.get();
    }

    /// `lost` becomes true (and the main thread is woken) if `held` is lost.
    void watch(filelock::etcd::lock& held, std::atomic<bool>& lost) {
        asio::post(io_, [&] {
            held.on_lost([&](std::error_code ec) {
                if (ec == std::errc::operation_canceled) return;  // released
                lost = true;
                ::pthread_kill(main_thread_, notify_signal());
            });
        });
    }

    /// Releases `held`, and unless `lost` waits for etcd's answer, at most a
    /// TTL (after which the lease would end anyway); false when none came.
    bool release(filelock::etcd::lock& held, bool lost, std::error_code& ec) {
        auto released = std::make_shared<std::promise<std::error_code>>();
        auto released_f = released->get_future();
        asio::post(io_, [&, released] {
            held.release([released](std::error_code e) { released->set_value(e); });
        });
        if (lost) return true;
        if (released_f.wait_for(ttl_) != std::future_status::ready) return false;
        try {
            ec = released_f.get();
            return true;
        } catch (const std::future_error&) {  // the callback was dropped uncalled
            return false;
        }
    }

    /// The keeper's first deadline (keeper.hpp): until when `held` is
    /// guaranteed, plus half the margin (the lost signal's grace; etcd
    /// cannot end the lease before the whole margin passed).
    std::int64_t keeper_deadline(const filelock::etcd::lock& held) {
        std::promise<std::int64_t> until;
        auto until_f = until.get_future();
        asio::post(io_, [&] { until.set_value(held.guaranteed_until().count()); });
        const std::int64_t u = until_f.get();
        return (u > 0 ? u : keeper::now()) + grace_.count();
    }

    /// Tells the keeper on `life` each later deadline of `held` (looked at
    /// every 100 ms); once it is lost, a deadline at most the grace away.
    void tell_keeper(const filelock::etcd::lock& held, int life, std::int64_t told) {
        asio::post(io_, [this, &held, life, told] {
            feed_.emplace(io_);
            feed(held, life, told);
        });
    }

    /// Releases `held` without waiting (COMMAND never ran).
    void drop(filelock::etcd::lock& held) {
        asio::post(io_, [&] { held.release(); });
    }

    /// The next signal for the main thread (EINTR: tried again).
    siginfo_t next_signal() const {
        siginfo_t info{};
        while (::sigwaitinfo(&signals_, &info) < 0) {
        }
        return info;
    }

    /// The mask filelock-run started with (COMMAND's).
    const sigset_t& old_mask() const noexcept { return old_mask_; }

private:
    void feed(const filelock::etcd::lock& held, int life, std::int64_t told) {
        if (held.lost()) {
            keeper::set_deadline(life, std::min(told, keeper::now() + grace_.count()));
            return;
        }
        const std::int64_t until = held.guaranteed_until().count();
        if (until > 0 && until + grace_.count() > told) {
            told = until + grace_.count();
            keeper::set_deadline(life, told);
        }
        feed_->expires_after(std::chrono::milliseconds(100));
        feed_->async_wait([this, &held, life, told](std::error_code ec) {
            // A tick that came due before stop() reset the timer still runs,
            // without an error, after it: re-arming the destroyed timer then
            // kept the loop, and filelock-run, running forever.
            if (!ec && feed_) feed(held, life, told);
        });
    }

    std::chrono::seconds ttl_;
    std::chrono::nanoseconds grace_;
    sigset_t signals_{}, old_mask_{};
    const pthread_t main_thread_ = ::pthread_self();
    asio::io_context io_{1};
    asio::executor_work_guard<asio::io_context::executor_type> work_ = asio::make_work_guard(io_);
    std::optional<filelock::etcd::client> client_;
    std::optional<asio::steady_timer> feed_;  // see tell_keeper
    std::thread loop_;
};

// Runs COMMAND while the lock is held; returns its wait status. COMMAND,
// and what it started, die with filelock-run (a keeper, keeper.hpp;
// PR_SET_PDEATHSIG elsewhere): killed, filelock-run stops renewing the
// lease, which etcd then ends after its TTL while COMMAND would run on
// unlocked. A lock file has no such gap (COMMAND inherits the lock); here
// only the keep-alive holds it. If the lock is lost, COMMAND's group gets
// the lost signal, once.
int run_command(session& s, const options& o, const char* target, char** argv,
                const filelock::etcd::lock& held, const std::atomic<bool>& lost,
                posix_run::child& c) {
    posix_run::spawn_options so;
    so.die_with_parent = true;
    so.keeper = true;
    so.mask = &s.old_mask();
    so.deadline = s.keeper_deadline(held);
    c = posix_run::spawn(argv, so);
    if (c.pid < 0) return -1;
    s.tell_keeper(held, c.life, so.deadline);
    int wait_status = 0;
    bool told = false;
    while (!posix_run::ended(c, wait_status)) {
        if (lost && !told) {
            told = true;
            cli::warn(std::string(target) + ": the lock was lost; sending " +
                      strsignal(o.lost_signal) + " to " + argv[0]);
            ::kill(-c.group, o.lost_signal);
        }
        const siginfo_t info = s.next_signal();
        if (info.si_signo != notify_signal()) posix_run::forward(c, info);
    }
    return wait_status;
}

}  // namespace

bool is_target(const char* target) { return std::strncmp(target, "etcd://", 7) == 0; }

int run(const options& o, const cli::command_line& cl, const char* target, char** argv) {
    std::string name;
    const filelock::etcd::config cfg = configuration(o, target, name);
    session s(cfg);
    const auto started = std::chrono::steady_clock::now();
    auto r = s.acquire(
        name, o.timeout,
        {o.shared ? filelock::lock_mode::shared : filelock::lock_mode::exclusive, o.slots});
    if (r.ec == filelock::errc::timeout) {
        s.stop();
        return cli::report_conflict(cl, r.holder);  // silent unless --verbose
    }
    if (r.ec) {
        cli::warn(std::string(target) + ": " + r.message);
        s.stop();
        return ex_unavailable;
    }
    cli::report_took(cl, started);
    if (o.verbose)
        cli::warn("holding " + r.held.key() + " (fencing token " +
                  std::to_string(r.held.fencing_token()) + ")");
    std::atomic<bool> lost{false};
    filelock::etcd::lock held = std::move(r.held);
    s.watch(held, lost);

    // COMMAND gets the token in its environment: pass it with its writes.
    const std::string token = std::to_string(held.fencing_token());
    ::setenv("FILELOCK_FENCING_TOKEN", token.c_str(), 1);
    ::signal(SIGCHLD, SIG_DFL);
    cli::report_executing(cl, argv[0]);
    posix_run::child c;
    const int wait_status = run_command(s, o, target, argv, held, lost, c);
    if (c.pid < 0) {
        cli::warn(std::string("cannot fork: ") + std::strerror(errno));
        s.drop(held);
        s.stop();
        return ex_oserr;
    }
    if (c.expired)
        cli::warn(std::string(target) + ": no keep-alive was answered in time; " + argv[0] +
                  " and what it started were killed before the lease could expire");
    const bool was_lost = lost || held.lost() || c.expired;
    // The release is awaited: one etcd refuses (or that never answers
    // within the TTL) leaves the key blocking the next waiter, and is
    // reported.
    std::error_code release_ec;
    const bool answered = s.release(held, was_lost, release_ec);
    s.stop();
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
