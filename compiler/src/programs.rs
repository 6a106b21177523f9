//! A model's programs for the runtime: the adapter between the compiler and the runtime's
//! training loop. The runtime asks for a train step, evaluation, prediction or gradients at a
//! batch size through its `Compile` trait; each is the model run through [`crate::pipeline`].

use nabla_runtime::train::{
    BiasCorrection, Compile, Feed, Mask, ModelInfo, ParamInfo, PredictionKind, gradient_name,
};
use nabla_runtime::{Elem, Program};

use crate::codegen::jit::{Compiled, Listing};
use crate::data_parallel;
use crate::ir::{Dim, Graph, NodeId, Shape};
use crate::kernel::Plan;
use crate::memory::Packing;
use crate::model::{Model, Role, ValueKind};
use crate::optim::{self, Optimizer, OptimizerKind, TrainStep};
use crate::pipeline::{self, Passes, Request, Trace, compile, elapsed_ms};

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

/// The buffers a generation step carries from one token to the next: each name and length.
pub type Carries = Vec<(String, usize)>;

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
    pub fn generate_step(&self) -> Result<(Program, Carries), String> {
        let (model, outputs, assignments, carries) = self.generation()?;
        let compiled = self.build(&model.graph, outputs, assignments)?;
        Ok((compiled.program, carries))
    }

    /// [`ModelPrograms::generate_step`] planned but not compiled (for ahead-of-time code), with
    /// the carried buffers and the model at batch 1 it computes.
    pub fn generation_plan(&self) -> Result<(Plan, Carries, Model), String> {
        let (model, outputs, assignments, carries) = self.generation()?;
        let plan = self.plan(&model.graph, outputs, assignments)?;
        Ok((plan, carries, model))
    }

    /// The generation step's model at batch 1, its outputs, assignments and carried buffers.
    #[allow(clippy::type_complexity)]
    fn generation(
        &self,
    ) -> Result<(Model, Vec<(String, NodeId)>, Vec<(NodeId, String)>, Carries), String> {
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
        Ok((model, outputs, assignments, carries))
    }

    /// Whether the model has a one-step generation program (a recurrent token model).
    pub fn generates(&self) -> bool {
        self.generate.is_some()
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
            OptimizerKind::Adam | OptimizerKind::AdamW => Some(BiasCorrection {
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
            min_batch: self
                .model
                .states
                .iter()
                .map(|s| s.min_batch)
                .max()
                .unwrap_or(1),
            reduced: data_parallel::layout(&self.model).1,
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
        let step = self.step(batch)?;
        let plan = pipeline::plan_unfused(&step.graph, &step.outputs, &step.assignments)
            .map_err(|e| e.to_string())?;
        let temporaries = temporaries(&plan);
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

    /// Steps 1 to 3 of the pipeline: the train step's graph at `batch`.
    fn step(&self, batch: usize) -> Result<TrainStep, String> {
        let model = pipeline::bind(&self.model, batch).map_err(|e| e.to_string())?;
        pipeline::train_step(&model, &self.optimizer).map_err(|e| e.to_string())
    }

    /// What these programs ask of the pipeline for `outputs` and `assignments` of `graph`:
    /// their element type, passes and threads, no listing.
    fn request<'g>(
        &self,
        graph: &'g Graph,
        outputs: Vec<(String, NodeId)>,
        assignments: Vec<(NodeId, String)>,
        packing: Option<Packing>,
    ) -> Request<'g> {
        Request {
            graph,
            outputs,
            assignments,
            elem: self.elem,
            listing: Listing::None,
            passes: self.passes,
            threads: self.threads,
            packing,
        }
    }

    /// Steps 4 to 8 for `outputs` and `assignments` of `graph`: the plan code generation
    /// would compile.
    fn plan(
        &self,
        graph: &Graph,
        outputs: Vec<(String, NodeId)>,
        assignments: Vec<(NodeId, String)>,
    ) -> Result<Plan, String> {
        pipeline::plan(&self.request(graph, outputs, assignments, None))
            .map(|trace| trace.plan)
            .map_err(|e| e.to_string())
    }

    /// The prediction at `batch` planned but not compiled (for ahead-of-time code), with the
    /// model at that batch it computes: what [`Compile::predict`] compiles.
    pub fn prediction_plan(&self, batch: usize) -> Result<(Plan, Model), String> {
        let (model, outputs) = self.prediction(batch)?;
        Ok((self.plan(&model.graph, outputs, Vec::new())?, model))
    }

    /// The evaluation model at `batch` and its one output, the prediction.
    fn prediction(&self, batch: usize) -> Result<(Model, Vec<(String, NodeId)>), String> {
        let model = bind(&self.eval, batch)?;
        let p = model.prediction.ok_or("the model has no prediction")?;
        Ok((model, vec![("prediction".to_string(), p.node)]))
    }

    fn build(
        &self,
        graph: &Graph,
        outputs: Vec<(String, NodeId)>,
        assignments: Vec<(NodeId, String)>,
    ) -> Result<Compiled, String> {
        self.build_packed(graph, outputs, assignments, None)
    }

    /// [`ModelPrograms::build`] with external buffers laid out as `packing` says.
    fn build_packed(
        &self,
        graph: &Graph,
        outputs: Vec<(String, NodeId)>,
        assignments: Vec<(NodeId, String)>,
        packing: Option<Packing>,
    ) -> Result<Compiled, String> {
        compile(&self.request(graph, outputs, assignments, packing))
            .map(|(compiled, _)| compiled)
            .map_err(|e| e.to_string())
    }

    /// Forward, backward and update at `batch`, compiled.
    fn compile_train_step(&self, batch: usize) -> Result<Compiled, String> {
        let step = self.step(batch)?;
        self.build(&step.graph, step.outputs, step.assignments)
    }

    /// Every stage of the train step at `batch`: the graph as autodiff and the optimizer emit
    /// it, then what each pass made of it, with timings; each kernel's `listing`.
    pub fn inspect(&self, batch: usize, listing: Listing) -> Result<Inspection, String> {
        let started = std::time::Instant::now();
        let step = self.step(batch)?;
        let autodiff_ms = elapsed_ms(started);
        let request = Request {
            listing,
            ..self.request(
                &step.graph,
                step.outputs.clone(),
                step.assignments.clone(),
                None,
            )
        };
        let (compiled, trace) = compile(&request).map_err(|e| e.to_string())?;
        let unfused = pipeline::plan_unfused(&step.graph, &step.outputs, &step.assignments)
            .map_err(|e| e.to_string())?;
        Ok(Inspection {
            step,
            autodiff_ms,
            bytes_unfused: unfused.bytes_moved(self.elem.size()),
            trace,
            listing: compiled.listing,
        })
    }
}

/// The elements of a plan's own buffers (not its inputs, parameters or state).
fn temporaries(plan: &crate::kernel::Plan) -> u64 {
    plan.buffers
        .iter()
        .filter(|b| b.external.is_none())
        .map(|b| b.len as u64)
        .sum()
}

/// `model` with its symbolic dimensions (the batch) bound to `batch`.
fn bind(model: &Model, batch: usize) -> Result<Model, String> {
    pipeline::bind(model, batch).map_err(|e| e.to_string())
}

/// The train step at every stage (see [`ModelPrograms::inspect`]).
pub struct Inspection {
    /// The graph after autodiff and the optimizer, before any pass.
    pub step: TrainStep,
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
        self.build(&model.graph, optim::loss_and_prediction(&model), Vec::new())
            .map(|c| c.program)
    }

    fn predict(&mut self, batch: usize) -> Result<Program, String> {
        let (model, outputs) = self.prediction(batch)?;
        self.build(&model.graph, outputs, Vec::new())
            .map(|c| c.program)
    }

    fn evaluation_bytes(&mut self, batch: usize) -> Result<u64, String> {
        let model = bind(&self.eval, batch)?;
        let plan = pipeline::plan_unfused(&model.graph, &optim::loss_and_prediction(&model), &[])
            .map_err(|e| e.to_string())?;
        Ok(temporaries(&plan) * self.elem.size() as u64)
    }

    fn local_step(&mut self, batch: usize) -> Result<Program, String> {
        let model = bind(&self.model, batch)?;
        let (local, _) =
            pipeline::data_parallel_step(&model, &self.optimizer).map_err(|e| e.to_string())?;
        let (packing, _) = data_parallel::layout(&model);
        self.build_packed(
            &local.graph,
            local.outputs,
            local.assignments,
            Some(packing),
        )
        .map(|c| c.program)
    }

    fn update(&mut self) -> Result<Program, String> {
        let update =
            data_parallel::update(&self.model, &self.optimizer).map_err(|e| e.to_string())?;
        let (packing, _) = data_parallel::layout(&self.model);
        self.build_packed(
            &update.graph,
            update.outputs,
            update.assignments,
            Some(packing),
        )
        .map(|c| c.program)
    }

    fn gradients(&mut self, batch: usize) -> Result<Program, String> {
        let model = bind(&self.model, batch)?;
        let (graph, loss, grads) = model.gradient_graph().map_err(|e| e.to_string())?;
        let mut outputs = vec![("loss".to_string(), loss)];
        for (p, g) in model.params.iter().zip(grads) {
            outputs.push((gradient_name(&p.name), g));
        }
        self.build(&graph, outputs, Vec::new()).map(|c| c.program)
    }
}
