//! Buffer accesses of generated code: a slot's start from the buffer table, affine element
//! offsets, and the loads and stores at them. Every access is in bounds (the runtime checked
//! each buffer against the plan), so none traps. A load from a slot the kernel never writes
//! is also read-only and free to move ([`Emitter::read_flags`]): Cranelift's optimiser treats
//! it as pure, so a load a loop does not vary (a per-channel scale, a bias, the row of a
//! broadcast) leaves the loop with everything computed from it.

use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Type, Value, types};

use super::clif::Emitter;

/// Memory flags for buffer accesses: in bounds (the plan guarantees it), alignment not assumed
/// for vectors that start mid-buffer.
fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

impl Emitter<'_, '_> {
    /// The flags for loads from `slot`. A slot the kernel never writes is read-only while it
    /// runs (two slots never share memory within a kernel: temporaries share buffers only
    /// between kernels, and a reshape keeps its operand's slot), and every load the emitter
    /// makes is unconditional and in bounds, so such loads may move: Cranelift's optimiser
    /// then treats them as pure, and hoists the ones a loop does not vary (a per-channel
    /// scale, a bias, the row of a broadcast) out of it with what they feed.
    pub(super) fn read_flags(&self, slot: usize) -> MemFlagsData {
        if self.written.contains(&slot) {
            flags()
        } else {
            flags().with_readonly().with_can_move()
        }
    }

    /// The start of buffer `slot` (loaded in the entry block by [`super::clif::emit_kernel`]).
    pub(super) fn base(&mut self, slot: usize) -> Value {
        if let Some(&v) = self.bases.get(&slot) {
            return v;
        }
        let offset = (slot * self.t.pointer.bytes() as usize) as i32;
        let v = self
            .b
            .ins()
            .load(self.t.pointer, MemFlagsData::trusted(), self.table, offset);
        self.bases.insert(slot, v);
        v
    }

    /// `base + index * element size`.
    pub(super) fn addr(&mut self, base: Value, index: Value) -> Value {
        let bytes = self.b.ins().imul_imm_s(index, self.t.size());
        self.b.ins().iadd(base, bytes)
    }

    pub(super) fn store(&mut self, value: Value, base: Value, index: Value) {
        let a = self.addr(base, index);
        self.b.ins().store(flags(), value, a, 0);
    }

    /// `Σ coeffs[k] * vars[k]` (an element offset).
    pub(super) fn offset(&mut self, coeffs: &[i64], vars: &[Value]) -> Value {
        let mut total: Option<Value> = None;
        for (&c, &v) in coeffs.iter().zip(vars) {
            if c == 0 {
                continue;
            }
            let term = if c == 1 {
                v
            } else {
                self.b.ins().imul_imm_s(v, c)
            };
            total = Some(match total {
                Some(t) => self.b.ins().iadd(t, term),
                None => term,
            });
        }
        total.unwrap_or_else(|| self.b.ins().iconst(types::I64, 0))
    }

    /// The element of `slot` at the affine offset, as `ty`: a vector load, a splat or a gather.
    pub(super) fn load_at(
        &mut self,
        slot: usize,
        coeffs: &[i64],
        vars: &[Value],
        ty: Type,
    ) -> Value {
        let base = self.base(slot);
        let at = self.offset(coeffs, vars);
        let address = self.addr(base, at);
        let stride = coeffs.last().copied().unwrap_or(0) * self.t.size();
        let flags = self.read_flags(slot);
        self.load_lanes(ty, address, 0, stride, flags)
    }

    /// The value of type `ty` at `address + offset` bytes, its lanes `stride` bytes apart: a
    /// scalar or vector load, a splat (stride 0) or a gather, with the flags of the slot it
    /// reads ([`Emitter::read_flags`]).
    pub(super) fn load_lanes(
        &mut self,
        ty: Type,
        address: Value,
        offset: i64,
        stride: i64,
        flags: MemFlagsData,
    ) -> Value {
        let load = |e: &mut Self, ty: Type, offset: i64| match i32::try_from(offset) {
            Ok(imm) => e.b.ins().load(ty, flags, address, imm),
            Err(_) => {
                let at = e.b.ins().iadd_imm_s(address, offset);
                e.b.ins().load(ty, flags, at, 0)
            }
        };
        let sty = self.t.scalar;
        if !ty.is_vector() || stride == self.t.size() {
            return load(self, ty, offset);
        }
        if stride == 0 {
            let x = load(self, sty, offset);
            return self.b.ins().splat(ty, x);
        }
        let mut v = self.constant(ty, 0.0);
        for lane in 0..self.t.lanes() {
            let x = load(self, sty, offset + lane * stride);
            v = self.b.ins().insertlane(v, x, lane as u8);
        }
        v
    }

    /// Stores `value` at the affine offset: a vector's lanes go to consecutive elements for a
    /// unit innermost coefficient, else each to its own (a scatter).
    pub(super) fn store_at(&mut self, value: Value, slot: usize, coeffs: &[i64], vars: &[Value]) {
        let base = self.base(slot);
        let at = self.offset(coeffs, vars);
        let stride = coeffs.last().copied().unwrap_or(0);
        if !self.b.func.dfg.value_type(value).is_vector() || stride == 1 {
            return self.store(value, base, at);
        }
        let address = self.addr(base, at);
        for lane in 0..self.t.lanes() {
            let x = self.b.ins().extractlane(value, lane as u8);
            let at = self
                .b
                .ins()
                .iadd_imm_s(address, lane * stride * self.t.size());
            self.b.ins().store(flags(), x, at, 0);
        }
    }
}
