//! Criterion benchmarks, run with `cargo bench --bench nabla`: compile latency of each example's
//! train step, train-step time of the MLPs at batch 16 and 128, of the tiny 2-16-16-2 model and
//! of one causal self-attention layer,
//! matrix-product throughput at the MLP's first-layer shape and at 16x16x16 (register tiles),
//! and fused elementwise throughput. Steps run on synthetic data (no
//! data set needed), timed by the runtime's own step loop, one thread unless a bench says two.
//! `benches/peers/run.sh` compares the same recipe with PyTorch and JAX.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nabla_compiler::optim::{Optimizer, OptimizerKind};
use nabla_compiler::programs::ModelPrograms;
use nabla_runtime::Elem;
use nabla_runtime::train::{self, Compile, Settings};

/// The model's programs with its first train block's optimizer (plain SGD without one).
fn programs(source: &str, threads: usize) -> (ModelPrograms, Optimizer) {
    let compiled = nabla_dsl::compile(source).expect("the benchmark model compiles");
    let optimizer = compiled.trains.first().map_or_else(
        || Optimizer::defaults(OptimizerKind::Sgd),
        |t| t.optimizer.clone(),
    );
    let mut p = ModelPrograms::new(compiled.model, optimizer.clone(), Elem::F32);
    p.threads = threads;
    (p, optimizer)
}

fn example(name: &str) -> String {
    std::fs::read_to_string(format!("{}/examples/{name}.nn", env!("CARGO_MANIFEST_DIR")))
        .expect("an example")
}

/// Total time of `iters` train steps at `batch` (compilation and warm-up not counted).
fn steps(source: &str, batch: usize, threads: usize, iters: u64) -> Duration {
    let (mut programs, optimizer) = programs(source, threads);
    let info = programs.info().expect("feedable");
    let settings = Settings::new(batch, optimizer.lr);
    let mut store = train::init_store(&info, 0, Elem::F32).expect("memory");
    let data = train::synthetic(&info, batch, 0);
    let timing = train::time_steps(
        &info,
        &settings,
        &mut programs,
        &mut store,
        &data,
        (3, iters as usize),
        false,
        &nabla_runtime::Alone,
    )
    .expect("runs");
    Duration::from_secs_f64(timing.step_seconds.iter().sum())
}

fn compile_latency(c: &mut Criterion) {
    for name in ["xor", "backprop", "mnist_mlp", "mnist_pytorch_recipe"] {
        let source = example(name);
        c.bench_function(&format!("compile/{name}"), |b| {
            let (mut programs, _) = programs(&source, 1);
            b.iter(|| programs.train_step(128).expect("compiles"));
        });
    }
}

fn train_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("train_step");
    for name in ["mnist_mlp", "mnist_pytorch_recipe"] {
        let source = example(name);
        for batch in [16, 128] {
            for threads in [1, 2] {
                group.throughput(Throughput::Elements(batch as u64));
                group.bench_function(format!("{name}/batch{batch}/threads{threads}"), |b| {
                    b.iter_custom(|iters| steps(&source, batch, threads, iters))
                });
            }
        }
    }
    let tiny = std::fs::read_to_string(format!(
        "{}/benches/peers/tiny.nn",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("the tiny model");
    group.throughput(Throughput::Elements(16));
    group.bench_function("tiny/batch16/threads1", |b| {
        b.iter_custom(|iters| steps(&tiny, 16, 1, iters))
    });
    group.throughput(Throughput::Elements(12));
    group.bench_function("causal_attention/batch12/threads1", |b| {
        b.iter_custom(|iters| steps(CAUSAL_ATTENTION, 12, 1, iters))
    });
    group.finish();
}

/// One causal self-attention layer of the baby GPT's sizes (64 positions, 4 heads of 32), its
/// step mostly the attention kernel and its gradient, with the two projections around them.
const CAUSAL_ATTENTION: &str = "model attention {
  input  x[B, 64, 128]
  target y[B, 64, 128]
  h      = causal_self_attention(x, 4)
  loss   = mse(h, y)
}
";

/// `sum(x @ w)` at batch 128: the step is the forward product `[128, 784] @ [784, 512]` and
/// the weight gradient `[784, 128] @ [128, 512]`; throughput counts their FLOPs.
fn matmul(c: &mut Criterion) {
    let source = "model g {\n  input x[B, 784]\n  param w[784, 512] = normal(0, 0.01)\n  loss = sum(x @ w)\n}\n";
    let mut group = c.benchmark_group("matmul");
    group.throughput(Throughput::Elements(2 * 2 * 128 * 784 * 512));
    for threads in [1, 2] {
        group.bench_function(format!("mlp_layer1/threads{threads}"), |b| {
            b.iter_custom(|iters| steps(source, 128, threads, iters))
        });
    }
    // Batch 16 with 16 features: the forward product and the weight gradient are 16x16x16,
    // under the GEMM's threshold, so register tiles compute them.
    let small =
        "model t {\n  input x[B, 16]\n  param w[16, 16] = normal(0, 0.1)\n  loss = sum(x @ w)\n}\n";
    group.throughput(Throughput::Elements(2 * 2 * 16 * 16 * 16));
    group.bench_function("tiles_16x16x16", |b| {
        b.iter_custom(|iters| steps(small, 16, 1, iters))
    });
    group.finish();
}

/// A fused elementwise chain reduced to the loss, over 1M f32 values: throughput counts the
/// bytes of the input read once.
fn elementwise(c: &mut Criterion) {
    let source = "model e {\n  input x[B, 4096]\n  param s[1] = ones\n  loss = mean(((x * s + 1) * x - 2) * x)\n}\n";
    let mut group = c.benchmark_group("elementwise");
    group.throughput(Throughput::Bytes(4 * 256 * 4096));
    group.bench_function("fused_chain_1M", |b| {
        b.iter_custom(|iters| steps(source, 256, 1, iters))
    });
    group.finish();
}

criterion_group!(benches, compile_latency, train_step, matmul, elementwise);
criterion_main!(benches);
