//! `nabla generate FILE --weights W --prompt TEXT --length N [--temperature T] [--top-k K]
//! [--seed S] [--json]`: text from a model trained on `text(...)`. The prompt is fed one token
//! at a time, then each next token is sampled from the predicted distribution and fed back. A
//! recurrent model runs its one-step generation program, which carries every recurrent state
//! forward in its own buffers (nothing is recomputed); a transformer, which has none, runs its
//! prediction program over the last window of tokens ([`Generator`]). A seed fixes the text.

use std::process::ExitCode;
use std::time::Instant;

use nabla_runtime::train::{Compile, Store};
use nabla_runtime::{Buffer, Elem, Executable, Rng};
use serde_json::json;

use super::session::WeightsArgs;
use super::{Failure, Outcome, print_json};

/// The longest text one call generates.
const MAX_LENGTH: usize = 1 << 20;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: WeightsArgs,
    /// The text to continue (every character, or word, must be in the training vocabulary).
    #[arg(long)]
    prompt: String,
    /// Tokens to generate after the prompt.
    #[arg(long, default_value_t = 500)]
    length: usize,
    /// Divides the logits before sampling: below 1 is more conservative, above 1 more varied.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Sample only among the K most likely tokens.
    #[arg(long = "top-k")]
    top_k: Option<usize>,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(args: Args) -> Outcome {
    if !(args.temperature > 0.0 && args.temperature.is_finite()) {
        return Err(Failure::Message(format!(
            "--temperature must be a positive number, got {}",
            args.temperature
        )));
    }
    if args.top_k == Some(0) {
        return Err(Failure::Message("--top-k must be at least 1".into()));
    }
    if args.length > MAX_LENGTH {
        return Err(Failure::Message(format!(
            "--length must be at most {MAX_LENGTH}, got {}",
            args.length
        )));
    }
    let (session, store) = args.common.open()?;
    let weights = &args.common.weights;
    let vocabulary = session.vocabulary(weights)?.ok_or_else(|| {
        Failure::Message(format!(
            "`{}` has no vocabulary: generation needs weights saved by training on `text(...)`",
            weights.display()
        ))
    })?;
    let prompt = vocabulary
        .encode(&args.prompt)
        .map_err(|e| Failure::Message(format!("the prompt: {e}")))?;
    if prompt.is_empty() {
        return Err(Failure::Message(
            "the prompt is empty: give at least one token to start from".into(),
        ));
    }
    let started = Instant::now();
    let token = session
        .info
        .feeds
        .iter()
        .find(|f| !f.target)
        .ok_or_else(|| Failure::Message("the model has no input".into()))?;
    let (token, window) = (token.name.clone(), token.row_len);
    let mut generator = match session.programs.generate_step() {
        Ok((program, carries)) => Generator::step(program, carries, token)?,
        Err(one_step) => {
            let mut programs = session.programs;
            let program = programs
                .predict(1)
                .map_err(|_| Failure::Message(one_step.clone()))?;
            Generator::window(program, token, window)?
        }
    };
    let mut store = store;
    let vocab = vocabulary.tokens.len();
    let classes = generator.classes();
    if vocab > classes {
        return Err(Failure::Message(format!(
            "`{}` has a vocabulary of {vocab} tokens, but the model predicts {classes} classes; generate with the model it was trained with",
            weights.display()
        )));
    }
    generator.check_causal(&mut store, &prompt, vocab)?;
    let mut step = |t: usize| -> Result<Vec<f64>, Failure> {
        let logits = generator.next(&mut store, t)?;
        Ok(logits[..vocab].to_vec())
    };
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    let mut logits = Vec::new();
    for &t in &prompt {
        logits = step(t)?;
    }
    let mut rng = Rng::seeded(args.seed);
    let mut generated = Vec::with_capacity(args.length);
    for _ in 0..args.length {
        let next = sample(&logits, args.temperature, args.top_k, &mut rng);
        generated.push(next);
        logits = step(next)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let text: Vec<&str> = generated.iter().map(|&i| vocabulary.decode(i)).collect();
    let text = text.join(vocabulary.separator());
    if args.common.json {
        print_json(&json!({
            "prompt": args.prompt,
            "text": text,
            "tokens": generated.len(),
            "compile_ms": compile_ms,
            "seconds": seconds,
        }));
    } else {
        super::write_stdout(&format!(
            "{}{}{text}",
            args.prompt,
            if generated.is_empty() {
                ""
            } else {
                vocabulary.separator()
            }
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// What computes the next token's logits: the one-step program, which carries every recurrent
/// state in buffers of its own, or, for a model without one (attention over its window), the
/// prediction program over the last `window` tokens, as nanoGPT crops its context: the tokens
/// fill the window from the left, the rest zeros, and the logits are read at the last token.
/// The zeros after it change nothing in a causal model, which [`Generator::check_causal`]
/// verifies.
enum Generator {
    Step {
        exe: Executable,
        inputs: Store,
        token: String,
    },
    Window {
        exe: Executable,
        inputs: Store,
        token: String,
        window: usize,
        history: Vec<usize>,
    },
}

impl Generator {
    fn step(
        program: nabla_runtime::Program,
        carries: Vec<(String, usize)>,
        token: String,
    ) -> Result<Generator, Failure> {
        let exe = Executable::new(program).map_err(|e| Failure::Message(e.to_string()))?;
        let mut inputs = Store::default();
        inputs.insert(token.clone(), Buffer::zeros(1, Elem::F32));
        for (name, len) in carries {
            inputs.insert(name, Buffer::zeros(len, Elem::F32));
        }
        Ok(Generator::Step { exe, inputs, token })
    }

    fn window(
        program: nabla_runtime::Program,
        token: String,
        window: usize,
    ) -> Result<Generator, Failure> {
        let exe = Executable::new(program).map_err(|e| Failure::Message(e.to_string()))?;
        let mut inputs = Store::default();
        let tokens =
            Buffer::try_zeros(window, Elem::F32).map_err(|e| Failure::Message(e.to_string()))?;
        inputs.insert(token.clone(), tokens);
        Ok(Generator::Window {
            exe,
            inputs,
            token,
            window,
            history: Vec::new(),
        })
    }

    /// How many classes each prediction has.
    fn classes(&self) -> usize {
        match self {
            Generator::Step { exe, .. } => exe.output("prediction").map_or(0, |p| p.len()),
            Generator::Window { exe, window, .. } => {
                exe.output("prediction").map_or(0, |p| p.len() / window)
            }
        }
    }

    /// Runs the window program on `tokens` (at most a window) and returns the logits at
    /// position `at`.
    fn run_window(
        exe: &mut Executable,
        inputs: &mut Store,
        token: &str,
        (tokens, at): (&[usize], usize),
        store: &mut Store,
    ) -> Result<Vec<f64>, Failure> {
        let fed = inputs.get_mut(token).expect("the token buffer").f32s_mut();
        let window = fed.len();
        fed.fill(0.0);
        for (slot, &t) in fed.iter_mut().zip(tokens) {
            *slot = t as f32;
        }
        exe.run(&mut [inputs, store])
            .map_err(|e| Failure::Message(e.to_string()))?;
        let logits = exe.output("prediction").expect("a prediction output");
        let classes = logits.len() / window;
        Ok((at * classes..(at + 1) * classes)
            .map(|i| logits.get(i))
            .collect())
    }

    /// The logits of the token after `t`, fed after every token before it.
    fn next(&mut self, store: &mut Store, t: usize) -> Result<Vec<f64>, Failure> {
        match self {
            Generator::Step { exe, inputs, token } => {
                inputs
                    .get_mut(token.as_str())
                    .expect("the token buffer")
                    .f32s_mut()[0] = t as f32;
                exe.run(&mut [inputs, store])
                    .map_err(|e| Failure::Message(e.to_string()))?;
                let logits = exe.output("prediction").expect("a prediction output");
                Ok((0..logits.len()).map(|i| logits.get(i)).collect())
            }
            Generator::Window {
                exe,
                inputs,
                token,
                window,
                history,
            } => {
                history.push(t);
                let context = &history[history.len().saturating_sub(*window)..];
                Generator::run_window(exe, inputs, token, (context, context.len() - 1), store)
            }
        }
    }

    /// For the window program: the logits at the prompt's last position must not depend on
    /// the positions after it, or right-filling the window would change them. Checked once,
    /// with the positions after it filled with two different tokens.
    fn check_causal(
        &mut self,
        store: &mut Store,
        prompt: &[usize],
        vocab: usize,
    ) -> Result<(), Failure> {
        let Generator::Window {
            exe,
            inputs,
            token,
            window,
            ..
        } = self
        else {
            return Ok(());
        };
        let context = &prompt[prompt.len().saturating_sub(*window)..];
        if context.len() == *window {
            return Ok(());
        }
        let at = context.len() - 1;
        let mut filled = context.to_vec();
        filled.resize(*window, vocab - 1);
        let zeros = Generator::run_window(exe, inputs, token, (context, at), store)?;
        let other = Generator::run_window(exe, inputs, token, (&filled, at), store)?;
        if zeros != other {
            return Err(Failure::Message(
                "the model cannot generate: its prediction at a position depends on the tokens after it (attention without `causal = true`?), and it has no one-step program".into(),
            ));
        }
        Ok(())
    }
}

/// A token drawn from `softmax(logits / temperature)`, restricted to the `top_k` largest
/// (ties broken by the lower index).
fn sample(logits: &[f64], temperature: f64, top_k: Option<usize>, rng: &mut Rng) -> usize {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    order.truncate(top_k.unwrap_or(order.len()).max(1));
    let top = logits[order[0]];
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] - top) / temperature).exp())
        .collect();
    let mut left = rng.uniform(0.0, weights.iter().sum());
    for (&i, &w) in order.iter().zip(&weights) {
        if left < w {
            return i;
        }
        left -= w;
    }
    order[order.len() - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_keeps_to_the_top_k_and_sharpens_with_temperature() {
        let logits = [0.0, 2.0, 1.0, -1.0];
        let mut rng = Rng::seeded(1);
        for _ in 0..200 {
            assert!([1, 2].contains(&sample(&logits, 1.0, Some(2), &mut rng)));
        }
        let cold = (0..200)
            .filter(|_| sample(&logits, 0.05, None, &mut rng) == 1)
            .count();
        assert_eq!(cold, 200, "a low temperature picks the most likely token");
        assert_eq!(sample(&logits, 1.0, Some(1), &mut rng), 1);
    }
}
