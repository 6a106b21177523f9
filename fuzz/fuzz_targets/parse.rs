//! The front end on arbitrary bytes: it must return a model or diagnostics, never panic, hang
//! or overflow the stack. Run with `cargo +nightly fuzz run parse` from the repository root.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err((source, diagnostics)) = nabla_dsl::compile_bytes(data) {
        let _ = nabla_dsl::diagnostic::render(&diagnostics, "fuzz.nn", &source);
    }
});
