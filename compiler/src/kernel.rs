//! The kernel IR: what one generated function computes, as plain data. The scheduler lowers
//! fused groups of graph nodes into it; the code generator translates it to Cranelift IR and
//! decides nothing.
//!
//! A kernel is a sequence of phases run in order. A phase iterates over a box of loop
//! variables `i_0 .. i_{n-1}` (row-major, the last innermost) and evaluates a small DAG of
//! [`Expr`]s at every point. Every memory access is affine in the loop variables:
//! `slot[Σ coeffs[k] * i_k]`, which is how broadcasts (zero coefficients), transposes (permuted
//! strides) and reshapes (row-major strides of the new shape) are read without copying.

use nabla_runtime::{BufferSpec, KernelNote};

pub use nabla_kernels::Call;

use crate::ir::{BinaryOp, ReduceOp, UnaryOp};

/// One value per iteration point. Operands are indices of earlier entries of the phase's
/// expression list, so the list is a DAG in topological order, evaluated once per point.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// The element of buffer `slot` at `Σ coeffs[k] * i_k`.
    Load {
        /// Buffer table slot.
        slot: usize,
        /// One coefficient per loop variable.
        coeffs: Vec<i64>,
    },
    /// A constant.
    Const(f64),
    /// `Σ coeffs[k] * i_k` as a float (an `iota`).
    Index {
        /// One coefficient per loop variable.
        coeffs: Vec<i64>,
    },
    /// An elementwise function of one operand.
    Unary(UnaryOp, usize),
    /// An elementwise function of two operands.
    Binary(BinaryOp, usize, usize),
    /// `cond != 0 ? a : b`.
    Select(usize, usize, usize),
    /// The matrix product at this point (only in a matrix product's epilogue).
    Product,
}

/// A value written to memory at every iteration point.
#[derive(Clone, Debug, PartialEq)]
pub struct Store {
    /// The expression stored.
    pub value: usize,
    /// Buffer table slot.
    pub slot: usize,
    /// Offset coefficients, one per loop variable.
    pub coeffs: Vec<i64>,
}

/// A loop nest with its expressions and stores.
#[derive(Clone, Debug, PartialEq)]
pub struct Loop {
    /// Extent of each loop variable, outermost first.
    pub dims: Vec<usize>,
    /// The expressions, in evaluation order.
    pub exprs: Vec<Expr>,
    /// What is written at every point.
    pub stores: Vec<Store>,
    /// Whether bands of the outermost variable run on the thread pool, each band a function
    /// of its rows (decided by lowering; only when every store moves with that variable, so
    /// bands write disjoint elements and read only what they write).
    pub split_rows: bool,
}

/// One reduction accumulated over a loop: `slot[out] = op(slot[out], exprs[value])`, where the
/// output offset has zero coefficients on the reduced loop variables.
#[derive(Clone, Debug, PartialEq)]
pub struct Reduction {
    /// Sum or max.
    pub op: ReduceOp,
    /// The expression reduced.
    pub value: usize,
    /// Output buffer slot.
    pub slot: usize,
    /// Output offset coefficients (zero on reduced variables).
    pub coeffs: Vec<i64>,
    /// Elements of the output.
    pub len: usize,
}

/// A matrix operand in memory: element `(r, c)` is at `slot[r * row + c * col]`, so a
/// transposed operand is read by swapping the strides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operand {
    /// Buffer table slot.
    pub slot: usize,
    /// Stride between rows.
    pub row: i64,
    /// Stride between columns.
    pub col: i64,
}

/// The loop of a phase that has none.
static NO_LOOP: Loop = Loop {
    dims: Vec::new(),
    exprs: Vec::new(),
    stores: Vec::new(),
    split_rows: false,
};

/// One phase of a kernel.
#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    /// Evaluate and store at every point.
    Map(Loop),
    /// Accumulate reductions over the loop (its `stores` are empty); outputs start at the
    /// reduction's identity.
    Reduce {
        /// The iteration space and the reduced expressions.
        body: Loop,
        /// What is accumulated where.
        reductions: Vec<Reduction>,
    },
    /// `out = A[m, k] @ B[k, n]` (row-major), then the epilogue over `[m, n]` with
    /// [`Expr::Product`] standing for each product element.
    MatMul {
        /// Rows of the product.
        m: usize,
        /// The contracted dimension.
        k: usize,
        /// Columns of the product.
        n: usize,
        /// Left operand.
        a: Operand,
        /// Right operand.
        b: Operand,
        /// Where the product is written, row-major.
        out: usize,
        /// How the product is computed (decided by lowering).
        method: Product,
        /// Runs over `[m, n]`.
        epilogue: Loop,
    },
    /// A call into the runtime's library for what loops over affine accesses cannot express:
    /// windows of images, convolutions, slices, concatenations and gathers. Every buffer is
    /// row-major and whole.
    Call {
        /// What is computed.
        call: Call,
        /// Its sizes, laid out as [`Call`] says.
        args: Vec<usize>,
        /// The buffers read, in operand order.
        inputs: Vec<usize>,
        /// The buffer written.
        output: usize,
    },
}

/// How a matrix product is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Product {
    /// By the `gemm` crate (packed, cache-blocked, threaded), then the epilogue as a loop over
    /// the product: large products.
    Gemm,
    /// By register tiles in generated code, the epilogue applied in registers before anything
    /// is stored: small products, where the GEMM's packing and dispatch cost more than they
    /// save.
    Tiles,
}

impl Product {
    /// Products of at least this many multiply-adds (`m k n`) call the GEMM; smaller ones are
    /// register tiles.
    pub const GEMM_MIN_MACS: usize = 1 << 15;

    /// How a product of `macs` multiply-adds is computed.
    pub fn for_macs(macs: usize) -> Product {
        if macs >= Product::GEMM_MIN_MACS {
            Product::Gemm
        } else {
            Product::Tiles
        }
    }
}

/// One generated function: its phases in order, and a line saying what it computes (for
/// dumps).
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    /// What it computes, in graph terms (`matmul h1 + relu`, `reduce_sum [1] + log`).
    pub title: String,
    /// The labels of the values it computes (see [`crate::fusion::labels`]).
    pub labels: Vec<String>,
    /// The phases.
    pub phases: Vec<Phase>,
}

impl Phase {
    /// The loop whose expressions and stores the phase evaluates.
    pub fn body(&self) -> &Loop {
        match self {
            Phase::Map(l) | Phase::Reduce { body: l, .. } => l,
            // A call computes nothing elementwise.
            Phase::Call { .. } => &NO_LOOP,
            Phase::MatMul { epilogue, .. } => epilogue,
        }
    }

    /// Every buffer the phase reads, with the offset coefficients of each expression load (a
    /// matrix operand, read whole, has none).
    pub fn loads(&self) -> Vec<(usize, &[i64])> {
        let mut out: Vec<(usize, &[i64])> = self
            .body()
            .exprs
            .iter()
            .filter_map(|e| match e {
                Expr::Load { slot, coeffs } => Some((*slot, coeffs.as_slice())),
                _ => None,
            })
            .collect();
        match self {
            Phase::MatMul { a, b, .. } => out.extend([(a.slot, &[][..]), (b.slot, &[][..])]),
            Phase::Call { inputs, .. } => out.extend(inputs.iter().map(|&i| (i, &[][..]))),
            Phase::Map(_) | Phase::Reduce { .. } => {}
        }
        out
    }

    /// The rows of the outermost variable that bands split over the threads, when lowering
    /// decided so ([`Loop::split_rows`]).
    pub fn split_rows(&self) -> Option<usize> {
        let l = self.body();
        l.split_rows.then(|| l.dims[0])
    }

    /// Every buffer the phase writes: its stores, a product's output, reductions' outputs.
    pub fn writes(&self) -> Vec<usize> {
        let mut out: Vec<usize> = self.body().stores.iter().map(|s| s.slot).collect();
        match self {
            Phase::MatMul { out: product, .. } => out.push(*product),
            Phase::Reduce { reductions, .. } => out.extend(reductions.iter().map(|r| r.slot)),
            Phase::Call { output, .. } => out.push(*output),
            Phase::Map(_) => {}
        }
        out
    }
}

impl Kernel {
    /// Replaces every slot `s` the kernel uses by `map(s)`.
    pub fn remap_slots(&mut self, map: &dyn Fn(usize) -> usize) {
        let fix = |slot: &mut usize| *slot = map(*slot);
        for phase in &mut self.phases {
            let body = match phase {
                Phase::Map(l) => l,
                Phase::Reduce { body, reductions } => {
                    reductions.iter_mut().for_each(|r| fix(&mut r.slot));
                    body
                }
                Phase::MatMul {
                    a,
                    b,
                    out,
                    epilogue,
                    ..
                } => {
                    fix(&mut a.slot);
                    fix(&mut b.slot);
                    fix(out);
                    epilogue
                }
                Phase::Call { inputs, output, .. } => {
                    inputs.iter_mut().for_each(&fix);
                    fix(output);
                    continue;
                }
            };
            for e in &mut body.exprs {
                if let Expr::Load { slot, .. } = e {
                    fix(slot);
                }
            }
            body.stores.iter_mut().for_each(|s| fix(&mut s.slot));
        }
    }

    /// Every buffer the kernel touches, sorted, once each.
    pub fn slots(&self) -> Vec<usize> {
        let mut out: Vec<usize> = self
            .phases
            .iter()
            .flat_map(|p| p.loads().into_iter().map(|(s, _)| s).chain(p.writes()))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// The buffer plan and kernels of one program.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// One entry per table slot.
    pub buffers: Vec<BufferSpec>,
    /// Kernels in execution order.
    pub kernels: Vec<Kernel>,
    /// Named results and the temporary slot holding each.
    pub outputs: Vec<(String, usize)>,
}

impl Plan {
    /// Bytes of the program's own temporaries (after sharing).
    pub fn temporary_bytes(&self, elem_size: usize) -> u64 {
        self.buffers
            .iter()
            .filter(|b| b.external.is_none())
            .map(|b| (b.len * elem_size) as u64)
            .sum()
    }

    /// An estimate of the memory traffic of one run: the distinct elements every phase reads
    /// or writes, each access counted once per phase (a broadcast read once, a value computed
    /// inline not at all).
    pub fn bytes_moved(&self, elem_size: usize) -> u64 {
        self.notes(elem_size).iter().map(|n| n.bytes).sum()
    }

    /// The floating-point operations and bytes moved of one run, summed over the kernels
    /// (estimated, see [`Plan::notes`]).
    pub fn work(&self, elem_size: usize) -> (u64, u64) {
        self.notes(elem_size)
            .iter()
            .fold((0, 0), |(f, b), n| (f + n.flops, b + n.bytes))
    }

    /// Each kernel's title, labels, and estimated work per run: floating-point operations and
    /// bytes moved (see [`Plan::bytes_moved`]).
    pub fn notes(&self, elem_size: usize) -> Vec<KernelNote> {
        self.kernels
            .iter()
            .map(|kernel| {
                let (flops, elements) = kernel
                    .phases
                    .iter()
                    .map(|p| self.phase_cost(p))
                    .fold((0, 0), |(f, e), (pf, pe)| (f + pf, e + pe));
                KernelNote {
                    title: kernel.title.clone(),
                    labels: kernel.labels.clone(),
                    flops,
                    bytes: elements * elem_size as u64,
                }
            })
            .collect()
    }

    /// A phase's floating-point operations (a multiply-add counts two, a comparison one) and
    /// the elements it reads and writes.
    fn phase_cost(&self, phase: &Phase) -> (u64, u64) {
        // Elements an affine access reaches: the extents of the loop variables it depends on.
        let reach = |dims: &[usize], coeffs: &[i64]| -> u64 {
            dims.iter()
                .zip(coeffs)
                .filter(|(_, c)| **c != 0)
                .map(|(d, _)| *d as u64)
                .product()
        };
        let (mut flops, mut elements) = (0, 0);
        let body = match phase {
            Phase::Map(l) => l,
            Phase::Reduce { body, reductions } => {
                elements += reductions.iter().map(|r| r.len as u64).sum::<u64>();
                flops += reductions.len() as u64 * body.points();
                body
            }
            Phase::MatMul {
                m, k, n, epilogue, ..
            } => {
                elements += (m * k + k * n + m * n) as u64;
                flops += 2 * (m * k * n) as u64;
                epilogue
            }
            // A library call reads its operands and writes its output whole (convolutions'
            // windows stay in cache).
            Phase::Call {
                call,
                args,
                inputs,
                output,
            } => {
                elements += inputs
                    .iter()
                    .chain([output])
                    .map(|&slot| self.buffers[slot].len as u64)
                    .sum::<u64>();
                flops += call_flops(*call, args);
                phase.body()
            }
        };
        let mut accesses: Vec<(usize, &[i64])> = body
            .exprs
            .iter()
            .filter_map(|e| match e {
                Expr::Load { slot, coeffs } => Some((*slot, coeffs.as_slice())),
                _ => None,
            })
            .chain(body.stores.iter().map(|s| (s.slot, s.coeffs.as_slice())))
            .collect();
        accesses.sort_unstable();
        accesses.dedup();
        elements += accesses
            .iter()
            .map(|(_, c)| reach(&body.dims, c))
            .sum::<u64>();
        let arithmetic = body
            .exprs
            .iter()
            .filter(|e| matches!(e, Expr::Unary(..) | Expr::Binary(..) | Expr::Select(..)))
            .count() as u64;
        (flops + arithmetic * body.points(), elements)
    }
}

impl Loop {
    /// Iteration points: the product of the extents.
    pub fn points(&self) -> u64 {
        self.dims.iter().map(|&d| d as u64).product()
    }
}

/// A library call's floating-point operations: a convolution's multiply-adds (each form does
/// as many), a max pooling's comparisons; copies, gathers and windows do none.
fn call_flops(call: Call, args: &[usize]) -> u64 {
    match call {
        Call::Conv | Call::ConvInputGrad | Call::ConvWeightGrad => {
            let (window, [n, c, o]) = Call::window_of(args);
            let positions: usize = window.output().unwrap_or_default().iter().product();
            let taps = c * window.kernel[0] * window.kernel[1];
            2 * (n * o * positions * taps) as u64
        }
        Call::MaxPoolGather | Call::MaxPoolScatter => {
            let (window, [n, c, _]) = Call::window_of(args);
            let positions: usize = window.output().unwrap_or_default().iter().product();
            (n * c * positions * window.kernel[0] * window.kernel[1]) as u64
        }
        Call::BatchMatMul => 2 * args[..4].iter().map(|&d| d as u64).product::<u64>(),
        // Two products of `Tq x Tk` by the depths (forward), five (backward: the scores again),
        // for every head of every example (`s` counts examples when heads are packed).
        Call::Attention | Call::AttentionGrad => {
            let [s, tq, tk, d, dv] =
                [args[0], args[1], args[2], args[3], args[4]].map(|x| x as u64);
            let s = s * args[7].max(1) as u64;
            let products = if call == Call::Attention {
                d + dv
            } else {
                3 * d + 2 * dv
            };
            2 * s * tq * tk * products
        }
        _ => 0,
    }
}

/// Row-major strides of `shape`, as coefficients.
pub fn row_major(shape: &[usize]) -> Vec<i64> {
    crate::ir::strides(shape)
        .into_iter()
        .map(|s| s as i64)
        .collect()
}

impl std::fmt::Display for Kernel {
    /// One line per phase, then one per expression and store:
    /// `map [65536]`, `  e3 = add e1 e2`, `  store e3 -> slot 7 [1]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "kernel {}", self.title)?;
        for phase in &self.phases {
            let (head, body) = match phase {
                Phase::Map(l) => (format!("map {:?}", l.dims), l),
                Phase::Reduce { body, reductions } => {
                    let rs: Vec<String> = reductions
                        .iter()
                        .map(|r| {
                            format!("{:?} e{} -> slot {} {:?}", r.op, r.value, r.slot, r.coeffs)
                        })
                        .collect();
                    (format!("reduce {:?}: {}", body.dims, rs.join(", ")), body)
                }
                Phase::MatMul {
                    m,
                    k,
                    n,
                    a,
                    b,
                    out,
                    method,
                    epilogue,
                } => (
                    format!(
                        "matmul [{m}, {k}] @ [{k}, {n}] by {method:?}: slot {} {:?} @ slot {} {:?} -> slot {out}",
                        a.slot,
                        [a.row, a.col],
                        b.slot,
                        [b.row, b.col]
                    ),
                    epilogue,
                ),
                Phase::Call {
                    call,
                    args,
                    inputs,
                    output,
                } => {
                    let sizes = if call.is_window() {
                        let (window, sizes) = Call::window_of(args);
                        format!("{sizes:?} {window}")
                    } else {
                        format!("{args:?}")
                    };
                    let name = format!("{call:?}").to_lowercase();
                    (
                        format!("{name} {sizes}: slots {inputs:?} -> slot {output}"),
                        phase.body(),
                    )
                }
            };
            writeln!(f, "  {head}")?;
            for (i, e) in body.exprs.iter().enumerate() {
                let text = match e {
                    Expr::Load { slot, coeffs } => format!("load slot {slot} {coeffs:?}"),
                    Expr::Const(c) => format!("const {c}"),
                    Expr::Index { coeffs } => format!("index {coeffs:?}"),
                    Expr::Unary(op, x) => format!("{op:?} e{x}").to_lowercase(),
                    Expr::Binary(op, x, y) => format!("{op:?} e{x} e{y}").to_lowercase(),
                    Expr::Select(c, x, y) => format!("select e{c} e{x} e{y}"),
                    Expr::Product => "product".into(),
                };
                writeln!(f, "    e{i} = {text}")?;
            }
            for s in &body.stores {
                writeln!(
                    f,
                    "    store e{} -> slot {} {:?}",
                    s.value, s.slot, s.coeffs
                )?;
            }
        }
        Ok(())
    }
}
