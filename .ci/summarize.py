#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Sums Catch2's test-case counts over meson test logs (testlog.json files)
and prints the closing line "N passed, N failed, N skipped". A meson test that
failed without a Catch2 summary (crash, timeout) counts as one failed test
case. A test case that could not run here (it prints "NOT RUN: <why>", e.g.
one that needs root) counts as skipped, not passed."""
import json
import re
import sys

passed = failed = skipped = 0
# [--failed-checks=N] LOG...: N checks outside the test logs (the demo, the
# fuzz targets, docs, SPDX, format) failed, each counted as one failure; a
# build that failed leaves its log missing, counted below.
args = sys.argv[1:]
if args and args[0].startswith("--failed-checks="):
    failed = int(args.pop(0).split("=", 1)[1])
    if failed:
        print("%d check(s) outside the test logs failed" % failed)
all_ok = re.compile(r"All tests passed \(\d+ assertions? in (\d+) test cases?\)")
mixed = re.compile(r"test cases:\s+(\d+)\s+\|\s+(\d+) passed\s+\|\s+(\d+) failed")
for path in args:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        print("missing log: %s" % path)
        failed += 1
        continue
    for line in lines:
        t = json.loads(line)
        out = t.get("stdout", "")
        ok = t["result"] in ("OK", "EXPECTEDFAIL")  # a negative control that failed as it must
        not_run = len(re.findall(r"^\s*NOT RUN: .*$", out, re.M))
        for why in re.findall(r"^\s*NOT RUN: (.*)$", out, re.M):
            print("not run (%s): %s" % (t["name"], why))
        skipped += not_run
        passed -= not_run
        m_ok = all_ok.findall(out)
        m_mixed = mixed.findall(out)
        if t["result"] == "OK" and m_ok:
            passed += int(m_ok[-1])
        elif m_mixed and t["result"] != "EXPECTEDFAIL":
            _, p, f = m_mixed[-1]
            passed += int(p)
            failed += max(int(f), 0 if ok else 1)
        elif ok:
            passed += 1
        else:
            failed += 1
        print("%-10s %-40s %s" % (path.split("/")[0], t["name"], t["result"]))
print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
sys.exit(1 if failed else 0)
