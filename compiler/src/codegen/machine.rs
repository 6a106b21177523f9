//! The machine code is generated for: this one, with every instruction-set extension its CPU
//! has (the JIT, unless `NABLA_ISA` names a lesser level, and an export by default), or another, named by a target triple and a CPU, for
//! a library that runs elsewhere (`nabla export --target`). A library records the extensions
//! its code uses ([`features`]) so that its run time refuses a CPU without them instead of
//! dying of an illegal instruction.

use std::str::FromStr;

use cranelift_codegen::isa::{self, OwnedTargetIsa};
use cranelift_codegen::settings::{self, Configurable};
use target_lexicon::{
    Architecture, Endianness, Environment, OperatingSystem, PointerWidth, Triple,
};

use super::jit::{CodegenError, err};

/// The machine code is generated for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Machine {
    /// The target triple; `None`: this machine's.
    pub triple: Option<Triple>,
    /// The CPU: `None` for this machine's own when the triple is the host's, the architecture's
    /// baseline (every CPU of it) for another triple; else a name Cranelift knows (`native`,
    /// LLVM's names: `x86-64-v3`, `haswell`, `znver3`, ...).
    pub cpu: Option<String>,
}

/// The architectures native export compiles for.
const ARCHITECTURES: &str = "x86_64 and aarch64";

impl Machine {
    /// The machine `triple` and `cpu` name, if nabla can write a Linux library for it.
    pub fn named(triple: Option<&str>, cpu: Option<&str>) -> Result<Machine, String> {
        let triple = triple
            .map(|t| {
                let parsed = Triple::from_str(t).map_err(|e| {
                    format!("`--target {t}`: not a target triple ({e}); give one like x86_64-unknown-linux-gnu or aarch64-unknown-linux-gnu")
                })?;
                let supported = matches!(
                    parsed.architecture,
                    Architecture::X86_64 | Architecture::Aarch64(_)
                ) && parsed.operating_system == OperatingSystem::Linux
                    && parsed.environment == Environment::Gnu
                    && parsed.pointer_width() == Ok(PointerWidth::U64)
                    && parsed.endianness() == Ok(Endianness::Little);
                if supported {
                    Ok(parsed)
                } else {
                    Err(format!(
                        "`--target {t}`: nabla exports libraries for GNU/Linux on {ARCHITECTURES}"
                    ))
                }
            })
            .transpose()?;
        let machine = Machine {
            triple,
            cpu: cpu.map(str::to_string),
        };
        if machine.cpu.as_deref() == Some("native") && !machine.is_host_architecture() {
            return Err(format!(
                "`--target-cpu native` is this machine's CPU, a {}, which cannot run {}'s code; name a CPU of the target or none (its baseline)",
                Triple::host().architecture,
                machine.triple().architecture
            ));
        }
        isa(&machine, true).map_err(|e| e.0)?;
        Ok(machine)
    }

    /// The machine the JIT compiles for: this one, at the instruction-set level `NABLA_ISA`
    /// names (`nabla_kernels::isa`), its best by default; an error too where `NABLA_DENORMALS`
    /// names no mode the compiled code could run under.
    pub fn jit() -> Result<Machine, CodegenError> {
        use nabla_kernels::isa::Level;
        nabla_kernels::denormals::mode().map_err(err)?;
        let cpu = match nabla_kernels::isa::level().map_err(err)? {
            Level::Native => None,
            Level::Avx512 => Some("x86-64-v4"),
            Level::Avx2 => Some("x86-64-v3"),
            Level::Baseline => Some("baseline"),
        };
        Ok(Machine {
            triple: None,
            cpu: cpu.map(str::to_string),
        })
    }

    /// The triple code is generated for.
    pub fn triple(&self) -> Triple {
        self.triple.clone().unwrap_or_else(Triple::host)
    }

    /// Whether this machine's CPU can run the code (the same architecture).
    pub fn is_host_architecture(&self) -> bool {
        self.triple().architecture == Triple::host().architecture
    }

    /// The CPU named, or what is meant when none is.
    pub fn cpu_name(&self) -> &str {
        match (&self.cpu, &self.triple) {
            (Some(cpu), _) => cpu,
            (None, None) => "native",
            (None, Some(_)) => "baseline",
        }
    }
}

/// The ISA `machine` names, optimising for speed; position-independent code for a library.
pub(super) fn isa(machine: &Machine, pic: bool) -> Result<OwnedTargetIsa, CodegenError> {
    let mut flags = settings::builder();
    flags.set("opt_level", "speed").map_err(err)?;
    if pic {
        flags.set("is_pic", "true").map_err(err)?;
    }
    let mut builder = match machine.cpu_name() {
        "native" => cranelift_native::builder().map_err(err)?,
        _ => isa::lookup(machine.triple()).map_err(|e| {
            err(format!(
                "cannot generate code for {}: {e}",
                machine.triple()
            ))
        })?,
    };
    match machine.cpu_name() {
        "native" | "baseline" => {}
        cpu => {
            builder.enable(cpu).map_err(|_| {
                err(format!(
                    "`--target-cpu {cpu}`: not a CPU Cranelift knows for {} (`native`, `baseline`, or LLVM's names such as x86-64-v2, x86-64-v3, haswell, skylake-avx512, znver3)",
                    machine.triple().architecture
                ))
            })?;
            let completed = LEVELS_COMPLETED.iter().find(|(level, _)| *level == cpu);
            for extension in completed.map_or(&[][..], |(_, extensions)| extensions) {
                builder.enable(extension).map_err(err)?;
            }
        }
    }
    builder.finish(settings::Flags::new(flags)).map_err(err)
}

/// Extensions the x86-64 psABI's levels include that Cranelift's presets of the same names
/// leave out. Without AVX, Cranelift uses neither VEX encodings nor FMA (its `use_fma` asks
/// for both), so every fused multiply-add became a call of `fmaf` per lane: the tiny model's
/// step took 23 µs at `NABLA_ISA=avx2` against 2.3 µs native on the same AVX-512 CPU.
const LEVELS_COMPLETED: &[(&str, &[&str])] = &[
    ("x86-64-v3", &["has_avx"]),
    ("x86-64-v4", &["has_avx", "has_avx512f"]),
];

/// The instruction-set extensions code for `machine` may use, as the run time's bits
/// (`nabla_aot::cpu`).
pub fn features(machine: &Machine) -> Result<u64, CodegenError> {
    let isa = isa(machine, true)?;
    let mut bits = 0;
    for flag in isa.isa_flags() {
        if flag.name.starts_with("has_") && flag.as_bool() == Some(true) {
            bits |= nabla_aot::cpu::bit(flag.name).ok_or_else(|| {
                err(format!(
                    "Cranelift's extension `{}` is not one an exported library checks for",
                    flag.name
                ))
            })?;
        }
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_extension_the_host_isa_uses_is_one_the_run_time_checks() {
        let bits = features(&Machine::default()).unwrap();
        assert_eq!(nabla_aot::cpu::missing(bits), 0);
        let baseline = Machine::named(Some(&Triple::host().to_string()), None).unwrap();
        assert_eq!(features(&baseline).unwrap(), 0);
        for cpu in ["x86-64-v3", "skylake-avx512", "znver4"] {
            let named = Machine::named(Some("x86_64-unknown-linux-gnu"), Some(cpu)).unwrap();
            assert_ne!(features(&named).unwrap(), 0, "{cpu}");
        }
    }

    #[test]
    fn the_generic_levels_have_the_extensions_the_psabi_gives_them() {
        let bits = |cpu: &str| {
            let named = Machine::named(Some("x86_64-unknown-linux-gnu"), Some(cpu)).unwrap();
            nabla_aot::cpu::names(features(&named).unwrap())
        };
        for (cpu, needed) in [
            ("x86-64-v3", &["avx", "avx2", "fma", "bmi2"][..]),
            (
                "x86-64-v4",
                &["avx", "avx2", "fma", "avx512f", "avx512vl"][..],
            ),
            ("haswell", &["avx", "avx2", "fma"][..]),
        ] {
            let has = bits(cpu);
            for n in needed {
                assert!(has.contains(n), "{cpu} lacks {n}: {has:?}");
            }
        }
    }

    #[test]
    fn targets_and_cpus_nabla_cannot_export_for_are_named_in_the_error() {
        for (triple, cpu, says) in [
            (
                "x86_64-apple-darwin",
                None,
                "for GNU/Linux on x86_64 and aarch64",
            ),
            (
                "riscv64gc-unknown-linux-gnu",
                None,
                "for GNU/Linux on x86_64 and aarch64",
            ),
            (
                "i686-unknown-linux-gnu",
                None,
                "for GNU/Linux on x86_64 and aarch64",
            ),
            (
                "aarch64-unknown-linux-musl",
                None,
                "for GNU/Linux on x86_64 and aarch64",
            ),
            ("not-a-triple", None, "not a target triple"),
            (
                "x86_64-unknown-linux-gnu",
                Some("pentium9"),
                "not a CPU Cranelift knows",
            ),
        ] {
            let e = Machine::named(Some(triple), cpu).unwrap_err();
            assert!(e.contains(says), "{triple} {cpu:?}: {e}");
        }
        let foreign = if cfg!(target_arch = "x86_64") {
            "aarch64-unknown-linux-gnu"
        } else {
            "x86_64-unknown-linux-gnu"
        };
        let e = Machine::named(Some(foreign), Some("native")).unwrap_err();
        assert!(e.contains("cannot run"), "{e}");
    }
}
