# cudann: build, demo, tests, header, benchmarks. See README.md.
LIBDIR := $(CURDIR)/target/release
LIB    := $(LIBDIR)/libcudann.so
CWARN  := -Wall -Wextra -Werror -pedantic

.PHONY: build demo test test-rust test-bindings deps header bench
.DEFAULT_GOAL := build

build:
	cargo build --release

# Builds the library and a small C program that calls it, then runs the program.
demo: build
	cc -std=c11 $(CWARN) -Iinclude examples/demo.c -L$(LIBDIR) -lcudann -Wl,-rpath,$(LIBDIR) -lm -o target/demo
	./target/demo

# Everything: installs missing tools, then the Rust suite and every language suite.
test: deps test-rust test-bindings

deps:
	scripts/install-test-deps.sh

test-rust:
	cargo test --release

test-bindings: build
	bindings-test/run.sh

# Refreshes include/cudann.h from the Rust source (the header test fails until you do).
header:
	CUDANN_BLESS_HEADER=1 cargo test --release --test header

bench: build
	python3 bench/cpu_bench.py
