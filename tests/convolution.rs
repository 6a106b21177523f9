//! Convolution and pooling: their definitions (PyTorch's semantics) on small inputs worked by
//! hand, compiled code against the interpreter at random geometries (strides, paddings,
//! dilations, channel counts and groups, odd sizes; one and two threads), and gradient checks.

use std::collections::HashMap;

use nabla_compiler::autodiff;
use nabla_compiler::evaluator::JitEvaluator;
use nabla_compiler::gradcheck::{self, Config};
use nabla_compiler::ir::{Fill, Graph, NodeId, Op, Shape, Tensor, Window, interp};
use nabla_compiler::model::Model;
use nabla_compiler::pipeline::Passes;
use nabla_runtime::{Elem, Rng};
use proptest::prelude::*;

mod common;
use common::model;

/// The loss and the gradients of `m` at its literal parameters and `x`, by the interpreter
/// and by compiled code (f64), which must agree.
fn run(m: &Model, x: &[f64], x_shape: &[usize]) -> Vec<Tensor<f64>> {
    let mut m = m.clone();
    m.bind(&|_| Some(x_shape[0])).unwrap();
    let (graph, loss, grads) = m.gradient_graph().unwrap();
    let roots: Vec<NodeId> = std::iter::once(loss).chain(grads).collect();
    let mut feeds = gradcheck::random_feeds(&m, &graph, &mut Rng::seeded(0), false);
    feeds.insert("x".into(), Tensor::new(x_shape.to_vec(), x.to_vec()));
    let expected = interp::eval(&graph, &feeds, &roots).unwrap();
    let actual = JitEvaluator::new(Elem::F64)
        .eval(&graph, &feeds, &roots)
        .unwrap();
    for (e, a) in expected.iter().zip(&actual) {
        for (x, y) in e.data.iter().zip(&a.data) {
            assert!(
                (x - y).abs() <= 1e-12 * x.abs().max(1.0),
                "interpreter {x}, compiled {y}"
            );
        }
    }
    expected
}

#[test]
fn convolution_is_pytorchs_cross_correlation() {
    // x = 1..9 as a 3x3 image, an all-ones 2x2 kernel: each output sums a 2x2 block.
    let m = model(
        "model c {
  input x[B, 1, 3, 3]
  y = conv2d(x, 1, 2, bias = false, init = [[[[1, 1], [1, 1]]]])
  loss = sum(y * y) / 2
}",
    );
    let x: Vec<f64> = (1..=9).map(f64::from).collect();
    let out = run(&m, &x, &[1, 1, 3, 3]);
    // y = [[12, 16], [24, 28]]: loss = (144 + 256 + 576 + 784) / 2.
    assert_eq!(out[0].data, [880.0]);
    // dL/dw[i][j] = sum over outputs of y * x at the offset (i, j).
    let y = [12.0, 16.0, 24.0, 28.0];
    let at = |i: usize, j: usize| -> f64 {
        (0..2)
            .flat_map(|r| (0..2).map(move |c| (r, c)))
            .map(|(r, c)| y[r * 2 + c] * x[(r + i) * 3 + c + j])
            .sum()
    };
    let grad_w = &out
        .iter()
        .find(|t| t.shape == [1, 1, 2, 2] && t.data != [1.0; 4])
        .unwrap()
        .data;
    assert_eq!(grad_w, &vec![at(0, 0), at(0, 1), at(1, 0), at(1, 1)]);
}

#[test]
fn grouped_convolution_convolves_each_group_with_its_filters() {
    // Two input channels in two groups, four 1x1 filters: output channels 0 and 1 read input
    // channel 0, channels 2 and 3 read channel 1 (PyTorch's `groups`), weight [4, 1, 1, 1].
    let m = model(
        "model g {
  input x[B, 2, 1, 2]
  y = conv2d(x, 4, 1, groups = 2, bias = false, init = [[[[2]]], [[[3]]], [[[5]]], [[[7]]]])
  loss = sum(y * y) / 2
}",
    );
    let x = [1.0, 2.0, 10.0, 20.0];
    let out = run(&m, &x, &[1, 2, 1, 2]);
    let y = [2.0, 4.0, 3.0, 6.0, 50.0, 100.0, 70.0, 140.0];
    assert_eq!(out[0].data, [y.iter().map(|v| v * v).sum::<f64>() / 2.0]);
    // dL/dw[o] = sum over the output's pixels of y * x of its group's channel.
    let grad_w = &out.iter().find(|t| t.shape == [4, 1, 1, 1]).unwrap().data;
    let group = |o: usize, g: usize| y[2 * o] * x[2 * g] + y[2 * o + 1] * x[2 * g + 1];
    assert_eq!(
        grad_w,
        &vec![group(0, 0), group(1, 0), group(2, 1), group(3, 1)]
    );
}

#[test]
fn padding_stride_and_dilation_follow_the_output_size_rule() {
    // A 1x1x4x4 image 1..16, a 2x2 kernel of ones with padding 1, stride 2, dilation 2:
    // output size floor((4 + 2 - 2 - 1) / 2) + 1 = 2; output (y, x) sums pixels
    // (2y - 1 + 2i, 2x - 1 + 2j) for i, j in 0..2 inside the image.
    let m = model(
        "model c {
  input x[B, 1, 4, 4]
  param weights[1, 1, 2, 2] = [[[[1, 10], [100, 1000]]]]
  y = conv2d(x, 1, 2, padding = 1, stride = 2, dilation = 2, bias = false, init = [[[[1, 1], [1, 1]]]])
  loss = sum(y * weights)
}",
    );
    let x: Vec<f64> = (1..=16).map(f64::from).collect();
    let pixel = |r: i64, c: i64| {
        if (0..4).contains(&r) && (0..4).contains(&c) {
            x[(r * 4 + c) as usize]
        } else {
            0.0
        }
    };
    let y = |oy: i64, ox: i64| -> f64 {
        (0..2)
            .flat_map(|i| (0..2).map(move |j| (i, j)))
            .map(|(i, j)| pixel(2 * oy - 1 + 2 * i, 2 * ox - 1 + 2 * j))
            .sum()
    };
    let expected = y(0, 0) + 10.0 * y(0, 1) + 100.0 * y(1, 0) + 1000.0 * y(1, 1);
    assert_eq!(run(&m, &x, &[1, 1, 4, 4])[0].data, [expected]);
}

#[test]
fn max_pooling_passes_its_gradient_to_the_first_maximum() {
    // Ties everywhere: PyTorch routes each window's gradient to its first maximum.
    let m = model(
        "model p {
  input x[B, 1, 1, 1]
  param v[1, 1, 2, 4] = [[[[3, 3, 1, 5], [3, 2, 5, 5]]]]
  param weights[1, 1, 1, 2] = [[[[1, 10]]]]
  loss = sum(max_pool2d(v, 2) * weights) + sum(x)
}",
    );
    let out = run(&m, &[0.0], &[1, 1, 1, 1]);
    assert_eq!(out[0].data, [3.0 + 50.0]);
    assert_eq!(out[1].data, [1.0, 0.0, 0.0, 10.0, 0.0, 0.0, 0.0, 0.0]);
}

/// Zeros of both signs, NaN and negative infinity, in windows inside the image and windows
/// half in the padding: compiled code (f32 and f64, one and two threads) finds the pixels the
/// interpreter finds, and the first maximum by PyTorch's rule where worked by hand.
#[test]
fn max_pooling_picks_the_first_maximum_among_signed_zeros_nans_and_infinities() {
    let inf = f64::INFINITY;
    let x = [
        -0.0,
        0.0,
        f64::NAN,
        1.0,
        -inf,
        -inf, //
        0.0,
        -0.0,
        2.0,
        f64::NAN,
        -inf,
        -inf,
    ];
    let same = |a: &[f64], b: &[f64]| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    };
    for padding in [0, 1] {
        let window = Window {
            image: [2, 6],
            kernel: [2, 2],
            stride: [2, 2],
            padding: [padding; 2],
            dilation: [1, 1],
            fill: Fill::NegInf,
        };
        let [oh, ow] = window.output().unwrap();
        let mut g = Graph::new();
        let image = g.input("x", Shape::known(&[1, 1, 2, 6])).unwrap();
        let grad = g.input("g", Shape::known(&[1, 1, oh, ow])).unwrap();
        let pooled = g.node(Op::MaxPoolGather(window), &[image, image]).unwrap();
        let routed = g.node(Op::MaxPoolScatter(window), &[image, grad]).unwrap();
        let feeds = HashMap::from([
            ("x".to_string(), Tensor::new(vec![1, 1, 2, 6], x.to_vec())),
            (
                "g".to_string(),
                Tensor::new(
                    vec![1, 1, oh, ow],
                    (1..=oh * ow).map(|v| v as f64).collect(),
                ),
            ),
        ]);
        let expected = interp::eval(&g, &feeds, &[pooled, routed]).unwrap();
        if padding == 0 {
            assert!(same(&expected[0].data, &[-0.0, f64::NAN, -inf]));
            let routed = [1.0, 0.0, 2.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
            assert!(same(&expected[1].data, &routed));
        }
        for (elem, threads) in [(Elem::F64, 1), (Elem::F32, 1), (Elem::F32, 2)] {
            let actual = JitEvaluator::new(elem)
                .with_threads(threads)
                .eval(&g, &feeds, &[pooled, routed])
                .unwrap();
            for (e, a) in expected.iter().zip(&actual) {
                assert!(
                    same(&e.data, &a.data),
                    "padding {padding}, {elem:?}: interpreter {:?}, compiled {:?}",
                    e.data,
                    a.data
                );
            }
        }
    }
}

#[test]
fn average_pooling_counts_the_padding() {
    // Ones, a 2x2 window with stride 1 and padding 1 over a 2x2 image (PyTorch's default
    // count_include_pad = true): corners see one pixel of four, edges two, the centre four.
    let m = model(
        "model p {
  input x[B, 1, 2, 2]
  param weights[1, 1, 3, 3] = [[[[1, 10, 100], [1000, 10000, 100000], [1000000, 10000000, 100000000]]]]
  y = avg_pool2d(x, 2, stride = 1, padding = 1)
  loss = sum(y * weights)
}",
    );
    let out = run(&m, &[1.0; 4], &[1, 1, 2, 2]);
    let weights = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8];
    let y = [0.25, 0.5, 0.25, 0.5, 1.0, 0.5, 0.25, 0.5, 0.25];
    let expected: f64 = weights.iter().zip(y).map(|(w, y)| w * y).sum();
    assert!(
        (out[0].data[0] - expected).abs() < 1e-6,
        "{} vs {expected}",
        out[0].data[0]
    );
}

/// A model of one convolution layer (`[kernel, stride, padding, dilation]`) and one pooling,
/// or `None` where the geometry does not fit. Its image is scaled by a parameter, so that the
/// convolution's input gradient is computed and checked too.
fn cnn(
    [c, out, groups]: [usize; 3],
    hw: [usize; 2],
    geometry: [usize; 4],
    pool: &str,
) -> Option<Model> {
    let [k, stride, padding, dilation] = geometry;
    let source = format!(
        "model c {{
  input x[B, {c}, {}, {}]
  target t[B] : class
  param s[1, {c}, 1, 1] = normal(1, 0.5)
  y = relu(conv2d(x * s, {out}, {k}, stride = {stride}, padding = {padding}, dilation = {dilation}, groups = {groups}))
  p = {pool}
  loss = cross_entropy(dense(flatten(p), 3), t)
}}",
        hw[0], hw[1]
    );
    nabla_dsl::compile(&source).ok().map(|c| c.model)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn compiled_convolutions_match_the_interpreter_and_pass_gradcheck(
        groups in 1usize..3, c in 1usize..3, h in 3usize..10, w in 3usize..10, out in 1usize..3,
        k in 1usize..4,
        stride in 1usize..3, padding in 0usize..3, dilation in 1usize..3, batch in 1usize..5,
        pool in prop::sample::select(vec!["max_pool2d(y, 2, stride = 1)", "avg_pool2d(y, 2, padding = 1)", "max_pool2d(y, [1, 2], padding = [0, 1])", "y"]),
        seed in 0u64..1000,
    ) {
        let channels = [groups * c, groups * out, groups];
        let Some(m) = cnn(channels, [h, w], [k, stride, padding, dilation], pool) else {
            return Err(TestCaseError::reject("the geometry does not fit"));
        };
        let mut bound = m.clone();
        bound.bind(&|_| Some(batch)).unwrap();
        let (graph, loss, grads) = bound.gradient_graph().unwrap();
        let roots: Vec<NodeId> = std::iter::once(loss).chain(grads).collect();
        let feeds: HashMap<String, Tensor<f64>> =
            gradcheck::random_feeds(&bound, &graph, &mut Rng::seeded(seed), false);
        let expected = interp::eval(&graph, &feeds, &roots).unwrap();
        for (elem, tol) in [(Elem::F64, 1e-10), (Elem::F32, 2e-4)] {
            for threads in [1, 2] {
                for fuse in [true, false] {
                    let passes = Passes { fuse, ..Passes::default() };
                    let actual = JitEvaluator::with_passes(elem, passes)
                        .with_threads(threads)
                        .eval(&graph, &feeds, &roots)
                        .unwrap();
                    for (e, a) in expected.iter().zip(&actual) {
                        let scale = e.data.iter().fold(1.0f64, |s, v| s.max(v.abs()));
                        for (x, y) in e.data.iter().zip(&a.data) {
                            prop_assert!((x - y).abs() <= tol * scale, "{elem:?} threads {threads} fuse {fuse}: interpreter {x}, compiled {y}");
                        }
                    }
                }
            }
        }
        let config = Config { batch, seed, cases: 2, samples: 12, ..Config::default() };
        let results = gradcheck::check(&m, &config, autodiff::vjp, &interp::eval).unwrap();
        for r in &results {
            prop_assert!(r.passed, "{r:?}");
        }
    }
}

/// The VJP rules with one mistake: convolution's weight gradient is 1% too large.
fn wrong_conv_rule(
    graph: &mut nabla_compiler::ir::Graph,
    node: NodeId,
    g: NodeId,
    wants: &[bool],
) -> Result<Vec<Option<NodeId>>, nabla_compiler::ir::ShapeError> {
    let mut grads = autodiff::vjp(graph, node, g, wants)?;
    if let (nabla_compiler::ir::Op::Conv(_), Some(&Some(dw))) = (graph.op(node), grads.get(1)) {
        grads[1] = Some(graph.scale(dw, 1.01)?);
    }
    Ok(grads)
}

#[test]
fn gradcheck_catches_a_wrong_convolution_gradient() {
    let m = cnn([2, 3, 1], [6, 5], [3, 1, 1, 1], "max_pool2d(y, 2)").expect("fits");
    let config = Config {
        cases: 2,
        samples: 12,
        ..Config::default()
    };
    let right = gradcheck::check(&m, &config, autodiff::vjp, &interp::eval).unwrap();
    assert!(right.iter().all(|r| r.passed), "{right:?}");
    let wrong = gradcheck::check(&m, &config, wrong_conv_rule, &interp::eval).unwrap();
    let failed: Vec<&str> = wrong
        .iter()
        .filter(|r| !r.passed)
        .map(|r| r.name.as_str())
        .collect();
    assert!(
        failed.contains(&"y.w"),
        "a 1% error in the kernel's gradient is caught: {wrong:?}"
    );
}
