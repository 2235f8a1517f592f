#!/usr/bin/env bash
# Runs every language binding suite against target/release/libcudann.so:
# C, C++, Python (ctypes), Go (cgo) and Ruby (FFI). Builds only the C/C++ test
# programs (run `make build` first for the library). A missing tool fails its
# suite loudly; nothing is ever skipped. Exit status is non-zero if any suite failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HERE="$ROOT/bindings-test"
LIBDIR="$ROOT/target/release"
cd "$ROOT"

if [ ! -f "$LIBDIR/libcudann.so" ]; then
  echo "FATAL: $LIBDIR/libcudann.so is missing; run 'make build' (cargo build --release) first" >&2
  exit 1
fi

CWARN=(-Wall -Wextra -Werror -pedantic)
# $ORIGIN keeps the test binaries working wherever the clone lives.
LINK=(-I"$ROOT/include" -L"$LIBDIR" -lcudann '-Wl,-rpath,$ORIGIN/../../../target/release')
BUILD="$HERE/c/build"

need() { # command, what it is for
  command -v "$1" >/dev/null 2>&1 || { echo "FATAL: '$1' is not installed ($2); run scripts/install-test-deps.sh" >&2; return 1; }
}

# Each suite returns non-zero on any failure (commands chained with &&, since
# errexit does not apply inside a function called from a condition).
suite_c() {
  need gcc "C compiler" &&
    mkdir -p "$BUILD" &&
    gcc -std=c11 "${CWARN[@]}" "$HERE/c/test_c.c" "${LINK[@]}" -lm -o "$BUILD/test_c" &&
    "$BUILD/test_c"
}

suite_cpp() {
  need g++ "C++ compiler" &&
    mkdir -p "$BUILD" &&
    g++ -std=c++17 "${CWARN[@]}" "$HERE/c/test_cpp.cpp" "${LINK[@]}" -o "$BUILD/test_cpp" &&
    "$BUILD/test_cpp"
}

suite_python() {
  need python3 "Python suite" &&
    { python3 -c 'import numpy, pytest' || { echo "FATAL: numpy and pytest must be importable" >&2; return 1; }; } &&
    python3 -m pytest -q -p no:cacheprovider "$HERE/python"
}

suite_go() {
  need go "Go suite" || return 1
  export GOTOOLCHAIN=local GOPROXY=off GOFLAGS=  # never download a toolchain or a module
  if [ -z "${HOME:-}" ] || [ ! -w "${HOME:-/nonexistent}" ]; then
    export GOPATH=/tmp/cudann-gopath GOCACHE=/tmp/cudann-gocache
  fi
  (cd "$HERE/go" && go vet ./... && go test -count=1 ./...)
}

suite_ruby() {
  need ruby "Ruby suite" &&
    { ruby -e 'require "ffi"; require "minitest"' || { echo "FATAL: the ruby ffi and minitest gems are required" >&2; return 1; }; } &&
    ruby -w "$HERE/ruby/test_cudann.rb"
}

passed=0
failed=()
for name in c cpp python go ruby; do
  echo "=== $name"
  if "suite_$name"; then
    passed=$((passed + 1))
  else
    echo "--- $name suite FAILED" >&2
    failed+=("$name")
  fi
done

[ ${#failed[@]} -eq 0 ] || echo "failed suites: ${failed[*]}" >&2
echo "bindings: $passed passed, ${#failed[@]} failed"
[ ${#failed[@]} -eq 0 ]
