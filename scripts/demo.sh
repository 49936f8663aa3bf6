#!/bin/sh
# Quick start, first command: install what is missing, build, and run the
# main job on 4 local ranks.  Idempotent.
set -e
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/deps.sh"
"$top/scripts/build.sh" "$top/_build/default" --prefix="$top/_build/prefix"
exec "$top/scripts/mpirun.sh" -np 4 "$top/_build/default/examples/mlp/mlp"
