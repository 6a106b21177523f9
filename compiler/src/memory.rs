//! Memory planning: which temporaries of a lowered [`Plan`] share buffers.
//!
//! Lowering gives every stored value a temporary of its own. Here the temporaries no kernel
//! touches any more (those an in-place write replaced) are dropped, and the rest are packed
//! into as few buffers as their lifetimes allow, so a training step holds about as much memory
//! as its widest point needs, not the sum of all its values.
//!
//! External buffers may be laid out as parts of one buffer ([`Packing`]): a data-parallel train
//! step writes every gradient straight into the one buffer that a single all-reduce sums, and
//! the update reads them from it, with no copy on either side.
//!
//! **Architecture invariant:** only slots change: every kernel computes what it computed, in the
//! same order, and results keep exact-size buffers of their own.

use crate::kernel::{Kernel, Plan};
use crate::lower::LowerError;

/// External buffers laid out one after another in one buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packing {
    /// The buffer holding them.
    pub buffer: String,
    /// Each part's own name (as the graph's inputs and assignments call it) and its first
    /// element in `buffer`; parts do not overlap.
    pub parts: Vec<(String, usize)>,
}

/// `plan` with its temporaries shared where their lifetimes allow, and its external buffers
/// named by `packing` bound to their parts of the packed buffer.
pub fn plan(mut plan: Plan, packing: Option<&Packing>) -> Result<Plan, LowerError> {
    drop_unused_temporaries(&mut plan);
    reuse_temporaries(&mut plan);
    if let Some(packing) = packing {
        pack(&mut plan, packing)?;
    }
    Ok(plan)
}

/// Binds each external slot that `packing` names to its part of the packed buffer; a part
/// that would overlap the next one is an error.
fn pack(plan: &mut Plan, packing: &Packing) -> Result<(), LowerError> {
    let mut starts: Vec<usize> = packing.parts.iter().map(|(_, at)| *at).collect();
    starts.sort_unstable();
    for spec in &mut plan.buffers {
        let Some(name) = &spec.external else { continue };
        let Some((_, at)) = packing.parts.iter().find(|(part, _)| part == name) else {
            continue;
        };
        let next = starts.iter().find(|&&s| s > *at).copied();
        if next.is_some_and(|next| at + spec.len > next) {
            return Err(LowerError(format!(
                "`{name}` ({} elements from {at}) overlaps the next part of `{}`",
                spec.len, packing.buffer
            )));
        }
        spec.external = Some(packing.buffer.clone());
        spec.offset = Some(*at);
    }
    Ok(())
}

/// Removes temporaries no kernel touches any more (those replaced by in-place writes) and
/// renumbers the rest.
fn drop_unused_temporaries(plan: &mut Plan) {
    let mut used = vec![false; plan.buffers.len()];
    for (slot, b) in plan.buffers.iter().enumerate() {
        used[slot] = b.external.is_some();
    }
    for (_, slot) in &plan.outputs {
        used[*slot] = true;
    }
    for slot in plan.kernels.iter().flat_map(Kernel::slots) {
        used[slot] = true;
    }
    let mut new_index = vec![usize::MAX; used.len()];
    let mut buffers = Vec::new();
    for (slot, b) in plan.buffers.iter().enumerate() {
        if used[slot] {
            new_index[slot] = buffers.len();
            buffers.push(b.clone());
        }
    }
    plan.buffers = buffers;
    for (_, slot) in &mut plan.outputs {
        *slot = new_index[*slot];
    }
    for kernel in &mut plan.kernels {
        kernel.remap_slots(&|s| new_index[s]);
    }
}

/// Lets temporaries whose lifetimes do not overlap share one buffer: a temporary lives from the
/// first kernel that writes it to the last that reads it (results to the end of the run), and
/// temporaries are packed, in order of their first write, into the buffers already freed
/// (best fit by size, growing one when none is large enough) before a new one is made. Results
/// keep buffers of their own, of their exact size.
fn reuse_temporaries(plan: &mut Plan) {
    let end = plan.kernels.len();
    let slots = plan.buffers.len();
    let (mut first, mut last) = (vec![usize::MAX; slots], vec![0; slots]);
    for (k, kernel) in plan.kernels.iter().enumerate() {
        for phase in &kernel.phases {
            for s in phase.writes() {
                first[s] = first[s].min(k);
                last[s] = last[s].max(k);
            }
            for (s, _) in phase.loads() {
                last[s] = last[s].max(k);
            }
        }
    }
    let outputs: Vec<usize> = plan.outputs.iter().map(|(_, s)| *s).collect();
    for &slot in &outputs {
        last[slot] = end;
    }
    let mut temps: Vec<usize> = (0..slots)
        .filter(|&s| plan.buffers[s].external.is_none() && first[s] != usize::MAX)
        .collect();
    temps.sort_by_key(|&s| (first[s], s));
    // Each shared buffer: the slot standing for it, its size, and the last kernel using it.
    let mut shared: Vec<(usize, usize, usize)> = Vec::new();
    let mut map: Vec<usize> = (0..slots).collect();
    for s in temps {
        let len = plan.buffers[s].len;
        let free = |b: &&mut (usize, usize, usize)| b.2 < first[s];
        let fitting = shared
            .iter_mut()
            .filter(free)
            .filter(|b| b.1 >= len)
            .min_by_key(|b| b.1);
        let chosen = match fitting {
            // A result keeps a buffer of exactly its size: readers take its length as its size.
            _ if outputs.contains(&s) => None,
            Some(b) => Some(b),
            None => shared.iter_mut().filter(free).max_by_key(|b| b.1),
        };
        match chosen {
            Some(b) => {
                b.1 = b.1.max(len);
                b.2 = last[s];
                map[s] = b.0;
            }
            None => shared.push((s, len, last[s])),
        }
    }
    for &(slot, len, _) in &shared {
        plan.buffers[slot].len = len;
    }
    for (_, slot) in &mut plan.outputs {
        *slot = map[*slot];
    }
    for kernel in &mut plan.kernels {
        kernel.remap_slots(&|s| map[s]);
    }
    drop_unused_temporaries(plan);
}
