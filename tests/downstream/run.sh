#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Downstream builds, one per way of consuming filelock, each against the
# install tree of the build under test (its `meson install` into a directory
# of its own):
#   buildtype    a release build configured as users do forces no -Werror,
#                and `-Dtests=disabled` needs no Catch2 (configured, not
#                compiled: CI's budget). CI compiles with -Werror at -O2 (the
#                README's build), -O0 (where a symbol missing from the library
#                shows: the sanitizers'), -Os (g++ 12's -Wdangling-pointer
#                false positives: the minimal one)
#   install      libraries, headers, pkg-config modules, CMake package, man page,
#                LICENSE; the installed filelock-run runs from a tree that is
#                not its prefix (its rpath is relative);
#                each installed header compiles alone, and detail/ holds only
#                what public headers include (headers.sh)
#   pkg-config   g++ and clang++ with `pkg-config filelock filelock-asio filelock-uv`;
#                the etcd consumer with g++
#   cmake        find_package(filelock 0.2 COMPONENTS asio uv), strict warnings, g++
#   clang-order  clang++ with Asio's headers first: works with the packages'
#                flags; without them a clear #error says what to do
#   subproject   a parent meson project (strict warnings, werror) that installs
#                a program using filelock as a subproject; the installed program runs;
#                and the same with filelock also installed system-wide. The parent
#                uses the core, Asio and libuv modules, so the subproject is
#                configured without etcd and Boost.Asio (a third of CI's time
#                for this test went to compiling them again), and the parent
#                without debug information (-O0 either way)
# Usage: run.sh SOURCE_DIR BUILD_DIR (built). Prints "ok: ..." / "FAILED: ..." / "NOT RUN: ..."
# per check and exits non-zero if one failed.
set -uo pipefail
src=$(cd "$1" && pwd)
build=$(cd "$2" && pwd)
work=$(mktemp -d /tmp/filelock-downstream-XXXXXX)
trap 'rm -rf "$work"' EXIT
failed=0
ok() { echo "ok: $*"; }
bad() { echo "FAILED: $*"; failed=1; }
# check WHAT COMMAND...: runs COMMAND, its output kept for a failure; says
# how many seconds it took (CI's budget).
check() {
    local what=$1 t0=$SECONDS
    shift
    if "$@" >"$work/log" 2>&1; then ok "$what ($((SECONDS - t0)) s)"; else
        bad "$what ($((SECONDS - t0)) s)"
        tail -n 30 "$work/log"
    fi
}

check "release build, tests disabled, configured without forcing -Werror" bash -c "
    meson setup '$work/release' '$src' --buildtype=release -Dtests=disabled -Dexamples=false \
        -Ddocs=disabled &&
    meson introspect --buildoptions '$work/release' | /usr/bin/python3 -c \
        'import json,sys; sys.exit(any(o[\"name\"]==\"werror\" and o[\"value\"] for o in json.load(sys.stdin)))' &&
    ! grep -q -- -Werror '$work/release/build.ninja'"
# The build's install, under $work/dest. CMake's package finds its own
# prefix; the pkg-config modules' first line, prefix=, is moved with the tree
# (every other path in them must follow it). The build's prefix and libdir,
# a line each, from one look at its options:
{ read -r prefix; read -r libdir; } < <(meson introspect --buildoptions "$build" |
    /usr/bin/python3 -c 'import json,sys; o={x["name"]: x["value"] for x in json.load(sys.stdin)}; print(o["prefix"]); print(o["libdir"])')
dest=$work/dest
prefix=$dest$prefix
case $libdir in /*) libpath=$dest$libdir ;; *) libpath=$prefix/$libdir ;; esac
pcdir=$libpath/pkgconfig
check "meson install" bash -c "meson install -C '$build' --no-rebuild --destdir '$dest' --quiet &&
    sed -i 's|^prefix=.*|prefix=$prefix|' '$pcdir'/filelock*.pc"
for f in "$libdir/libfilelock.so.0.2" "$libdir/libfilelock-uv.so.0.2" \
         "$libdir/pkgconfig/filelock.pc" "$libdir/pkgconfig/filelock-asio.pc" \
         "$libdir/pkgconfig/filelock-uv.pc" "$libdir/cmake/filelock/filelockConfig.cmake" \
         "$libdir/cmake/filelock/filelockConfigVersion.cmake" include/filelock/version.hpp \
         include/filelock/asio.hpp include/filelock/uv.hpp share/man/man1/filelock-run.1 \
         share/doc/filelock/LICENSE bin/filelock-run libexec/filelock/filelock-run-etcd \
         "$libdir/libfilelock-etcd.so.0.2" \
         "$libdir/libfilelock-etcd-uv.so.0.2" "$libdir/pkgconfig/filelock-etcd.pc" \
         "$libdir/pkgconfig/filelock-etcd-uv.pc" include/filelock/etcd.hpp \
         include/filelock/etcd_asio.hpp include/filelock/etcd_uv.hpp; do
    case $f in /*) p=$dest$f ;; *) p=$prefix/$f ;; esac  # libdir may be absolute
    [ -e "$p" ] && ok "installed $f" || bad "installed $f"
done
check "installed headers: each compiles alone (strict warnings); detail/ only what public ones include" \
    "$src/tests/downstream/headers.sh" "$prefix/include" -pthread -DASIO_HAS_CO_AWAIT=1
check "installed filelock-run runs from a tree that is not its prefix (relative rpath)" \
    bash -c "env -u LD_LIBRARY_PATH '$prefix/bin/filelock-run' -V | grep -q 'filelock) 0.2'"
check "installed filelock-run locks" \
    "$prefix/bin/filelock-run" -n "$work/a.lock" true

export PKG_CONFIG_PATH=$pcdir
for cxx in g++ clang++-14; do
    if ! command -v $cxx >/dev/null; then echo "NOT RUN: pkg-config with $cxx (not installed)"; continue; fi
    check "pkg-config consumer, $cxx (Asio included first, strict warnings)" bash -c "
        $cxx -std=c++20 -Wall -Wextra -Werror -Wshadow -Wconversion -Wsign-conversion \
            -Wold-style-cast -Wnon-virtual-dtor '$src/tests/downstream/consumer.cpp' \
            \$(pkg-config --cflags --libs filelock filelock-asio filelock-uv) \
            -Wl,-rpath,'$libpath' -o '$work/pc-$cxx' && '$work/pc-$cxx' '$work/pc.lock'"
    # The etcd consumer once, with g++: clang's strict warnings on the
    # installed headers are the Asio consumer's check (CI's budget).
    [ $cxx = g++ ] || continue
    check "pkg-config etcd consumer, $cxx (strict warnings)" bash -c "
        $cxx -std=c++20 -Wall -Wextra -Werror -Wshadow -Wconversion -Wsign-conversion \
            -Wold-style-cast -Wnon-virtual-dtor '$src/tests/downstream/etcd_consumer.cpp' \
            \$(pkg-config --cflags --libs filelock-etcd filelock-etcd-uv filelock-asio) \
            -Wl,-rpath,'$libpath' -o '$work/pce-$cxx' && '$work/pce-$cxx'"
done
if command -v clang++-14 >/dev/null; then
    # Without the packages' flags, clang with Asio first must stop with the
    # message that says what to do.
    if clang++-14 -std=c++20 -fsyntax-only -I"$prefix/include" \
        "$src/tests/downstream/consumer.cpp" >"$work/log" 2>&1; then
        bad "clang, Asio first, no flags: expected the #error"
    elif grep -q "Compile with -DASIO_HAS_CO_AWAIT=1" "$work/log"; then
        ok "clang, Asio first, no flags: a clear #error"
    else
        bad "clang, Asio first, no flags: unclear error"; tail -n 10 "$work/log"
    fi
fi

if command -v cmake >/dev/null; then
    # With g++ only: the package's targets are the same for either compiler,
    # and clang's compile of the consumer is the pkg-config check's.
    for cxx in g++; do
        check "CMake find_package consumer, $cxx" bash -c "
            cmake -S '$src/tests/downstream/cmake-consumer' -B '$work/cmake-$cxx' \
                -DCMAKE_CXX_COMPILER=$cxx -DCMAKE_PREFIX_PATH='$prefix' \
                -DCMAKE_BUILD_RPATH='$libpath' &&
            cmake --build '$work/cmake-$cxx' &&
            '$work/cmake-$cxx/consumer' '$work/cmake.lock'"
    done
    check "CMake find_package etcd consumer (components etcd, etcd_uv)" bash -c "
        cmake -S '$src/tests/downstream/cmake-etcd' -B '$work/cmake-etcd' \
            -DCMAKE_PREFIX_PATH='$prefix' -DCMAKE_BUILD_RPATH='$libpath' &&
        cmake --build '$work/cmake-etcd' && '$work/cmake-etcd/etcd_consumer'"
    check "CMake refuses an incompatible version (0.3)" bash -c "
        mkdir -p '$work/cmake-v' && printf '%s\n' 'cmake_minimum_required(VERSION 3.16)' \
            'project(v CXX)' 'find_package(filelock 0.3 QUIET)' \
            'if(filelock_FOUND)' '  message(FATAL_ERROR \"0.3 accepted\")' 'endif()' \
            > '$work/cmake-v/CMakeLists.txt' &&
        cmake -S '$work/cmake-v' -B '$work/cmake-v/b' -DCMAKE_PREFIX_PATH='$prefix'"
else
    echo "NOT RUN: CMake consumer (cmake not installed)"
fi

# Subproject: the parent installs a program; the libraries go with it.
parent=$work/parent
mkdir -p "$parent/subprojects"
cp "$src/tests/downstream/meson-parent/meson.build" "$parent/"
cp "$src/tests/downstream/consumer.cpp" "$work/"
ln -s "$src" "$parent/subprojects/filelock"
for mode in alone system-wide; do
    pp=$work/parent-prefix-$mode
    env=()
    # With filelock also installed "system-wide" (found through pkg-config),
    # the parent resolves every module the same way.
    [ $mode = system-wide ] && env=(PKG_CONFIG_PATH="$PKG_CONFIG_PATH") || env=(PKG_CONFIG_PATH=)
    check "meson subproject ($mode): configure, build, install" bash -c "
        env ${env[*]} meson setup '$work/pb-$mode' '$parent' --prefix='$pp' -Ddebug=false \
            -Dfilelock:tests=disabled -Dfilelock:docs=disabled -Dfilelock:examples=false \
            -Dfilelock:etcd=disabled -Dfilelock:boost_asio=disabled &&
        ninja -C '$work/pb-$mode' && meson install -C '$work/pb-$mode' --quiet"
    # (system-wide: the libraries are the "system's", where its loader looks)
    check "meson subproject ($mode): the installed program runs" \
        env LD_LIBRARY_PATH="$([ $mode = system-wide ] && echo "$libpath")" \
        "$pp/bin/consumer" "$work/sub-$mode.lock"
done
rm -f "$parent/subprojects/filelock"

[ $failed = 0 ] && echo "downstream: all checks passed" || echo "downstream: FAILED"
exit $failed
