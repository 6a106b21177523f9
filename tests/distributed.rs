//! Data-parallel training, ranks as threads of this process (`Threads`): the same loop, split
//! steps and collectives as under `mpirun`, checked without MPI in the default test run.
//! (`tests/mpi.rs` runs the real thing when built with `--features mpi`.)

use nabla_compiler::programs::ModelPrograms;
use nabla_runtime::Elem;
use nabla_runtime::collective::{Alone, Collective, Threads};
use nabla_runtime::train::{
    self, Data, Finish, Hooks, NonFinite, Report, Settings, State, Store, TrainError,
};

/// A classifier with a hidden layer, dropout-free, trained by `optimizer`.
fn classifier(optimizer: &str, extra: &str) -> String {
    format!(
        "model m {{\n  input x[B, 12]\n  target y[B] : class\n  h = tanh(dense(x, 16))\n  {extra}logits = dense(h, 5)\n  loss = cross_entropy(logits, y)\n}}\ntrain t {{\n  data = inline(x = [[0,0,0,0,0,0,0,0,0,0,0,0]], y = [0])\n  optimizer = {optimizer}\n}}\n"
    )
}

/// What a run left: its parameters (as f64), its epoch reports and how it ended.
struct Ran {
    params: Vec<(String, Vec<f64>)>,
    reports: Vec<Report>,
    end: Result<Finish, TrainError>,
    step: usize,
}

/// Trains `source` on `rows` synthetic examples (and 37 held out) on `ranks`, `batch` per rank.
fn run(
    source: &str,
    ranks: &dyn Collective,
    settings: &Settings,
    rows: usize,
    stop_at: Option<(usize, usize)>,
) -> Ran {
    let compiled = nabla_dsl::compile(source).expect("the model compiles");
    let optimizer = compiled.trains[0].optimizer.clone();
    let mut programs =
        ModelPrograms::new(compiled.model, optimizer, settings.elem).with_eval(compiled.eval_model);
    let info = programs.info().expect("info");
    let mut store = train::init_store(&info, settings.seed, settings.elem).expect("memory");
    let data = train::synthetic(&info, rows, 11);
    let validation = train::synthetic(&info, 37, 12);
    let mut reports = Vec::new();
    let mut state = State::default();
    let steps = std::cell::Cell::new(0);
    let stop = || {
        steps.set(steps.get() + 1);
        stop_at.is_some_and(|(rank, step)| rank == ranks.rank() && steps.get() > step)
    };
    let end = train::train(
        &info,
        settings,
        &mut programs,
        &mut store,
        Data {
            train: &data,
            validation: Some(&validation),
            test: None,
            ranks,
        },
        &mut state,
        Hooks {
            on_report: &mut |r| reports.push(r.clone()),
            on_batch: &mut |_| {},
            on_epoch: &mut |_, _, _| Ok(()),
            stop: &stop,
        },
    );
    Ran {
        params: info
            .params
            .iter()
            .map(|p| (p.name.clone(), store[&p.name].to_f64()))
            .collect(),
        reports,
        end,
        step: state.position.step,
    }
}

/// The largest difference between two runs' parameters, relative to each tensor's largest
/// magnitude.
fn difference(a: &Ran, b: &Ran) -> f64 {
    a.params
        .iter()
        .zip(&b.params)
        .map(|((_, x), (_, y))| {
            let scale = x.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
            x.iter()
                .zip(y)
                .map(|(u, v)| (u - v).abs() / scale)
                .fold(0.0, f64::max)
        })
        .fold(0.0, f64::max)
}

fn settings(batch: usize, elem: Elem) -> Settings {
    Settings {
        epochs: 4,
        seed: 5,
        elem,
        ..Settings::new(batch, 0.05)
    }
}

/// The tolerance for f32: each step's gradient is the same mean summed in another order
/// (two halves, then their halves weighed by 1/2), a few ulps apart (~1e-7 relative), and
/// 100 steps of training let such differences grow by one to three orders of magnitude, as
/// any change of summation order does (PyTorch's DDP against one process shows the same).
const F32_TOLERANCE: f64 = 1e-4;

#[test]
fn two_ranks_train_as_one_process_at_twice_the_batch() {
    // 203 examples: 12 full global batches of 16 and a last one of 11, split 5 and 6, so the
    // shares weigh unequal shards; 4 epochs: 52 steps, every epoch reshuffled.
    for optimizer in ["sgd(0.05, momentum = 0.9)", "adam(0.01)"] {
        let source = classifier(optimizer, "");
        for (elem, tolerance) in [(Elem::F64, 1e-10), (Elem::F32, F32_TOLERANCE)] {
            let one = run(&source, &Alone, &settings(16, elem), 203, None);
            let two = Threads::run(2, |ranks| {
                run(&source, ranks, &settings(8, elem), 203, None)
            });
            assert_eq!(one.step, 52);
            for rank in &two {
                assert_eq!(rank.step, one.step);
                let d = difference(&one, rank);
                assert!(d < tolerance, "{optimizer} {elem:?}: {d:e} apart");
                for (a, b) in one.reports.iter().zip(&rank.reports) {
                    let (la, lb) = (a.val_loss.unwrap_or(0.0), b.val_loss.unwrap_or(0.0));
                    assert!((la - lb).abs() < tolerance * 10.0, "validation {la} {lb}");
                    assert!((a.loss - b.loss).abs() < tolerance * 10.0, "{a:?} {b:?}");
                    assert_eq!(a.val_accuracy, b.val_accuracy);
                }
            }
            assert_eq!(
                two[0].params, two[1].params,
                "every rank holds the same parameters"
            );
        }
    }
}

#[test]
fn three_ranks_with_batch_norm_and_dropout_agree_and_repeat_bit_for_bit() {
    let source = classifier("adamw(0.01)", "h2 = dropout(batch_norm(h), 0.3)\n  ")
        .replace("dense(h, 5)", "dense(h2, 5)");
    let settings = settings(6, Elem::F32);
    let first = Threads::run(3, |ranks| run(&source, ranks, &settings, 100, None));
    let again = Threads::run(3, |ranks| run(&source, ranks, &settings, 100, None));
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(a.params, b.params, "a fixed seed repeats a distributed run");
        assert_eq!(a.params, first[0].params, "ranks agree");
        assert!(a.end.is_ok());
    }
}

#[test]
fn a_stop_on_one_rank_stops_every_rank_at_the_same_step() {
    let source = classifier("sgd(0.1)", "");
    let settings = settings(4, Elem::F32);
    let ranks = Threads::run(2, |ranks| run(&source, ranks, &settings, 64, Some((1, 5))));
    for rank in &ranks {
        assert_eq!(rank.end, Ok(Finish::Interrupted));
        assert_eq!(rank.step, 6, "rank 1 asked after its sixth step");
    }
}

#[test]
fn divergence_is_decided_by_every_rank_together() {
    let source = "model m {\n  input x[B, 12]\n  target y[B, 1]\n  loss = mse(dense(x, 1), y)\n}\ntrain t {\n  data = inline(x = [[0,0,0,0,0,0,0,0,0,0,0,0]], y = [[0]])\n  optimizer = sgd(10)\n}\n";
    let settings = Settings {
        lr: 10.0,
        ..settings(4, Elem::F32)
    };
    let ranks = Threads::run(2, |ranks| run(source, ranks, &settings, 64, None));
    for rank in &ranks {
        match &rank.end {
            Err(TrainError::Diverged(d)) => {
                assert!(matches!(
                    d.first,
                    NonFinite::Loss(_) | NonFinite::Buffer { .. }
                ));
                assert_eq!(
                    Some(d),
                    ranks[0].end.as_ref().err().and_then(|e| match e {
                        TrainError::Diverged(d) => Some(d),
                        TrainError::Failed(_) => None,
                    })
                );
            }
            other => panic!("expected a divergence, got {other:?}"),
        }
    }
}

#[test]
fn a_checkpoint_of_two_ranks_does_not_resume_on_one() {
    let source = classifier("sgd(0.1)", "");
    let compiled = nabla_dsl::compile(&source).expect("compiles");
    let optimizer = compiled.trains[0].optimizer.clone();
    let mut programs = ModelPrograms::new(compiled.model, optimizer, Elem::F32);
    let info = programs.info().expect("info");
    let mut store: Store = train::init_store(&info, 0, Elem::F32).expect("memory");
    let data = train::synthetic(&info, 16, 1);
    let mut state = State::default();
    state.position.step = 3;
    state.position.ranks = 2;
    let end = train::train(
        &info,
        &Settings::new(4, 0.1),
        &mut programs,
        &mut store,
        Data {
            train: &data,
            validation: None,
            test: None,
            ranks: &Alone,
        },
        &mut state,
        Hooks {
            on_report: &mut |_| {},
            on_batch: &mut |_| {},
            on_epoch: &mut |_, _, _| Ok(()),
            stop: &|| false,
        },
    );
    let Err(TrainError::Failed(message)) = end else {
        panic!("resumed on another number of ranks: {end:?}")
    };
    assert!(
        message.contains("on 2 rank(s) and this run has 1"),
        "{message}"
    );
}

/// Without the `mpi` feature, `--distributed` says how to get it instead of training alone.
#[cfg(not(feature = "mpi"))]
#[test]
fn distributed_without_mpi_says_how_to_build_it() {
    for command in ["train", "bench"] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_nabla"))
            .args([command, "examples/xor.nn", "--distributed"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("nabla runs");
        assert_eq!(output.status.code(), Some(1));
        let text = String::from_utf8_lossy(&output.stderr);
        assert!(
            text.contains("cargo build --release --features mpi"),
            "{text}"
        );
    }
}
