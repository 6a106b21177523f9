#!/usr/bin/env bash
# Exports every example model to ONNX and runs it in onnxruntime (after onnx's own checker),
# comparing its outputs with `nabla predict` on the same rows (onnx_check.py). Not part of CI,
# which checks the same files with tract (tests/export.rs); this adds the runtime most
# deployments use.
#
#   benches/peers/onnx.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
source benches/peers/venv.sh
cargo build --release --locked --quiet
"$venv/bin/python" benches/peers/onnx_check.py
