// SPDX-License-Identifier: MIT
// inspect(): who holds a lock file and who waits, from what the kernel says
// (kernel_locks.hpp) and what the lock file holds. Also the live holder
// named on contention (live_holder.hpp).
#include <filelock/inspect.hpp>
#include <filelock/options.hpp>

#include "../file/content.hpp"
#include "../file/ops.hpp"
#include "../platform.hpp"
#include "kernel_locks.hpp"
#include "inspect_handle.hpp"
#include "live_holder.hpp"

#include <algorithm>
#include <charconv>
#include <new>
#include <string_view>

namespace filelock {
namespace detail {
namespace {

// What a holder's line says of its writer: " 1234\n", " 1234@host\n",
// " 1234;host\n" (zc.lockfile's '{pid};{hostname}').
struct line_fields {
    long long pid = 0;  // 0: the line starts with no pid
    std::string host;
};

line_fields fields_of(std::string_view content) {
    line_fields f;
    const auto end = content.data() + content.size();
    const auto r = std::from_chars(content.data(), end, f.pid);
    if (r.ec != std::errc() || f.pid <= 0) return {};
    if (r.ptr != end) {
        if (*r.ptr != '@' && *r.ptr != ';') return {};  // not a pid followed by a host
        f.host.assign(r.ptr + 1, end);
    }
    return f;
}

const std::string& this_host() {
    static const std::string name = [] {
        std::string h;
        if (append_hostname(h)) h.clear();
        return h;
    }();
    return name;
}

lock_party party_of(const kernel::lock_line& l) {
    lock_party p;
    p.pid = l.pid > 0 ? l.pid : 0;
    p.api = l.api;
    p.kind = !l.whole_file() ? lock_kind::slot : l.write ? lock_kind::exclusive : lock_kind::shared;
    p.start = l.start;
    p.length = l.end == UINT64_MAX ? 0 : l.end - l.start + 1;
    p.host = this_host();
    p.verified = true;
    return p;
}

// (A queue ticket flips between read and write at each attempt of its
// waiter: its type is not compared.)
bool same_lock(const kernel::lock_line& a, const kernel::lock_line& b, bool any_type) noexcept {
    return a.api == b.api && (any_type || a.write == b.write) && a.major == b.major &&
           a.minor == b.minor && a.ino == b.ino && a.start == b.start && a.end == b.end;
}

// The process behind a lock /proc/locks names as no process (-1), one of
// another namespace (0) or one that exited (a forked child holds it now).
// Each owner found is used once: identical locks (two shared OFD holders)
// get distinct processes.
struct owners_of {
    std::vector<kernel::owner> all;
    std::vector<bool> used;
    bool scanned = false;
    std::vector<kernel::file_key> files;

    void scan() {
        if (scanned) return;
        all = kernel::scan_owners(files);
        used.assign(all.size(), false);
        scanned = true;
    }

    // The owner of `l` (nullptr: none found).
    const kernel::owner* take(const kernel::lock_line& l, bool any_type = false) {
        scan();
        for (std::size_t i = 0; i < all.size(); ++i) {
            if (used[i] || !same_lock(all[i].lock, l, any_type)) continue;
            used[i] = true;
            return &all[i];
        }
        return nullptr;
    }

    long long resolve(const kernel::lock_line& l, bool any_type = false) {
        const kernel::owner* o = take(l, any_type);
        return o ? o->pid : 0;
    }

    // The shared flock(2) lock of the whole file that the open file
    // description holding `l` also holds (a filelock slot holder's other
    // lock), as that description's fdinfo shows it, with a process sharing
    // the description. False when there is none or no fdinfo shows `l`.
    bool gate_of(const kernel::lock_line& l, kernel::owner& gate) {
        scan();
        for (const auto& d : all) {
            if (!same_lock(d.lock, l, false)) continue;
            for (const auto& g : all)
                if (g.pid == d.pid && g.fd == d.fd && g.lock.api == lock_api::flock &&
                    !g.lock.write && g.lock.whole_file() && g.lock.major == l.major &&
                    g.lock.minor == l.minor && g.lock.ino == l.ino) {
                    gate = g;
                    return true;
                }
        }
        return false;
    }
};

bool needs_owner(const kernel::lock_line& l) { return l.pid <= 0 || !kernel::alive(l.pid); }

// Whether `l` is the byte lock of a slot (slot_offset + slot, one byte).
bool slot_byte(const kernel::lock_line& l) noexcept {
    return l.api == lock_api::ofd && l.write && l.start == l.end && l.start >= slot_offset &&
           l.start - slot_offset < max_slots;
}

}  // namespace

std::string live_holder(const file::ops& os, native_handle_type h, std::string_view raw) {
    std::string content = holder_from_bytes(raw);
    if (!kernel::available()) return content;
    // Judged only when the content has the form of a holder's line whose
    // writer is named by a pid on this machine: other content is reported
    // as it is.
    const line_fields f = is_holder_line(raw) ? fields_of(content) : line_fields{};
    // An empty file names nobody (flock(1) writes nothing): nothing to judge.
    if (f.pid == 0) return content;
    if (!f.host.empty() && f.host != this_host()) return content;
    file::file_info info;
    if (os.info(h, info)) return content;
    const std::vector<kernel::file_key> files{kernel::key_of(info.dev, info.ino)};
    std::vector<kernel::lock_line> lines;
    if (!kernel::read_locks(files, lines)) return content;
    std::erase_if(lines, [](const kernel::lock_line& l) { return l.blocked || !l.whole_file(); });
    // No holder seen (released since, or one the kernel does not show us:
    // another pid namespace, another NFS client): nothing to refute.
    if (lines.empty()) return content;
    // The writer took the lock and still lives (when it exited, a child it
    // forked holds the lock now: that child is named).
    for (const auto& l : lines)
        if (f.pid != 0 && l.pid == f.pid && kernel::alive(l.pid)) return content;
    for (const auto& l : lines)
        if (!needs_owner(l)) return std::to_string(l.pid);
    owners_of owners;
    owners.files = files;
    long long first = 0;
    for (const auto& l : lines) {
        const long long pid = owners.resolve(l);
        if (pid != 0 && f.pid != 0 && pid == f.pid) return content;
        if (first == 0) first = pid;
    }
    return first != 0 ? std::to_string(first) : std::string();
}

}  // namespace detail

std::filesystem::path queue_path(const std::filesystem::path& path) {
    std::filesystem::path q = path;
    q += ".queue";
    return q;
}

namespace detail {
namespace {

// One look; `files` and `lines`: the lock files and the kernel's lock lines
// it read (none on Windows).
lock_status look(const std::filesystem::path& path, native_handle_type held, std::error_code& ec,
                 std::vector<kernel::file_key>& files, std::vector<kernel::lock_line>& lines) {
    ec.clear();
    try {
        lock_status st;
        const file::ops& os = file::platform_ops();
        file::file_info info;
        if (auto f = held != no_handle ? os.info(held, info) : os.info_at(path, false, info)) {
            ec = f.ec;
            return {};
        }
        // The content, read without judging it.
        std::string raw;
        std::optional<std::chrono::system_clock::time_point> mtime;
        if (info.type == file::file_type::regular) {
            native_handle_type h = held;
            if (h != no_handle || !os.open_to_read(path, h)) {
                char buf[max_holder_bytes];
                std::size_t n = 0;
                const std::uint64_t at = os.holder_offset();
                file::file_info opened;  // the file opened (the path may name another now)
                if (!os.info(h, opened) && file::content_readable(os, h, opened) &&
                    !os.read_at(h, buf, sizeof buf - at, at, n))
                    raw.assign(buf, n);
                if (h != held) os.close(h);
            }
            std::error_code tec;
            const auto t = std::filesystem::last_write_time(path, tec);
            if (!tec)
                mtime = std::chrono::time_point_cast<std::chrono::system_clock::duration>(
                    std::chrono::file_clock::to_sys(t));
        }
        st.content = holder_from_bytes(raw);
        // (Windows reads the line from offset 1: its leading space is the
        // locked byte 0.)
        const line_fields f =
            is_holder_line(raw) || (os.holder_offset() > 0 && !raw.empty() && raw[0] != ' ')
                ? fields_of(st.content)
                : line_fields{};

        const kernel::file_key key = kernel::key_of(info.dev, info.ino);
        files = {key};
        file::file_info qinfo;
        const bool have_queue = !os.info_at(queue_path(path), false, qinfo);
        const kernel::file_key qkey = kernel::key_of(qinfo.dev, qinfo.ino);
        if (have_queue) files.push_back(qkey);

        if (!kernel::read_locks(files, lines)) {
            lines.clear();
            // Windows (or no /proc/locks): the content is all there is, and
            // on Windows whether byte 0 is locked (reading a byte another
            // process locked fails with ERROR_LOCK_VIOLATION; nothing taken).
            bool locked = f.pid != 0;
            if (os.holder_offset() > 0 && info.type == file::file_type::regular) {
                native_handle_type h = no_handle;
                if (!os.open_to_read(path, h)) {
                    char c;
                    std::size_t n = 0;
                    const file::failure r = os.read_at(h, &c, 1, 0, n);
                    os.close(h);
                    constexpr int lock_violation = 33;  // ERROR_LOCK_VIOLATION
                    locked = r.ec.value() == lock_violation &&
                             std::string_view(r.ec.category().name()) == "win32";
                    st.content_live = locked && f.pid != 0;
                }
            }
            if (locked) {
                lock_party p;
                p.pid = f.pid;
                p.host = f.host;
                p.content = st.content;
                p.since = mtime;
                st.holders.push_back(std::move(p));
            }
            st.note = os.holder_offset() > 0
                          ? "Windows tells whether byte 0 is locked, not by whom: the holder is "
                            "what the lock file's content says; waiters cannot be seen"
                          : "the system does not say who holds or waits for a lock: the holder is "
                            "what the lock file's content says, which an earlier holder may have "
                            "left";
            return st;
        }
        st.complete = true;
        owners_of owners;
        owners.files = files;
        bool unresolved = false;
        // Held locks no process was found for, by where their party went.
        struct unnamed {
            std::vector<lock_party>* in;
            std::size_t at;
            kernel::lock_line line;
        };
        std::vector<unnamed> unnamed_locks;
        // Adds the party of `l` to `to`; returns the owner found for it
        // through fdinfo (nullptr: none looked for, or none found).
        const auto add = [&](std::vector<lock_party>& to, const kernel::lock_line& l,
                             bool ticket = false) -> const kernel::owner* {
            lock_party p = party_of(l);
            const kernel::owner* o = nullptr;
            if (!l.blocked && needs_owner(l)) {
                o = owners.take(l, ticket);
                const long long pid = o ? o->pid : 0;
                if (pid != 0)
                    p.pid = pid;
                else if (l.pid > 0)
                    p.pid = l.pid;  // exited, and no process we may read shares it
                else
                    unnamed_locks.push_back({&to, to.size(), l});
            } else if (l.blocked && l.pid <= 0) {
                unresolved = true;  // a blocked OFD request names no process
            }
            // The content is this holder's when it names the process holding
            // the lock now (not one that took it and exited since, leaving
            // it to a child it forked).
            if (!l.blocked && f.pid != 0 && (f.host.empty() || f.host == this_host()) &&
                l.whole_file() && p.pid == f.pid && !st.content_live) {
                p.content = st.content;
                p.since = mtime;
                st.content_live = true;
            }
            to.push_back(std::move(p));
            return o;
        };
        const auto held_here = [&](const kernel::lock_line& l) {
            return l.major == key.major && l.minor == key.minor && l.ino == key.ino && !l.blocked;
        };
        // A filelock slot holder holds its slot's byte and a shared flock(2)
        // lock of the whole file on one open file description (whose fdinfo
        // shows both): one holder, a slot, named as a flock holder is (the
        // process that took it, while it lives). Each shared flock lock so
        // paired is that holder's, not a shared holder of its own.
        std::vector<bool> is_gate(lines.size(), false);
        std::vector<std::ptrdiff_t> gate_line(lines.size(), -1);
        std::vector<long long> sharer(lines.size(), 0);
        for (std::size_t i = 0; i < lines.size(); ++i) {
            kernel::owner g;
            if (!held_here(lines[i]) || !slot_byte(lines[i]) || !owners.gate_of(lines[i], g))
                continue;
            for (std::size_t j = 0; j < lines.size(); ++j)
                if (!is_gate[j] && held_here(lines[j]) && same_lock(lines[j], g.lock, false) &&
                    lines[j].pid == g.lock.pid) {
                    is_gate[j] = true;
                    gate_line[i] = static_cast<std::ptrdiff_t>(j);
                    sharer[i] = g.pid;
                    break;
                }
        }
        for (std::size_t i = 0; i < lines.size(); ++i) {
            const auto& l = lines[i];
            if (!held_here(l) || is_gate[i]) continue;
            add(st.holders, l);
            if (!slot_byte(l)) continue;
            auto& h = st.holders.back();
            h.slot = static_cast<unsigned>(l.start - slot_offset);
            if (gate_line[i] >= 0) {
                const auto& g = lines[static_cast<std::size_t>(gate_line[i])];
                h.pid = needs_owner(g) ? sharer[i] : g.pid;
            }
        }
        // filelock's queue: one 1-byte lock per waiter, at its ticket.
        std::vector<kernel::lock_line> queued;
        if (have_queue && !(qkey == key))
            for (const auto& l : lines)
                if (l.major == qkey.major && l.minor == qkey.minor && l.ino == qkey.ino &&
                    !l.blocked && l.api == lock_api::ofd && l.start == l.end && l.start > 0)
                    queued.push_back(l);
        std::sort(queued.begin(), queued.end(),
                  [](const auto& a, const auto& b) { return a.start < b.start; });
        std::uint64_t position = 0;
        for (const auto& l : queued) {
            const kernel::owner* o = add(st.waiters, l, true);
            // A writer's ticket is odd, a reader's even: a waiter for the
            // flock(2) lock on the whole file, exclusive or shared, or for
            // one of N slots, whose registration positions its descriptor
            // of the queue file at N (process_queue.cpp; 0 for the others).
            auto& w = st.waiters.back();
            const bool reader = l.start % 2 == 0;
            const std::uint64_t n = o ? o->pos : 0;
            if (reader && n >= 2 && n <= max_slots) {
                w.kind = lock_kind::slot;
                w.api = lock_api::ofd;
                w.slots = static_cast<unsigned>(n);
                w.start = slot_offset;
                w.length = n;
            } else {
                w.kind = reader ? lock_kind::shared : lock_kind::exclusive;
                w.api = lock_api::flock;
                w.start = w.length = 0;
            }
            w.ticket = ++position;
        }
        for (const auto& l : lines)
            if (l.major == key.major && l.minor == key.minor && l.ino == key.ino && l.blocked)
                add(st.waiters, l);
        // A description being closed has left its process's fdinfo but not
        // yet /proc/locks (its locks go when the close completes,
        // microseconds later): such a lock, gone from a second reading, was
        // no one's (a waiter leaving the queue); one still there belongs to
        // a process this user may not read.
        if (!unnamed_locks.empty()) {
            std::vector<kernel::lock_line> again;
            const bool reread = kernel::read_locks(files, again);
            for (auto u = unnamed_locks.rbegin(); u != unnamed_locks.rend(); ++u) {
                const bool still =
                    !reread || std::any_of(again.begin(), again.end(), [&](const auto& a) {
                        return !a.blocked && same_lock(a, u->line, true);
                    });
                if (still)
                    unresolved = true;
                else
                    u->in->erase(u->in->begin() + static_cast<std::ptrdiff_t>(u->at));
            }
            std::uint64_t place = 0;
            for (auto& w : st.waiters)
                if (w.ticket) w.ticket = ++place;
        }
        // A holder on another machine (NFS) whose line names its host.
        if (st.holders.empty() && f.pid != 0 && !f.host.empty() && f.host != this_host()) {
            lock_party p;
            p.pid = f.pid;
            p.host = f.host;
            p.content = st.content;
            p.since = mtime;
            st.holders.push_back(std::move(p));
            st.note =
                "the holder named by the content runs on another machine: the kernel here "
                "cannot confirm it";
        }
        if (unresolved) {
            st.complete = false;
            if (st.note.empty())
                st.note =
                    "some processes could not be named (pid 0): their locks are open-file-"
                    "description locks of processes this user may not read";
        }
        return st;
    } catch (const std::bad_alloc&) {
        ec = std::make_error_code(std::errc::not_enough_memory);
        return {};
    }
}

}  // namespace
}  // namespace detail

lock_status detail::inspect_handle(const std::filesystem::path& path, native_handle_type held,
                                   std::error_code& ec) noexcept {
    // A look reads the kernel's lock lines, then the processes' fdinfo (to
    // name the owners of OFD locks). A party that moves on meanwhile can be
    // missing from it: a waiter that wins takes the lock, then drops its
    // ticket, and one reading of /proc/locks may see neither (it walks one
    // list per CPU). So the lines are read again after the look, and a look
    // whose lines changed is made again (three at most).
    try {
        for (int tries = 3;; --tries) {
            std::vector<kernel::file_key> files;
            std::vector<kernel::lock_line> lines, again;
            lock_status st = look(path, held, ec, files, lines);
            if (ec || lines.empty() || tries == 1 || !kernel::read_locks(files, again) ||
                kernel::same_lines(lines, again))
                return st;
        }
    } catch (const std::bad_alloc&) {
        ec = std::make_error_code(std::errc::not_enough_memory);
        return {};
    }
}

lock_status inspect(const std::filesystem::path& path, std::error_code& ec) noexcept {
    return detail::inspect_handle(path, detail::no_handle, ec);
}

lock_status inspect(const std::filesystem::path& path) {
    std::error_code ec;
    lock_status st = inspect(path, ec);
    if (ec) throw std::filesystem::filesystem_error("filelock: cannot inspect (stat)", path, ec);
    return st;
}

}  // namespace filelock
