//! f32 functions computed in registers, no call: `tanh` and `erf` (rational minimax fits), `exp` and
//! `log` (range reduction and Cephes' polynomials, reading and building `2^n` in the exponent
//! bits, subnormal inputs and results handled), and `sigmoid` from `exp(-|x|)` so that it never
//! overflows. Each is tested over the whole f32 range against an f64 reference
//! (`tests/jit.rs`); the other transcendental functions call Rust's implementations. `gelu`
//! and its derivative are made of `erf` and `exp` (in registers in f32, calls in f64). The
//! coefficients are the kernel library's (`nabla_kernels::transcendentals`), whose wide
//! `exp`, `erf`, `tanh`, `gelu` and `gelu`'s derivative compute the same operations, so the
//! bits do not depend on which one a loop uses.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Type, Value, types};

use nabla_kernels::transcendentals::{
    ERF_CLAMP, ERF_DENOMINATOR, ERF_NUMERATOR, EXP_POLYNOMIAL, EXP_RANGE, FRAC_1_SQRT_2PI, LN2_HI,
    LN2_LO, ROUND, TANH_CLAMP, TANH_DENOMINATOR, TANH_NUMERATOR, TANH_SATURATION, TANH_TINY,
};

use super::clif::Emitter;
use crate::ir::UnaryOp;

impl Emitter<'_, '_> {
    /// `tanh` of f32 scalars or vectors in registers, no call: a rational function (odd
    /// degree-13 numerator, even degree-6 denominator, the minimax fit Eigen uses) of `x`
    /// clamped to ±7.9053, where f32's tanh rounds to ±1; `x` itself below 0.0004 in
    /// magnitude, and ±1 beyond 9.02. Within 6 ulp of the correctly rounded value over every
    /// f32 (tested against the scalar function); NaN stays NaN and ±inf gives ±1.
    pub(super) fn tanh_f32(&mut self, x: Value, ty: Type) -> Value {
        let clamped = self.clamp(x, (-TANH_CLAMP, TANH_CLAMP), ty);
        let x2 = self.b.ins().fmul(clamped, clamped);
        let p = self.horner(&TANH_NUMERATOR, x2, ty);
        let q = self.horner(&TANH_DENOMINATOR, x2, ty);
        let p = self.b.ins().fmul(p, clamped);
        let ratio = self.b.ins().fdiv(p, q);
        let magnitude = self.b.ins().fabs(x);
        let tiny = self.constant(ty, TANH_TINY);
        let small = self.compare(FloatCC::LessThan, magnitude, tiny, ty);
        let near = self.choose(small, x, ratio, ty);
        // Beyond 9.02, tanh rounds to ±1 exactly (the clamped fraction stops a few ulp short).
        let saturation = self.constant(ty, TANH_SATURATION);
        let saturated = self.compare(FloatCC::GreaterThan, magnitude, saturation, ty);
        let (one, minus_one, zero) = (
            self.constant(ty, 1.0),
            self.constant(ty, -1.0),
            self.constant(ty, 0.0),
        );
        let positive = self.compare(FloatCC::GreaterThan, x, zero, ty);
        let unit = self.choose(positive, one, minus_one, ty);
        self.choose(saturated, unit, near, ty)
    }

    /// f32 `exp` in registers: `2^n e^r` with `n = round(x / ln 2)` and `|r| <= ln 2 / 2`,
    /// `e^r` by Cephes' degree-6 polynomial, and `2^n` built in the exponent bits in two halves,
    /// so that a subnormal result is rounded once. Beyond 88.8 the result overflows to `inf`,
    /// below -104 it underflows to 0; NaN stays NaN.
    pub(super) fn exp_f32(&mut self, x: Value, ty: Type) -> Value {
        let clamped = self.clamp(x, EXP_RANGE, ty);
        let log2e = self.constant(ty, std::f64::consts::LOG2_E);
        let scaled = self.b.ins().fmul(clamped, log2e);
        // Adding 1.5 * 2^23 rounds to the nearest integer (ties to even, as `nearest`), which
        // the sum's low bits then hold: three instructions where rounding and a saturating
        // conversion took eight on x86.
        let round = self.constant(ty, ROUND);
        let shifted = self.b.ins().fadd(scaled, round);
        let n = self.b.ins().fsub(shifted, round);
        // r = x - n ln 2, with ln 2 split in two so that n times its first part is exact.
        let (ln2_hi, ln2_lo) = (self.constant(ty, -LN2_HI), self.constant(ty, -LN2_LO));
        let r = self.b.ins().fma(n, ln2_hi, clamped);
        let r = self.b.ins().fma(n, ln2_lo, r);
        let p = self.horner(&EXP_POLYNOMIAL, r, ty);
        let r2 = self.b.ins().fmul(r, r);
        let one = self.constant(ty, 1.0);
        let e_r = self.b.ins().fma(p, r2, r);
        let e_r = self.b.ins().fadd(e_r, one);
        // n is in [-150, 128]: each half of it is a normal power of two.
        let ity = ty.as_int();
        let shifted = self.b.ins().bitcast(ity, MemFlagsData::new(), shifted);
        let round = self.b.ins().bitcast(ity, MemFlagsData::new(), round);
        let n = self.b.ins().isub(shifted, round);
        let first = self.b.ins().sshr_imm_u(n, 1);
        let second = self.b.ins().isub(n, first);
        let bias = self.int_constant(ity, 127);
        let mut result = e_r;
        for half in [first, second] {
            let exponent = self.b.ins().iadd(half, bias);
            let bits = self.b.ins().ishl_imm_u(exponent, 23);
            let power = self.b.ins().bitcast(ty, MemFlagsData::new(), bits);
            result = self.b.ins().fmul(result, power);
        }
        result
    }

    /// f32 `log` in registers: `x = m 2^e` with `m` in `[sqrt(1/2), sqrt(2))` read from the
    /// bits (subnormals scaled up by 2^23 first), `log(m)` by Cephes' degree-9 polynomial in
    /// `m - 1`, plus `e ln 2` with `ln 2` split in two. `log(0) = -inf`, `log(inf) = inf`, and
    /// negative numbers and NaN give NaN.
    pub(super) fn log_f32(&mut self, x: Value, ty: Type) -> Value {
        const POLYNOMIAL: [f64; 9] = [
            3.333_333_117_4e-1,
            -2.499_999_399_3e-1,
            2.000_071_476_5e-1,
            -1.666_805_766_5e-1,
            1.424_932_278_7e-1,
            -1.242_014_084_6e-1,
            1.167_699_874_0e-1,
            -1.151_461_031_0e-1,
            7.037_683_629_2e-2,
        ];
        let ity = ty.as_int();
        let smallest_normal = self.constant(ty, f64::from(f32::MIN_POSITIVE));
        let subnormal = self.compare(FloatCC::LessThan, x, smallest_normal, ty);
        let scale = self.constant(ty, 8_388_608.0);
        let scaled = self.b.ins().fmul(x, scale);
        let normal = self.choose(subnormal, scaled, x, ty);
        let (shift, none) = (self.constant(ty, 23.0), self.constant(ty, 0.0));
        let shift = self.choose(subnormal, shift, none, ty);
        let bits = self.b.ins().bitcast(ity, MemFlagsData::new(), normal);
        // The exponent such that the mantissa is in [1/2, 1).
        let exponent = self.b.ins().ushr_imm_u(bits, 23);
        let bias = self.int_constant(ity, 126);
        let exponent = self.b.ins().isub(exponent, bias);
        let exponent = self.b.ins().fcvt_from_sint(ty, exponent);
        let exponent = self.b.ins().fsub(exponent, shift);
        let fraction = self.int_constant(ity, 0x007f_ffff);
        let fraction = self.b.ins().band(bits, fraction);
        let half = self.int_constant(ity, 0x3f00_0000);
        let mantissa = self.b.ins().bor(fraction, half);
        let mantissa = self.b.ins().bitcast(ty, MemFlagsData::new(), mantissa);
        // Below sqrt(1/2), take 2m and one less in the exponent.
        let sqrt_half = self.constant(ty, std::f64::consts::FRAC_1_SQRT_2);
        let low = self.compare(FloatCC::LessThan, mantissa, sqrt_half, ty);
        let one = self.constant(ty, 1.0);
        let doubled = self.b.ins().fadd(mantissa, mantissa);
        let m = self.choose(low, doubled, mantissa, ty);
        let m = self.b.ins().fsub(m, one);
        let exponent_down = self.b.ins().fsub(exponent, one);
        let exponent = self.choose(low, exponent_down, exponent, ty);
        let z = self.b.ins().fmul(m, m);
        let p = self.horner(&POLYNOMIAL, m, ty);
        let p = self.b.ins().fmul(p, m);
        let y = self.b.ins().fmul(p, z);
        let ln2_lo = self.constant(ty, LN2_LO);
        let y = self.b.ins().fma(exponent, ln2_lo, y);
        let minus_half = self.constant(ty, -0.5);
        let y = self.b.ins().fma(z, minus_half, y);
        let y = self.b.ins().fadd(m, y);
        let ln2_hi = self.constant(ty, LN2_HI);
        let y = self.b.ins().fma(exponent, ln2_hi, y);
        // x - x is 0 for finite x and NaN for NaN and infinities, which the selects then settle.
        let nan_unless_finite = self.b.ins().fsub(x, x);
        let y = self.b.ins().fadd(y, nan_unless_finite);
        let (zero, infinity) = (self.constant(ty, 0.0), self.constant(ty, f64::INFINITY));
        let is_infinite = self.compare(FloatCC::Equal, x, infinity, ty);
        let y = self.choose(is_infinite, infinity, y, ty);
        let is_zero = self.compare(FloatCC::Equal, x, zero, ty);
        let minus_infinity = self.b.ins().fneg(infinity);
        let y = self.choose(is_zero, minus_infinity, y, ty);
        let negative = self.compare(FloatCC::LessThan, x, zero, ty);
        let nan = self.constant(ty, f64::NAN);
        self.choose(negative, nan, y, ty)
    }

    /// `erf` of f32 scalars or vectors in registers, no call (GELU's): a rational function (odd
    /// degree-13 numerator, even degree-8 denominator, the minimax fit Eigen uses) of `x`
    /// clamped to ±4, beyond which f32's erf rounds to ±1. Within 6 ulp of the correctly
    /// rounded value over every f32 (tested); NaN stays NaN, ±inf gives ±1.
    pub(super) fn erf_f32(&mut self, x: Value, ty: Type) -> Value {
        let clamped = self.clamp(x, (-ERF_CLAMP, ERF_CLAMP), ty);
        let x2 = self.b.ins().fmul(clamped, clamped);
        let p = self.horner(&ERF_NUMERATOR, x2, ty);
        let q = self.horner(&ERF_DENOMINATOR, x2, ty);
        // The ratio first (about 2/sqrt(pi) near 0), so that a tiny `x` never underflows.
        let ratio = self.b.ins().fdiv(p, q);
        self.b.ins().fmul(ratio, clamped)
    }

    /// `gelu(x) = (x / 2) (erf(x / sqrt 2) + 1)`, from [`Self::unary`]'s `erf`; in f32 the
    /// operations of the library's (`nabla_kernels::transcendentals::gelu`), in its order.
    pub(super) fn gelu(&mut self, x: Value, ty: Type) -> Value {
        let shifted = self.normal_cdf_doubled(x, ty);
        let half = self.constant(ty, 0.5);
        let halved = self.b.ins().fmul(x, half);
        self.b.ins().fmul(halved, shifted)
    }

    /// `gelu`'s derivative `Φ(x) + x φ(x)`: `(erf(x / sqrt 2) + 1) / 2 + x e^(-x^2 / 2) /
    /// sqrt(2 pi)`, as [`Self::gelu`] mirrors the library's.
    pub(super) fn gelu_derivative(&mut self, x: Value, ty: Type) -> Value {
        let shifted = self.normal_cdf_doubled(x, ty);
        let half = self.constant(ty, 0.5);
        let cdf = self.b.ins().fmul(shifted, half);
        let square = self.b.ins().fmul(x, x);
        let minus_half = self.constant(ty, -0.5);
        let exponent = self.b.ins().fmul(square, minus_half);
        let e = self.unary(UnaryOp::Exp, exponent, ty);
        let scale = self.constant(ty, FRAC_1_SQRT_2PI);
        let density = self.b.ins().fmul(e, scale);
        let slope = self.b.ins().fmul(x, density);
        self.b.ins().fadd(cdf, slope)
    }

    /// `erf(x / sqrt 2) + 1`, twice the standard normal distribution function.
    fn normal_cdf_doubled(&mut self, x: Value, ty: Type) -> Value {
        let scale = self.constant(ty, std::f64::consts::FRAC_1_SQRT_2);
        let scaled = self.b.ins().fmul(x, scale);
        let erf = self.unary(UnaryOp::Erf, scaled, ty);
        let one = self.constant(ty, 1.0);
        self.b.ins().fadd(erf, one)
    }

    /// f32 `sigmoid` in registers, from [`Self::exp_f32`] of `-|x|` so that nothing overflows:
    /// `1 / (1 + e)` for `x >= 0`, `e / (1 + e)` below.
    pub(super) fn sigmoid_f32(&mut self, x: Value, ty: Type) -> Value {
        let magnitude = self.b.ins().fabs(x);
        let minus = self.b.ins().fneg(magnitude);
        let e = self.exp_f32(minus, ty);
        let one = self.constant(ty, 1.0);
        let denominator = self.b.ins().fadd(one, e);
        let upper = self.b.ins().fdiv(one, denominator);
        let lower = self.b.ins().fmul(e, upper);
        let zero = self.constant(ty, 0.0);
        let non_negative = self.compare(FloatCC::GreaterThanOrEqual, x, zero, ty);
        self.choose(non_negative, upper, lower, ty)
    }

    /// `x` limited to `lo..=hi`, NaN staying NaN: by comparisons and selections (two
    /// instructions each on x86), where `fmin` and `fmax`, which also order -0 below +0 and
    /// pick a NaN whichever side it is on, take seven each.
    fn clamp(&mut self, x: Value, (lo, hi): (f64, f64), ty: Type) -> Value {
        let (lo, hi) = (self.constant(ty, lo), self.constant(ty, hi));
        let above = self.compare(FloatCC::GreaterThan, x, hi, ty);
        let x = self.choose(above, hi, x, ty);
        let below = self.compare(FloatCC::LessThan, x, lo, ty);
        self.choose(below, lo, x, ty)
    }

    /// `coeffs[0] + coeffs[1] x + ...` by Horner's rule, one fused multiply-add per coefficient.
    pub(super) fn horner(&mut self, coeffs: &[f64], x: Value, ty: Type) -> Value {
        let mut acc = self.constant(ty, coeffs[coeffs.len() - 1]);
        for &c in coeffs.iter().rev().skip(1) {
            let c = self.constant(ty, c);
            acc = self.b.ins().fma(acc, x, c);
        }
        acc
    }

    /// The 32-bit integer `v` as `ity` (`i32`, or splat to `i32x4`).
    pub(super) fn int_constant(&mut self, ity: Type, v: i64) -> Value {
        let c = self.b.ins().iconst(types::I32, v);
        if ity.is_vector() {
            self.b.ins().splat(ity, c)
        } else {
            c
        }
    }
}
