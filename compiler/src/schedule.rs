//! Graph to buffer plan: which buffer every node lives in and the order kernels run.
//!
//! Input and parameter nodes live in *external* buffers, bound by name at run time; a reshape
//! shares its operand's buffer; every other node gets a temporary and one kernel. Assignments
//! (`new value -> external buffer`, for parameter and optimizer-state updates) become copies
//! that run after every kernel, so no kernel ever reads a value already overwritten.
//!
//! **Architecture invariant:** no Cranelift types here; the plan is plain data that the code
//! generator turns into machine code.

use std::collections::HashMap;

use nabla_runtime::BufferSpec;

use crate::ir::{Graph, NodeId, Op};

/// One kernel of the plan.
#[derive(Clone, Debug, PartialEq)]
pub enum KernelSpec {
    /// Computes one graph node.
    Node {
        /// The primitive.
        op: Op,
        /// Output slot.
        out: usize,
        /// Output shape.
        out_shape: Vec<usize>,
        /// Operand slots and shapes, in operand order.
        args: Vec<(usize, Vec<usize>)>,
    },
    /// Copies `len` elements from one slot to another.
    Copy {
        /// Source slot.
        src: usize,
        /// Destination slot.
        dst: usize,
        /// Elements.
        len: usize,
    },
}

/// The buffer plan and kernel order of one program.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// One entry per table slot.
    pub buffers: Vec<BufferSpec>,
    /// Kernels in execution order.
    pub kernels: Vec<KernelSpec>,
    /// Named results and the temporary slot holding each.
    pub outputs: Vec<(String, usize)>,
}

/// Why a graph cannot be planned.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("cannot compile: {0}")]
pub struct ScheduleError(pub String);

/// Plans the computation of `outputs` and of the `assignments` (each writes a node's value into
/// the external buffer of the given name at the end of the run).
pub fn schedule(
    graph: &Graph,
    outputs: &[(String, NodeId)],
    assignments: &[(NodeId, String)],
) -> Result<Plan, ScheduleError> {
    let roots: Vec<NodeId> = outputs
        .iter()
        .map(|(_, n)| *n)
        .chain(assignments.iter().map(|(n, _)| *n))
        .collect();
    let mut plan = Plan {
        buffers: Vec::new(),
        kernels: Vec::new(),
        outputs: Vec::new(),
    };
    let mut slot_of: HashMap<NodeId, usize> = HashMap::new();
    let mut externals: HashMap<String, usize> = HashMap::new();
    for id in graph.ancestors(&roots) {
        let shape = graph
            .shape(id)
            .concrete()
            .ok_or_else(|| ScheduleError(format!("shape {} is not bound", graph.shape(id))))?;
        let len = shape.iter().product();
        let slot = match graph.op(id) {
            Op::Input { name, .. } | Op::Param { name, .. } => {
                external(&mut plan, &mut externals, name, len)
            }
            Op::Reshape(_) => slot_of[&graph.operands(id)[0]],
            op => {
                let out = temp(&mut plan, len);
                let args = graph
                    .operands(id)
                    .iter()
                    .map(|o| {
                        (
                            slot_of[o],
                            graph
                                .shape(*o)
                                .concrete()
                                .expect("operands are bound before users"),
                        )
                    })
                    .collect();
                plan.kernels.push(KernelSpec::Node {
                    op: op.clone(),
                    out,
                    out_shape: shape,
                    args,
                });
                out
            }
        };
        slot_of.insert(id, slot);
    }
    for (name, node) in outputs {
        let slot = readable_temp(&mut plan, slot_of[node]);
        plan.outputs.push((name.clone(), slot));
    }
    let sources: Vec<usize> = assignments
        .iter()
        .map(|(node, _)| readable_temp(&mut plan, slot_of[node]))
        .collect();
    for ((node, name), src) in assignments.iter().zip(sources) {
        let len = graph.shape(*node).numel().expect("bound above");
        let dst = external(&mut plan, &mut externals, name, len);
        if plan.buffers[dst].len != len {
            return Err(ScheduleError(format!(
                "`{name}` holds {} elements but is assigned {len}",
                plan.buffers[dst].len
            )));
        }
        plan.kernels.push(KernelSpec::Copy { src, dst, len });
    }
    Ok(plan)
}

fn temp(plan: &mut Plan, len: usize) -> usize {
    plan.buffers.push(BufferSpec {
        len,
        external: None,
    });
    plan.buffers.len() - 1
}

fn external(
    plan: &mut Plan,
    externals: &mut HashMap<String, usize>,
    name: &str,
    len: usize,
) -> usize {
    *externals.entry(name.to_string()).or_insert_with(|| {
        plan.buffers.push(BufferSpec {
            len,
            external: Some(name.to_string()),
        });
        plan.buffers.len() - 1
    })
}

/// A temporary holding the value of `slot` (a copy when `slot` is external), so that results
/// survive later writes to external buffers and can be read after the run.
fn readable_temp(plan: &mut Plan, slot: usize) -> usize {
    if plan.buffers[slot].external.is_none() {
        return slot;
    }
    let len = plan.buffers[slot].len;
    let copy = temp(plan, len);
    plan.kernels.push(KernelSpec::Copy {
        src: slot,
        dst: copy,
        len,
    });
    copy
}
