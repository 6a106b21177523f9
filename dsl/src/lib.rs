//! The nabla model language: `.nn` source to a [`Model`] the compiler understands.
//!
//! Stages: [`lexer`] (text to tokens), [`parser`] (tokens to [`ast`], never panics, bounded
//! nesting), then lowering (names, functions, layers, initialisers and shapes, straight into the
//! compiler's graph builder) and [`train`] (training settings). Errors are [`Diagnostic`]s with
//! source spans, rendered by [`diagnostic::render`].
//!
//! ```
//! let model = nabla_dsl::compile("model m {\n  input x[B, 3]\n  target y[B, 1]\n  out = dense(x, 1)\n  loss = mse(out, y)\n}\n").unwrap().model;
//! assert_eq!(model.params.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["out.w", "out.b"]);
//! assert_eq!(model.param_count(), 4);
//! ```
#![deny(missing_docs)]

mod args;
pub mod ast;
pub mod diagnostic;
mod init;
pub mod lexer;
mod lower;
pub mod parser;
pub mod train;

use nabla_compiler::ir::{Graph, NodeId};
use nabla_compiler::model::{Mode, Model, Role, ValueKind};

pub use diagnostic::Diagnostic;
pub use lower::builtins::BUILTINS;
pub use train::{TrainSpec, Validation};

/// A checked file: its model and training configurations.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The model as the train step computes it.
    pub model: Model,
    /// The model as evaluation and prediction compute it (dropout is the identity).
    pub eval_model: Model,
    /// For a model reading token sequences that can run one step at a time: the model as
    /// generation computes it, recurrent state carried in and out ([`Mode::Generate`]).
    pub generate_model: Option<Model>,
    /// The `train` blocks, in order.
    pub trains: Vec<TrainSpec>,
    /// Where each parameter of `model.params` was declared (or its layer called).
    pub param_spans: Vec<ast::Span>,
    /// Where each binding of the model was written: its name and the name's span.
    pub binding_spans: Vec<(String, ast::Span)>,
}

/// Checks a source file and lowers it. On failure, every error found.
pub fn compile(source: &str) -> Result<Compiled, Vec<Diagnostic>> {
    let tokens = lexer::lex(source).map_err(|d| vec![d])?;
    let (file, mut errors) = parser::parse_file(&tokens);
    if !errors.is_empty() {
        return Err(errors);
    }
    let (model, param_spans) = lower::lower_model(&file, Mode::Train)?;
    // Only layers that behave differently in evaluation need a second lowering.
    let eval_model = if model.dropouts.is_empty() && model.states.is_empty() {
        model.clone()
    } else {
        lower::lower_model(&file, Mode::Eval)?.0
    };
    let reads_tokens = model.inputs.iter().any(|i| {
        i.role == Role::Input
            && matches!(i.kind, ValueKind::Class { .. })
            && model.graph.shape(i.node).rank() >= 2
    });
    // A model whose shapes tie it to whole windows (flattening a sequence into a dense
    // layer) cannot run one token at a time; it trains all the same, without generation.
    let generate_model = reads_tokens
        .then(|| lower::lower_model(&file, Mode::Generate).ok())
        .flatten()
        .map(|(m, _)| m)
        .filter(|g| same_parameters(&model, g));
    let mut trains = Vec::new();
    for def in &file.trains {
        match train::check_train(def, &model) {
            Ok(spec) => trains.push(spec),
            Err(d) => errors.push(d),
        }
    }
    if errors.is_empty() {
        Ok(Compiled {
            model,
            eval_model,
            generate_model,
            trains,
            param_spans,
            binding_spans: file
                .models
                .iter()
                .flat_map(|m| &m.items)
                .filter_map(|item| match item {
                    ast::Item::Binding { name, .. } => Some((name.name.clone(), name.span)),
                    _ => None,
                })
                .collect(),
        })
    } else {
        Err(errors)
    }
}

/// Whether two lowerings of a file have parameters of the same names and shapes.
fn same_parameters(a: &Model, b: &Model) -> bool {
    let shapes = |m: &Model| -> Vec<(String, nabla_compiler::ir::Shape)> {
        m.params
            .iter()
            .map(|p| (p.name.clone(), m.graph.shape(p.node).clone()))
            .collect()
    };
    shapes(a) == shapes(b)
}

/// [`compile`] for raw bytes, reporting invalid UTF-8 at its position.
pub fn compile_bytes(bytes: &[u8]) -> Result<Compiled, (String, Vec<Diagnostic>)> {
    match std::str::from_utf8(bytes) {
        Ok(source) => compile(source).map_err(|d| (source.to_string(), d)),
        Err(e) => {
            let valid = e.valid_up_to();
            let source = String::from_utf8_lossy(bytes).into_owned();
            let start = String::from_utf8_lossy(&bytes[..valid]).len();
            let d = Diagnostic::new(
                "the file is not valid UTF-8",
                ast::Span::new(start, start + 1),
            )
            .label("invalid byte sequence here");
            Err((source, vec![d]))
        }
    }
}

/// A scalar formula lowered to a graph (for `nabla diff`).
#[derive(Clone, Debug)]
pub struct Formula {
    /// The graph.
    pub graph: Graph,
    /// The formula's value.
    pub root: NodeId,
    /// Its free names, scalar inputs, in order of first appearance.
    pub variables: Vec<(String, NodeId)>,
}

/// Parses and lowers a scalar formula whose free names become scalar inputs.
pub fn formula(source: &str) -> Result<Formula, Diagnostic> {
    let tokens = lexer::lex(source)?;
    let expr = parser::parse_expr(&tokens)?;
    lower::lower_formula(&expr)
}
