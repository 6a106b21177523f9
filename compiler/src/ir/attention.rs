//! The reference definitions of [`Op::Attention`](super::Op::Attention) and its gradient, as
//! plain loops over one product of the batch at a time, for the interpreter: what the kernel
//! library's blocked version must compute. The backward recomputes the weights rather than
//! reading anything the forward stored. Query `i` of `Tq` sees keys `0 ..= i + Tk - Tq`
//! when causal, every key otherwise.

use num_traits::Float;

use super::interp::Tensor;
use super::op::Op;

/// The sizes of one product of the batch: `[Tq, Tk, D, Dv]`, and the mask and scale.
#[derive(Clone, Copy)]
pub struct Geometry {
    /// Queries.
    pub tq: usize,
    /// Keys and values.
    pub tk: usize,
    /// Features of a query and a key.
    pub d: usize,
    /// Features of a value.
    pub dv: usize,
    /// Whether query `i` sees keys up to `i + Tk - Tq` only.
    pub causal: bool,
    /// The scores' factor.
    pub scale: f64,
}

impl Geometry {
    /// How many keys query `i` sees.
    pub fn seen(&self, i: usize) -> usize {
        if self.causal {
            (i + 1 + self.tk).saturating_sub(self.tq).min(self.tk)
        } else {
            self.tk
        }
    }
}

/// Query `i`'s scaled scores against the keys it sees.
fn scores<T: Float>(g: &Geometry, q: &[T], k: &[T], i: usize) -> Vec<T> {
    let scale = T::from(g.scale).expect("a float");
    (0..g.seen(i))
        .map(|j| {
            let dot = (0..g.d).fold(T::zero(), |acc, c| acc + q[i * g.d + c] * k[j * g.d + c]);
            dot * scale
        })
        .collect()
}

/// Query `i`'s attention weights over the keys it sees (none: an empty row).
fn probabilities<T: Float>(g: &Geometry, q: &[T], k: &[T], i: usize) -> Vec<T> {
    let s = scores(g, q, k, i);
    let Some(max) = s.iter().copied().reduce(T::max) else {
        return s;
    };
    let e: Vec<T> = s.iter().map(|&x| (x - max).exp()).collect();
    let sum = e.iter().fold(T::zero(), |a, &b| a + b);
    e.into_iter().map(|x| x / sum).collect()
}

/// One product's `[Tq, Dv]`: `p v` for each query's weights `p` (zeros where it sees no key).
pub fn forward<T: Float>(g: &Geometry, q: &[T], k: &[T], v: &[T]) -> Vec<T> {
    let mut out = vec![T::zero(); g.tq * g.dv];
    for i in 0..g.tq {
        for (j, &pj) in probabilities(g, q, k, i).iter().enumerate() {
            for c in 0..g.dv {
                out[i * g.dv + c] = out[i * g.dv + c] + pj * v[j * g.dv + c];
            }
        }
    }
    out
}

/// One product's gradients `[dq (Tq D), dk (Tk D), dv (Tk Dv)]` from the output's gradient
/// `grad` (`[Tq, Dv]`), the weights `p` recomputed: `dv += p do`, `dp = do v`,
/// `ds = p (dp - sum(p dp))`, `dq = scale ds k`, `dk = scale ds^T q`.
pub fn backward<T: Float>(g: &Geometry, [q, k, v, grad]: [&[T]; 4]) -> Vec<T> {
    let scale = T::from(g.scale).expect("a float");
    let (dq_len, dk_len) = (g.tq * g.d, g.tk * g.d);
    let mut result = vec![T::zero(); dq_len + dk_len + g.tk * g.dv];
    let (dq, rest) = result.split_at_mut(dq_len);
    let (dk, dv) = rest.split_at_mut(dk_len);
    for i in 0..g.tq {
        let d_out = &grad[i * g.dv..(i + 1) * g.dv];
        let p = probabilities(g, q, k, i);
        let dp: Vec<T> = (0..p.len())
            .map(|j| (0..g.dv).fold(T::zero(), |a, c| a + d_out[c] * v[j * g.dv + c]))
            .collect();
        let total = p.iter().zip(&dp).fold(T::zero(), |a, (&x, &y)| a + x * y);
        for (j, (&pj, &dpj)) in p.iter().zip(&dp).enumerate() {
            for c in 0..g.dv {
                dv[j * g.dv + c] = dv[j * g.dv + c] + pj * d_out[c];
            }
            let ds = pj * (dpj - total) * scale;
            for c in 0..g.d {
                dq[i * g.d + c] = dq[i * g.d + c] + ds * k[j * g.d + c];
                dk[j * g.d + c] = dk[j * g.d + c] + ds * q[i * g.d + c];
            }
        }
    }
    result
}

/// Self-attention over one packed projection by the separate form: `qkv [B, T, 3C]` -> the
/// output `[B, T, C]`, or, given the output's gradient `[B, T, C]`, the gradient of `qkv`.
/// Head `h` reads and writes columns `h D ..` of each third (`D = C / heads`).
pub fn packed<T: Float>(g: &Geometry, heads: usize, qkv: &[T], grad: Option<&[T]>) -> Vec<T> {
    let (t, d) = (g.tq, g.d);
    let c = heads * d;
    let examples = qkv.len() / (t * 3 * c);
    // Head `h` of example `e` of a `[B, T, width]` tensor, from column `offset + h D`.
    let head = |x: &[T], width: usize, offset: usize, e: usize, h: usize| -> Vec<T> {
        (0..t)
            .flat_map(|i| {
                let at = (e * t + i) * width + offset + h * d;
                x[at..at + d].iter().copied()
            })
            .collect()
    };
    let width = if grad.is_some() { 3 * c } else { c };
    let mut out = vec![T::zero(); examples * t * width];
    let mut place = |part: &[T], offset: usize, e: usize, h: usize| {
        for (i, row) in part.chunks_exact(d).enumerate() {
            let at = (e * t + i) * width + offset + h * d;
            out[at..at + d].copy_from_slice(row);
        }
    };
    for e in 0..examples {
        for h in 0..heads {
            let [q, k, v] = [0, 1, 2].map(|part| head(qkv, 3 * c, part * c, e, h));
            match grad {
                None => place(&forward(g, &q, &k, &v), 0, e, h),
                Some(grad) => {
                    let d_out = head(grad, c, 0, e, h);
                    let all = backward(g, [&q, &k, &v, &d_out]);
                    for (part, gradient) in all.chunks_exact(t * d).enumerate() {
                        place(gradient, part * c, e, h);
                    }
                }
            }
        }
    }
    out
}

/// The value of an attention op (either direction) on its operands, for the interpreter.
pub fn evaluate<T: Float>(op: &Op, args: &[&Tensor<T>]) -> Vec<T> {
    let (causal, scale, heads) = op.attention().expect("an attention op");
    let forward = matches!(op, Op::Attention { .. });
    if heads > 0 {
        let [t, width] = [args[0].shape[1], args[0].shape[2]];
        let g = Geometry {
            tq: t,
            tk: t,
            d: width / (3 * heads),
            dv: width / (3 * heads),
            causal,
            scale: scale.get(),
        };
        let grad = (!forward).then(|| args[1].data.as_slice());
        return packed(&g, heads, &args[0].data, grad);
    }
    let (q, k, v) = (args[0], args[1], args[2]);
    let g = Geometry {
        tq: q.shape[1],
        tk: k.shape[1],
        d: q.shape[2],
        dv: v.shape[2],
        causal,
        scale: scale.get(),
    };
    let products = q.shape[0];
    let per = |i: usize, s: usize| -> &[T] {
        args.get(i).map_or(&[][..], |t| {
            let n = t.data.len() / products;
            &t.data[s * n..(s + 1) * n]
        })
    };
    (0..products)
        .flat_map(|s| {
            let [q, k, v, grad] = [0, 1, 2, 3].map(|i| per(i, s));
            if forward {
                self::forward(&g, q, k, v)
            } else {
                backward(&g, [q, k, v, grad])
            }
        })
        .collect()
}
