#!/bin/sh
# scripts/fuzz.sh [SECONDS] - fuzzes the safetensors header parser with
# libFuzzer (tests/fuzz/fuzz_safetensors.c) for SECONDS (default 60).
# Builds with clang, ASan and UBSan straight from the sources (no
# configure), starts from a copy of tests/fuzz/corpus (never changed), and
# ends with the line "fuzz: N executions, C crashes".  Exits 1 on a crash
# or leak (the input is kept and named), 77 when a tool is missing.
# FUZZ_DIR=dir keeps the build, working corpus and findings there.
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-60}
case $secs in '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac

missing() { echo "fuzz: $1; install it with: apt-get install $2" >&2; exit 77; }

command -v clang >/dev/null 2>&1 || missing "clang not found" "clang"
major=$(clang -dumpversion | cut -d. -f1)
rtpkg="libclang-rt-$major-dev" # Debian bookworm: libclang-rt-14-dev
command -v pkg-config >/dev/null 2>&1 || missing "pkg-config not found" \
  "pkg-config"
pkg-config --exists jansson || missing "jansson not found" "libjansson-dev"
# core.h includes mpi.h and error.c calls MPI_Error_string.
if pkg-config --exists ompi-c; then mpi=$(pkg-config --cflags --libs ompi-c)
elif pkg-config --exists mpich; then mpi=$(pkg-config --cflags --libs mpich)
else missing "no MPI (mpi.h) found" "libopenmpi-dev"; fi

work=${FUZZ_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/tdm-fuzz.XXXXXX")}
mkdir -p "$work/corpus" || exit 1

# The fuzzer runtime is a package of its own on Debian.
printf 'int LLVMFuzzerTestOneInput(const char *d, long n)\n{ (void)d; (void)n; return 0; }\n' \
  >"$work/probe.c"
clang -fsanitize=fuzzer "$work/probe.c" -o "$work/probe" >/dev/null 2>&1 ||
  missing "clang cannot link -fsanitize=fuzzer (libclang_rt.fuzzer)" "$rtpkg"

bin=$work/fuzz_safetensors
jansson=$(pkg-config --cflags --libs jansson)
# shellcheck disable=SC2086 # $mpi and $jansson are lists of flags
clang -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined \
  -fno-sanitize-recover=undefined -Wall -Wextra -D_POSIX_C_SOURCE=200809L \
  -I "$top/include" -I "$top/src" "$top/tests/fuzz/fuzz_safetensors.c" \
  "$top/src/ckpt/safetensors.c" "$top/src/core/error.c" -o "$bin" \
  $mpi $jansson ||
  { echo "fuzz: build failed" >&2; exit 1; }

cp "$top"/tests/fuzz/corpus/* "$work/corpus/"
# The format's tokens, so that mutations build plausible headers sooner.
for t in '"dtype"' '"shape"' '"data_offsets"' '"__metadata__"' '"F32"' \
  '"F64"' '"F16"' '"BF16"' '"I32"' '"I64"' '"U8"' '"BOOL"' '"F8_E4M3"' \
  '"F8_E5M2"' '"U64"' '18446744073709551615' '9223372036854775807' \
  '4294967296' '\u0000' '[0,0]' '[]' '{}' '-1' '1e3' 'null'; do
  printf '"%s"\n' "$(printf '%s' "$t" | sed 's/\\/\\\\/g; s/"/\\"/g')"
done >"$work/st.dict"

log=$work/fuzz.log
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 -dict="$work/st.dict" -artifact_prefix="$work/" \
  "$work/corpus" >"$log" 2>&1
rc=$?

runs=$(sed -n 's/^Done \([0-9]*\) runs in .*/\1/p' "$log" | tail -1)
[ -n "$runs" ] || runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
[ -n "$runs" ] || runs=$(sed -n 's/^#\([0-9]*\)[[:space:]].*/\1/p' "$log" | tail -1)
crashes=$(find "$work" -maxdepth 1 \( -name 'crash-*' -o -name 'leak-*' \
  -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
[ "$rc" != 0 ] && [ "$crashes" = 0 ] && crashes=1 # died without an input

if [ "$rc" != 0 ] || [ "$crashes" != 0 ]; then
  grep -E 'ERROR|SUMMARY|runtime error|Test unit written' "$log" | head -20
  echo "fuzz: findings and the log are in $work"
elif [ -z "${FUZZ_DIR:-}" ]; then
  rm -rf "$work"
fi
echo "fuzz: ${runs:-0} executions, $crashes crashes"
[ "$rc" = 0 ] && [ "$crashes" = 0 ]
