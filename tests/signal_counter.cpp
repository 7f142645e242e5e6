// SPDX-License-Identifier: MIT
// A COMMAND for filelock-run's signal tests: prints "up", waits up to 30 s
// for a first delivery of SIGTERM (or of the signal ARGV[2] names: TERM,
// INT, HUP), counts the deliveries until ARGV[1] milliseconds after that
// first one (each delivery runs the handler once; two sends coalesce only
// while one is still pending) and prints the count. The window starts at the
// first delivery, not at "up": a test delayed under load still sees a second
// delivery that follows the first.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

namespace {
volatile std::sig_atomic_t deliveries = 0;
void on_term(int) { deliveries = deliveries + 1; }
}  // namespace

int main(int argc, char** argv) {
    struct sigaction sa {};
    sa.sa_handler = on_term;
    sigemptyset(&sa.sa_mask);
    int sig = SIGTERM;
    if (argc > 2 && std::strcmp(argv[2], "INT") == 0) sig = SIGINT;
    if (argc > 2 && std::strcmp(argv[2], "HUP") == 0) sig = SIGHUP;
    sigaction(sig, &sa, nullptr);
    std::printf("up\n");
    std::fflush(stdout);
    const long ms = argc > 1 ? std::atol(argv[1]) : 1000;
    for (int tick = 0; deliveries == 0 && tick < 3000; ++tick) {
        timespec ten_ms{0, 10000000L};
        nanosleep(&ten_ms, nullptr);  // an interrupted sleep: looked at again
    }
    timespec left{ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&left, &left) != 0) {
    }
    std::printf("%d\n", static_cast<int>(deliveries));
    return 0;
}
