// SPDX-License-Identifier: MIT
// Catch's implementation without its main(), compiled once per build: for
// test programs with their own main (test_portable.cpp, which is also its
// own helper process) and, with catch_main.cpp, for all the others.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

/// Runs the tests of the program, as Catch's main() would.
int run_catch(int argc, char** argv) { return Catch::Session().run(argc, argv); }
