#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build jigsaw: cmake, a C++ compiler
# and libclang-dev (HiGHS is compiled from C++ source and bound with bindgen), ccache
# (rebuilds of HiGHS in minutes instead of ~7) and python3 (the scripts use it). Needs root
# or sudo only when something is missing. `scripts/libclang.sh` decides about libclang (and
# is tested against fake trees: tests/tests/scripts.rs). `--test` also installs what the
# tests need (python3-prometheus-client, whose OpenMetrics parser checks /metrics; systemd,
# whose systemd-analyze verifies the unit; chromium, which renders the status page; tritonclient from PyPI in $JIGSAW_VENV, default
# ~/.cache/jigsaw/venv, as a real KServe v2 client).
set -euo pipefail
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v ccache >/dev/null 2>&1 || missing+=(ccache)
command -v c++ >/dev/null 2>&1 || missing+=(g++)          # HiGHS is C++
command -v python3 >/dev/null 2>&1 || missing+=(python3)  # the scripts read cargo metadata with it
# The tests parse /metrics with the reference Python client's OpenMetrics parser and verify
# the systemd unit with systemd-analyze.
if [ "${1:-}" = "--test" ]; then
  python3 -c 'import prometheus_client' >/dev/null 2>&1 ||
    /usr/bin/python3 -c 'import prometheus_client' >/dev/null 2>&1 || missing+=(python3-prometheus-client)
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)  # verifies deploy/jigsaw-agent.service
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)          # renders the status page
  # A real KServe client (NVIDIA's tritonclient, PyPI) in a venv of its own.
  venv="${JIGSAW_VENV:-$HOME/.cache/jigsaw/venv}"
  if ! "$venv/bin/python" -c 'import tritonclient.http, tritonclient.grpc' >/dev/null 2>&1; then
    need_venv=1
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
  fi
fi
# bindgen needs libclang.so itself; libclang-cpp (often shipped alone) does not count.
bash "$(dirname "$0")/libclang.sh" >/dev/null || missing+=(libclang-dev)
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ -n "${need_venv:-}" ]; then
  echo "installing tritonclient[http,grpc] into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'tritonclient[http,grpc]==2.73.0'
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
