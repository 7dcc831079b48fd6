#!/usr/bin/env bash
# The main job: build jigsaw and plan the example applications on 4 simulated H100s
# (synthetic profiles; no GPU needed). Extra arguments go to `jigsaw demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
source scripts/env.sh
cargo run --locked -q -p jigsaw-agent --bin jigsaw -- demo "$@"
