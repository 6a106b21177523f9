//! Compiled code with the reference interpreter's signature, so that it can stand in for the
//! interpreter in gradient checks (`gradcheck --backend jit`) and in the differential tests that
//! hold every kernel to the interpreter's values.

use std::cell::RefCell;
use std::collections::HashMap;

use nabla_runtime::{Buffer, Buffers, Elem, Executable};

use crate::codegen::jit::Listing;
use crate::ir::{EvalError, Graph, NodeId, Tensor};
use crate::pipeline::{Passes, Request, compile};

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
                packing: None,
            };
            let (compiled, _) = compile(&request).map_err(|e| EvalError::Backend(e.to_string()))?;
            let exe =
                Executable::new(compiled.program).map_err(|e| EvalError::Backend(e.to_string()))?;
            cache.insert(outputs.to_vec(), exe);
        }
        let exe = cache.get_mut(outputs).expect("inserted above");
        let mut externals: Buffers = feeds
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
