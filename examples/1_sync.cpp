// SPDX-License-Identifier: MIT
// Two processes contend for one lock file: the second times out while the
// first holds it, then wins once it is released.
//
//   1_sync [LOCKFILE]      (default: /tmp/filelock-demo.lock)

#include <filelock/lock_file.hpp>

#include <chrono>
#include <cstdio>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

using namespace std::chrono_literals;

int main(int argc, char** argv) {
    const char* path = argc > 1 ? argv[1] : "/tmp/filelock-demo.lock";
    std::setvbuf(stdout, nullptr, _IOLBF, 0);  // keep both processes' lines in order
    try {
        auto held = filelock::lock_file(path);  // one attempt, zc.lockfile-style
        std::printf("[%d] holds %s\n", ::getpid(), path);

        std::fflush(stdout);  // or the child would print it again
        const pid_t child = ::fork();
        if (child == 0) {
            // The child inherited the parent's lock: a copy made by fork() is
            // released by closing it (the parent still holds the lock).
            held.close();
            try {
                filelock::lock(path, 300ms);
            } catch (const filelock::timeout_error& e) {
                std::printf("[%d] %s (holder: pid %s)\n", ::getpid(), e.what(), e.holder().c_str());
            }
            auto mine = filelock::lock(path, 10s);  // waits for the release
            std::printf("[%d] got the lock after the release\n", ::getpid());
            return 0;
        }
        std::this_thread::sleep_for(600ms);
        std::printf("[%d] releasing\n", ::getpid());
        held.close();
        int status = 0;
        ::waitpid(child, &status, 0);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
    } catch (const filelock::lock_error& e) {
        std::fprintf(stderr, "%s: held by %s\n", e.what(), e.holder().c_str());
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
    }
    return 1;
}
