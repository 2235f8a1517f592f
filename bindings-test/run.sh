#!/usr/bin/env bash
# Runs every language binding suite against target/release/libcudann.so:
# C, C++, and the suites of the Python package (python/, ctypes), the Go module
# (go/, cgo) and the Ruby gem (ruby/, FFI). Builds the C/C++ test programs and
# the Python package (run `make build` first for the library). A missing tool
# fails its suite loudly; nothing is skipped but the tests of optional pieces,
# visibly (a GPU, torch/CuPy, Numo; the README comparison in the installed gem,
# which has no checkout around it). Exit status is non-zero if any suite failed.
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

# The Python package (python/): built and installed as a user would (pip builds
# the crate with cargo through setuptools-rust and bundles libcudann.so and
# cudann.h), into a temporary --target directory; python/tests then import it
# from there. Cargo runs under flock on $CARGO_LOCK (shared with other builds)
# and reuses $CARGO_TARGET_DIR (default: this checkout's target/).
suite_python() {
  need python3 "Python suite" && need cargo "building the Python package" && need flock "the cargo lock" &&
    { python3 -c 'import numpy, pytest, setuptools_rust, wheel' ||
      { echo "FATAL: numpy, pytest, setuptools-rust and wheel must be importable" >&2; return 1; }; } || return 1
  local site status start
  site="$(mktemp -d "${TMPDIR:-/tmp}/cudann-python.XXXXXX")"
  start=$SECONDS
  flock "${CARGO_LOCK:-/tmp/cargo.lock}" env CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}" \
    python3 -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps --target "$site" "$ROOT/python" &&
    echo "cudann package built and installed in $((SECONDS - start))s" &&
    (cd "$site" && CUDANN_TEST_SITE="$site" PYTHONPATH="$site" python3 -m pytest -q -rs -p no:cacheprovider "$ROOT/python/tests")
  status=$?
  rm -rf "$site" "$ROOT/python/build" "$ROOT/python/cudann.egg-info"
  return $status
}

# Go and Ruby run the packages' own suites (go/, ruby/): the tests there are
# the binding tests.
suite_go() {
  need go "Go suite" || return 1
  export GOTOOLCHAIN=local GOPROXY=off GOFLAGS=  # never download a toolchain or a module
  if [ -z "${HOME:-}" ] || [ ! -w "${HOME:-/nonexistent}" ]; then
    export GOPATH=/tmp/cudann-gopath GOCACHE=/tmp/cudann-gocache
  fi
  # The uninstalled build tree: no pkg-config, the header and library from here.
  (cd "$ROOT/go" || exit 1
    export CGO_CFLAGS="-I$ROOT/include" CGO_LDFLAGS="-L$LIBDIR -Wl,-rpath,$LIBDIR"
    unformatted="$(gofmt -l .)"
    if [ -n "$unformatted" ]; then echo "FATAL: not gofmt-clean: $unformatted" >&2; exit 1; fi
    go vet -tags cudann_nopkgconfig ./... && go test -tags cudann_nopkgconfig -count=1 ./...) &&
  # The default build, through pkg-config: the uninstalled cudann.pc `make build` writes.
  (cd "$ROOT/go" && PKG_CONFIG_PATH="$LIBDIR/pkgconfig" LD_LIBRARY_PATH="$LIBDIR" go test -count=1 ./...)
}

# The gem's suite from the source, then the gem built, installed into a
# scratch directory, and its installed copy's suite.
ruby_tests() { # directory holding lib/ and test/
  (cd "$1" && CUDANN_LIB="$LIBDIR/libcudann.so" ruby -w -Ilib -e 'Dir["test/test_*.rb"].sort.each { |f| require File.expand_path(f) }')
}

suite_ruby() {
  need ruby "Ruby suite" && need gem "Ruby gem build" || return 1
  { ruby -e 'require "ffi"; require "minitest"' || { echo "FATAL: the ruby ffi and minitest gems are required" >&2; return 1; }; } || return 1
  local scratch
  scratch="$(mktemp -d)" || return 1
  ruby_tests "$ROOT/ruby" &&
    (cd "$ROOT/ruby" && gem build cudann.gemspec --output "$scratch/cudann.gem") &&
    # --ignore-dependencies: with --install-dir, RubyGems resolves dependencies
    # only inside that directory, so the ffi gem installed on the system (e.g.
    # Debian's ruby-ffi) does not count and nothing may be downloaded; the
    # tests below load that ffi.
    gem install --local --ignore-dependencies --no-document --install-dir "$scratch/gemhome" "$scratch/cudann.gem" &&
    ruby_tests "$(ls -d "$scratch"/gemhome/gems/cudann-*)"
  local rc=$?
  rm -rf "$scratch"
  return $rc
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
