#!/usr/bin/env bash
# The main job: build jigsaw and start a local cluster on loopback: 4 agent processes x 4
# simulated H100s (no GPU needed), a Raft-elected coordinator, mutual TLS from a fresh CA,
# the three example apps registered (synthetic profiles) and their plan applied on every
# node; then print the cluster status and send 30 s of open-loop load (200 req/s, Poisson)
# to the traffic app through every agent's KServe v2 HTTP API, reporting every request's
# outcome. The cluster keeps running: inspect it with `jigsaw status`, stop it with
# `jigsaw down` (commands printed at the end).
# Extra arguments go to `jigsaw up` (e.g. --nodes 8 --gpus-per-node 2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
source scripts/env.sh
dir="${JIGSAW_DIR:-${TMPDIR:-/tmp}/jigsaw-local}"
# A release build: the figures the demo prints are the ones an operator would see (a debug
# build adds stale drops under load that the release build does not have).
echo "== cargo build --release -p jigsaw-cli (first run on 2 cores: see README, \"Two commands\")"
cargo build --locked --release -q -p jigsaw-cli --bin jigsaw
bin="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/jigsaw"
if [ -f "$dir/cluster.json" ]; then
  echo "== stopping the previous local cluster in $dir"
  "$bin" down --dir "$dir"
fi
echo "== jigsaw up --dir $dir $*"
"$bin" up --dir "$dir" "$@"
echo "== jigsaw status --dir $dir"
"$bin" status --dir "$dir"
echo "== jigsaw load --app traffic --rps 200 --duration ${JIGSAW_LOAD_DURATION:-30s} --dir $dir"
"$bin" load --app traffic --rps 200 --duration "${JIGSAW_LOAD_DURATION:-30s}" --dir "$dir"
echo
echo "The cluster is running. Try: $bin status --dir $dir"
echo "                             $bin load --app social --rps 100 --duration 10s --dir $dir"
echo "                             $bin down --dir $dir"
