#!/bin/sh
# scripts/fuzz.sh [SECONDS] [PARSER...] - fuzzes the library's parsers with
# libFuzzer, each for SECONDS (default 20), all of them when none is named:
#   config       the YAML config file (src/core/options.c)
#   env          the TANDEM_* environment variables (src/core/options.c)
#   npy          the .npy header (src/data/npy.c)
#   tokens       the llm.c token-shard header (src/data/tokens.c)
#   safetensors  the safetensors header (src/ckpt/safetensors.c)
#   state        a checkpoint's state.json (src/ckpt/state.c)
#   index        model.safetensors.index.json (src/ckpt/state.c)
#   marker       a checkpoint's done marker (src/ckpt/commit.c)
# Each harness is tests/fuzz/fuzz_PARSER.c, built with clang, ASan and UBSan
# straight from the sources (no configure); it starts from a copy of its
# seed corpus (tests/fuzz/corpus-PARSER, tests/fuzz/corpus for safetensors;
# never changed) with tests/fuzz/PARSER.dict when there is one.  Prints
# "fuzz PARSER: N executions, C crashes" per parser and ends with the line
# "fuzz: N executions, C crashes" (the totals).  A crash is any sanitizer
# report, a harness property broken (__builtin_trap), a leak, a run over 10
# s, or one allocation over 64 MB (the inputs are 4 KB at most: such an
# allocation is sized by a field, not by the input).  Exits 1 on a crash
# (the input is kept and named), 77 when a tool is missing.
# FUZZ_DIR=dir keeps the builds, working corpora and findings there.
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
all="config env npy tokens safetensors state index marker"
usage() { echo "usage: $0 [SECONDS] [PARSER...]; parsers: $all" >&2; exit 2; }

secs=20
case ${1:-} in
'') ;;
*[!0-9]*) ;; # a parser's name
*) secs=$1; shift ;;
esac
[ "$secs" -gt 0 ] 2>/dev/null || usage
parsers=${*:-$all}
for p in $parsers; do
  case " $all " in *" $p "*) ;; *) usage ;; esac
done

missing() { echo "fuzz: $1; install it with: apt-get install $2" >&2; exit 77; }

command -v clang >/dev/null 2>&1 || missing "clang not found" "clang"
major=$(clang -dumpversion | cut -d. -f1)
rtpkg="libclang-rt-$major-dev" # Debian bookworm: libclang-rt-14-dev
command -v pkg-config >/dev/null 2>&1 || missing "pkg-config not found" \
  "pkg-config"
pkg-config --exists jansson || missing "jansson not found" "libjansson-dev"
pkg-config --exists yaml-0.1 || missing "libyaml not found" "libyaml-dev"
# core.h includes mpi.h and error.c calls MPI_Error_string.
if pkg-config --exists ompi-c; then mpi=$(pkg-config --cflags --libs ompi-c)
elif pkg-config --exists mpich; then mpi=$(pkg-config --cflags --libs mpich)
else missing "no MPI (mpi.h) found" "libopenmpi-dev"; fi
jansson=$(pkg-config --cflags --libs jansson)
yaml=$(pkg-config --cflags --libs yaml-0.1)

work=${FUZZ_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/tdm-fuzz.XXXXXX")}
mkdir -p "$work" || exit 1

# The fuzzer runtime is a package of its own on Debian.
printf 'int LLVMFuzzerTestOneInput(const char *d, long n)\n{ (void)d; (void)n; return 0; }\n' \
  >"$work/probe.c"
clang -fsanitize=fuzzer "$work/probe.c" -o "$work/probe" >/dev/null 2>&1 ||
  missing "clang cannot link -fsanitize=fuzzer (libclang_rt.fuzzer)" "$rtpkg"

# The library sources each harness needs (config and env include
# src/core/options.c itself, to walk its table of settings), and libraries.
sources() {
  case $1 in
  config | env) echo "src/core/error.c" ;;
  npy) echo "src/data/npy.c src/core/error.c" ;;
  tokens) echo "src/data/tokens.c src/core/error.c" ;;
  safetensors) echo "src/ckpt/safetensors.c src/core/error.c" ;;
  state | index)
    echo "src/ckpt/state.c src/core/dtype.c src/core/half.c src/core/error.c" ;;
  marker) echo "src/ckpt/commit.c src/core/files.c src/core/error.c" ;;
  esac
}
libs() {
  case $1 in
  config | env) echo "$mpi $yaml" ;;
  safetensors | state | index) echo "$mpi $jansson" ;;
  *) echo "$mpi" ;;
  esac
}

# One parser: build, fuzz, count; sets runs and crashes, returns non-zero
# on a finding (or a failed build).
fuzz_one() {
  p=$1 d=$work/$1 runs=0 crashes=0
  mkdir -p "$d/corpus" || return 1
  srcs=
  for f in tests/fuzz/fuzz_$p.c $(sources "$p"); do srcs="$srcs $top/$f"; done
  # shellcheck disable=SC2086,SC2046 # $srcs and the libraries are lists
  clang -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined \
    -fno-sanitize-recover=undefined -Wall -Wextra -D_POSIX_C_SOURCE=200809L \
    -I "$top/include" -I "$top/src" $srcs -o "$d/fuzz_$p" $(libs "$p") \
    >"$d/build.log" 2>&1 || {
    cat "$d/build.log" >&2; echo "fuzz $p: build failed" >&2
    return 1
  }
  seeds=$top/tests/fuzz/corpus-$p
  [ "$p" = safetensors ] && seeds=$top/tests/fuzz/corpus
  cp "$seeds"/* "$d/corpus/" || return 1
  dict=
  [ -f "$top/tests/fuzz/$p.dict" ] && dict=-dict=$top/tests/fuzz/$p.dict
  # The harnesses' temporary files (rewritten every run): in memory where
  # there is /dev/shm, many times faster than on a disk.
  shm=$d
  [ -d /dev/shm ] && [ -w /dev/shm ] && shm=/dev/shm
  tmp=$(mktemp -d "$shm/tdm-fuzz-$p.XXXXXX") || return 1
  log=$d/fuzz.log
  # -use_value_profile: comparisons count as coverage, which finds the
  # values just past a range check (the state.json bug took seconds with
  # it, and was not found in minutes without).
  # shellcheck disable=SC2086 # $dict is empty or one argument
  TMPDIR=$tmp UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$d/fuzz_$p" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -malloc_limit_mb=64 -use_value_profile=1 -print_final_stats=1 $dict \
    -artifact_prefix="$d/" "$d/corpus" >"$log" 2>&1
  rc=$?
  rm -rf "$tmp"
  runs=$(sed -n 's/^Done \([0-9]*\) runs in .*/\1/p' "$log" | tail -1)
  [ -n "$runs" ] || runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  [ -n "$runs" ] || runs=$(sed -n 's/^#\([0-9]*\)[[:space:]].*/\1/p' "$log" | tail -1)
  runs=${runs:-0}
  found=$(find "$d" -maxdepth 1 \( -name 'crash-*' -o -name 'leak-*' \
    -o -name 'timeout-*' -o -name 'oom-*' \))
  crashes=$(printf '%s' "$found" | grep -c .)
  [ "$rc" != 0 ] && [ "$crashes" = 0 ] && crashes=1 # died without an input
  [ "$rc" = 0 ] && [ "$crashes" = 0 ] && return 0
  grep -E 'ERROR|SUMMARY|runtime error|Test unit written' "$log" | head -20
  printf '%s\n' "$found" | sed -n "s|^.|fuzz $p: input kept: &|p"
  echo "fuzz $p: findings and the log are in $d"
  return 1
}

total=0 all_crashes=0 failed=0
for p in $parsers; do
  fuzz_one "$p" || failed=1
  echo "fuzz $p: $runs executions, $crashes crashes"
  total=$((total + runs)) all_crashes=$((all_crashes + crashes))
done
[ "$failed" = 0 ] && [ -z "${FUZZ_DIR:-}" ] && rm -rf "$work"
echo "fuzz: $total executions, $all_crashes crashes"
[ "$failed" = 0 ]
