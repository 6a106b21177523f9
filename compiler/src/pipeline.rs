//! The pass order, written once. From a model to native code, each step one named call:
//!
//! 1. **bind**: symbols such as the batch `B` become numbers ([`Model::bind`]);
//! 2. **differentiate**: the gradient of the loss for every parameter ([`crate::autodiff`]);
//! 3. **optimizer**: each parameter's update and new optimizer state ([`optim::apply`]; for
//!    data-parallel training, split from the gradients at this boundary: [`data_parallel_step`]);
//! 4. **simplify**: e-graph rewriting ([`crate::egraph`]);
//! 5. **batch products**: sums of matrix products into one product ([`crate::batch`]);
//! 6. **fuse**: which values are stored, which nodes share a kernel ([`crate::fusion`]);
//! 7. **lower**: fused groups into kernels of the kernel IR ([`crate::lower`]);
//! 8. **plan memory**: temporaries share buffers where lifetimes allow ([`crate::memory`]);
//! 9. **codegen**: kernels into machine code ([`crate::codegen`]).
//!
//! A train step runs them all ([`bind`], [`train_step`], then [`compile`]); evaluation and
//! prediction skip 2 and 3. The graph verifier ([`crate::ir::verify`]) checks the graph after
//! each of the graph passes 1 to 5, and that each pass hands on as many values as it was given,
//! of the same shapes where it may not change them; a pass that breaks an invariant stops the
//! compilation with its name instead of training on a wrong graph. It runs in every build, as
//! Cranelift's verifier does: 2 to 3% of the compilation's work (callgrind: the char-RNN, the
//! MLP), and nothing per training step. `NABLA_DEBUG=1` reports each pass on stderr.

use nabla_runtime::Elem;

use crate::autodiff::AutodiffError;
use crate::batch;
use crate::codegen::jit::{self, CodegenError, Compiled, Listing};
use crate::data_parallel;
use crate::egraph::{self, Limits, RuleSet, Simplified};
use crate::fusion::{self, Fusion};
use crate::ir::verify::{self, VerifyError};
use crate::ir::{Graph, NodeId, ShapeError};
use crate::kernel::Plan;
use crate::lower::{self, LowerError};
use crate::memory::{self, Packing};
use crate::model::Model;
use crate::optim::{self, Optimizer, TrainStep};

/// Why a graph could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// A shape did not check (binding a symbol to a size the model cannot take).
    #[error(transparent)]
    Shape(#[from] ShapeError),
    /// The model could not be differentiated.
    #[error(transparent)]
    Autodiff(#[from] AutodiffError),
    /// The graph cannot be lowered (unbound shapes).
    #[error(transparent)]
    Lower(#[from] LowerError),
    /// Cranelift failed.
    #[error(transparent)]
    Codegen(#[from] CodegenError),
    /// A pass broke an invariant of the graph (a bug in nabla).
    #[error("internal error: the `{pass}` pass broke the graph: {error}")]
    Verify {
        /// The pass.
        pass: &'static str,
        /// What is wrong.
        error: VerifyError,
    },
}

/// Which optional passes run (both by default; `--no-simplify` and `--no-fuse` turn them off
/// to measure their effect).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Passes {
    /// E-graph simplification and batching of products.
    pub simplify: bool,
    /// Kernel fusion.
    pub fuse: bool,
    /// Simplification rules that assume finite values (`--fast-math`).
    pub fast_math: bool,
    /// A rule simplification leaves out, to measure what it saves (`nabla graph --stats`).
    pub leave_out: Option<&'static str>,
}

impl Default for Passes {
    fn default() -> Passes {
        Passes {
            simplify: true,
            fuse: true,
            fast_math: false,
            leave_out: None,
        }
    }
}

/// What to compute: named outputs and assignments into external buffers.
pub struct Request<'a> {
    /// The graph, with every dimension bound.
    pub graph: &'a Graph,
    /// Named results to read after a run.
    pub outputs: Vec<(String, NodeId)>,
    /// `(value, external buffer name)`: written at the end of each run.
    pub assignments: Vec<(NodeId, String)>,
    /// Element type.
    pub elem: Elem,
    /// Which text of each kernel to keep.
    pub listing: Listing,
    /// Which optional passes run.
    pub passes: Passes,
    /// Threads large matrix products may use.
    pub threads: usize,
    /// External buffers laid out as parts of one (a data-parallel step's gradients).
    pub packing: Option<Packing>,
}

impl Request<'_> {
    /// The outputs, then the assigned values.
    fn roots(&self) -> Vec<NodeId> {
        lower::roots(&self.outputs, &self.assignments)
    }
}

/// What a compilation produced on the way, for inspection and `--stats`.
pub struct Trace {
    /// The graph after simplification (a copy when simplification is off).
    pub simplified: Simplified,
    /// Which values are stored and which nodes share a kernel.
    pub fusion: Fusion,
    /// The buffer plan and kernels.
    pub plan: Plan,
    /// Milliseconds spent simplifying (steps 4 and 5).
    pub simplify_ms: f64,
    /// Milliseconds spent fusing, lowering and planning memory (steps 6 to 8).
    pub schedule_ms: f64,
    /// Milliseconds spent generating machine code (0 when none was generated).
    pub codegen_ms: f64,
}

/// Step 1: `model` with its symbolic dimensions (the batch) bound to `batch`.
pub fn bind(model: &Model, batch: usize) -> Result<Model, CompileError> {
    let mut model = model.clone();
    model.bind(&|_| Some(batch))?;
    let mut roots = vec![model.loss];
    roots.extend(model.prediction.map(|p| p.node));
    verified("bind", &model.graph, &roots)?;
    Ok(model)
}

/// Steps 2 and 3: the train step of `model` (bound or not) under `optimizer`: its loss,
/// prediction, and the assignments of new parameters, optimizer state and layer state.
pub fn train_step(model: &Model, optimizer: &Optimizer) -> Result<TrainStep, CompileError> {
    let gradients = model.gradient_graph()?;
    let roots: Vec<NodeId> = std::iter::once(gradients.1)
        .chain(gradients.2.iter().copied())
        .collect();
    verified("differentiate", &gradients.0, &roots)?;
    let step = optim::apply(model, gradients, optimizer)?;
    verified("optimizer", &step.graph, &step.roots())?;
    Ok(step)
}

/// Steps 2 and 3 split at the gradient/update boundary for data-parallel training
/// ([`crate::data_parallel`]): the local step (bound or not) and the update.
pub fn data_parallel_step(
    model: &Model,
    optimizer: &Optimizer,
) -> Result<(TrainStep, TrainStep), CompileError> {
    let gradients = model.gradient_graph()?;
    let roots: Vec<NodeId> = std::iter::once(gradients.1)
        .chain(gradients.2.iter().copied())
        .collect();
    verified("differentiate", &gradients.0, &roots)?;
    let local = data_parallel::local_step(model, gradients)?;
    verified("local step", &local.graph, &local.roots())?;
    let update = data_parallel::update(model, optimizer)?;
    verified("optimizer", &update.graph, &update.roots())?;
    Ok((local, update))
}

/// Steps 4 to 9: simplifies, fuses, lowers, plans and compiles what `request` asks for.
pub fn compile(request: &Request) -> Result<(Compiled, Trace), CompileError> {
    let mut trace = plan(request)?;
    let started = std::time::Instant::now();
    let compiled = jit::compile(&trace.plan, request.elem, request.listing, request.threads)?;
    trace.codegen_ms = elapsed_ms(started);
    if debug_level() >= 1 {
        eprintln!(
            "[nabla] codegen: {} kernels, {} buffers in {:.1} ms",
            trace.plan.kernels.len(),
            trace.plan.buffers.len(),
            trace.codegen_ms
        );
    }
    Ok((compiled, trace))
}

/// Steps 4 to 8: every pass before code generation.
pub fn plan(request: &Request) -> Result<Trace, CompileError> {
    let started = std::time::Instant::now();
    let simplified = simplify(request.graph, &request.roots(), request.passes)?;
    let simplify_ms = elapsed_ms(started);
    if debug_level() >= 1 {
        eprintln!(
            "[nabla] simplify: {} nodes -> {} in {simplify_ms:.1} ms ({})",
            simplified.nodes_before,
            simplified.graph.ancestors(&simplified.roots).len(),
            simplified.report
        );
    }
    let (outputs, assignments) = simplified.roots.split_at(request.outputs.len());
    let outputs: Vec<(String, NodeId)> = request
        .outputs
        .iter()
        .map(|(n, _)| n.clone())
        .zip(outputs.iter().copied())
        .collect();
    let assignments: Vec<(NodeId, String)> = assignments
        .iter()
        .copied()
        .zip(request.assignments.iter().map(|(_, n)| n.clone()))
        .collect();
    let started = std::time::Instant::now();
    let fuse = fusion::Options {
        fuse: request.passes.fuse,
    };
    let fusion = fusion::fuse(&simplified.graph, &simplified.roots, fuse);
    let lowered = lower::lower(
        &simplified.graph,
        &fusion,
        &outputs,
        &assignments,
        request.threads,
    )?;
    let plan = memory::plan(lowered, request.packing.as_ref())?;
    Ok(Trace {
        simplified,
        fusion,
        plan,
        simplify_ms,
        schedule_ms: elapsed_ms(started),
        codegen_ms: 0.0,
    })
}

/// Steps 6 to 8 without fusion: every op its own kernel, each stored (an estimate of the memory
/// a graph needs that costs no e-graph run, and the baseline of `--stats`' bytes moved).
pub fn plan_unfused(
    graph: &Graph,
    outputs: &[(String, NodeId)],
    assignments: &[(NodeId, String)],
) -> Result<Plan, CompileError> {
    let roots = lower::roots(outputs, assignments);
    let fusion = fusion::fuse(graph, &roots, fusion::Options { fuse: false });
    let lowered = lower::lower(graph, &fusion, outputs, assignments, 1)?;
    Ok(memory::plan(lowered, None)?)
}

/// What a [`GraphPass`] does: from a graph and the values wanted of it, a new graph and the same
/// values in it; what it did is added to the report (`Simplified`'s other fields).
pub type RunPass =
    fn(&Graph, &[NodeId], Passes, &mut Simplified) -> Result<(Graph, Vec<NodeId>), ShapeError>;

/// A pass from graph to graph in steps 4 and 5: it rewrites what `roots` compute into a new
/// graph, keeping every root's shape.
#[derive(Clone, Copy)]
pub struct GraphPass {
    /// Its name in reports and verifier errors.
    pub name: &'static str,
    /// What it does.
    pub run: RunPass,
}

/// Steps 4 and 5, in order.
pub const SIMPLIFICATION: [GraphPass; 2] = [
    GraphPass {
        name: "simplify",
        run: rewrite,
    },
    GraphPass {
        name: "batch products",
        run: batch_products,
    },
];

/// Steps 4 and 5 as `passes` asks for them; with `simplify` off, what `roots` need copied
/// unchanged.
pub fn simplify(
    graph: &Graph,
    roots: &[NodeId],
    passes: Passes,
) -> Result<Simplified, CompileError> {
    simplify_with(graph, roots, passes, &SIMPLIFICATION)
}

/// [`simplify`] with another list of graph passes (how a test shows that the verifier catches a
/// broken one).
pub fn simplify_with(
    graph: &Graph,
    roots: &[NodeId],
    passes: Passes,
    list: &[GraphPass],
) -> Result<Simplified, CompileError> {
    if !passes.simplify || list.is_empty() {
        return Ok(Simplified::unchanged(graph, roots));
    }
    let mut simplified = Simplified {
        graph: Graph::new(),
        roots: Vec::new(),
        nodes_before: graph.ancestors(roots).len(),
        report: String::new(),
        stop_reason: String::new(),
        rules_fired: Vec::new(),
    };
    let mut current: Option<(Graph, Vec<NodeId>)> = None;
    for pass in list {
        let (input, wanted) = match &current {
            Some((g, r)) => (g, r.as_slice()),
            None => (graph, roots),
        };
        let (output, results) = (pass.run)(input, wanted, passes, &mut simplified)?;
        verified(pass.name, &output, &results)?;
        keeps_shapes(pass.name, (input, wanted), (&output, &results))?;
        current = Some((output, results));
    }
    if let Some((graph, roots)) = current {
        simplified.graph = graph;
        simplified.roots = roots;
    }
    Ok(simplified)
}

/// Step 4: e-graph rewriting.
fn rewrite(
    graph: &Graph,
    roots: &[NodeId],
    passes: Passes,
    simplified: &mut Simplified,
) -> Result<(Graph, Vec<NodeId>), ShapeError> {
    let rules = if passes.fast_math {
        RuleSet::FastMath
    } else {
        RuleSet::Ieee
    };
    let rules = egraph::rules::all(rules)
        .into_iter()
        .filter(|rule| Some(rule.name.as_str()) != passes.leave_out)
        .collect();
    let done = egraph::simplify_with(graph, roots, &Limits::default(), rules)?;
    simplified.report = done.report;
    simplified.stop_reason = done.stop_reason;
    simplified.rules_fired = done.rules_fired;
    Ok((done.graph, done.roots))
}

/// Step 5: sums of matrix products batched into one product of concatenations.
fn batch_products(
    graph: &Graph,
    roots: &[NodeId],
    _: Passes,
    simplified: &mut Simplified,
) -> Result<(Graph, Vec<NodeId>), ShapeError> {
    let batched = batch::batch_products(graph, roots)?;
    match batched.sums {
        0 => {}
        1 => simplified.report += "; 1 sum of products batched",
        n => simplified.report += &format!("; {n} sums of products batched"),
    }
    Ok((batched.graph, batched.roots))
}

/// Checks the graph `pass` produced: its invariants, and that every root is one of its nodes.
fn verified(pass: &'static str, graph: &Graph, roots: &[NodeId]) -> Result<(), CompileError> {
    let broken = |error| CompileError::Verify { pass, error };
    verify::verify(graph).map_err(broken)?;
    match roots.iter().find(|r| r.index() >= graph.len()) {
        Some(r) => Err(broken(VerifyError {
            node: r.index(),
            problem: format!("is a result, but the graph has {} nodes", graph.len()),
        })),
        None => Ok(()),
    }
}

/// Checks that `pass` kept the number and shapes of the roots.
fn keeps_shapes(
    pass: &'static str,
    (before, wanted): (&Graph, &[NodeId]),
    (after, results): (&Graph, &[NodeId]),
) -> Result<(), CompileError> {
    let broken = |node: usize, problem: String| CompileError::Verify {
        pass,
        error: VerifyError { node, problem },
    };
    if results.len() != wanted.len() {
        return Err(broken(
            0,
            format!(
                "{} results went in and {} came out",
                wanted.len(),
                results.len()
            ),
        ));
    }
    for (i, (&root, &old)) in results.iter().zip(wanted).enumerate() {
        let (now, shape) = (after.shape(root), before.shape(old));
        if now != shape {
            return Err(broken(
                root.index(),
                format!("result {i} had shape {shape} before the pass and has {now} after it"),
            ));
        }
    }
    Ok(())
}

pub(crate) fn elapsed_ms(since: std::time::Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// The `NABLA_DEBUG` level: 0 (default) silent, 1 pass reports and timings on stderr.
pub fn debug_level() -> u32 {
    std::env::var("NABLA_DEBUG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Shape, UnaryOp};

    /// `x [2, 3]`, `sum(exp x)` and `exp x`: two results of different shapes.
    fn graph() -> (Graph, Vec<NodeId>) {
        let mut g = Graph::new();
        let x = g.input("x", Shape::known(&[2, 3])).unwrap();
        let e = g.unary(UnaryOp::Exp, x).unwrap();
        let s = g.sum_all(e).unwrap();
        (g, vec![s, e])
    }

    type Out = Result<(Graph, Vec<NodeId>), ShapeError>;

    fn swaps_results(g: &Graph, roots: &[NodeId], _: Passes, _: &mut Simplified) -> Out {
        Ok((g.clone(), vec![roots[1], roots[0]]))
    }

    fn drops_a_result(g: &Graph, roots: &[NodeId], _: Passes, _: &mut Simplified) -> Out {
        Ok((g.clone(), roots[..1].to_vec()))
    }

    fn points_past_the_graph(g: &Graph, roots: &[NodeId], _: Passes, _: &mut Simplified) -> Out {
        let mut roots = roots.to_vec();
        roots[0] = NodeId::new(g.len());
        Ok((g.clone(), roots))
    }

    #[test]
    fn the_verifier_names_a_broken_pass_wherever_it_runs() {
        let (g, roots) = graph();
        let passes = Passes::default();
        assert!(simplify(&g, &roots, passes).is_ok());
        let broken: [(RunPass, &str); 3] = [
            (
                swaps_results,
                "result 0 had shape [] before the pass and has [2, 3] after it",
            ),
            (drops_a_result, "2 results went in and 1 came out"),
            (points_past_the_graph, "is a result, but the graph has"),
        ];
        for (run, problem) in broken {
            for at in 0..=SIMPLIFICATION.len() {
                let mut list = SIMPLIFICATION.to_vec();
                list.insert(
                    at,
                    GraphPass {
                        name: "broken",
                        run,
                    },
                );
                let Err(error) = simplify_with(&g, &roots, passes, &list) else {
                    panic!("at {at}: the broken pass went unnoticed");
                };
                let error = error.to_string();
                assert!(
                    error.starts_with("internal error: the `broken` pass broke the graph")
                        && error.contains(problem),
                    "at {at}: {error}"
                );
            }
        }
    }
}
