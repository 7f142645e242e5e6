#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""etcd cluster faults against filelock-run and etcdctl lock on one name.

Starts a 3-member etcd cluster on free loopback ports (data under a scratch
directory, members stopped by pid; they die with this process), then runs
several `filelock-run --ttl T -w 30 etcd://A,B,C/NAME` workers and one
`etcdctl lock --ttl T NAME` worker, each in a loop, each lock held for a
short critical section. Meanwhile it SIGKILLs and restarts the leader,
SIGSTOPs the leader for longer than the TTL, and SIGSTOPs a waiting
filelock-run for longer than the TTL.

Every critical section (tests' section.sh, written to the scratch directory)
takes an occupancy marker with mkdir, logs its start and end times, its
fencing token (FILELOCK_FENCING_TOKEN) or etcdctl's key and grant revision
(ETCD_LOCK_KEY, ETCD_LOCK_REV), and ends at once on the lost signal.
Three watchers, one per member, note when each revision was first seen (an
upper bound on when it happened); at the end the name's whole history (every
key's create and delete revision) is read back from etcd.

Fails on:
- two filelock-run sections overlapping;
- a filelock-run section overlapping a live etcdctl section. etcdctl lock
  can be granted with its key already deleted (etcd #9921: its key's delete
  revision is at or below ETCD_LOCK_REV), and runs its command on after its
  key is gone; those overlaps are counted apart, as etcdctl's, not
  filelock's. So are overlaps after a leader paused past the TTL revoked
  live leases as it resumed (etcd #15247, see OLD_LEADER_WINDOW), when its
  own counter shows the revokes and filelock-run told COMMAND at once;
- a filelock-run section that began after its own key had been deleted
  (but for a key revoked by a resumed ex-leader after the win, as above:
  COMMAND starts at the win, the section logs its start a little later);
- fencing tokens that do not rise from one filelock-run section to the next;
- a worker still waiting long after the end (a waiter on a free lock);
- anything left behind: keys under the name, processes, the scratch
  directory.

Usage: fault_etcd.py [--seconds N] [--ttl T] [--workers N] [--keep]
       fault_etcd.py --self-check   (the detector against known overlaps)
--keep keeps the scratch directory (members' logs, the sections, workers'
core dumps) for a post-mortem.
Prints its figures (sections, faults injected, overlaps by kind) and
"fault_etcd: PASS" or "fault_etcd: FAIL". Exit 77 (not run) without etcd.
"""
import base64
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from loopback import die_with_parent, free_ports

NAME = "fault/lock"
SECTION = r"""#!/bin/bash
# SPDX-License-Identifier: MIT
# One critical section: section.sh WHO DIR
who=$1 d=$2 lost=0 busy=0
trap 'lost=1' TERM
# filelock-run's: a lower bound of etcd's revision as the section begins
# (the highest any member has applied; a stalled member does not answer).
rev0=-
if [ -n "$FILELOCK_FENCING_TOKEN" ] && [ -n "$FAULT_RANGE_URLS" ]; then
    out=$(curl -s --no-progress-meter -m 0.1 -Z \
        -d '{"key":"eA==","serializable":true,"count_only":true}' $FAULT_RANGE_URLS 2>/dev/null)
    while [[ $out =~ \"revision\":\"([0-9]+)\" ]]; do
        r=${BASH_REMATCH[1]}
        [[ $rev0 = - || $r -gt $rev0 ]] && rev0=$r
        out=${out#*\"revision\":\"$r\"}
    done
fi
# Told of a loss already (during the read above): the section never begins.
[ $lost = 1 ] && exit 0
t0=$EPOCHREALTIME
mkdir "$d/marker" 2>/dev/null || busy=1
sleep 0.05 &
[ $lost = 1 ] || wait $!  # the lost signal ends the wait at once
kill $! 2>/dev/null
t1=$EPOCHREALTIME
[ $busy = 0 ] && rmdir "$d/marker"
echo "$who $t0 $t1 $busy $lost ${FILELOCK_FENCING_TOKEN:--} ${ETCD_LOCK_KEY:--} ${ETCD_LOCK_REV:--} $rev0" >>"$d/sections"
"""


def b64(s):
    return base64.b64encode(s.encode()).decode()


def unb64(s):
    return base64.b64decode(s).decode(errors="replace")


def post(endpoint, path, body, timeout):
    req = urllib.request.Request(endpoint + path, data=json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


class Cluster:
    """Three members on loopback: m0, m1, m2."""

    def __init__(self, binary, work, n=3):
        self.binary, self.work = binary, work
        ports = free_ports(2 * n)
        self.client = ports[0::2]
        self.peer = ports[1::2]
        self.initial = ",".join("m%d=http://127.0.0.1:%d" % (i, p) for i, p in enumerate(self.peer))
        self.procs = [None] * n
        self.ids = [None] * n
        for i in range(n):
            self.start(i)
        deadline = time.monotonic() + 30
        while None in self.ids or self.leader() is None:
            for i in range(n):
                st = self.status(i)
                if st:
                    self.ids[i] = st["header"]["member_id"]
            if time.monotonic() > deadline:
                raise RuntimeError("etcd cluster did not start (logs in %s)" % work)
            time.sleep(0.1)

    def endpoint(self, i):
        return "http://127.0.0.1:%d" % self.client[i]

    def hostport(self, i):
        return "127.0.0.1:%d" % self.client[i]

    def lease_expired(self, i, timeout=0.5):
        """The leases member i revoked for want of keep-alives (its lessor's
        etcd_debugging_server_lease_expired_total), or None."""
        try:
            with urllib.request.urlopen(self.endpoint(i) + "/metrics", timeout=timeout) as r:
                for line in r.read().decode(errors="replace").splitlines():
                    if line.startswith("etcd_debugging_server_lease_expired_total "):
                        return int(float(line.split()[1]))
        except (OSError, ValueError):
            pass
        return None

    def start(self, i):
        log = open(os.path.join(self.work, "m%d.log" % i), "a")
        url, peer = self.endpoint(i), "http://127.0.0.1:%d" % self.peer[i]
        # Heartbeat and election as a loaded machine needs (etcd's defaults
        # are 100 and 1000 ms): elections within a second, little CPU.
        self.procs[i] = subprocess.Popen(
            [self.binary, "--name", "m%d" % i, "--data-dir", os.path.join(self.work, "m%d" % i),
             "--listen-client-urls", url, "--advertise-client-urls", url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", self.initial, "--initial-cluster-state", "new",
             "--heartbeat-interval", "50", "--election-timeout", "500"],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        log.close()

    def kill(self, i):
        p = self.procs[i]
        if p and p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.kill()
        if p:
            p.wait()
        self.procs[i] = None

    def signal(self, i, sig):
        self.procs[i].send_signal(sig)

    def status(self, i, timeout=0.5):
        try:
            return post(self.endpoint(i), "/v3/maintenance/status", {}, timeout)
        except (OSError, ValueError):
            return None

    def leader(self):
        """The index of the member the answering members agree leads, or None."""
        votes = {}
        for i in range(len(self.procs)):
            st = self.status(i, 0.3)
            if st and st.get("leader") and st["leader"] != "0":
                votes[st["leader"]] = votes.get(st["leader"], 0) + 1
        for lid, n in votes.items():
            if n >= 2 and lid in self.ids:
                return self.ids.index(lid)
        return None

    def wait_healthy(self, seconds):
        """All members answering and a leader: True, or False after `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if all(self.status(i, 0.3) for i in range(len(self.procs))) and self.leader() is not None:
                return True
            time.sleep(0.1)
        return False

    def any_endpoint(self):
        for i in range(len(self.procs)):
            if self.status(i, 0.5):
                return self.endpoint(i)
        raise RuntimeError("no member answers")

    def keys(self, prefix):
        r = post(self.any_endpoint(), "/v3/kv/range",
                 {"key": b64(prefix), "range_end": b64(prefix[:-1] + chr(ord(prefix[-1]) + 1))}, 3)
        return [(unb64(kv["key"]), kv.get("lease", "0")) for kv in r.get("kvs", [])]

    def stop(self):
        for i in range(len(self.procs)):
            self.kill(i)


class Watcher(threading.Thread):
    """Notes when each revision under the prefix was first seen on one member
    (its own watch, resumed after a reconnect)."""

    def __init__(self, endpoint, prefix, seen, lock, stop):
        super().__init__(daemon=True)
        self.endpoint, self.prefix, self.seen, self.lock, self.stop = endpoint, prefix, seen, lock, stop

    def run(self):
        next_rev = 1
        while not self.stop.is_set():
            try:
                body = {"create_request": {"key": b64(self.prefix),
                                           "range_end": b64(self.prefix[:-1] + "0"),
                                           "start_revision": str(next_rev)}}
                req = urllib.request.Request(self.endpoint + "/v3/watch",
                                             data=json.dumps(body).encode())
                with urllib.request.urlopen(req, timeout=0.5) as r:
                    while not self.stop.is_set():
                        line = r.readline()
                        if not line:
                            break
                        now = time.time()
                        for ev in json.loads(line).get("result", {}).get("events", []):
                            rev = int(ev["kv"]["mod_revision"])
                            with self.lock:
                                if rev not in self.seen or now < self.seen[rev]:
                                    self.seen[rev] = now
                            next_rev = max(next_rev, rev + 1)
            except (OSError, ValueError):
                time.sleep(0.1)


def history(endpoint, prefix, upto):
    """({create_rev: [key, delete_rev or None]} of every key under `prefix`
    (a name comes back when a lease locks again), every event), up to
    revision `upto`, read back with a watch from revision 1."""
    incs, live, events = {}, {}, []
    body = {"create_request": {"key": b64(prefix), "range_end": b64(prefix[:-1] + "0"),
                               "start_revision": "1"}}
    req = urllib.request.Request(endpoint + "/v3/watch", data=json.dumps(body).encode())
    last = 0
    with urllib.request.urlopen(req, timeout=5) as r:
        while last < upto:
            try:
                line = r.readline()
            except OSError:
                break
            if not line:
                break
            for ev in json.loads(line).get("result", {}).get("events", []):
                kv = ev["kv"]
                key, rev = unb64(kv["key"]), int(kv["mod_revision"])
                last = max(last, rev)
                deleted = ev.get("type") == "DELETE"
                events.append((rev, "DELETE" if deleted else "PUT", key,
                               int(kv.get("create_revision", 0)), int(kv.get("lease", 0)),
                               unb64(kv.get("value", "")).strip()))
                if deleted:
                    if key in live:
                        incs[live.pop(key)][1] = rev
                elif key not in live:
                    live[key] = int(kv["create_revision"])
                    incs[live[key]] = [key, None]
    return incs, events, last


class Worker(threading.Thread):
    """Runs `argv_fn()` again and again until told to stop."""

    def __init__(self, name, argv_fn, stop):
        super().__init__(daemon=True)
        self.name_, self.argv_fn, self.stop = name, argv_fn, stop
        self.proc = None
        self.proc_pid = 0
        self.preexec, self.cwd = die_with_parent, None
        self.mutex = threading.Lock()
        self.exits = {}
        self.notes = []  # stderr lines worth reporting
        self.holding = []  # wins, from --verbose
        self.won = False  # the current run reported its win

    def run(self):
        rng = random.Random(self.name_)
        while not self.stop.is_set():
            with self.mutex:
                if self.stop.is_set():
                    break
                began = time.time()
                self.proc = subprocess.Popen(self.argv_fn(), stdout=subprocess.DEVNULL,
                                             stderr=subprocess.PIPE, preexec_fn=self.preexec,
                                             cwd=self.cwd)
            self.proc_pid = self.proc.pid
            lines = []
            for raw in self.proc.stderr:  # as they come: a win's time
                lines.append((time.time(), raw.decode(errors="replace").rstrip("\n")))
                if b"fencing token" in raw:
                    self.won = True
            code = self.proc.wait()
            self.proc.stderr.close()
            with self.mutex:
                self.proc = None
                self.won = False
            self.exits[code] = self.exits.get(code, 0) + 1
            if code < 0:
                self.notes.append("%.3f s %s (pid %d, run from %.3f s) died of signal %d%s" % (
                    time.time() - BASE[0], self.name_, self.proc_pid, began - BASE[0], -code,
                    " after its win" if any("fencing token" in l for _, l in lines) else ""))
            for t, line in lines:
                if "holding" in line and "fencing token" in line:
                    parts = line.split()
                    self.holding.append({"who": self.name_, "t": t, "key": parts[2],
                                         "token": int(parts[-1].rstrip(")")), "exit": code})
                elif line.strip():
                    self.notes.append("%.3f s %s (exit %s): %s" % (t - BASE[0], self.name_, code,
                                                                  line))
            time.sleep(rng.uniform(0, 0.03))

    def pid(self):
        with self.mutex:
            return self.proc.pid if self.proc and self.proc.poll() is None else None


def children(pid):
    out = []
    try:
        for t in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, t)) as f:
                out += f.read().split()
    except OSError:
        pass
    return out


# ---- the detector -----------------------------------------------------------


def parse_sections(path):
    """Each logged section: dict(who, t0, t1, busy, lost, token, key, rev)."""
    out = []
    if not os.path.exists(path):
        return out
    for line in open(path):
        f = line.split()
        if len(f) != 9:
            continue
        out.append({"who": f[0], "t0": float(f[1]), "t1": float(f[2]), "busy": f[3] == "1",
                    "lost": f[4] == "1", "token": None if f[5] == "-" else int(f[5]),
                    "key": None if f[6] == "-" else f[6], "rev": None if f[7] == "-" else int(f[7]),
                    "rev0": None if f[8] == "-" else int(f[8])})
    return out


# How long after its key was seen deleted a win reported on filelock-run's
# stderr may be read here without counting as a win on a dead lease. The
# line is read late when the machine is loaded, and a live win may release
# (and delete its key) within milliseconds when COMMAND is short or killed
# by the lost signal; a win on a lease that expired during a pause past the
# TTL comes about a second or more after the deletion. Sections, which log
# their own start, are judged without slack.
WIN_SLACK = 1.0

# etcd before 3.4.28 and 3.5.11 (#15247, fixed by #16822): a leader paused
# past the TTL resumes still thinking itself the leader, and its lessor
# revokes the leases it saw no keep-alive for, before it steps down. The
# revokes are committed by the new leader, which was renewing those leases:
# a live lock's key goes with no deadline passed, and the next waiter is
# granted. No client can foresee it; filelock-run is told by the watch of its
# key and tells COMMAND. Such a deletion is judged apart only when the
# resumed member's own counter shows it revoked leases after it resumed
# (each revoke accounts for one key), the key went within OLD_LEADER_WINDOW
# of the resume, the section ended within TOLD_WITHIN of the deletion being
# seen, told (the lost signal) unless it ended by itself within UNTOLD_GRACE
# of it, and the other section began after that deletion. The deletion may
# come before the section's logged start: COMMAND is already running when
# filelock-run wins, and the section script first reads etcd's revision
# (up to 0.1 s per member, more on a loaded machine) before it logs.
# UNTOLD_GRACE is about what a watch event takes to reach filelock-run and
# its signal COMMAND on a loaded machine (0.09-0.10 s seen under load).
OLD_LEADER_WINDOW = 2.0
TOLD_WITHIN = 1.0
UNTOLD_GRACE = 0.2


def analyze(sections, incs, seen, wins=(), revokes=()):
    """Overlaps by kind and the other findings.

    sections: parse_sections(); incs: history()[0]; seen: {revision: the wall
    time it was first seen}; wins: filelock-run's "holding KEY (fencing token
    N)" lines, with the time they were read. A filelock-run section (who
    starts with "fl") carries its token (its key's create revision); an
    etcdctl section ("ctl") its key and the revision it was granted at.
    revokes: {"member", "t" (when it resumed), "revoked"} for each leader that
    revoked leases after its pause (etcd #15247, above)."""
    r = {"fl_fl": [], "fl_old_leader": [], "fl_ctl_live": [], "fl_dead_ctl": [], "fl_ctl_9921": [], "fl_ctl_after_key": [],
         "fl_dead_start": [], "ctl_dead_start": [], "tokens_out_of_order": [],
         "marker": sum(1 for s in sections if s["busy"])}

    def created(s):
        """The create revision of the section's key: its token, or for
        etcdctl the last key of that name created before its grant."""
        if s["token"] is not None:
            return s["token"]
        c = [c for c, (k, _) in incs.items() if k == s["key"] and (s["rev"] is None or c <= s["rev"])]
        return max(c) if c else None

    def deleted(s):
        """(delete revision, when it was first seen) of the section's key."""
        if s.get("created") not in incs or incs[s["created"]][1] is None:
            return None, None
        d = incs[s["created"]][1]
        return d, seen.get(d)

    for s in sections:
        s["created"] = created(s)
        d, when = deleted(s)
        s["deleted"], s["deleted_at"] = d, when
        s["granted_dead"] = bool(s["who"].startswith("ctl") and d is not None and s["rev"] is not None
                                 and d <= s["rev"])
    blamed = [set() for _ in revokes]  # keys each resumed ex-leader's revokes account for

    def revoked_live(f, other=None):
        """f's key was revoked by a resumed ex-leader (see OLD_LEADER_WINDOW),
        f was told at once (or ended by itself first), and `other`, if
        given, began after the deletion."""
        d, when = f.get("deleted"), f.get("deleted_at")
        if d is None or when is None or not f["t1"] >= when:
            return False
        if f["t1"] - when > TOLD_WITHIN or (not f["lost"] and f["t1"] - when > UNTOLD_GRACE):
            return False
        if other is not None:
            after = other["rev"] if other["who"].startswith("ctl") else other.get("rev0")
            if not ((after is not None and after >= d) or
                    (other["token"] is not None and other["token"] > d)):
                return False
        for ep, keys in zip(revokes, blamed):
            if ep["t"] <= when <= ep["t"] + OLD_LEADER_WINDOW and (
                    f["created"] in keys or len(keys) < ep["revoked"]):
                keys.add(f["created"])
                f["revoked"] = True
                return True
        return False

    for s in sections:
        if s["deleted_at"] is not None and s["deleted_at"] < s["t0"]:
            if not s["who"].startswith("fl"):
                r["ctl_dead_start"].append(s)
            elif not revoked_live(s):
                r["fl_dead_start"].append(s)
    order = sorted(sections, key=lambda s: s["t0"])
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            if b["t0"] >= a["t1"]:
                break
            fl = [s for s in (a, b) if s["who"].startswith("fl")]
            if len(fl) == 2:
                r["fl_old_leader" if revoked_live(a, b) or revoked_live(b, a) else "fl_fl"].append((a, b))
            elif len(fl) == 1:
                f = fl[0]
                e = b if f is a else a
                if revoked_live(f, e):
                    r["fl_old_leader"].append((a, b))
                elif f["deleted_at"] is not None and f["deleted_at"] < f["t0"]:
                    r["fl_dead_ctl"].append((a, b))
                elif e["granted_dead"] or (e["deleted_at"] is not None and e["deleted_at"] < e["t0"]):
                    r["fl_ctl_9921"].append((a, b))
                elif e["deleted"] is not None and (
                        (e["deleted_at"] is not None and e["deleted_at"] < f["t0"]) or
                        e["deleted"] < f["token"] or
                        (f.get("rev0") is not None and e["deleted"] <= f["rev0"])):
                    # etcdctl's key was gone before filelock-run's section
                    # began: seen gone, or gone before filelock-run's key was
                    # created, or at a revision a member had applied by then.
                    r["fl_ctl_after_key"].append((a, b))
                else:
                    r["fl_ctl_live"].append((a, b))
    r["fl_dead_win"] = []
    for w in wins:
        d = incs.get(w["token"], [None, None])[1]
        if d is not None and d in seen and seen[d] < w["t"] - WIN_SLACK:
            r["fl_dead_win"].append(dict(w, deleted=d, deleted_at=seen[d]))
    # A section whose key a resumed ex-leader revoked may log its start after
    # the next holder's: its token is left out of the order.
    fl = [s for s in order if s["who"].startswith("fl") and not s.get("revoked")]
    for a, b in zip(fl, fl[1:]):
        if b["token"] is None or a["token"] is None or b["token"] <= a["token"]:
            r["tokens_out_of_order"].append((a, b))
    r["failures"] = (len(r["fl_fl"]) + len(r["fl_ctl_live"]) + len(r["fl_dead_ctl"]) + len(r["fl_dead_start"]) +
                     len(r["fl_dead_win"]) + len(r["tokens_out_of_order"]))
    return r


BASE = [0.0]  # times are printed from the run's start


def describe(s):
    what = ("token %s%s" % (s["token"], ", begun at rev >= %d" % s["rev0"] if s.get("rev0") else "")
            ) if s["who"].startswith("fl") else (
        "key %s%s granted at rev %s" % (s["key"], " (created at rev %d)" % s["created"]
                                        if s.get("created") else "", s["rev"]))
    gone = "" if s.get("deleted") is None else ", its key deleted at rev %d%s" % (
        s["deleted"], "" if s.get("deleted_at") is None else
        " (seen at %.3f s)" % (s["deleted_at"] - BASE[0]))
    return "%s [%.3f s, %.3f s] %s%s%s" % (s["who"], s["t0"] - BASE[0], s["t1"] - BASE[0], what, gone,
                                       ", lost signal" if s["lost"] else "")


def print_events(events, seen, lo, hi):
    """etcd's events between revisions lo and hi, with when each was seen."""
    for rev, kind, key, created, lease, value in events:
        if lo <= rev <= hi:
            print("      rev %d%s %s %s%s%s" % (
                rev, " (seen at %.3f s)" % (seen[rev] - BASE[0]) if rev in seen else "", kind,
                key, " created at rev %d, lease %x" % (created, lease) if kind == "PUT" else "",
                ", value %r" % value if value else ""))


def print_findings(r, limit=10, events=(), seen=None):
    for kind, title in (("fl_fl", "filelock-run overlaps filelock-run"),
                        ("fl_ctl_live", "filelock-run overlaps a live etcdctl section"),
                        ("fl_old_leader", "overlap after a resumed ex-leader revoked a live lease "
                         "(etcd #15247)"),
                        ("fl_dead_ctl", "filelock-run on a deleted key overlaps etcdctl"),
                        ("fl_ctl_9921", "overlap with etcdctl granted on a deleted key (etcd #9921)"),
                        ("fl_ctl_after_key", "overlap with etcdctl running on after its key was deleted"),
                        ("tokens_out_of_order", "fencing tokens not rising")):
        for a, b in r[kind][:limit]:
            print("  %s:\n    %s\n    %s" % (title, describe(a), describe(b)))
            if kind in ("fl_fl", "fl_ctl_live", "fl_dead_ctl", "fl_old_leader") and events:
                revs = [x for x in (a.get("created"), b.get("created"), a.get("deleted"),
                                    b.get("deleted"), a.get("rev"), b.get("rev")) if x]
                print("    etcd's events meanwhile:")
                print_events(events, seen, min(revs) - 1, max(revs) + 1)
    for kind, title in (("fl_dead_start", "filelock-run section begun after its key was deleted"),
                        ("ctl_dead_start", "etcdctl section begun after its key was deleted")):
        for s in r[kind][:limit]:
            print("  %s: %s" % (title, describe(s)))
    for w in r["fl_dead_win"][:limit]:
        print("  filelock-run reported a win after its key was deleted: %s at %.3f s: %s "
              "(token %d; deleted at rev %d, seen at %.3f s), exit %s"
              % (w["who"], w["t"] - BASE[0], w["key"], w["token"], w["deleted"],
                 w["deleted_at"] - BASE[0], w["exit"]))


def self_check():
    """The detector against sections whose verdicts are known, then the real
    section script run by unlocked loops: both must be flagged."""
    failed = 0

    def sec(who, t0, t1, token=None, key=None, rev=None, busy=False, rev0=None, lost=False):
        return {"who": who, "t0": t0, "t1": t1, "busy": busy, "lost": lost, "token": token,
                "key": key, "rev": rev, "rev0": rev0}

    keys = {10: ["n/a", 12], 11: ["n/b", 14], 13: ["n/c", 16], 15: ["n/d", 17]}
    seen = {12: 1.05, 14: 2.05, 16: 3.05, 17: 4.05}
    cases = [
        ("clean handoffs", [sec("fl1", 1.0, 1.05, 10), sec("fl2", 1.06, 2.0, 11),
                            sec("ctl", 2.1, 3.0, key="n/c", rev=14), sec("fl3", 3.1, 4.0, 15)],
         {"failures": 0}),
        ("two filelock-run sections at once", [sec("fl1", 1.0, 1.05, 10), sec("fl2", 1.04, 2.0, 11)],
         {"fl_fl": 1, "failures": 1}),
        ("filelock-run inside a live etcdctl section",
         [sec("ctl", 2.1, 3.0, key="n/c", rev=14), sec("fl3", 2.9, 4.0, 15)],
         {"fl_ctl_live": 1, "failures": 1}),
        ("etcdctl granted with its key already deleted (#9921)",
         [sec("fl1", 1.0, 1.05, 10), sec("ctl", 1.5, 2.0, key="n/b", rev=15),
          sec("fl3", 1.9, 2.5, 13)],
         {"fl_ctl_9921": 1, "fl_ctl_live": 0, "failures": 0}),
        ("etcdctl running on after its key was deleted",
         [sec("ctl", 2.0, 3.5, key="n/c", rev=14), sec("fl4", 3.2, 4.0, 15)],
         {"fl_ctl_after_key": 1, "fl_ctl_live": 0, "failures": 0}),
        ("etcdctl running on after its key was deleted, seen late, before filelock-run's revision",
         [sec("ctl", 2.1, 3.0, key="n/c", rev=14), sec("fl3", 2.9, 4.0, 15, rev0=16)],
         {"fl_ctl_after_key": 1, "fl_ctl_live": 0, "failures": 0}),
        ("etcdctl's key deleted, seen late, before filelock-run's key was created",
         [sec("ctl", 2.1, 3.0, key="n/c", rev=14), sec("fl5", 2.9, 4.0, 17)],
         {"fl_ctl_after_key": 1, "fl_ctl_live": 0, "failures": 0}),
        ("filelock-run begun after its key was deleted (a win on a dead lease)",
         [sec("fl2", 2.5, 2.6, 11)], {"fl_dead_start": 1, "failures": 1}),
        ("filelock-run on a deleted key overlapping etcdctl on a deleted key: filelock-run's too",
         [sec("fl2", 2.5, 2.6, 11), sec("ctl", 2.55, 2.7, key="n/c", rev=16)],
         {"fl_dead_ctl": 1, "fl_ctl_9921": 0, "fl_dead_start": 1, "failures": 2}),
        ("fencing tokens going down", [sec("fl2", 1.0, 1.05, 21), sec("fl1", 1.1, 1.2, 20)],
         {"tokens_out_of_order": 1, "failures": 1}),
        ("marker collisions counted", [sec("fl1", 1.0, 1.05, 10, busy=True)], {"marker": 1}),
    ]
    win = {"who": "fl2", "key": "n/b", "token": 11, "exit": 75}
    cases += [
        ("a win reported after its key was deleted (COMMAND killed before it logged)",
         [], {"fl_dead_win": 1, "failures": 1}, [dict(win, t=3.2)]),
        ("a win read within the slack of its key's deletion",
         [], {"fl_dead_win": 0, "failures": 0}, [dict(win, t=2.9)]),
    ]
    # n/b (token 11) deleted at rev 14, seen at 2.05 s: revoked by m0, resumed
    # at 2.0 s, while fl2's section ran; n/c granted at rev 14 then.
    m0 = [{"member": 0, "t": 2.0, "revoked": 1}]
    cases += [
        ("a live lease revoked by a resumed ex-leader (etcd #15247), COMMAND told",
         [sec("fl2", 2.0, 2.1, 11, lost=True), sec("ctl", 2.08, 2.5, key="n/c", rev=14)],
         {"fl_old_leader": 1, "fl_ctl_live": 0, "failures": 0}, (), m0),
        ("... also against filelock-run begun after the deletion",
         [sec("fl2", 2.0, 2.1, 11, lost=True), sec("fl3", 2.08, 2.5, 13, rev0=14)],
         {"fl_old_leader": 1, "fl_fl": 0, "failures": 0}, (), m0),
        ("a key deleted with no ex-leader's revoke: filelock-run's",
         [sec("fl2", 2.0, 2.1, 11, lost=True), sec("ctl", 2.08, 2.5, key="n/c", rev=14)],
         {"fl_old_leader": 0, "fl_ctl_live": 1, "failures": 1}, (), []),
        ("a revoked key, COMMAND not told: filelock-run's",
         [sec("fl2", 2.0, 2.4, 11), sec("ctl", 2.08, 2.5, key="n/c", rev=14)],
         {"fl_old_leader": 0, "fl_ctl_live": 1, "failures": 1}, (), m0),
        ("a revoked key, COMMAND not told but ended by itself at once",
         [sec("fl2", 2.0, 2.12, 11), sec("ctl", 2.08, 2.5, key="n/c", rev=14)],
         {"fl_old_leader": 1, "fl_ctl_live": 0, "failures": 0}, (), m0),
        ("a key revoked after the win, before the section logged its start, COMMAND told",
         [sec("fl2", 2.08, 2.15, 11, lost=True), sec("fl3", 2.1, 2.5, 13, rev0=14)],
         {"fl_old_leader": 1, "fl_fl": 0, "fl_dead_start": 0, "failures": 0}, (), m0),
        ("... the same against etcdctl, not told but ended by itself at once",
         [sec("fl2", 2.08, 2.13, 11), sec("ctl", 2.1, 2.5, key="n/c", rev=14)],
         {"fl_old_leader": 1, "fl_dead_ctl": 0, "fl_dead_start": 0, "failures": 0}, (), m0),
        ("... the other section logged first",
         [sec("fl3", 2.07, 2.5, 13, rev0=14), sec("fl2", 2.08, 2.15, 11, lost=True)],
         {"fl_old_leader": 1, "fl_fl": 0, "fl_dead_start": 0, "failures": 0}, (), m0),
        ("a section begun long after its key was revoked: filelock-run's",
         [sec("fl2", 3.2, 3.3, 11, lost=True)], {"fl_dead_start": 1, "failures": 1}, (), m0),
        ("a revoked key, COMMAND told late: filelock-run's",
         [sec("fl2", 2.0, 3.2, 11, lost=True), sec("ctl", 2.08, 2.5, key="n/c", rev=14)],
         {"fl_old_leader": 0, "fl_ctl_live": 1, "failures": 1}, (), m0),
        ("a revoke long after the resume: filelock-run's",
         [sec("fl2", 2.0, 2.1, 11, lost=True), sec("ctl", 2.08, 2.5, key="n/c", rev=14)],
         {"fl_old_leader": 0, "fl_ctl_live": 1, "failures": 1}, (),
         [{"member": 0, "t": 0.0, "revoked": 1}]),
        ("one revoke accounts for one key",
         [sec("fl2", 2.0, 2.1, 11, lost=True), sec("ctl", 2.08, 2.5, key="n/x", rev=14),
          sec("fl3", 3.0, 3.1, 13, lost=True), sec("ctl", 3.08, 3.5, key="n/y", rev=16)],
         {"fl_old_leader": 1, "fl_ctl_live": 1, "failures": 1}, (),
         [{"member": 0, "t": 1.9, "revoked": 1}]),
        ("etcdctl granted before the deletion: filelock-run's",
         [sec("fl2", 2.0, 2.1, 11, lost=True), sec("ctl", 2.08, 2.5, key="n/c", rev=13)],
         {"fl_old_leader": 0, "fl_ctl_live": 1, "failures": 1}, (), m0),
    ]
    for title, sections, want, *more in cases:
        r = analyze(sections, keys, seen, *more)
        got = {k: (v if isinstance(v, int) else len(v)) for k, v in r.items() if k in want}
        if got != want:
            failed += 1
            print("FAILED: %s: %s, expected %s" % (title, got, want))
        else:
            print("ok: %s" % title)

    # Negative control: the real section script, four loops, no lock.
    work = tempfile.mkdtemp(prefix="filelock-fault-%d-" % os.getpid())
    try:
        script = os.path.join(work, "section.sh")
        with open(script, "w") as f:
            f.write(SECTION)
        procs = [subprocess.Popen(["bash", "-c", 'for i in 1 2 3 4 5 6 7 8; do '
                                   'FILELOCK_FENCING_TOKEN=$((i*10+%d)) bash %s fl%d %s; done'
                                   % (n, script, n, work)]) for n in range(4)]
        for p in procs:
            p.wait()
        r = analyze(parse_sections(os.path.join(work, "sections")), {}, {})
        if len(r["fl_fl"]) == 0 or r["marker"] == 0:
            failed += 1
            print("FAILED: unlocked sections: %d overlaps, %d marker collisions (expected some)"
                  % (len(r["fl_fl"]), r["marker"]))
        else:
            print("ok: unlocked sections flagged: %d overlaps, %d marker collisions"
                  % (len(r["fl_fl"]), r["marker"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("fault_etcd self-check: %s" % ("FAIL" if failed else "PASS"))
    return 1 if failed else 0


# ---- the run ----------------------------------------------------------------


def sweep_stale_dirs():
    """Scratch directories of runs that were SIGKILLed (their pid is gone; not
    those kept with --keep)."""
    tmp = tempfile.gettempdir()
    for d in os.listdir(tmp):
        if d.startswith("filelock-fault-"):
            try:
                if os.path.exists(os.path.join(tmp, d, "KEPT")):
                    continue
                pid = int(d.split("-")[2])
                os.kill(pid, 0)
            except ProcessLookupError:
                shutil.rmtree(os.path.join(tmp, d), ignore_errors=True)
            except (ValueError, IndexError, PermissionError):
                pass


def ours(work):
    """Processes other than this one whose command line names the scratch
    directory (members, workers, sections)."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % p, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if work in cmd:
            out.append("%s %s" % (p, cmd.strip()))
    return out


def keep_cores():
    import resource
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    die_with_parent()


def run(seconds, ttl, nworkers, keep=False):
    etcd_bin = os.environ.get("FILELOCK_ETCD") or "/usr/bin/etcd"
    etcdctl = shutil.which("etcdctl") or "/usr/bin/etcdctl"
    tool = os.environ.get("FILELOCK_RUN")
    for what, path in (("etcd", etcd_bin), ("etcdctl", etcdctl), ("filelock-run", tool)):
        if not path or not os.access(path, os.X_OK):
            print("NOT RUN: no %s (%s)" % (what, path))
            return 77
    sweep_stale_dirs()
    began = time.monotonic()
    work = tempfile.mkdtemp(prefix="filelock-fault-%d-" % os.getpid())
    script = os.path.join(work, "section.sh")
    with open(script, "w") as f:
        f.write(SECTION)
    stop_workers, stop_watch = threading.Event(), threading.Event()
    workers, cluster = [], None
    faults = {"leader killed": 0, "leader paused": 0, "waiter paused": 0}
    fault_log = []
    revokes = []  # leaders that revoked leases once resumed (etcd #15247)
    hung = []
    ok = True
    try:
        cluster = Cluster(etcd_bin, work)
        n = len(cluster.procs)
        seen, seen_lock = {}, threading.Lock()
        watchers = [Watcher(cluster.endpoint(i), NAME + "/", seen, seen_lock, stop_watch)
                    for i in range(n)]
        for w in watchers:
            w.start()
        leader = [cluster.leader()]
        # For the sections of filelock-run: where to read etcd's revision.
        os.environ["FAULT_RANGE_URLS"] = " ".join(cluster.endpoint(i) + "/v3/kv/range"
                                                  for i in range(n))

        def fl_argv(i):
            # Even workers put the leader (as last seen) first: the member
            # that carries all their requests is the one paused or killed.
            first = leader[0] if i % 2 == 0 and leader[0] is not None else i % n
            order = [(first + k) % n for k in range(n)]
            return [tool, "--verbose", "--ttl", str(ttl), "-w", "30",
                    "etcd://%s/%s" % (",".join(cluster.hostport(k) for k in order), NAME),
                    "bash", script, "fl%d:m%d" % (i, first), work]

        def ctl_argv():
            return [etcdctl, "--endpoints=" + ",".join(cluster.hostport(k) for k in range(n)),
                    "--dial-timeout=2s", "lock", "--ttl", str(ttl), NAME, "--",
                    "bash", script, "ctl", work]

        for i in range(nworkers):
            workers.append(Worker("fl%d" % i, lambda i=i: fl_argv(i), stop_workers))
        workers.append(Worker("ctl", ctl_argv, stop_workers))
        if keep:  # core dumps of the workers in the kept directory
            for w in workers:
                w.preexec, w.cwd = keep_cores, work
        BASE[0] = time.time()
        end = time.monotonic() + seconds
        for w in workers:
            w.start()

        def note(msg):
            fault_log.append("%.3f s %s" % (time.time() - BASE[0], msg))

        def pause_waiters():
            rng = random.Random(7)
            time.sleep(1.0)
            while time.monotonic() + ttl + 1.5 < end:
                fl = [w for w in workers if w.name_.startswith("fl")]
                rng.shuffle(fl)
                for w in fl:
                    pid = w.pid()
                    if pid is None:
                        continue
                    try:
                        os.kill(pid, signal.SIGSTOP)
                    except ProcessLookupError:
                        continue
                    # Only a waiter: not one that has won (a holder paused
                    # before COMMAND starts is the documented case the
                    # fencing token is for), whose line is read meanwhile.
                    time.sleep(0.1)
                    if children(pid) or w.won or w.pid() != pid:
                        try:
                            os.kill(pid, signal.SIGCONT)
                        except ProcessLookupError:
                            pass
                        continue
                    faults["waiter paused"] += 1
                    note("SIGSTOP waiter %s (pid %d) for %.1f s" % (w.name_, pid, ttl + 1.5))
                    time.sleep(ttl + 1.5)
                    try:
                        os.kill(pid, signal.SIGCONT)
                    except ProcessLookupError:
                        pass
                    break
                time.sleep(1.0)

        pauser = threading.Thread(target=pause_waiters, daemon=True)
        pauser.start()

        kinds = ["pause", "kill"]  # the pause first: the short form gets both
        k = 0
        time.sleep(1.0)
        while True:
            kind = kinds[k % len(kinds)]
            need = 1.0 + 3 if kind == "kill" else ttl + 1.5
            if time.monotonic() + need > end:
                break
            lead = cluster.leader()
            if lead is None:
                time.sleep(0.2)
                continue
            leader[0] = lead
            if kind == "kill":
                cluster.kill(lead)
                faults["leader killed"] += 1
                note("SIGKILL leader m%d" % lead)
                time.sleep(1.0)
                cluster.start(lead)
                note("restarted m%d" % lead)
            else:
                expired = cluster.lease_expired(lead)
                cluster.signal(lead, signal.SIGSTOP)
                faults["leader paused"] += 1
                note("SIGSTOP leader m%d for %.1f s" % (lead, ttl + 1.5))
                time.sleep(ttl + 1.5)
                cluster.signal(lead, signal.SIGCONT)
                resumed = time.time()
                note("SIGCONT m%d" % lead)
            if not cluster.wait_healthy(10):
                note("cluster not healthy 10 s after the fault")
            leader[0] = cluster.leader()
            k += 1
            time.sleep(0.5)
            if kind == "pause" and expired is not None and cluster.leader() not in (lead, None):
                # A follower again: what its counter gained since the pause,
                # it revoked as the leader it no longer was.
                now = cluster.lease_expired(lead)
                if now is not None and now > expired:
                    revokes.append({"member": lead, "t": resumed, "revoked": now - expired})
                    note("m%d, resumed, revoked %d lease(s) as a leader it no longer was "
                         "(etcd #15247)" % (lead, now - expired))
        while time.monotonic() < end:
            time.sleep(0.1)
        # The end: no new runs; what runs finishes (the lock goes round).
        phases = [("faults", time.monotonic())]
        stop_workers.set()
        pauser.join()
        drain = time.monotonic() + 2 * ttl + 10
        for w in workers:
            w.join(max(0.0, drain - time.monotonic()))
        for w in workers:
            if w.is_alive():
                pid = w.pid()
                hung.append("%s (pid %s) still running %.0f s after the end" % (
                    w.name_, pid, 2 * ttl + 10))
                if pid:
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
                w.join(5)
        phases.append(("drain", time.monotonic()))
        cluster.wait_healthy(10)
        phases.append(("cluster healthy", time.monotonic()))
        # Keys left: none, once every worker is gone (a run that could not
        # reach etcd may leave one to its lease: give it the TTL).
        left_now = cluster.keys(NAME)
        left = left_now
        if left:
            time.sleep(ttl + 1)
            left = cluster.keys(NAME)
        held = {h["key"] for w in workers for h in w.holding}
        released_left = [k for k, _ in left_now if k in held and all(
            c in (0, 75) for w in workers for c in w.exits) and not hung]
        upto = max(int(st["header"]["revision"]) for st in map(cluster.status, range(n)) if st)
        phases.append(("keys left", time.monotonic()))
        keys, events, last = history(cluster.any_endpoint(), NAME + "/", upto)
        phases.append(("history", time.monotonic()))
        stop_watch.set()
        for w in watchers:
            w.join(2)
        with seen_lock:
            seen_copy = dict(seen)
        sections = parse_sections(os.path.join(work, "sections"))
        wins = [h for w in workers for h in w.holding]
        r = analyze(sections, keys, seen_copy, wins, revokes)
    finally:
        stop_workers.set()
        stop_watch.set()
        for w in workers:
            pid = w.pid()
            if pid:
                try:
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if cluster:
            cluster.stop()
        time.sleep(0.2)  # a section's sleep, orphaned by its lost signal
        procs_left = ours(work)
        if keep:
            open(os.path.join(work, "KEPT"), "w").close()
            print("fault_etcd: kept %s (members' logs, sections, core dumps)" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)
        dir_left = os.path.exists(work) and not keep

    fl_secs = [s for s in sections if s["who"].startswith("fl")]
    ctl_secs = [s for s in sections if s["who"] == "ctl"]
    exits_fl, exits_ctl = {}, {}
    for w in workers:
        for c, m in w.exits.items():
            d = exits_fl if w.name_.startswith("fl") else exits_ctl
            d[c] = d.get(c, 0) + m
    print("fault_etcd summary (%.0f s, 3 members, %d filelock-run workers and 1 etcdctl lock, "
          "ttl %d s)" % (seconds, nworkers, ttl))
    print("  sections: %d (filelock-run %d, etcdctl %d); lost signals %d; revisions %d, keys %d"
          % (len(sections), len(fl_secs), len(ctl_secs), sum(1 for s in sections if s["lost"]),
             last, len(keys)))
    print("  filelock-run wins %d (%d with no section: COMMAND told of a loss or killed first)"
          % (len(wins), len(wins) - len(fl_secs)))
    print("  seconds: start %.1f, " % (end - seconds - began) + ", ".join("%s %.1f" % (name, t - (phases[i - 1][1] if i else end - seconds))
                                    for i, (name, t) in enumerate(phases)))
    print("  exit statuses: filelock-run %s, etcdctl %s" % (
        dict(sorted(exits_fl.items())), dict(sorted(exits_ctl.items()))))
    print("  faults: %s; leases revoked by resumed ex-leaders (etcd #15247) %d"
          % (", ".join("%s %d" % kv for kv in faults.items()), sum(e["revoked"] for e in revokes)))
    print("  overlaps: filelock-run/filelock-run %d, filelock-run/live etcdctl %d, filelock-run on "
          "a deleted key/etcdctl %d; etcdctl's own: granted on a deleted key (etcd #9921) %d, ran "
          "on after its key was deleted %d; after a resumed ex-leader revoked a live lease "
          "(etcd #15247) %d"
          % (len(r["fl_fl"]), len(r["fl_ctl_live"]), len(r["fl_dead_ctl"]), len(r["fl_ctl_9921"]),
             len(r["fl_ctl_after_key"]), len(r["fl_old_leader"])))
    print("  sections begun after their key was deleted: filelock-run %d, etcdctl %d; "
          "filelock-run wins reported after it: %d"
          % (len(r["fl_dead_start"]), len(r["ctl_dead_start"]), len(r["fl_dead_win"])))
    print("  fencing tokens out of order: %d; occupancy marker found taken: %d"
          % (len(r["tokens_out_of_order"]), r["marker"]))
    print("  left behind: keys %d (%d at the end, before their leases could expire), processes %d, "
          "scratch directory %s; hung workers %d"
          % (len(left), len(left_now), len(procs_left), "yes" if dir_left else "no", len(hung)))
    print_findings(r, events=events, seen=seen_copy)
    for k, lease in left_now:
        print("  key left at the end: %s (lease %s)" % (k, lease))
    for p in procs_left:
        print("  process left: %s" % p)
    for h in hung:
        print("  hung: %s" % h)
    # 0 ran, 1 timed out (-w), 75 lost while COMMAND ran, 69 etcd unavailable;
    # anything else (a crash, a sanitizer's report) fails.
    odd = {c: m for c, m in exits_fl.items() if c not in (0, 1, 69, 75)}
    if odd:
        print("  filelock-run exited with unexpected statuses: %s" % odd)
    for k in released_left:
        print("  a holder that exited left its key: %s" % k)
    bad = (r["failures"] or left or released_left or procs_left or dir_left or hung or odd)
    if bad or r["fl_ctl_9921"] or r["fl_ctl_after_key"] or r["ctl_dead_start"] or r["fl_old_leader"]:
        print("  faults injected:")
        for f in fault_log:
            print("    " + f)
        notes = sorted(n for w in workers for n in w.notes)
        print("  workers' messages (%d):" % len(notes))
        for n in notes[:40]:
            print("    " + n)
    if not all(faults.values()):
        print("  a kind of fault was never injected: the run proves nothing about it")
        bad = True
    # The short form may see etcdctl, slow to start and to fail over, get
    # no turn; a long one that never ran it judged nothing against it.
    if not fl_secs or (not ctl_secs and seconds >= 30):
        print("  too few sections to judge (filelock-run %d, etcdctl %d)" % (len(fl_secs),
                                                                           len(ctl_secs)))
        bad = True
    ok = not bad
    print("fault_etcd: %s" % ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


def main():
    # meson's timeout sends SIGTERM: clean up on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("fault_etcd: terminated"))
    args = sys.argv[1:]
    if "--self-check" in args:
        return self_check()
    seconds, ttl, nworkers = 12.0, 2, 4
    for i, a in enumerate(args):
        if a == "--seconds":
            seconds = float(args[i + 1])
        elif a == "--ttl":
            ttl = int(args[i + 1])
        elif a == "--workers":
            nworkers = int(args[i + 1])
    return run(seconds, ttl, nworkers, "--keep" in args)


if __name__ == "__main__":
    sys.exit(main())
