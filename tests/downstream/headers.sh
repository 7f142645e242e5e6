#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The installed headers hold the API and what the header-only templates
# need, nothing more:
#   - each installed header compiles on its own, under a user's strict
#     warnings, with only the installed include directory (and its
#     dependencies' flags);
#   - each header under filelock/detail/ is included, directly or not, by a
#     public header (a detail header nothing public needs is not shipped);
#   - no installed header includes a filelock header that is not installed.
# Usage: headers.sh INCLUDE_DIR CFLAGS... Prints "ok: ..." / "FAILED: ..."
# per check and exits non-zero if one failed.
set -uo pipefail
inc=$1
shift
cflags=("$@")
cxx=${CXX:-g++}
failed=0
work=$(mktemp -d /tmp/filelock-headers-XXXXXX)
trap 'rm -rf "$work"' EXIT
strict=(-std=c++20 -Wall -Wextra -Werror -Wshadow -Wconversion -Wsign-conversion
    -Wold-style-cast -Wnon-virtual-dtor -Wpedantic)

cd "$inc" || exit 1
headers=$(find filelock -name '*.hpp' | sort)
# filelock headers each installed header includes.
includes_of() { sed -n 's|^[[:space:]]*#[[:space:]]*include[[:space:]]*<\(filelock/[^>]*\)>.*|\1|p' "$1"; }

# compile_alone N HEADER: compiles HEADER alone; its verdict in $work/N.out.
compile_alone() {
    printf '#include <%s>\n' "$2" >"$work/$1.cpp"
    if "$cxx" "${strict[@]}" -fsyntax-only -I"$inc" "${cflags[@]}" "$work/$1.cpp" \
        >"$work/$1.log" 2>&1; then
        echo "ok: $2 compiles on its own" >"$work/$1.out"
    else
        { echo "FAILED: $2 does not compile on its own"; head -n 20 "$work/$1.log"; } >"$work/$1.out"
    fi
}
jobs=$(nproc 2>/dev/null || echo 2)
n=0
for h in $headers; do
    for dep in $(includes_of "$h"); do
        [ -e "$dep" ] || { echo "FAILED: $h includes $dep, which is not installed"; failed=1; }
    done
    # As many compiles at once as there are cores.
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
    compile_alone $n "$h" &
    n=$((n + 1))
done
wait
for i in $(seq 0 $((n - 1))); do
    cat "$work/$i.out"
    grep -q '^FAILED' "$work/$i.out" && failed=1
done

# Every detail header is reachable from a public one.
reached=" "
queue=$(echo "$headers" | grep -v '^filelock/detail/')
while [ -n "$queue" ]; do
    next=""
    for h in $queue; do
        case $reached in *" $h "*) continue ;; esac
        reached="$reached$h "
        [ -e "$h" ] && next="$next $(includes_of "$h")"
    done
    queue=$next
done
for h in $(echo "$headers" | grep '^filelock/detail/'); do
    case $reached in
        *" $h "*) echo "ok: $h is needed by a public header" ;;
        *) echo "FAILED: $h is installed but no public header includes it"; failed=1 ;;
    esac
done
exit $failed
