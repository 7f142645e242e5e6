// SPDX-License-Identifier: MIT
// Locks with N holders (slots): handoff and throughput, side by side in one
// run (not a test).
//
//   bench_slots [--seconds S] [--hold-ms H] [--runs R] [--dir DIR] [--etcd ENDPOINT | --no-etcd]
//
// For N = 1, 4 and 16, 2N contender processes take one of N slots in a loop:
// each holds H ms (default 2), releases and asks again at once, for S
// seconds (default 3). Each stamps when it holds and just before it releases
// (CLOCK_MONOTONIC, one clock for all processes). The stamps of all
// contenders, merged in time order, pair each release with the next
// acquisition (first released, first taken): the handoff is the time
// between them, from a slot given back to a waiter holding it. Throughput is
// the acquisitions per second. The first fifth of each run is left out
// (processes starting, etcd sessions being made).
//
// Rows, in one run, interleaved per round:
// - lock files: blocking flock(2) (the floor: one holder, 2 contenders),
//   then lock(path, wait_forever, {.slots = N}) for N = 1, 4, 16;
// - etcd: `etcdctl lock NAME COMMAND` (Go's Mutex: one holder, 2
//   contenders, each acquisition a new etcdctl process and session; COMMAND,
//   this program, stamps), then the Asio client's async_lock(name, timeout,
//   {.slots = N}) for N = 1, 4, 16, each contender with its own session.
// etcd: an etcd member of its own (/usr/bin/etcd, or $FILELOCK_ETCD) on free
// loopback ports, unless --etcd names an endpoint. With R runs, every figure
// is the median of the R runs' figures. The last column is the CPU time the
// row's contenders used (the etcdctl processes included) and, with its own
// member, etcd's.
#include <filelock/lock_file.hpp>
#ifdef FILELOCK_BENCH_ETCD
#include <filelock/etcd_asio.hpp>

#include <asio/steady_timer.hpp>

#include "../tests/etcd_member.hpp"
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <functional>
#include <map>
#include <optional>
#include <signal.h>
#include <sstream>
#include <string>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

long long now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

void sleep_until_ns(long long t) {
    const long long d = t - now_ns();
    if (d > 0) std::this_thread::sleep_for(std::chrono::nanoseconds(d));
}

// A contender's stamps, written to its own file when it stops: "a NS" when
// it holds, "r NS" just before it releases.
struct stamps {
    std::string out;
    void acquired() { out += "a " + std::to_string(now_ns()) + "\n"; }
    void releasing() { out += "r " + std::to_string(now_ns()) + "\n"; }
    void save(const std::string& file) const {
        const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd < 0) std::exit(5);
        (void)!::write(fd, out.data(), out.size());
        ::close(fd);
    }
};

// --- contenders (child processes) -------------------------------------------

// Blocking flock(2): the floor.
void contend_flock(const std::string& lock, long long begin, long long end, long long hold_ns,
                   stamps& s) {
    sleep_until_ns(begin);
    while (now_ns() < end) {
        const int fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
        if (fd < 0 || ::flock(fd, LOCK_EX) != 0) std::exit(4);
        s.acquired();
        sleep_until_ns(now_ns() + hold_ns);
        s.releasing();
        ::flock(fd, LOCK_UN);
        ::close(fd);
    }
}

void contend_file(const std::string& lock, unsigned n, long long begin, long long end,
                  long long hold_ns, stamps& s) {
    filelock::lock_options o;
    o.slots = n;
    sleep_until_ns(begin);
    while (now_ns() < end) {
        auto l = filelock::lock(lock, filelock::wait_forever, o);
        s.acquired();
        sleep_until_ns(now_ns() + hold_ns);
        s.releasing();
        l.close();
    }
}

#ifdef FILELOCK_BENCH_ETCD
void contend_etcd(const std::string& endpoint, const std::string& name, unsigned n, long long begin,
                  long long end, long long hold_ns, stamps& s) {
    namespace etcd = filelock::etcd;
    etcd::config c;
    c.endpoints = {endpoint};
    asio::io_context io;
    std::optional<etcd::client> cl(std::in_place, io.get_executor(), c);
    asio::steady_timer hold(io);
    std::function<void()> next = [&] {
        if (now_ns() >= end) return cl.reset();
        cl->async_lock(
            name, 60s, etcd::lock_options{.slots = n}, [&](std::error_code ec, etcd::lock l) {
                if (ec) {
                    std::fprintf(stderr, "bench_slots: etcd: %s\n", ec.message().c_str());
                    std::exit(6);
                }
                s.acquired();
                hold.expires_after(std::chrono::nanoseconds(hold_ns));
                auto held = std::make_shared<etcd::lock>(std::move(l));
                hold.async_wait([&, held](std::error_code) {
                    s.releasing();
                    held->release([&, held](std::error_code) { next(); });
                });
            });
    };
    sleep_until_ns(begin);
    next();
    io.run();
}
#endif

// --- figures -----------------------------------------------------------------

struct figures {
    double p50_us = 0, p99_us = 0, per_s = 0;
    std::size_t handoffs = 0;
    double cpu_s = 0, etcd_cpu_s = 0;  // the contenders', etcd's (its own member only)
};

// CPU seconds of the waited-for children so far.
double children_cpu() {
    rusage ru{};
    ::getrusage(RUSAGE_CHILDREN, &ru);
    return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// CPU seconds of process `pid` so far (utime + stime of /proc/PID/stat).
double process_cpu(pid_t pid) {
    if (pid <= 0) return 0;
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto close = stat.rfind(')');
    if (close == std::string::npos) return 0;
    std::istringstream rest(stat.substr(close + 2));
    std::string field;
    double ticks = 0;
    for (int i = 3; rest >> field && i <= 15; ++i)
        if (i >= 14) ticks += std::atof(field.c_str());
    return ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

double pct(std::vector<double> v, double p) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())))];
}

figures analyse(const std::vector<std::string>& files, long long from, long long to) {
    std::vector<std::pair<long long, char>> ev;
    for (const auto& f : files) {
        std::ifstream in(f);
        char k;
        long long t;
        while (in >> k >> t) ev.emplace_back(t, k);
    }
    std::sort(ev.begin(), ev.end());
    std::vector<long long> freed;  // releases not yet followed by an acquisition
    std::size_t next_freed = 0;
    std::vector<double> handoff;
    std::size_t acquired = 0;
    for (auto [t, k] : ev) {
        if (k == 'r') {
            freed.push_back(t);
            continue;
        }
        const bool counted = t >= from && t < to;
        acquired += counted;
        if (next_freed < freed.size()) {
            if (counted) handoff.push_back(static_cast<double>(t - freed[next_freed]) / 1e3);
            ++next_freed;
        }
    }
    figures r;
    r.p50_us = pct(handoff, 0.5);
    r.p99_us = pct(handoff, 0.99);
    r.per_s = static_cast<double>(acquired) / (static_cast<double>(to - from) / 1e9);
    r.handoffs = handoff.size();
    return r;
}

double median(std::vector<double> v) { return pct(std::move(v), 0.5); }

struct row {
    std::string backend, what;
    unsigned n;  // holders at once
    unsigned contenders;
    std::vector<figures> runs;
};

// Runs `contenders` processes of `body(i, stamps)` from `begin` until they
// return; returns their stamp files.
std::vector<std::string> run_contenders(const fs::path& dir, const std::string& tag,
                                        unsigned contenders,
                                        const std::function<void(unsigned, stamps&)>& body) {
    std::vector<std::string> files;
    std::vector<pid_t> pids;
    std::fflush(stdout);
    for (unsigned i = 0; i < contenders; ++i) {
        const std::string file = (dir / (tag + "." + std::to_string(i))).string();
        files.push_back(file);
        const pid_t pid = ::fork();
        if (pid == 0) {
            stamps s;
            body(i, s);
            s.save(file);
            std::fflush(stdout);
            ::_exit(0);
        }
        pids.push_back(pid);
    }
    for (pid_t pid : pids) {
        int st = 0;
        ::waitpid(pid, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            std::fprintf(stderr, "bench_slots: a contender of %s failed (%d)\n", tag.c_str(), st);
            std::exit(1);
        }
    }
    return files;
}

std::string fmt_us(double us) {
    char b[32];
    if (us >= 1000)
        std::snprintf(b, sizeof b, "%.2f ms", us / 1000);
    else
        std::snprintf(b, sizeof b, "%.0f us", us);
    return b;
}

}  // namespace

int main(int argc, char** argv) {
    // COMMAND of `etcdctl lock`: stamps, holds, stamps, exits.
    if (argc == 4 && std::string(argv[1]) == "--stamp") {
        stamps s;
        s.acquired();
        std::this_thread::sleep_for(std::chrono::nanoseconds(std::atoll(argv[3])));
        s.releasing();
        s.save(argv[2]);
        return 0;
    }
    double seconds = 3, hold_ms = 2;
    int runs = 1;
    std::string dir_arg = "/tmp", endpoint;
    bool with_etcd = true;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        const bool more = i + 1 < argc;
        if (a == "--seconds" && more)
            seconds = std::atof(argv[++i]);
        else if (a == "--hold-ms" && more)
            hold_ms = std::atof(argv[++i]);
        else if (a == "--runs" && more)
            runs = std::max(1, std::atoi(argv[++i]));
        else if (a == "--dir" && more)
            dir_arg = argv[++i];
        else if (a == "--etcd" && more)
            endpoint = argv[++i];
        else if (a == "--no-etcd")
            with_etcd = false;
        else {
            std::fprintf(stderr,
                         "usage: bench_slots [--seconds S] [--hold-ms H] [--runs R] [--dir DIR] "
                         "[--etcd ENDPOINT | --no-etcd]\n");
            return 2;
        }
    }
    std::string tmpl = (fs::path(dir_arg) / "filelock-bench-slots-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) {
        std::perror(("bench_slots: " + dir_arg).c_str());
        return 2;
    }
    const fs::path dir = tmpl;
    const std::string self = fs::canonical("/proc/self/exe").string();
    const long long hold_ns = static_cast<long long>(hold_ms * 1e6);
    const long long span = static_cast<long long>(seconds * 1e9);
    pid_t etcd_pid = 0;

#ifdef FILELOCK_BENCH_ETCD
    std::unique_ptr<test::etcd_cluster> member;
    if (with_etcd && endpoint.empty()) {
        member = std::make_unique<test::etcd_cluster>(1);
        endpoint = member->endpoint();
        etcd_pid = member->pid();
    }
#else
    with_etcd = false;
#endif
    ::setenv("ETCDCTL_API", "3", 1);

    const unsigned ns[] = {1, 4, 16};
    std::vector<row> rows;
    rows.push_back({"file", "blocking flock(2) (floor)", 1, 2, {}});
    for (unsigned n : ns) rows.push_back({"file", "lock(), slots = N", n, 2 * n, {}});
    if (with_etcd) {
        rows.push_back({"etcd", "etcdctl lock NAME COMMAND", 1, 2, {}});
        for (unsigned n : ns) rows.push_back({"etcd", "async_lock(), slots = N", n, 2 * n, {}});
    }

    for (int run = 0; run < runs; ++run) {
        for (std::size_t k = 0; k < rows.size(); ++k) {
            row& r = rows[k];
            const std::string tag = "r" + std::to_string(run) + "-" + std::to_string(k);
            const std::string lock = (dir / (tag + ".lock")).string();
            const std::string name = "bench/slots/" + std::to_string(::getpid()) + "/" + tag;
            // etcd sessions and etcdctl start slower: more time before the window.
            const long long lead = r.backend == "etcd" ? 500'000'000 : 200'000'000;
            const long long begin = now_ns() + lead, end = begin + span;
            std::vector<std::string> files;
            const double cpu0 = children_cpu(), etcd0 = process_cpu(etcd_pid);
            if (r.what.find("flock") != std::string::npos) {
                files = run_contenders(dir, tag, r.contenders, [&](unsigned, stamps& s) {
                    contend_flock(lock, begin, end, hold_ns, s);
                });
            } else if (r.backend == "file") {
                files = run_contenders(dir, tag, r.contenders, [&](unsigned, stamps& s) {
                    contend_file(lock, r.n, begin, end, hold_ns, s);
                });
            } else if (r.what.find("etcdctl") != std::string::npos) {
                // Each contender: etcdctl lock in a loop until the end; its
                // COMMAND appends its stamps to the contender's file.
                files = run_contenders(dir, tag, r.contenders, [&](unsigned i, stamps&) {
                    const std::string file = (dir / (tag + "." + std::to_string(i))).string();
                    sleep_until_ns(begin);
                    while (now_ns() < end) {
                        const pid_t pid = ::fork();
                        if (pid == 0) {
                            const int null = ::open("/dev/null", O_WRONLY);
                            ::dup2(null, 1);
                            const std::string ep = "--endpoints=" + endpoint;
                            const std::string hold = std::to_string(hold_ns);
                            ::execlp("etcdctl", "etcdctl", ep.c_str(), "lock", name.c_str(), "--",
                                     self.c_str(), "--stamp", file.c_str(), hold.c_str(),
                                     static_cast<char*>(nullptr));
                            ::_exit(127);
                        }
                        int st = 0;
                        ::waitpid(pid, &st, 0);
                        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) std::exit(7);
                    }
                });
            } else {
#ifdef FILELOCK_BENCH_ETCD
                files = run_contenders(dir, tag, r.contenders, [&](unsigned, stamps& s) {
                    contend_etcd(endpoint, name, r.n, begin, end, hold_ns, s);
                });
#endif
            }
            r.runs.push_back(analyse(files, begin + span / 5, end));
            r.runs.back().cpu_s = children_cpu() - cpu0;
            if (r.backend == "etcd") r.runs.back().etcd_cpu_s = process_cpu(etcd_pid) - etcd0;
            for (const auto& f : files) fs::remove(f);
            fs::remove(lock);
        }
    }

    std::printf("bench_slots: %d run(s) of %.1f s per row, hold %.1f ms, 2N contenders; %s\n", runs,
                seconds, hold_ms, with_etcd ? ("etcd " + endpoint).c_str() : "etcd not measured");
    std::printf("(handoff: a holder's release to a waiter holding; %s)\n\n",
                runs > 1 ? "each figure the median of the runs'" : "one run");
    std::printf(
        "| backend | lock | N | contenders | handoff p50 | handoff p99 | acquisitions/s | "
        "vs N = 1 | CPU s: contenders / etcd |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    double base = 0;
    for (const row& r : rows) {
        std::vector<double> p50, p99, rate, cpu, etcd_cpu;
        std::size_t handoffs = 0;
        for (const auto& f : r.runs) {
            p50.push_back(f.p50_us);
            p99.push_back(f.p99_us);
            rate.push_back(f.per_s);
            cpu.push_back(f.cpu_s);
            etcd_cpu.push_back(f.etcd_cpu_s);
            handoffs += f.handoffs;
        }
        const double per_s = median(rate);
        const bool ours = r.what.find("slots") != std::string::npos;
        if (ours && r.n == 1) base = per_s;
        char ratio[32] = "";
        if (ours && base > 0) std::snprintf(ratio, sizeof ratio, "%.2fx", per_s / base);
        char cpus[48];
        if (r.backend == "etcd" && etcd_pid > 0)
            std::snprintf(cpus, sizeof cpus, "%.2f / %.2f", median(cpu), median(etcd_cpu));
        else
            std::snprintf(cpus, sizeof cpus, "%.2f", median(cpu));
        std::printf("| %s | %s | %u | %u | %s | %s | %.0f | %s | %s |\n", r.backend.c_str(),
                    r.what.c_str(), r.n, r.contenders, fmt_us(median(p50)).c_str(),
                    fmt_us(median(p99)).c_str(), per_s, ratio, cpus);
        if (handoffs == 0) std::fprintf(stderr, "bench_slots: no handoff in %s\n", r.what.c_str());
    }
    std::error_code ec;
    fs::remove_all(dir, ec);
    return 0;
}
