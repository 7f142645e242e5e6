// SPDX-License-Identifier: MIT
// filelock-run-etcd: filelock-run's etcd:// targets. filelock-run executes
// it with its own command line for such a target (installed in
// LIBEXECDIR/filelock/), so that a lock file's run loads nothing of etcd,
// curl or TLS. Its messages carry the name filelock-run was invoked by.

#include "cli.hpp"
#include "etcd_mode.hpp"
#include "posix_run.hpp"

#include <chrono>
#include <csignal>
#include <string>
#include <utility>

namespace {

using namespace cli;

// --lost-signal's name or number (default TERM).
int signal_number(const std::string& v) {
    if (v.empty()) return SIGTERM;
    for (auto [n, sig] : {std::pair{"TERM", SIGTERM},
                          {"INT", SIGINT},
                          {"HUP", SIGHUP},
                          {"KILL", SIGKILL},
                          {"QUIT", SIGQUIT},
                          {"USR1", SIGUSR1},
                          {"USR2", SIGUSR2}})
        if (v == n || v == std::string("SIG") + n) return sig;
    int sig = 0;
    if (!parse_int(v.c_str(), 1, 64, sig)) usage_error("invalid --lost-signal: '" + v + "'");
    return sig;
}

}  // namespace

int main(int argc, char** argv) {
    set_program_name(argv[0]);
    command_line cl;
    if (auto status = parse(argc, argv, cl)) return *status;
    if (!cl.target || !etcd_mode::is_target(cl.target))
        usage_error("filelock-run-etcd runs etcd:// targets (filelock-run executes it)");
    if (cl.status || cl.json || cl.watch) {
        if (!cl.status && !cl.watch) usage_error("--json goes with --status or --watch");
        if (cl.has_command())
            usage_error(std::string(cl.watch ? "--watch" : "--status") +
                        " takes a lock and no command");
        etcd_mode::options eo;
        eo.conflict_code = cl.conflict_code;
        eo.cacert = cl.etcd_cacert;
        eo.cert = cl.etcd_cert;
        eo.key = cl.etcd_key;
        eo.user = cl.etcd_user;
        return cl.watch ? etcd_mode::watch(eo, cl.target, cl.json)
                        : etcd_mode::status(eo, cl.target, cl.json);
    }
    std::vector<char*> command = posix_run::command_argv(cl);
    if (command.empty()) usage_error("an etcd lock needs a command to run");
    if (cl.options.mode == filelock::lock_mode::shared && cl.slots > 1)
        usage_error("--shared takes no slot (no --slots with it)");
    if (cl.unlock) usage_error("--unlock applies to a file or a file descriptor");
    if (cl.no_fork) usage_error("--no-fork cannot keep an etcd lease alive");
    if (cl.close_fd)
        usage_error(
            "--close applies to a lock file (an etcd lock is no descriptor COMMAND "
            "could inherit: filelock-run alone holds it)");
    if (cl.fcntl) usage_error("--fcntl, --start and --length apply to a file");
    etcd_mode::options eo;
    eo.timeout = cl.timeout;
    eo.nonblock = cl.nonblock;
    eo.verbose = cl.verbose;
    eo.simple = cl.simple;
    eo.conflict_code = cl.conflict_code;
    eo.lost_signal = signal_number(cl.lost_signal);
    eo.ttl = std::chrono::seconds(cl.etcd_ttl);
    eo.content = cl.have_content ? cl.content_arg : std::string();
    eo.cacert = cl.etcd_cacert;
    eo.cert = cl.etcd_cert;
    eo.key = cl.etcd_key;
    eo.user = cl.etcd_user;
    eo.shared = cl.options.mode == filelock::lock_mode::shared;
    eo.slots = static_cast<unsigned>(cl.slots);
    return etcd_mode::run(eo, cl, cl.target, command.data());
}
