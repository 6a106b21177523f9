//! Gradient checking: symbolic gradients against central finite differences, in f64.
//!
//! For each of several seeded random draws of inputs, targets and parameters, every parameter
//! element (a random sample plus the first and last element, for large tensors) is nudged by
//! `±eps` and `(L(w + eps) - L(w - eps)) / 2 eps` is compared with the gradient the graph
//! computes. Both the gradient rules and the evaluator are parameters, so the same check runs
//! the interpreter or compiled code, and can be shown to catch a wrong rule.

use std::collections::HashMap;

use nabla_runtime::{Init, Rng};

use crate::autodiff::{self, AutodiffError};
use crate::ir::{EvalError, Graph, NodeId, ShapeError, Tensor};
use crate::model::{Model, Role, ValueKind};

/// Evaluates graph nodes in f64 given feeds by name (the interpreter's `eval` has this type).
pub type Evaluator<'a> = &'a dyn Fn(
    &Graph,
    &HashMap<String, Tensor<f64>>,
    &[NodeId],
) -> Result<Vec<Tensor<f64>>, EvalError>;

/// How to check.
#[derive(Clone, Debug)]
pub struct Config {
    /// Random draws to check.
    pub cases: usize,
    /// Seed of the first draw; draw `i` uses `seed + i`.
    pub seed: u64,
    /// Finite-difference step.
    pub eps: f64,
    /// Value every symbolic dimension (the batch) is bound to.
    pub batch: usize,
    /// Elements checked per parameter at most (first and last always among them).
    pub samples: usize,
    /// Absolute tolerance.
    pub atol: f64,
    /// Relative tolerance: an element passes when `|a - n| <= atol + rtol * |n|`.
    pub rtol: f64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            cases: 3,
            seed: 0,
            eps: 1e-6,
            batch: 3,
            samples: 24,
            atol: 1e-6,
            rtol: 1e-4,
        }
    }
}

/// The outcome for one parameter over all draws.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamResult {
    /// The parameter's name.
    pub name: String,
    /// Elements compared, over all draws.
    pub checked: usize,
    /// Largest `|analytic - numeric|`.
    pub max_abs_err: f64,
    /// Largest `|analytic - numeric| / max(|analytic|, |numeric|)`.
    pub max_rel_err: f64,
    /// Whether every element was within tolerance.
    pub passed: bool,
}

/// Why a check could not run.
#[derive(Debug, thiserror::Error)]
pub enum GradcheckError {
    /// Differentiation failed.
    #[error(transparent)]
    Autodiff(#[from] AutodiffError),
    /// Binding the batch failed.
    #[error(transparent)]
    Shape(#[from] ShapeError),
    /// Evaluation failed.
    #[error(transparent)]
    Eval(#[from] EvalError),
}

/// Checks the gradient of `model`'s loss with respect to every parameter, with the given VJP
/// rules and evaluator. Returns one result per parameter, in order.
pub fn check(
    model: &Model,
    config: &Config,
    rules: autodiff::VjpRule,
    evaluate: Evaluator,
) -> Result<Vec<ParamResult>, GradcheckError> {
    let mut graph = model.graph.clone();
    graph.bind(&|_| Some(config.batch))?;
    let params: Vec<NodeId> = model.params.iter().map(|p| p.node).collect();
    let grads = autodiff::differentiate_with(&mut graph, model.loss, &params, rules)?;

    let mut results: Vec<ParamResult> = model
        .params
        .iter()
        .map(|p| ParamResult {
            name: p.name.clone(),
            checked: 0,
            max_abs_err: 0.0,
            max_rel_err: 0.0,
            passed: true,
        })
        .collect();
    for case in 0..config.cases {
        let mut rng = Rng::seeded(config.seed.wrapping_add(case as u64));
        let mut feeds = random_feeds(model, &graph, &mut rng);
        let analytic = evaluate(&graph, &feeds, &grads)?;
        for (i, spec) in model.params.iter().enumerate() {
            let len = analytic[i].data.len();
            for element in sample_elements(len, config.samples, &mut rng) {
                let numeric = central_difference(
                    &graph, model.loss, &mut feeds, &spec.name, element, config.eps, evaluate,
                )?;
                let a = analytic[i].data[element];
                let abs = (a - numeric).abs();
                let rel = if abs == 0.0 {
                    0.0
                } else {
                    abs / a.abs().max(numeric.abs())
                };
                let result = &mut results[i];
                result.checked += 1;
                result.max_abs_err = result.max_abs_err.max(abs);
                result.max_rel_err = result.max_rel_err.max(rel);
                result.passed &= abs <= config.atol + config.rtol * numeric.abs() && a.is_finite();
            }
        }
    }
    Ok(results)
}

/// `(L(x + eps) - L(x - eps)) / 2 eps` for one element of one fed tensor, restoring it after.
fn central_difference(
    graph: &Graph,
    loss: NodeId,
    feeds: &mut HashMap<String, Tensor<f64>>,
    name: &str,
    element: usize,
    eps: f64,
    evaluate: Evaluator,
) -> Result<f64, EvalError> {
    let original = feeds[name].data[element];
    let loss_at = |value: f64, feeds: &mut HashMap<String, Tensor<f64>>| {
        feeds.get_mut(name).expect("the parameter was fed").data[element] = value;
        evaluate(graph, feeds, &[loss]).map(|v| v[0].data[0])
    };
    let plus = loss_at(original + eps, feeds)?;
    let minus = loss_at(original - eps, feeds)?;
    feeds.get_mut(name).expect("the parameter was fed").data[element] = original;
    Ok((plus - minus) / (2.0 * eps))
}

/// Which elements to check: all of a small tensor; otherwise the first, the last and a random
/// sample of the rest.
fn sample_elements(len: usize, samples: usize, rng: &mut Rng) -> Vec<usize> {
    if len <= samples.max(2) {
        return (0..len).collect();
    }
    let mut picked = vec![0, len - 1];
    while picked.len() < samples {
        let i = rng.below(len);
        if !picked.contains(&i) {
            picked.push(i);
        }
    }
    picked
}

/// Random inputs (standard normal), targets (class indices, or uniform in [0, 1) so that
/// probability losses are defined) and parameters (from their initialiser when it is random,
/// else uniform in [-1, 1) so that literal and constant parameters are checked away from their
/// special values).
pub fn random_feeds(model: &Model, graph: &Graph, rng: &mut Rng) -> HashMap<String, Tensor<f64>> {
    let mut feeds = HashMap::new();
    for input in &model.inputs {
        let shape = graph.shape(input.node).concrete().unwrap_or_default();
        let len = shape.iter().product();
        let data = match (input.role, input.kind) {
            (_, ValueKind::Class { classes }) => (0..len)
                .map(|_| rng.below(classes.unwrap_or(2)) as f64)
                .collect(),
            (Role::Target, ValueKind::Real) => (0..len).map(|_| rng.uniform(0.0, 1.0)).collect(),
            (Role::Input, ValueKind::Real) => (0..len).map(|_| rng.normal(0.0, 1.0)).collect(),
        };
        feeds.insert(input.name.clone(), Tensor::new(shape, data));
    }
    for param in &model.params {
        let shape = graph.shape(param.node).concrete().unwrap_or_default();
        let len = shape.iter().product();
        let data = match &param.init {
            random @ (Init::Uniform { .. } | Init::Normal { .. }) => random.sample(len, rng),
            Init::Constant(_) | Init::Values(_) => {
                (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
            }
        };
        feeds.insert(param.name.clone(), Tensor::new(shape, data));
    }
    feeds
}
