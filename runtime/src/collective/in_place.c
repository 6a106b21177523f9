/* MPI_IN_PLACE as a function: each MPI library defines it as a macro of its own (Open MPI
 * `(void *) 1`, MPICH `(void *) -1`), which Rust's bindings cannot translate. Compiled by
 * build.rs with the `mpi` feature; called by collective/mpi.rs. */
#include <mpi.h>

void *nabla_mpi_in_place(void) { return MPI_IN_PLACE; }
