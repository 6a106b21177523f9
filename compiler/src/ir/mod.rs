//! The intermediate representation: shapes, primitive ops, the graph, its text/dot/json forms,
//! the verifier and the reference interpreter.

pub mod attention;
pub mod formula;
mod graph;
pub mod interp;
mod op;
mod products;
mod shape;
pub mod text;
pub mod verify;

pub use graph::{DType, Graph, Node, NodeId};
pub use interp::{EvalError, Tensor};
pub use op::{BinaryOp, Fill, Op, ReduceOp, Scalar, UnaryOp, Window};
pub use shape::{Dim, MAX_ELEMENTS, Shape, ShapeError, around, broadcast_strides, strides};
