// SPDX-License-Identifier: MIT
// main() of the test programs that have no main of their own: Catch's
// implementation is compiled once per build, in catch_runner.cpp.

int run_catch(int argc, char** argv);

int main(int argc, char** argv) { return run_catch(argc, argv); }
