//! A compiled program: an ordered list of kernel calls over a buffer plan fixed at compile time.
//!
//! Kernel ABI (shared with the compiler's code generator): every kernel is
//! `extern "C" fn(table: *const *mut u8)`, where `table[i]` is the start of buffer `i` of the
//! plan. A kernel knows at compile time which slots it reads and writes, how many elements each
//! holds, and its loop bounds; it receives nothing else. Shapes are therefore checked once, when
//! the table is built ([`Executable::run`] compares every buffer with its planned length), and
//! generated code never needs a bounds check.
//!
//! The program never compiles and allocates nothing per run. Its kernels run with denormal
//! floats flushed to zero (`nabla_aot::denormals`, the kernel library's); the caller's mode is
//! restored after.

use std::any::Any;

use crate::buffer::{AllocError, Buffer, Elem};
use crate::buffers::Buffers;

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
    /// Where the last run found each external slot's buffer, and the layouts of the
    /// collections it was given then: while they are unchanged, no name is looked up.
    bound: Option<Binding>,
}

/// The places of a program's external buffers in the collections of one run.
struct Binding {
    layouts: Vec<(u64, u64)>,
    /// Per external slot: the slot, which collection, and the place in it.
    places: Vec<(usize, usize, usize)>,
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
            bound: None,
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
    /// part: that the part lies within it) and element type. Several collections let callers
    /// keep, say, per-batch inputs apart from parameters without moving buffers between them.
    /// The names are looked up on the first run and again only when a collection's layout
    /// changes ([`Buffers::layout`]); the lengths and types are checked on every run.
    pub fn run(&mut self, externals: &mut [&mut Buffers]) -> Result<(), RunError> {
        let unchanged = |b: &Binding| {
            b.layouts.len() == externals.len()
                && b.layouts
                    .iter()
                    .zip(externals.iter())
                    .all(|(l, e)| *l == e.layout())
        };
        if !self.bound.as_ref().is_some_and(unchanged) {
            self.bound = Some(Binding {
                places: self.places(externals)?,
                layouts: externals.iter().map(|b| b.layout()).collect(),
            });
        }
        let bound = self.bound.as_ref().expect("bound above");
        for &(slot, collection, place) in &bound.places {
            let spec = &self.program.buffers[slot];
            let buffer = externals[collection].at_mut(place);
            let fits = match spec.offset {
                None => buffer.len() == spec.len,
                Some(offset) => offset + spec.len <= buffer.len(),
            };
            if !fits || buffer.elem() != self.program.elem {
                return Err(RunError::Mismatch {
                    name: spec.external.clone().unwrap_or_default(),
                    expected: spec.offset.unwrap_or(0) + spec.len,
                    got: buffer.len(),
                });
            }
            let start = spec.offset.unwrap_or(0) * self.program.elem.size();
            // SAFETY: `start` is within the buffer, checked above.
            self.table[slot] = unsafe { buffer.as_mut_ptr().add(start) };
        }
        let table = self.table.as_ptr();
        let _denormals = nabla_aot::denormals::Scope::enter();
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

    /// Each external slot's collection and place among `externals`: the first that holds its
    /// name.
    fn places(&self, externals: &[&mut Buffers]) -> Result<Vec<(usize, usize, usize)>, RunError> {
        let mut places = Vec::new();
        for (slot, spec) in self.program.buffers.iter().enumerate() {
            let Some(name) = &spec.external else {
                continue;
            };
            let (collection, place) = externals
                .iter()
                .enumerate()
                .find_map(|(c, buffers)| Some((c, buffers.place(name)?)))
                .ok_or_else(|| RunError::Missing(name.clone()))?;
            places.push((slot, collection, place));
        }
        Ok(places)
    }

    /// The buffer holding the named output after a run.
    pub fn output(&self, name: &str) -> Option<&Buffer> {
        let (_, slot) = self.program.outputs.iter().find(|(n, _)| n == name)?;
        self.temps[*slot].as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `table[1][0] = table[0][0]`, in f64.
    unsafe extern "C" fn copy_first(table: *const *mut u8) {
        // SAFETY: the program below plans two external f64 buffers of one element.
        unsafe {
            let (from, to) = (*table as *const f64, *table.add(1) as *mut f64);
            *to = *from;
        }
    }

    /// `table[1][0] = table[0][0] / 2`, in f32.
    unsafe extern "C" fn halve_first(table: *const *mut u8) {
        // SAFETY: the program below plans two external f32 buffers of one element.
        unsafe {
            let (from, to) = (*table as *const f32, *table.add(1) as *mut f32);
            *to = *from * 0.5;
        }
    }

    /// A program of two external buffers, `x` and `y`, of one `elem` each, and one kernel.
    fn one_kernel(kernel: KernelFn, elem: Elem) -> Program {
        let external = |name: &str| BufferSpec {
            len: 1,
            external: Some(name.to_string()),
            offset: None,
        };
        Program {
            buffers: vec![external("x"), external("y")],
            kernels: vec![kernel],
            notes: vec![KernelNote::default()],
            outputs: Vec::new(),
            elem,
            code: Box::new(()),
        }
    }

    fn copying() -> Program {
        one_kernel(copy_first, Elem::F64)
    }

    fn value(v: f64) -> Buffer {
        Buffer::from_f64(&[v], Elem::F64)
    }

    #[test]
    fn a_changed_layout_is_bound_by_name_again_and_every_run_checks_lengths() {
        let mut exe = Executable::new(copying()).unwrap();
        let mut store: Buffers = [("x", 1.0), ("y", 0.0)]
            .into_iter()
            .map(|(n, v)| (n.to_string(), value(v)))
            .collect();
        exe.run(&mut [&mut store]).unwrap();
        assert_eq!(store["y"].get(0), 1.0);
        // `y` moves to `x`'s place and `x` comes back after it: places bound before would
        // copy `y` into `x`.
        store.remove("x");
        store.insert("x".into(), value(5.0));
        exe.run(&mut [&mut store]).unwrap();
        assert_eq!((store["x"].get(0), store["y"].get(0)), (5.0, 5.0));
        // Replaced in its place by a buffer of the wrong length: refused.
        store.insert("x".into(), Buffer::zeros(2, Elem::F64));
        let refused = exe.run(&mut [&mut store]);
        assert!(
            matches!(&refused, Err(RunError::Mismatch { name, expected: 1, got: 2 }) if name == "x"),
            "{refused:?}"
        );
        let mut other: Buffers = [("y", 0.0)]
            .into_iter()
            .map(|(n, v)| (n.to_string(), value(v)))
            .collect();
        assert_eq!(
            exe.run(&mut [&mut other]),
            Err(RunError::Missing("x".into()))
        );
    }

    #[test]
    fn kernels_run_with_denormals_flushed_and_the_callers_mode_comes_back() {
        use nabla_aot::denormals::{Mode, mode};
        let mut exe = Executable::new(one_kernel(halve_first, Elem::F32)).unwrap();
        let mut store: Buffers = [("x", f64::from(f32::MIN_POSITIVE)), ("y", 1.0)]
            .into_iter()
            .map(|(n, v)| (n.to_string(), Buffer::from_f64(&[v], Elem::F32)))
            .collect();
        exe.run(&mut [&mut store]).unwrap();
        let half = std::hint::black_box(f32::MIN_POSITIVE) * std::hint::black_box(0.5);
        assert!(half > 0.0, "the caller's IEEE mode after the run");
        let expected = if mode() == Ok(Mode::Keep) { half } else { 0.0 };
        assert_eq!(store["y"].f32s()[0], expected);
    }
}
