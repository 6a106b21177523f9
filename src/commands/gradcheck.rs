//! `nabla gradcheck FILE`: autodiff gradients against central finite differences, in f64.

use std::path::PathBuf;
use std::process::ExitCode;

use nabla_compiler::autodiff;
use nabla_compiler::gradcheck::{self, Config};
use nabla_compiler::ir::interp;
use nabla_compiler::pipeline::JitEvaluator;
use nabla_runtime::Elem;
use serde_json::json;

use super::{Failure, Outcome, load, print_json};

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
    #[arg(long, default_value_t = 3)]
    cases: usize,
    /// Seed of the first draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Finite-difference step.
    #[arg(long, default_value_t = 1e-6)]
    eps: f64,
    /// Size the batch (every symbolic dimension) is bound to.
    #[arg(long, default_value_t = 3)]
    batch: usize,
    /// Elements checked per parameter at most (the first and last always).
    #[arg(long, default_value_t = 24)]
    samples: usize,
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
    if args.batch == 0 || args.cases == 0 {
        return Err(Failure::Message(
            "`--batch` and `--cases` must be at least 1".into(),
        ));
    }
    let model = load(&args.file)?.model;
    let config = Config {
        cases: args.cases,
        seed: args.seed,
        eps: args.eps,
        batch: args.batch,
        samples: args.samples.max(2),
        ..Config::default()
    };
    let jit = JitEvaluator::new(Elem::F64);
    let jit_eval = |g: &_, f: &_, o: &[_]| jit.eval(g, f, o);
    let evaluator: gradcheck::Evaluator = match args.backend {
        Backend::Jit => &jit_eval,
        Backend::Interp => &interp::eval,
    };
    let results = gradcheck::check(&model, &config, autodiff::vjp, evaluator)
        .map_err(|e| Failure::Message(e.to_string()))?;
    let passed = results.iter().all(|r| r.passed);
    if args.json {
        for r in &results {
            print_json(
                &json!({"param": r.name, "checked": r.checked, "max_abs_err": r.max_abs_err, "max_rel_err": r.max_rel_err, "passed": r.passed}),
            );
        }
        print_json(&json!({"passed": passed, "params": results.len(), "cases": config.cases}));
    } else {
        out!(
            "gradcheck {}: {} cases, batch {}, eps {:e}, tolerance |a - n| <= {:e} + {:e} |n|",
            args.file.display(),
            config.cases,
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
                if r.passed { "ok" } else { "FAILED" }
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
