#!/usr/bin/env bash
# Measures nabla against PyTorch eager and JAX jit on the PyTorch-recipe MLP, side by side in one
# run, and prints each figure with nabla's ratio. Not part of CI: it downloads gigabytes.
#
#   benches/peers/run.sh [--steps N] [--batches "128 16"]
#
# The virtualenv lives outside the repository, in $NABLA_PEERS_VENV (default
# ~/.cache/nabla/peers-venv), and is made on first use from requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
steps=200
batches="128 16"
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps="$2"; shift 2 ;;
    --batches) batches="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 1 ;;
  esac
done
venv="${NABLA_PEERS_VENV:-$HOME/.cache/nabla/peers-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet -r benches/peers/requirements.txt
fi
cargo build --release --locked --quiet
nabla=target/release/nabla
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
printf '%-8s %-10s %10s %12s %14s\n' batch peer step_ms samples/s "nabla speed-up"
for batch in $batches; do
  ours=$("$nabla" bench examples/mnist_pytorch_recipe.nn --batch "$batch" --steps "$steps" --json)
  ours_ms=$(echo "$ours" | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["step_ms"])')
  printf '%-8s %-10s %10.3f %12.0f %14s\n' "$batch" nabla "$ours_ms" "$(echo "$batch * 1000 / $ours_ms" | bc -l)" -
  for peer in torch jax; do
    theirs=$("$venv/bin/python" benches/peers/mlp.py --framework "$peer" --batch "$batch" --steps "$steps")
    their_ms=$(echo "$theirs" | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["step_ms"])')
    printf '%-8s %-10s %10.3f %12.0f %13.2fx\n' "$batch" "$peer" "$their_ms" \
      "$(echo "$batch * 1000 / $their_ms" | bc -l)" "$(echo "$their_ms / $ours_ms" | bc -l)"
  done
done
