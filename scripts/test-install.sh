#!/usr/bin/env bash
# `make test-install`: installs into a temporary DESTDIR, builds README.md's C
# quick start (between the c-quickstart markers) with pkg-config against the
# installed copy, runs it, checks the layout and the soname, then uninstalls
# and checks nothing is left. Also builds it against the build tree through
# target/release/pkgconfig/cudann-uninstalled.pc. Run `make build` first.
set -euo pipefail
cd "$(dirname "$0")/.."
MAKE=${MAKE:-make}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
SONAME=libcudann.so.${VERSION%%.*}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "test-install: FAILED: $*" >&2; exit 1; }

prefix=/opt/cudann
dest=$tmp/dest
lib=$dest$prefix/lib
"$MAKE" --no-print-directory -s install PREFIX=$prefix DESTDIR="$dest"

# The layout: the versioned file, its two links, the header, the .pc file.
[ -f "$lib/libcudann.so.$VERSION" ] && [ ! -L "$lib/libcudann.so.$VERSION" ] || fail "no $lib/libcudann.so.$VERSION"
[ "$(readlink "$lib/$SONAME")" = "libcudann.so.$VERSION" ] || fail "$SONAME should link to libcudann.so.$VERSION"
[ "$(readlink "$lib/libcudann.so")" = "$SONAME" ] || fail "libcudann.so should link to $SONAME"
cmp -s include/cudann.h "$dest$prefix/include/cudann.h" || fail "include/cudann.h not installed"
# Outputs are read whole before grep: under pipefail, `cmd | grep -q` fails at
# random when grep exits at its match and cmd then takes SIGPIPE.
dynamic=$(readelf -d "$lib/libcudann.so.$VERSION")
grep -qF "Library soname: [$SONAME]" <<< "$dynamic" || fail "soname is not $SONAME"
grep -qx "prefix=$prefix" "$lib/pkgconfig/cudann.pc" || fail "cudann.pc does not name prefix=$prefix"
grep -qx "Version: $VERSION" "$lib/pkgconfig/cudann.pc" || fail "cudann.pc does not say Version: $VERSION"

# README's quick start against the installed copy: pkg-config reads the .pc
# file under DESTDIR (the sysroot maps its /opt/cudann paths there).
sed -n '/<!-- c-quickstart -->/,/<!-- \/c-quickstart -->/p' README.md | grep -v '^<!--\|^```' > "$tmp/quickstart.c"
[ "$(wc -l < "$tmp/quickstart.c")" -ge 3 ] || fail "no C quick start between the c-quickstart markers of README.md"
flags=$(PKG_CONFIG_PATH="$lib/pkgconfig" PKG_CONFIG_LIBDIR="$lib/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$dest" pkg-config --cflags --libs cudann | sed "s/ *$//")
[ "$flags" = "-I$dest$prefix/include -L$lib -lcudann" ] || fail "pkg-config gives '$flags'"
# shellcheck disable=SC2086  # the flags are words
cc -std=c11 -Wall -Wextra -Werror -pedantic "$tmp/quickstart.c" $flags -o "$tmp/quickstart"
dynamic=$(readelf -d "$tmp/quickstart")
grep -qF "Shared library: [$SONAME]" <<< "$dynamic" || fail "the program does not need $SONAME"
loads=$(LD_LIBRARY_PATH=$lib ldd "$tmp/quickstart")
grep -qF "$SONAME => $lib/$SONAME" <<< "$loads" || fail "the program does not load the installed copy; ldd says: $loads"
out=$(LD_LIBRARY_PATH=$lib "$tmp/quickstart")
echo "quick start (installed): $out"
[[ $out == "cudann $VERSION ("*"): silu(1) = 0.7311" ]] || fail "unexpected output: $out"

# The same program against the build tree (the uninstalled .pc file).
uflags=$(PKG_CONFIG_PATH=target/release/pkgconfig PKG_CONFIG_LIBDIR=target/release/pkgconfig pkg-config --cflags --libs cudann | sed "s/ *$//")
[ "$uflags" = "-I$PWD/include -L$PWD/target/release -lcudann" ] || fail "cudann-uninstalled.pc gives '$uflags'"
# shellcheck disable=SC2086
cc -std=c11 "$tmp/quickstart.c" $uflags -Wl,-rpath,"$PWD/target/release" -o "$tmp/quickstart-tree"
out=$("$tmp/quickstart-tree")
[[ $out == *"silu(1) = 0.7311" ]] || fail "unexpected output against the build tree: $out"

"$MAKE" --no-print-directory -s uninstall PREFIX=$prefix DESTDIR="$dest"
left=$(find "$dest" -not -type d)
[ -z "$left" ] || fail "left after make uninstall: $left"
echo "test-install: OK (install, pkg-config, quick start, soname, uninstall)"
