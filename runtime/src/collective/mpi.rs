//! Ranks as the processes of an MPI job (`mpirun -n N nabla ... --distributed`), through the
//! `mpi` crate over the system's MPI library. Only the thread that initialised MPI calls it
//! (`MPI_THREAD_FUNNELED`); the kernels' worker threads never do.

use std::cell::RefCell;

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};

use super::Collective;

/// This process's place in `MPI_COMM_WORLD`. Dropping it finalises MPI.
pub struct Mpi {
    world: SimpleCommunicator,
    /// Finalises MPI when dropped, after `world`.
    _universe: Universe,
    /// Receive buffers for the sums, grown once to the largest buffer summed.
    scratch: RefCell<(Vec<f32>, Vec<f64>)>,
}

impl Mpi {
    /// Initialises MPI; an error when it is already initialised or cannot be.
    pub fn initialize() -> Result<Mpi, String> {
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or("MPI could not be initialised (or already was)")?;
        Ok(Mpi {
            world: universe.world(),
            _universe: universe,
            scratch: RefCell::new((Vec::new(), Vec::new())),
        })
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
        let received = &mut self.scratch.borrow_mut().0;
        received.resize(values.len(), 0.0);
        let sum = SystemOperation::sum();
        self.world.all_reduce_into(&*values, &mut received[..], sum);
        values.copy_from_slice(received);
    }

    fn sum_f64(&self, values: &mut [f64]) {
        let received = &mut self.scratch.borrow_mut().1;
        received.resize(values.len(), 0.0);
        let sum = SystemOperation::sum();
        self.world.all_reduce_into(&*values, &mut received[..], sum);
        values.copy_from_slice(received);
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
