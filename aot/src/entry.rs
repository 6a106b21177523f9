//! The functions an exported library's C entry points call with their descriptor: the scratch
//! size, a prediction for any number of examples, and one generation step. They trust the
//! descriptor (nabla wrote it into the same library) and check everything the caller passes:
//! null pointers, class indices outside their vocabulary, a scratch the library should
//! allocate. They never panic: every error is a code. The kernels run with denormals flushed,
//! as in nabla (`nabla_kernels::denormals`), and the caller's mode is restored after.

use std::alloc::Layout;

use crate::cpu;
use crate::format::{self, ALIGN, SlotKind, input, model, program, slot};
use crate::schedule::{Chunk, schedule};

/// The call succeeded.
pub const OK: i32 = 0;
/// A pointer the call needs is null.
pub const ERROR_NULL: i32 = 1;
/// The call was given no scratch and could not allocate one.
pub const ERROR_MEMORY: i32 = 2;
/// An input of class indices holds a value that is not one (not a whole number from 0 to its
/// vocabulary's size less one); nothing was computed.
pub const ERROR_INPUT: i32 = 3;
/// The library's descriptor is not one this archive reads (objects of different nabla
/// versions linked together).
pub const ERROR_FORMAT: i32 = 4;
/// This CPU lacks an instruction-set extension the library's code was compiled for (it was
/// exported for another machine's CPU); nothing was computed.
pub const ERROR_CPU: i32 = 5;

/// A generated kernel: the buffer table is all it takes.
type Kernel = unsafe extern "C" fn(*const *mut u8);

/// A descriptor in the library's read-only data.
#[derive(Clone, Copy)]
struct Descriptor(*const u64);

impl Descriptor {
    fn word(self, at: usize) -> usize {
        // SAFETY: the exporter wrote every position this module reads (see `format`).
        unsafe { *self.0.add(at) as usize }
    }

    fn valid(self) -> bool {
        !self.0.is_null()
            && self.word(model::MAGIC) as u64 == format::MAGIC
            && self.word(model::VERSION) as u64 == format::VERSION
    }

    /// Whether its code can run here: [`OK`], or the error code that says why not.
    fn runnable(self) -> i32 {
        if !self.valid() {
            ERROR_FORMAT
        } else if cpu::missing(self.word(model::FEATURES) as u64) != 0 {
            ERROR_CPU
        } else {
            OK
        }
    }

    /// The position of program `i`'s record.
    fn program(self, i: usize) -> usize {
        self.word(model::PROGRAM_TABLE) + i * program::WORDS
    }

    fn programs(self) -> impl Iterator<Item = usize> {
        (0..self.word(model::PROGRAMS)).map(move |i| self.program(i))
    }

    fn step(self) -> Option<usize> {
        Some(self.word(model::STEP)).filter(|&at| at != 0)
    }

    /// Values per example and classes (0: reals) of input `i`.
    fn input(self, i: usize) -> (usize, usize) {
        let at = self.word(model::INPUT_TABLE) + i * input::WORDS;
        (self.word(at + input::ROW), self.word(at + input::CLASSES))
    }

    /// Bytes of scratch the largest program needs, and room to align it.
    fn scratch_size(self) -> usize {
        let scratch = |at: usize| self.word(at + program::SCRATCH);
        self.programs()
            .chain(self.step())
            .map(scratch)
            .max()
            .unwrap_or(0)
            + ALIGN
    }
}

/// Runs `f` on an aligned scratch of the model's size: `scratch` if given, else one allocated
/// for the call.
fn with_scratch(model: Descriptor, scratch: *mut u8, f: impl FnOnce(*mut u8) -> i32) -> i32 {
    let size = model.scratch_size();
    if !scratch.is_null() {
        return f(scratch.wrapping_add(scratch.align_offset(ALIGN)));
    }
    let Ok(layout) = Layout::from_size_align(size, ALIGN) else {
        return ERROR_MEMORY;
    };
    // SAFETY: the layout's size is at least `ALIGN`, not zero.
    let owned = unsafe { std::alloc::alloc(layout) };
    if owned.is_null() {
        return ERROR_MEMORY;
    }
    let code = f(owned);
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(owned, layout) };
    code
}

/// Where one run's inputs come from and its results go.
trait Binding {
    /// Fills an input slot (`len` floats) from input `which`.
    fn input(&self, which: usize, to: &mut [f32]);
    /// The caller's recurrent state, if the program carries one.
    fn state(&self) -> *mut f32;
    /// Takes the prediction from its slot.
    fn output(&self, from: &[f32]);
}

/// Runs the program whose record is at `at`, with `scratch` aligned and as large as it needs.
///
/// # Safety
/// `binding`'s pointers must hold what the descriptor says.
unsafe fn run(model: Descriptor, at: usize, scratch: *mut u8, binding: &impl Binding) {
    let slots = model.word(at + program::SLOTS);
    let table = scratch.cast::<*mut u8>();
    let weights = model.word(model::WEIGHTS) as *mut u8;
    let slot = |s: usize, field: usize| {
        model.word(model.word(at + program::SLOT_TABLE) + s * slot::WORDS + field)
    };
    // SAFETY: the scratch holds the table, then every slot at its offset (the exporter laid it
    // out and sized the scratch), the weights every weights slot.
    let view = |s: usize| unsafe {
        let base = match SlotKind::of(slot(s, slot::KIND) as u64) {
            Some(SlotKind::Weights) => weights,
            _ => scratch,
        };
        base.add(slot(s, slot::OFFSET))
    };
    for s in 0..slots {
        // SAFETY: the table's room is the scratch's first `slots` words.
        unsafe { *table.add(s) = view(s) };
        let len = slot(s, slot::LEN);
        // SAFETY: a slot holds `len` floats.
        let floats = || unsafe { std::slice::from_raw_parts_mut(view(s).cast::<f32>(), len) };
        match SlotKind::of(slot(s, slot::KIND) as u64) {
            Some(SlotKind::Input) => binding.input(slot(s, slot::ARG), floats()),
            Some(SlotKind::State) => {
                // SAFETY: the caller's state holds every carried float.
                let from = unsafe { binding.state().add(slot(s, slot::ARG)) };
                floats().copy_from_slice(unsafe { std::slice::from_raw_parts(from, len) });
            }
            _ => {}
        }
    }
    let kernels = model.word(at + program::KERNEL_TABLE);
    let _denormals = nabla_kernels::denormals::Scope::enter();
    for k in 0..model.word(at + program::KERNELS) {
        // SAFETY: the linker wrote each kernel's address; every slot points at a buffer of the
        // planned size, which is all a kernel requires.
        unsafe {
            let kernel: Kernel = std::mem::transmute(model.word(kernels + k));
            kernel(table);
        }
    }
    let output = model.word(at + program::OUTPUT);
    // SAFETY: the output slot holds `len` floats.
    binding.output(unsafe {
        std::slice::from_raw_parts(view(output).cast::<f32>(), slot(output, slot::LEN))
    });
    for s in 0..slots {
        if SlotKind::of(slot(s, slot::KIND) as u64) == Some(SlotKind::State) {
            let len = slot(s, slot::LEN);
            // SAFETY: as when it was copied in.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    view(s).cast::<f32>(),
                    binding.state().add(slot(s, slot::ARG)),
                    len,
                )
            };
        }
    }
}

/// The bytes of scratch a call needs (aligning included).
///
/// # Safety
/// `model` is a library's descriptor.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nabla_aot_scratch_size(model: *const u64) -> usize {
    let model = Descriptor(model);
    if model.valid() {
        model.scratch_size()
    } else {
        0
    }
}

/// One prediction run: `chunk` of the call's examples.
struct Rows<'a> {
    model: Descriptor,
    inputs: &'a [*const f32],
    chunk: Chunk,
    output: *mut f32,
}

impl Binding for Rows<'_> {
    fn input(&self, which: usize, to: &mut [f32]) {
        let (row, _) = self.model.input(which);
        let Chunk { start, rows, .. } = self.chunk;
        // SAFETY: the caller's input holds `n` examples of `row` floats; the chunk is within.
        let from =
            unsafe { std::slice::from_raw_parts(self.inputs[which].add(start * row), rows * row) };
        let (real, padding) = to.split_at_mut(rows * row);
        real.copy_from_slice(from);
        let last = &from[(rows - 1) * row..];
        padding
            .chunks_exact_mut(row.max(1))
            .for_each(|p| p.copy_from_slice(last));
    }

    fn state(&self) -> *mut f32 {
        std::ptr::null_mut()
    }

    fn output(&self, from: &[f32]) {
        let row = self.model.word(model::OUTPUT_ROW);
        let Chunk { start, rows, .. } = self.chunk;
        // SAFETY: the caller's output holds `n` examples of `row` floats; the chunk is within.
        let to =
            unsafe { std::slice::from_raw_parts_mut(self.output.add(start * row), rows * row) };
        to.copy_from_slice(&from[..rows * row]);
    }
}

/// Whether every value is a class index below `classes`.
fn indices(values: &[f32], classes: usize) -> bool {
    values
        .iter()
        .all(|&v| v >= 0.0 && v.fract() == 0.0 && (v as usize) < classes)
}

/// The prediction for `n` examples: `inputs` holds one pointer per input, each to `n` rows of
/// its values; `output` receives `n` rows of the prediction.
///
/// # Safety
/// `model` is a library's descriptor; the pointers hold what the header says.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nabla_aot_predict(
    model: *const u64,
    inputs: *const *const f32,
    n: usize,
    output: *mut f32,
    scratch: *mut u8,
) -> i32 {
    let model = Descriptor(model);
    let runnable = model.runnable();
    if runnable != OK {
        return runnable;
    }
    if n == 0 {
        return OK;
    }
    let count = model.word(model::INPUTS);
    if (count > 0 && inputs.is_null()) || output.is_null() {
        return ERROR_NULL;
    }
    // SAFETY: the caller passes one pointer per input.
    let inputs = if count == 0 {
        &[][..]
    } else {
        unsafe { std::slice::from_raw_parts(inputs, count) }
    };
    for (i, &values) in inputs.iter().enumerate() {
        if values.is_null() {
            return ERROR_NULL;
        }
        let (row, classes) = model.input(i);
        // SAFETY: the caller's input holds `n` examples of `row` floats.
        if classes > 0
            && !indices(
                unsafe { std::slice::from_raw_parts(values, n * row) },
                classes,
            )
        {
            return ERROR_INPUT;
        }
    }
    let sizes: Vec<usize> = model
        .programs()
        .map(|at| model.word(at + program::BATCH))
        .collect();
    with_scratch(model, scratch, |scratch| {
        for chunk in schedule(n, &sizes) {
            let compiled = |&at: &usize| model.word(at + program::BATCH) == chunk.batch;
            let Some(at) = model.programs().find(compiled) else {
                return ERROR_FORMAT;
            };
            let rows = Rows {
                model,
                inputs,
                chunk,
                output,
            };
            // SAFETY: checked above; the scratch is the model's size.
            unsafe { run(model, at, scratch, &rows) };
        }
        OK
    })
}

/// One generation step.
struct Step {
    token: f32,
    state: *mut f32,
    output: *mut f32,
}

impl Binding for Step {
    fn input(&self, _: usize, to: &mut [f32]) {
        to.fill(self.token);
    }

    fn state(&self) -> *mut f32 {
        self.state
    }

    fn output(&self, from: &[f32]) {
        // SAFETY: the caller's output holds the step's prediction (the vocabulary's logits).
        unsafe { std::ptr::copy_nonoverlapping(from.as_ptr(), self.output, from.len()) };
    }
}

/// One step of generation: feeds `token`, updates the recurrent `state` in place (zeros before
/// a sequence's first token) and writes the next token's logits into `output`.
///
/// # Safety
/// `model` is a library's descriptor with a step program; the pointers hold what the header
/// says.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nabla_aot_step(
    model: *const u64,
    token: i64,
    state: *mut f32,
    output: *mut f32,
    scratch: *mut u8,
) -> i32 {
    let model = Descriptor(model);
    let runnable = model.runnable();
    if runnable != OK {
        return runnable;
    }
    let Some(at) = model.step() else {
        return ERROR_FORMAT;
    };
    if (state.is_null() && model.word(model::STATE) > 0) || output.is_null() {
        return ERROR_NULL;
    }
    let vocabulary = model.word(model::VOCABULARY);
    if token < 0 || token as usize >= vocabulary {
        return ERROR_INPUT;
    }
    let step = Step {
        token: token as f32,
        state,
        output,
    };
    // SAFETY: checked above; the scratch is the model's size.
    with_scratch(model, scratch, |scratch| {
        unsafe { run(model, at, scratch, &step) };
        OK
    })
}
