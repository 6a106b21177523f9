//! The pass order, written once: bound graph → (gradients) → e-graph simplification → buffer
//! plan → Cranelift code → runtime program. Everything that compiles a graph to native code goes
//! through [`compile`].

use std::cell::RefCell;
use std::collections::HashMap;

use nabla_runtime::{Buffer, Elem, Executable};

use crate::codegen::jit::{self, CodegenError, Compiled};
use crate::egraph::{self, Limits};
use crate::ir::{EvalError, Graph, NodeId, ShapeError, Tensor};
use crate::schedule::{self, ScheduleError};

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
    /// Keep the Cranelift IR text of each kernel.
    pub keep_clif: bool,
}

/// Simplifies, plans and compiles what `request` asks for.
pub fn compile(request: &Request) -> Result<Compiled, CompileError> {
    let roots: Vec<NodeId> = request
        .outputs
        .iter()
        .map(|(_, n)| *n)
        .chain(request.assignments.iter().map(|(n, _)| *n))
        .collect();
    let simplified = egraph::simplify(request.graph, &roots, &Limits::default())?;
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
    let plan = schedule::schedule(&simplified.graph, &outputs, &assignments)?;
    Ok(jit::compile(&plan, request.elem, request.keep_clif)?)
}

/// Evaluates graphs with compiled code, with the interpreter's signature (so it can stand in for
/// it in gradient checks and differential tests). Programs are compiled once per set of outputs
/// and reused.
pub struct JitEvaluator {
    elem: Elem,
    cache: RefCell<HashMap<Vec<NodeId>, Executable>>,
}

impl JitEvaluator {
    /// An evaluator computing in `elem`.
    pub fn new(elem: Elem) -> JitEvaluator {
        JitEvaluator {
            elem,
            cache: RefCell::new(HashMap::new()),
        }
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
                keep_clif: false,
            };
            let compiled = compile(&request).map_err(|e| EvalError::Backend(e.to_string()))?;
            cache.insert(outputs.to_vec(), Executable::new(compiled.program));
        }
        let exe = cache.get_mut(outputs).expect("inserted above");
        let mut externals: HashMap<String, Buffer> = feeds
            .iter()
            .map(|(k, t)| (k.clone(), Buffer::from_f64(&t.data, self.elem)))
            .collect();
        exe.run(&mut externals)
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
