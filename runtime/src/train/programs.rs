//! The program store: each program (train step, evaluation, prediction) compiled once per batch
//! size and cached with the buffers its batches are copied into, so that the last partial batch
//! of an epoch is trained, not dropped, and the step loop allocates nothing.

use rustc_hash::FxHashMap;

use super::contract::{Compile, ModelInfo, evaluation_batch};
use super::store::{Store, fill_masks};
use crate::data::Dataset;
use crate::{Buffer, Elem, Executable};

/// Programs of one kind and their input buffers, one set per batch size.
pub(super) struct Runner {
    pub(super) kind: ProgramKind,
    pub(super) elem: Elem,
    pub(super) programs: FxHashMap<usize, (Executable, Store)>,
    /// For evaluation and prediction, the batch [`evaluation_batch`] gives, planned once.
    batch: Option<usize>,
}

#[derive(Clone, Copy, PartialEq)]
pub(super) enum ProgramKind {
    Train,
    Evaluate,
    Predict,
    Gradients,
    /// A data-parallel rank's forward and backward pass.
    LocalStep,
}

impl Runner {
    pub(super) fn new(kind: ProgramKind, elem: Elem) -> Runner {
        Runner {
            kind,
            elem,
            programs: FxHashMap::default(),
            batch: None,
        }
    }

    /// The chunks of `rows` examples that evaluation or prediction runs at once
    /// ([`evaluation_batch`], planned on first use).
    pub(super) fn evaluation_chunk(
        &mut self,
        compile: &mut dyn Compile,
        rows: usize,
    ) -> Result<usize, String> {
        let batch = match self.batch {
            Some(b) => b,
            None => *self.batch.insert(evaluation_batch(compile)?),
        };
        Ok(batch.min(rows.max(1)))
    }

    /// Drops the programs of every batch size but `batch`, so that only one is held: for
    /// evaluation, whose programs may each take up to [`super::contract::EVAL_MEMORY`].
    pub(super) fn keep_only(&mut self, batch: usize) {
        self.programs.retain(|&b, _| b == batch);
    }

    /// Compiles the program for `batch` and makes its input buffers, once per batch size.
    pub(super) fn compile(
        &mut self,
        compile: &mut dyn Compile,
        info: &ModelInfo,
        batch: usize,
    ) -> Result<(), String> {
        if self.programs.contains_key(&batch) {
            return Ok(());
        }
        let program = match self.kind {
            ProgramKind::Train => compile.train_step(batch),
            ProgramKind::Evaluate => compile.evaluate(batch),
            ProgramKind::Predict => compile.predict(batch),
            ProgramKind::Gradients => compile.gradients(batch),
            ProgramKind::LocalStep => compile.local_step(batch),
        }?;
        let masked = matches!(
            self.kind,
            ProgramKind::Train | ProgramKind::Gradients | ProgramKind::LocalStep
        );
        let masks = info.masks.iter().filter(|_| masked);
        let fed = info.feeds.iter().map(|f| (&f.name, f.row_len));
        let inputs = fed
            .chain(masks.map(|m| (&m.name, m.row_len)))
            .map(|(name, row_len)| {
                let buffer = Buffer::try_zeros(batch * row_len, self.elem);
                buffer.map(|b| (name.clone(), b)).map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        let exe = Executable::new(program).map_err(|e| e.to_string())?;
        self.programs.insert(batch, (exe, inputs));
        Ok(())
    }

    /// Copies the examples `rows` into the batch buffers, draws the dropout masks of step
    /// `draw = (seed, step)` (train and gradient programs), and runs the program (compiled on
    /// first use of this batch size).
    pub(super) fn run(
        &mut self,
        compile: &mut dyn Compile,
        info: &ModelInfo,
        data: &Dataset,
        rows: &[usize],
        store: &mut Store,
        draw: Option<(u64, usize)>,
    ) -> Result<&Executable, String> {
        let batch = rows.len();
        self.compile(compile, info, batch)?;
        let (exe, inputs) = self.programs.get_mut(&batch).expect("compiled above");
        if let Some((seed, step)) = draw {
            fill_masks(info, seed, step, inputs);
        }
        for feed in &info.feeds {
            let (Some(column), Some(buffer)) =
                (data.column(&feed.name), inputs.get_mut(&feed.name))
            else {
                continue;
            };
            let n = feed.row_len;
            match self.elem {
                Elem::F32 => gather(buffer.f32s_mut(), &column.values, n, rows),
                Elem::F64 => {
                    for (to, &row) in buffer.f64s_mut().chunks_exact_mut(n).zip(rows) {
                        to.iter_mut()
                            .zip(&column.values[row * n..(row + 1) * n])
                            .for_each(|(d, &s)| *d = f64::from(s));
                    }
                }
            }
        }
        // The store first: it holds most of the buffers a step binds (parameters, optimizer
        // state, the step's scalars), and no name is in both (inputs are named by the model's
        // inputs and masks, which no parameter or state shares).
        exe.run(&mut [store, inputs]).map_err(|e| e.to_string())?;
        Ok(exe)
    }

    /// The program compiled for `batch`.
    ///
    /// # Panics
    /// If none was compiled for it ([`Runner::compile`] first).
    pub(super) fn executable(&mut self, batch: usize) -> &mut Executable {
        &mut self
            .programs
            .get_mut(&batch)
            .expect("compiled for this batch")
            .0
    }
}

/// Copies the examples `rows` of `column` (rows of `n` values) into consecutive rows of `to`.
/// Rows of up to four values (a small model's inputs and labels) are copied by moves of a
/// size fixed at compile time: a copy whose length is known only at run time is a call to
/// `memcpy` per row (32 calls a step for a tiny model's inputs and labels at batch 16).
fn gather(to: &mut [f32], column: &[f32], n: usize, rows: &[usize]) {
    fn fixed<const N: usize>(to: &mut [f32], column: &[f32], rows: &[usize]) {
        for (to, &row) in to.chunks_exact_mut(N).zip(rows) {
            let from: &[f32; N] = column[row * N..(row + 1) * N]
                .try_into()
                .expect("a row of N values");
            to.copy_from_slice(from);
        }
    }
    match n {
        1 => fixed::<1>(to, column, rows),
        2 => fixed::<2>(to, column, rows),
        3 => fixed::<3>(to, column, rows),
        4 => fixed::<4>(to, column, rows),
        _ => {
            for (to, &row) in to.chunks_exact_mut(n).zip(rows) {
                to.copy_from_slice(&column[row * n..(row + 1) * n]);
            }
        }
    }
}

/// The train-step programs, and the evaluation and gradient programs, each cached by batch size.
pub(super) struct Runners {
    pub(super) train: Runner,
    pub(super) evaluate: Runner,
    pub(super) gradients: Runner,
}

impl Runners {
    pub(super) fn new(elem: Elem) -> Runners {
        Runners {
            train: Runner::new(ProgramKind::Train, elem),
            evaluate: Runner::new(ProgramKind::Evaluate, elem),
            gradients: Runner::new(ProgramKind::Gradients, elem),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::gather;

    #[test]
    fn gather_copies_the_chosen_rows_in_order_for_every_row_length() {
        for n in 1..=6 {
            let column: Vec<f32> = (0..5 * n).map(|v| v as f32).collect();
            let rows = [3, 0, 4, 4];
            let mut to = vec![-1.0; rows.len() * n];
            gather(&mut to, &column, n, &rows);
            let expected: Vec<f32> = rows
                .iter()
                .flat_map(|&r| column[r * n..(r + 1) * n].to_vec())
                .collect();
            assert_eq!(to, expected, "rows of {n}");
        }
    }
}
