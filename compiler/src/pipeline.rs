//! The pass order, written once: bound graph → (gradients) → e-graph simplification → buffer
//! plan → Cranelift code → runtime program. Everything that compiles a graph to native code goes
//! through [`compile`].

use std::cell::RefCell;
use std::collections::HashMap;

use nabla_runtime::train::{
    BiasCorrection, Compile, Feed, Mask, ModelInfo, ParamInfo, PredictionKind, gradient_name,
};
use nabla_runtime::{Buffer, Elem, Executable, Program};

use crate::batch;
use crate::codegen::jit::{self, CodegenError, Compiled, Listing};
use crate::egraph::{self, Limits, RuleSet, Simplified};
use crate::fusion;
use crate::ir::{Dim, EvalError, Graph, NodeId, Shape, ShapeError, Tensor};
use crate::model::{Model, Role, ValueKind};
use crate::optim::{self, Optimizer, OptimizerKind};
use crate::schedule::{self, Plan, ScheduleError};

/// Why a graph could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// Simplification produced an ill-shaped graph (a bug).
    #[error(transparent)]
    Shape(#[from] ShapeError),
    /// The graph cannot be planned (unbound shapes).
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// Cranelift failed.
    #[error(transparent)]
    Codegen(#[from] CodegenError),
}

/// Which optional passes run (both by default; `--no-simplify` and `--no-fuse` turn them off
/// to measure their effect).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Passes {
    /// E-graph simplification.
    pub simplify: bool,
    /// Kernel fusion.
    pub fuse: bool,
    /// Simplification rules that assume finite values (`--fast-math`).
    pub fast_math: bool,
}

impl Default for Passes {
    fn default() -> Passes {
        Passes {
            simplify: true,
            fuse: true,
            fast_math: false,
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
}

/// What a compilation produced on the way, for inspection and `--stats`.
pub struct Trace {
    /// The graph after simplification (a copy when simplification is off).
    pub simplified: egraph::Simplified,
    /// The buffer plan and kernels.
    pub plan: Plan,
    /// Milliseconds spent simplifying.
    pub simplify_ms: f64,
    /// Milliseconds spent fusing and scheduling.
    pub schedule_ms: f64,
    /// Milliseconds spent generating machine code (0 when none was generated).
    pub codegen_ms: f64,
}

/// Simplifies, plans and compiles what `request` asks for.
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

/// Simplifies and plans what `request` asks for: every pass before code generation.
pub fn plan(request: &Request) -> Result<Trace, CompileError> {
    let roots: Vec<NodeId> = request
        .outputs
        .iter()
        .map(|(_, n)| *n)
        .chain(request.assignments.iter().map(|(n, _)| *n))
        .collect();
    let started = std::time::Instant::now();
    let simplified = simplify(request.graph, &roots, request.passes)?;
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
    let options = fusion::Options {
        fuse: request.passes.fuse,
    };
    let started = std::time::Instant::now();
    let plan = schedule::schedule(&simplified.graph, &outputs, &assignments, options)?;
    Ok(Trace {
        simplified,
        plan,
        simplify_ms,
        schedule_ms: elapsed_ms(started),
        codegen_ms: 0.0,
    })
}

/// The simplifications `passes` asks for: e-graph rewriting, then batching sums of matrix
/// products; with `simplify` off, what `roots` need copied unchanged.
pub fn simplify(graph: &Graph, roots: &[NodeId], passes: Passes) -> Result<Simplified, ShapeError> {
    if !passes.simplify {
        return Ok(Simplified::unchanged(graph, roots));
    }
    let rules = if passes.fast_math {
        RuleSet::FastMath
    } else {
        RuleSet::Ieee
    };
    let mut simplified = egraph::simplify(graph, roots, &Limits::default(), rules)?;
    let batched = batch::batch_products(&simplified.graph, &simplified.roots)?;
    match batched.sums {
        0 => {}
        1 => simplified.report += "; 1 sum of products batched",
        n => simplified.report += &format!("; {n} sums of products batched"),
    }
    simplified.graph = batched.graph;
    simplified.roots = batched.roots;
    Ok(simplified)
}

fn elapsed_ms(since: std::time::Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// The `NABLA_DEBUG` level: 0 (default) silent, 1 pass reports and timings on stderr.
pub fn debug_level() -> u32 {
    std::env::var("NABLA_DEBUG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Evaluates graphs with compiled code, with the interpreter's signature (so it can stand in for
/// it in gradient checks and differential tests). Programs are compiled once per set of outputs
/// and reused.
pub struct JitEvaluator {
    elem: Elem,
    passes: Passes,
    /// Threads products and convolutions may use.
    threads: usize,
    cache: RefCell<HashMap<Vec<NodeId>, Executable>>,
}

impl JitEvaluator {
    /// An evaluator computing in `elem` with every pass.
    pub fn new(elem: Elem) -> JitEvaluator {
        JitEvaluator::with_passes(elem, Passes::default())
    }

    /// An evaluator computing in `elem` with the given passes.
    pub fn with_passes(elem: Elem, passes: Passes) -> JitEvaluator {
        JitEvaluator {
            elem,
            passes,
            threads: 1,
            cache: RefCell::new(HashMap::new()),
        }
    }

    /// This evaluator with `threads` threads for products and convolutions.
    pub fn with_threads(mut self, threads: usize) -> JitEvaluator {
        self.threads = threads;
        self
    }

    /// Compiles (once) and runs `outputs` of `graph` on `feeds`.
    pub fn eval(
        &self,
        graph: &Graph,
        feeds: &HashMap<String, Tensor<f64>>,
        outputs: &[NodeId],
    ) -> Result<Vec<Tensor<f64>>, EvalError> {
        let mut cache = self.cache.borrow_mut();
        if !cache.contains_key(outputs) {
            let request = Request {
                graph,
                outputs: outputs
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| (format!("out{i}"), n))
                    .collect(),
                assignments: Vec::new(),
                elem: self.elem,
                listing: Listing::None,
                passes: self.passes,
                threads: self.threads,
            };
            let (compiled, _) = compile(&request).map_err(|e| EvalError::Backend(e.to_string()))?;
            let exe =
                Executable::new(compiled.program).map_err(|e| EvalError::Backend(e.to_string()))?;
            cache.insert(outputs.to_vec(), exe);
        }
        let exe = cache.get_mut(outputs).expect("inserted above");
        let mut externals: HashMap<String, Buffer> = feeds
            .iter()
            .map(|(k, t)| (k.clone(), Buffer::from_f64(&t.data, self.elem)))
            .collect();
        exe.run(&mut [&mut externals])
            .map_err(|e| EvalError::Backend(e.to_string()))?;
        Ok(outputs
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let shape = graph.shape(n).concrete().unwrap_or_default();
                let data = exe
                    .output(&format!("out{i}"))
                    .map(|b| b.to_f64())
                    .unwrap_or_default();
                Tensor::new(shape, data)
            })
            .collect())
    }
}

/// Bytes a training run holds at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    /// The parameters.
    pub params: u64,
    /// The optimizer's state.
    pub state: u64,
    /// The train step's temporaries and one batch of inputs.
    pub step: u64,
}

impl Memory {
    /// Everything together.
    pub fn total(&self) -> u64 {
        self.params + self.state + self.step
    }
}

/// A model's programs for the runtime's training loop: a train step, evaluation and prediction,
/// compiled per batch size on request.
pub struct ModelPrograms {
    /// The model as the train step (and its gradients) compute it.
    model: Model,
    /// The model as evaluation and prediction compute it.
    eval: Model,
    /// The model as generation computes it, one step at a time, if it has one.
    generate: Option<Model>,
    optimizer: Optimizer,
    elem: Elem,
    /// Which optional passes run.
    pub passes: Passes,
    /// Threads large matrix products may use (1 by default).
    pub threads: usize,
}

impl ModelPrograms {
    /// Programs for `model` trained with `optimizer`, computing in `elem`.
    pub fn new(model: Model, optimizer: Optimizer, elem: Elem) -> ModelPrograms {
        ModelPrograms {
            eval: model.clone(),
            generate: None,
            model,
            optimizer,
            elem,
            passes: Passes::default(),
            threads: 1,
        }
    }

    /// These programs with `eval` (the model lowered for evaluation) computing evaluation and
    /// prediction.
    pub fn with_eval(mut self, eval: Model) -> ModelPrograms {
        self.eval = eval;
        self
    }

    /// These programs with `generate` (the model lowered for generation) computing
    /// [`ModelPrograms::generate_step`].
    pub fn with_generation(mut self, generate: Option<Model>) -> ModelPrograms {
        self.generate = generate;
        self
    }

    /// One generation step for one sequence: the prediction for the fed token, with every
    /// recurrent state read from and written back to the external buffer of its name (zeros
    /// before the first step), and the names of those buffers with their lengths.
    pub fn generate_step(&self) -> Result<(Program, Vec<(String, usize)>), String> {
        let model = self
            .generate
            .as_ref()
            .ok_or("the model cannot generate: it needs a token input like `tokens[B, 64] : index` and shapes that allow one token at a time (no layer may depend on the whole window, like `dense(flatten(...))`)")?;
        let model = bind(model, 1)?;
        let p = model.prediction.ok_or("the model has no prediction")?;
        let assignments = model
            .carries
            .iter()
            .map(|c| (c.output, c.name.clone()))
            .collect();
        let carries = model
            .carries
            .iter()
            .map(|c| {
                let len = model.graph.shape(c.input).numel().unwrap_or(0);
                (c.name.clone(), len)
            })
            .collect();
        let outputs = vec![("prediction".to_string(), p.node)];
        let compiled = self.build(&model.graph, outputs, assignments)?;
        Ok((compiled.program, carries))
    }

    /// What the training loop needs to know, as plain data. Fails when an input has no batch
    /// dimension first.
    pub fn info(&self) -> Result<ModelInfo, String> {
        let g = &self.model.graph;
        let mut feeds = Vec::new();
        for input in &self.model.inputs {
            let dims = g.shape(input.node).dims();
            if !matches!(dims.first(), Some(Dim::Sym(_))) {
                return Err(format!(
                    "`{}` has shape {}; data needs a symbolic batch dimension first, like [B, ...]",
                    input.name,
                    g.shape(input.node)
                ));
            }
            let row_len = Shape(dims[1..].to_vec())
                .numel()
                .ok_or_else(|| format!("`{}` may have only one symbolic dimension", input.name))?;
            let classes = match input.kind {
                ValueKind::Class { classes } => Some(classes.unwrap_or(usize::MAX)),
                ValueKind::Real => None,
            };
            feeds.push(Feed {
                name: input.name.clone(),
                row_len,
                classes,
                target: input.role == Role::Target,
            });
        }
        let mut params = Vec::new();
        let mut states = Vec::new();
        for p in &self.model.params {
            let shape = g
                .shape(p.node)
                .concrete()
                .expect("parameter shapes are known");
            for s in self.optimizer.state_names() {
                states.push((optim::state_buffer(&p.name, s), shape.clone()));
            }
            params.push(ParamInfo {
                name: p.name.clone(),
                shape,
                init: p.init.clone(),
            });
        }
        let bias_correction = match self.optimizer.kind {
            OptimizerKind::Adam => Some(BiasCorrection {
                terms: vec![
                    (optim::BC1.into(), self.optimizer.beta1),
                    (optim::BC2.into(), self.optimizer.beta2),
                ],
            }),
            OptimizerKind::Adamax => Some(BiasCorrection {
                terms: vec![(optim::BC1.into(), self.optimizer.beta1)],
            }),
            _ => None,
        };
        // Layer state is saved, loaded and restored with the parameters, but never trained.
        for state in &self.model.states {
            params.push(ParamInfo {
                name: state.name.clone(),
                shape: g.shape(state.node).concrete().unwrap_or_default(),
                init: nabla_runtime::Init::Constant(state.init),
            });
        }
        let masks = self
            .model
            .dropouts
            .iter()
            .map(|d| Mask {
                name: d.name.clone(),
                row_len: Shape(g.shape(d.node).dims()[1..].to_vec())
                    .numel()
                    .unwrap_or(0),
                p: d.p,
            })
            .collect();
        Ok(ModelInfo {
            feeds,
            masks,
            params,
            states,
            prediction: self
                .model
                .prediction
                .map_or(PredictionKind::Regression, |p| p.kind),
            bias_correction,
            lr_name: optim::LR.into(),
        })
    }

    /// The memory a training run at `batch` needs: parameters, optimizer state, and the train
    /// step's buffers (temporaries, shared where their lifetimes allow, and the batch's inputs),
    /// planned before simplification and fusion so that the estimate costs no e-graph run.
    pub fn memory(&self, batch: usize) -> Result<Memory, String> {
        let size = self.elem.size() as u64;
        let g = &self.model.graph;
        let params: u64 = self
            .model
            .params
            .iter()
            .map(|p| g.shape(p.node).numel().unwrap_or(0) as u64)
            .sum();
        let step =
            optim::train_step(&self.bound(batch)?, &self.optimizer).map_err(|e| e.to_string())?;
        let unfused = fusion::Options { fuse: false };
        let plan = schedule::schedule(&step.graph, &step.outputs, &step.assignments, unfused)
            .map_err(|e| e.to_string())?;
        let temporaries: u64 = plan
            .buffers
            .iter()
            .filter(|b| b.external.is_none())
            .map(|b| b.len as u64)
            .sum();
        let info = self.info()?;
        let fed = info.feeds.iter().map(|f| f.row_len);
        let inputs: u64 = fed
            .chain(info.masks.iter().map(|m| m.row_len))
            .map(|row_len| (batch * row_len) as u64)
            .sum();
        Ok(Memory {
            params: params * size,
            state: params * self.optimizer.state_names().len() as u64 * size,
            step: (temporaries + inputs) * size,
        })
    }

    fn bound(&self, batch: usize) -> Result<Model, String> {
        bind(&self.model, batch)
    }

    fn build(
        &self,
        graph: &Graph,
        outputs: Vec<(String, NodeId)>,
        assignments: Vec<(NodeId, String)>,
    ) -> Result<Compiled, String> {
        let request = Request {
            graph,
            outputs,
            assignments,
            elem: self.elem,
            listing: Listing::None,
            passes: self.passes,
            threads: self.threads,
        };
        compile(&request)
            .map(|(compiled, _)| compiled)
            .map_err(|e| e.to_string())
    }

    /// Forward, backward and update at `batch`, compiled.
    fn compile_train_step(&self, batch: usize) -> Result<Compiled, String> {
        let step =
            optim::train_step(&self.bound(batch)?, &self.optimizer).map_err(|e| e.to_string())?;
        self.build(&step.graph, step.outputs, step.assignments)
    }

    /// Every stage of the train step at `batch`: the graph as autodiff and the optimizer emit
    /// it, then what each pass made of it, with timings; each kernel's `listing`.
    pub fn inspect(&self, batch: usize, listing: Listing) -> Result<Inspection, String> {
        let started = std::time::Instant::now();
        let step =
            optim::train_step(&self.bound(batch)?, &self.optimizer).map_err(|e| e.to_string())?;
        let autodiff_ms = elapsed_ms(started);
        let request = Request {
            graph: &step.graph,
            outputs: step.outputs.clone(),
            assignments: step.assignments.clone(),
            elem: self.elem,
            listing,
            passes: self.passes,
            threads: self.threads,
        };
        let (compiled, trace) = compile(&request).map_err(|e| e.to_string())?;
        let unfused = schedule::schedule(
            &step.graph,
            &step.outputs,
            &step.assignments,
            fusion::Options { fuse: false },
        );
        let unfused = match unfused {
            Ok(plan) => plan,
            Err(e) => return Err(e.to_string()),
        };
        Ok(Inspection {
            step,
            autodiff_ms,
            bytes_unfused: unfused.bytes_moved(self.elem.size()),
            trace,
            listing: compiled.listing,
        })
    }
}

/// `model` with its symbolic dimensions (the batch) bound to `batch`.
fn bind(model: &Model, batch: usize) -> Result<Model, String> {
    let mut model = model.clone();
    model.bind(&|_| Some(batch)).map_err(|e| e.0)?;
    Ok(model)
}

/// The train step at every stage (see [`ModelPrograms::inspect`]).
pub struct Inspection {
    /// The graph after autodiff and the optimizer, before any pass.
    pub step: optim::TrainStep,
    /// Milliseconds spent differentiating and appending the optimizer.
    pub autodiff_ms: f64,
    /// Bytes the kernels would move without simplification and with every op its own kernel
    /// (estimated).
    pub bytes_unfused: u64,
    /// What the passes produced.
    pub trace: Trace,
    /// The listing of each kernel (when asked for).
    pub listing: Vec<String>,
}

impl Compile for ModelPrograms {
    fn train_step(&mut self, batch: usize) -> Result<Program, String> {
        self.compile_train_step(batch).map(|c| c.program)
    }

    fn evaluate(&mut self, batch: usize) -> Result<Program, String> {
        let model = bind(&self.eval, batch)?;
        let mut outputs = vec![("loss".to_string(), model.loss)];
        outputs.extend(model.prediction.map(|p| ("prediction".to_string(), p.node)));
        self.build(&model.graph, outputs, Vec::new())
            .map(|c| c.program)
    }

    fn predict(&mut self, batch: usize) -> Result<Program, String> {
        let model = bind(&self.eval, batch)?;
        let p = model.prediction.ok_or("the model has no prediction")?;
        self.build(
            &model.graph,
            vec![("prediction".to_string(), p.node)],
            Vec::new(),
        )
        .map(|c| c.program)
    }

    fn gradients(&mut self, batch: usize) -> Result<Program, String> {
        let model = self.bound(batch)?;
        let (graph, loss, grads) = model.gradient_graph().map_err(|e| e.to_string())?;
        let mut outputs = vec![("loss".to_string(), loss)];
        for (p, g) in model.params.iter().zip(grads) {
            outputs.push((gradient_name(&p.name), g));
        }
        self.build(&graph, outputs, Vec::new()).map(|c| c.program)
    }
}
