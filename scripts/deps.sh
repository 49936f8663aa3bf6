#!/bin/sh
# Installs the Debian packages tandem needs, only those missing (idempotent).
# --test adds what the test suite uses beyond the build: clang with
# libFuzzer (the fuzz passes), python3-venv (a venv with the safetensors
# and numpy wheels, the interop oracle), and slurm-wlm with munge
# (tests/slurm.sh runs a one-node Slurm).
# The same names exist in Spack / RHEL: openmpi, libyaml(-devel), autoconf,
# automake, libtool, pkgconf, jansson(-devel), openblas(-devel) (examples/gpt).
set -e
packages="gcc make autoconf automake libtool pkg-config openmpi-bin libopenmpi-dev libyaml-dev libjansson-dev libopenblas-dev"
[ "${1:-}" = --test ] &&
  packages="$packages clang libclang-rt-14-dev python3 python3-venv slurm-wlm munge"
missing=
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
    missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "deps: installing$missing"
sudo=
[ "$(id -u)" = 0 ] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# shellcheck disable=SC2086
$sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
