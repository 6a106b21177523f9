"""The PyTorch-recipe MLP (784-512-256-10, ReLU, cross-entropy, SGD lr 0.01 momentum 0.9) in
PyTorch eager or JAX jit, on synthetic data of MNIST's shapes: compile time and train-step time,
as one JSON object with the keys `nabla bench --json` prints."""

import argparse
import json
import os
import resource
import time


def torch_steps(batch, steps, warmup):
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 512), torch.nn.ReLU(),
        torch.nn.Linear(512, 256), torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 784)
    y = torch.randint(0, 10, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    return 0.0, time_steps(step, steps, warmup)


def jax_steps(batch, steps, warmup):
    import jax
    import jax.numpy as jnp

    key = jax.random.PRNGKey(0)
    sizes = [784, 512, 256, 10]
    params = []
    for fan_in, fan_out in zip(sizes, sizes[1:]):
        key, kw, kb = jax.random.split(key, 3)
        bound = 1.0 / fan_in ** 0.5
        params.append((
            jax.random.uniform(kw, (fan_in, fan_out), minval=-bound, maxval=bound),
            jax.random.uniform(kb, (fan_out,), minval=-bound, maxval=bound),
        ))
    momentum = jax.tree_util.tree_map(jnp.zeros_like, params)
    x = jax.random.normal(key, (batch, 784))
    y = jax.random.randint(key, (batch,), 0, 10)

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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--framework", choices=["torch", "jax"], required=True)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    run = torch_steps if args.framework == "torch" else jax_steps
    compile_s, times = run(args.batch, args.steps, 10)
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
