//! Attention and transformers: random attention models (1 to 4 heads, odd widths, 1 to 9
//! positions, causal, masked or neither) against finite differences and compiled against the
//! interpreter; long causal attention (up to 40 queries and keys, several of the kernel's
//! blocks) compiled against the interpreter, and a NaN in a late key kept out of earlier
//! blocks; a deliberately wrong rule under attention or layer norm caught; three AdamW steps of
//! a small GPT against PyTorch; fully hidden rows; generation over a window.

use nabla_compiler::autodiff;
use nabla_compiler::evaluator::JitEvaluator;
use nabla_compiler::gradcheck::{self, ParamResult};
use nabla_compiler::ir::{Graph, NodeId, Op, ShapeError, UnaryOp, interp};
use nabla_runtime::Elem;
use proptest::prelude::*;

mod common;
use common::golden::step_matches_pytorch;
use common::{check, model};

/// A model over `x [B, steps, heads * depth]`: `kind` 0 is a pre-norm block with
/// `causal_self_attention` (biases on) and a tanh-GELU MLP; 1 is `attention` over heads split
/// by hand with a mask from the data (`step(m)`: about half the keys hidden, some rows
/// entirely); 2 is non-causal `attention` of one head after `rms_norm`, with `silu`.
fn attention_source(kind: usize, heads: usize, depth: usize, steps: usize) -> String {
    let width = heads * depth;
    let body = match kind {
        0 => format!(
            "  a = x + causal_self_attention(layer_norm(x), {heads}, bias = true)
  h = a + dense(gelu(dense(layer_norm(a, bias = false), 5), approximate = \"tanh\"), {width})"
        ),
        1 => format!(
            "  input m[B, {steps}, {steps}]
  q = transpose(reshape(dense(x, {width}), [B, {steps}, {heads}, {depth}]), [0, 2, 1, 3])
  k = transpose(reshape(dense(x, {width}), [B, {steps}, {heads}, {depth}]), [0, 2, 1, 3])
  v = transpose(reshape(dense(x, {width}), [B, {steps}, {heads}, {depth}]), [0, 2, 1, 3])
  o = attention(q, k, v, mask = reshape(step(m), [B, 1, {steps}, {steps}]))
  h = reshape(transpose(o, [0, 2, 1, 3]), [B, {steps}, {width}])"
        ),
        _ => "  n = rms_norm(x)
  h = silu(attention(dense(n, 3), dense(n, 3), dense(n, 4)))"
            .to_string(),
    };
    let out = if kind == 2 { 4 } else { width };
    format!(
        "model attention {{
  input  x[B, {steps}, {width}]
  target y[B, {steps}, {out}]
{body}
  loss   = mse(h, y)
}}
"
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Every parameter of random attention models agrees with finite differences, and the
    /// compiled step (f64 and f32, two threads) with the interpreter.
    #[test]
    fn random_attention_models_match_finite_differences_and_the_interpreter(
        kind in 0usize..3,
        heads in 1usize..5,
        depth in prop::sample::select(vec![1usize, 3, 5]),
        steps in 1usize..10,
        seed in 0u64..1000,
    ) {
        let source = attention_source(kind, heads, depth, steps);
        for r in check(&source, 2, seed, autodiff::vjp) {
            prop_assert!(r.passed, "{source}\nseed {seed}: {r:?}");
        }
        let m = model(&source);
        for (elem, tol) in [(Elem::F64, 1e-10), (Elem::F32, 1e-4)] {
            let evaluator = JitEvaluator::new(elem).with_threads(2);
            let compared = common::compiled_matches_interpreter(&m, 3, seed, evaluator, tol, true);
            prop_assert!(compared.is_ok(), "{source}\n{elem:?}: {compared:?}");
        }
    }
}

/// Causal attention of `queries` positions over `keys` (PyTorch's alignment when they differ),
/// queries, keys and values projected from the inputs by `dense`.
fn long_causal_source(queries: usize, keys: usize, width: usize) -> String {
    format!(
        "model long {{
  input  x[B, {queries}, {width}]
  input  z[B, {keys}, {width}]
  target y[B, {queries}, {width}]
  h      = attention(dense(x, {width}), dense(z, {width}), dense(z, {width}), causal = true)
  loss   = mse(h, y)
}}
"
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Causal attention over more positions than one of the kernel's blocks, queries and keys
    /// of different counts included: every gradient of the compiled step (f64 and f32, one and
    /// two threads) agrees with the interpreter, which sums over the seen keys alone.
    #[test]
    fn long_causal_attention_matches_the_interpreter(
        queries in 1usize..41,
        keys in 1usize..41,
        width in prop::sample::select(vec![3usize, 8, 17]),
        seed in 0u64..1000,
    ) {
        let m = model(&long_causal_source(queries, keys, width));
        for threads in [1, 2] {
            for (elem, tol) in [(Elem::F64, 1e-10), (Elem::F32, 1e-4)] {
                let evaluator = JitEvaluator::new(elem).with_threads(threads);
                let compared = common::compiled_matches_interpreter(&m, 2, seed, evaluator, tol, true);
                prop_assert!(
                    compared.is_ok(),
                    "{queries} queries, {keys} keys, width {width}, {elem:?}, {threads} threads: {compared:?}"
                );
            }
        }
    }
}

/// `m`'s gradient graph at batch 1, its loss and gradients, and the node of its binding `h`.
fn gradient_graph_and_h(m: &nabla_compiler::model::Model) -> (Graph, NodeId, Vec<NodeId>, NodeId) {
    let mut bound = m.clone();
    bound.bind(&|_| Some(1)).unwrap();
    let (graph, loss, grads) = bound.gradient_graph().unwrap();
    let h = bound
        .bindings
        .iter()
        .find(|b| b.name == "h")
        .expect("the binding h")
        .node;
    (graph, loss, grads, h)
}

/// A NaN in the last key and value reaches no query of an earlier block: those outputs are
/// finite and the interpreter's (the whole product multiplied the late value by weights of 0,
/// so every query's output was NaN).
#[test]
fn a_late_nan_stays_out_of_earlier_blocks() {
    let m = model(
        "model late {
  input  x[B, 40, 3]
  target y[B, 40, 3]
  h      = attention(x, x, x, causal = true)
  loss   = mse(h, y)
}
",
    );
    let (graph, _, _, h) = gradient_graph_and_h(&m);
    let mut x: Vec<f64> = (0..120)
        .map(|i| ((i * 7 % 11) as f64 - 5.0) / 5.0)
        .collect();
    x[117] = f64::NAN;
    let tensor = |data: Vec<f64>| nabla_compiler::ir::Tensor {
        shape: vec![1, 40, 3],
        data,
    };
    let feeds = [("x", tensor(x)), ("y", tensor(vec![0.0; 120]))]
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect();
    let expected = interp::eval(&graph, &feeds, &[h]).unwrap();
    let compiled = JitEvaluator::new(Elem::F32)
        .eval(&graph, &feeds, &[h])
        .unwrap();
    assert!(
        expected[0].data[117].is_nan(),
        "the last query sees the NaN"
    );
    for (i, (e, c)) in expected[0]
        .data
        .iter()
        .zip(&compiled[0].data)
        .enumerate()
        .take(96)
    {
        assert!(
            e.is_finite() && (e - c).abs() < 1e-5,
            "element {i}: {e} against {c}"
        );
    }
}

/// The gradient of a batched product's right operand scaled by 0.9: a masked attention's
/// `Q K^T` and `P V` both go through it.
fn wrong_batched_product_rule(
    graph: &mut Graph,
    node: NodeId,
    g: NodeId,
    wants: &[bool],
) -> Result<Vec<Option<NodeId>>, ShapeError> {
    let mut grads = autodiff::vjp(graph, node, g, wants)?;
    if *graph.op(node) == Op::BatchMatMul
        && let Some(gb) = grads[1].as_mut()
    {
        *gb = graph.scale(*gb, 0.9)?;
    }
    Ok(grads)
}

/// Every gradient of fused attention scaled by 0.9 (self-attention's one operand holds the
/// queries, keys and values).
fn wrong_attention_rule(
    graph: &mut Graph,
    node: NodeId,
    g: NodeId,
    wants: &[bool],
) -> Result<Vec<Option<NodeId>>, ShapeError> {
    let mut grads = autodiff::vjp(graph, node, g, wants)?;
    if matches!(graph.op(node), Op::Attention { .. }) {
        for grad in grads.iter_mut().flatten() {
            *grad = graph.scale(*grad, 0.9)?;
        }
    }
    Ok(grads)
}

/// `d sqrt(x) = 1 / sqrt(x)` instead of `1 / (2 sqrt(x))`: layer norm's standard deviation.
fn wrong_sqrt_rule(
    graph: &mut Graph,
    node: NodeId,
    g: NodeId,
    wants: &[bool],
) -> Result<Vec<Option<NodeId>>, ShapeError> {
    if *graph.op(node) == Op::Unary(UnaryOp::Sqrt) {
        return Ok(vec![Some(graph.div(g, node)?)]);
    }
    autodiff::vjp(graph, node, g, wants)
}

/// The names of the parameters whose check fails.
fn failures(results: &[ParamResult]) -> Vec<&str> {
    results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| r.name.as_str())
        .collect()
}

#[test]
fn a_wrong_rule_under_attention_or_layer_norm_is_caught() {
    let source = attention_source(0, 2, 3, 5);
    assert!(failures(&check(&source, 2, 1, autodiff::vjp)).is_empty());
    // Queries, keys and values come from the projection in `w_qkv`: it and the layer norm
    // below it fail, the output projection after the attention does not.
    let wrong = check(&source, 2, 1, wrong_attention_rule);
    assert_eq!(
        failures(&wrong),
        [
            "a.gamma",
            "a.beta",
            "a.w_qkv",
            "a.b_qkv",
            gradcheck::ALL_PARAMS
        ],
        "{wrong:?}"
    );
    // With a mask, attention is batched products around a softmax: keys and values are their
    // right operands, queries are not. (A key's bias adds the same to every score of a row,
    // which softmax ignores: its gradient is 0 however wrong the rule.)
    let masked = attention_source(1, 2, 3, 5);
    assert!(failures(&check(&masked, 2, 1, autodiff::vjp)).is_empty());
    let wrong = check(&masked, 2, 1, wrong_batched_product_rule);
    assert_eq!(
        failures(&wrong),
        ["k.w", "v.w", "v.b", gradcheck::ALL_PARAMS],
        "{wrong:?}"
    );
    // Every parameter before the MLP's layer norm sees its standard deviation's derivative;
    // those after it (`h.*`) do not.
    let wrong = check(&source, 2, 1, wrong_sqrt_rule);
    let before_the_norm = [
        "a.gamma", "a.beta", "a.w_qkv", "a.b_qkv", "a.w_out", "a.b_out",
    ];
    assert_eq!(
        failures(&wrong),
        [&before_the_norm[..], &[gradcheck::ALL_PARAMS]].concat(),
        "{wrong:?}"
    );
}

/// Three AdamW steps of a two-block GPT (causal self-attention, layer norms without bias,
/// exact GELU, tied output layer, matrices alone decayed, warm-up then cosine, clipping that
/// acts) land on PyTorch's parameters to 1e-5, and every step's loss on PyTorch's
/// (`tests/golden/gpt_step.json`, written by `benches/peers/gpt_step.py` with torch 2.15).
#[test]
fn three_adamw_steps_of_a_gpt_match_pytorch() {
    step_matches_pytorch("gpt_step");
}

/// A query whose keys are all hidden gets zeros, not NaN, and so does its gradient; a row with
/// one visible key puts all its weight there.
#[test]
fn fully_hidden_rows_stay_finite() {
    let source = "model hidden {
  input  x[B, 3, 2]
  input  m[B, 3, 3]
  target y[B, 3, 2]
  param  w[2, 2] = [[1, 2], [3, 4]]
  v      = x @ w
  h      = attention(x, x, v, mask = m)
  loss   = mse(h, y)
}
";
    let (graph, loss, grads, h) = gradient_graph_and_h(&model(source));
    let roots = [vec![loss, h], grads].concat();
    let tensor = |shape: &[usize], data: &[f64]| nabla_compiler::ir::Tensor {
        shape: shape.to_vec(),
        data: data.to_vec(),
    };
    let feeds = [
        ("x", tensor(&[1, 3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])),
        // Query 0 sees nothing, query 1 only key 2, query 2 everything.
        (
            "m",
            tensor(&[1, 3, 3], &[0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]),
        ),
        ("y", tensor(&[1, 3, 2], &[0.0; 6])),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_string(), t))
    .chain(std::iter::once((
        "w".to_string(),
        tensor(&[2, 2], &[1.0, 2.0, 3.0, 4.0]),
    )))
    .collect();
    let compiled = JitEvaluator::new(Elem::F32).eval(&graph, &feeds, &roots);
    for out in [
        interp::eval(&graph, &feeds, &roots).unwrap(),
        compiled.unwrap(),
    ] {
        let h = &out[1].data;
        assert_eq!(&h[..2], &[0.0, 0.0], "the hidden query gets zeros");
        // v = x w: row 2 of v is [5 + 18, 10 + 24].
        assert_eq!(
            &h[2..4],
            &[23.0, 34.0],
            "one visible key takes all the weight"
        );
        assert!(
            out.iter().all(|t| t.data.iter().all(|v| v.is_finite())),
            "{out:?}"
        );
    }
}

/// A transformer has no one-step program: `nabla generate` runs it over the last window of
/// tokens, the same text for the same seed, and refuses a model whose prediction at a
/// position depends on later tokens (attention without `causal`).
#[test]
fn a_gpt_generates_over_its_window_and_a_non_causal_model_is_refused() {
    let dir = std::env::temp_dir().join(format!("nabla-attention-gen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("text.txt"), "to be or not to be, ".repeat(60)).unwrap();
    let source = |attention: &str| {
        format!(
            "model lm {{
  input  tokens[B, 8] : index
  target next[B, 8] : class
  e      = embedding(tokens, 9, 12)
  param  pos[8, 12] = normal(0, 0.02)
  x      = e + pos
  q      = transpose(reshape(x, [B, 8, 2, 6]), [0, 2, 1, 3])
  h      = x + reshape(transpose({attention}, [0, 2, 1, 3]), [B, 8, 12])
  logits = layer_norm(h) @ transpose(e.w)
  loss   = cross_entropy(logits, next)
}}
train default {{
  data      = text(\"text.txt\", seq = 8, level = \"char\")
  optimizer = adamw(0.01)
  batch     = 8
  steps     = 40
}}
"
        )
    };
    let run = |name: &str, attention: &str| -> (std::path::PathBuf, String) {
        let file = dir.join(format!("{name}.nn"));
        std::fs::write(&file, source(attention)).unwrap();
        let weights = dir.join(format!("{name}.safetensors"));
        let out = common::nabla(&[
            "train",
            file.to_str().unwrap(),
            "--save",
            weights.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (file, weights.display().to_string())
    };
    let generate = |file: &std::path::Path, weights: &str, seed: &str| {
        common::nabla(&[
            "generate",
            file.to_str().unwrap(),
            "--weights",
            weights,
            "--prompt",
            "to be",
            "--length",
            "30",
            "--seed",
            seed,
        ])
    };
    let (file, weights) = run("causal", "attention(q, q, q, causal = true)");
    let [a, b, c] = ["1", "1", "2"].map(|seed| generate(&file, &weights, seed));
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let text = String::from_utf8_lossy(&a.stdout).into_owned();
    let text = text.trim_end_matches('\n');
    assert!(
        text.starts_with("to be") && text.chars().count() == 35,
        "{text:?}"
    );
    assert_eq!(a.stdout, b.stdout, "the same seed gives the same text");
    assert_ne!(a.stdout, c.stdout, "another seed, another text");
    let (file, weights) = run("open", "attention(q, q, q)");
    let refused = generate(&file, &weights, "1");
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("depends on the tokens after it"),
        "{message}"
    );
}
