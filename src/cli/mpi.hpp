// The MPI group of `mpirun -np N vrwkv train ...` (docs/DISTRIBUTED.md).
#pragma once

#include <memory>

#include "vrwkv/distributed.hpp"

namespace vrwkv::cli {

// True when this process was started by an MPI launcher (mpirun sets OMPI_COMM_WORLD_SIZE, PMIx launchers
// PMIX_RANK): train then joins the group.
bool launched_by_mpirun();

// The group of every process mpirun started (MPI_COMM_WORLD), initialising MPI; MPI is finalised when the
// object goes. Error(Input) when this vrwkv was built without MPI.
std::unique_ptr<train::Communicator> mpi_world();

// Ends every process of the group with `code`, for a failure the other ranks cannot know of (they may be
// waiting in a collective). Returns only when MPI is not running.
void mpi_abort(int code);

// This process's rank as the launcher numbered it (OMPI_COMM_WORLD_RANK or PMIX_RANK; 0 when there is none).
int launcher_rank();

// Processes of the group on this machine (1 when not launched by mpirun): the default thread count per rank
// divides the cores among them.
int ranks_on_this_machine();

}  // namespace vrwkv::cli
