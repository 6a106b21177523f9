//! The instruction-set extensions an exported library's code needs, checked against the CPU it
//! runs on before anything runs. A library exported for the host uses every extension the
//! exporting machine has (AVX, FMA, ...); copied to an older machine, it would die of an
//! illegal instruction in the middle of a call. Instead the descriptor names what the code
//! needs ([`format::model::FEATURES`](crate::format::model::FEATURES), one bit per entry of
//! [`FEATURES`]) and a call on a CPU that lacks one returns an error code.

/// The extensions a descriptor's bits name, by the name of Cranelift's ISA flag that lets
/// generated code use it (bit `i` is `FEATURES[i]`); x86-64's first, then AArch64's.
pub const FEATURES: [&str; 24] = [
    "has_sse3",
    "has_ssse3",
    "has_cmpxchg16b",
    "has_sse41",
    "has_sse42",
    "has_avx",
    "has_avx2",
    "has_fma",
    "has_avx_vnni",
    "has_avx512bitalg",
    "has_avx512dq",
    "has_avx512vl",
    "has_avx512vbmi",
    "has_avx512f",
    "has_avx512vnni",
    "has_popcnt",
    "has_bmi1",
    "has_bmi2",
    "has_lzcnt",
    "has_lse",
    "has_pauth",
    "has_fp16",
    "has_dotprod",
    "has_i8mm",
];

/// The bit of the extension Cranelift's flag `flag` enables, if it names one.
pub fn bit(flag: &str) -> Option<u64> {
    FEATURES.iter().position(|&f| f == flag).map(|i| 1 << i)
}

/// The names of the extensions `bits` names, without the flags' `has_`.
pub fn names(bits: u64) -> Vec<&'static str> {
    FEATURES
        .iter()
        .enumerate()
        .filter(|&(i, _)| bits & (1 << i) != 0)
        .map(|(_, f)| f.trim_start_matches("has_"))
        .collect()
}

/// The extensions of `required` that the CPU running this does not have (asked of the
/// standard library, which caches what the CPU says). Called on every call of a library, so
/// only the required ones are asked about.
pub fn missing(required: u64) -> u64 {
    FEATURES
        .iter()
        .enumerate()
        .filter(|&(i, f)| required & (1 << i) != 0 && !has(f))
        .fold(0, |bits, (i, _)| bits | 1 << i)
}

#[cfg(target_arch = "x86_64")]
fn has(flag: &str) -> bool {
    match flag {
        "has_sse3" => is_x86_feature_detected!("sse3"),
        "has_ssse3" => is_x86_feature_detected!("ssse3"),
        "has_cmpxchg16b" => is_x86_feature_detected!("cmpxchg16b"),
        "has_sse41" => is_x86_feature_detected!("sse4.1"),
        "has_sse42" => is_x86_feature_detected!("sse4.2"),
        "has_avx" => is_x86_feature_detected!("avx"),
        "has_avx2" => is_x86_feature_detected!("avx2"),
        "has_fma" => is_x86_feature_detected!("fma"),
        "has_avx_vnni" => is_x86_feature_detected!("avxvnni"),
        "has_avx512bitalg" => is_x86_feature_detected!("avx512bitalg"),
        "has_avx512dq" => is_x86_feature_detected!("avx512dq"),
        "has_avx512vl" => is_x86_feature_detected!("avx512vl"),
        "has_avx512vbmi" => is_x86_feature_detected!("avx512vbmi"),
        "has_avx512f" => is_x86_feature_detected!("avx512f"),
        "has_avx512vnni" => is_x86_feature_detected!("avx512vnni"),
        "has_popcnt" => is_x86_feature_detected!("popcnt"),
        "has_bmi1" => is_x86_feature_detected!("bmi1"),
        "has_bmi2" => is_x86_feature_detected!("bmi2"),
        "has_lzcnt" => is_x86_feature_detected!("lzcnt"),
        _ => false,
    }
}

#[cfg(target_arch = "aarch64")]
fn has(flag: &str) -> bool {
    use std::arch::is_aarch64_feature_detected as detected;
    match flag {
        "has_lse" => detected!("lse"),
        "has_pauth" => detected!("paca"),
        "has_fp16" => detected!("fp16"),
        "has_dotprod" => detected!("dotprod"),
        "has_i8mm" => detected!("i8mm"),
        _ => false,
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn has(_: &str) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The extensions of [`FEATURES`] this CPU has.
    fn present() -> u64 {
        FEATURES
            .iter()
            .enumerate()
            .filter(|&(_, f)| has(f))
            .fold(0, |bits, (i, _)| bits | 1 << i)
    }

    #[test]
    fn a_required_extension_the_cpu_lacks_is_missing_and_none_is_missing_when_none_is_required() {
        assert_eq!(missing(0), 0);
        let all = (1u64 << FEATURES.len()) - 1;
        // Every machine lacks the other architecture's extensions.
        let foreign = if cfg!(target_arch = "aarch64") {
            bit("has_avx").unwrap()
        } else {
            bit("has_lse").unwrap()
        };
        assert_eq!(missing(foreign), foreign);
        assert_eq!(missing(all) & foreign, foreign);
        assert_eq!(missing(all) & present(), 0);
        assert_eq!(missing(present()), 0);
    }

    #[test]
    fn bits_and_names_match_cranelifts_flags() {
        assert_eq!(bit("has_sse3"), Some(1));
        assert_eq!(bit("has_fma"), Some(1 << 7));
        assert_eq!(bit("use_bti"), None);
        assert_eq!(
            names(bit("has_avx").unwrap() | bit("has_fma").unwrap()),
            ["avx", "fma"]
        );
    }
}
