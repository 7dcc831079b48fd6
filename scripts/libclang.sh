#!/usr/bin/env bash
# Is there a libclang that bindgen (clang-sys, used by highs-sys) can load?
# Usage: scripts/libclang.sh [ROOT]   (ROOT prefixes every searched path; default /)
# Prints the first usable library and exits 0, or prints "missing" and exits 1.
# clang-sys loads libclang.so, libclang.so.N or libclang-N.so(.M); libclang-cpp.so.N is a
# different library (the C++ API) that Debian images often ship alone, so it never counts.
set -euo pipefail
root="${1:-}"
root="${root%/}"
shopt -s nullglob
dirs=()
[ -n "${LIBCLANG_PATH:-}" ] && [ -z "$root" ] && dirs+=("$LIBCLANG_PATH")
dirs+=("$root"/usr/lib/llvm-*/lib "$root"/usr/lib/*-linux-gnu "$root"/usr/lib64 "$root"/usr/lib \
  "$root"/usr/local/lib "$root"/usr/local/lib64)
for d in "${dirs[@]}"; do
  for f in "$d"/libclang*.so*; do
    name="${f##*/}"
    case "$name" in
      libclang.so | libclang.so.* | libclang-[0-9]*.so | libclang-[0-9]*.so.*)
        if [ -e "$f" ]; then
          echo "$f"
          exit 0
        fi
        ;;
    esac
  done
done
echo "missing"
exit 1
