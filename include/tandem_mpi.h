/*
 * tandem_mpi.h - interop with a host MPI code.
 *
 * Kept apart from tandem.h because MPI_Comm is implementation-specific.
 * Fortran passes an MPI_Fint handle (the integer of `use mpi`, or
 * comm%MPI_VAL of `use mpi_f08`) to tdm_init_comm_f.
 */
#ifndef TANDEM_MPI_H
#define TANDEM_MPI_H

#include <mpi.h>

#include "tandem.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Everything declared here is exported; the rest of libtandem is hidden. */
#if defined(__GNUC__)
#pragma GCC visibility push(default)
#endif

/* Collective over comm, which the host keeps owning: tandem duplicates it
 * and never initializes or finalizes MPI.  MPI must be initialized. */
tdm_status tdm_init_comm(MPI_Comm comm, const tdm_options *options,
                         tdm_context **ctx);

/* The same for a Fortran communicator handle. */
tdm_status tdm_init_comm_f(MPI_Fint comm, const tdm_options *options,
                           tdm_context **ctx);

/* tandem's private duplicate of the communicator the context spans. */
tdm_status tdm_get_comm(const tdm_context *ctx, MPI_Comm *comm);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif

#endif /* TANDEM_MPI_H */
