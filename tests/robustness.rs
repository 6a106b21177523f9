//! Arbitrary input never panics the front end: it compiles or it returns diagnostics, which
//! render. (The fuzz target in `fuzz/` explores the same property for longer.)

use proptest::prelude::*;

fn compile_renders(source: &str) {
    if let Err(diagnostics) = nabla_dsl::compile(source) {
        assert!(!diagnostics.is_empty());
        let text = nabla_dsl::diagnostic::render(&diagnostics, "fuzz.nn", source);
        assert!(text.contains("fuzz.nn:"), "{text}");
    }
    let _ = nabla_dsl::formula(source);
}

/// Fragments of the language, so that random programs get past the lexer often.
const WORDS: &[&str] = &[
    "model",
    "m",
    "{",
    "}",
    "input",
    "target",
    "param",
    "fn",
    "train",
    "x",
    "y",
    "w",
    "B",
    "loss",
    "=",
    "[",
    "]",
    "(",
    ")",
    ",",
    ":",
    "class",
    "@",
    "+",
    "-",
    "*",
    "/",
    "^",
    "..",
    "\n",
    "1",
    "3",
    "0.5",
    "1e30",
    "-1",
    "relu",
    "dense",
    "sum",
    "mean",
    "softmax",
    "cross_entropy",
    "mse",
    "axis",
    "reshape",
    "transpose",
    "\"f\"",
    "zeros",
    "he_uniform",
    "normal",
    "sgd",
    "optimizer",
    "data",
    "inline",
    "max",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(source in "\\PC{0,200}") {
        compile_renders(&source);
    }

    #[test]
    fn token_soup_never_panics(words in prop::collection::vec(prop::sample::select(WORDS), 0..80)) {
        compile_renders(&words.join(" "));
    }
}

#[test]
fn a_valid_model_survives_every_truncation() {
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/filetests/check/functions.nn"
    ))
    .expect("file");
    for end in (0..source.len()).filter(|&i| source.is_char_boundary(i)) {
        compile_renders(&source[..end]);
    }
}
