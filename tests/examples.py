#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Runs every example program and checks that it exits 0 and prints what the
README shows for it.

The README shows each example's output in a fenced block whose first line is
the command, `$ build/examples/NAME [ARGS]`, and whose other lines are what it
prints (stdout and stderr together). Pids, fencing tokens, lease ids and
counts differ from run to run: a word of two or more characters with a digit
in the README's sample stands for any word, the same sample word for the same
word everywhere in the block, and two sample words for two different words.
Everything else must match exactly (single digits, such as job numbers,
included). The lock file (/tmp/filelock-demo.lock in the README) is
one of a scratch directory, the host name (`myhost` in the README) this
machine's, and the etcd examples run against a member of the test's own
(http://127.0.0.1:2379 in the README), started as tests/etcd_member.hpp
starts the C++ tests' (FILELOCK_ETCD names the binary, /usr/bin/etcd by
default).

Usage: examples.py README EXAMPLE...   (the example programs built)
Prints one line per example and closes with "test cases: N | N passed | N failed".
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from loopback import die_with_parent, free_ports

README_LOCK = "/tmp/filelock-demo.lock"
README_HOST = "myhost"
README_ETCD = "http://127.0.0.1:2379"


def blocks(readme):
    """(name, args, expected lines) of each fenced block (indented ones too,
    as in a list) whose first line is `$ build/examples/NAME [ARGS]`."""
    out, lines, i = [], open(readme, encoding="utf-8").read().splitlines(), 0
    while i < len(lines):
        if not lines[i].lstrip().startswith("```"):
            i += 1
            continue
        indent = len(lines[i]) - len(lines[i].lstrip())
        j = i + 1
        while j < len(lines) and not lines[j].lstrip().startswith("```"):
            j += 1
        body = [l[indent:] for l in lines[i + 1:j]]
        if body and body[0].startswith("$ build/examples/"):
            cmd = body[0][2:].split()
            out.append((os.path.basename(cmd[0]), cmd[1:], body[1:]))
        i = j + 1
    return out


WORD = re.compile(r"([A-Za-z0-9]+)")


def compare(expected, actual):
    """None if `actual` is what `expected` shows, else what differs."""
    if len(expected) != len(actual):
        return "%d lines where the README shows %d" % (len(actual), len(expected))
    forward, backward = {}, {}
    for n, (e, a) in enumerate(zip(expected, actual), 1):
        et, at = WORD.split(e), WORD.split(a)
        mismatch = "line %d: %r where the README shows %r" % (n, a, e)
        if len(et) != len(at):
            return mismatch
        for k, (x, y) in enumerate(zip(et, at)):
            if k % 2 == 1 and len(x) > 1 and any(c.isdigit() for c in x):  # a sample value
                if forward.setdefault(x, y) != y or backward.setdefault(y, x) != x:
                    return mismatch + " (%r does not stand for one value)" % x
            elif x != y:
                return mismatch
    return None


class Etcd:
    """A one-member etcd on loopback, stopped by pid."""

    def __init__(self, binary, workdir):
        client, peer = free_ports(2)
        self.endpoint = "http://127.0.0.1:%d" % client
        peer_url = "http://127.0.0.1:%d" % peer
        self.log = open(os.path.join(workdir, "etcd.log"), "w")
        self.proc = subprocess.Popen(
            [binary, "--name", "examples", "--data-dir", os.path.join(workdir, "etcd"),
             "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
             "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
             "--initial-cluster", "examples=" + peer_url],
            stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(self.endpoint + "/health", timeout=1) as r:
                    if b'"true"' in r.read():
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("etcd did not start (%s)" % self.log.name)
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.log.close()


def main():
    readme, programs = sys.argv[1], sys.argv[2:]
    etcd_bin = os.environ.get("FILELOCK_ETCD") or "/usr/bin/etcd"
    # meson's timeout sends SIGTERM: clean up (the member, the scratch
    # directory) on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("examples: terminated"))
    sources = os.path.join(os.path.dirname(os.path.abspath(readme)), "examples")
    shown = blocks(readme)
    built = {os.path.basename(p): p for p in programs}
    passed = failed = 0
    work = tempfile.mkdtemp(prefix="filelock-examples-")
    etcd = etcd_error = None
    lock = os.path.join(work, "demo.lock")
    host = socket.gethostname()
    try:
        for name in sorted(built):
            if name not in [b[0] for b in shown]:
                print("FAILED: %s: the README shows no output for it" % name)
                failed += 1
        for name, args, expected in shown:
            if not os.path.exists(os.path.join(sources, name + ".cpp")):
                print("FAILED: %s: the README shows an example that does not exist" % name)
                failed += 1
                continue
            if name not in built:
                print("NOT RUN: %s: not built here" % name)
                passed += 1
                continue
            uses_etcd = README_ETCD in args
            if uses_etcd and etcd is None and etcd_error is None:
                try:
                    etcd = Etcd(etcd_bin, work)
                except (OSError, RuntimeError) as e:
                    etcd_error = str(e)
            if uses_etcd and etcd is None:
                print("FAILED: %s: no etcd member: %s" % (name, etcd_error))
                failed += 1
                continue
            argv = [built[name]] + [
                etcd.endpoint if a == README_ETCD else lock if a == README_LOCK else a
                for a in args]
            if not uses_etcd and lock not in argv:
                argv.append(lock)  # never the shared /tmp file
            try:
                p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   timeout=30)
                status, text = p.returncode, p.stdout.decode(errors="replace")
            except subprocess.TimeoutExpired as e:
                status, text = "timed out after 30 s", (e.stdout or b"").decode(errors="replace")
            text = text.replace(lock, README_LOCK)
            if etcd:
                text = text.replace(etcd.endpoint, README_ETCD)
            if host:
                text = re.sub(r"(?<![A-Za-z0-9.-])%s(?![A-Za-z0-9.-])" % re.escape(host),
                              README_HOST, text)
            actual = text.splitlines()
            why = "exit status %s" % status if status != 0 else compare(expected, actual)
            if why:
                failed += 1
                print("FAILED: %s: %s" % (name, why))
                print("  README:\n" + "".join("    %s\n" % l for l in expected) +
                      "  printed:\n" + "".join("    %s\n" % l for l in actual), end="")
            else:
                passed += 1
                print("ok: %s" % name)
    finally:
        if etcd:
            etcd.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("test cases: %d | %d passed | %d failed" % (passed + failed, passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
