//! The nabla compiler: from a tensor graph to its gradient, simplified.
//!
//! Pipeline: a [`ir::Graph`] built by the DSL (or by hand through the builder API) is
//! differentiated by [`autodiff`] and simplified by [`egraph`]; the [`ir::interp`]reter is the
//! oracle that every transformation is tested against, and [`gradcheck`] compares gradients
//! with finite differences.
#![deny(missing_docs)]

pub mod algebra;
pub mod autodiff;
pub mod batch;
pub mod codegen;
pub mod data_parallel;
pub mod egraph;
pub mod evaluator;
pub mod fusion;
pub mod gradcheck;
pub mod ir;
pub mod kernel;
pub mod lower;
pub mod memory;
pub mod model;
pub mod native;
pub mod onnx;
pub mod optim;
pub mod pipeline;
pub mod programs;
