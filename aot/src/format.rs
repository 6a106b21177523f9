//! The descriptor of an exported model: one array of 64-bit words in the library's read-only
//! data, written by nabla's exporter and read by [`crate::entry`]. Arrays inside it are
//! referenced by their position (in words from its start); the weights and the kernels by
//! address, which the linker fills in. Both sides are built from the same sources: the exporter
//! links the object against the archive of the nabla that wrote it, and [`MAGIC`] and
//! [`VERSION`] catch a descriptor from another.

/// The descriptor's first word.
pub const MAGIC: u64 = u64::from_le_bytes(*b"nablaAOT");

/// The layout's version, its second word.
pub const VERSION: u64 = 2;

/// The alignment of every buffer in the weights and the scratch, in bytes (a cache line, as
/// nabla's own buffers).
pub const ALIGN: usize = 64;

/// Words of the model's header, at position 0.
pub mod model {
    /// [`super::MAGIC`].
    pub const MAGIC: usize = 0;
    /// [`super::VERSION`].
    pub const VERSION: usize = 1;
    /// The address of the weights.
    pub const WEIGHTS: usize = 2;
    /// How many inputs a prediction takes.
    pub const INPUTS: usize = 3;
    /// Where the inputs' records are ([`super::input`]).
    pub const INPUT_TABLE: usize = 4;
    /// Floats of prediction per example.
    pub const OUTPUT_ROW: usize = 5;
    /// How many prediction programs there are, one per compiled batch, ascending.
    pub const PROGRAMS: usize = 6;
    /// Where their records are ([`super::program`]).
    pub const PROGRAM_TABLE: usize = 7;
    /// Where the one-step generation program's record is; 0 for none.
    pub const STEP: usize = 8;
    /// Floats of recurrent state the step program carries.
    pub const STATE: usize = 9;
    /// The vocabulary the step program's token indexes; 0 for none.
    pub const VOCABULARY: usize = 10;
    /// The instruction-set extensions the code needs, one bit each ([`crate::cpu::FEATURES`]).
    pub const FEATURES: usize = 11;
    /// Words in the header.
    pub const WORDS: usize = 12;
}

/// Words of one input's record.
pub mod input {
    /// Values per example.
    pub const ROW: usize = 0;
    /// For an input of class indices, how many classes; 0 for real values.
    pub const CLASSES: usize = 1;
    /// Words in a record.
    pub const WORDS: usize = 2;
}

/// Words of one program's record.
pub mod program {
    /// The batch it was compiled for (1 for the step program).
    pub const BATCH: usize = 0;
    /// How many kernels it runs.
    pub const KERNELS: usize = 1;
    /// Where their addresses are, in run order.
    pub const KERNEL_TABLE: usize = 2;
    /// How many buffers its table has.
    pub const SLOTS: usize = 3;
    /// Where their records are ([`super::slot`]).
    pub const SLOT_TABLE: usize = 4;
    /// The slot holding the prediction.
    pub const OUTPUT: usize = 5;
    /// Bytes of scratch it needs: the table, then its buffers.
    pub const SCRATCH: usize = 6;
    /// Words in a record.
    pub const WORDS: usize = 7;
}

/// Words of one buffer's record.
pub mod slot {
    /// Where the buffer lives ([`super::SlotKind`]).
    pub const KIND: usize = 0;
    /// For an input, which; for recurrent state, its first float in the state.
    pub const ARG: usize = 1;
    /// Its first byte in the weights (weights) or in the scratch (everything else).
    pub const OFFSET: usize = 2;
    /// Its floats.
    pub const LEN: usize = 3;
    /// Words in a record.
    pub const WORDS: usize = 4;
}

/// Where a buffer of a program's table lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum SlotKind {
    /// A temporary, in the scratch.
    Scratch = 0,
    /// A parameter or layer state, in the weights (read only).
    Weights = 1,
    /// An input, copied into the scratch before the run (padding rows repeat the last).
    Input = 2,
    /// Recurrent state, copied from the caller's state into the scratch before the run and
    /// back after it.
    State = 3,
}

impl SlotKind {
    /// The kind a word names.
    pub fn of(word: u64) -> Option<SlotKind> {
        [
            SlotKind::Scratch,
            SlotKind::Weights,
            SlotKind::Input,
            SlotKind::State,
        ]
        .into_iter()
        .find(|&k| k as u64 == word)
    }
}

/// The first multiple of [`ALIGN`] at or after `bytes`.
pub fn aligned(bytes: usize) -> usize {
    bytes.div_ceil(ALIGN) * ALIGN
}
