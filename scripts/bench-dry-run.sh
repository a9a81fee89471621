#!/usr/bin/env bash
# Benchmark (not a test): `migrate --dry-run --json` on generated hosts with 50…400 legacy
# containers. Target: under 1 s for 200 containers, growing linearly.
# Usage: scripts/bench-dry-run.sh [sizes…]   (needs hyperfine: apt-get install hyperfine)
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("${@:-50 100 200 400}")
cargo build --release --quiet
bin=$PWD/target/release/nixos-nspawn
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for n in ${sizes[@]}; do
  python3 scripts/gen-legacy-host.py "$n" "$work/h$n"
done
args=()
for n in ${sizes[@]}; do
  args+=(-n "$n containers" "$bin --root $work/h$n migrate --dry-run --json >/dev/null; test \$? -le 3")
done
hyperfine --warmup 2 --min-runs 5 --export-markdown "$work/result.md" "${args[@]}"
cat "$work/result.md"
