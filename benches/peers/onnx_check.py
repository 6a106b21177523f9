"""Every example model, trained for two steps, exported with `nabla export --format onnx`,
checked by onnx's checker (full_check: types and shapes inferred) and run by onnxruntime on
three rows of inputs; each output must be within 1e-5 of what `nabla predict` says for the same
rows. Prints one line per model and exits 1 on any difference."""

import json
import pathlib
import random
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime

NABLA = pathlib.Path("target/release/nabla")
# Token models: their vocabulary, for drawing valid indices.
VOCAB = {"char_rnn": 76, "gpt_shakespeare": 65}


def nabla(*args):
    return subprocess.run([str(NABLA), *args], check=True, capture_output=True, text=True).stdout


def check(example, work):
    model = f"examples/{example}.nn"
    weights, path, rows_csv = work / f"{example}.safetensors", work / f"{example}.onnx", work / f"{example}.csv"
    nabla("train", model, "--steps", "2", "--quiet", "--save", str(weights))
    info = json.loads(nabla("export", model, "--weights", str(weights), "-o", str(path), "--json"))
    shape = [int(d) for d in info["inputs"][0]["shape"][1:]]
    width = int(np.prod(shape))
    rng = random.Random(example)
    vocab = VOCAB.get(example)
    rows = [[rng.randrange(vocab) if vocab else rng.uniform(-1, 1) for _ in range(width)] for _ in range(3)]
    rows_csv.write_text("\n".join(",".join(str(v) for v in r) for r in rows) + "\n")
    predicted = [json.loads(l)["prediction"] for l in nabla("predict", model, "--weights", str(weights), "--input", str(rows_csv), "--json").splitlines()]
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = np.array(rows, dtype=np.int64 if vocab else np.float32).reshape([3, *shape])
    out = session.run(None, {info["inputs"][0]["name"]: feed})[0].reshape(3, -1)
    diff = float(np.max(np.abs(out - np.array(predicted))))
    print(f"{example:22} {info['bytes'] / 1024:9.1f} KiB  {info['nodes']:5} nodes  max |onnxruntime - nabla| {diff:.2e}")
    return diff <= 1e-5


def main():
    examples = sorted(p.stem for p in pathlib.Path("examples").glob("*.nn"))
    print(f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}")
    with tempfile.TemporaryDirectory() as work:
        failed = [e for e in examples if not check(e, pathlib.Path(work))]
    if failed:
        print("differ:", ", ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
