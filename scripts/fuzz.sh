#!/usr/bin/env bash
# Fuzz the wire-frame decoder for a bounded time (default 30 s; FUZZ_SECONDS overrides).
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz@0.13.2
cd protocol
# fuzz/regressions holds inputs that once failed; they seed every run.
mkdir -p fuzz/corpus/decode_frame
# A fixed libFuzzer seed keeps CI reproducible; FUZZ_SEED=0 lets libFuzzer pick one.
RUSTC_BOOTSTRAP=1 cargo fuzz run decode_frame fuzz/corpus/decode_frame fuzz/regressions -- \
  -max_total_time="${FUZZ_SECONDS:-30}" -seed="${FUZZ_SEED:-1}"
