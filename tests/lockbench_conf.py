# SPDX-License-Identifier: MIT
"""bench/lockbench.conf compiles the library's sources into each driver: it
must name every source of the library's POSIX build, or the drivers do not
link. Usage: lockbench_conf.py CONF SOURCE..."""
import os
import sys

conf = open(sys.argv[1]).read()
lines = [line for line in conf.splitlines() if line.startswith("filelock")]
missing = []
for src in sys.argv[2:]:
    rel = os.path.relpath(os.path.abspath(src), os.path.abspath(os.path.join(os.path.dirname(sys.argv[1]), "..")))
    for line in lines:
        if '"$CONFDIR/../' + rel + '"' not in line:
            missing.append(f"{line.split('|')[0].strip()}: {rel}")
if not lines:
    missing.append("no filelock driver line")
for m in missing:
    print(f"lockbench.conf: a driver does not compile {m}")
sys.exit(1 if missing else 0)
