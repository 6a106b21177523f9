//! The builders of matrix products: PyTorch's `matmul` semantics (a product over the last axis
//! of a left operand of any rank, and batches of products whose leading axes broadcast) in
//! terms of the two product primitives, `MatMul` (rank 2) and `BatchMatMul` (rank 3), with the
//! reshapes and explicit broadcasts around them.

use super::graph::{Graph, NodeId};
use super::op::Op;
use super::shape::{Dim, Shape, ShapeError};

impl Graph {
    /// Matrix product of two matrices.
    pub fn matmul(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, ShapeError> {
        self.node(Op::MatMul, &[a, b])
    }

    /// `a [..., K] @ b [K, N] -> [..., N]`: the product over `a`'s last axis whatever its rank
    /// (PyTorch's `nn.Linear`), as one matrix product of `a`'s rows. Axes between the first
    /// and the last must be known.
    pub fn matmul_last_axis(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, ShapeError> {
        let shape = self.shape(a).clone();
        let dims = shape.dims();
        if dims.len() <= 2 {
            return self.matmul(a, b);
        }
        let middle = Shape(dims[1..dims.len() - 1].to_vec())
            .numel()
            .ok_or_else(|| {
                ShapeError(format!(
                    "matmul {shape} @ {}: the axes between the first and the last must be known",
                    self.shape(b)
                ))
            })?;
        let rows = Shape(vec![dims[0].times(middle), dims[dims.len() - 1].clone()]);
        let flat = self.reshape(a, &rows)?;
        let product = self.matmul(flat, b)?;
        let mut out = dims[..dims.len() - 1].to_vec();
        out.push(self.shape(product).0[1].clone());
        self.reshape(product, &Shape(out))
    }

    /// PyTorch's `matmul` for operands of rank 2 or more: the last two axes multiply as
    /// matrices and the leading axes broadcast (NumPy rules) and index a batch of products.
    /// A right operand of rank 2 is shared by every row of the left one (one product of
    /// `a`'s rows, as [`Graph::matmul_last_axis`]); otherwise both are broadcast to the
    /// common batch, whose axes are joined into one for [`Op::BatchMatMul`] (all but the first
    /// must then be known).
    pub fn matmul_batched(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, ShapeError> {
        let (sa, sb) = (self.shape(a).clone(), self.shape(b).clone());
        if sa.rank() < 2 || sb.rank() < 2 {
            return Err(ShapeError(format!(
                "matmul {sa} @ {sb}: both operands must have rank 2 or more"
            )));
        }
        if sb.rank() == 2 {
            return self.matmul_last_axis(a, b);
        }
        let split = |s: &Shape| {
            let d = s.dims();
            (Shape(d[..d.len() - 2].to_vec()), d[d.len() - 2..].to_vec())
        };
        let ((batch_a, matrix_a), (batch_b, matrix_b)) = (split(&sa), split(&sb));
        if matrix_a[1] != matrix_b[0] {
            return Err(ShapeError(format!(
                "matmul {sa} @ {sb}: inner dimensions {} and {} differ",
                matrix_a[1], matrix_b[0]
            )));
        }
        let batch = Shape::broadcast(&batch_a, &batch_b).map_err(|_| {
            ShapeError(format!(
                "matmul {sa} @ {sb}: the batch axes {batch_a} and {batch_b} do not broadcast"
            ))
        })?;
        let rest = Shape(batch.dims()[1..].to_vec()).numel().ok_or_else(|| {
            ShapeError(format!(
                "matmul {sa} @ {sb}: the batch axes after the first must be known"
            ))
        })?;
        let products = batch.dims()[0].times(rest);
        let mut operand = |x: NodeId, matrix: &[Dim]| -> Result<NodeId, ShapeError> {
            let full = Shape([batch.dims(), matrix].concat());
            let x = self.broadcast(x, &full)?;
            self.reshape(x, &Shape([&[products.clone()][..], matrix].concat()))
        };
        let (a3, b3) = (operand(a, &matrix_a)?, operand(b, &matrix_b)?);
        let product = self.node(Op::BatchMatMul, &[a3, b3])?;
        let out = Shape([batch.dims(), &[matrix_a[0].clone(), matrix_b[1].clone()]].concat());
        self.reshape(product, &out)
    }
}
