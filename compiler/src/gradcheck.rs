//! Gradient checking: symbolic gradients against central finite differences, in f64.
//!
//! For each of several seeded random draws of inputs, targets and parameters, parameter elements
//! are nudged by `±eps` and `(L(w + eps) - L(w - eps)) / 2 eps` is compared with the gradient the
//! graph computes. Both the gradient rules and the evaluator are parameters, so the same check
//! runs the interpreter or compiled code, and can be shown to catch a wrong rule.
//!
//! **Tolerance.** An element passes when `|a - n| <= atol * s + rtol * |n|` (PyTorch's
//! `atol + rtol * |numerical|`, with the absolute part scaled to the problem), where `s` is the
//! scale of the draw: the larger of `|L|` and the largest `|gradient element|`. So a 100% error
//! in a gradient of `1e-7` fails, and finite-difference round-off of a loss of `1e10` passes.
//! A non-finite analytic or numeric value always fails and is reported as such.
//!
//! **Cost.** Every nudge evaluates the whole loss, so checking every tensor of a model costs
//! tensors x graph size. Each draw nudges at most [`Config::max_elements`] elements, spread over
//! the tensors (all of them when they fit; otherwise a different random subset each draw, which
//! the result reports), plus one nudge of *every* element along a random direction, compared
//! with the directional derivative `g . v`. The check is thus linear in the model's size.
//!
//! **Kinks.** A loss through `relu`, `max`, `abs` or max pooling is not differentiable where
//! an argument meets its switch, and a nudge that crosses such a point compares the gradient
//! with a difference of two slopes. Such a crossing has a signature: with slopes `s1` and `s2`
//! on either side, the one-sided differences `(L(x + eps) - L(x)) / eps` and
//! `(L(x) - L(x - eps)) / eps` differ by exactly twice the central difference's error, while a
//! wrong gradient moves both alike. A comparison that fails with that signature is tried again
//! with steps 10 and 100 times smaller, which no longer reach a kink that is not at the point
//! itself; one that still crosses at the smallest step is reported as such, not as a failure.

use std::collections::HashMap;

use nabla_runtime::{Init, Rng};

use crate::autodiff::{self, AutodiffError};
use crate::ir::{EvalError, Graph, NodeId, ShapeError, Tensor};
use crate::model::{Model, Role, ValueKind};

/// Feeds by name: inputs, targets and parameters.
type Feeds = HashMap<String, Tensor<f64>>;

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
    /// Elements nudged per draw at most, over all parameters.
    pub max_elements: usize,
    /// Absolute tolerance, relative to the draw's scale (see the module docs).
    pub atol: f64,
    /// Relative tolerance.
    pub rtol: f64,
    /// Redraw parameters whose values the model gives literally (`= [[40]]`); by default they
    /// are checked at those values, which may be the very point of the model.
    pub random_params: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            cases: 3,
            seed: 0,
            eps: 1e-6,
            batch: 3,
            samples: 24,
            max_elements: 512,
            atol: 1e-6,
            rtol: 1e-4,
            random_params: false,
        }
    }
}

/// The element that fits worst (or the first non-finite one).
#[derive(Clone, Debug, PartialEq)]
pub struct Worst {
    /// Row-major index into the parameter.
    pub element: usize,
    /// The draw it was found in.
    pub case: usize,
    /// The gradient the graph computed.
    pub analytic: f64,
    /// The central difference.
    pub numeric: f64,
}

/// The outcome for one parameter (or, named [`ALL_PARAMS`], for the directional check) over
/// all draws.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamResult {
    /// The parameter's name.
    pub name: String,
    /// Elements compared, over all draws.
    pub checked: usize,
    /// Draws in which the parameter was checked.
    pub cases: usize,
    /// Largest `|analytic - numeric|`; NaN when a value was not finite.
    pub max_abs_err: f64,
    /// Largest `|analytic - numeric| / max(|analytic|, |numeric|)`; NaN likewise.
    pub max_rel_err: f64,
    /// Where the error is largest.
    pub worst: Option<Worst>,
    /// The largest round-off a central difference can carry in its draws (`2^-52 |L| / eps`):
    /// errors below it cannot be seen.
    pub round_off: f64,
    /// Comparisons whose nudge crossed a kink and were checked again with a smaller step.
    pub kinks: usize,
    /// Comparisons that crossed a kink at every step tried: not counted in `checked`.
    pub skipped: usize,
    /// Whether every element was finite and within tolerance.
    pub passed: bool,
}

/// The name of the directional check's result: every parameter nudged along one random
/// direction.
pub const ALL_PARAMS: &str = "(all, random direction)";

impl ParamResult {
    fn new(name: &str) -> ParamResult {
        ParamResult {
            name: name.to_string(),
            checked: 0,
            cases: 0,
            max_abs_err: 0.0,
            max_rel_err: 0.0,
            worst: None,
            round_off: 0.0,
            kinks: 0,
            skipped: 0,
            passed: true,
        }
    }

    /// Compares `analytic` with central differences around `point` along what `set` nudges
    /// (see the module docs on kinks), recording the result unless every step tried crosses a
    /// kink.
    fn compare(
        &mut self,
        (analytic, element, case): (f64, usize, usize),
        point: &Point,
        feeds: &mut Feeds,
        set: &mut dyn FnMut(&mut Feeds, f64),
    ) -> Result<(), EvalError> {
        let tolerance = point.tolerance;
        let mut step = point.eps;
        for retry in 0..=KINK_RETRIES {
            let d = point.differences(feeds, step, set)?;
            self.round_off = self.round_off.max(f64::EPSILON * point.base.abs() / step);
            let error = (analytic - d.central).abs();
            let within = error <= tolerance.0 + tolerance.1 * d.central.abs();
            let kinked = !within && d.bend.abs() >= error && d.bend.is_finite();
            if !kinked {
                let worst = Worst {
                    element,
                    case,
                    analytic,
                    numeric: d.central,
                };
                self.record(worst, tolerance);
                return Ok(());
            }
            if retry == 0 {
                self.kinks += 1;
            }
            step /= 10.0;
        }
        self.skipped += 1;
        Ok(())
    }

    /// Records one comparison; NaN and infinities are kept, not dropped by `max`.
    fn record(&mut self, worst: Worst, tolerance: (f64, f64)) {
        let (a, n) = (worst.analytic, worst.numeric);
        let finite = a.is_finite() && n.is_finite();
        let (abs, rel) = if finite {
            let abs = (a - n).abs();
            (
                abs,
                if abs == 0.0 {
                    0.0
                } else {
                    abs / a.abs().max(n.abs())
                },
            )
        } else {
            (f64::NAN, f64::NAN)
        };
        let ok = finite && abs <= tolerance.0 + tolerance.1 * n.abs();
        self.checked += 1;
        let worse = !self.max_abs_err.is_nan() && (abs.is_nan() || abs > self.max_abs_err);
        if worse || (self.worst.is_none() && !ok) {
            self.max_abs_err = abs;
            self.worst = Some(worst);
        }
        if !self.max_rel_err.is_nan() && (rel.is_nan() || rel > self.max_rel_err) {
            self.max_rel_err = rel;
        }
        self.passed &= ok;
    }
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
/// rules and evaluator. Returns one result per parameter, in order, then the directional
/// check's ([`ALL_PARAMS`]).
pub fn check(
    model: &Model,
    config: &Config,
    rules: autodiff::VjpRule,
    evaluate: Evaluator,
) -> Result<Vec<ParamResult>, GradcheckError> {
    let mut bound = model.clone();
    bound.bind(&|_| Some(config.batch))?;
    let model = &bound;
    let mut graph = model.graph.clone();
    let params: Vec<NodeId> = model.params.iter().map(|p| p.node).collect();
    let grads = autodiff::differentiate_with(&mut graph, model.loss, &params, rules)?;
    let mut outputs = grads.clone();
    outputs.push(model.loss);

    let mut results: Vec<ParamResult> = model
        .params
        .iter()
        .map(|p| ParamResult::new(&p.name))
        .collect();
    let mut directional = ParamResult::new(ALL_PARAMS);
    let per_param = (config.max_elements / params.len().max(1)).clamp(1, config.samples.max(1));
    for case in 0..config.cases {
        let mut rng = Rng::seeded(config.seed.wrapping_add(case as u64));
        let mut feeds = random_feeds(model, &graph, &mut rng, config.random_params);
        let values = evaluate(&graph, &feeds, &outputs)?;
        let (analytic, loss) = values.split_at(grads.len());
        let scale = analytic
            .iter()
            .flat_map(|t| t.data.iter())
            .chain(&loss[0].data)
            .fold(
                0.0f64,
                |m, v| if v.is_finite() { m.max(v.abs()) } else { m },
            );
        let tolerance = (config.atol * scale, config.rtol);
        // The loss as the differences evaluate it (alone, not beside the gradients).
        let point = Point {
            graph: &graph,
            loss: model.loss,
            evaluate,
            base: evaluate(&graph, &feeds, &[model.loss])?[0].data[0],
            eps: config.eps,
            tolerance,
        };
        for i in checked_params(params.len(), config.max_elements, &mut rng) {
            let spec = &model.params[i];
            let len = analytic[i].data.len();
            results[i].cases += 1;
            for element in sample_elements(len, per_param, &mut rng) {
                let original = feeds[&spec.name].data[element];
                let mut set = |feeds: &mut Feeds, step: f64| {
                    let data = &mut feeds
                        .get_mut(&spec.name)
                        .expect("the parameter was fed")
                        .data;
                    data[element] = if step == 0.0 {
                        original
                    } else {
                        original + step
                    };
                };
                let compared = (analytic[i].data[element], element, case);
                results[i].compare(compared, &point, &mut feeds, &mut set)?;
            }
        }
        // Every element at once, along a random direction of ±1s.
        let direction: Vec<Vec<f64>> = analytic
            .iter()
            .map(|t| {
                t.data
                    .iter()
                    .map(|_| if rng.below(2) == 0 { -1.0 } else { 1.0 })
                    .collect()
            })
            .collect();
        let projected: f64 = analytic
            .iter()
            .zip(&direction)
            .flat_map(|(t, d)| t.data.iter().zip(d))
            .map(|(g, v)| g * v)
            .sum();
        let originals: Vec<Vec<f64>> = model
            .params
            .iter()
            .map(|p| feeds[&p.name].data.clone())
            .collect();
        let mut set = |feeds: &mut Feeds, step: f64| {
            for ((spec, d), original) in model.params.iter().zip(&direction).zip(&originals) {
                let data = &mut feeds
                    .get_mut(&spec.name)
                    .expect("the parameter was fed")
                    .data;
                for ((x, v), o) in data.iter_mut().zip(d).zip(original) {
                    *x = o + step * v;
                }
            }
        };
        directional.cases += 1;
        directional.compare((projected, 0, case), &point, &mut feeds, &mut set)?;
    }
    results.push(directional);
    Ok(results)
}

/// Which parameters a draw checks: all of them when each can have an element within the
/// budget, else a random subset of `max_elements`.
fn checked_params(count: usize, max_elements: usize, rng: &mut Rng) -> Vec<usize> {
    let mut all: Vec<usize> = (0..count).collect();
    if count <= max_elements.max(1) {
        return all;
    }
    rng.shuffle(&mut all);
    all.truncate(max_elements.max(1));
    all.sort_unstable();
    all
}

/// How many times a comparison that crosses a kink is tried again, each with a step 10 times
/// smaller.
const KINK_RETRIES: usize = 2;

/// Finite differences of the loss at one point.
struct Difference {
    /// `(L(x + eps) - L(x - eps)) / 2 eps`.
    central: f64,
    /// The forward difference less the backward one, `(L(x + eps) - 2 L(x) + L(x - eps)) /
    /// eps`: twice the central difference's error where the nudge crosses a kink, about
    /// `eps L''` elsewhere.
    bend: f64,
}

/// A draw's point, where the loss is `base`: what finite differences around it need.
struct Point<'a> {
    graph: &'a Graph,
    loss: NodeId,
    evaluate: Evaluator<'a>,
    base: f64,
    eps: f64,
    tolerance: (f64, f64),
}

impl Point<'_> {
    /// The differences at step `eps`, where `set(feeds, step)` sets what is checked to its
    /// original value plus `step` (times a direction); `set(feeds, 0)` restores it exactly.
    fn differences(
        &self,
        feeds: &mut Feeds,
        eps: f64,
        set: &mut dyn FnMut(&mut Feeds, f64),
    ) -> Result<Difference, EvalError> {
        let mut loss_at = |step: f64| {
            set(feeds, step);
            (self.evaluate)(self.graph, feeds, &[self.loss]).map(|v| v[0].data[0])
        };
        let (plus, minus) = (loss_at(eps), loss_at(-eps));
        set(feeds, 0.0);
        let (plus, minus) = (plus?, minus?);
        Ok(Difference {
            central: (plus - minus) / (2.0 * eps),
            bend: (plus - 2.0 * self.base + minus) / eps,
        })
    }
}

/// Which elements to check, at most `samples`: all of a small tensor; otherwise the first and
/// the last (edges are where indexing bugs live) and a random sample of the rest.
fn sample_elements(len: usize, samples: usize, rng: &mut Rng) -> Vec<usize> {
    if len <= samples {
        return (0..len).collect();
    }
    let mut picked: Vec<usize> = match samples {
        0 => return Vec::new(),
        1 => vec![rng.below(len)],
        _ => vec![0, len - 1],
    };
    while picked.len() < samples {
        let i = rng.below(len);
        if !picked.contains(&i) {
            picked.push(i);
        }
    }
    picked
}

/// Random inputs (standard normal), targets (class indices, or uniform in [0, 1) so that
/// probability losses are defined) and parameters: from their initialiser when it is random,
/// the model's literal values unless `random_params`, else uniform in [-1, 1) (so that `zeros`
/// and `ones` parameters are checked away from their special values).
pub fn random_feeds(
    model: &Model,
    graph: &Graph,
    rng: &mut Rng,
    random_params: bool,
) -> HashMap<String, Tensor<f64>> {
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
    for state in &model.states {
        let shape = graph.shape(state.node).concrete().unwrap_or_default();
        let len = shape.iter().product();
        // Running variances must be positive; means may be anything.
        let data = (0..len)
            .map(|_| state.init + rng.uniform(0.0, 1.0))
            .collect();
        feeds.insert(state.name.clone(), Tensor::new(shape, data));
    }
    for carry in &model.carries {
        let shape = graph.shape(carry.input).concrete().unwrap_or_default();
        let len = shape.iter().product();
        let data = (0..len).map(|_| rng.normal(0.0, 0.5)).collect();
        feeds.insert(carry.name.clone(), Tensor::new(shape, data));
    }
    for mask in &model.dropouts {
        let shape = graph.shape(mask.node).concrete().unwrap_or_default();
        let len = shape.iter().product();
        let kept = 1.0 / (1.0 - mask.p);
        let data = (0..len)
            .map(|_| {
                if rng.uniform(0.0, 1.0) >= mask.p {
                    kept
                } else {
                    0.0
                }
            })
            .collect();
        feeds.insert(mask.name.clone(), Tensor::new(shape, data));
    }
    for param in &model.params {
        let shape = graph.shape(param.node).concrete().unwrap_or_default();
        let len = shape.iter().product();
        let data = match &param.init {
            random @ (Init::Uniform { .. } | Init::Normal { .. }) => random.sample(len, rng),
            Init::Values(values) if !random_params => values.clone(),
            Init::Constant(_) | Init::Values(_) => {
                (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
            }
        };
        feeds.insert(param.name.clone(), Tensor::new(shape, data));
    }
    feeds
}
