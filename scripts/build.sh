#!/bin/sh
# scripts/build.sh DIR [configure options...]
# Configures (once) and builds tandem out of tree in DIR.  Idempotent.
set -e
top=$(cd "$(dirname "$0")/.." && pwd)
dir=$1
shift
if [ ! -x "$top/configure" ] || [ "$top/configure.ac" -nt "$top/configure" ] ||
   [ "$top/Makefile.am" -nt "$top/Makefile.in" ]; then
  (cd "$top" && ./autogen.sh >/dev/null 2>&1)
fi
mkdir -p "$dir"
cd "$dir"
stamp="configured with: $*"
if [ ! -f Makefile ] || [ "$(cat .configure-args 2>/dev/null)" != "$stamp" ]; then
  "$top/configure" "$@" >configure.out 2>&1 || { cat configure.out; exit 1; }
  echo "$stamp" >.configure-args
  sed -n '/^tandem .* configuration/,$p' configure.out
fi
make -j"$(nproc)" >make.out 2>&1 || { tail -40 make.out; exit 1; }
if grep -E "warning:" make.out; then
  echo "build: compiler warnings (see $dir/make.out)"; exit 1
fi
