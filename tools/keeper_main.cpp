// SPDX-License-Identifier: MIT
// filelock-keeper: the keeper of an etcd lock's COMMAND (keeper.hpp). The
// child of filelock-run-etcd that forked COMMAND executes it (installed
// next to filelock-run-etcd): a program of its own name and command line,
// which what kills filelock-run by its name (pkill -f filelock-run, killall
// filelock-run) does not reach, and small (the OOM killer picks by size).
//
// filelock-keeper LIFE REPORT COMMAND_PID DEADLINE: the pipes' descriptors,
// COMMAND (its child already) and the first deadline (keeper::now()'s clock).
#include "keeper.hpp"

#include <cerrno>
#include <cstdio>
#include <cstdlib>

namespace {

bool number(const char* s, long long& v) {
    char* end = nullptr;
    errno = 0;
    v = std::strtoll(s, &end, 10);
    return errno == 0 && end != s && *end == '\0';
}

}  // namespace

int main(int argc, char** argv) {
    long long life = -1, report = -1, command = -1, deadline = 0;
    if (argc != 5 || !number(argv[1], life) || !number(argv[2], report) ||
        !number(argv[3], command) || !number(argv[4], deadline) || life < 0 || report < 0 ||
        command <= 0) {
        std::fprintf(stderr, "filelock-keeper: filelock-run executes it (etcd:// targets)\n");
        return 64;
    }
    keeper::run(static_cast<int>(life), static_cast<int>(report), static_cast<pid_t>(command),
                deadline);
}
