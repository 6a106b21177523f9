//! f32 `exp`, `erf`, `tanh`, `gelu` and `gelu`'s derivative of a block of memory in place, in
//! the CPU's widest registers. Cranelift emits 128-bit vectors at most, so a map whose work is
//! a transcendental function (GELU and its derivative, on a transformer's widest activations)
//! ran at a quarter of an AVX-512 core's width in generated code; generated code now leaves
//! such functions' arguments here a block of a row at a time
//! (`compiler/src/codegen/transcendental.rs`).
//!
//! Each function is the generated one (`compiler/src/codegen/math.rs`, whose coefficients
//! are these) operation for operation: the same roundings in the same order, an FMA exactly
//! where it has one, comparisons and selections that keep NaN as its do. So the bits are the
//! same whichever computes a value, in whichever build here (AVX-512, AVX2, or the portable
//! loop, whose `mul_add` is the correctly rounded FMA), on every CPU.

/// `tanh`'s rational fit (Eigen's): the odd numerator's coefficients in `x²`, lowest first.
pub const TANH_NUMERATOR: [f64; 7] = [
    4.893_524_558_917_86e-3,
    6.372_619_288_754_36e-4,
    1.485_722_357_179_79e-5,
    5.122_297_090_371_14e-8,
    -8.604_671_522_137_35e-11,
    2.000_187_904_824_77e-13,
    -2.760_768_477_423_55e-16,
];
/// `tanh`'s even denominator.
pub const TANH_DENOMINATOR: [f64; 4] = [
    4.893_525_185_543_85e-3,
    2.268_434_632_439e-3,
    1.185_347_056_866_54e-4,
    1.198_258_394_667_02e-6,
];
/// Where f32's `tanh` rounds to ±1: the fit's argument is clamped to it.
pub const TANH_CLAMP: f64 = 7.905_311_107_635_498;
/// Below this magnitude `tanh(x)` is `x` itself.
pub const TANH_TINY: f64 = 4e-4;
/// Beyond this magnitude `tanh(x)` is ±1 exactly (the clamped fit stops a few ulp short).
pub const TANH_SATURATION: f64 = 9.02;

/// `exp(r) = 1 + r + r² P(r)` on `|r| <= ln 2 / 2`: Cephes' `P`, lowest first.
pub const EXP_POLYNOMIAL: [f64; 6] = [
    5.000_000_120_1e-1,
    1.666_666_545_9e-1,
    4.166_579_589_4e-2,
    8.333_451_907_3e-3,
    1.398_199_950_7e-3,
    1.987_569_150_0e-4,
];
/// `exp`'s argument is clamped to this: below it the result underflows to 0, above it
/// overflows to infinity.
pub const EXP_RANGE: (f64, f64) = (-104.0, 88.8);
/// 1.5 * 2^23: adding it rounds an f32 below 2^22 in magnitude to the nearest integer (ties to
/// even), which the sum's low bits then hold.
pub const ROUND: f64 = 12_582_912.0;
/// ln 2 as the sum of a part with few significant bits, so that an exponent times it is exact,
/// and the remainder: range reduction for `exp` and `log`.
pub const LN2_HI: f64 = 0.693_359_375;
/// The remainder of ln 2 after [`LN2_HI`].
pub const LN2_LO: f64 = -2.121_944_400_5e-4;

/// `erf`'s rational fit (Eigen's): the odd numerator's coefficients in `x²`, lowest first.
pub const ERF_NUMERATOR: [f64; 7] = [
    -1.609_603_332_624_15e-2,
    -2.954_599_808_540_25e-3,
    -7.349_906_303_268_55e-4,
    -5.692_506_394_623_46e-5,
    -2.101_024_020_825_08e-6,
    2.770_681_424_959_02e-8,
    -2.726_142_258_013_06e-10,
];
/// `erf`'s even denominator.
pub const ERF_DENOMINATOR: [f64; 5] = [
    -1.426_473_905_141_89e-2,
    -7.373_329_167_204_68e-3,
    -1.682_826_974_382_03e-3,
    -2.133_740_552_789_05e-4,
    -1.456_607_184_649_96e-5,
];
/// Where f32's `erf` rounds to ±1: the fit's argument is clamped to it.
pub const ERF_CLAMP: f64 = 4.0;
/// `1 / sqrt(2 pi)`, the standard normal density's factor (in `gelu`'s derivative).
pub const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// A function this module applies, by the number generated code passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transcendental {
    /// `e^x`.
    Exp = 0,
    /// The error function.
    Erf = 1,
    /// The hyperbolic tangent.
    Tanh = 2,
    /// The Gaussian error linear unit, `x Φ(x)`.
    Gelu = 3,
    /// `gelu`'s derivative, `Φ(x) + x φ(x)`.
    GeluDerivative = 4,
}

impl Transcendental {
    /// Every function, by number.
    pub const ALL: [Transcendental; 5] = [
        Self::Exp,
        Self::Erf,
        Self::Tanh,
        Self::Gelu,
        Self::GeluDerivative,
    ];

    /// The function numbered `code`, if any.
    pub fn of(code: i64) -> Option<Transcendental> {
        Self::ALL.into_iter().find(|&f| f as i64 == code)
    }

    /// The function of one f32, as generated code computes it.
    #[inline(always)]
    pub fn scalar(self, x: f32) -> f32 {
        match self {
            Self::Exp => exp(x),
            Self::Erf => erf(x),
            Self::Tanh => tanh(x),
            Self::Gelu => gelu(x),
            Self::GeluDerivative => gelu_derivative(x),
        }
    }

    /// Replaces every element of `block` by the function of it, in the widest registers the
    /// CPU and `NABLA_ISA` allow.
    pub fn apply(self, block: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::isa::Wide;
            // SAFETY: the level says the CPU has the build's extensions.
            match crate::isa::wide() {
                Wide::Avx512 => return unsafe { x86::avx512(self, block) },
                Wide::Avx2 => return unsafe { x86::avx2(self, block) },
                Wide::None => {}
            }
        }
        each(self, block)
    }
}

/// Every element of `block` through `f`: a loop the compiler vectorises at the width the
/// calling build enables.
#[inline(always)]
fn each(f: Transcendental, block: &mut [f32]) {
    match f {
        Transcendental::Exp => block.iter_mut().for_each(|x| *x = exp(*x)),
        Transcendental::Erf => block.iter_mut().for_each(|x| *x = erf(*x)),
        Transcendental::Tanh => block.iter_mut().for_each(|x| *x = tanh(*x)),
        Transcendental::Gelu => block.iter_mut().for_each(|x| *x = gelu(*x)),
        Transcendental::GeluDerivative => block.iter_mut().for_each(|x| *x = gelu_derivative(*x)),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Transcendental, each};

    /// [`each`] in 512-bit registers.
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
    pub(super) unsafe fn avx512(f: Transcendental, block: &mut [f32]) {
        each(f, block)
    }

    /// [`each`] in 256-bit registers.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2(f: Transcendental, block: &mut [f32]) {
        each(f, block)
    }
}

/// `coeffs[0] + coeffs[1] x + ...` by Horner's rule, one FMA per coefficient.
#[inline(always)]
fn horner(coeffs: &[f64], x: f32) -> f32 {
    let mut acc = coeffs[coeffs.len() - 1] as f32;
    for &c in coeffs.iter().rev().skip(1) {
        acc = acc.mul_add(x, c as f32);
    }
    acc
}

/// `x` limited to `lo..=hi` by comparisons, NaN staying NaN.
#[inline(always)]
fn clamp(x: f32, (lo, hi): (f64, f64)) -> f32 {
    let (lo, hi) = (lo as f32, hi as f32);
    let x = if x > hi { hi } else { x };
    if x < lo { lo } else { x }
}

/// `e^x`: `2^n e^r` with `n = round(x / ln 2)`, `|r| <= ln 2 / 2`, `2^n` built in the
/// exponent bits in two halves so that a subnormal result is rounded once.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let clamped = clamp(x, EXP_RANGE);
    let scaled = clamped * std::f64::consts::LOG2_E as f32;
    let shifted = scaled + ROUND as f32;
    let n = shifted - ROUND as f32;
    let r = n.mul_add(-LN2_HI as f32, clamped);
    let r = n.mul_add(-LN2_LO as f32, r);
    let p = horner(&EXP_POLYNOMIAL, r);
    let r2 = r * r;
    let e_r = p.mul_add(r2, r) + 1.0;
    let n = (shifted.to_bits() as i32).wrapping_sub((ROUND as f32).to_bits() as i32);
    let first = n >> 1;
    let second = n.wrapping_sub(first);
    let power = |half: i32| f32::from_bits((half.wrapping_add(127) << 23) as u32);
    e_r * power(first) * power(second)
}

/// `erf(x)`: the rational fit of `x` clamped to ±[`ERF_CLAMP`], the ratio taken first so that
/// a tiny `x` never underflows.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let clamped = clamp(x, (-ERF_CLAMP, ERF_CLAMP));
    let x2 = clamped * clamped;
    let ratio = horner(&ERF_NUMERATOR, x2) / horner(&ERF_DENOMINATOR, x2);
    ratio * clamped
}

/// `gelu(x) = (x / 2) (erf(x / sqrt 2) + 1)`, PyTorch's exact GELU in its order of operations.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    (x * 0.5) * normal_cdf_doubled(x)
}

/// `gelu`'s derivative `Φ(x) + x φ(x) = (erf(x / sqrt 2) + 1) / 2 + x e^(-x^2 / 2) / sqrt(2 pi)`,
/// as PyTorch's `GeluBackward` computes it.
#[inline(always)]
pub fn gelu_derivative(x: f32) -> f32 {
    let cdf = normal_cdf_doubled(x) * 0.5;
    let density = exp((x * x) * -0.5) * FRAC_1_SQRT_2PI as f32;
    cdf + x * density
}

/// `erf(x / sqrt 2) + 1`, twice the standard normal distribution function.
#[inline(always)]
fn normal_cdf_doubled(x: f32) -> f32 {
    erf(x * std::f32::consts::FRAC_1_SQRT_2) + 1.0
}

/// `tanh(x)`: the rational fit of `x` clamped to ±[`TANH_CLAMP`], `x` itself below
/// [`TANH_TINY`] in magnitude and ±1 beyond [`TANH_SATURATION`].
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let clamped = clamp(x, (-TANH_CLAMP, TANH_CLAMP));
    let x2 = clamped * clamped;
    let p = horner(&TANH_NUMERATOR, x2) * clamped;
    let ratio = p / horner(&TANH_DENOMINATOR, x2);
    let magnitude = x.abs();
    let near = if magnitude < TANH_TINY as f32 {
        x
    } else {
        ratio
    };
    let unit = if x > 0.0 { 1.0 } else { -1.0 };
    if magnitude > TANH_SATURATION as f32 {
        unit
    } else {
        near
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every 4099th f32 of either sign, the specials, and a ragged length.
    fn values() -> Vec<f32> {
        let mut values: Vec<f32> = (0..0x7f80_0000u32)
            .step_by(4099)
            .map(f32::from_bits)
            .flat_map(|v| [v, -v])
            .collect();
        values.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            88.72,
            -103.0,
        ]);
        values
    }

    #[test]
    fn every_build_gives_the_portable_bits() {
        for f in Transcendental::ALL {
            let inputs = values();
            let mut wide = inputs.clone();
            f.apply(&mut wide);
            for (&x, &got) in inputs.iter().zip(&wide) {
                let want = f.scalar(x);
                assert!(
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "{f:?}({x}) = {got}, the portable loop {want}"
                );
            }
        }
    }

    #[test]
    fn functions_are_numbered_as_generated_code_passes_them() {
        for f in Transcendental::ALL {
            assert_eq!(Transcendental::of(f as i64), Some(f));
        }
        assert_eq!(Transcendental::of(Transcendental::ALL.len() as i64), None);
    }
}
