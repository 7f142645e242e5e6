// SPDX-License-Identifier: MIT
// filelock-run on Windows: the same command line (cli.hpp), the lock taken
// through the library (LockFileEx on byte 0), COMMAND run with
// CreateProcessW and waited for; its exit code is ours.
//
// What differs from the POSIX tool, because Windows has no fork() and ties
// a lock to the process that took it: COMMAND does not inherit the lock's
// handle (the lock is held by filelock-run until COMMAND exits, as with -o),
// and COMMAND runs in a job killed with filelock-run, so that it never runs
// unlocked; -F and the file descriptor form (and -u) are usage errors; a
// directory cannot be locked.
#include <filelock/lock_file.hpp>

#include "../cli.hpp"
#include "../status.hpp"
#include "../../src/win32/sys.hpp"
#include "command_line.hpp"

#include <shellapi.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

using namespace cli;

std::wstring widen(const std::string& s) {
    if (s.empty()) return {};
    const int n =
        ::MultiByteToWideChar(CP_UTF8, 0, s.data(), static_cast<int>(s.size()), nullptr, 0);
    std::wstring out(static_cast<std::size_t>(n > 0 ? n : 0), L'\0');
    if (n > 0)
        ::MultiByteToWideChar(CP_UTF8, 0, s.data(), static_cast<int>(s.size()), out.data(), n);
    return out;
}

// The exit status for a lock file that could not be opened or locked.
int open_failure_status(std::error_code ec) {
    if (ec == std::errc::not_enough_memory || ec == std::errc::too_many_files_open) return ex_oserr;
    if (ec == std::errc::read_only_file_system || ec == std::errc::no_space_on_device)
        return ex_cantcreat;
    return ex_noinput;
}

int run(const command_line& cl, const std::vector<std::string>& utf8_args) {
    std::wstring line;
    if (cl.shell_command) {
        const wchar_t* comspec = ::_wgetenv(L"COMSPEC");
        append_argument(line, comspec && *comspec ? comspec : L"cmd.exe");
        // /s: everything after /c is the command, its outer quotes removed.
        line += L" /d /s /c \"" + widen(cl.shell_command) + L"\"";
    } else {
        for (const auto& a : utf8_args) append_argument(line, widen(a));
    }
    if (cl.verbose) {
        std::printf("%s: executing %ls\n", program_name(), line.c_str());
        std::fflush(stdout);
    }
    // Windows releases a lock when the process that took it ends, whatever
    // handles others have: COMMAND must never outlive filelock-run, or it
    // would run unlocked. It runs in a job that is killed when the job's
    // last handle (ours, never inherited) closes, however we end.
    const HANDLE job = ::CreateJobObjectW(nullptr, nullptr);
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION limits{};
    limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
    if (!job || !::SetInformationJobObject(job, JobObjectExtendedLimitInformation, &limits,
                                           sizeof limits)) {
        warn("cannot create a job for COMMAND: " +
             filelock::detail::win32_error(::GetLastError()).message());
        return ex_oserr;
    }
    STARTUPINFOW si{};
    si.cb = sizeof si;
    PROCESS_INFORMATION pi{};
    // Nothing inherited: COMMAND never holds the lock's handle. Suspended
    // until it is in the job.
    if (!::CreateProcessW(nullptr, line.data(), nullptr, nullptr, FALSE, CREATE_SUSPENDED, nullptr,
                          nullptr, &si, &pi)) {
        const DWORD err = ::GetLastError();
        warn(std::string("failed to execute ") + (cl.shell_command ? "cmd.exe" : cl.command[0]) +
             ": " + filelock::detail::win32_error(err).message());
        return err == ERROR_NOT_ENOUGH_MEMORY ? ex_oserr : ex_unavailable;
    }
    if (!::AssignProcessToJobObject(job, pi.hProcess)) {
        warn("cannot put COMMAND in its job: " +
             filelock::detail::win32_error(::GetLastError()).message());
        ::TerminateProcess(pi.hProcess, ex_oserr);
        return ex_oserr;
    }
    ::ResumeThread(pi.hThread);
    ::CloseHandle(pi.hThread);
    // Ctrl+C reaches COMMAND through the console; we wait for its outcome.
    ::SetConsoleCtrlHandler(nullptr, TRUE);
    ::WaitForSingleObject(pi.hProcess, INFINITE);
    DWORD code = 0;
    if (!::GetExitCodeProcess(pi.hProcess, &code)) code = ex_oserr;
    ::CloseHandle(pi.hProcess);
    return static_cast<int>(code);
}

}  // namespace

int main() {
    using namespace std::chrono;
    // Arguments in UTF-8 whatever the code page: a non-ASCII path works.
    int wargc = 0;
    wchar_t** wargv = ::CommandLineToArgvW(::GetCommandLineW(), &wargc);
    std::vector<std::string> args;
    for (int i = 0; i < wargc; ++i)
        args.push_back(filelock::detail::narrow(wargv[i], std::wcslen(wargv[i])));
    ::LocalFree(wargv);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);

    if (!args.empty()) set_program_name(args[0].c_str());
    command_line cl;
    if (auto status = parse(static_cast<int>(args.size()), argv.data(), cl)) return *status;
    if (cl.status || cl.json) return cli::status_form(cl);
    if (cl.fd >= 0 || !cl.target)
        usage_error("the file descriptor forms need POSIX descriptors (not on Windows)");
    const std::string target = cl.target;
    if (target.rfind("etcd://", 0) == 0)
        usage_error("this filelock-run was built without etcd support");
    if (cl.etcd_option) usage_error("etcd options apply to an etcd:// target");
    if (!cl.has_command())
        usage_error("the file descriptor form needs POSIX descriptors (not on Windows)");
    if (cl.unlock) usage_error("--unlock applies to a file descriptor");
    if (cl.fcntl) usage_error("--fcntl, --start and --length need OFD locks (Linux)");
    if (cl.no_fork) usage_error("--no-fork needs exec() (not on Windows)");
    if (cl.slots != 1) {  // N holders of a lock file: a slot each, nothing written
        if (cl.options.mode == filelock::lock_mode::shared)
            usage_error("--slots and --shared exclude each other (a shared lock takes no slot)");
        cl.options.slots = static_cast<unsigned>(cl.slots);
    }

    const std::filesystem::path path(std::u8string(target.begin(), target.end()));
    const auto started = steady_clock::now();
    std::error_code ec;
    filelock::lock_file held = filelock::lock(path, cl.timeout, cl.options, ec);
    if (ec == filelock::errc::symlink_not_followed) {
        // Content is never written through a symbolic link; flock(1) would
        // lock it, so lock it without content.
        cl.options.write_content = false;
        held = filelock::lock(path, cl.timeout, cl.options, ec);
    }
    if (ec == filelock::errc::timeout)
        return report_conflict(cl, printable(filelock::read_holder(path)));
    if (ec == filelock::errc::invalid_template)
        usage_error("invalid --content template '" + cl.content_arg + "'");
    if (ec) {
        warn(std::string("cannot open lock file ") + cl.target + ": " + ec.message());
        return open_failure_status(ec);
    }
    report_took(cl, started);
    const std::vector<std::string> command(cl.command.begin(), cl.command.end());
    return run(cl, command);
}
