//! The e-graph language: a graph [`Op`] with e-class children.
//!
//! Reusing [`Op`] (rather than a parallel enum) means every primitive is representable and an
//! extracted term converts back to graph nodes one to one. Rewrite patterns are written with the
//! op names of the elementwise primitives (`add`, `mul`, `neg`, ...) and numeric literals.

use std::fmt;

use egg::{FromOp, Id, Language};

use crate::ir::{BinaryOp, Op, Scalar, UnaryOp};

/// One e-node: an op applied to e-classes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorNode {
    /// The primitive, with all its attributes (shapes, axes, names).
    pub op: Op,
    /// Operand e-classes, in operand order.
    pub children: Vec<Id>,
}

impl Language for TensorNode {
    type Discriminant = Op;

    fn discriminant(&self) -> Op {
        self.op.clone()
    }

    fn matches(&self, other: &Self) -> bool {
        self.op == other.op && self.children.len() == other.children.len()
    }

    fn children(&self) -> &[Id] {
        &self.children
    }

    fn children_mut(&mut self) -> &mut [Id] {
        &mut self.children
    }
}

impl fmt::Display for TensorNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.op {
            Op::Const(c) => write!(f, "{c}"),
            op @ (Op::Unary(_) | Op::Binary(_) | Op::Select) => write!(f, "{}", op.name()),
            op => write!(f, "{op}"),
        }
    }
}

/// Why a rewrite pattern named an op the language does not know.
#[derive(Debug)]
pub struct UnknownOp(pub String);

impl FromOp for TensorNode {
    type Error = UnknownOp;

    fn from_op(name: &str, children: Vec<Id>) -> Result<Self, UnknownOp> {
        let op = if let Ok(value) = name.parse::<f64>() {
            Op::Const(Scalar::new(value))
        } else if name == "select" {
            Op::Select
        } else {
            ELEMENTWISE
                .iter()
                .find(|op| op.name() == name)
                .cloned()
                .ok_or_else(|| UnknownOp(name.to_string()))?
        };
        if op.arity() != children.len() {
            return Err(UnknownOp(format!(
                "{name} with {} operands",
                children.len()
            )));
        }
        Ok(TensorNode { op, children })
    }
}

/// The elementwise ops patterns may name.
const ELEMENTWISE: [Op; 30] = [
    Op::Unary(UnaryOp::Neg),
    Op::Unary(UnaryOp::Recip),
    Op::Unary(UnaryOp::Exp),
    Op::Unary(UnaryOp::Log),
    Op::Unary(UnaryOp::Sqrt),
    Op::Unary(UnaryOp::Abs),
    Op::Unary(UnaryOp::Sign),
    Op::Unary(UnaryOp::Tanh),
    Op::Unary(UnaryOp::Sigmoid),
    Op::Unary(UnaryOp::StopGradient),
    Op::Unary(UnaryOp::Sin),
    Op::Unary(UnaryOp::Cos),
    Op::Unary(UnaryOp::Tan),
    Op::Unary(UnaryOp::Sinh),
    Op::Unary(UnaryOp::Cosh),
    Op::Unary(UnaryOp::Atan),
    Op::Unary(UnaryOp::Erf),
    Op::Unary(UnaryOp::Gelu),
    Op::Unary(UnaryOp::GeluDerivative),
    Op::Binary(BinaryOp::Add),
    Op::Binary(BinaryOp::Sub),
    Op::Binary(BinaryOp::Mul),
    Op::Binary(BinaryOp::Div),
    Op::Binary(BinaryOp::Pow),
    Op::Binary(BinaryOp::Max),
    Op::Binary(BinaryOp::Min),
    Op::Binary(BinaryOp::Lt),
    Op::Binary(BinaryOp::Gt),
    Op::Binary(BinaryOp::Le),
    Op::Binary(BinaryOp::Eq),
];
