//! How a call with `n` examples is cut into runs of programs compiled for fixed batch sizes:
//! full batches of the largest size, then the remainder in the smallest compiled batch that
//! holds it, padded by repeating its last example. `nabla predict --batch` and an exported
//! library cut the same way, so they run the same programs on the same rows and agree bit for
//! bit (a program's result for one example can depend on the batch it was compiled for: a
//! product of one row takes another path than a product of many).

/// One run of a compiled program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// The call's first example in this run.
    pub start: usize,
    /// The call's examples in this run.
    pub rows: usize,
    /// The batch the program was compiled for: `rows` or more, the rest padding.
    pub batch: usize,
}

/// The runs for `n` examples given the compiled batch `sizes` (ascending, none zero, at least
/// one).
pub fn schedule(n: usize, sizes: &[usize]) -> impl Iterator<Item = Chunk> + '_ {
    let largest = sizes.last().copied().unwrap_or(1).max(1);
    (0..n.div_ceil(largest)).map(move |i| {
        let start = i * largest;
        let rows = largest.min(n - start);
        let batch = sizes
            .iter()
            .copied()
            .find(|&s| s >= rows)
            .unwrap_or(largest);
        Chunk { start, rows, batch }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(n: usize, sizes: &[usize]) -> Vec<(usize, usize, usize)> {
        schedule(n, sizes)
            .map(|c| (c.start, c.rows, c.batch))
            .collect()
    }

    #[test]
    fn full_batches_of_the_largest_then_the_smallest_batch_holding_the_rest() {
        assert_eq!(cut(0, &[1, 64]), vec![]);
        assert_eq!(cut(1, &[1, 64]), vec![(0, 1, 1)]);
        assert_eq!(cut(2, &[1, 64]), vec![(0, 2, 64)]);
        assert_eq!(
            cut(130, &[1, 8, 64]),
            vec![(0, 64, 64), (64, 64, 64), (128, 2, 8)]
        );
        assert_eq!(
            cut(129, &[1, 8, 64]),
            vec![(0, 64, 64), (64, 64, 64), (128, 1, 1)]
        );
        assert_eq!(cut(5, &[16]), vec![(0, 5, 16)]);
    }
}
