#!/usr/bin/env bash
# Builds what the GPU machine runs (it has no Rust): libcudann.so, the cudann
# command and the test binaries, copied into .device/ (git-ignored; carried by
# the device tool).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
cargo test --release --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] in (["test"], ["lib"], ["cdylib", "rlib"]):
        print(m["target"]["name"], m["executable"])' > /tmp/cudann-tests.txt
# Staged beside .device and swapped in at the end, so a bundle being carried
# to the device is never half written.
rm -rf .device.next && mkdir -p .device.next/tests
cp target/release/libcudann.so target/release/cudann .device.next/
# (the header test reads the source tree, and the cli test runs the cudann
# command, by their build-time paths: not on the device; device-run.sh runs it)
grep -v "^header \|^cli " /tmp/cudann-tests.txt | while read -r name exe; do cp "$exe" ".device.next/tests/$name"; done
# Each test binary embeds the PTX: packed, they stay far under the 64 MiB the
# device tool carries (scripts/device-run.sh unpacks them).
strip .device.next/tests/* .device.next/libcudann.so .device.next/cudann
tar -C .device.next -cJf .device.next/tests.tar.xz tests && rm -r .device.next/tests
for ignored in /.device/ /.device.next/; do grep -qx "$ignored" .git/info/exclude || echo "$ignored" >> .git/info/exclude; done
rm -rf .device && mv .device.next .device
du -sh .device
