//! `train NAME { ... }` blocks checked into plain settings ([`TrainSpec`]). Nothing here runs;
//! the CLI hands these settings to the runtime.
//!
//! Optimizer defaults are PyTorch's (`nabla_compiler::optim::Optimizer::defaults`). Schedules
//! count `t` in epochs from 0.

use nabla_compiler::model::Model;
use nabla_compiler::optim::{Optimizer, OptimizerKind};
use nabla_runtime::Schedule;
use nabla_runtime::data::DataSource;

use crate::args::{Args, integer, number, string};
use crate::ast::{Expr, ExprKind, TrainDef};
use crate::diagnostic::Diagnostic;
use crate::init::literal;

/// A checked training configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainSpec {
    /// Its name.
    pub name: String,
    /// Training data.
    pub data: Option<DataSource>,
    /// Test data.
    pub test: Option<DataSource>,
    /// The optimizer.
    pub optimizer: Optimizer,
    /// The learning-rate schedule.
    pub schedule: Schedule,
    /// Batch size.
    pub batch: Option<usize>,
    /// Epochs.
    pub epochs: Option<usize>,
    /// Steps (instead of epochs).
    pub steps: Option<usize>,
    /// Seed.
    pub seed: Option<u64>,
}

const SETTINGS: [&str; 8] = [
    "data",
    "test",
    "optimizer",
    "schedule",
    "batch",
    "epochs",
    "steps",
    "seed",
];

/// Checks a `train` block against the model it trains.
pub fn check_train(def: &TrainDef, model: &Model) -> Result<TrainSpec, Diagnostic> {
    let mut spec = TrainSpec {
        name: def.name.name.clone(),
        data: None,
        test: None,
        optimizer: Optimizer::defaults(OptimizerKind::Sgd),
        schedule: Schedule::Constant,
        batch: None,
        epochs: None,
        steps: None,
        seed: None,
    };
    for (i, (key, value)) in def.settings.iter().enumerate() {
        if let Some((first, _)) = def.settings[..i].iter().find(|(k, _)| k.name == key.name) {
            return Err(
                Diagnostic::new(format!("`{}` is set twice", key.name), key.span)
                    .secondary(first.span, "first set here"),
            );
        }
        match key.name.as_str() {
            "data" => spec.data = Some(data(value, model)?),
            "test" => spec.test = Some(data(value, model)?),
            "optimizer" => spec.optimizer = optimizer(value)?,
            "schedule" => spec.schedule = schedule(value)?,
            "batch" => spec.batch = Some(integer(value, "batch", 1, 1 << 24)? as usize),
            "epochs" => spec.epochs = Some(integer(value, "epochs", 1, 1 << 24)? as usize),
            "steps" => spec.steps = Some(integer(value, "steps", 1, 1 << 40)? as usize),
            "seed" => spec.seed = Some(integer(value, "seed", 0, u32::MAX as u64)?),
            other => {
                return Err(
                    Diagnostic::new(format!("unknown setting `{other}`"), key.span)
                        .label(format!("expected one of: {}", SETTINGS.join(", "))),
                );
            }
        }
    }
    if let (Some(_), Some((k, _))) = (
        spec.epochs,
        def.settings.iter().find(|(k, _)| k.name == "steps"),
    ) {
        return Err(Diagnostic::new("set `epochs` or `steps`, not both", k.span));
    }
    Ok(spec)
}

fn call<'e>(e: &'e Expr, what: &str) -> Result<(&'e str, &'e [crate::ast::Arg]), Diagnostic> {
    match &e.kind {
        ExprKind::Call(callee, args) => Ok((callee.name.as_str(), args.as_slice())),
        ExprKind::Name(n) => Ok((n.as_str(), &[])),
        _ => {
            Err(Diagnostic::new(format!("expected {what}"), e.span)
                .label(format!("expected {what}")))
        }
    }
}

fn data(e: &Expr, model: &Model) -> Result<DataSource, Diagnostic> {
    let (name, args) = call(e, "a data source like `mnist(\"data/mnist\")`")?;
    let inputs: Vec<&str> = model.inputs.iter().map(|i| i.name.as_str()).collect();
    match name {
        "inline" | "csv" => {
            let (min, max) = if name == "csv" { (1, 1) } else { (0, 0) };
            let a = Args::new(name, e.span, args, min, max, &inputs)?;
            for input in &inputs {
                if a.named(input).is_none() {
                    return Err(Diagnostic::new(format!("`{name}` gives no values for `{input}`"), e.span)
                        .label(format!("expected `{input} = ...`")));
                }
            }
            if name == "inline" {
                let mut columns = Vec::new();
                for (n, value) in &a.named {
                    let (values, shape) = literal(value)?;
                    columns.push((n.name.clone(), values, shape));
                }
                return Ok(DataSource::Inline(columns));
            }
            let path = string(a.positional[0], "file")?.to_string();
            let mut columns = Vec::new();
            for (n, value) in &a.named {
                let (lo, hi) = match &value.kind {
                    ExprKind::Range(lo, hi) => (integer(lo, "column", 0, 1 << 20)?, integer(hi, "column", 0, 1 << 20)?),
                    _ => {
                        let c = integer(value, "column", 0, 1 << 20)?;
                        (c, c + 1)
                    }
                };
                if hi <= lo {
                    return Err(Diagnostic::new("empty column range", value.span).label("expected `first..one_past_last`"));
                }
                columns.push((n.name.clone(), lo as usize, hi as usize));
            }
            Ok(DataSource::Csv { path, columns })
        }
        "mnist" => {
            let a = Args::new(name, e.span, args, 1, 1, &["dir"])?;
            Ok(DataSource::Mnist { dir: string(a.required(0, "dir")?, "dir")?.to_string() })
        }
        "idx" => {
            let a = Args::new(name, e.span, args, 0, 0, &["images", "labels"])?;
            Ok(DataSource::Idx {
                images: string(a.required(0, "images")?, "images")?.to_string(),
                labels: string(a.required(1, "labels")?, "labels")?.to_string(),
            })
        }
        "xor" | "circle" | "gauss" | "spiral" => {
            let a = Args::new(name, e.span, args, 1, 2, &["n", "noise"])?;
            let n = integer(a.required(0, "n")?, "n", 1, 10_000_000)? as usize;
            let noise = a.number(1, "noise", 0.0)?;
            Ok(DataSource::Toy { kind: name.to_string(), n, noise })
        }
        other => Err(Diagnostic::new(format!("unknown data source `{other}`"), e.span)
            .label("expected inline(...), mnist(dir), idx(images = ..., labels = ...), csv(file, ...), xor(n), circle(n), gauss(n) or spiral(n)")),
    }
}

fn optimizer(e: &Expr) -> Result<Optimizer, Diagnostic> {
    let (name, args) = call(e, "an optimizer like `sgd(0.1)`")?;
    let (kind, names): (OptimizerKind, &[&str]) = match name {
        "sgd" => (
            OptimizerKind::Sgd,
            &["lr", "momentum", "nesterov", "weight_decay", "l1"],
        ),
        "adagrad" => (OptimizerKind::Adagrad, &["lr", "eps", "weight_decay", "l1"]),
        "rmsprop" => (
            OptimizerKind::RmsProp,
            &["lr", "alpha", "eps", "momentum", "weight_decay", "l1"],
        ),
        "adam" => (
            OptimizerKind::Adam,
            &["lr", "beta1", "beta2", "eps", "weight_decay", "l1"],
        ),
        "adamax" => (
            OptimizerKind::Adamax,
            &["lr", "beta1", "beta2", "eps", "weight_decay", "l1"],
        ),
        other => {
            return Err(
                Diagnostic::new(format!("unknown optimizer `{other}`"), e.span)
                    .label("expected sgd, adagrad, rmsprop, adam or adamax"),
            );
        }
    };
    let a = Args::new(name, e.span, args, 0, 1, names)?;
    let d = Optimizer::defaults(kind);
    let nonneg = |v: f64, what: &str, at: &Expr| {
        if v < 0.0 {
            Err(Diagnostic::new(
                format!("`{what}` must not be negative"),
                at.span,
            ))
        } else {
            Ok(v)
        }
    };
    let spec = Optimizer {
        kind,
        lr: nonneg(a.number(0, "lr", d.lr)?, "lr", e)?,
        momentum: nonneg(a.number(9, "momentum", d.momentum)?, "momentum", e)?,
        nesterov: a.flag("nesterov", false)?,
        weight_decay: nonneg(a.number(9, "weight_decay", 0.0)?, "weight_decay", e)?,
        l1: nonneg(a.number(9, "l1", 0.0)?, "l1", e)?,
        beta1: a.number(9, "beta1", d.beta1)?,
        beta2: a.number(
            9,
            if name == "rmsprop" { "alpha" } else { "beta2" },
            d.beta2,
        )?,
        eps: nonneg(a.number(9, "eps", d.eps)?, "eps", e)?,
    };
    if spec.nesterov && spec.momentum == 0.0 {
        return Err(Diagnostic::new(
            "Nesterov momentum needs `momentum` > 0",
            e.span,
        ));
    }
    Ok(spec)
}

fn schedule(e: &Expr) -> Result<Schedule, Diagnostic> {
    let (name, args) = call(e, "a schedule like `exponential(0.1)`")?;
    match name {
        "piecewise" => {
            let a = Args::new(name, e.span, args, 2, 2, &["boundaries", "values"])?;
            let (boundaries, _) = literal(a.required(0, "boundaries")?)?;
            let (values, _) = literal(a.required(1, "values")?)?;
            if values.len() != boundaries.len() + 1 || boundaries.windows(2).any(|w| w[0] >= w[1]) {
                return Err(Diagnostic::new(
                    "`piecewise` needs increasing boundaries and one more value than boundaries",
                    e.span,
                ));
            }
            Ok(Schedule::Piecewise { boundaries, values })
        }
        "exponential" | "inverse_time" => {
            let a = Args::new(name, e.span, args, 1, 1, &["k"])?;
            let k = number(a.required(0, "k")?, "k")?;
            Ok(if name == "exponential" {
                Schedule::Exponential(k)
            } else {
                Schedule::InverseTime(k)
            })
        }
        other => Err(
            Diagnostic::new(format!("unknown schedule `{other}`"), e.span)
                .label("expected piecewise(boundaries, values), exponential(k) or inverse_time(k)"),
        ),
    }
}
