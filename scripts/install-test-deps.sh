#!/usr/bin/env bash
# Installs what the test suites need on a fresh Debian machine (run as root, or
# with the tools already present): Go, Ruby with the ffi gem and pkg-config (for
# `make test-install`) from Debian's packages; numpy, pytest, jax, safetensors
# and ml_dtypes from pip (jax runs the reference implementation the example
# programs are checked against; ml_dtypes is numpy's bfloat16, for the
# half-precision tests), and setuptools-rust and wheel, with which
# bindings-test/run.sh builds the Python package. Fails loudly if anything is
# missing after.
set -euo pipefail

need_apt=()
command -v go >/dev/null 2>&1 || need_apt+=(golang-go)
command -v ruby >/dev/null 2>&1 || need_apt+=(ruby)
ruby -e 'require "ffi"' >/dev/null 2>&1 || need_apt+=(ruby-ffi)
ruby -e 'require "minitest/autorun"' -e 'exit!(0)' >/dev/null 2>&1 || need_apt+=(ruby-minitest)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing from Debian: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

python3 -c 'import numpy, pytest, jax, safetensors, ml_dtypes, setuptools_rust, wheel' >/dev/null 2>&1 ||
  python3 -m pip install -q --disable-pip-version-check numpy pytest jax safetensors ml_dtypes setuptools-rust wheel

# Verify: a suite that cannot run must fail the test command, never be skipped.
command -v go >/dev/null || { echo "FATAL: go is not installed" >&2; exit 1; }
command -v pkg-config >/dev/null || { echo "FATAL: pkg-config is not installed" >&2; exit 1; }
ruby -e 'require "ffi"; require "minitest"' || { echo "FATAL: ruby with ffi and minitest is not usable" >&2; exit 1; }
python3 -c 'import numpy, pytest, jax, safetensors, ml_dtypes, setuptools_rust, wheel' ||
  { echo "FATAL: numpy/pytest/jax/safetensors/ml_dtypes/setuptools-rust/wheel are not importable" >&2; exit 1; }
echo "test dependencies: go $(go env GOVERSION), ruby $(ruby -e 'print RUBY_VERSION'), numpy $(python3 -c 'import numpy; print(numpy.__version__)')"
