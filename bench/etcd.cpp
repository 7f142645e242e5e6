// SPDX-License-Identifier: MIT
// etcd locks: figures, side by side in one run (not a test).
//
//   bench_etcd ENDPOINT [ROUNDS]     e.g. bench_etcd http://127.0.0.1:2379 30
//
// 1. Handoff: a holder (this process) releases; a waiter already waiting in
//    another process gets the lock. From the release call to the waiter's
//    acquisition (CLOCK_MONOTONIC is one clock for all processes), for three
//    waiters: this library (another process), `etcdctl lock NAME` (the Go
//    client, the time it prints the key), and etcd's own `/v3/lock/lock`
//    endpoint (a blocking HTTP request).
// 2. Uncontended acquire + release once the session exists: requests sent
//    and the median time.
// 3. 1,000 waiters in one process on one name: keys under the name and watch
//    streams opened, while they wait and over the whole run.
#include <filelock/etcd_asio.hpp>

#include <curl/curl.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <optional>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace std::chrono_literals;
namespace etcd = filelock::etcd;
using steady = std::chrono::steady_clock;

namespace {

long long now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(steady::now().time_since_epoch())
        .count();
}

double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}
double pct(std::vector<double> v, double p) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())))];
}

std::string b64(const std::string& in) {
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    unsigned v = 0;
    int bits = 0;
    for (unsigned char c : in) {
        v = (v << 8) | c;
        bits += 8;
        while (bits >= 6) out += t[(v >> (bits -= 6)) & 63];
    }
    if (bits) out += t[(v << (6 - bits)) & 63];
    while (out.size() % 4) out += '=';
    return out;
}

// A blocking POST (the /v3/lock/lock waiter runs in its own process).
std::string post(const std::string& url, const std::string& body) {
    CURL* e = curl_easy_init();
    std::string out;
    curl_easy_setopt(e, CURLOPT_URL, url.c_str());
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(
        e, CURLOPT_WRITEFUNCTION, +[](char* p, std::size_t, std::size_t n, void* s) {
            static_cast<std::string*>(s)->append(p, n);
            return n;
        });
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &out);
    curl_easy_perform(e);
    curl_easy_cleanup(e);
    return out;
}

// Waiter processes: each prints the monotonic time it got the lock.
int waiter_filelock(const std::string& endpoint, const std::string& name) {
    etcd::config c;
    c.endpoints = {endpoint};
    asio::io_context io;
    std::optional<etcd::client> cl(std::in_place, io.get_executor(), c);
    cl->async_lock(name, 60s, [&](std::error_code ec, etcd::lock l) {
        std::printf("%lld\n", ec ? -1LL : now_ns());
        std::fflush(stdout);
        // Released, then the session closes (its keep-alives end the run).
        l.release([&](std::error_code) { cl.reset(); });
    });
    io.run();
    return 0;
}

int waiter_v3lock(const std::string& endpoint, const std::string& name) {
    const auto grant = post(endpoint + "/v3/lease/grant", R"({"TTL":"10"})");
    const auto id_at = grant.find("\"ID\":\"");
    if (id_at == std::string::npos) return 1;
    const auto id = grant.substr(id_at + 6, grant.find('"', id_at + 6) - id_at - 6);
    const auto r = post(endpoint + "/v3/lock/lock",
                        R"({"name":")" + b64(name) + R"(","lease":")" + id + "\"}");
    std::printf("%lld\n", r.find("\"key\"") != std::string::npos ? now_ns() : -1LL);
    std::fflush(stdout);
    post(endpoint + "/v3/lease/revoke", R"({"ID":")" + id + "\"}");
    return 0;
}

// Spawns `argv` with its stdout on a pipe; returns the read end.
pid_t spawn(std::vector<std::string> args, int& out) {
    int p[2];
    if (::pipe(p) != 0) return -1;
    const pid_t pid = ::fork();
    if (pid == 0) {
        ::dup2(p[1], 1);
        ::close(p[0]);
        ::close(p[1]);
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        ::execvp(argv[0], argv.data());
        ::_exit(127);
    }
    ::close(p[1]);
    out = p[0];
    return pid;
}

std::string read_line(int fd) {
    std::string s;
    char c;
    while (::read(fd, &c, 1) == 1 && c != '\n') s += c;
    return s;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc >= 4 && std::string(argv[1]) == "--wait-filelock")
        return waiter_filelock(argv[2], argv[3]);
    if (argc >= 4 && std::string(argv[1]) == "--wait-v3lock")
        return waiter_v3lock(argv[2], argv[3]);
    if (argc < 2) {
        std::fprintf(stderr, "usage: bench_etcd ENDPOINT [ROUNDS]\n");
        return 2;
    }
    const std::string endpoint = argv[1];
    const int rounds = argc > 2 ? std::atoi(argv[2]) : 30;
    curl_global_init(CURL_GLOBAL_DEFAULT);

    etcd::config cfg;
    cfg.endpoints = {endpoint};
    // The holder's session runs on its own thread: its release goes out
    // while this thread waits for the waiter.
    etcd::sync_client holder(cfg);
    const auto lock_now = [&](const std::string& name) { return holder.lock(name, 10s); };
    const auto release_now = [&](etcd::lock& l) {
        std::promise<void> done;
        l.release([&](std::error_code) { done.set_value(); });
        done.get_future().wait();
    };

    // 1. Handoff.
    struct waiter_kind {
        const char* label;
        std::vector<std::string> (*args)(const std::string&, const std::string&, const char*);
    };
    const waiter_kind kinds[] = {
        {"filelock (C++, JSON gateway)",
         [](const std::string& ep, const std::string& n, const char* self) {
             return std::vector<std::string>{self, "--wait-filelock", ep, n};
         }},
        {"etcdctl lock (Go client, gRPC)",
         [](const std::string& ep, const std::string& n, const char*) {
             return std::vector<std::string>{"etcdctl", "--endpoints=" + ep, "lock", n};
         }},
        {"etcd /v3/lock/lock (server side)",
         [](const std::string& ep, const std::string& n, const char* self) {
             return std::vector<std::string>{self, "--wait-v3lock", ep, n};
         }},
    };
    std::vector<std::vector<double>> handoff(std::size(kinds));
    ::setenv("ETCDCTL_API", "3", 1);
    for (int r = 0; r < rounds; ++r) {
        for (std::size_t k = 0; k < std::size(kinds); ++k) {
            const std::string name = "bench/handoff/" + std::to_string(::getpid()) + "/" +
                                     std::to_string(r) + "-" + std::to_string(k);
            auto held = lock_now(name);
            int out = -1;
            const pid_t pid = spawn(kinds[k].args(endpoint, name, argv[0]), out);
            // The waiter starts, gets its session and waits.
            std::this_thread::sleep_for(300ms);
            const long long t0 = now_ns();
            held.release();
            const std::string line = read_line(out);
            if (k == 1) ::kill(pid, SIGTERM);  // etcdctl lock without a command holds on
            ::close(out);
            ::waitpid(pid, nullptr, 0);
            long long t1 = -1;
            if (line.find('/') != std::string::npos)  // etcdctl prints the key when it holds
                t1 = now_ns();
            else if (!line.empty())
                t1 = std::atoll(line.c_str());
            // etcdctl's line is timed when read: its own clock is not exposed.
            if (t1 > 0) handoff[k].push_back(static_cast<double>(t1 - t0) / 1e6);
        }
    }
    std::printf("etcd lock handoff between two processes through %s, %d rounds\n", endpoint.c_str(),
                rounds);
    std::printf("(from the holder's release call to the waiter holding)\n\n");
    std::printf("| waiter | p50 ms | p90 ms | ratio to filelock |\n|---|---:|---:|---:|\n");
    for (std::size_t k = 0; k < std::size(kinds); ++k)
        std::printf("| %s | %.2f | %.2f | %.2fx |\n", kinds[k].label, median(handoff[k]),
                    pct(handoff[k], 0.9), median(handoff[k]) / median(handoff[0]));

    // 2. Uncontended acquire + release, the session existing.
    {
        auto warm = lock_now("bench/warm");
        release_now(warm);
        asio::io_context io;
        etcd::client c(io.get_executor(), cfg);
        const auto run_lock = [&] {
            std::optional<etcd::lock> l;
            c.async_lock("bench/uncontended", 10s,
                         [&](std::error_code, etcd::lock x) { l = std::move(x); });
            while (!l) io.run_one();
            bool done = false;
            l->release([&](std::error_code) { done = true; });
            while (!done) io.run_one();
        };
        run_lock();  // the session
        std::vector<double> t;
        const auto before = c.requests();
        for (int i = 0; i < rounds * 10; ++i) {
            const auto a = steady::now();
            run_lock();
            t.push_back(std::chrono::duration<double, std::milli>(steady::now() - a).count());
        }
        std::printf(
            "\nuncontended acquire + release: %.2f requests each (txn, delete), p50 %.2f ms\n",
            static_cast<double>(c.requests() - before) / (rounds * 10), median(t));
    }

    // 3. 1,000 waiters in one process on one name.
    {
        const std::string name = "bench/waiters/" + std::to_string(::getpid());
        auto held = lock_now(name);
        asio::io_context io;
        etcd::client many(io.get_executor(), cfg);
        constexpr int n = 1000;
        int done = 0;
        std::vector<etcd::lock> got;
        for (int i = 0; i < n; ++i)
            many.async_lock(name, 120s, [&](std::error_code ec, etcd::lock l) {
                ++done;
                if (!ec) l.release();
            });
        for (int i = 0; i < 100; ++i) io.run_for(5ms);
        int st = 0;
        FILE* p = ::popen(("etcdctl --endpoints=" + endpoint + " get --prefix --keys-only " + name +
                           "/ | grep -c .")
                              .c_str(),
                          "r");
        int keys = 0;
        if (p) {
            if (std::fscanf(p, "%d", &keys) != 1) keys = -1;
            st = ::pclose(p);
        }
        (void)st;
        const auto watches_waiting = many.watches();
        const auto requests_waiting = many.requests();
        const auto a = steady::now();
        held.release();
        while (done < n) io.run_for(10ms);
        const double all = std::chrono::duration<double>(steady::now() - a).count();
        std::printf(
            "\n%d waiters in one process on one name: %d keys under the name while they "
            "wait (the holder's and the queue head's), %llu watch stream(s) and %llu "
            "requests opened by the waiters' client before the release; all %d held in "
            "turn in %.2f s (%llu watch streams, %llu requests in all)\n",
            n, keys, static_cast<unsigned long long>(watches_waiting),
            static_cast<unsigned long long>(requests_waiting), n, all,
            static_cast<unsigned long long>(many.watches()),
            static_cast<unsigned long long>(many.requests()));
    }
    return 0;
}
