//! Nothing: this package holds `tests/tract.rs` only (see Cargo.toml).
