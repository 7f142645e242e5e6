// SPDX-License-Identifier: MIT
#pragma once

// A real etcd member for the tests: started on free loopback ports with a
// temporary data dir, stopped by pid. FILELOCK_ETCD names the binary
// (default /usr/bin/etcd). No mock: the acceptance tests run against etcd.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <signal.h>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace test {

/// A port that was free a moment ago (bound to 0, then closed).
inline int free_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
        throw std::runtime_error("bind");
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    ::close(fd);
    return ntohs(a.sin_port);
}

inline bool port_open(int port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<unsigned short>(port));
    const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(fd);
    return ok;
}

/// Runs a shell command; returns its stdout (and the exit status).
inline std::string sh(const std::string& cmd, int* status = nullptr) {
    std::string out;
    FILE* p = ::popen(cmd.c_str(), "r");
    if (!p) throw std::runtime_error("popen");
    std::array<char, 4096> buf;
    std::size_t n;
    while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
    const int st = ::pclose(p);
    if (status) *status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return out;
}

class etcd_cluster {
public:
    /// `n` members on loopback, named m0..m{n-1}; with a certificate and
    /// key, clients speak https (etcdctl verifies against `ca`).
    /// `extra`: more flags for every member (e.g. "--auth-token-ttl=1").
    explicit etcd_cluster(int n = 1, std::string cert = {}, std::string key = {},
                          std::string ca = {}, std::vector<std::string> extra = {})
        : cert_(std::move(cert)),
          key_(std::move(key)),
          ca_(std::move(ca)),
          extra_(std::move(extra)) {
        const char* bin = std::getenv("FILELOCK_ETCD");
        bin_ = bin && *bin ? bin : "/usr/bin/etcd";
        char tmpl[] = "/tmp/filelock-etcd-XXXXXX";
        if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp");
        dir_ = tmpl;
        std::string initial;
        for (int i = 0; i < n; ++i) {
            member m;
            m.name = "m" + std::to_string(i);
            m.client = free_port();
            m.peer = free_port();
            members_.push_back(m);
            initial += (i ? "," : "") + m.name + "=http://127.0.0.1:" + std::to_string(m.peer);
        }
        for (auto& m : members_) start(m, initial);
        wait_ready();
    }
    ~etcd_cluster() {
        for (auto& m : members_) stop(m);
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }
    etcd_cluster(const etcd_cluster&) = delete;
    etcd_cluster& operator=(const etcd_cluster&) = delete;

    std::string endpoint(int i = 0) const {
        return scheme() + "://127.0.0.1:" + std::to_string(members_.at(i).client);
    }
    std::vector<std::string> endpoints() const {
        std::vector<std::string> v;
        for (std::size_t i = 0; i < members_.size(); ++i)
            v.push_back(endpoint(static_cast<int>(i)));
        return v;
    }
    std::string endpoint_list() const {
        std::string s;
        for (auto& e : endpoints()) s += (s.empty() ? "" : ",") + e;
        return s;
    }
    pid_t pid(int i = 0) const { return members_.at(i).pid; }
    void signal(int i, int sig) const { ::kill(members_.at(i).pid, sig); }
    void kill_member(int i) { stop(members_.at(i)); }

    /// etcdctl against this cluster.
    std::string ctl(const std::string& args, int* status = nullptr) const {
        return sh("ETCDCTL_API=3 etcdctl --endpoints=" + endpoint_list() +
                      (ca_.empty() ? "" : " --cacert=" + ca_) + " --dial-timeout=2s " + args +
                      " 2>&1",
                  status);
    }
    /// The keys under `prefix` (etcdctl get --prefix --keys-only).
    std::vector<std::string> keys(const std::string& prefix) const {
        std::vector<std::string> v;
        const auto out = ctl("get --prefix --keys-only '" + prefix + "'");
        std::size_t pos = 0;
        while (pos < out.size()) {
            auto nl = out.find('\n', pos);
            if (nl == std::string::npos) nl = out.size();
            if (nl > pos) v.push_back(out.substr(pos, nl - pos));
            pos = nl + 1;
        }
        return v;
    }

private:
    struct member {
        std::string name;
        int client = 0, peer = 0;
        pid_t pid = -1;
    };

    void start(member& m, const std::string& initial) {
        const std::string client = scheme() + "://127.0.0.1:" + std::to_string(m.client);
        const std::string peer = "http://127.0.0.1:" + std::to_string(m.peer);
        const std::string data = dir_ + "/" + m.name;
        const std::string log = dir_ + "/" + m.name + ".log";
        std::vector<std::string> args = {bin_,    "--name",
                                         m.name,  "--data-dir",
                                         data,    "--listen-client-urls",
                                         client,  "--advertise-client-urls",
                                         client,  "--listen-peer-urls",
                                         peer,    "--initial-advertise-peer-urls",
                                         peer,    "--initial-cluster",
                                         initial, "--initial-cluster-state",
                                         "new",   "--heartbeat-interval",
                                         "10",    "--election-timeout",
                                         "100"};
        if (!cert_.empty()) args.insert(args.end(), {"--cert-file", cert_, "--key-file", key_});
        args.insert(args.end(), extra_.begin(), extra_.end());
        const pid_t pid = ::fork();
        if (pid < 0) throw std::runtime_error("fork");
        if (pid == 0) {
            ::setpgid(0, 0);
            // A test that dies (an abort, a sanitizer) takes its members along.
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            std::freopen(log.c_str(), "w", stdout);
            std::freopen(log.c_str(), "a", stderr);
            std::vector<char*> argv;
            for (auto& a : args) argv.push_back(a.data());
            argv.push_back(nullptr);
            ::execv(argv[0], argv.data());
            ::_exit(127);
        }
        m.pid = pid;
    }

    void stop(member& m) {
        if (m.pid <= 0) return;
        ::kill(m.pid, SIGCONT);
        ::kill(m.pid, SIGKILL);
        int st = 0;
        ::waitpid(m.pid, &st, 0);
        m.pid = -1;
    }

    void wait_ready() {
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
        for (;;) {
            int st = 1;
            bool all = true;
            for (auto& m : members_) all = all && port_open(m.client);
            if (all) {
                ctl("endpoint health", &st);
                if (st == 0) return;
            }
            if (std::chrono::steady_clock::now() > until)
                throw std::runtime_error("etcd did not start (" + dir_ + ")");
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
    }

    std::string scheme() const { return cert_.empty() ? "http" : "https"; }

    std::string cert_, key_, ca_;
    std::vector<std::string> extra_;
    std::string bin_, dir_;
    std::vector<member> members_;
};

}  // namespace test
