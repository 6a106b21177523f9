//! Tensor shapes whose dimensions are either known numbers or named symbols (the batch `B`).
//!
//! A model is checked once with its symbols free, so that `nabla check` can say `[B, 512]`, and
//! bound to numbers (`Graph::bind`) before anything runs. All shape rules live here, so the DSL
//! checker and the graph builder can never disagree about what is well-shaped.

use std::fmt;
use std::sync::Arc;

/// The largest element count a single tensor may have (2^31 - 1): generated code indexes with
/// 32-bit offsets, and no tensor this big fits a training run on one machine anyway.
pub const MAX_ELEMENTS: u64 = i32::MAX as u64;

/// One dimension of a shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    /// A size known now.
    Known(usize),
    /// A size bound later, by name (for example the batch `B`).
    Sym(Arc<str>),
    /// A known multiple (at least 2) of a symbolic size: `[B, 64, F]` seen as rows is
    /// `[B*64, F]`.
    Multiple(usize, Arc<str>),
}

impl Dim {
    /// The size, if it is known.
    pub fn known(&self) -> Option<usize> {
        match self {
            Dim::Known(n) => Some(*n),
            Dim::Sym(_) | Dim::Multiple(..) => None,
        }
    }

    /// This size times `k`.
    pub fn times(&self, k: usize) -> Dim {
        match self {
            Dim::Known(n) => Dim::Known(n * k),
            _ if k == 1 => self.clone(),
            Dim::Sym(s) => Dim::Multiple(k, s.clone()),
            Dim::Multiple(j, s) => Dim::Multiple(j * k, s.clone()),
        }
    }

    /// A symbolic dimension.
    pub fn sym(name: &str) -> Dim {
        Dim::Sym(Arc::from(name))
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim::Known(n)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(n) => write!(f, "{n}"),
            Dim::Sym(s) => write!(f, "{s}"),
            Dim::Multiple(k, s) => write!(f, "{s}*{k}"),
        }
    }
}

/// A tensor shape, outermost dimension first (row-major). The empty shape is a scalar.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Shape(pub Vec<Dim>);

/// Why a shape rule rejected its operands.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ShapeError(pub String);

impl From<nabla_kernels::WindowError> for ShapeError {
    fn from(e: nabla_kernels::WindowError) -> ShapeError {
        ShapeError(e.0)
    }
}

impl Shape {
    /// The scalar shape `[]`.
    pub fn scalar() -> Shape {
        Shape(Vec::new())
    }

    /// A shape of known dimensions.
    pub fn known(dims: &[usize]) -> Shape {
        Shape(dims.iter().map(|&d| Dim::Known(d)).collect())
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// The dimensions.
    pub fn dims(&self) -> &[Dim] {
        &self.0
    }

    /// The dimensions as numbers, if none is symbolic.
    pub fn concrete(&self) -> Option<Vec<usize>> {
        self.0.iter().map(Dim::known).collect()
    }

    /// The element count, if every dimension is known.
    pub fn numel(&self) -> Option<usize> {
        self.concrete().map(|d| d.iter().product())
    }

    /// The same shape with symbols replaced by `lookup`'s numbers where it has one.
    pub fn bind(&self, lookup: &dyn Fn(&str) -> Option<usize>) -> Shape {
        Shape(
            self.0
                .iter()
                .map(|d| match d {
                    Dim::Sym(s) => lookup(s).map_or_else(|| d.clone(), Dim::Known),
                    Dim::Multiple(k, s) => {
                        lookup(s).map_or_else(|| d.clone(), |v| Dim::Known(v * k))
                    }
                    known => known.clone(),
                })
                .collect(),
        )
    }

    /// Product of the known dimensions and the symbolic ones sorted, for comparing sizes of
    /// shapes that share symbols (a reshape of `[B, 28, 28]` to `[B, 784]` keeps its size).
    fn size_signature(&self) -> (u128, Vec<Arc<str>>) {
        let mut known: u128 = 1;
        let mut syms = Vec::new();
        for d in &self.0 {
            match d {
                Dim::Known(n) => known = known.saturating_mul(*n as u128),
                Dim::Sym(s) => syms.push(s.clone()),
                Dim::Multiple(k, s) => {
                    known = known.saturating_mul(*k as u128);
                    syms.push(s.clone());
                }
            }
        }
        syms.sort();
        (known, syms)
    }

    /// Whether two shapes have the same number of elements for every binding of their symbols.
    pub fn same_size(&self, other: &Shape) -> bool {
        self.size_signature() == other.size_signature()
    }

    /// Checks the element count of the known part against [`MAX_ELEMENTS`].
    pub fn check_size(&self) -> Result<(), ShapeError> {
        let (known, _) = self.size_signature();
        if known > MAX_ELEMENTS as u128 {
            return Err(ShapeError(format!(
                "shape {self} has {known} elements; at most {MAX_ELEMENTS} are supported"
            )));
        }
        Ok(())
    }

    /// NumPy broadcasting of two shapes: dimensions are aligned from the right and each pair must
    /// be equal or contain a 1.
    pub fn broadcast(a: &Shape, b: &Shape) -> Result<Shape, ShapeError> {
        let rank = a.rank().max(b.rank());
        let mut out = Vec::with_capacity(rank);
        for i in 0..rank {
            let da = dim_from_right(a, rank - 1 - i);
            let db = dim_from_right(b, rank - 1 - i);
            out.push(match (da, db) {
                (x, y) if x == y => x.clone(),
                (Dim::Known(1), y) => y.clone(),
                (x, Dim::Known(1)) => x.clone(),
                _ => {
                    return Err(ShapeError(format!(
                        "shapes {a} and {b} do not broadcast: dimension {da} does not match {db}"
                    )));
                }
            });
        }
        Ok(Shape(out))
    }

    /// Whether `self` broadcasts to exactly `target` (NumPy rules, one direction).
    pub fn broadcasts_to(&self, target: &Shape) -> bool {
        self.rank() <= target.rank() && Shape::broadcast(self, target).is_ok_and(|s| &s == target)
    }

    /// Resolves a possibly negative axis against this rank.
    pub fn axis(&self, axis: i64) -> Result<usize, ShapeError> {
        let rank = self.rank() as i64;
        let resolved = if axis < 0 { axis + rank } else { axis };
        if (0..rank).contains(&resolved) {
            Ok(resolved as usize)
        } else {
            Err(ShapeError(format!(
                "axis {axis} is out of range for shape {self} (rank {rank})"
            )))
        }
    }
}

/// Row-major strides of a concrete shape, in elements.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// Strides for reading a tensor of shape `shape` at indices of rank `rank` with NumPy
/// broadcasting: missing leading dimensions and size-1 dimensions get stride 0.
pub fn broadcast_strides(shape: &[usize], rank: usize) -> Vec<usize> {
    let own = strides(shape);
    let lead = rank - shape.len();
    (0..rank)
        .map(|i| {
            if i < lead || shape[i - lead] == 1 {
                0
            } else {
                own[i - lead]
            }
        })
        .collect()
}

/// The dimension `k` places from the right (0 = last), with missing leading dimensions read as 1.
fn dim_from_right(s: &Shape, k: usize) -> &Dim {
    const ONE: &Dim = &Dim::Known(1);
    if k < s.rank() {
        &s.0[s.rank() - 1 - k]
    } else {
        ONE
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

/// `[elements before axis, the axis, elements after it]` of a row-major shape: how slices and
/// concatenations see a tensor.
pub fn around(shape: &[usize], axis: usize) -> [usize; 3] {
    [
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(dims: &[Dim]) -> Shape {
        Shape(dims.to_vec())
    }

    #[test]
    fn broadcasting_follows_numpy() {
        let b = Dim::sym("B");
        let x = s(&[b.clone(), 3.into()]);
        assert_eq!(Shape::broadcast(&x, &Shape::known(&[3])).unwrap(), x);
        assert_eq!(Shape::broadcast(&x, &Shape::known(&[1, 3])).unwrap(), x);
        assert_eq!(Shape::broadcast(&Shape::scalar(), &x).unwrap(), x);
        let err = Shape::broadcast(&x, &Shape::known(&[4])).unwrap_err();
        assert_eq!(
            err.0,
            "shapes [B, 3] and [4] do not broadcast: dimension 3 does not match 4"
        );
        assert!(Shape::known(&[3]).broadcasts_to(&x));
        assert!(!x.broadcasts_to(&Shape::known(&[3])));
    }

    #[test]
    fn sizes_compare_with_symbols() {
        let b = Dim::sym("B");
        let img = s(&[b.clone(), 28.into(), 28.into()]);
        assert!(img.same_size(&s(&[b.clone(), 784.into()])));
        assert!(!img.same_size(&Shape::known(&[784])));
        assert!(Shape::known(&[100_000, 100_000]).check_size().is_err());
    }
}
