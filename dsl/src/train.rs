//! `train NAME { ... }` blocks checked into plain settings ([`TrainSpec`]). Nothing here runs;
//! the CLI hands these settings to the runtime.
//!
//! Optimizer defaults are PyTorch's (`nabla_compiler::optim::Optimizer::defaults`). Schedules
//! count `t` in epochs from 0.

use nabla_compiler::ir::Dim;
use nabla_compiler::model::{Model, Role, ValueKind};
use nabla_compiler::optim::{Optimizer, OptimizerKind};
use nabla_runtime::data::DataSource;
use nabla_runtime::schedule::{Decay, Schedule};
use nabla_runtime::text::Level;
use nabla_runtime::train::{EarlyStopping, Monitor};
use nabla_runtime::train::{MAX_BATCH, MAX_EPOCHS, MAX_STEPS};

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
    /// Held-out data for `val_loss`.
    pub validation: Option<Validation>,
    /// When to stop early.
    pub early_stopping: Option<EarlyStopping>,
}

/// Where validation data comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Validation {
    /// A random fraction of the training data (0 < f < 1), chosen with the seed.
    Fraction(f64),
    /// A data source of its own.
    Data(DataSource),
}

const SETTINGS: [&str; 11] = [
    "data",
    "test",
    "optimizer",
    "schedule",
    "batch",
    "epochs",
    "steps",
    "seed",
    "validation",
    "early_stopping",
    "clip_grad_norm",
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
        validation: None,
        early_stopping: None,
    };
    let mut clip = None;
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
            "batch" => spec.batch = Some(integer(value, "batch", 1, MAX_BATCH as u64)? as usize),
            "epochs" => {
                spec.epochs = Some(integer(value, "epochs", 1, MAX_EPOCHS as u64)? as usize)
            }
            "steps" => spec.steps = Some(integer(value, "steps", 1, MAX_STEPS as u64)? as usize),
            "seed" => spec.seed = Some(integer(value, "seed", 0, u32::MAX as u64)?),
            "validation" => spec.validation = Some(validation(value, model)?),
            "early_stopping" => spec.early_stopping = Some(early_stopping(value)?),
            "clip_grad_norm" => {
                let v = number(value, "clip_grad_norm")?;
                if v <= 0.0 {
                    return Err(Diagnostic::new(
                        format!("`clip_grad_norm` must be above 0, got {v}"),
                        value.span,
                    )
                    .label("the largest global norm of the gradients"));
                }
                clip = Some(v);
            }
            other => {
                return Err(
                    Diagnostic::new(format!("unknown setting `{other}`"), key.span)
                        .label(format!("expected one of: {}", SETTINGS.join(", ")))
                        .suggesting(other, SETTINGS),
                );
            }
        }
    }
    spec.optimizer.clip_grad_norm = clip;
    if let (Some(_), Some((k, _))) = (
        spec.epochs,
        def.settings.iter().find(|(k, _)| k.name == "steps"),
    ) {
        return Err(Diagnostic::new("set `epochs` or `steps`, not both", k.span));
    }
    if let (Some(es), None) = (&spec.early_stopping, &spec.validation)
        && es.monitor.needs_validation()
        && let Some((_, value)) = def
            .settings
            .iter()
            .find(|(k, _)| k.name == "early_stopping")
    {
        return Err(Diagnostic::new(
            format!(
                "early stopping watches `{}`, but this train block has no validation data",
                es.monitor.name()
            ),
            value.span,
        )
        .label(
            "add `validation = 0.1` (a held-out tenth of the data) or `validation = <data source>`",
        ));
    }
    Ok(spec)
}

/// `validation = 0.1` (a fraction of the training data) or a data source.
fn validation(e: &Expr, model: &Model) -> Result<Validation, Diagnostic> {
    let Some(fraction) = e.constant() else {
        return data(e, model).map(Validation::Data);
    };
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Diagnostic::new(
            format!("a validation fraction must be between 0 and 1, got {fraction}"),
            e.span,
        )
        .label("expected a fraction like 0.1, or a data source"));
    }
    Ok(Validation::Fraction(fraction))
}

/// `early_stopping(monitor = "val_loss", patience = 5, min_delta = 0, restore_best = true)`,
/// Keras' defaults but for `patience` (Keras: 0).
fn early_stopping(e: &Expr) -> Result<EarlyStopping, Diagnostic> {
    let (name, args) = call(e, "`early_stopping(...)`")?;
    if name != "early_stopping" {
        return Err(Diagnostic::new(format!("expected `early_stopping(...)`, got `{name}`"), e.span)
            .label("expected early_stopping(monitor = \"val_loss\", patience = 5, min_delta = 0, restore_best = true)"));
    }
    let names = ["monitor", "patience", "min_delta", "restore_best"];
    let a = Args::new(name, e.span, args, 0, 0, &names)?;
    let monitor = match a.named("monitor") {
        None => Monitor::ValLoss,
        Some(m) => {
            let text = string(m, "monitor")?;
            let known = Monitor::ALL.iter().map(|(n, _)| *n);
            Monitor::ALL
                .iter()
                .find(|(n, _)| *n == text)
                .map(|(_, m)| *m)
                .ok_or_else(|| {
                    Diagnostic::new(format!("early stopping cannot watch `{text}`"), m.span)
                        .label(format!(
                            "expected one of: {}",
                            known.clone().collect::<Vec<_>>().join(", ")
                        ))
                        .suggesting(text, known)
                })?
        }
    };
    let patience = match a.named("patience") {
        None => 5,
        Some(p) => integer(p, "patience", 0, 1 << 24)? as usize,
    };
    let min_delta = a.number(9, "min_delta", 0.0)?;
    if min_delta < 0.0 {
        let at = a.named("min_delta").map_or(e.span, |m| m.span);
        return Err(Diagnostic::new(
            format!("`min_delta` must be 0 or more, got {min_delta}"),
            at,
        )
        .label("the least improvement that counts, as a positive amount"));
    }
    Ok(EarlyStopping {
        monitor,
        patience,
        min_delta,
        restore_best: a.flag("restore_best", true)?,
    })
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
            let mut names = inputs.clone();
            if name == "csv" && !inputs.contains(&"header") {
                names.push("header");
            }
            let a = Args::new(name, e.span, args, min, max, &names)?;
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
            let header = match a.named("header") {
                Some(_) if !inputs.contains(&"header") => Some(a.flag("header", false)?),
                _ => None,
            };
            let mut columns = Vec::new();
            for (n, value) in a.named.iter().filter(|(n, _)| inputs.contains(&n.name.as_str())) {
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
            Ok(DataSource::Csv { path, columns, header })
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
        "text" => {
            let a = Args::new(name, e.span, args, 1, 1, &["path", "seq", "level"])?;
            let path = string(a.required(0, "path")?, "path")?.to_string();
            // The windows' length is the model's: the steps of its token input.
            let steps = model.inputs.iter().find_map(|i| {
                let dims = model.graph.shape(i.node).dims();
                match (i.role, i.kind, dims) {
                    (Role::Input, ValueKind::Class { .. }, [_, Dim::Known(t)]) => Some(*t),
                    _ => None,
                }
            });
            let Some(steps) = steps else {
                return Err(Diagnostic::new("`text` feeds token windows, but the model has no input like `tokens[B, 64] : index`", e.span)
                    .label("the model needs a token input")
                    .note("declare the tokens like `input tokens[B, 64] : index` and the next tokens like `target next[B, 64] : class`"));
            };
            let seq = match a.named("seq") {
                Some(v) => {
                    let seq = integer(v, "seq", 1, 1 << 20)? as usize;
                    if seq != steps {
                        return Err(Diagnostic::new(format!("windows of {seq} tokens do not fit the model's token input of {steps} steps"), v.span)
                            .label(format!("expected {steps}, or leave `seq` out")));
                    }
                    seq
                }
                None => steps,
            };
            let level = match a.named("level") {
                None => Level::Char,
                Some(v) => match string(v, "level")? {
                    "char" => Level::Char,
                    "word" => Level::Word,
                    other => {
                        return Err(Diagnostic::new(format!("unknown text level \"{other}\""), v.span)
                            .label("expected \"char\" or \"word\""));
                    }
                },
            };
            Ok(DataSource::Text { path, level, seq })
        }
        "xor" | "circle" | "gauss" | "spiral" => {
            let a = Args::new(name, e.span, args, 1, 2, &["n", "noise"])?;
            let n = integer(a.required(0, "n")?, "n", 1, 10_000_000)? as usize;
            let noise = a.number(1, "noise", 0.0)?;
            Ok(DataSource::Toy { kind: name.to_string(), n, noise })
        }
        other => Err(Diagnostic::new(format!("unknown data source `{other}`"), e.span)
            .suggesting(other, ["inline", "csv", "mnist", "idx", "text", "xor", "circle", "gauss", "spiral"])
            .label("expected inline(...), mnist(dir), idx(images = ..., labels = ...), csv(file, ...), text(file), xor(n), circle(n), gauss(n) or spiral(n)")),
    }
}

fn optimizer(e: &Expr) -> Result<Optimizer, Diagnostic> {
    let (name, args) = call(e, "an optimizer like `sgd(0.1)`")?;
    let adam = ["lr", "beta1", "beta2", "eps"].as_slice();
    let (kind, own): (OptimizerKind, &[&str]) = match name {
        "sgd" => (OptimizerKind::Sgd, &["lr", "momentum", "nesterov"]),
        "adagrad" => (OptimizerKind::Adagrad, &["lr", "eps"]),
        "rmsprop" => (OptimizerKind::RmsProp, &["lr", "alpha", "eps", "momentum"]),
        "adam" => (OptimizerKind::Adam, adam),
        "adamw" => (OptimizerKind::AdamW, adam),
        "adamax" => (OptimizerKind::Adamax, adam),
        other => {
            return Err(
                Diagnostic::new(format!("unknown optimizer `{other}`"), e.span)
                    .suggesting(
                        other,
                        ["sgd", "adagrad", "rmsprop", "adam", "adamw", "adamax"],
                    )
                    .label("expected sgd, adagrad, rmsprop, adam, adamw or adamax"),
            );
        }
    };
    // The penalties every optimizer takes; AdamW's decay is its own, and it has no `l1`.
    let penalties: &[&str] = if kind == OptimizerKind::AdamW {
        &["weight_decay", "decay_vectors"]
    } else {
        &["weight_decay", "l1", "decay_vectors"]
    };
    let names = [own, penalties].concat();
    let names = names.as_slice();
    let a = Args::new(name, e.span, args, 0, 1, names)?;
    let d = Optimizer::defaults(kind);
    // A setting within `lo..hi` (`hi` itself allowed when `closed`), located at its argument.
    let setting = |i: usize, key: &str, default: f64, lo: f64, hi: f64, closed: bool| {
        let Some(at) = a.get(i, key) else {
            return Ok(default);
        };
        let v = number(at, key)?;
        if v < lo || v > hi || (!closed && v == hi) {
            let range = match (hi.is_infinite(), closed) {
                (true, _) => format!("at least {lo}"),
                (false, true) => format!("from {lo} to {hi}"),
                (false, false) => format!("at least {lo} and below {hi}"),
            };
            return Err(
                Diagnostic::new(format!("`{key}` must be {range}, got {v}"), at.span)
                    .label(format!("expected a number {range}")),
            );
        }
        Ok(v)
    };
    let any = f64::INFINITY;
    let (beta2_key, beta2_closed) = if name == "rmsprop" {
        ("alpha", true)
    } else {
        ("beta2", false)
    };
    let spec = Optimizer {
        kind,
        lr: setting(0, "lr", d.lr, 0.0, any, true)?,
        momentum: setting(9, "momentum", d.momentum, 0.0, any, true)?,
        nesterov: a.flag("nesterov", false)?,
        weight_decay: setting(9, "weight_decay", d.weight_decay, 0.0, any, true)?,
        l1: setting(9, "l1", 0.0, 0.0, any, true)?,
        beta1: setting(9, "beta1", d.beta1, 0.0, 1.0, false)?,
        beta2: setting(9, beta2_key, d.beta2, 0.0, 1.0, beta2_closed)?,
        eps: setting(9, "eps", d.eps, 0.0, any, true)?,
        decay_vectors: a.flag("decay_vectors", true)?,
        clip_grad_norm: None,
    };
    if spec.nesterov && spec.momentum == 0.0 {
        return Err(Diagnostic::new(
            "Nesterov momentum needs `momentum` > 0",
            e.span,
        ));
    }
    Ok(spec)
}

const SCHEDULES: [&str; 6] = [
    "piecewise",
    "exponential",
    "inverse_time",
    "warmup",
    "cosine",
    "linear",
];

fn schedule(e: &Expr) -> Result<Schedule, Diagnostic> {
    let (name, args) = call(e, "a schedule like `exponential(0.1)`")?;
    match name {
        "piecewise" => {
            let a = Args::new(name, e.span, args, 2, 2, &["boundaries", "values"])?;
            let values_expr = a.required(1, "values")?;
            let (boundaries, _) = literal(a.required(0, "boundaries")?)?;
            let (values, _) = literal(values_expr)?;
            if values.len() != boundaries.len() + 1 || boundaries.windows(2).any(|w| w[0] >= w[1]) {
                return Err(Diagnostic::new(
                    "`piecewise` needs increasing boundaries and one more value than boundaries",
                    e.span,
                ));
            }
            if let Some(bad) = values.iter().find(|v| **v < 0.0) {
                return Err(Diagnostic::new(
                    format!(
                        "`piecewise` values are learning rates and must not be negative, got {bad}"
                    ),
                    values_expr.span,
                )
                .label("expected learning rates of 0 or more"));
            }
            Ok(Schedule::Piecewise { boundaries, values })
        }
        "exponential" | "inverse_time" => {
            let a = Args::new(name, e.span, args, 1, 1, &["k"])?;
            let k_expr = a.required(0, "k")?;
            let k = number(k_expr, "k")?;
            if k < 0.0 {
                return Err(Diagnostic::new(
                    format!("`{name}` decays the learning rate and needs a rate `k` of 0 or more, got {k}"),
                    k_expr.span,
                )
                .label("a negative `k` would grow the learning rate without bound"));
            }
            Ok(if name == "exponential" {
                Schedule::Exponential(k)
            } else {
                Schedule::InverseTime(k)
            })
        }
        "warmup" | "cosine" | "linear" => {
            let a = if name == "warmup" {
                Args::new(name, e.span, args, 1, 1, &["steps"])?
            } else {
                Args::new(name, e.span, args, 1, 2, &["total", "min_lr", "warmup"])?
            };
            let first = if name == "warmup" { "steps" } else { "total" };
            let first_expr = a.required(0, first)?;
            let first_value = integer(first_expr, first, 1, MAX_STEPS as u64)? as usize;
            let (warmup, decay) = if name == "warmup" {
                (first_value, Decay::Constant)
            } else {
                let min_lr = a.number(1, "min_lr", 0.0)?;
                if min_lr < 0.0 {
                    let at = a.get(1, "min_lr").map_or(e.span, |m| m.span);
                    return Err(Diagnostic::new(
                        format!("`min_lr` is a learning rate and must not be negative, got {min_lr}"),
                        at,
                    ));
                }
                let warmup = match a.named("warmup") {
                    Some(w) => integer(w, "warmup", 0, MAX_STEPS as u64)? as usize,
                    None => 0,
                };
                if warmup >= first_value {
                    let at = a.named("warmup").map_or(e.span, |w| w.span);
                    return Err(Diagnostic::new(
                        format!("the warm-up of {warmup} steps must end before the decay's {first_value} steps do"),
                        at,
                    )
                    .label(format!("expected fewer than {first_value} steps")));
                }
                let total = first_value;
                let decay = if name == "cosine" {
                    Decay::Cosine { total, min_lr }
                } else {
                    Decay::Linear { total, min_lr }
                };
                (warmup, decay)
            };
            Ok(Schedule::Steps { warmup, decay })
        }
        other => Err(
            Diagnostic::new(format!("unknown schedule `{other}`"), e.span)
                .suggesting(other, SCHEDULES)
                .label("expected piecewise(boundaries, values), exponential(k), inverse_time(k), warmup(steps), cosine(total, min_lr, warmup) or linear(total, min_lr, warmup)"),
        ),
    }
}
