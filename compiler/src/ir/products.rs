//! The builders of matrix products: PyTorch's `matmul` semantics (a product over the last axis
//! of a left operand of any rank, and batches of products whose leading axes broadcast) in
//! terms of the two product primitives, `MatMul` (rank 2) and `BatchMatMul` (rank 3), with the
//! reshapes and explicit broadcasts around them.

use super::graph::{Graph, NodeId};
use super::op::{Op, Scalar};
use super::shape::{Shape, ShapeError};

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
        let matrix = |s: &Shape| s.dims()[s.rank() - 2..].to_vec();
        let (matrix_a, matrix_b) = (matrix(&sa), matrix(&sb));
        if matrix_a[1] != matrix_b[0] {
            return Err(ShapeError(format!(
                "matmul {sa} @ {sb}: inner dimensions {} and {} differ",
                matrix_a[1], matrix_b[0]
            )));
        }
        let context = || format!("matmul {sa} @ {sb}");
        let (batch, [a3, b3]) = self.as_batch([a, b], &context)?;
        let product = self.node(Op::BatchMatMul, &[a3, b3])?;
        let out = Shape([batch.dims(), &[matrix_a[0].clone(), matrix_b[1].clone()]].concat());
        self.reshape(product, &out)
    }

    /// Attention over `q [..., Tq, D]`, `k [..., Tk, D]`, `v [..., Tk, Dv]`, their leading axes
    /// broadcast as `matmul`'s: `softmax(scale q k^T, masked when causal) v` by
    /// [`Op::Attention`], which never stores the scores, `[..., Tq, Dv]`.
    pub fn attention(
        &mut self,
        [q, k, v]: [NodeId; 3],
        causal: bool,
        scale: f64,
    ) -> Result<NodeId, ShapeError> {
        let shapes = [q, k, v].map(|x| self.shape(x).clone());
        let context = || {
            format!(
                "attention of {}, {} and {}",
                shapes[0], shapes[1], shapes[2]
            )
        };
        let last =
            |s: &Shape, from_end: usize| s.dims().get(s.rank().wrapping_sub(from_end)).cloned();
        if shapes.iter().any(|s| s.rank() < 2)
            || last(&shapes[0], 1) != last(&shapes[1], 1)
            || last(&shapes[1], 2) != last(&shapes[2], 2)
        {
            return Err(ShapeError(format!(
                "{}: needs queries [..., Tq, D], keys [..., Tk, D] and values [..., Tk, Dv]",
                context()
            )));
        }
        let (batch, qkv) = self.as_batch([q, k, v], &context)?;
        let out = self.node(
            Op::Attention {
                causal,
                scale: Scalar::new(scale),
                heads: 0,
            },
            &qkv,
        )?;
        let matrix = [
            last(&shapes[0], 2).expect("rank 2 or more"),
            last(&shapes[2], 1).expect("rank 2 or more"),
        ];
        self.reshape(out, &Shape([batch.dims(), &matrix].concat()))
    }

    /// Self-attention of `heads` heads over one projection `qkv [B, T, 3C]` (queries, keys and
    /// values side by side, each `heads` heads of `C / heads` features) -> `[B, T, C]`, the
    /// heads side by side: one [`Op::Attention`] that reads them in place, so splitting and
    /// merging the heads copies nothing.
    pub fn self_attention(
        &mut self,
        qkv: NodeId,
        heads: usize,
        causal: bool,
        scale: f64,
    ) -> Result<NodeId, ShapeError> {
        let op = Op::Attention {
            causal,
            scale: Scalar::new(scale),
            heads,
        };
        self.node(op, &[qkv])
    }

    /// The operands, each of rank 2 or more, with their leading axes broadcast to one batch
    /// (NumPy rules) and joined into one axis: `[products, rows, columns]` each (all batch axes
    /// but the first must be known), and the batch. `context` names the operation in errors.
    fn as_batch<const N: usize>(
        &mut self,
        xs: [NodeId; N],
        context: &dyn Fn() -> String,
    ) -> Result<(Shape, [NodeId; N]), ShapeError> {
        let shapes = xs.map(|x| self.shape(x).clone());
        let lead = |s: &Shape| Shape(s.dims()[..s.rank() - 2].to_vec());
        let mut batch = lead(&shapes[0]);
        for s in &shapes[1..] {
            batch = Shape::broadcast(&batch, &lead(s)).map_err(|_| {
                ShapeError(format!(
                    "{}: the batch axes {batch} and {} do not broadcast",
                    context(),
                    lead(s)
                ))
            })?;
        }
        let rest = Shape(batch.dims()[1..].to_vec()).numel().ok_or_else(|| {
            ShapeError(format!(
                "{}: the batch axes after the first must be known",
                context()
            ))
        })?;
        let products = batch.dims()[0].times(rest);
        let mut out = xs;
        for (x, s) in out.iter_mut().zip(&shapes) {
            let matrix = &s.dims()[s.rank() - 2..];
            let full = Shape([batch.dims(), matrix].concat());
            let wide = self.broadcast(*x, &full)?;
            *x = self.reshape(wide, &Shape([&[products.clone()][..], matrix].concat()))?;
        }
        Ok((batch, out))
    }
}
