"""The models of nabla's performance goals in PyTorch eager or JAX jit: the PyTorch-recipe MLP
(784-512-256-10, ReLU, cross-entropy, SGD lr 0.01 momentum 0.9) and the tiny 2-16-16-2 model, on
synthetic data of their shapes: compile time and train-step time, as one JSON object with the
keys `nabla bench --json` prints. With `--mnist DIR`, PyTorch instead trains the recipe for 5
epochs on the real data (as `nabla train examples/mnist_pytorch_recipe.nn` does) and reports its
test accuracy, time and peak memory."""

import argparse
import gzip
import json
import os
import resource
import time

SIZES = {"mlp": [784, 512, 256, 10], "tiny": [2, 16, 16, 2], "cnn": "cnn", "cnn_bn": "cnn_bn"}


def torch_model(sizes):
    import torch

    layers = []
    for fan_in, fan_out in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def torch_cnn(batch_norm=False):
    """`examples/mnist_cnn.nn` in PyTorch (with `batch_norm`, `examples/mnist_cnn_bn.nn`)."""
    import torch

    nn = torch.nn
    norm = (lambda c: [nn.BatchNorm2d(c)]) if batch_norm else (lambda c: [])
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2), *norm(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2), *norm(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(128, 10),
    )


def torch_steps(sizes, batch, steps, warmup):
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    if sizes in ("cnn", "cnn_bn"):
        model = torch_cnn(sizes == "cnn_bn")
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = torch.randn(batch, 1, 28, 28)
        y = torch.randint(0, 10, (batch,))
    else:
        model = torch_model(sizes)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(batch, sizes[0])
        y = torch.randint(0, sizes[-1], (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    return 0.0, time_steps(step, steps, warmup)


def jax_steps(sizes, batch, steps, warmup):
    import jax
    import jax.numpy as jnp

    key = jax.random.PRNGKey(0)
    params = []
    for fan_in, fan_out in zip(sizes, sizes[1:]):
        key, kw, kb = jax.random.split(key, 3)
        bound = 1.0 / fan_in ** 0.5
        params.append((
            jax.random.uniform(kw, (fan_in, fan_out), minval=-bound, maxval=bound),
            jax.random.uniform(kb, (fan_out,), minval=-bound, maxval=bound),
        ))
    momentum = jax.tree_util.tree_map(jnp.zeros_like, params)
    x = jax.random.normal(key, (batch, sizes[0]))
    y = jax.random.randint(key, (batch,), 0, sizes[-1])

    def loss_fn(params):
        h = x
        for i, (w, b) in enumerate(params):
            h = h @ w + b
            if i + 1 < len(params):
                h = jax.nn.relu(h)
        logp = jax.nn.log_softmax(h)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    @jax.jit
    def train_step(params, momentum):
        grads = jax.grad(loss_fn)(params)
        momentum = jax.tree_util.tree_map(lambda v, g: 0.9 * v + g, momentum, grads)
        params = jax.tree_util.tree_map(lambda p, v: p - 0.01 * v, params, momentum)
        return params, momentum

    started = time.perf_counter()
    params, momentum = train_step(params, momentum)
    jax.block_until_ready(params)
    compile_s = time.perf_counter() - started
    state = [params, momentum]

    def step():
        state[0], state[1] = train_step(state[0], state[1])
        jax.block_until_ready(state[0])

    return compile_s, time_steps(step, steps, warmup)


def time_steps(step, steps, warmup):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return times


def idx(path):
    """An IDX file (gzipped) as a numpy array."""
    import numpy as np

    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def torch_mnist(directory, epochs, seed, model_name):
    """The recipe on real MNIST, as `examples/mnist_pytorch_recipe.nn` (or, for the CNN,
    `examples/mnist_cnn.nn`) trains it."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count())
    started = time.perf_counter()
    load = lambda name: torch.from_numpy(idx(os.path.join(directory, name)).copy())
    shape = (-1, 1, 28, 28) if model_name.startswith("cnn") else (-1, 784)
    x = load("train-10k-images-idx3-ubyte.gz").reshape(shape).float() / 255
    y = load("train-10k-labels-idx1-ubyte.gz").long()
    tx = load("t10k-images-idx3-ubyte.gz").reshape(shape).float() / 255
    ty = load("t10k-labels-idx1-ubyte.gz").long()
    if model_name.startswith("cnn"):
        model, batch = torch_cnn(model_name == "cnn_bn"), 64
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        model, batch = torch_model(SIZES["mlp"]), 128
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x), batch):
            rows = order[i: i + batch]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[rows]), y[rows]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(tx).argmax(1) == ty).float().mean().item()
    print(json.dumps({
        "framework": "torch",
        "test_accuracy": accuracy,
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--framework", choices=["torch", "jax"], required=True)
    parser.add_argument("--model", choices=sorted(SIZES), default="mlp")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--mnist", help="train the recipe on the MNIST files in this folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.mnist:
        torch_mnist(args.mnist, 5, args.seed, args.model)
        return
    run = torch_steps if args.framework == "torch" else jax_steps
    compile_s, times = run(SIZES[args.model], args.batch, args.steps, 10)
    mean = sum(times) / len(times)
    print(json.dumps({
        "framework": args.framework,
        "compile_ms": compile_s * 1e3,
        "step_ms": mean * 1e3,
        "step_ms_median": sorted(times)[len(times) // 2] * 1e3,
        "samples_per_s": args.batch / mean,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": os.cpu_count(),
        "batch": args.batch,
    }))


if __name__ == "__main__":
    main()
