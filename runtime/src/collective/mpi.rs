//! Ranks as the processes of an MPI job (`mpirun -n N nabla ... --distributed`), through the
//! `mpi` crate over the system's MPI library. Only the thread that initialised MPI calls it
//! (`MPI_THREAD_FUNNELED`); the kernels' worker threads never do.
//!
//! The gradient sum is `MPI_Allreduce` in place (`MPI_IN_PLACE`, from the C shim build.rs
//! compiles): with a separate receive buffer the library first copies the send buffer into
//! it and the result had to be copied back, two passes over every gradient per step that
//! took about a third of the MNIST MLP's sum here.

use std::ffi::c_void;
use std::os::raw::c_int;

use mpi::environment::Universe;
use mpi::ffi::{MPI_Allreduce, MPI_Datatype, RSMPI_DOUBLE, RSMPI_FLOAT, RSMPI_SUM};
use mpi::raw::AsRaw;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};

use super::Collective;

unsafe extern "C" {
    /// `MPI_IN_PLACE` (src/collective/in_place.c).
    fn nabla_mpi_in_place() -> *mut c_void;
}

/// This process's place in `MPI_COMM_WORLD`. Dropping it finalises MPI.
pub struct Mpi {
    world: SimpleCommunicator,
    /// Finalises MPI when dropped, after `world`.
    _universe: Universe,
}

impl Mpi {
    /// Initialises MPI; an error when it is already initialised or cannot be.
    pub fn initialize() -> Result<Mpi, String> {
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or("MPI could not be initialised (or already was)")?;
        Ok(Mpi {
            world: universe.world(),
            _universe: universe,
        })
    }

    /// Sums `values` over every rank, in place, in pieces whose count fits MPI's `int`.
    fn sum_in_place<T>(&self, values: &mut [T], datatype: MPI_Datatype) {
        for piece in values.chunks_mut(c_int::MAX as usize) {
            // SAFETY: `piece` holds `piece.len()` elements of `datatype`'s type, and every rank
            // makes the same calls with the same counts (they hold the same model). MPI's
            // default error handler aborts the job on failure, so the code is always success.
            unsafe {
                MPI_Allreduce(
                    nabla_mpi_in_place(),
                    piece.as_mut_ptr().cast(),
                    piece.len() as c_int,
                    datatype,
                    RSMPI_SUM,
                    self.world.as_raw(),
                );
            }
        }
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn sum_f32(&self, values: &mut [f32]) {
        // SAFETY: reading an MPI handle constant.
        self.sum_in_place(values, unsafe { RSMPI_FLOAT });
    }

    fn sum_f64(&self, values: &mut [f64]) {
        // SAFETY: reading an MPI handle constant.
        self.sum_in_place(values, unsafe { RSMPI_DOUBLE });
    }

    fn gather(&self, value: u64) -> Vec<u64> {
        let mut all = vec![0u64; self.size()];
        self.world.all_gather_into(&value, &mut all[..]);
        all
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
