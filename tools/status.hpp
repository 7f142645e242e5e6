// SPDX-License-Identifier: MIT
#pragma once

// filelock-run --status [--json] and --watch [--json]: how a lock's holders
// and waiters are printed (status.cpp), whatever the target. A lock file's
// state becomes a status_view (view_of); an etcd lock's can become one too,
// and then prints the same way: the table, the JSON object, --watch's lines.
//
// --watch's lines (one per line, flushed as they come):
//   human:  TIME STATE-OR-EVENT ...
//     2026-12-06T10:41:07.120Z /tmp/app.lock: held by 1234; waiting: 1250 1260
//     2026-12-06T10:41:08.002Z joined waiter 1270 (flock exclusive, queued #3)
//     2026-12-06T10:41:09.530Z released holder 1234 (flock exclusive)
//     2026-12-06T10:41:09.531Z acquired holder 1250 (flock exclusive)
//     2026-12-06T10:41:10.000Z left waiter 1260 (flock exclusive, queued #2)
//   --json: one object a line, "time" and "event" first:
//     {"time":"...","event":"state",<the rest of --status --json's object>}
//     {"time":"...","event":"joined","role":"waiter","party":{...}}
//   The events: "acquired" (a holder appeared), "released" (a holder went),
//   "joined" (a waiter appeared), "left" (a waiter went without holding).
//   A waiter that becomes a holder is "acquired", not "left".

#include "cli.hpp"

#include <filelock/inspect.hpp>

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

namespace cli {

/// A holder or a waiter, as printed.
struct party_view {
    /// Names the same party from one look to the next, as a holder or as a
    /// waiter (files: pid, lock and range; etcd: the key).
    std::string id;
    /// Names a waiter and the holder it becomes, when `id` does not (empty:
    /// `id` does): a filelock slot waiter ("of N" slots) and the holder of
    /// the one slot it won, both "PID slot".
    std::string served_as;
    /// Who, in a human line: a pid ("?" when unknown), an etcd key.
    std::string who;
    /// What, in a human line: "flock exclusive", "flock exclusive, queued #2".
    std::string what;
    /// The party as a JSON object (an entry of --status --json's
    /// "holders" or "waiters").
    std::string json;
};

/// A lock's state, as printed.
struct status_view {
    /// The target as given (a path, an etcd:// URL).
    std::string target;
    std::vector<party_view> holders;
    /// In queue order.
    std::vector<party_view> waiters;
    /// The whole state as one JSON object (--status --json's).
    std::string json;

    bool held() const noexcept { return !holders.empty(); }
};

/// A lock file's state (filelock::inspect's), as printed.
status_view view_of(const std::string& path, const filelock::lock_status& st);

/// --watch's first line: the state `v` at `at` (no newline).
std::string watch_state_line(const status_view& v, bool json,
                             std::chrono::system_clock::time_point at);
/// --watch's lines for what changed from `before` to `after` (none when
/// nothing did): the holders released, the holders acquired, the waiters
/// that left, the waiters that joined, in that order (no newlines).
std::vector<std::string> watch_change_lines(const status_view& before, const status_view& after,
                                            bool json, std::chrono::system_clock::time_point at);

/// `s` as a JSON string: quoted, escaped (UTF-8 passes through).
std::string json_string(std::string_view s);
/// `t` in ISO 8601, UTC: "2026-12-06T06:50:02Z", or with `millis`
/// "2026-12-06T06:50:02.120Z".
std::string iso_time(std::chrono::system_clock::time_point t, bool millis = false);

/// Prints who holds and who waits for cl.target; returns 0 (free),
/// cl.conflict_code (held) or ex_noinput (cannot be inspected).
int status_form(const command_line& cl);

/// --watch (watch.cpp, Linux): prints the state of cl.target, then a line
/// per change, until SIGINT, SIGTERM or SIGHUP, of which it then dies
/// (after flushing what it printed). ex_noinput when the file cannot be
/// inspected or watched.
int watch_form(const command_line& cl);

}  // namespace cli
