//! The buffers a run keeps by name: parameters, optimizer and layer state, the step's scalar
//! inputs (learning rate, bias corrections) and dropout masks, with how each is initialised,
//! filled before a step, and checked.

use super::contract::{ModelInfo, numel};
use crate::data::Dataset;
use crate::{Buffer, Buffers, Elem, Rng};

/// The stream tag of dropout masks, apart from every epoch's shuffle.
pub(super) const MASK_STREAM: u64 = 0x6d61_736b;

/// Fills the masks of `info` for step `step` of a run seeded with `seed`: mask `k` draws from
/// `Rng::stream(seed, [tag, k, step])`, so a step's masks never depend on earlier steps.
pub(super) fn fill_masks(info: &ModelInfo, seed: u64, step: usize, inputs: &mut Store) {
    for (k, mask) in info.masks.iter().enumerate() {
        let mut rng = Rng::stream(seed, &[MASK_STREAM, k as u64, step as u64]);
        let kept = 1.0 / (1.0 - mask.p);
        let mut draw = || {
            if rng.uniform(0.0, 1.0) >= mask.p {
                kept
            } else {
                0.0
            }
        };
        let buffer = inputs
            .get_mut(&mask.name)
            .expect("allocated with the program");
        match buffer.elem() {
            Elem::F32 => buffer
                .f32s_mut()
                .iter_mut()
                .for_each(|v| *v = draw() as f32),
            Elem::F64 => buffer.f64s_mut().iter_mut().for_each(|v| *v = draw()),
        }
    }
}

/// Parameters, optimizer state and scalar inputs, by buffer name, each at a place a program
/// resolves once ([`Buffers`]).
pub type Store = Buffers;

/// Initialises every parameter from its initialiser (in order, from `seed`) and zeroes the
/// optimizer state; an error when the memory cannot be had.
pub fn init_store(info: &ModelInfo, seed: u64, elem: Elem) -> Result<Store, String> {
    let mut rng = Rng::seeded(seed);
    let mut store = Store::default();
    for p in &info.params {
        let buffer = Buffer::try_from_fn(numel(&p.shape), elem, |i| p.init.draw(i, &mut rng))
            .map_err(|e| format!("parameter `{}`: {e}", p.name))?;
        store.insert(p.name.clone(), buffer);
    }
    for (name, shape) in &info.states {
        let buffer = Buffer::try_zeros(numel(shape), elem)
            .map_err(|e| format!("optimizer state `{name}`: {e}"))?;
        store.insert(name.clone(), buffer);
    }
    Ok(store)
}

/// Checks that `data` feeds every input (and every target, unless `inputs_only`) with rows of
/// the right size and valid class labels.
pub fn validate(info: &ModelInfo, data: &Dataset, inputs_only: bool) -> Result<(), String> {
    for feed in info.feeds.iter().filter(|f| !(inputs_only && f.target)) {
        if let (Some(v), Some(classes)) = (&data.vocabulary, feed.classes)
            && v.tokens.len() > classes
        {
            return Err(format!(
                "{} has {} distinct tokens, but `{}` takes indices in 0..{classes}: give the model's embedding (and its output layer) {} rows",
                data.origin,
                v.tokens.len(),
                feed.name,
                v.tokens.len()
            ));
        }
        let column = data
            .column(&feed.name)
            .ok_or_else(|| format!("{} has no values for `{}`", data.origin, feed.name))?;
        if column.row_len != feed.row_len {
            return Err(format!(
                "{} gives `{}` {} value{} per example, but the model needs {}",
                data.origin_of(column),
                feed.name,
                column.row_len,
                if column.row_len == 1 { "" } else { "s" },
                feed.row_len
            ));
        }
        if let Some(classes) = feed.classes
            && let Some((i, v)) = column
                .values
                .iter()
                .enumerate()
                .find(|(_, v)| v.fract() != 0.0 || **v < 0.0 || **v >= classes as f32)
        {
            let (row, at) = (i / feed.row_len.max(1), i % feed.row_len.max(1));
            let position = if feed.row_len > 1 {
                format!(", position {at}")
            } else {
                String::new()
            };
            return Err(format!(
                "{}: `{}` value {v} of example {row}{position} is not an index in 0..{classes}",
                data.origin_of(column),
                feed.name
            ));
        }
    }
    if data.rows == 0 {
        return Err(format!("{} has no examples", data.origin));
    }
    Ok(())
}

/// Copies every parameter and optimizer-state buffer into `snapshot`, allocating its buffers
/// on first use only.
pub(super) fn snapshot(
    info: &ModelInfo,
    store: &Store,
    snapshot: &mut Store,
) -> Result<(), String> {
    let names = info
        .params
        .iter()
        .map(|p| &p.name)
        .chain(info.states.iter().map(|s| &s.0));
    for name in names {
        let buffer = &store[name];
        if !snapshot.contains_key(name) {
            let copy = Buffer::try_zeros(buffer.len(), buffer.elem())
                .map_err(|e| format!("a snapshot of `{name}` for the divergence guard: {e}"))?;
            snapshot.insert(name.clone(), copy);
        }
        snapshot
            .get_mut(name)
            .expect("inserted above")
            .copy_from(buffer);
    }
    Ok(())
}

/// The first non-finite element of a parameter or optimizer-state buffer: name, index, value.
pub(super) fn first_non_finite(info: &ModelInfo, store: &Store) -> Option<(String, usize, f64)> {
    let names = info
        .params
        .iter()
        .map(|p| &p.name)
        .chain(info.states.iter().map(|s| &s.0));
    names.into_iter().find_map(|name| {
        let b = &store[name];
        b.first_non_finite().map(|i| (name.clone(), i, b.get(i)))
    })
}

/// Adds the scalar inputs of a train step (learning rate, bias corrections) to the store.
pub(super) fn insert_step_scalars(info: &ModelInfo, elem: Elem, store: &mut Store) {
    store.insert(info.lr_name.clone(), Buffer::zeros(1, elem));
    if let Some(bc) = &info.bias_correction {
        for (name, _) in &bc.terms {
            store.insert(name.clone(), Buffer::zeros(1, elem));
        }
    }
}

/// Writes step `step`'s learning rate and bias corrections `1 / (1 - beta^(step + 1))`.
pub(super) fn feed_step_scalars(info: &ModelInfo, lr: f64, step: usize, store: &mut Store) {
    let mut set = |name: &str, value: f64| {
        store
            .get_mut(name)
            .expect("inserted by insert_step_scalars")
            .write_f64(&[value]);
    };
    set(&info.lr_name, lr);
    if let Some(bc) = &info.bias_correction {
        for (name, beta) in &bc.terms {
            set(
                name,
                1.0 / (1.0 - beta.powi((step + 1).min(i32::MAX as usize) as i32)),
            );
        }
    }
}
