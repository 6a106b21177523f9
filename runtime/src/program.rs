//! A compiled program: an ordered list of kernel calls over a buffer plan fixed at compile time.
//!
//! Kernel ABI (shared with the compiler's code generator): every kernel is
//! `extern "C" fn(table: *const *mut u8)`, where `table[i]` is the start of buffer `i` of the
//! plan. A kernel knows at compile time which slots it reads and writes, how many elements each
//! holds, and its loop bounds; it receives nothing else. Shapes are therefore checked once, when
//! the table is built ([`Executable::run`] compares every buffer with its planned length), and
//! generated code never needs a bounds check.
//!
//! The program never compiles and allocates nothing per run.

use std::any::Any;
use std::collections::HashMap;
use std::hash::BuildHasher;

use crate::buffer::{AllocError, Buffer, Elem};

/// A generated kernel.
pub type KernelFn = unsafe extern "C" fn(*const *mut u8);

/// One slot of the buffer plan.
#[derive(Clone, Debug, PartialEq)]
pub struct BufferSpec {
    /// Elements it holds.
    pub len: usize,
    /// For buffers that live outside the program (inputs, parameters, optimizer state, learning
    /// rate), the name they are bound under; `None` for the program's own temporaries.
    pub external: Option<String>,
    /// For a part of a packed external buffer (the gradients that one all-reduce sums), the
    /// element the part starts at; the buffer may hold more than the parts a program binds.
    /// `None`: the whole buffer, of exactly `len` elements.
    pub offset: Option<usize>,
}

/// What one kernel computes and the work it does per run, for profiles.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KernelNote {
    /// What it computes, in graph terms (`matmul, relu (h1) + 4 ops`).
    pub title: String,
    /// The labels of the values it computes that name a binding or a gradient (`h1`,
    /// `grad h1.w`), for finding where in the source it came from.
    pub labels: Vec<String>,
    /// Floating-point operations per run (a multiply-add counts two), estimated from its
    /// loops.
    pub flops: u64,
    /// Bytes it reads and writes per run, each buffer access counted once per phase.
    pub bytes: u64,
}

/// Machine code plus its plan.
pub struct Program {
    /// The plan: one entry per table slot.
    pub buffers: Vec<BufferSpec>,
    /// Kernels in execution order.
    pub kernels: Vec<KernelFn>,
    /// What each kernel computes, parallel to `kernels`.
    pub notes: Vec<KernelNote>,
    /// Named results: the slot holding each.
    pub outputs: Vec<(String, usize)>,
    /// Element type of every buffer.
    pub elem: Elem,
    /// Keeps the machine code alive as long as the kernels may be called.
    pub code: Box<dyn Any>,
}

/// Why a program cannot run on the given buffers.
#[derive(Debug, Clone, PartialEq)]
pub enum RunError {
    /// An external buffer was not provided.
    Missing(String),
    /// An external buffer has the wrong size or element type.
    Mismatch {
        /// Its name.
        name: String,
        /// Elements the plan expects.
        expected: usize,
        /// Elements it has.
        got: usize,
    },
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Missing(n) => write!(f, "no buffer was bound for `{n}`"),
            RunError::Mismatch {
                name,
                expected,
                got,
            } => {
                write!(
                    f,
                    "`{name}` has {got} elements but the program expects {expected}"
                )
            }
        }
    }
}

impl std::error::Error for RunError {}

/// A program with its temporaries allocated, ready to run repeatedly.
pub struct Executable {
    program: Program,
    temps: Vec<Option<Buffer>>,
    /// The kernels' table: temporaries' slots are filled once, in `new`; external slots on
    /// every run.
    table: Vec<*mut u8>,
    /// With profiling on, the seconds each kernel has run, summed over runs.
    seconds: Option<Vec<f64>>,
}

impl Executable {
    /// Allocates the program's temporaries once; an error when the memory cannot be had.
    pub fn new(program: Program) -> Result<Executable, AllocError> {
        let mut temps: Vec<Option<Buffer>> = program
            .buffers
            .iter()
            .map(|b| {
                b.external
                    .is_none()
                    .then(|| Buffer::try_zeros(b.len, program.elem))
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        let table = temps
            .iter_mut()
            .map(|temp| {
                temp.as_mut()
                    .map_or(std::ptr::null_mut(), Buffer::as_mut_ptr)
            })
            .collect();
        Ok(Executable {
            program,
            temps,
            table,
            seconds: None,
        })
    }

    /// Turns per-kernel timing on (from zero) for the runs that follow: each kernel call is
    /// timed on its own, which costs a clock read per kernel.
    pub fn profile(&mut self) {
        self.seconds = Some(vec![0.0; self.program.kernels.len()]);
    }

    /// Each kernel's note and the seconds it has run since [`Executable::profile`].
    pub fn profiled(&self) -> Option<Vec<(&KernelNote, f64)>> {
        let seconds = self.seconds.as_ref()?;
        Some(
            self.program
                .notes
                .iter()
                .zip(seconds.iter().copied())
                .collect(),
        )
    }

    /// Runs every kernel once, binding each external buffer the plan names to the first of
    /// `externals` that holds it, after checking it has exactly the planned length (a packed
    /// part: that the part lies within it) and element type. Several maps let callers keep, say, per-batch inputs apart from parameters without
    /// moving buffers between them.
    pub fn run<S: BuildHasher>(
        &mut self,
        externals: &mut [&mut HashMap<String, Buffer, S>],
    ) -> Result<(), RunError> {
        for (slot, spec) in self.program.buffers.iter().enumerate() {
            let Some(name) = &spec.external else {
                continue;
            };
            let buffer = externals
                .iter_mut()
                .find_map(|map| map.get_mut(name))
                .ok_or_else(|| RunError::Missing(name.clone()))?;
            let fits = match spec.offset {
                None => buffer.len() == spec.len,
                Some(offset) => offset + spec.len <= buffer.len(),
            };
            if !fits || buffer.elem() != self.program.elem {
                return Err(RunError::Mismatch {
                    name: name.clone(),
                    expected: spec.offset.unwrap_or(0) + spec.len,
                    got: buffer.len(),
                });
            }
            let start = spec.offset.unwrap_or(0) * self.program.elem.size();
            // SAFETY: `start` is within the buffer, checked above.
            self.table[slot] = unsafe { buffer.as_mut_ptr().add(start) };
        }
        let table = self.table.as_ptr();
        match &mut self.seconds {
            None => {
                for kernel in &self.program.kernels {
                    // SAFETY: every slot points at a live buffer of the planned length and
                    // element type (temporaries since `new`, external buffers checked above),
                    // which is all the kernel ABI requires.
                    unsafe { kernel(table) };
                }
            }
            Some(seconds) => {
                for (kernel, spent) in self.program.kernels.iter().zip(seconds) {
                    let started = std::time::Instant::now();
                    // SAFETY: as above.
                    unsafe { kernel(table) };
                    *spent += started.elapsed().as_secs_f64();
                }
            }
        }
        Ok(())
    }

    /// The buffer holding the named output after a run.
    pub fn output(&self, name: &str) -> Option<&Buffer> {
        let (_, slot) = self.program.outputs.iter().find(|(n, _)| n == name)?;
        self.temps[*slot].as_ref()
    }
}
