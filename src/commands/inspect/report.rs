//! What the inspector shows, gathered into one JSON value that the page reads: the source and
//! where each binding is written; the train step at every stage (forward, gradients,
//! simplified, fused into kernels) with, for every node, the binding it came from, what it is
//! the gradient of, the rules that rewrote it and the kernel that computes it; every kernel's
//! Cranelift IR and machine code; per-stage counts; and, when given, kernel times and a
//! training log.
//!
//! Node ids are the compiler's: the forward stage is a part of the gradients stage (autodiff
//! adds to the forward graph), and the fused stage is the simplified graph cut into kernels.

use std::collections::HashMap;

use nabla_compiler::ir::{Graph, NodeId};
use nabla_compiler::optim::TrainStep;
use nabla_compiler::pipeline;
use nabla_compiler::programs::Inspection;
use serde_json::{Value, json};

use super::super::Loaded;
use super::super::origin::{origin, source_line, source_lines};
use super::super::plot::log::Metrics;

/// One stage's graph: what `roots` compute in `graph`, and the named values it assigns.
pub struct Stage<'a> {
    /// Short key (`forward`).
    pub key: &'static str,
    /// Heading.
    pub title: &'static str,
    /// One sentence on what the stage is.
    pub about: String,
    /// The graph.
    pub graph: &'a Graph,
    /// The named outputs.
    pub outputs: Vec<(String, NodeId)>,
    /// Values written into named buffers (parameters, optimizer and layer state).
    pub assignments: Vec<(NodeId, String)>,
}

impl Stage<'_> {
    fn roots(&self) -> Vec<NodeId> {
        self.outputs
            .iter()
            .map(|(_, n)| *n)
            .chain(self.assignments.iter().map(|(n, _)| *n))
            .collect()
    }
}

/// For every node of the simplified graph, the kernels that compute and store it, and those
/// that recompute it in registers.
pub type KernelsOf = HashMap<NodeId, (Vec<usize>, Vec<usize>)>;

/// The forward, gradients and simplified stages of an inspection at one batch size (the
/// forward stage is what the step's outputs need of its graph).
pub fn stages(inspection: &Inspection) -> [Stage<'_>; 3] {
    let step: &TrainStep = &inspection.step;
    let simplified = &inspection.trace.simplified;
    let roots_after = &simplified.roots;
    let outputs_after: Vec<(String, NodeId)> = step
        .outputs
        .iter()
        .zip(roots_after)
        .map(|((name, _), &n)| (name.clone(), n))
        .collect();
    let assignments_after: Vec<(NodeId, String)> = step
        .assignments
        .iter()
        .zip(&roots_after[step.outputs.len()..])
        .map(|((_, name), &n)| (n, name.clone()))
        .collect();
    [
        Stage {
            key: "forward",
            title: "Forward",
            about: "The model as written, lowered to primitives: what evaluation computes up to the loss.".into(),
            graph: &step.graph,
            outputs: step.outputs.clone(),
            assignments: Vec::new(),
        },
        Stage {
            key: "gradients",
            title: "Gradients",
            about: "The train step as symbolic autodiff and the optimizer emit it: the forward graph, every gradient (reverse mode, graph to graph) and the updates of parameters and state.".into(),
            graph: &step.graph,
            outputs: step.outputs.clone(),
            assignments: step.assignments.clone(),
        },
        Stage {
            key: "simplified",
            title: "Simplified",
            about: format!(
                "The train step after e-graph rewriting and batching of products ({}).",
                simplified.report
            ),
            graph: &simplified.graph,
            outputs: outputs_after,
            assignments: assignments_after,
        },
    ]
}

/// A stage as JSON: its nodes (each with its group, source line, gradient relation, rewrites
/// and, for the simplified stage, kernels) and its counts, with the work of every op as its own
/// kernel (`plan_unfused`).
pub fn stage_json(
    loaded: &Loaded,
    stage: &Stage,
    kernels_of: Option<&KernelsOf>,
) -> Result<Value, String> {
    let graph = stage.graph;
    let roots = stage.roots();
    let nodes = graph.ancestors(&roots);
    let groups = groups(graph, &nodes, &stage.assignments, loaded);
    let json_nodes: Vec<Value> = nodes
        .iter()
        .zip(&groups)
        .map(|(&id, group)| {
            let node = graph.get(id);
            let (computes, inlines) = kernels_of
                .and_then(|k| k.get(&id))
                .cloned()
                .unwrap_or_default();
            json!({
                "id": id.index(),
                "op": node.op.to_string(),
                "builtin": node.builtin,
                "shape": node.shape.to_string(),
                "label": node.label,
                "operands": graph.operands(id).iter().map(|o| o.index()).collect::<Vec<_>>(),
                "group": group,
                "line": group_line(loaded, group),
                "grad_of": node.label.as_deref().and_then(|l| l.strip_prefix("grad ")),
                "rewrites": node.rewrites,
                "kernels": computes,
                "inlined": inlines,
            })
        })
        .collect();
    let unfused = pipeline::plan_unfused(graph, &stage.outputs, &stage.assignments)
        .map_err(|e| e.to_string())?;
    let (flops, bytes) = unfused.work(4);
    Ok(json!({
        "key": stage.key,
        "title": stage.title,
        "about": stage.about,
        "nodes": json_nodes,
        "outputs": stage.outputs.iter().map(|(name, n)| json!({"name": name, "node": n.index()})).collect::<Vec<_>>(),
        "assignments": stage.assignments.iter().map(|(n, name)| json!({"name": name, "node": n.index()})).collect::<Vec<_>>(),
        "counts": {"ops": nodes.len(), "kernels": unfused.kernels.len(), "flops": flops, "bytes": bytes},
    }))
}

/// Each node's group: the binding its name comes from (`h1` for `h1` and `h1.w`), `grad h1` for
/// the gradients of a binding and its parameters, `update h1` for the new values of its
/// parameters and optimizer state. A node without a name joins the group of its nearest named
/// user (the binding whose expression it is part of), else that of its nearest named operand.
fn groups(
    graph: &Graph,
    nodes: &[NodeId],
    assignments: &[(NodeId, String)],
    loaded: &Loaded,
) -> Vec<String> {
    let position: HashMap<NodeId, usize> = nodes.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let updates: HashMap<NodeId, &str> = assignments
        .iter()
        .map(|(n, name)| (*n, name.as_str()))
        .collect();
    let own = |id: NodeId| -> Option<String> {
        if let Some(label) = &graph.get(id).label {
            let (prefix, name) = match label.strip_prefix("grad ") {
                Some(rest) => ("grad ", rest),
                None => ("", label.as_str()),
            };
            return Some(match origin(loaded, name) {
                Some(o) => format!("{prefix}{}", o.name),
                None => label.clone(),
            });
        }
        let assigned = updates.get(&id)?;
        Some(match origin(loaded, assigned) {
            Some(o) => format!("update {}", o.name),
            None => format!("update {assigned}"),
        })
    };
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, &id) in nodes.iter().enumerate() {
        for o in graph.operands(id) {
            if let Some(&j) = position.get(o) {
                users[j].push(i);
            }
        }
    }
    // Nearest named user, in reverse topological order; then nearest named operand.
    let mut found: Vec<Option<(String, usize)>> = vec![None; nodes.len()];
    for i in (0..nodes.len()).rev() {
        found[i] = match own(nodes[i]) {
            Some(g) => Some((g, 0)),
            None => users[i]
                .iter()
                .filter_map(|&u| found[u].as_ref())
                .min_by_key(|(_, d)| *d)
                .map(|(g, d)| (g.clone(), d + 1)),
        };
    }
    for i in 0..nodes.len() {
        if found[i].is_none() {
            found[i] = graph
                .operands(nodes[i])
                .iter()
                .filter_map(|o| position.get(o).and_then(|&j| found[j].clone()))
                .min_by_key(|(_, d)| *d)
                .map(|(g, d)| (g, d + 1));
        }
    }
    found
        .into_iter()
        .map(|f| f.map_or_else(|| "inputs and constants".to_string(), |(g, _)| g))
        .collect()
}

/// The source line of a group (`grad h1` and `update h1` are `h1`'s).
fn group_line(loaded: &Loaded, group: &str) -> Option<usize> {
    let name = group
        .strip_prefix("grad ")
        .or_else(|| group.strip_prefix("update "))
        .unwrap_or(group);
    source_line(loaded, name)
}

/// For every node of the simplified graph, the kernels that compute and store it or hold it
/// in registers, and each kernel as JSON with its listings and, when timed, its seconds.
pub fn kernels(
    loaded: &Loaded,
    inspection: &Inspection,
    (clif, asm): (&[String], &[String]),
    seconds: Option<&[f64]>,
) -> Result<(KernelsOf, Vec<Value>), String> {
    let trace = &inspection.trace;
    let graph = &trace.simplified.graph;
    let groups = &trace.fusion.groups;
    let plan = &trace.plan;
    // Lowering makes one kernel per group, in order, and may add one that copies results.
    if plan.kernels.len() < groups.len() || plan.kernels.len() > groups.len() + 1 {
        return Err(format!(
            "internal error: {} kernels for {} fused groups",
            plan.kernels.len(),
            groups.len()
        ));
    }
    if clif.len() != plan.kernels.len() || asm.len() != plan.kernels.len() {
        return Err("internal error: a listing per kernel was not produced".into());
    }
    let notes = plan.notes(4);
    let mut of_node = KernelsOf::new();
    let mut out = Vec::new();
    for (k, kernel) in plan.kernels.iter().enumerate() {
        let (computed, inlined): (Vec<NodeId>, Vec<NodeId>) = match groups.get(k) {
            Some(group) => {
                let computed: Vec<NodeId> = group
                    .anchors
                    .iter()
                    .chain(&group.members)
                    .copied()
                    .collect();
                let inlined = trace
                    .fusion
                    .ops(graph, group)
                    .into_iter()
                    .filter(|n| !computed.contains(n))
                    .collect();
                (computed, inlined)
            }
            None => (Vec::new(), Vec::new()),
        };
        for &n in &computed {
            of_node.entry(n).or_default().0.push(k);
        }
        for &n in &inlined {
            of_node.entry(n).or_default().1.push(k);
        }
        out.push(json!({
            "index": k,
            "title": kernel.title,
            "labels": kernel.labels,
            "kind": groups.get(k).map(|g| format!("{:?}", g.kind).to_lowercase()),
            "nodes": computed.iter().map(|n| n.index()).collect::<Vec<_>>(),
            "inlined": inlined.iter().map(|n| n.index()).collect::<Vec<_>>(),
            "flops": notes[k].flops,
            "bytes": notes[k].bytes,
            "lines": source_lines(loaded, &kernel.labels),
            "clif": clif[k],
            "asm": asm[k],
            "seconds": seconds.map(|s| s[k]),
        }));
    }
    Ok((of_node, out))
}

/// The fused stage's counts: kernels, the bytes and FLOPs they move and compute, temporaries.
pub fn fused_counts(inspection: &Inspection) -> Value {
    let plan = &inspection.trace.plan;
    let (flops, bytes) = plan.work(4);
    json!({
        "ops": inspection.trace.simplified.graph.ancestors(&inspection.trace.simplified.roots).len(),
        "kernels": plan.kernels.len(),
        "flops": flops,
        "bytes": bytes,
        "temporary_bytes": plan.temporary_bytes(4),
    })
}

/// The rules that fired, how often, and why saturation stopped.
pub fn rules(inspection: &Inspection) -> Value {
    let s = &inspection.trace.simplified;
    json!({
        "fired": s.rules_fired.iter().map(|(r, n)| json!({"rule": r, "times": n})).collect::<Vec<_>>(),
        "stop_reason": s.stop_reason,
    })
}

/// A training log's curves as JSON: one series per metric, the learning rate, the best epoch.
pub fn log_json(origin: &str, metrics: &Metrics) -> Value {
    let series: Vec<Value> = super::super::plot::log::KEYS
        .iter()
        .zip(&metrics.points)
        .filter(|(_, points)| !points.is_empty())
        .map(|(key, points)| json!({"key": key, "points": points}))
        .collect();
    json!({
        "file": origin,
        "series": series,
        "lr": metrics.lr,
        "best_epoch": metrics.best_epoch,
        "left_out": metrics.left_out_note(),
    })
}
