#!/usr/bin/env bash
# Measures nabla against PyTorch eager and JAX jit on every workload of the performance goals,
# side by side in one run (compare.py), and prints one table with nabla's ratios. Not part of
# CI: it downloads gigabytes.
#
#   benches/peers/run.sh [--steps N] [--rounds K] [--isa avx2|baseline]
#
# --isa runs nabla as on a lesser CPU (NABLA_ISA), the peers as they are; --rounds K measures
# every workload K times and gives median ratios with their range (compare.py).
#
# The virtualenv lives outside the repository (benches/peers/venv.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
steps=200
rounds=1
isa=()
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps="$2"; shift 2 ;;
    --isa) isa=(--isa "$2"); shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 1 ;;
  esac
done
source benches/peers/venv.sh
cargo build --release --locked --quiet
"$venv/bin/python" benches/peers/compare.py --steps "$steps" --rounds "$rounds" "${isa[@]}"
