//! Compiled code against the reference interpreter: every built-in's forward value and
//! gradients, in f64 and f32, at random and at odd sizes (1, 3, 5, 17, 1023) that exercise the
//! vector loops' scalar tails, with fusion and without (every op its own kernel), simplified
//! and not; and gradient checks run on compiled code.

use std::collections::HashMap;

use nabla_compiler::codegen::jit::Listing;
use nabla_compiler::evaluator::JitEvaluator;
use nabla_compiler::gradcheck::{self, Config};
use nabla_compiler::ir::{Graph, Shape, Tensor, UnaryOp, interp};
use nabla_compiler::kernel::{Expr, Phase};
use nabla_compiler::pipeline::{self, Passes, Request};
use nabla_compiler::{autodiff, model::Model};
use nabla_kernels::denormals;
use nabla_runtime::Elem;
use proptest::prelude::*;

mod common;
use common::{bodies, model, template};

/// Every combination of the optional passes.
const PASSES: [Passes; 3] = [
    Passes {
        simplify: true,
        fuse: true,
        fast_math: false,
        leave_out: None,
    },
    Passes {
        simplify: true,
        fuse: false,
        fast_math: false,
        leave_out: None,
    },
    Passes {
        simplify: false,
        fuse: true,
        fast_math: false,
        leave_out: None,
    },
];

/// [`compare_with`] for every combination of passes.
fn compare(m: &Model, batch: usize, seed: u64, elem: Elem, tol: f64) -> Result<(), String> {
    for passes in PASSES {
        compare_with(m, batch, seed, elem, tol, passes).map_err(|e| format!("{passes:?}: {e}"))?;
    }
    Ok(())
}

/// [`common::compiled_matches_interpreter`] with `passes` and the initial parameters.
fn compare_with(
    m: &Model,
    batch: usize,
    seed: u64,
    elem: Elem,
    tol: f64,
    passes: Passes,
) -> Result<(), String> {
    let evaluator = JitEvaluator::with_passes(elem, passes);
    common::compiled_matches_interpreter(m, batch, seed, evaluator, tol, false)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn builtins_compile_to_what_the_interpreter_computes(n in 1usize..7, batch in 1usize..6, seed in 0u64..1000) {
        for body in bodies(n) {
            let m = model(&template(n, body));
            compare(&m, batch, seed, Elem::F64, 1e-12).map_err(|e| TestCaseError::fail(format!("{body} f64: {e}")))?;
            // Normalising by a small batch's variance amplifies f32 rounding (the same
            // cancellation PyTorch's f32 batch norm has), so it gets a looser bound.
            let f32_tol = if body.contains("batch_norm") { 5e-3 } else { 2e-4 };
            compare(&m, batch, seed, Elem::F32, f32_tol).map_err(|e| TestCaseError::fail(format!("{body} f32: {e}")))?;
        }
    }
}

#[test]
fn odd_sizes_exercise_every_kernel_kind() {
    for n in [1, 3, 5, 17, 1023] {
        for body in [
            "sum((z @ m) * u)",
            "sum(softmax(z, axis = 0) * u)",
            "sum(max(z, axis = 1))",
            "sum(transpose(z) @ u)",
            "cross_entropy(z, y)",
            "sum(relu(z) - abs(z) / 2)",
            // Vector comparisons of a loaded row at an odd offset: without AVX, a load
            // folded into SSE's `cmppd` faulted (n = 3, batch 3, f64; `NABLA_ISA=baseline`).
            "sum(leaky_relu(z, 0.1) * u)",
        ]
        .into_iter()
        .filter(|b| common::fits(n, b))
        {
            let m = model(&template(n, body));
            for batch in [1, 3] {
                compare(&m, batch, 7, Elem::F64, 1e-11)
                    .unwrap_or_else(|e| panic!("n = {n}, {body}, batch {batch}: {e}"));
                compare(&m, batch, 7, Elem::F32, 1e-3)
                    .unwrap_or_else(|e| panic!("n = {n}, {body}, batch {batch} f32: {e}"));
            }
        }
    }
}

/// A concatenation of 1,200 operands keeps their order in the interpreter and in compiled code
/// (f64, f32, every combination of passes), and so does its gradient, which joins 1,200 slices
/// (issue 21: operand positions were kept in a byte, and the 257th operand came second).
#[test]
fn a_concatenation_of_1200_operands_keeps_their_order() {
    const N: usize = 1200;
    let mut g = Graph::new();
    let x = g.input("x", Shape::known(&[N, 2])).unwrap();
    let y = g.input("y", Shape::known(&[N, 2])).unwrap();
    let rows: Vec<_> = (0..N).rev().map(|i| g.slice(x, 0, i, 1).unwrap()).collect();
    let reversed = g.concat(&rows, 0).unwrap();
    let weighted = g.mul(reversed, y).unwrap();
    let loss = g.sum_all(weighted).unwrap();
    let grad = autodiff::differentiate(&mut g, loss, &[x]).unwrap()[0];
    let values = |seed: f64| -> Vec<f64> { (0..2 * N).map(|i| seed + i as f64).collect() };
    let feeds: HashMap<String, Tensor<f64>> = [
        ("x".to_string(), Tensor::new(vec![N, 2], values(0.0))),
        ("y".to_string(), Tensor::new(vec![N, 2], values(0.5))),
    ]
    .into();
    let flip = |v: Vec<f64>| -> Vec<f64> { v.chunks(2).rev().flatten().copied().collect() };
    let expected = [flip(values(0.0)), flip(values(0.5))];
    let roots = [reversed, grad];
    let got = interp::eval(&g, &feeds, &roots).unwrap();
    assert_eq!(
        [got[0].data.clone(), got[1].data.clone()],
        expected,
        "interpreter"
    );
    for elem in [Elem::F64, Elem::F32] {
        for passes in PASSES {
            let got = JitEvaluator::with_passes(elem, passes)
                .eval(&g, &feeds, &roots)
                .unwrap();
            assert_eq!(
                [got[0].data.clone(), got[1].data.clone()],
                expected,
                "{elem:?} {passes:?}"
            );
        }
    }
}

#[test]
fn compiled_gradients_pass_gradcheck() {
    for name in ["backprop", "xor", "linear_regression"] {
        let source =
            std::fs::read_to_string(format!("{}/examples/{name}.nn", env!("CARGO_MANIFEST_DIR")))
                .expect("example");
        let jit = JitEvaluator::new(Elem::F64);
        let results = gradcheck::check(
            &model(&source),
            &Config::default(),
            autodiff::vjp,
            &|g, f, o| jit.eval(g, f, o),
        )
        .expect("runs");
        assert!(results.iter().all(|r| r.passed), "{name}: {results:?}");
    }
}

fn flushing() -> bool {
    denormals::mode() == Ok(denormals::Mode::Flush)
}

/// `v` as compiled code sees it or leaves it: zero of its sign where it is a denormal and
/// denormals are flushed (`NABLA_DENORMALS`).
fn flushed(v: f32) -> f32 {
    if flushing() && v.is_subnormal() {
        0.0f32.copysign(v)
    } else {
        v
    }
}

/// A positive denormal result, or zero where denormals are flushed.
fn subnormal_unless_flushed(v: f32) -> bool {
    if flushing() {
        v == 0.0
    } else {
        v > 0.0 && v.is_subnormal()
    }
}

/// `op` compiled for f32, at every 1021st f32 of either sign and at `special`: the worst
/// distance in ulp from `reference` (computed in f64, then rounded; with IEEE denormals or,
/// the nearer, as the denormal mode has them) with the input it occurs at, and the output at
/// each special value. NaN must map to NaN, and one long row must give
/// the bits of rows of 5.
fn inline_f32(op: UnaryOp, reference: fn(f64) -> f64, special: &[f32]) -> (u64, f32, Vec<f32>) {
    let mut values: Vec<f32> = (0..0x7f80_0000u32)
        .step_by(1021)
        .map(f32::from_bits)
        .flat_map(|v| [v, -v])
        .collect();
    values.extend([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
    values.extend(special);
    let mut g = Graph::new();
    let x = g.input("x", Shape::known(&[values.len()])).unwrap();
    let y = g.unary(op, x).unwrap();
    let feeds = HashMap::from([(
        "x".to_string(),
        Tensor::new(
            vec![values.len()],
            values.iter().map(|&v| f64::from(v)).collect(),
        ),
    )]);
    let out = JitEvaluator::new(Elem::F32).eval(&g, &feeds, &[y]).unwrap();
    // Rows of 5 (a 4-lane vector and a scalar), read through a transpose so that they cannot
    // merge into longer ones, are computed inline; the long row above goes to the kernel
    // library's wide build where the CPU has one: the same bits.
    let rows = values.len().div_ceil(5);
    let mut g = Graph::new();
    let x = g.input("x", Shape::known(&[5, rows])).unwrap();
    let x = g.transpose(x, &[1, 0]).unwrap();
    let short = g.unary(op, x).unwrap();
    let mut columns = vec![0.0; rows * 5];
    for (i, &v) in values.iter().enumerate() {
        columns[(i % 5) * rows + i / 5] = f64::from(v);
    }
    let feeds = HashMap::from([("x".to_string(), Tensor::new(vec![5, rows], columns))]);
    let inline = JitEvaluator::new(Elem::F32)
        .eval(&g, &feeds, &[short])
        .unwrap();
    for (i, (&long, &short)) in out[0].data.iter().zip(&inline[0].data).enumerate() {
        assert!(
            long.to_bits() == short.to_bits() || (long.is_nan() && short.is_nan()),
            "{op:?}({}): {long} in a long row, {short} in rows of 5",
            values[i]
        );
    }
    let mut worst = (0, 0.0f32);
    for (&v, &got) in values.iter().zip(&out[0].data) {
        let got = got as f32;
        // A denormal a select passes through is not flushed: either answer is right.
        let wanted = [
            reference(f64::from(v)) as f32,
            flushed(reference(f64::from(flushed(v))) as f32),
        ];
        if got.is_nan() && wanted.iter().any(|w| w.is_nan()) {
            continue;
        }
        let distance = |want: &f32| (got.to_bits() as i64 - want.to_bits() as i64).unsigned_abs();
        let Some(ulps) = wanted.iter().filter(|w| !w.is_nan()).map(distance).min() else {
            panic!("{op:?}({v}) = {got}, not NaN");
        };
        if ulps > worst.0 {
            worst = (ulps, v);
        }
    }
    let at = special
        .iter()
        .map(|&v| {
            out[0].data[values.len() - special.len()
                + special
                    .iter()
                    .position(|&w| w.to_bits() == v.to_bits())
                    .unwrap()] as f32
        })
        .collect();
    (worst.0, worst.1, at)
}

/// Generated code computes f32 `tanh`, `erf`, `exp`, `log` and `sigmoid` in registers (no call), within a
/// few ulp of the correctly rounded value over the whole f32 range and exact at the special
/// values: infinities, signed zeros, and the edges of overflow and underflow; long rows,
/// whose `tanh`, `erf` and `exp` the kernel library computes where the CPU has AVX2, to the
/// bit what short rows compute inline.
#[test]
fn inline_transcendentals_are_accurate_over_the_whole_f32_range() {
    let specials = [
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        7.905_311,
        20.0,
        88.72,
        88.73,
        -87.0,
        -103.0,
        -104.5,
    ];
    let (ulps, at, tanh) = inline_f32(UnaryOp::Tanh, f64::tanh, &specials);
    assert!(ulps <= 6, "tanh: {ulps} ulp at {at}");
    assert_eq!(tanh[..3], [1.0, -1.0, -0.0]);
    assert!(tanh[2].is_sign_negative());

    let (ulps, at, exp) = inline_f32(UnaryOp::Exp, f64::exp, &specials);
    assert!(ulps <= 2, "exp: {ulps} ulp at {at}");
    assert_eq!(exp[..3], [f32::INFINITY, 0.0, 1.0]);
    assert!(
        exp[5].is_finite() && exp[6].is_infinite(),
        "overflow at 88.72..88.73"
    );
    assert!(subnormal_unless_flushed(exp[8]), "exp(-103) = {}", exp[8]);
    assert_eq!(exp[9], 0.0);

    let (ulps, at, log) = inline_f32(UnaryOp::Log, f64::ln, &specials);
    assert!(ulps <= 2, "log: {ulps} ulp at {at}");
    assert_eq!(log[0], f32::INFINITY);
    assert!(
        log[1].is_nan() && log[7].is_nan(),
        "log of a negative number"
    );
    assert_eq!(log[2], f32::NEG_INFINITY);

    let erf = |x: f64| interp::unary(UnaryOp::Erf, x);
    let (ulps, at, erf) = inline_f32(UnaryOp::Erf, erf, &specials);
    assert!(ulps <= 6, "erf: {ulps} ulp at {at}");
    assert_eq!(erf[..3], [1.0, -1.0, -0.0]);
    assert!(erf[2].is_sign_negative());

    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    let (ulps, at, s) = inline_f32(UnaryOp::Sigmoid, sigmoid, &specials);
    assert!(ulps <= 3, "sigmoid: {ulps} ulp at {at}");
    assert_eq!(s[..3], [1.0, 0.0, 0.5]);
    assert!(subnormal_unless_flushed(s[8]), "sigmoid(-103) = {}", s[8]);
}

/// `gelu` and its derivative, each one primitive made of `erf` and `exp`: long rows (the kernel
/// library's wide build, where the CPU has one) give the bits of short rows (inline code), and
/// both stay within a few f32 roundings of the f64 reference in absolute terms (for `x` below
/// about -3, `erf(x / sqrt 2) + 1` cancels, in PyTorch's formula as in this one, so the error
/// is small against `|x|`, not against the tiny result).
#[test]
fn gelu_and_its_derivative_match_across_paths_and_the_f64_reference() {
    let grid: Vec<f32> = (-1200..=1200).map(|i| i as f32 / 100.0).collect();
    let gelu: fn(f64) -> f64 = |x| interp::unary(UnaryOp::Gelu, x);
    let derivative: fn(f64) -> f64 = |x| interp::unary(UnaryOp::GeluDerivative, x);
    for (op, reference) in [(UnaryOp::Gelu, gelu), (UnaryOp::GeluDerivative, derivative)] {
        let (_, _, at) = inline_f32(op, reference, &grid);
        for (&x, &got) in grid.iter().zip(&at) {
            let want = reference(f64::from(x));
            let error = (f64::from(got) - want).abs();
            assert!(
                error <= 1e-6 * f64::from(x.abs()).max(1.0),
                "{op:?}({x}) = {got}, f64 {want}"
            );
        }
    }
}

/// Plans `source`'s gradients at `batch` on two threads, checks that two threads compute the
/// interpreter's values and bit for bit what one thread does, and returns the plan.
fn two_threads_agree(source: &str, batch: usize) -> nabla_compiler::kernel::Plan {
    let m = model(source);
    let mut bound = m.clone();
    bound.bind(&|_| Some(batch)).unwrap();
    let (graph, loss, grads) = bound.gradient_graph().unwrap();
    let roots: Vec<_> = std::iter::once(loss).chain(grads).collect();
    let request = Request {
        graph: &graph,
        outputs: roots.iter().map(|&r| (format!("{r:?}"), r)).collect(),
        assignments: Vec::new(),
        elem: Elem::F32,
        listing: Listing::None,
        passes: Passes::default(),
        threads: 2,
        packing: None,
    };
    let plan = pipeline::plan(&request).unwrap().plan;
    for (elem, tol) in [(Elem::F64, 1e-12), (Elem::F32, 2e-4)] {
        let two = JitEvaluator::new(elem).with_threads(2);
        common::compiled_matches_interpreter(&m, batch, 3, two, tol, true).unwrap();
    }
    let feeds = gradcheck::random_feeds(&bound, &graph, &mut nabla_runtime::Rng::seeded(3), true);
    let run = |threads| {
        JitEvaluator::new(Elem::F32)
            .with_threads(threads)
            .eval(&graph, &feeds, &roots)
            .unwrap()
    };
    assert_eq!(run(1), run(2));
    plan
}

/// Large maps and the epilogues of large products split their rows over two threads, in odd
/// bands: the interpreter's values, and bit for bit what one thread computes.
#[test]
fn rows_split_over_threads_compute_what_one_thread_does() {
    let plan = two_threads_agree(
        "model wide {
  input  x[B, 515]
  target t[B] : class
  h      = relu(dense(x, 257))
  loss   = cross_entropy(dense(h * h - h, 3), t)
}",
        131,
    );
    let split = plan.kernels.iter().flat_map(|k| &k.phases);
    assert!(split.filter(|p| p.split_rows().is_some()).count() >= 2);
}

/// A large product read as a reshape of itself (a `[B T, C]` projection seen as `[B, T, C]`)
/// takes the ops after it into its epilogue, over their own shape (GELU, GELU's derivative
/// times the product in the backward, and a residual add, as in a transformer block); split over two threads: the interpreter's values, and bit for bit
/// what one thread computes.
#[test]
fn epilogues_read_a_large_product_through_a_reshape() {
    let plan = two_threads_agree(
        "model block {
  input  x[B, 7, 33]
  target t[B] : class
  h      = x + dense(gelu(dense(x, 65, bias = false)), 33, bias = false)
  loss   = cross_entropy(dense(flatten(h), 3), t)
}",
        131,
    );
    let epilogue_computes = |op: UnaryOp| {
        plan.kernels.iter().flat_map(|k| &k.phases).any(|p| {
            matches!(p, Phase::MatMul { epilogue, .. }
                if epilogue.exprs.iter().any(|e| matches!(e, Expr::Unary(u, _) if *u == op)))
        })
    };
    assert!(epilogue_computes(UnaryOp::Gelu), "{plan:?}");
    assert!(epilogue_computes(UnaryOp::GeluDerivative), "{plan:?}");
    let titles: Vec<&str> = plan.kernels.iter().map(|k| k.title.as_str()).collect();
    assert!(
        titles.iter().any(|t| t.starts_with("matmul, add (h)")),
        "{titles:?}"
    );
}

/// Large reductions split over two threads by a variable every output keeps (batch
/// normalisation's channel, moved outermost): the interpreter's values, and bit for bit what
/// one thread computes.
#[test]
fn reductions_split_over_threads_by_the_channel_compute_what_one_thread_does() {
    let plan = two_threads_agree(
        "model bn {
  input  x[B, 6, 9, 9]
  target t[B] : class
  h      = relu(batch_norm(x))
  loss   = cross_entropy(dense(flatten(h), 3), t)
}",
        131,
    );
    let split_reductions = plan
        .kernels
        .iter()
        .flat_map(|k| &k.phases)
        .filter(|p| matches!(p, Phase::Reduce { .. }) && p.split_rows().is_some())
        .count();
    assert!(split_reductions >= 2, "{split_reductions} reductions split");
}

/// A large map whose accesses are all contiguous is one flat loop (GELU's gradient over a whole
/// parameter here, over a transformer's hidden layer in a GPT); it is folded into rows of a
/// power-of-two width so that they split over two threads: the interpreter's values, and bit
/// for bit what one thread computes.
#[test]
fn flat_maps_fold_into_rows_that_split_over_threads() {
    let plan = two_threads_agree(
        "model flat {
  input  x[B, 1]
  target y[B, 1]
  param  w[3, 65536] = normal(0, 1)
  loss   = mse(x, y) + mean(gelu(w))
}",
        5,
    );
    let folded = plan
        .kernels
        .iter()
        .flat_map(|k| &k.phases)
        .filter(|p| matches!(p, Phase::Map(l) if l.dims.len() == 2 && l.dims[1] == 4096))
        .filter(|p| p.split_rows().is_some())
        .count();
    assert!(folded >= 1, "{plan:?}");
}
