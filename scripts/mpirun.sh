#!/bin/sh
# mpirun for local ranks: allows root where the machine runs as root (CI,
# containers) and oversubscribes small machines.  scripts/mpirun.sh -np 4 PROG
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_btl_base_warn_component_unused=0
exec timeout -k 5 "${TDM_RUN_TIMEOUT:-300}" mpirun --oversubscribe "$@"
