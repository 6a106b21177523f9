//! The ops nabla computes as one (GELU, attention, the windows of images) written as the
//! standard operators they stand for: GELU as its `erf`, products and sums; attention as its
//! products, causal mask and softmax, with heads cut out of a packed projection; windows as a
//! grouped convolution whose filters each pick one window element.

use super::proto::data_type;
use super::{ExportError, Writer, int, ints, window_attributes};
use crate::ir::NodeId;

impl Writer<'_> {
    /// `gelu(x)` as the operators of opset 17 (which has no `Gelu`), in the order nabla
    /// computes it: `(x / 2) (1 + erf(x / sqrt 2))`.
    pub(super) fn gelu(&mut self, x: &str) -> String {
        let scale = self.floats(&[], &[std::f32::consts::FRAC_1_SQRT_2]);
        let scaled = self.op("Mul", &[x, &scale], Vec::new());
        let erf = self.op("Erf", &[&scaled], Vec::new());
        let one = self.floats(&[], &[1.0]);
        let shifted = self.op("Add", &[&erf, &one], Vec::new());
        let half = self.floats(&[], &[0.5]);
        let halved = self.op("Mul", &[x, &half], Vec::new());
        self.op("Mul", &[&halved, &shifted], Vec::new())
    }

    /// The windows of images as rows (`[N, C, H, W]` -> `[N, OH, OW, C, KH, KW]`, what average
    /// pooling sums) by a grouped convolution whose filters pick one window element each
    /// (exact for finite pixels: each output is one pixel times 1 plus the others times 0).
    pub(super) fn windows(
        &mut self,
        id: NodeId,
        x: &str,
        window: &nabla_kernels::Window,
    ) -> Result<String, ExportError> {
        let channels = self.graph.shape(self.graph.operands(id)[0]).0[1]
            .known()
            .ok_or_else(|| self.unsupported("windows over a symbolic channel count", id))?;
        let [kh, kw] = window.kernel;
        let [oh, ow] = window
            .output()
            .map_err(|e| self.unsupported(&format!("windows ({e})"), id))?;
        let taps = kh * kw;
        let mut pick = vec![0.0f32; channels * taps * taps];
        for c in 0..channels {
            for t in 0..taps {
                pick[(c * taps + t) * taps + t] = 1.0;
            }
        }
        let filters = self.floats(&[channels * taps, 1, kh, kw], &pick);
        let mut attributes = window_attributes(window);
        attributes.push(int("group", channels as i64));
        let picked = self.op("Conv", &[x, &filters], attributes);
        let split = self.int64s(&[
            0,
            channels as i64,
            kh as i64,
            kw as i64,
            oh as i64,
            ow as i64,
        ]);
        let rows = self.op("Reshape", &[&picked, &split], Vec::new());
        Ok(self.op(
            "Transpose",
            &[&rows],
            vec![ints("perm", [0, 4, 5, 1, 2, 3])],
        ))
    }

    /// Attention as the ops it stands for: scores `scale q k^T`, the causal mask, softmax over
    /// the keys, the product with the values; with `heads`, the packed projection cut into
    /// heads first and the heads joined after.
    pub(super) fn attention(
        &mut self,
        id: NodeId,
        a: &[&str],
        causal: bool,
        scale: f32,
        heads: usize,
    ) -> Result<String, ExportError> {
        let g = self.graph;
        let operands = g.operands(id);
        let known = |n: NodeId, axis: usize| g.shape(n).0[axis].known();
        // With heads, the projection `[B, T, 3C]` holds `heads` heads of `C / heads` columns.
        let width = known(operands[0], 2)
            .ok_or_else(|| self.unsupported("attention over a symbolic width", id))?;
        let c = width / 3;
        let (q, k, v, tq, tk) = if let Some(head) = c.checked_div(heads) {
            let t = known(operands[0], 1);
            let split = self.int64s(&[0, 0, heads as i64, head as i64]);
            let part = |w: &mut Self, i: usize, perm: [usize; 4]| {
                let starts = w.int64s(&[(i * c) as i64]);
                let ends = w.int64s(&[((i + 1) * c) as i64]);
                let axes = w.int64s(&[2]);
                let cut = w.op("Slice", &[a[0], &starts, &ends, &axes], Vec::new());
                let heads = w.op("Reshape", &[&cut, &split], Vec::new());
                w.op("Transpose", &[&heads], vec![ints("perm", perm)])
            };
            let q = part(self, 0, [0, 2, 1, 3]);
            let kt = part(self, 1, [0, 2, 3, 1]);
            let v = part(self, 2, [0, 2, 1, 3]);
            (q, kt, v, t, t)
        } else {
            let tq = known(operands[0], 1);
            let tk = known(operands[1], 1);
            let kt = self.op("Transpose", &[a[1]], vec![ints("perm", [0, 2, 1])]);
            (a[0].to_string(), kt, a[2].to_string(), tq, tk)
        };
        let products = self.op("MatMul", &[&q, &k], Vec::new());
        let factor = self.floats(&[], &[scale]);
        let mut scores = self.op("Mul", &[&products, &factor], Vec::new());
        if causal {
            let (Some(tq), Some(tk)) = (tq, tk) else {
                return Err(self.unsupported("causal attention over a symbolic length", id));
            };
            if tq > tk {
                return Err(self.unsupported("causal attention with queries that see no key", id));
            }
            let seen: Vec<u8> = (0..tq)
                .flat_map(|i| (0..tk).map(move |j| u8::from(j <= i + tk - tq)))
                .collect();
            let mask = self.constant(&[tq, tk], data_type::BOOL, seen);
            let hidden = self.floats(&[], &[f32::NEG_INFINITY]);
            scores = self.op("Where", &[&mask, &scores, &hidden], Vec::new());
        }
        let weights = self.op("Softmax", &[&scores], vec![int("axis", -1)]);
        let out = self.op("MatMul", &[&weights, &v], Vec::new());
        if heads == 0 {
            return Ok(out);
        }
        let joined = self.op("Transpose", &[&out], vec![ints("perm", [0, 2, 1, 3])]);
        let width = g.shape(id).0[2]
            .known()
            .ok_or_else(|| self.unsupported("attention over a symbolic width", id))?;
        let to = self.int64s(&[0, 0, width as i64]);
        Ok(self.op("Reshape", &[&joined, &to], Vec::new()))
    }
}
