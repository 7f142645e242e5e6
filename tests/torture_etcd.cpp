// SPDX-License-Identifier: MIT
// Torture test of the etcd backend: worker processes increment a shared
// counter under one etcd lock while the parent SIGKILLs them at random (and
// starts new ones), against a real etcd member of its own.
//
//   torture_etcd [--seconds N]      (default 20, or $TORTURE_SECONDS / 3)
//   torture_etcd --negative-control (workers skip the lock: must FAIL)
//   torture_etcd --slots N          (a lock with N holders: see below)
//
// Every holder checks an occupancy marker that a second live holder would
// have left, appends its fencing token to a log, increments the counter,
// clears the marker and releases; it acknowledges after the release. Exit
// status 0 only if no holder saw another live holder, the tokens in the log
// strictly increase (holders in etcd's order), and the counter and the log
// account for every acknowledged increment (a killed holder may leave one
// unacknowledged entry).
//
// With --slots N the workers take one of N slots: each holder enters an
// occupancy directory (a file named by its pid), counts the live holders in
// it and leaves. Exit status 0 only if no holder ever counted more than N,
// N at once was reached, and the acknowledgements add up.
#include <filelock/etcd_asio.hpp>

#include "etcd_member.hpp"

#include <fcntl.h>

#include <fstream>
#include <random>
#include <set>

using namespace std::chrono_literals;
namespace etcd = filelock::etcd;

namespace {

std::string dir;
std::string endpoint;
const std::string name = "torture/counter";
bool no_lock = false;
unsigned slots = 1;

void append(const std::string& file, const std::string& line) {
    const int fd = ::open(file.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    (void)!::write(fd, line.data(), line.size());
    ::close(fd);
}

int read_int(const std::string& file) {
    int n = 0;
    std::ifstream(file) >> n;
    return n;
}

// The critical section, as one holder.
void critical(std::int64_t token, std::mt19937& rng) {
    const std::string marker = dir + "/marker";
    for (;;) {
        const int fd = ::open(marker.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd >= 0) {
            const std::string me = std::to_string(::getpid());
            (void)!::write(fd, me.data(), me.size());
            ::close(fd);
            break;
        }
        // A marker left by a holder that was killed is stale; one of a live
        // process is a second holder.
        const int other = read_int(marker);
        if (other > 0 && ::kill(other, 0) == 0) {
            append(dir + "/violations",
                   std::to_string(::getpid()) + " saw " + std::to_string(other) + "\n");
            break;
        }
        ::unlink(marker.c_str());
    }
    append(dir + "/log", std::to_string(token) + "\n");
    const int n = read_int(dir + "/n");
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 2000));
    {
        std::ofstream(dir + "/n.tmp") << n + 1;
        std::rename((dir + "/n.tmp").c_str(), (dir + "/n").c_str());
    }
    ::unlink(marker.c_str());
}

// The critical section, as one of `slots` holders: enter, count the live
// holders inside (killed ones leave their file behind), stay a moment, leave.
void occupy(std::mt19937& rng) {
    const std::string in = dir + "/inside/";
    const std::string me = in + std::to_string(::getpid());
    { std::ofstream(me) << ""; }
    unsigned live = 0;
    for (const auto& e : std::filesystem::directory_iterator(in)) {
        const int pid = std::atoi(e.path().filename().c_str());
        if (pid > 0 && (pid == ::getpid() || ::kill(pid, 0) == 0)) ++live;
    }
    append(dir + "/counts", std::to_string(live) + "\n");
    if (live > slots)
        append(dir + "/violations",
               std::to_string(::getpid()) + " saw " + std::to_string(live) + " holders\n");
    std::this_thread::sleep_for(std::chrono::milliseconds(5 + rng() % 30));
    ::unlink(me.c_str());
}

[[noreturn]] void worker(int seed) {
    std::mt19937 rng(static_cast<unsigned>(seed));
    if (no_lock) {  // proves that the checks detect overlapping holders
        for (std::int64_t t = 1;; ++t) slots > 1 ? occupy(rng) : critical(t, rng);
    }
    etcd::config c;
    c.endpoints = {endpoint};
    c.ttl = 2s;
    asio::io_context io;
    std::optional<etcd::client> cl(std::in_place, io.get_executor(), c);
    std::function<void()> next = [&] {
        cl->async_lock(name, std::chrono::milliseconds(50 + rng() % 3000),
                       etcd::lock_options{.slots = slots}, [&](std::error_code ec, etcd::lock l) {
                           if (ec) return next();  // timed out: again
                           if (slots > 1)
                               occupy(rng);
                           else
                               critical(l.fencing_token(), rng);
                           auto held = std::make_shared<etcd::lock>(std::move(l));
                           held->release([&, held](std::error_code) {
                               append(dir + "/acks", "1\n");
                               next();
                           });
                       });
    };
    next();
    io.run();
    ::_exit(0);
}

}  // namespace

int main(int argc, char** argv) {
    double seconds = 20;
    if (const char* t = std::getenv("TORTURE_SECONDS")) seconds = std::max(5.0, std::atof(t) / 3);
    for (int i = 1; i < argc; ++i) {
        if (std::string(argv[i]) == "--seconds" && i + 1 < argc) seconds = std::atof(argv[i + 1]);
        if (std::string(argv[i]) == "--negative-control") no_lock = true;
        if (std::string(argv[i]) == "--slots" && i + 1 < argc)
            slots = static_cast<unsigned>(std::max(1, std::atoi(argv[i + 1])));
    }
    test::etcd_cluster member(1);
    endpoint = member.endpoint();
    char tmpl[] = "/tmp/filelock-torture-etcd-XXXXXX";
    dir = ::mkdtemp(tmpl);
    { std::ofstream(dir + "/n") << 0; }
    std::filesystem::create_directory(dir + "/inside");

    constexpr int workers = 5;
    std::vector<pid_t> pids;
    int seed = 1;
    const auto spawn = [&] {
        const pid_t pid = ::fork();
        if (pid == 0) worker(seed);
        ++seed;
        return pid;
    };
    for (int i = 0; i < workers; ++i) pids.push_back(spawn());
    std::mt19937 rng(42);
    long kills = 0;
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < until) {
        // A killed holder keeps the lock until its lease expires (TTL 2 s).
        std::this_thread::sleep_for(std::chrono::milliseconds(700 + rng() % 1500));
        auto& victim = pids[rng() % pids.size()];
        ::kill(victim, SIGKILL);
        ::waitpid(victim, nullptr, 0);
        ++kills;
        victim = spawn();
    }
    for (auto p : pids) {
        ::kill(p, SIGKILL);
        ::waitpid(p, nullptr, 0);
    }
    kills += workers;

    std::vector<long long> tokens;
    {
        std::ifstream log(dir + "/log");
        long long t;
        while (log >> t) tokens.push_back(t);
    }
    long out_of_order = 0;
    for (std::size_t i = 1; i < tokens.size(); ++i) out_of_order += tokens[i] <= tokens[i - 1];
    long acks = 0;
    {
        std::ifstream a(dir + "/acks");
        std::string l;
        while (std::getline(a, l)) ++acks;
    }
    long violations = 0;
    {
        std::ifstream v(dir + "/violations");
        std::string l;
        while (std::getline(v, l)) ++violations;
    }
    long counter = read_int(dir + "/n");
    long entries = static_cast<long>(tokens.size());
    unsigned most = 0;
    if (slots > 1) {
        // Holders at once: counted, not ordered (N of them interleave).
        std::ifstream c(dir + "/counts");
        unsigned k = 0;
        entries = 0;
        while (c >> k) {
            most = std::max(most, k);
            ++entries;
        }
        counter = acks;
        std::printf("torture_etcd: %u slots, at most %u holders seen at once\n", slots, most);
    }
    const bool accounted = acks <= counter && counter <= entries && entries - acks <= kills &&
                           (slots == 1 || most == slots || (no_lock && most > slots));
    std::printf(
        "torture_etcd summary (%.0f s, %d workers, etcd %s)\n"
        "  holders: %ld (acknowledged %ld), counter %ld, kills %ld\n"
        "  violations: %ld  tokens out of order: %ld  accounting: %s\n",
        seconds, workers, endpoint.c_str(), entries, acks, counter, kills, violations, out_of_order,
        accounted ? "ok" : "BROKEN");
    std::filesystem::remove_all(dir);
    const bool ok = violations == 0 && out_of_order == 0 && accounted && acks > 0;
    std::puts(ok ? "torture_etcd: PASS" : "torture_etcd: FAIL");
    return ok ? 0 : 1;
}
