//! `nabla gradcheck FILE`: autodiff gradients against central finite differences, in f64.

use std::path::PathBuf;
use std::process::ExitCode;

use nabla_compiler::autodiff;
use nabla_compiler::evaluator::JitEvaluator;
use nabla_compiler::gradcheck::{self, Config};
use nabla_compiler::ir::interp;
use nabla_compiler::optim::{Optimizer, OptimizerKind};
use nabla_compiler::programs::ModelPrograms;
use nabla_runtime::Elem;
use serde_json::json;

use super::{Failure, Outcome, count, load_file, memory_diagnostic, number, print_json};

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Backend {
    /// Native code from Cranelift.
    Jit,
    /// The reference interpreter.
    Interp,
}

#[derive(clap::Args)]
pub struct Args {
    /// The model file.
    file: PathBuf,
    /// Random draws of inputs, targets and parameters.
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1 << 20))]
    cases: usize,
    /// Seed of the first draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Finite-difference step.
    #[arg(long, default_value_t = 1e-6)]
    eps: f64,
    /// Size the batch (every symbolic dimension) is bound to.
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1 << 24))]
    batch: usize,
    /// Elements checked per parameter at most (the first and last always).
    #[arg(long, default_value_t = 24)]
    samples: usize,
    /// Elements nudged per draw at most, over all parameters (each draw also nudges every
    /// element at once along a random direction).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    max_elements: u64,
    /// Draw every parameter at random, also those the model gives literal values.
    #[arg(long)]
    random_params: bool,
    /// Compute gradients with compiled code (f64 kernels) or with the reference interpreter.
    #[arg(long, value_enum, default_value = "jit")]
    backend: Backend,
    /// One JSON object per parameter, then a summary object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Outcome {
    if !(args.eps > 0.0 && args.eps.is_finite()) {
        return Err(Failure::Message(format!(
            "`--eps` must be a positive number, got {}",
            args.eps
        )));
    }
    let loaded = load_file(&args.file)?;
    let model = loaded.compiled.model.clone();
    let config = Config {
        cases: args.cases,
        seed: args.seed,
        eps: args.eps,
        batch: args.batch,
        samples: args.samples.max(2),
        max_elements: args.max_elements as usize,
        random_params: args.random_params,
        ..Config::default()
    };
    let memory = ModelPrograms::new(
        model.clone(),
        Optimizer::defaults(OptimizerKind::Sgd),
        Elem::F64,
    )
    .memory(config.batch)
    .map_err(Failure::Message)?;
    let what = format!("gradcheck (f64, batch {})", config.batch);
    if let Some(d) = memory_diagnostic(&loaded, &memory, &what, false) {
        return Err(Failure::Diagnostics(loaded.render(&[d])));
    }
    let jit = JitEvaluator::new(Elem::F64);
    let jit_eval = |g: &_, f: &_, o: &[_]| jit.eval(g, f, o);
    let evaluator: gradcheck::Evaluator = match args.backend {
        Backend::Jit => &jit_eval,
        Backend::Interp => &interp::eval,
    };
    let results = gradcheck::check(&model, &config, autodiff::vjp, evaluator)
        .map_err(|e| Failure::Message(e.to_string()))?;
    let passed = results.iter().all(|r| r.passed);
    let sampled = results
        .iter()
        .any(|r| r.name != gradcheck::ALL_PARAMS && r.cases < config.cases);
    let shape = |name: &str| {
        model
            .params
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| model.graph.shape(p.node).concrete())
    };
    if args.json {
        for r in &results {
            let worst = r.worst.as_ref().map(|w| {
                json!({
                    "element": w.element, "index": shape(&r.name).map(|s| index(&s, w.element)),
                    "case": w.case, "analytic": number(w.analytic), "numeric": number(w.numeric),
                })
            });
            print_json(&json!({
                "param": r.name, "checked": r.checked, "cases": r.cases,
                "max_abs_err": number(r.max_abs_err), "max_rel_err": number(r.max_rel_err),
                "worst": worst, "round_off": r.round_off, "kinks": r.kinks,
                "skipped": r.skipped, "passed": r.passed,
            }));
        }
        print_json(
            &json!({"passed": passed, "params": model.params.len(), "cases": config.cases, "sampled": sampled}),
        );
    } else {
        out!(
            "gradcheck {}: {}, batch {}, eps {:e}, tolerance |a - n| <= {:e} s + {:e} |n| (s: the draw's largest |loss| or |gradient|)",
            args.file.display(),
            count(config.cases, "case"),
            config.batch,
            config.eps,
            config.atol,
            config.rtol
        );
        let width = results
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(5)
            .max(5);
        out!(
            "  {:<width$}  {:>7}  {:>11}  {:>11}  result",
            "param",
            "checked",
            "max_abs_err",
            "max_rel_err"
        );
        for r in &results {
            out!(
                "  {:<width$}  {:>7}  {:>11.3e}  {:>11.3e}  {}",
                r.name,
                r.checked,
                r.max_abs_err,
                r.max_rel_err,
                match (r.passed, r.checked) {
                    (false, _) => "FAILED",
                    (true, 0) if r.skipped > 0 => "kink: not checked",
                    _ => "ok",
                }
            );
        }
        for r in results.iter().filter(|r| !r.passed) {
            if let Some(w) = &r.worst {
                let at = match shape(&r.name) {
                    Some(s) => format!("{}{:?}", r.name, index(&s, w.element)),
                    None => r.name.clone(),
                };
                out!(
                    "  {at}: analytic {:e}, numeric {:e} (case {})",
                    w.analytic,
                    w.numeric,
                    w.case
                );
            }
        }
        let kinks: usize = results.iter().map(|r| r.kinks).sum();
        let skipped: usize = results.iter().map(|r| r.skipped).sum();
        if kinks > 0 {
            out!(
                "  note: {} crossed a kink (an argument of relu, max, abs or pooling meeting its switch within the step): checked again with steps down to {:e}{}",
                count(kinks, "comparison"),
                config.eps / 100.0,
                match skipped {
                    0 => String::new(),
                    n => format!(
                        "; {} still crossed one and {} left out",
                        count(n, "comparison"),
                        if n == 1 { "is" } else { "are" }
                    ),
                }
            );
        }
        let round_off = results.iter().map(|r| r.round_off).fold(0.0, f64::max);
        if round_off > config.atol {
            out!(
                "  note: at this loss's magnitude, central differences with eps {:e} carry round-off up to {round_off:.1e}; smaller errors cannot be seen (a larger --eps resolves more)",
                config.eps
            );
        }
        if sampled {
            out!(
                "  (more parameters than --max-elements {}: each case checked a random subset of them, and all of them along a random direction)",
                config.max_elements
            );
        }
        out!(
            "{}",
            if passed {
                "gradcheck passed"
            } else {
                "gradcheck FAILED"
            }
        );
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A row-major element number as a multi-index into `shape`.
fn index(shape: &[usize], mut element: usize) -> Vec<usize> {
    let mut out = vec![0; shape.len()];
    for (slot, &d) in out.iter_mut().zip(shape).rev() {
        *slot = element % d.max(1);
        element /= d.max(1);
    }
    out
}
