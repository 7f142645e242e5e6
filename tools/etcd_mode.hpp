// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <csignal>
#include <string>

namespace etcd_mode {

struct options {
    std::chrono::nanoseconds timeout{};
    bool nonblock = false;
    bool verbose = false;
    bool simple = false;
    int conflict_code = 1;
    int lost_signal = SIGTERM;
    std::chrono::seconds ttl{0};  // 0: the default (10 s)
    std::string content, cacert, cert, key, user;
};

/// Whether the lock target is etcd://...
bool is_target(const char* target);
/// Runs `argv` (COMMAND) while holding the etcd lock `target`; returns the
/// exit status.
int run(const options& o, const char* target, char** argv);

}  // namespace etcd_mode
