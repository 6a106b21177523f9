//! `nabla diff EXPR --wrt x,y --at x=1,y=2`: symbolic partial derivatives of a formula, in
//! canonical real-number form (`nabla_compiler::algebra`), with their values.

use std::collections::HashMap;
use std::process::ExitCode;

use nabla_compiler::algebra;
use nabla_compiler::autodiff::differentiate;
use nabla_compiler::ir::{Shape, Tensor, interp};
use serde_json::json;

use super::{Failure, Outcome, optional, print_json};

#[derive(clap::Args)]
pub struct Args {
    /// The formula, e.g. "x^2 + 3*x*y + y^2 + z^3".
    expr: String,
    /// Variables to differentiate with respect to, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    wrt: Vec<String>,
    /// A point to evaluate the derivatives at, e.g. x=1,y=2,z=3.
    #[arg(long, value_delimiter = ',')]
    at: Vec<String>,
    /// Print one JSON object: {"x": {"formula": ..., "value": ...}, ...}.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Outcome {
    let nabla_dsl::Formula {
        mut graph,
        root,
        variables: mut vars,
    } = nabla_dsl::formula(&args.expr).map_err(|d| {
        Failure::Diagnostics(nabla_dsl::diagnostic::render(&[d], "<formula>", &args.expr))
    })?;
    let point = parse_point(&args.at)?;
    for name in &args.wrt {
        if !vars.iter().any(|(n, _)| n == name) {
            let node = graph
                .input(name, Shape::scalar())
                .map_err(|e| Failure::Message(e.0))?;
            vars.push((name.clone(), node));
        }
    }
    if let Some(name) = point.keys().find(|k| !vars.iter().any(|(n, _)| n == *k)) {
        return Err(Failure::Message(format!(
            "`--at` gives `{name}`, which the formula does not use"
        )));
    }
    let wrt: Vec<_> = args
        .wrt
        .iter()
        .map(|w| {
            vars.iter()
                .find(|(n, _)| n == w)
                .map(|(_, id)| *id)
                .expect("added above")
        })
        .collect();
    let grads =
        differentiate(&mut graph, root, &wrt).map_err(|e| Failure::Message(e.to_string()))?;

    let missing: Vec<&str> = vars
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !point.contains_key(*n))
        .collect();
    let values = if point.is_empty() {
        None
    } else if !missing.is_empty() {
        return Err(Failure::Message(format!(
            "`--at` gives no value for {}",
            missing.join(", ")
        )));
    } else {
        let feeds: HashMap<String, Tensor<f64>> = point
            .iter()
            .map(|(k, v)| (k.clone(), Tensor::scalar(*v)))
            .collect();
        let out =
            interp::eval(&graph, &feeds, &grads).map_err(|e| Failure::Message(e.to_string()))?;
        Some(out.into_iter().map(|t| t.data[0]).collect::<Vec<f64>>())
    };
    let formulas: Vec<String> = grads
        .iter()
        .map(|&g| algebra::canonical(&graph, g).to_string())
        .collect();
    if args.json {
        let mut object = serde_json::Map::new();
        for (i, name) in args.wrt.iter().enumerate() {
            object.insert(
                name.clone(),
                json!({"formula": formulas[i], "value": optional(values.as_ref().map(|v| v[i]))}),
            );
        }
        print_json(&serde_json::Value::Object(object));
    } else {
        for (i, name) in args.wrt.iter().enumerate() {
            match &values {
                Some(v) => out!("d/d{name} = {} = {}", formulas[i], v[i]),
                None => out!("d/d{name} = {}", formulas[i]),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `["x=1", "y=2"]` to a map, with clear errors.
fn parse_point(items: &[String]) -> Result<HashMap<String, f64>, Failure> {
    let mut point = HashMap::new();
    for item in items {
        let (name, value) = item
            .split_once('=')
            .ok_or_else(|| Failure::Message(format!("`--at` expects name=value, got `{item}`")))?;
        let value: f64 = value
            .trim()
            .parse()
            .map_err(|_| Failure::Message(format!("`--at`: `{value}` is not a number")))?;
        point.insert(name.trim().to_string(), value);
    }
    Ok(point)
}
