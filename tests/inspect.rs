//! `nabla inspect`: the page it writes stands alone (nothing fetched from anywhere), holds what
//! the compiler did (checked against `nabla graph`'s independent dump), and, opened in headless
//! Chromium as a user would, works: no console error on any tab of the example models' pages,
//! and a user who types `grad h1` and clicks the node is told which kernel computes h1's
//! gradient while line 5 (`h1 = ...`) is highlighted.
//!
//! The browser tests drive Debian's Chromium with playwright-core (`tests/browser/`), which
//! `.ci/install-browser` installs; they are ignored by default and CI runs them with `--ignored`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{nabla, scratch};
use serde_json::Value;

/// Writes the page for `args` (`-o` added) and returns its path and text.
fn inspect(dir: &Path, name: &str, args: &[&str]) -> (PathBuf, String) {
    let page = dir.join(name);
    let mut all: Vec<&str> = vec!["inspect"];
    all.extend(args);
    all.extend(["-o", page.to_str().expect("a UTF-8 path")]);
    let out = nabla(&all);
    assert!(
        out.status.success(),
        "nabla {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(&page).expect("the page was written");
    (page, html)
}

/// The JSON the page shows.
fn data(html: &str) -> Value {
    let (_, rest) = html
        .split_once("<script type=\"application/json\" id=\"data\">")
        .expect("the data element");
    let (json, _) = rest.split_once("</script>").expect("its end");
    serde_json::from_str(json).expect("the data is JSON")
}

/// The 1-based line of `source` that starts (after indentation) with `start`.
fn line_of(source: &str, start: &str) -> u64 {
    source
        .lines()
        .position(|l| l.trim_start().starts_with(start))
        .expect("the line is in the source") as u64
        + 1
}

fn stage<'a>(model: &'a Value, key: &str) -> &'a Value {
    model["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .find(|s| s["key"] == key)
        .expect("the stage")
}

fn labelled<'a>(stage: &'a Value, label: &str) -> &'a Value {
    stage["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["label"] == label)
        .unwrap_or_else(|| panic!("a node labelled `{label}`"))
}

#[test]
fn the_page_stands_alone() {
    let dir = scratch("inspect-alone");
    let (_, html) = inspect(&dir, "mlp.html", &["examples/mnist_mlp.nn"]);
    // The only address is the SVG namespace, which names and fetches nothing.
    let addresses: Vec<&str> = html
        .match_indices("://")
        .map(|(i, _)| &html[i.saturating_sub(8)..(i + 30).min(html.len())])
        .filter(|a| !a.contains("http://www.w3.org/2000/svg"))
        .collect();
    assert!(addresses.is_empty(), "addresses in the page: {addresses:?}");
    for external in ["<link", " src=", "@import"] {
        assert!(
            !html.contains(external),
            "the page refers outside itself: {external}"
        );
    }
    for (i, _) in html.match_indices("url(") {
        assert!(
            html[i + 4..].starts_with('#'),
            "only references within the page: {}",
            &html[i..i + 20]
        );
    }
    assert!(
        html.contains("default-src 'none'"),
        "a policy that forbids fetching"
    );
    assert!(
        html.contains("Copyright (c) 2012-2014 Chris Pettitt"),
        "dagre's licence travels with it"
    );
}

#[test]
fn the_page_says_which_kernel_computes_a_gradient_and_where_it_came_from() {
    let dir = scratch("inspect-mlp");
    let (_, html) = inspect(&dir, "mlp.html", &["examples/mnist_mlp.nn"]);
    let page = data(&html);
    let model = &page["model"];
    let source = model["source"].as_str().expect("the source");
    let h1_line = line_of(source, "h1 ");

    // The forward stage names h1 where it is written.
    let h1 = labelled(stage(model, "forward"), "h1");
    assert_eq!(h1["group"], "h1");
    assert_eq!(h1["line"], h1_line);

    // After simplification, `grad h1` is the gradient of h1, from h1's line, computed by one
    // kernel: the one `nabla graph --stage fused` lists with that node among its ops.
    let simplified = stage(model, "simplified");
    let grad = labelled(simplified, "grad h1");
    assert_eq!(grad["grad_of"], "h1");
    assert_eq!(grad["line"], h1_line);
    let kernels = grad["kernels"].as_array().expect("kernels");
    assert_eq!(kernels.len(), 1, "one kernel computes grad h1: {grad}");
    let k = kernels[0].as_u64().expect("a kernel index") as usize;

    let out = nabla(&[
        "graph",
        "examples/mnist_mlp.nn",
        "--stage",
        "fused",
        "--format",
        "json",
    ]);
    assert!(out.status.success());
    let fused: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let grad_id = grad["id"].clone();
    let listed = fused["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["id"] == grad_id)
        .expect("the same node in graph's dump");
    assert_eq!(listed["label"], "grad h1", "the same graph, node for node");
    let holders: Vec<usize> = fused["kernels"]
        .as_array()
        .expect("kernels")
        .iter()
        .enumerate()
        .filter(|(_, kernel)| {
            kernel["ops"]
                .as_array()
                .is_some_and(|ops| ops.contains(&grad_id))
        })
        .map(|(i, _)| i)
        .collect();
    assert_eq!(holders, vec![k], "graph's kernels holding grad h1");

    let kernel = &model["kernels"][k];
    assert_eq!(kernel["index"], k as u64);
    assert!(
        kernel["labels"]
            .as_array()
            .expect("labels")
            .contains(&Value::from("grad h1"))
    );
    assert!(
        kernel["lines"]
            .as_array()
            .expect("lines")
            .contains(&Value::from(h1_line))
    );
    assert!(
        kernel["clif"].as_str().expect("CLIF").contains("function"),
        "its Cranelift IR"
    );
    assert!(
        !kernel["asm"].as_str().expect("asm").is_empty(),
        "its machine code"
    );

    // The e-graph's rewrites are named on the nodes they made.
    let rewritten: Vec<&Value> = simplified["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["rewrites"].as_array().is_some_and(|r| !r.is_empty()))
        .collect();
    let fired: Vec<&str> = model["rules"]["fired"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["rule"].as_str())
        .collect();
    assert!(
        !rewritten.is_empty(),
        "some node was rewritten ({fired:?} fired)"
    );
    for node in rewritten {
        for rule in node["rewrites"].as_array().expect("rules") {
            assert!(fired.contains(&rule.as_str().expect("a name")), "{node}");
        }
    }
}

#[test]
fn a_training_log_shows_its_curves_and_best_epoch() {
    let dir = scratch("inspect-log");
    let log = dir.join("spiral.log");
    let out = nabla(&[
        "train",
        "examples/spiral.nn",
        "--log",
        log.to_str().expect("a UTF-8 path"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let best: u64 = said
        .split("since epoch ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .expect("the run stopped early and said since which epoch");
    let (_, html) = inspect(
        &dir,
        "log.html",
        &["--log", log.to_str().expect("a UTF-8 path")],
    );
    let page = data(&html);
    assert!(page["model"].is_null(), "a log alone shows no model");
    assert_eq!(page["log"]["best_epoch"], best);
    let keys: Vec<&str> = page["log"]["series"]
        .as_array()
        .expect("series")
        .iter()
        .filter_map(|s| s["key"].as_str())
        .collect();
    assert_eq!(keys, ["loss", "val_loss", "accuracy", "val_accuracy"]);
    assert!(!page["log"]["lr"].as_array().expect("rates").is_empty());
}

#[test]
fn bad_requests_are_refused_with_a_reason() {
    let dir = scratch("inspect-bad");
    let missing = nabla(&["inspect", "--output", dir.join("x.html").to_str().unwrap()]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("give a model file"));

    let not_a_log = dir.join("not.log");
    std::fs::write(&not_a_log, "epoch,loss\n1,0.5\n").unwrap();
    let out = nabla(&[
        "inspect",
        "--log",
        not_a_log.to_str().unwrap(),
        "-o",
        dir.join("y.html").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not.log:1") && err.contains("not a metrics line"),
        "{err}"
    );
    assert!(!dir.join("y.html").exists(), "nothing written");

    let into_nowhere = dir.join("no/such/dir/page.html");
    let out = nabla(&[
        "inspect",
        "examples/xor.nn",
        "-o",
        into_nowhere.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));

    let broken = dir.join("broken.nn");
    std::fs::write(&broken, "model m {\n  input x[B, 2]\n  loss = relu(\n}\n").unwrap();
    let out = nabla(&[
        "inspect",
        broken.to_str().unwrap(),
        "-o",
        dir.join("z.html").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("broken.nn:"),
        "a located error"
    );
}

/// What the browser driver saw.
fn drive(page: &Path, screenshot: &Path, label: Option<&str>) -> Value {
    let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/inspect.mjs");
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/browser/node_modules/playwright-core")
            .exists(),
        "playwright-core is not installed: run .ci/install-browser"
    );
    let mut command = Command::new("node");
    command.arg(&driver).arg(page).arg(screenshot);
    command.args(label);
    let out = command.output().expect("node runs");
    assert!(
        out.status.success(),
        "the browser driver failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the driver prints JSON")
}

/// No console error, no page error, no request, every tab opened.
fn clean(seen: &Value, tabs: &[&str]) -> Result<(), String> {
    for key in ["console_errors", "page_errors", "requests"] {
        if !seen[key].as_array().is_some_and(|a| a.is_empty()) {
            return Err(format!("{key}: {}", seen[key]));
        }
    }
    let opened: Vec<&str> = seen["tabs"]
        .as_array()
        .map_or(Vec::new(), |t| t.iter().filter_map(Value::as_str).collect());
    if opened != tabs {
        return Err(format!("tabs {opened:?}, expected {tabs:?}"));
    }
    Ok(())
}

const MODEL_TABS: [&str; 6] = [
    "forward",
    "gradients",
    "simplified",
    "fused",
    "kernels",
    "passes",
];

#[test]
#[ignore = "needs Chromium and playwright-core: .ci/install-browser"]
fn the_pages_of_the_examples_work_in_headless_chromium() {
    let dir = scratch("inspect-browser");
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR"));
    for example in ["mnist_cnn_bn", "char_rnn"] {
        let file = format!("examples/{example}.nn");
        let (page, html) = inspect(&dir, &format!("{example}.html"), &[file.as_str()]);
        let seen = drive(&page, &shots.join(format!("{example}.png")), None);
        clean(&seen, &MODEL_TABS).unwrap_or_else(|e| panic!("{example}: {e}"));
        eprintln!(
            "{example}: {} KiB, rendered in {} ms (page loaded in {} ms)",
            html.len() / 1024,
            seen["render_ms"],
            seen["load_ms"]
        );
    }

    // A user looks for h1's gradient, clicks it, and reads the kernel and the source line.
    let (page, html) = inspect(&dir, "mnist_mlp.html", &["examples/mnist_mlp.nn"]);
    let model = &data(&html)["model"];
    let grad = labelled(stage(model, "simplified"), "grad h1");
    let seen = drive(&page, &shots.join("mnist_mlp.png"), Some("grad h1"));
    clean(&seen, &MODEL_TABS).unwrap();
    assert_eq!(seen["selected_node"], grad["id"], "{seen}");
    assert_eq!(seen["kernel"], grad["kernels"][0], "{seen}");
    assert!(
        seen["kernel_text"]
            .as_str()
            .is_some_and(|t| t.contains("grad h1")),
        "{seen}"
    );
    let h1_line = line_of(model["source"].as_str().unwrap(), "h1 ");
    assert_eq!(seen["highlighted"], serde_json::json!([h1_line]), "{seen}");

    // A model with its training log.
    let log = dir.join("spiral.log");
    assert!(
        nabla(&[
            "train",
            "examples/spiral.nn",
            "--log",
            log.to_str().unwrap()
        ])
        .status
        .success()
    );
    let (page, _) = inspect(
        &dir,
        "spiral.html",
        &["examples/spiral.nn", "--log", log.to_str().unwrap()],
    );
    let seen = drive(&page, &shots.join("spiral.png"), None);
    let mut tabs = MODEL_TABS.to_vec();
    tabs.push("training");
    clean(&seen, &tabs).unwrap();
}

#[test]
#[ignore = "needs Chromium and playwright-core: .ci/install-browser"]
fn the_browser_test_catches_a_broken_page() {
    let dir = scratch("inspect-broken-page");
    let (page, html) = inspect(&dir, "xor.html", &["examples/xor.nn"]);
    let shot = dir.join("shot.png");
    clean(&drive(&page, &shot, None), &MODEL_TABS).expect("the page as written is clean");

    // Each fault, put into the page as written, is what the check reports.
    let faults = [
        (
            html.replacen("<script>", "<script>console.error('logged');", 1),
            "console_errors",
        ),
        (
            html.replace(
                "function renderKernels(view) {",
                "function renderKernels(view) { null.x;",
            ),
            "page_errors",
        ),
        (
            html.replacen(
                "<script>",
                "<script>fetch('https://example.com/x').catch(() => {});",
                1,
            ),
            "console_errors",
        ),
    ];
    for (broken, reported) in faults {
        std::fs::write(&page, broken).unwrap();
        let seen = drive(&page, &shot, None);
        assert!(
            clean(&seen, &MODEL_TABS).is_err_and(|e| e.starts_with(reported)),
            "{reported}: {seen}"
        );
    }
}
