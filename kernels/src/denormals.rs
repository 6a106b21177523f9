//! Denormal floats flushed to zero while nabla's code runs, as XLA and TensorFlow run theirs.
//!
//! On Intel cores an instruction that reads or produces a denormal (a float below 2^-126,
//! about 1.2e-38, in magnitude) takes a microcode assist of a hundred cycles or more, and
//! training makes them: once a softmax saturates, its gradient and everything downstream of it
//! sit at 1e-39 and below for the rest of the run. On an Intel Xeon (Ice Lake) the tiny
//! 2-16-16-2 model's step went from 1.6 µs in its first thousand steps to 3.7 µs after,
//! its weight gradient's kernel eight times slower; AMD's cores take no such assist. Flushing
//! changes no result above 2^-126 in magnitude, and NaN and infinity pass as before.
//!
//! The mode is the thread's floating-point control register: x86-64's MXCSR (FTZ, results
//! flushed, and DAZ, operands read as zero) and AArch64's FPCR (FZ, both). A [`Scope`] sets it
//! for the compiled code it surrounds and gives the caller's back when dropped, so a program
//! that embeds nabla, or links an exported library, keeps its own; the thread pool runs every
//! part under the control register of the thread that forked the job ([`Control`]), so results
//! do not depend on which thread ran a part. `NABLA_DENORMALS=keep` keeps IEEE gradual
//! underflow (PyTorch's default) at the cost above.

use std::sync::OnceLock;

/// What compiled code does with denormal floats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Results below 2^-126 are zero and denormal operands read as zero (the default).
    Flush,
    /// IEEE 754 gradual underflow.
    Keep,
}

/// The values `NABLA_DENORMALS` takes.
pub const NAMES: &str = "flush, keep";

impl Mode {
    /// The mode `name` names.
    pub fn named(name: &str) -> Result<Mode, String> {
        match name {
            "flush" => Ok(Mode::Flush),
            "keep" => Ok(Mode::Keep),
            _ => Err(format!(
                "NABLA_DENORMALS={name}: not a mode; give one of {NAMES}"
            )),
        }
    }
}

/// The mode `NABLA_DENORMALS` asks for (flush when unset), read once.
fn chosen() -> &'static Result<Mode, String> {
    static MODE: OnceLock<Result<Mode, String>> = OnceLock::new();
    MODE.get_or_init(|| match std::env::var("NABLA_DENORMALS") {
        Ok(name) => Mode::named(&name),
        Err(_) => Ok(Mode::Flush),
    })
}

/// The mode `NABLA_DENORMALS` asks for, or why it is not one.
pub fn mode() -> Result<Mode, String> {
    chosen().clone()
}

/// A thread's floating-point control register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Control(u64);

impl Control {
    /// This thread's.
    pub(crate) fn current() -> Control {
        Control(register::read())
    }

    /// Makes this thread's register `self`, writing it only when it differs (a write stalls
    /// the pipeline on some cores).
    pub(crate) fn adopt(self) {
        if register::read() != self.0 {
            register::write(self.0);
        }
    }

    fn with(self, mode: Mode) -> Control {
        match mode {
            Mode::Flush => Control(self.0 | register::FLUSH),
            Mode::Keep => Control(self.0 & !register::FLUSH),
        }
    }
}

/// The denormal mode [`mode`] names set on this thread until the scope is dropped, when the
/// thread's register is restored; where the variable names no mode (the compiler has reported
/// it), denormals are flushed.
#[must_use = "the mode holds only while the scope lives"]
pub struct Scope {
    saved: Control,
}

impl Scope {
    /// Sets the mode on this thread.
    pub fn enter() -> Scope {
        let saved = Control::current();
        // The cached choice by reference: `mode()` would copy an error's message on every run.
        saved
            .with(*chosen().as_ref().unwrap_or(&Mode::Flush))
            .adopt();
        Scope { saved }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        self.saved.adopt();
    }
}

#[cfg(target_arch = "x86_64")]
mod register {
    use std::arch::asm;

    /// MXCSR's flush-to-zero (bit 15) and denormals-are-zero (bit 6).
    pub const FLUSH: u64 = 1 << 15 | 1 << 6;

    pub fn read() -> u64 {
        let mut csr = 0u32;
        // SAFETY: stores the 32-bit MXCSR to a local.
        unsafe { asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags)) };
        u64::from(csr)
    }

    pub fn write(value: u64) {
        let csr = value as u32;
        // SAFETY: the value is MXCSR as read, with only the FTZ and DAZ bits changed, which
        // every x86-64 CPU has; the asm is not `nomem`, so the compiler keeps the float
        // operations around it in order.
        unsafe { asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, preserves_flags)) };
    }
}

#[cfg(target_arch = "aarch64")]
mod register {
    use std::arch::asm;

    /// FPCR's flush-to-zero (bit 24), for operands and results.
    pub const FLUSH: u64 = 1 << 24;

    pub fn read() -> u64 {
        let value: u64;
        // SAFETY: reads FPCR.
        unsafe { asm!("mrs {}, fpcr", out(reg) value, options(nostack, preserves_flags)) };
        value
    }

    pub fn write(value: u64) {
        // SAFETY: the value is FPCR as read, with only the FZ bit changed.
        unsafe { asm!("msr fpcr, {}", in(reg) value, options(nostack, preserves_flags)) };
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
mod register {
    /// No control register is known here: denormals are kept.
    pub const FLUSH: u64 = 0;

    pub fn read() -> u64 {
        0
    }

    pub fn write(_: u64) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hint::black_box;

    /// Half the smallest normal float: a denormal under IEEE arithmetic.
    fn half_the_smallest_normal() -> f32 {
        black_box(f32::MIN_POSITIVE) * black_box(0.5)
    }

    #[test]
    fn a_scope_flushes_and_gives_the_callers_mode_back() {
        assert!(half_the_smallest_normal() > 0.0, "IEEE outside a scope");
        {
            let _scope = Scope::enter();
            assert_eq!(half_the_smallest_normal(), 0.0);
            assert_eq!(
                black_box(f32::from_bits(1)) * black_box(2.0),
                0.0,
                "operands read as zero"
            );
            assert!((black_box(f32::NAN) * black_box(0.5)).is_nan());
            assert_eq!(
                black_box(f32::MIN_POSITIVE) * black_box(2.0),
                f32::MIN_POSITIVE * 2.0
            );
        }
        assert!(
            half_the_smallest_normal() > 0.0,
            "the caller's mode restored"
        );
    }

    #[test]
    fn keep_clears_a_callers_flush() {
        let outside = Control::current();
        outside.with(Mode::Flush).adopt();
        assert_eq!(half_the_smallest_normal(), 0.0);
        outside.with(Mode::Keep).adopt();
        assert!(half_the_smallest_normal() > 0.0);
        outside.adopt();
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(Mode::named("keep"), Ok(Mode::Keep));
        assert_eq!(Mode::named("flush"), Ok(Mode::Flush));
        let error = Mode::named("ftz").unwrap_err();
        assert!(error.contains("flush, keep"), "{error}");
    }
}
