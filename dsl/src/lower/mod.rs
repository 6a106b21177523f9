//! Syntax tree to [`Model`]: name resolution, function inlining, layer and initialiser
//! resolution, and shape checking, all through the compiler's graph-builder API.
//!
//! Shapes are checked by the graph builder itself (one set of shape rules for everyone); this
//! module only attaches source locations to its errors. A binding that fails is remembered as
//! failed, so later uses of its name do not report the same problem again.
//!
//! Parameter naming, for layer calls like `dense`: a layer's parameters are named after the
//! binding that contains it (`h2 = relu(dense(h, 256))` creates `h2.w` and `h2.b`). Inside an
//! inlined function, the function's own bindings extend the name (`h.a.w`). When a name is
//! taken, `.2`, `.3`, ... is appended in order of appearance (`out.w`, then `out.2.w`).
//!
//! This file is long because name resolution, function inlining, layer naming and expression
//! lowering recurse through one another over one `Lowerer`; the built-ins, the part that grows,
//! are its children under `builtins/`.

use std::collections::{HashMap, HashSet};

use nabla_compiler::ir::{
    BinaryOp, Dim, Graph, MAX_ELEMENTS, NodeId, Op, Shape, ShapeError, UnaryOp, interp,
};
use nabla_compiler::model::{
    Binding, CarrySpec, DropoutSpec, InputSpec, Mode, Model, ParamSpec, Prediction, PredictionKind,
    Role, StateSpec, ValueKind,
};
use nabla_runtime::Init;

pub(crate) mod builtins;

use crate::ast::*;
use crate::diagnostic::Diagnostic;

/// Expression nodes that lowering may visit, counting every inlined function body again, before
/// it gives up: a guard against exponential inlining.
const BUDGET: usize = 200_000;

/// Why lowering an expression stopped.
pub(crate) enum Fail {
    /// A new error to report.
    Report(Diagnostic),
    /// A consequence of an error already reported.
    Cascade,
}

impl From<Diagnostic> for Fail {
    fn from(d: Diagnostic) -> Fail {
        Fail::Report(d)
    }
}

pub(crate) type LResult<T> = Result<T, Fail>;

/// Names in scope: `None` marks a binding whose definition failed.
pub(crate) type Env = HashMap<String, Option<NodeId>>;

pub(crate) struct Lowerer<'f> {
    pub(crate) graph: Graph,
    functions: HashMap<&'f str, &'f Function>,
    pub(crate) inputs: Vec<InputSpec>,
    pub(crate) params: Vec<ParamSpec>,
    /// Where each parameter was declared (or its layer called), parallel to `params`.
    param_spans: Vec<Span>,
    scope_path: Vec<String>,
    inlining: Vec<String>,
    used_layer_names: HashSet<String>,
    budget: usize,
    pub(crate) prediction: Option<Prediction>,
    /// In formula mode (`nabla diff`) unknown names become scalar inputs.
    free_variables: Option<Vec<(String, NodeId)>>,
    /// The program lowered for: dropout is the identity in evaluation.
    pub(crate) mode: Mode,
    /// Dropout masks made so far (train mode).
    pub(crate) dropouts: Vec<DropoutSpec>,
    /// Layer state made so far.
    pub(crate) states: Vec<StateSpec>,
    /// Recurrent state carried between generation steps (generate mode).
    pub(crate) carries: Vec<CarrySpec>,
}

/// Lowers the file's model. Errors are every problem found, in source order.
/// Lowers the file's model; also returns where each parameter was declared.
pub fn lower_model(file: &File, mode: Mode) -> Result<(Model, Vec<Span>), Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let mut lw = Lowerer::new(&file.functions, None, &mut errors);
    lw.mode = mode;
    let model = match file.models.as_slice() {
        [model] => lw.model(model, &mut errors),
        [] => {
            errors.push(
                Diagnostic::new("no model in this file", Span::default())
                    .label("expected `model NAME { ... }`")
                    .note("a model declares inputs, parameters and a scalar `loss`"),
            );
            None
        }
        [_, second, ..] => {
            errors.push(
                Diagnostic::new("more than one model in this file", second.name.span)
                    .label("a second model")
                    .note("put each model in its own file"),
            );
            None
        }
    };
    let spans = std::mem::take(&mut lw.param_spans);
    match model {
        Some(m) if errors.is_empty() => Ok((m, spans)),
        _ => Err(errors),
    }
}

/// Lowers a formula whose free names are scalar inputs (for `nabla diff`): the graph, the root
/// and the variables in order of first appearance.
pub fn lower_formula(expr: &Expr) -> Result<crate::Formula, Diagnostic> {
    let mut errors = Vec::new();
    let mut lw = Lowerer::new(&[], Some(Vec::new()), &mut errors);
    let root = match lw.expr(expr, &Env::new()) {
        Ok(root) => root,
        Err(Fail::Report(d)) => return Err(d),
        Err(Fail::Cascade) => return Err(Diagnostic::new("invalid formula", expr.span)),
    };
    if lw.graph.shape(root).rank() != 0 {
        return Err(Diagnostic::new(
            format!(
                "the formula must be a scalar, but it has shape {}",
                lw.graph.shape(root)
            ),
            expr.span,
        ));
    }
    let variables = lw.free_variables.take().unwrap_or_default();
    Ok(crate::Formula {
        graph: lw.graph,
        root,
        variables,
    })
}

impl<'f> Lowerer<'f> {
    fn new(
        functions: &'f [Function],
        free_variables: Option<Vec<(String, NodeId)>>,
        errors: &mut Vec<Diagnostic>,
    ) -> Lowerer<'f> {
        let mut table = HashMap::new();
        for f in functions {
            if builtins::is_builtin(&f.name.name) {
                errors.push(
                    Diagnostic::new(
                        format!("`{}` is a built-in function", f.name.name),
                        f.name.span,
                    )
                    .label("choose another name"),
                );
            } else if let Some(first) = table.insert(f.name.name.as_str(), f) {
                errors.push(
                    Diagnostic::new(
                        format!("function `{}` is defined twice", f.name.name),
                        f.name.span,
                    )
                    .secondary(first.name.span, "first defined here"),
                );
            }
        }
        Lowerer {
            graph: Graph::new(),
            functions: table,
            inputs: Vec::new(),
            params: Vec::new(),
            param_spans: Vec::new(),
            scope_path: Vec::new(),
            inlining: Vec::new(),
            used_layer_names: HashSet::new(),
            budget: BUDGET,
            prediction: None,
            free_variables,
            mode: Mode::Train,
            dropouts: Vec::new(),
            states: Vec::new(),
            carries: Vec::new(),
        }
    }

    fn model(&mut self, def: &ModelDef, errors: &mut Vec<Diagnostic>) -> Option<Model> {
        let mut env = Env::new();
        let mut defined: HashMap<String, Span> = HashMap::new();
        let mut bindings = Vec::new();
        let mut loss: Option<(NodeId, Span)> = None;
        for item in &def.items {
            let name = match item {
                Item::Data { name, .. } | Item::Param { name, .. } | Item::Binding { name, .. } => {
                    name
                }
            };
            if let Some(&first) = defined.get(&name.name) {
                errors.push(
                    Diagnostic::new(format!("`{}` is defined twice", name.name), name.span)
                        .label("redefined here")
                        .secondary(first, "first defined here"),
                );
                continue;
            }
            defined.insert(name.name.clone(), name.span);
            let result = match item {
                Item::Data {
                    target,
                    name,
                    dims,
                    annotation,
                } => self.data_item(*target, name, dims, *annotation, &env),
                Item::Param { name, dims, init } => {
                    self.param_item(name, dims, init.as_ref(), &env)
                }
                Item::Binding { name, value } => {
                    self.scope_path = vec![name.name.clone()];
                    let node = self.expr(value, &env);
                    self.scope_path.clear();
                    node.inspect(|&node| {
                        self.graph.label(node, &name.name);
                        bindings.push(Binding {
                            name: name.name.clone(),
                            node,
                        });
                        if name.name == "loss" {
                            loss = Some((node, value.span));
                        }
                    })
                }
            };
            match result {
                Ok(node) => {
                    env.insert(name.name.clone(), Some(node));
                }
                Err(fail) => {
                    if let Fail::Report(d) = fail {
                        errors.push(d);
                    }
                    env.insert(name.name.clone(), None);
                }
            }
        }
        let loss = match (loss, defined.get("loss")) {
            (Some((node, span)), _) => {
                let shape = self.graph.shape(node);
                if shape.rank() != 0 {
                    errors.push(
                        Diagnostic::new(
                            format!("`loss` must be a scalar, but it has shape {shape}"),
                            span,
                        )
                        .label(format!("this has shape {shape}"))
                        .note("reduce it, for example with `mean(...)` or `sum(...)`"),
                    );
                    return None;
                }
                node
            }
            (None, Some(_)) => return None,
            (None, None) => {
                errors.push(
                    Diagnostic::new(
                        format!("model `{}` has no `loss`", def.name.name),
                        def.name.span,
                    )
                    .label("expected a binding named `loss` in this model")
                    .note("add a line like `loss = cross_entropy(logits, y)`"),
                );
                return None;
            }
        };
        if self.prediction.is_none() {
            // Without a loss built-in, the binding computed just before `loss` is the prediction.
            self.prediction = bindings
                .iter()
                .rev()
                .find(|b| b.name != "loss")
                .map(|b| self.regression(b.node));
        }
        Some(Model {
            name: def.name.name.clone(),
            graph: std::mem::take(&mut self.graph),
            inputs: std::mem::take(&mut self.inputs),
            params: std::mem::take(&mut self.params),
            bindings,
            loss,
            prediction: self.prediction,
            dropouts: std::mem::take(&mut self.dropouts),
            states: std::mem::take(&mut self.states),
            carries: std::mem::take(&mut self.carries),
        })
    }

    fn data_item(
        &mut self,
        target: bool,
        name: &Ident,
        dims: &[Expr],
        annotation: Annotation,
        env: &Env,
    ) -> LResult<NodeId> {
        let mut shape = self.shape(dims, env, true, name.span)?;
        if self.mode == Mode::Generate && shape.rank() >= 2 {
            // Generation feeds one token at a time: every sequence is one step long.
            shape.0[1] = Dim::Known(1);
        }
        let node = self
            .graph
            .input(&name.name, shape)
            .map_err(|e| Diagnostic::new(e.0, name.span))?;
        self.inputs.push(InputSpec {
            name: name.name.clone(),
            node,
            role: if target { Role::Target } else { Role::Input },
            kind: match annotation {
                Annotation::Real => ValueKind::Real,
                Annotation::Class | Annotation::Index => ValueKind::Class { classes: None },
            },
        });
        Ok(node)
    }

    fn param_item(
        &mut self,
        name: &Ident,
        dims: &[Expr],
        init: Option<&Expr>,
        env: &Env,
    ) -> LResult<NodeId> {
        if name.name.contains('.') {
            return Err(Diagnostic::new("parameter names cannot contain `.`", name.span).into());
        }
        let shape = self.shape(dims, env, false, name.span)?;
        let concrete = shape.concrete().unwrap_or_default();
        let fans = crate::init::fans(&concrete);
        let (init, init_name) = crate::init::resolve(init, &concrete, fans)?;
        self.new_param(&name.name, shape, init, init_name, name.span)
    }

    pub(crate) fn new_param(
        &mut self,
        name: &str,
        shape: Shape,
        init: Init,
        init_name: String,
        span: Span,
    ) -> LResult<NodeId> {
        let node = self
            .graph
            .param(name, shape)
            .map_err(|e| Diagnostic::new(e.0, span))?;
        self.params.push(ParamSpec {
            name: name.to_string(),
            node,
            init,
            init_name,
        });
        self.param_spans.push(span);
        Ok(node)
    }

    /// A shape from dimension expressions: whole numbers, or names of symbolic dimensions where
    /// `symbolic` allows them.
    pub(crate) fn shape(
        &mut self,
        dims: &[Expr],
        env: &Env,
        symbolic: bool,
        owner: Span,
    ) -> LResult<Shape> {
        let mut out = Vec::with_capacity(dims.len());
        for d in dims {
            let bound = d.as_name().and_then(|n| env.get(n).copied().flatten());
            if let (Some(name), None) = (d.as_name(), bound) {
                if !symbolic {
                    return Err(Diagnostic::new(
                        format!("parameter shapes must be known numbers, but `{name}` is symbolic"),
                        d.span,
                    )
                    .label("expected a number")
                    .into());
                }
                out.push(Dim::sym(name));
                continue;
            }
            let value = match bound {
                Some(node) => self.constant_of(node),
                None => d.constant(),
            };
            out.push(Dim::Known(self.dim_size(value, d.span)?));
        }
        let shape = Shape(out);
        shape
            .check_size()
            .map_err(|e| Diagnostic::new(e.0, owner))?;
        Ok(shape)
    }

    pub(crate) fn dim_size(&self, value: Option<f64>, span: Span) -> Result<usize, Diagnostic> {
        match value {
            Some(v) if v.fract() == 0.0 && v >= 1.0 && v <= MAX_ELEMENTS as f64 => Ok(v as usize),
            Some(v) if v.fract() == 0.0 && v > MAX_ELEMENTS as f64 => Err(Diagnostic::new(
                format!("dimension {v:.0} is too large"),
                span,
            )
            .label(format!("at most {MAX_ELEMENTS}"))),
            _ => Err(Diagnostic::new(
                "a dimension must be a positive whole number or a symbol like `B`",
                span,
            )
            .label("expected a positive whole number")),
        }
    }

    /// The value of a scalar constant node.
    pub(crate) fn constant_of(&self, node: NodeId) -> Option<f64> {
        match self.graph.op(node) {
            Op::Const(c) => Some(c.get()),
            _ => None,
        }
    }

    /// The name prefix for the next layer's parameters and state, whose names under it are
    /// `suffixes`: the binding's scope path, or that path with `.2`, `.3`, ... appended when
    /// one of these names is taken. Layers whose names differ share a prefix, so that
    /// `c = batch_norm(conv2d(x, 8, 3))` holds `c.w`, `c.b`, `c.gamma`, `c.beta` and
    /// `c.running_mean`.
    pub(crate) fn layer_name(&mut self, suffixes: &[&str]) -> String {
        let base = if self.scope_path.is_empty() {
            "layer".to_string()
        } else {
            self.scope_path.join(".")
        };
        let name = (1..)
            .map(|k| {
                if k == 1 {
                    base.clone()
                } else {
                    format!("{base}.{k}")
                }
            })
            .find(|n| {
                suffixes
                    .iter()
                    .all(|s| !self.used_layer_names.contains(&format!("{n}.{s}")))
            })
            .expect("an unused name exists");
        for s in suffixes {
            self.used_layer_names.insert(format!("{name}.{s}"));
        }
        name
    }

    /// Maps a builder shape error to a diagnostic on `span`, labelling the operands' shapes.
    pub(crate) fn shape_error(
        &self,
        err: ShapeError,
        span: Span,
        operands: &[(Span, NodeId)],
    ) -> Fail {
        let mut d =
            Diagnostic::new(format!("shape mismatch: {}", err.0), span).label("in this expression");
        for &(s, node) in operands {
            d = d.secondary(s, format!("this has shape {}", self.graph.shape(node)));
        }
        Fail::Report(d)
    }

    pub(crate) fn expr(&mut self, e: &Expr, env: &Env) -> LResult<NodeId> {
        // Reported once, where the limit is reached; every later expression is its cascade.
        match self.budget {
            0 => return Err(Fail::Cascade),
            1 => {
                self.budget = 0;
                return Err(Diagnostic::new(format!("the model is too large: more than {BUDGET} expression nodes, counting a function's body at every call"), e.span)
                    .label("the limit is reached here")
                    .note("functions are inlined at every call; a function calling another several times multiplies its size").into());
            }
            _ => self.budget -= 1,
        }
        match &e.kind {
            ExprKind::Number(v) => Ok(self.graph.constant(*v)),
            ExprKind::Name(name) => self.name(name, e.span, env),
            ExprKind::Neg(inner) => {
                let x = self.expr(inner, env)?;
                match self.constant_of(x) {
                    Some(c) => Ok(self.graph.constant(-c)),
                    None => self
                        .graph
                        .unary(UnaryOp::Neg, x)
                        .map_err(|err| self.shape_error(err, e.span, &[])),
                }
            }
            ExprKind::Binary(op, a, b) => {
                let x = self.expr(a, env)?;
                self.binary(*op, (x, a.span), b, env)
            }
            ExprKind::Chain(first, rest) => {
                let mut x = self.expr(first, env)?;
                let mut span = first.span;
                for (op, b) in rest {
                    x = self.binary(*op, (x, span), b, env)?;
                    span = span.to(b.span);
                }
                Ok(x)
            }
            ExprKind::Call(callee, args) => self.call(callee, args, e.span, env),
            ExprKind::Str(_) => Err(Diagnostic::new("a string is not a tensor", e.span)
                .label("strings are only used in `train` blocks")
                .into()),
            ExprKind::List(_) => Err(Diagnostic::new("a list is not a tensor here", e.span)
                .label("lists are only used as parameter values and settings")
                .into()),
            ExprKind::Range(..) => Err(Diagnostic::new("a range is not a tensor", e.span)
                .label("ranges are only used to pick CSV columns")
                .into()),
        }
    }

    /// `x op b`, where `x` was lowered from the source at `x_span`; numbers fold.
    fn binary(
        &mut self,
        op: BinOp,
        (x, x_span): (NodeId, Span),
        b: &Expr,
        env: &Env,
    ) -> LResult<NodeId> {
        let y = self.expr(b, env)?;
        let operands = [(x_span, x), (b.span, y)];
        let result = match op {
            BinOp::MatMul => self.graph.matmul_batched(x, y),
            _ => {
                let op = match op {
                    BinOp::Add => BinaryOp::Add,
                    BinOp::Sub => BinaryOp::Sub,
                    BinOp::Mul => BinaryOp::Mul,
                    BinOp::Div => BinaryOp::Div,
                    _ => BinaryOp::Pow,
                };
                if let (Some(p), Some(q)) = (self.constant_of(x), self.constant_of(y)) {
                    return Ok(self.graph.constant(interp::binary(op, p, q)));
                }
                self.graph.binary(op, x, y)
            }
        };
        result.map_err(|err| self.shape_error(err, x_span.to(b.span), &operands))
    }

    fn name(&mut self, name: &str, span: Span, env: &Env) -> LResult<NodeId> {
        match env.get(name) {
            Some(Some(node)) => return Ok(*node),
            Some(None) => return Err(Fail::Cascade),
            None => {}
        }
        if let Some(param) = self.params.iter().find(|p| p.name == name) {
            return Ok(param.node);
        }
        if let Some(vars) = &mut self.free_variables {
            if let Some((_, node)) = vars.iter().find(|(n, _)| n == name) {
                return Ok(*node);
            }
            let node = self
                .graph
                .input(name, Shape::scalar())
                .map_err(|e| Diagnostic::new(e.0, span))?;
            self.free_variables
                .get_or_insert_with(Vec::new)
                .push((name.to_string(), node));
            return Ok(node);
        }
        let known = env
            .keys()
            .map(String::as_str)
            .chain(self.params.iter().map(|p| p.name.as_str()))
            .chain(self.inputs.iter().map(|i| i.name.as_str()));
        let mut d = Diagnostic::new(format!("unknown name `{name}`"), span)
            .label("not defined before this point")
            .suggesting(name, known);
        if builtins::is_builtin(name) || self.functions.contains_key(name) {
            d = d.note(format!("`{name}` is a function; call it like `{name}(x)`"));
        } else if !self.inlining.is_empty() {
            d = d.note("a function body sees only its parameters and its own bindings");
        }
        Err(d.into())
    }

    fn call(&mut self, callee: &Ident, args: &[Arg], span: Span, env: &Env) -> LResult<NodeId> {
        if let Some(result) = self.builtin(&callee.name, span, args, env) {
            return result;
        }
        let Some(&function) = self.functions.get(callee.name.as_str()) else {
            let known = builtins::BUILTINS
                .iter()
                .copied()
                .chain(self.functions.keys().copied());
            let d = Diagnostic::new(format!("unknown function `{}`", callee.name), callee.span)
                .label("not a built-in or a function defined in this file");
            let d = match crate::diagnostic::suggest(&callee.name, known) {
                Some(close) => d.note(format!("did you mean `{close}`?")),
                None => d.note("docs/language.md lists the built-in functions"),
            };
            return Err(d.into());
        };
        if self.inlining.contains(&callee.name) {
            return Err(
                Diagnostic::new(format!("function `{}` calls itself", callee.name), span)
                    .label("recursive call")
                    .secondary(function.name.span, "defined here")
                    .note("functions are inlined, so recursion is not supported")
                    .into(),
            );
        }
        if let Some(named) = args.iter().find_map(|a| a.name.as_ref()) {
            return Err(Diagnostic::new(
                "user functions take positional arguments only",
                named.span,
            )
            .into());
        }
        if args.len() != function.params.len() {
            return Err(Diagnostic::new(
                format!(
                    "`{}` takes {} arguments, got {}",
                    callee.name,
                    function.params.len(),
                    args.len()
                ),
                span,
            )
            .label(format!("expected {} arguments", function.params.len()))
            .secondary(function.name.span, "defined here")
            .into());
        }
        let mut local = Env::new();
        for (param, arg) in function.params.iter().zip(args) {
            local.insert(param.name.clone(), Some(self.expr(&arg.value, env)?));
        }
        self.inlining.push(callee.name.clone());
        let result = self.function_body(function, &mut local);
        self.inlining.pop();
        result
    }

    fn function_body(&mut self, function: &Function, local: &mut Env) -> LResult<NodeId> {
        for (name, value) in &function.bindings {
            self.scope_path.push(name.name.clone());
            let node = self.expr(value, local);
            self.scope_path.pop();
            local.insert(name.name.clone(), Some(node?));
        }
        self.expr(&function.body, local)
    }

    /// Marks `target` as a class-index input with `classes` classes, if it is one.
    pub(crate) fn class_target(&mut self, target: NodeId, classes: usize) -> bool {
        match self.inputs.iter_mut().find(|i| i.node == target) {
            Some(InputSpec {
                kind: ValueKind::Class { classes: c },
                ..
            }) => {
                *c = Some(classes);
                true
            }
            _ => false,
        }
    }

    /// A real-valued prediction; a single sigmoid output reads as a probability.
    pub(crate) fn regression(&self, node: NodeId) -> Prediction {
        let single = self.graph.shape(node).dims().last() == Some(&Dim::Known(1));
        let kind = if single && *self.graph.op(node) == Op::Unary(UnaryOp::Sigmoid) {
            PredictionKind::Probability
        } else {
            PredictionKind::Regression
        };
        Prediction { node, kind }
    }
}
