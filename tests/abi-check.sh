#!/bin/sh
# ABI consistency, as TAP: the functions declared in the public headers, the
# version script, the symbols libtandem.so exports, and the man pages must
# be the same set; tandem.h must not include MPI or CUDA headers.
src=${TDM_SRCDIR:-.}
build=${TDM_BUILDDIR:-.}
lib=$build/src/.libs/libtandem.so
. "$src/tests/tap-lib.sh"
grep -ohE '\btdm_[a-z0-9_]+[[:space:]]*\(' "$src/include/tandem.h" "$src/include/tandem_mpi.h" \
  "$src/include/tandem_cuda.h" |
  tr -d ' (' | sort -u >"$tmp/header"
sed -n 's/^[[:space:]]*\(tdm_[a-z0-9_]*\);.*/\1/p' "$src/src/libtandem.map" | sort -u >"$tmp/map"
nm -D --defined-only "$lib" | awk '{print $3}' | sed 's/@.*//' | sort -u >"$tmp/exported"
grep -v '^tdm_[0-9]' "$tmp/exported" >"$tmp/exported_calls"
ls "$src/doc/man3" | sed -n 's/\.3$//p' | grep '^tdm_' | sort -u >"$tmp/man"

check "header declares calls" test -s "$tmp/header"
check "version script lists exactly the header's calls" diff "$tmp/header" "$tmp/map"
check "libtandem.so exports exactly the header's calls" diff "$tmp/header" "$tmp/exported_calls"
check "only tdm_* names exported (nm -D --defined-only)" sh -c "! grep -v '^tdm_' '$tmp/exported'"
check "every call has a man page" diff "$tmp/header" "$tmp/man"
check "tandem.h includes no MPI or CUDA header" sh -c "! grep -E '#include *<(mpi|cuda|nccl)' '$src/include/tandem.h'"
# Each call's version is the node of the map that lists it (tdm_0.1, the
# first release; tdm_0.2, the calls added since).
awk '/^tdm_[0-9.]+ *\{/ {node = $1} /^[[:space:]]*tdm_[a-z0-9_]*;/ {
       gsub(/[ \t;]/, ""); print $0 "@@" node }' "$src/src/libtandem.map" |
  sort >"$tmp/map_versions"
nm -D --defined-only "$lib" | awk '$2 == "T" {print $3}' | sort >"$tmp/exported_versions"
check "every exported call carries the version of its node in the map" \
  diff "$tmp/map_versions" "$tmp/exported_versions"
echo "1..$n"
