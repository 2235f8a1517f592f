# cudann: build, demo, tests, header, benchmarks. See README.md.
LIBDIR := $(CURDIR)/target/release
LIB    := $(LIBDIR)/libcudann.so
CWARN  := -Wall -Wextra -Werror -pedantic

.PHONY: build pkgconfig-uninstalled install uninstall test-install demo examples train-example generate-example test test-examples test-contract fuzz sanitize test-rust test-bindings test-ptx deps header ptx bench limits
.DEFAULT_GOAL := build

# The crate's version (Cargo.toml) names the installed file: libcudann.so.0.1.0,
# with the soname libcudann.so.0 (build.rs) that programs linked to it load.
VERSION     := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
DESCRIPTION := $(shell sed -n 's/^description = "\(.*\)"/\1/p' Cargo.toml | head -1)
MAJOR       := $(firstword $(subst ., ,$(VERSION)))
SONAME      := libcudann.so.$(MAJOR)

# The library, the soname link that programs linked against the build tree load,
# the `cudann` command (target/release/cudann), and the uninstalled pkg-config file.
build: pkgconfig-uninstalled
	cargo build --release
	ln -sf libcudann.so $(LIBDIR)/$(SONAME)

# target/release/pkgconfig/cudann-uninstalled.pc: `PKG_CONFIG_PATH=target/release/pkgconfig
# pkg-config --cflags --libs cudann` then builds against this tree (pkg-config prefers it).
pkgconfig-uninstalled:
	mkdir -p $(LIBDIR)/pkgconfig
	sed -e 's|@prefix@|$(CURDIR)|' -e 's|@libdir@|$${prefix}/target/release|' -e 's|@includedir@|$${prefix}/include|' \
	  -e 's|@description@|$(DESCRIPTION)|' -e 's|@version@|$(VERSION)|' cudann.pc.in > $(LIBDIR)/pkgconfig/cudann-uninstalled.pc

# `make install PREFIX=/usr DESTDIR=/tmp/stage`; `make uninstall` with the same
# variables removes exactly what it installed. Builds first if nothing is built.
PREFIX  ?= /usr/local
DESTDIR ?=
INSTALL_LIB := $(DESTDIR)$(PREFIX)/lib
INSTALL_INC := $(DESTDIR)$(PREFIX)/include
INSTALLED   := $(INSTALL_LIB)/libcudann.so.$(VERSION) $(INSTALL_LIB)/$(SONAME) $(INSTALL_LIB)/libcudann.so \
               $(INSTALL_INC)/cudann.h $(INSTALL_LIB)/pkgconfig/cudann.pc

$(LIB):
	$(MAKE) --no-print-directory build

install: $(LIB)
	install -d $(INSTALL_LIB)/pkgconfig $(INSTALL_INC)
	install -m 755 $(LIB) $(INSTALL_LIB)/libcudann.so.$(VERSION)
	ln -sf libcudann.so.$(VERSION) $(INSTALL_LIB)/$(SONAME)
	ln -sf $(SONAME) $(INSTALL_LIB)/libcudann.so
	install -m 644 include/cudann.h $(INSTALL_INC)/cudann.h
	sed -e 's|@prefix@|$(PREFIX)|' -e 's|@libdir@|$${prefix}/lib|' -e 's|@includedir@|$${prefix}/include|' \
	  -e 's|@description@|$(DESCRIPTION)|' -e 's|@version@|$(VERSION)|' cudann.pc.in > $(INSTALL_LIB)/pkgconfig/cudann.pc
	@# A system directory (no DESTDIR) needs the loader's cache refreshed, where one can.
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && command -v ldconfig >/dev/null; then ldconfig; fi

uninstall:
	rm -f $(INSTALLED)

# Installs into a temporary DESTDIR, builds README's C quick start against the
# installed copy with pkg-config, runs it, checks the soname, uninstalls.
test-install: build
	scripts/test-install.sh

# Builds the library and a small C program that calls it, then runs the program.
demo: build
	cc -std=c11 $(CWARN) -Iinclude examples/demo.c -L$(LIBDIR) -lcudann -Wl,-rpath,$(LIBDIR) -lm -o target/demo
	./target/demo

# The example programs of MODEL.md: train_moe and generate_moe (C, cudann only).
EXAMPLES := $(CURDIR)/target/examples
examples: build
	mkdir -p $(EXAMPLES)
	for prog in train_moe generate_moe; do \
	  cc -std=c11 -O2 $(CWARN) -Iinclude examples/$$prog.c examples/moe_model.c -L$(LIBDIR) -lcudann -Wl,-rpath,$(LIBDIR) -lm -o $(EXAMPLES)/$$prog || exit 1; \
	done

# Train the tiny model of MODEL.md on a generated dataset, then generate from it.
train-example: examples
	python3 examples/make_data.py --vocab 1000 --tokens 50000 --out target/tiny.bin
	$(EXAMPLES)/train_moe --config examples/tiny/config.json --seed 1 --data target/tiny.bin \
	  --batch 8 --seq 64 --steps 300 --lr 3e-3 --log target/tiny-train.jsonl --save target/tiny-model

generate-example: examples
	$(EXAMPLES)/generate_moe --model target/tiny-model --prompt "0" --max-new 20

# Everything: installs missing tools, then the Rust suite, every language suite,
# the check that the committed PTX is what the kernel sources give, and
# `make install` into a temporary directory.
test: deps test-rust test-bindings test-ptx test-examples test-contract test-install

deps:
	scripts/install-test-deps.sh

test-rust:
	cargo test --release

test-bindings: build
	bindings-test/run.sh

# Regenerates kernels/ptx from kernels/*.cu (NVRTC 12.4 from pip; no GPU needed).
ptx:
	python3 scripts/gen-ptx.py

# The example programs against the JAX float64 reference of MODEL.md.
test-examples: examples
	python3 tests/reference/check_examples.py

# The fuzz targets' contract checks on stable, for a bounded time: random calls
# of every entry point on two threads, and damaged safetensors files.
test-contract:
	cargo run --release --manifest-path fuzz/Cargo.toml --bin contract -- 60 2

# Coverage-guided fuzzing with libFuzzer (nightly and cargo-fuzz:
# `cargo install cargo-fuzz`), FUZZ_SECONDS per target, two workers.
FUZZ_SECONDS ?= 600
fuzz:
	for target in abi safetensors; do \
	  mkdir -p fuzz/corpus/$$target && \
	  cargo +nightly fuzz run --release --sanitizer none --features libfuzzer $$target fuzz/corpus/$$target -- \
	    -max_total_time=$(FUZZ_SECONDS) -fork=2 -rss_limit_mb=4096 || exit 1; \
	done

# AddressSanitizer over the Rust suite (nightly; out_of_memory and retention
# measure the process's memory, which ASan's allocator changes, so they are
# left to the plain run; tests/simd.rs runs the op suites at every SIMD level;
# allocator_may_return_null: a request past ASan's limit must fail as -4, as
# the ABI says, not abort).
# Then the C binding test against the library built with ASan, at every level:
# the test is compiled plainly and linked with the nightly toolchain's own ASan
# runtime, the one for the LLVM that instrumented the library (it ships only as
# a static archive, which must be in the executable; -rdynamic lets the library
# bind to it). gcc's -fsanitize=address would load gcc's libasan instead, from
# an older LLVM: it works today, but nothing keeps it in step with rustc's.
# Then valgrind memcheck on the C binding test (errors and definite leaks) at
# the scalar and AVX2 levels (valgrind does not emulate AVX-512, so CUDANN_SIMD
# pins the level), and on the example programs (errors; they keep their
# buffers until exit by design), which run AVX2 there.
SAN_TESTS := $(filter-out out_of_memory retention,$(basename $(notdir $(wildcard tests/*.rs))))
ASAN_LIB  := $(CURDIR)/target/asan/x86_64-unknown-linux-gnu/release
ASAN_RT    = $(shell rustc +nightly --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/lib/librustc-nightly_rt.asan.a
sanitize: examples
	RUSTFLAGS=-Zsanitizer=address RUSTDOCFLAGS=-Zsanitizer=address ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
	  cargo +nightly test --release --target x86_64-unknown-linux-gnu --target-dir target/asan --lib $(addprefix --test ,$(SAN_TESTS))
	RUSTFLAGS=-Zsanitizer=address cargo +nightly build --release --target x86_64-unknown-linux-gnu --target-dir target/asan --lib
	ln -sf libcudann.so $(ASAN_LIB)/$(SONAME)
	mkdir -p bindings-test/c/build
	cc -std=c11 $(CWARN) -Iinclude bindings-test/c/test_c.c -L$(ASAN_LIB) -lcudann -Wl,-rpath,$(ASAN_LIB) \
	  -Wl,--whole-archive $(ASAN_RT) -Wl,--no-whole-archive -rdynamic -lm -o bindings-test/c/build/test_c_asan
	for level in scalar avx2 avx512; do \
	  CUDANN_SIMD=$$level ASAN_OPTIONS=detect_leaks=1 bindings-test/c/build/test_c_asan || exit 1; \
	done
	cc -std=c11 $(CWARN) -Iinclude bindings-test/c/test_c.c -L$(LIBDIR) -lcudann -Wl,-rpath,$(LIBDIR) -lm -o bindings-test/c/build/test_c
	for level in scalar avx2; do \
	  CUDANN_SIMD=$$level valgrind --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite bindings-test/c/build/test_c || exit 1; \
	done
	python3 examples/make_data.py --vocab 1000 --tokens 4000 --out target/valgrind.bin
	valgrind --error-exitcode=9 $(EXAMPLES)/train_moe --config examples/tiny/config.json --seed 1 --data target/valgrind.bin \
	  --batch 2 --seq 16 --steps 2 --lr 1e-3 --save target/valgrind-model
	valgrind --error-exitcode=9 $(EXAMPLES)/generate_moe --model target/valgrind-model --prompt "1 2" --max-new 4 --temperature 0.8 --top-k 5

test-ptx:
	python3 scripts/gen-ptx.py --check

# Refreshes include/cudann.h from the Rust source (the header test fails until you do).
header:
	CUDANN_BLESS_HEADER=1 cargo test --release --test header

# The largest-size tests (tensors past 2^31 elements; 9 GiB of memory).
limits:
	cargo test --release --test limits -- --ignored

bench: build
	python3 bench/cpu_bench.py
