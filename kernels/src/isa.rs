//! The instruction-set level nabla's code runs at: the CPU's best by default, or a lesser one
//! that `NABLA_ISA` names (`avx2`, `baseline`; `avx512` to insist on the best), so that the
//! paths a lesser CPU takes are benchmarked and differentially tested on one machine. It
//! decides the matrix products' microkernels ([`crate::gemm`] calls the `gemm` crate's kernels
//! for that level instead of its own dispatch) and the ISA the JIT compiles generated kernels
//! for (the compiler's code generation maps each level to a CPU of its own).

use std::sync::OnceLock;

/// An instruction-set level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// The best the CPU has, as the `gemm` crate and Cranelift detect it.
    Native,
    /// AVX-512 (`x86-64-v4`).
    Avx512,
    /// AVX2 and FMA (`x86-64-v3`).
    Avx2,
    /// SSE2 only (every x86-64): scalar products.
    Baseline,
}

/// The values `NABLA_ISA` takes.
pub const NAMES: &str = "native, avx512, avx2, baseline";

impl Level {
    /// The level `name` names, if this CPU has it.
    pub fn named(name: &str) -> Result<Level, String> {
        let level = match name {
            "native" => return Ok(Level::Native),
            "avx512" => Level::Avx512,
            "avx2" => Level::Avx2,
            "baseline" => Level::Baseline,
            _ => {
                return Err(format!(
                    "NABLA_ISA={name}: not a level; give one of {NAMES}"
                ));
            }
        };
        if level.supported() {
            Ok(level)
        } else {
            Err(format!("NABLA_ISA={name}: this CPU cannot run it"))
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn supported(self) -> bool {
        match self {
            Level::Native | Level::Baseline => true,
            Level::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            Level::Avx512 => is_x86_feature_detected!("avx512f"),
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn supported(self) -> bool {
        self == Level::Native
    }
}

/// The level `NABLA_ISA` asks for (native when unset), read once.
fn chosen() -> &'static Result<Level, String> {
    static LEVEL: OnceLock<Result<Level, String>> = OnceLock::new();
    LEVEL.get_or_init(|| match std::env::var("NABLA_ISA") {
        Ok(name) => Level::named(&name),
        Err(_) => Ok(Level::Native),
    })
}

/// The level `NABLA_ISA` asks for, or why it cannot be had.
pub fn level() -> Result<Level, String> {
    chosen().clone()
}

/// The level every matrix product runs at: the one asked for, native when that is not a
/// level this CPU has (the compiler has reported it before any product runs). Called on every
/// product, so it reads the cached choice without copying its error.
#[cfg(target_arch = "x86_64")]
pub(crate) fn of_products() -> Level {
    *chosen().as_ref().unwrap_or(&Level::Native)
}

/// The widest build of the library's precompiled vector code ([`crate::tiles`], and
/// [`crate::lanes`] in its AVX2 build) that the CPU has and `NABLA_ISA` allows.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wide {
    /// 512-bit registers (AVX-512F).
    Avx512,
    /// 256-bit registers with fused multiply-adds (AVX2 and FMA).
    Avx2,
    /// None: SSE2 code as Rust compiles it for every x86-64.
    None,
}

/// The widest build the CPU has and `NABLA_ISA` allows, decided once.
#[cfg(target_arch = "x86_64")]
pub(crate) fn wide() -> Wide {
    static WIDE: OnceLock<Wide> = OnceLock::new();
    *WIDE.get_or_init(|| match of_products() {
        Level::Baseline => Wide::None,
        // The AVX-512 build also uses AVX2 and FMA (for its narrow last columns).
        Level::Native | Level::Avx512 if Level::Avx512.supported() && Level::Avx2.supported() => {
            Wide::Avx512
        }
        Level::Native | Level::Avx512 | Level::Avx2 if Level::Avx2.supported() => Wide::Avx2,
        _ => Wide::None,
    })
}

/// Whether the library's own loops (attention's rows, [`crate::lanes`]) may run in their AVX2
/// build: the CPU has AVX2 and FMA, and `NABLA_ISA` does not ask for less.
#[cfg(target_arch = "x86_64")]
pub(crate) fn wide_loops() -> bool {
    wide() != Wide::None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn levels_are_named_and_checked_against_the_cpu() {
        assert_eq!(Level::named("native"), Ok(Level::Native));
        assert_eq!(Level::named("baseline"), Ok(Level::Baseline));
        assert!(Level::named("sse9").unwrap_err().contains(NAMES));
        if !std::arch::is_x86_feature_detected!("avx512f") {
            assert!(Level::named("avx512").unwrap_err().contains("cannot run"));
        }
    }
}
