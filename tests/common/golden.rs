//! Training steps checked against PyTorch: `tests/golden/NAME.json`, written by a script in
//! `benches/peers/`, holds a model's parameters before and after its train block's steps in
//! PyTorch, and the loss of each step. nabla trains `tests/golden/NAME.nn` from the same
//! parameters, and every loss and updated parameter must agree to 1e-5.

use std::collections::HashMap;

use nabla_runtime::checkpoint;

/// The golden file's tensors, `before` or `after` the steps, as checkpoint tensors.
fn golden_tensors(golden: &serde_json::Value, which: &str) -> Vec<checkpoint::Tensor> {
    let mut tensors: Vec<checkpoint::Tensor> = golden[which]
        .as_object()
        .expect("a map of tensors")
        .iter()
        .map(|(name, t)| {
            let shape = t["shape"].as_array().expect("a shape");
            let data = t["data"].as_array().expect("values");
            (
                name.clone(),
                shape.iter().map(|d| d.as_u64().unwrap() as usize).collect(),
                data.iter().map(|x| x.as_f64().unwrap() as f32).collect(),
            )
        })
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

/// Trains `tests/golden/NAME.nn` (one step per epoch) from the parameters in `NAME.json` and
/// compares each step's loss (`losses`, or the one `loss`) and the updated parameters with
/// PyTorch's. Every tensor must move well past the tolerance, so a wrong gradient cannot hide.
pub fn step_matches_pytorch(name: &str) {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("tests/golden/{name}.json")).unwrap(),
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("nabla-golden-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (initial, trained) = (
        dir.join("initial.safetensors"),
        dir.join("trained.safetensors"),
    );
    let before = golden_tensors(&golden, "before");
    checkpoint::save(&initial, &before, HashMap::new()).unwrap();
    let out = super::nabla(&[
        "train",
        &format!("tests/golden/{name}.nn"),
        "--weights",
        initial.to_str().unwrap(),
        "--save",
        trained.to_str().unwrap(),
        "--json",
    ]);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(out.status.success(), "{name}: {}", text(&out.stderr));
    let got = checkpoint::load(&trained, "checkpoint", 1 << 20)
        .unwrap()
        .tensors;
    let expected = golden_tensors(&golden, "after");
    assert_eq!(
        got.iter().map(|t| &t.0).collect::<Vec<_>>(),
        expected.iter().map(|t| &t.0).collect::<Vec<_>>()
    );
    for ((tensor, shape, got), ((_, want_shape, want), (_, _, start))) in
        got.iter().zip(expected.iter().zip(&before))
    {
        assert_eq!(shape, want_shape, "{name}: {tensor}");
        let mut moved = 0.0f32;
        for (i, ((g, w), s)) in got.iter().zip(want).zip(start).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5,
                "{name}: {tensor}[{i}]: nabla {g}, PyTorch {w} (from {s})"
            );
            moved = moved.max((w - s).abs());
        }
        assert!(moved > 1e-3, "{name}: {tensor} moved at most {moved}");
    }
    // The report of step 0, then one per epoch: the loss of each epoch's one step.
    let reported: Vec<f64> = text(&out.stdout)
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v.get("epoch")?.as_u64()? > 0).then(|| v.get("loss")?.as_f64())?
        })
        .collect();
    let losses: Vec<f64> = match golden.get("losses") {
        Some(l) => l
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect(),
        None => vec![golden["loss"].as_f64().unwrap()],
    };
    assert_eq!(reported.len(), losses.len(), "{name}: {reported:?}");
    for (step, (l, want)) in reported.iter().zip(&losses).enumerate() {
        assert!(
            (l - want).abs() < 1e-5,
            "{name}: step {step}: loss {l} vs PyTorch {want}"
        );
    }
}
