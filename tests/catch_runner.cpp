// SPDX-License-Identifier: MIT
// Catch2's implementation without its main(), for test programs with their
// own (test_portable.cpp, which is also its own helper process).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

/// Runs the tests of the program, as Catch's main() would.
int run_catch(int argc, char** argv) { return Catch::Session().run(argc, argv); }
