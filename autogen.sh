#!/bin/sh
# Regenerates configure and the Makefile.in files from a git checkout.
set -e
cd "$(dirname "$0")"
autoreconf --install --force
# The TAP driver the test suite reports through ships with automake.
cp -f "$(automake --print-libdir)/tap-driver.sh" build-aux/tap-driver.sh
