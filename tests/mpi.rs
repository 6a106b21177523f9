//! `nabla train --distributed` under a real `mpirun`, forced over TCP (`--mca btl tcp,self`) so
//! that the network path runs, not only shared memory. Built only with `--features mpi`
//! (`.ci/run` installs Open MPI and runs them); `tests/distributed.rs` checks the same loop
//! with ranks as threads in every build.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{difference, scratch, tensors};

/// The longest any job here may take before the test fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(180);

/// `examples/mnist_mlp.nn` with an Adam train block too, its data found from anywhere.
fn model(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(root.join("examples/mnist_mlp.nn")).expect("example");
    let data = root.join("data/mnist").display().to_string();
    let adam = "\ntrain adam {\n  data = mnist(\"DATA\")\n  optimizer = adam(0.001)\n}\n";
    let source = (source + adam)
        .replace("../data/mnist", &data)
        .replace("DATA", &data);
    let path = dir.join("mlp.nn");
    std::fs::write(&path, source).expect("model written");
    path
}

/// `mpirun` running `ranks` ranks of `nabla train ... --distributed`, each with `args`.
fn mpirun(ranks: usize, args: &[&str]) -> Command {
    let mut command = Command::new("mpirun");
    command
        .args([
            "-n",
            &ranks.to_string(),
            "--oversubscribe",
            "--mca",
            "btl",
            "tcp,self",
        ])
        .arg(env!("CARGO_BIN_EXE_nabla"))
        .args(["train", "--distributed"])
        .args(args)
        // Containers run tests as root, which Open MPI refuses unless told.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Waits for `child`, failing the test (and killing it) past [`DEADLINE`].
fn finish(mut child: Child) -> Output {
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("the job hung");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

fn run(mut command: Command) -> Output {
    finish(
        command
            .spawn()
            .expect("mpirun runs (install Open MPI: .ci/install-mpi)"),
    )
}

/// `nabla train` with `args` in one process.
fn one_process(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nabla"))
        .arg("train")
        .args(args)
        .output()
        .expect("nabla runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    o
}

/// SGD: every element within 1e-4 of its tensor's largest (see `tests/distributed.rs`'
/// `F32_TOLERANCE`: the same means summed in another order, over 100 steps; measured 3.5e-5,
/// and a wrong weighing of the shards is 2e-2 apart). Adam divides each gradient by the root
/// of its running square, so an element whose gradient is mostly cancellation (a pixel that is
/// rarely lit, a unit that is rarely active) moves by up to the learning rate a step in a
/// direction that round-off sets; its tensors are compared as wholes, to 5e-3 of their norm
/// (measured 4e-4 to 1.2e-3 on the MNIST MLP; its math is checked to 1e-10 in f64 by
/// `tests/distributed.rs`).
const TOLERANCE: [(&str, f64, f64); 2] = [("default", 1e-4, 1e-4), ("adam", 1.0, 5e-3)];

#[test]
fn two_ranks_train_the_mnist_mlp_as_one_process_at_twice_the_batch_and_repeat_bit_for_bit() {
    let dir = scratch("equivalence");
    let file = model(&dir);
    let file = file.to_str().expect("utf-8");
    for (config, largest, l2) in TOLERANCE {
        let path = |name: &str| dir.join(format!("{config}-{name}.safetensors"));
        let common = [
            "--config", config, "--steps", "100", "--seed", "3", "--save",
        ];
        let save = |name: &str| path(name).display().to_string();
        let (two, again, one) = (save("two"), save("again"), save("one"));
        let distributed = |to: &str| {
            let mut args = vec![file];
            args.extend(common);
            args.extend([to, "--batch", "32"]);
            ok(run(mpirun(2, &args)))
        };
        let output = distributed(&two);
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("data-parallel over 2 ranks: batch 32 per rank, 64 a step"));
        let mut args = vec![file];
        args.extend(common);
        args.extend([one.as_str(), "--batch", "64"]);
        ok(one_process(&args));
        let d = difference(&tensors(Path::new(&one)), &tensors(Path::new(&two)));
        assert!(d.0 < largest && d.1 < l2, "{config}: {d:?} apart");
        distributed(&again);
        assert_eq!(
            std::fs::read(&two).expect("saved"),
            std::fs::read(&again).expect("saved"),
            "{config}: the same seed repeats a distributed run bit for bit"
        );
    }
}

/// The process id of rank `rank` among `mpirun`'s children.
fn rank_pid(mpirun: u32, rank: usize) -> Option<u32> {
    let wanted = format!("OMPI_COMM_WORLD_RANK={rank}");
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let parent: u32 = stat
            .rsplit(')')
            .next()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        let has = environ.split(|&b| b == 0).any(|v| v == wanted.as_bytes());
        (parent == mpirun && has).then_some(pid)
    })
}

/// Starts a 2-rank run of 6 epochs checkpointing into `dir`, and waits for its first
/// checkpoint.
fn start_checkpointing(file: &str, dir: &Path) -> Child {
    let checkpoints = dir.join("run");
    let args = [
        file,
        "--epochs",
        "6",
        "--seed",
        "4",
        "--checkpoint",
        checkpoints.to_str().expect("utf-8"),
    ];
    let child = mpirun(2, &args).spawn().expect("mpirun runs");
    let started = Instant::now();
    while !checkpoints.join("last.safetensors").exists() {
        assert!(started.elapsed() < DEADLINE, "no checkpoint came");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// Resumes the run [`start_checkpointing`] started in `dir` on 2 ranks, checks that it ends
/// where the uninterrupted run does, and returns its checkpoint directory.
fn resumes_as_uninterrupted(file: &str, dir: &Path) -> String {
    let run_dir = dir.join("run").display().to_string();
    let resumed = dir.join("resumed.safetensors");
    let resumed_path = resumed.display().to_string();
    ok(run(mpirun(
        2,
        &[file, "--resume", &run_dir, "--save", &resumed_path],
    )));
    let straight = dir.join("straight.safetensors");
    let to = straight.to_str().expect("utf-8");
    ok(run(mpirun(
        2,
        &[file, "--epochs", "6", "--seed", "4", "--save", to],
    )));
    assert_eq!(
        tensors(&resumed),
        tensors(&straight),
        "resuming from the last checkpoint ends where the uninterrupted run does"
    );
    run_dir
}

#[test]
fn a_killed_rank_ends_the_job_within_seconds_and_the_last_checkpoint_resumes_bit_for_bit() {
    let dir = scratch("killed");
    let file = model(&dir);
    let file = file.to_str().expect("utf-8");
    let child = start_checkpointing(file, &dir);
    let pid = rank_pid(child.id(), 1).expect("rank 1 runs");
    let killed = Instant::now();
    // SAFETY: `kill` has no memory-safety preconditions.
    assert_eq!(unsafe { libc_kill(pid as i32, 9) }, 0);
    let output = finish(child);
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "{:?}",
        killed.elapsed()
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("rank 1"),
        "the message names the rank: {}",
        stderr(&output)
    );
    resumes_as_uninterrupted(file, &dir);
}

#[test]
fn ctrl_c_on_mpirun_saves_the_run_and_it_resumes_bit_for_bit() {
    let dir = scratch("interrupted");
    let file = model(&dir);
    let file = file.to_str().expect("utf-8");
    let child = start_checkpointing(file, &dir);
    // SAFETY: `kill` has no memory-safety preconditions.
    assert_eq!(unsafe { libc_kill(child.id() as i32, 2) }, 0);
    let output = finish(child);
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(
        text.contains("saved the run to") && text.contains("mpirun -n 2 nabla train"),
        "{text}"
    );
    let run_dir = resumes_as_uninterrupted(file, &dir);
    let other = one_process(&[file, "--resume", &run_dir, "--epochs", "7"]);
    assert!(!other.status.success());
    let other = stderr(&other);
    assert!(other.contains("2 rank(s) and this run has 1"), "{other}");
}

#[test]
fn ranks_started_with_other_settings_stop_the_job_naming_the_rank() {
    let dir = scratch("disagree");
    let file = model(&dir);
    let file = file.to_str().expect("utf-8");
    let mut command = mpirun(1, &[file, "--steps", "5", "--seed", "1"]);
    command
        .arg(":")
        .args([
            "-n",
            "1",
            env!("CARGO_BIN_EXE_nabla"),
            "train",
            "--distributed",
        ])
        .args([file, "--steps", "5", "--seed", "2"]);
    let output = run(command);
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(
        text.contains("rank 1 does not agree with rank 0 on the training settings"),
        "{text}"
    );
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}
