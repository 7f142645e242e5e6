#!/bin/sh
# SPDX-License-Identifier: MIT
# Developer entry point (Debian 12, run as root or with sudo available):
#   ./dev.sh demo    install what is missing, build, run the two-process demo
#   ./dev.sh test [MESON TEST ARGS]
#                    install what is missing, build, run the test suite
#                    (`--setup full --suite long`: the long forms CI runs)
#   ./dev.sh deps    only install the Debian packages
set -eu
cd "$(dirname "$0")"

PACKAGES="g++ meson ninja-build pkg-config libasio-dev libuv1-dev catch2 python3-zc.lockfile util-linux cmake doxygen
    libcurl4-openssl-dev nlohmann-json3-dev etcd-server etcd-client libboost1.81-dev"
BUILD=${BUILD:-build}

deps() {
    missing=""
    for p in $PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    [ -z "$missing" ] && return 0
    echo "installing:$missing"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

build() {
    # Warnings are errors in the project's own builds (not forced on users).
    # Line tables only (-g1): backtraces keep files and lines, and the build
    # takes half the time of -g's at -O2.
    [ -f "$BUILD/build.ninja" ] || meson setup "$BUILD" --buildtype=debugoptimized --werror -Dbench=true \
        -Dcpp_args=-g1
    ninja -C "$BUILD"
}

case "${1:-}" in
deps) deps ;;
demo) deps && build && "$BUILD/examples/1_sync" ;;
test) shift && deps && build && meson test -C "$BUILD" --print-errorlogs "$@" ;;
*) echo "usage: $0 demo|test [MESON TEST ARGS]|deps" >&2; exit 64 ;;
esac
