//! With the `mpi` feature, compiles the one C line the MPI collective needs that Rust's MPI
//! bindings lack: `MPI_IN_PLACE`, which every MPI library defines as a macro of its own (a
//! pointer cast bindgen cannot translate), exported as a function, so that the gradient sum
//! works in the buffer it sums instead of copying it twice. Found and compiled as the `mpi-sys`
//! crate compiles its own shim: the MPI compiler wrapper, else the probed include paths.

fn main() {
    println!("cargo:rerun-if-changed=src/collective/in_place.c");
    if std::env::var_os("CARGO_FEATURE_MPI").is_some() {
        in_place();
    }
}

#[cfg(feature = "mpi")]
fn in_place() {
    let library = build_probe_mpi::probe().unwrap_or_else(|errors| {
        let reasons: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        panic!("no MPI library found: {}", reasons.join("; "))
    });
    let mut build = cc::Build::new();
    build.file("src/collective/in_place.c");
    match library.mpicc {
        Some(mpicc) => {
            build.compiler(mpicc);
        }
        None => {
            build.includes(&library.include_paths);
        }
    }
    build.compile("nabla_mpi_in_place");
}

#[cfg(not(feature = "mpi"))]
fn in_place() {}
