//! Graph simplification by equality saturation with `egg`. The only entry point is
//! [`simplify`].
//!
//! The graph is copied into an e-graph ([`lang`]), whose classes carry shapes and constants
//! ([`analysis`]); the [`rules`] run to saturation or to the limits in [`Limits`]; and the
//! cheapest equivalent of each root is extracted back into a fresh graph.
//!
//! **Architecture invariant:** simplification never changes any root's shape, and under the
//! default [`RuleSet::Ieee`] never changes what a graph computes beyond rounding: NaN and
//! infinities behave as written. Tests check both sides in the interpreter.

pub mod analysis;
mod clock;
pub mod lang;
pub mod rules;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use egg::{Applier, Id, Language, PatternAst, Runner, SearchMatches, Subst, Symbol, Var};

use crate::ir::{Graph, NodeId, Op, Shape, ShapeError};
use analysis::{TensorAnalysis, TensorEGraph};
use lang::TensorNode;
pub use rules::RuleSet;

/// Bounds on saturation, always set so that simplification terminates quickly.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Maximum e-nodes beyond those of the input graph (so that a large graph is simplified
    /// too, rather than stopped at once).
    pub nodes: usize,
    /// Maximum iterations.
    pub iterations: usize,
    /// Maximum wall time.
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            nodes: 50_000,
            iterations: 30,
            time: Duration::from_secs(5),
        }
    }
}

/// A simplified graph and what saturation did.
#[derive(Debug)]
pub struct Simplified {
    /// The new graph, holding only what the roots need.
    pub graph: Graph,
    /// The roots in the new graph, in the order given.
    pub roots: Vec<NodeId>,
    /// Nodes the roots needed before simplification.
    pub nodes_before: usize,
    /// Why saturation stopped, how many iterations and e-nodes it took.
    pub report: String,
    /// Why saturation stopped (`Saturated`, `NodeLimit(n)`, ...).
    pub stop_reason: String,
    /// How often each rule applied, by name, most first.
    pub rules_fired: Vec<(String, usize)>,
}

impl Simplified {
    /// What `roots` need of `graph`, copied unsimplified (for `--no-simplify`).
    pub fn unchanged(graph: &Graph, roots: &[NodeId]) -> Simplified {
        let (out, roots) = graph.extract(roots);
        Simplified {
            nodes_before: out.len(),
            roots,
            graph: out,
            report: "not simplified".into(),
            stop_reason: "not simplified".into(),
            rules_fired: Vec::new(),
        }
    }
}

/// Simplifies what `roots` compute, returning a new graph. Labels carry over to the nodes
/// that compute the labelled values.
pub fn simplify(
    graph: &Graph,
    roots: &[NodeId],
    limits: &Limits,
    rules: RuleSet,
) -> Result<Simplified, ShapeError> {
    simplify_with(graph, roots, limits, rules::all(rules))
}

/// [`simplify`] with a list of rules of one's own (the pipeline leaves one out to measure what
/// it saves).
pub fn simplify_with(
    graph: &Graph,
    roots: &[NodeId],
    limits: &Limits,
    rules: Vec<rules::Rule>,
) -> Result<Simplified, ShapeError> {
    let nodes = graph.ancestors(roots);
    let mut egraph = TensorEGraph::new(TensorAnalysis);
    let changed = Arc::new(Mutex::new(Vec::new()));
    let mut class_of: HashMap<NodeId, Id> = HashMap::new();
    for &id in &nodes {
        let children = graph.operands(id).iter().map(|o| class_of[o]).collect();
        class_of.insert(
            id,
            egraph.add(TensorNode {
                op: graph.op(id).clone(),
                children,
            }),
        );
    }
    let rules = recorded(rules, &changed);
    let runner = Runner::default()
        .with_egraph(egraph)
        .with_node_limit(nodes.len() + limits.nodes)
        .with_iter_limit(limits.iterations)
        .with_time_limit(limits.time);
    let (runner, took) = clock::run_timed(runner, &rules);
    let mut fired: HashMap<String, usize> = HashMap::new();
    for iteration in &runner.iterations {
        for (rule, count) in &iteration.applied {
            *fired.entry(rule.to_string()).or_default() += count;
        }
    }
    let mut rules_fired: Vec<(String, usize)> = fired.into_iter().collect();
    rules_fired.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let report = runner.report();
    let stop_reason = format!("{:?}", report.stop_reason);
    let report = format!(
        "stopped: {:?}; {} iterations; {} e-nodes in {} e-classes; {:.3}s",
        report.stop_reason,
        report.iterations,
        report.egraph_nodes,
        report.egraph_classes,
        took.as_secs_f64()
    );

    // Every root is extracted into one shared graph, each e-class once: extracting roots one
    // term at a time would copy what they share once per root (quadratic in the model's depth).
    let best = best_nodes(&runner.egraph);
    let mut out = Graph::new();
    out.dtype = graph.dtype;
    let mut built: HashMap<Id, NodeId> = HashMap::new();
    let mut new_roots = Vec::with_capacity(roots.len());
    for &root in roots {
        let new_root = extract(
            &runner.egraph,
            &best,
            runner.egraph.find(class_of[&root]),
            &mut out,
            &mut built,
        )?;
        if let Some(label) = &graph.get(root).label {
            out.label(new_root, label);
        }
        new_roots.push(new_root);
    }
    // Extraction minimises each root's cost as a tree; shared work can make the graph as a
    // whole costlier than its input, and then the input is kept.
    let (before, after) = (cost(graph, roots), cost(&out, &new_roots));
    if after > before {
        let mut kept = Simplified::unchanged(graph, roots);
        kept.report = format!("{report}; kept the input (cost {before:.0} < {after:.0})");
        kept.stop_reason = stop_reason;
        kept.rules_fired = rules_fired;
        return Ok(kept);
    }
    name_rewrites(
        &runner.egraph,
        (graph, &nodes, &class_of),
        &best,
        (&mut out, &built),
        &changed,
    );
    // Names (bindings, gradients) survive where their value does.
    for &id in &nodes {
        let class = runner.egraph.find(class_of[&id]);
        if let Some(&new) = built.get(&class) {
            let node = graph.get(id);
            if let Some(label) = &node.label {
                out.label(new, label);
            }
            if let Some(builtin) = &node.builtin {
                out.tag_builtin(new, builtin);
            }
        }
    }
    Ok(Simplified {
        graph: out,
        roots: new_roots,
        nodes_before: nodes.len(),
        report,
        stop_reason,
        rules_fired,
    })
}

/// Wraps every rule's right-hand side so that it records which e-classes it changed.
fn recorded(rules: Vec<rules::Rule>, changed: &Changes) -> Vec<rules::Rule> {
    rules
        .into_iter()
        .map(|mut rule| {
            rule.applier = Arc::new(Recorded {
                applier: Arc::clone(&rule.applier),
                changed: Arc::clone(changed),
            });
            rule
        })
        .collect()
}

/// The e-classes each rule application changed, with the rule's name.
type Changes = Arc<Mutex<Vec<(Symbol, Id)>>>;

/// A rule's right-hand side that remembers the e-classes it changed, so that every node of the
/// simplified graph can name the rules that rewrote it.
struct Recorded {
    applier: Arc<dyn Applier<TensorNode, TensorAnalysis> + Sync + Send>,
    changed: Changes,
}

impl Applier<TensorNode, TensorAnalysis> for Recorded {
    fn apply_matches(
        &self,
        egraph: &mut TensorEGraph,
        matches: &[SearchMatches<TensorNode>],
        rule_name: Symbol,
    ) -> Vec<Id> {
        let ids = self.applier.apply_matches(egraph, matches, rule_name);
        if let Ok(mut changed) = self.changed.lock() {
            changed.extend(ids.iter().map(|&id| (rule_name, id)));
        }
        ids
    }

    fn apply_one(
        &self,
        egraph: &mut TensorEGraph,
        eclass: Id,
        subst: &Subst,
        searcher_ast: Option<&PatternAst<TensorNode>>,
        rule_name: Symbol,
    ) -> Vec<Id> {
        self.applier
            .apply_one(egraph, eclass, subst, searcher_ast, rule_name)
    }

    fn get_pattern_ast(&self) -> Option<&PatternAst<TensorNode>> {
        self.applier.get_pattern_ast()
    }

    fn vars(&self) -> Vec<Var> {
        self.applier.vars()
    }
}

/// Names, on every node of `out` that is not one of the input's nodes (its op or its operands'
/// values changed), the rules that changed its e-class.
fn name_rewrites(
    egraph: &TensorEGraph,
    (graph, nodes, class_of): (&Graph, &[NodeId], &HashMap<NodeId, Id>),
    best: &HashMap<Id, (f64, TensorNode)>,
    (out, built): (&mut Graph, &HashMap<Id, NodeId>),
    changed: &Changes,
) {
    let canonical = |node: &TensorNode| node.clone().map_children(|c| egraph.find(c));
    let original: HashSet<TensorNode> = nodes
        .iter()
        .map(|&id| {
            canonical(&TensorNode {
                op: graph.op(id).clone(),
                children: graph.operands(id).iter().map(|o| class_of[o]).collect(),
            })
        })
        .collect();
    let mut rules_of: HashMap<Id, BTreeSet<String>> = HashMap::new();
    if let Ok(changed) = changed.lock() {
        for (rule, id) in changed.iter() {
            rules_of
                .entry(egraph.find(*id))
                .or_default()
                .insert(rule.to_string());
        }
    }
    for (class, &node) in built {
        if original.contains(&canonical(&best[class].1)) {
            continue;
        }
        if let Some(rules) = rules_of.get(class) {
            out.rewritten(node, rules.iter().cloned());
        }
    }
}

/// The cheapest node of every e-class, by [`node_cost`] summed over its term. Classes are relaxed in id order,
/// which is close to topological (ids follow insertion, and the input graph is inserted operands
/// first), so a deep graph settles in a few passes; egg's `Extractor` visits classes in hash
/// order and needs about as many passes as the graph is deep.
fn best_nodes(egraph: &TensorEGraph) -> HashMap<Id, (f64, TensorNode)> {
    let mut classes: Vec<&egg::EClass<TensorNode, analysis::ClassData>> =
        egraph.classes().collect();
    classes.sort_unstable_by_key(|c| c.id);
    let mut best: HashMap<Id, (f64, TensorNode)> = HashMap::with_capacity(classes.len());
    let mut changed = true;
    while changed {
        changed = false;
        for class in &classes {
            for enode in class.iter() {
                let known = enode
                    .children()
                    .iter()
                    .all(|c| best.contains_key(&egraph.find(*c)));
                if !known {
                    continue;
                }
                let shapes: Vec<&Shape> = enode
                    .children()
                    .iter()
                    .map(|&c| &egraph[c].data.shape)
                    .collect();
                let own = node_cost(&enode.op, &class.data.shape, &shapes);
                let cost = enode
                    .children()
                    .iter()
                    .fold(own, |acc, &c| acc + best[&egraph.find(c)].0);
                if best.get(&class.id).is_none_or(|(old, _)| cost < *old) {
                    best.insert(class.id, (cost, enode.clone()));
                    changed = true;
                }
            }
        }
    }
    best
}

/// Adds the best node of `class` (and, first, of its children's classes) to `out`, once per
/// class. Iterative, so that deep graphs cannot overflow the stack.
fn extract(
    egraph: &TensorEGraph,
    best: &HashMap<Id, (f64, TensorNode)>,
    class: Id,
    out: &mut Graph,
    built: &mut HashMap<Id, NodeId>,
) -> Result<NodeId, ShapeError> {
    let mut stack = vec![class];
    while let Some(&top) = stack.last() {
        if built.contains_key(&top) {
            stack.pop();
            continue;
        }
        let enode = &best[&top].1;
        let children: Vec<Id> = enode.children().iter().map(|&c| egraph.find(c)).collect();
        let missing: Vec<Id> = children
            .iter()
            .copied()
            .filter(|c| !built.contains_key(c))
            .collect();
        if missing.is_empty() {
            let operands: Vec<NodeId> = children.iter().map(|c| built[c]).collect();
            built.insert(top, out.node(enode.op.clone(), &operands)?);
            stack.pop();
        } else {
            stack.extend(missing);
        }
    }
    Ok(built[&class])
}

/// The cost of computing one node: its floating-point operations plus the elements it reads
/// and writes (as if unfused), from its output and operand shapes. A symbolic dimension counts
/// as 64.
fn node_cost(op: &Op, out: &Shape, operands: &[&Shape]) -> f64 {
    use crate::ir::{BinaryOp, UnaryOp};
    let size = |s: &Shape| -> f64 {
        s.dims()
            .iter()
            .map(|d| d.known().unwrap_or(64) as f64)
            .product()
    };
    let n = size(out);
    let flops = match op {
        Op::Input { .. } | Op::Param { .. } | Op::Const(_) | Op::Numel(_) | Op::Reshape(_) => {
            return 0.0;
        }
        Op::MatMul | Op::BatchMatMul => {
            let k = operands[0]
                .dims()
                .last()
                .and_then(|d| d.known())
                .unwrap_or(64) as f64;
            2.0 * n * k
        }
        Op::Reduce(..) => size(operands[0]),
        // A call into a transcendental function.
        Op::Binary(BinaryOp::Pow) => 8.0 * n,
        Op::Unary(u) if u.is_transcendental() => 8.0 * n,
        // Division and square roots take several times a multiplication's throughput.
        Op::Binary(BinaryOp::Div) | Op::Unary(UnaryOp::Sqrt | UnaryOp::Recip) => 4.0 * n,
        Op::Iota { .. } | Op::Broadcast(_) | Op::Transpose(_) => 0.0,
        _ => n,
    };
    flops + n + operands.iter().map(|s| size(s)).sum::<f64>()
}

/// What a graph costs to compute once: the sum of [`node_cost`] over what `roots` need (the
/// extraction's cost model; simplification never returns a graph costlier than its input).
pub fn cost(graph: &Graph, roots: &[NodeId]) -> f64 {
    graph
        .ancestors(roots)
        .into_iter()
        .map(|id| {
            let operands = graph.operands(id);
            let shapes: Vec<&Shape> = operands.iter().map(|&o| graph.shape(o)).collect();
            node_cost(graph.op(id), graph.shape(id), &shapes)
        })
        .sum()
}
