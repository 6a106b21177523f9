//! Tensors' storage: zero-initialised, 64-byte aligned allocations of f32 or f64 elements.
//! Large buffers are allocated with [`Buffer::try_zeros`], so running out of memory is an error
//! the caller reports, never an abort.
//!
//! Generated kernels receive raw pointers to these buffers; alignment lets them use full-width
//! vector loads, and the element count is fixed at creation so that the program can check every
//! buffer against its plan before any kernel runs.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;

/// The alignment of every buffer, in bytes (a cache line).
pub const ALIGN: usize = 64;

/// Element type of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
}

impl Elem {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::F64 => 8,
        }
    }
}

/// An aligned, zero-initialised array of floats.
pub struct Buffer {
    ptr: NonNull<u8>,
    len: usize,
    elem: Elem,
}

// The buffer owns its allocation exclusively.
unsafe impl Send for Buffer {}

/// A buffer that could not be allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocError {
    /// The bytes asked for.
    pub bytes: usize,
}

impl std::fmt::Display for AllocError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot allocate a buffer of {} bytes: out of memory",
            self.bytes
        )
    }
}

impl std::error::Error for AllocError {}

impl Buffer {
    /// `len` zeros, or an error when the memory cannot be had (never an abort).
    pub fn try_zeros(len: usize, elem: Elem) -> Result<Buffer, AllocError> {
        let bytes = len.saturating_mul(elem.size()).max(ALIGN);
        let layout = Layout::from_size_align(bytes, ALIGN).map_err(|_| AllocError { bytes })?;
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or(AllocError { bytes })?;
        Ok(Buffer { ptr, len, elem })
    }

    /// `len` zeros, for buffers known to be small; aborts like `Vec` when memory runs out.
    pub fn zeros(len: usize, elem: Elem) -> Buffer {
        Buffer::try_zeros(len, elem).unwrap_or_else(|e| {
            std::alloc::handle_alloc_error(
                Layout::from_size_align(e.bytes, ALIGN).unwrap_or(Layout::new::<u8>()),
            )
        })
    }

    /// A buffer holding `values`, converted to `elem`.
    pub fn from_f64(values: &[f64], elem: Elem) -> Buffer {
        let mut b = Buffer::zeros(values.len(), elem);
        b.write_f64(values);
        b
    }

    /// A buffer of `len` values drawn from `value(i)`, converted to `elem`; an error when the
    /// memory cannot be had.
    pub fn try_from_fn(
        len: usize,
        elem: Elem,
        mut value: impl FnMut(usize) -> f64,
    ) -> Result<Buffer, AllocError> {
        let mut b = Buffer::try_zeros(len, elem)?;
        match elem {
            Elem::F32 => b
                .f32s_mut()
                .iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = value(i) as f32),
            Elem::F64 => b
                .f64s_mut()
                .iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = value(i)),
        }
        Ok(b)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The element type.
    pub fn elem(&self) -> Elem {
        self.elem
    }

    /// The start of the data, for generated code.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The elements as f32 (the buffer must be f32).
    pub fn f32s(&self) -> &[f32] {
        assert_eq!(self.elem, Elem::F32);
        // SAFETY: the allocation holds `len` f32s, aligned, and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast(), self.len) }
    }

    /// The elements as mutable f32 (the buffer must be f32).
    pub fn f32s_mut(&mut self) -> &mut [f32] {
        assert_eq!(self.elem, Elem::F32);
        // SAFETY: as in `f32s`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast(), self.len) }
    }

    /// The elements as f64 (the buffer must be f64).
    pub fn f64s(&self) -> &[f64] {
        assert_eq!(self.elem, Elem::F64);
        // SAFETY: the allocation holds `len` f64s, aligned, and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast(), self.len) }
    }

    /// The elements as mutable f64 (the buffer must be f64).
    pub fn f64s_mut(&mut self) -> &mut [f64] {
        assert_eq!(self.elem, Elem::F64);
        // SAFETY: as in `f64s`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast(), self.len) }
    }

    /// Element `i` as f64.
    pub fn get(&self, i: usize) -> f64 {
        match self.elem {
            Elem::F32 => self.f32s()[i] as f64,
            Elem::F64 => self.f64s()[i],
        }
    }

    /// All elements as f64.
    pub fn to_f64(&self) -> Vec<f64> {
        (0..self.len).map(|i| self.get(i)).collect()
    }

    /// Overwrites every element with `other`'s (same length and type).
    pub fn copy_from(&mut self, other: &Buffer) {
        assert!(
            self.len == other.len && self.elem == other.elem,
            "copy between unlike buffers"
        );
        match self.elem {
            Elem::F32 => self.f32s_mut().copy_from_slice(other.f32s()),
            Elem::F64 => self.f64s_mut().copy_from_slice(other.f64s()),
        }
    }

    /// The index of the first NaN or infinite element.
    pub fn first_non_finite(&self) -> Option<usize> {
        match self.elem {
            Elem::F32 => self.f32s().iter().position(|v| !v.is_finite()),
            Elem::F64 => self.f64s().iter().position(|v| !v.is_finite()),
        }
    }

    /// Overwrites the first `values.len()` elements (at most `len`).
    pub fn write_f64(&mut self, values: &[f64]) {
        match self.elem {
            Elem::F32 => self
                .f32s_mut()
                .iter_mut()
                .zip(values)
                .for_each(|(d, &s)| *d = s as f32),
            Elem::F64 => self
                .f64s_mut()
                .iter_mut()
                .zip(values)
                .for_each(|(d, &s)| *d = s),
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let bytes = (self.len * self.elem.size()).max(ALIGN);
        let layout = Layout::from_size_align(bytes, ALIGN).expect("the layout it was made with");
        // SAFETY: allocated in `zeros` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), layout) }
    }
}

impl Clone for Buffer {
    fn clone(&self) -> Buffer {
        let b = Buffer::zeros(self.len, self.elem);
        let bytes = self.len * self.elem.size();
        // SAFETY: both allocations hold at least `bytes` bytes and do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), b.ptr.as_ptr(), bytes) };
        b
    }
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer({:?} x {})", self.elem, self.len)
    }
}

/// The memory this machine can still hand out (Linux's `MemAvailable`), when it can be known.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_zeroed_and_typed() {
        for len in [0, 1, 3, 17, 1023] {
            let b = Buffer::zeros(len, Elem::F32);
            assert_eq!(b.f32s().as_ptr() as usize % ALIGN, 0);
            assert!(b.f32s().iter().all(|&v| v == 0.0));
        }
        let b = Buffer::from_f64(&[1.5, -2.0], Elem::F64);
        assert_eq!(b.clone().to_f64(), vec![1.5, -2.0]);
    }
}
