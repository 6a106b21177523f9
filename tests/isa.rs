//! `NABLA_ISA` runs nabla as on a lesser CPU: the MNIST MLP and CNN trained at every level this CPU
//! has (the `gemm` crate's AVX-512, AVX2 or scalar microkernels, generated code compiled for
//! `x86-64-v4`, `-v3` or baseline x86-64) ends within f32 round-off of the native run; every
//! vector level gives the native bits exactly (products sum `k` in the same blocks at every
//! level, and every multiply-add is fused), and the scalar level really is another path (its
//! bits differ). Every level with FMA compiles multiply-adds to
//! FMA instructions. A level the CPU lacks, or a name that is none, is an error.
#![cfg(target_arch = "x86_64")]

mod common;

use std::process::{Command, Output};

use common::{difference, scratch, tensors};

fn nabla(level: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(args)
        .env("NABLA_ISA", level)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the nabla binary runs")
}

#[test]
fn every_level_this_cpu_has_trains_the_mlp_as_the_native_level_does() {
    // SGD with momentum: every element within 1e-4 of its tensor's largest (tests/mpi.rs'
    // tolerance for the same sums in other orders over 100 steps).
    every_level_trains_as_native("examples/mnist_mlp.nn", (1e-4, 1e-4));
}

#[test]
fn every_level_this_cpu_has_trains_the_cnn_as_the_native_level_does() {
    // Adam divides by each gradient's running root mean square, so an element whose gradient
    // is mostly cancellation moves by up to the learning rate in a direction round-off sets:
    // tensors compared as wholes, to 5e-3 of their norm (as tests/mpi.rs does).
    every_level_trains_as_native("examples/mnist_cnn.nn", (1.0, 5e-3));
}

/// Trains `model` for 30 steps at the native level and at every level this CPU has, and
/// compares the parameters to `(elementwise, norm)` tolerances. A CPU whose best is AVX2
/// runs the same kernels at `avx2` as natively, so there the two must agree bit for bit: the
/// level's own call of the crate's kernels adds nothing of its own.
fn every_level_trains_as_native(model: &str, (elementwise, whole): (f64, f64)) {
    let dir = scratch(&format!("isa-{}", model.replace('/', "-")));
    let train = |level: &str| {
        let weights = dir.join(format!("{level}.safetensors"));
        let out = nabla(
            level,
            &[
                "train",
                model,
                "--steps",
                "30",
                "--seed",
                "7",
                "--quiet",
                "--save",
                weights.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "NABLA_ISA={level}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tensors(&weights)
    };
    let native = train("native");
    let mut levels = vec![];
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        levels.push("avx2");
    }
    if std::arch::is_x86_feature_detected!("avx512f") {
        levels.push("avx512");
    }
    levels.push("baseline");
    for level in levels {
        let run = train(level);
        let (largest, l2) = difference(&native, &run);
        assert!(
            largest < elementwise && l2 < whole,
            "{model}, NABLA_ISA={level}: {largest:e} elementwise, {l2:e} in norm from the native run"
        );
        if level != "baseline" {
            assert_eq!(largest, 0.0, "{model}: {level} differs from native");
        } else {
            assert!(
                largest > 0.0,
                "{model}: the scalar products gave the native bits"
            );
        }
    }
}

#[test]
fn a_level_the_cpu_lacks_or_no_level_is_an_error() {
    let mut cases = vec![("sse9", "not a level")];
    if !std::arch::is_x86_feature_detected!("avx512f") {
        cases.push(("avx512", "this CPU cannot run it"));
    }
    for (level, says) in cases {
        let out = nabla(level, &["bench", "examples/xor.nn", "--steps", "1"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{level}: {err}"
        );
    }
}

#[test]
fn every_vector_level_compiles_multiply_adds_to_fma_instructions() {
    // The register tiles of examples/xor.nn's small products multiply and add in one
    // instruction at every level with FMA; a level whose Cranelift flags lacked AVX called
    // `fmaf` for each lane instead, ten times slower, with the same bits.
    let levels = [
        ("avx2", std::arch::is_x86_feature_detected!("fma")),
        ("avx512", std::arch::is_x86_feature_detected!("avx512f")),
    ];
    for (level, _) in levels.iter().filter(|(_, has)| *has) {
        let out = nabla(level, &["graph", "examples/xor.nn", "--stage", "asm"]);
        let asm = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{level}");
        assert!(
            asm.contains("vfmadd"),
            "NABLA_ISA={level}: no FMA instruction"
        );
    }
}
