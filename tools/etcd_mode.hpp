// SPDX-License-Identifier: MIT
#pragma once

#include <filelock/etcd.hpp>

#include <chrono>
#include <csignal>
#include <string>

namespace cli {
struct command_line;
}

namespace etcd_mode {

struct options {
    std::chrono::nanoseconds timeout{};
    bool nonblock = false;
    bool verbose = false;
    bool simple = false;
    int conflict_code = 1;
    int lost_signal = SIGTERM;
    std::chrono::seconds ttl{0};  // 0: the default (10 s)
    bool shared = false;          // -s: a reader (Go's RWMutex)
    unsigned slots = 1;           // --slots N
    std::string content, cacert, cert, key, user;
};

/// Whether the lock target is etcd://...
bool is_target(const char* target);
/// etcd://host:port[,host:port]/NAME and the options: the client's
/// configuration and the lock's name; a usage error exits.
filelock::etcd::config configuration(const options& o, const char* target, std::string& name);

/// --status [--json] etcd://...: who holds the lock and who waits
/// (etcd_status.cpp). Returns 0 when it is free, `conflict_code` when held,
/// 69 when etcd cannot be read.
int status(const options& o, const char* target, bool json);

/// --watch [--json] etcd://...: the state, then a line per change, until a
/// signal ends the process; 69 when etcd cannot be read or watched.
int watch(const options& o, const char* target, bool json);

/// Runs `argv` (COMMAND) while holding the etcd lock `target`; returns the
/// exit status. `cl`: the command line, for the messages flock(1) prints.
int run(const options& o, const cli::command_line& cl, const char* target, char** argv);

}  // namespace etcd_mode
