#!/bin/sh
# Quick start, first command: install what is missing, build, and run the
# main job on 4 local ranks with `tandem launch`.  Idempotent.
set -e
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/deps.sh"
"$top/scripts/build.sh" "$top/_build/default" --prefix="$top/_build/prefix"
if [ "$(id -u)" = 0 ]; then # containers and CI run as root
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_btl_base_warn_component_unused=0
exec timeout -k 5 300 "$top/_build/default/src/cli/tandem" launch -n 4 \
  "$top/_build/default/examples/mlp/mlp"
