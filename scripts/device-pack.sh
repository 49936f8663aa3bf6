#!/bin/sh
# scripts/device-pack.sh [--check]: packs Open MPI, libyaml, jansson and the
# Autotools for the GPU machine of the `device` tool. That machine has CUDA,
# NCCL and gcc, but no MPI, no Autotools and no network. Run this HERE
# (Debian bookworm, amd64, as root or with sudo), from anywhere in the
# checkout:
#
#   scripts/device-pack.sh            # .device/, about 33 MiB, once per clone
#   scripts/device-pack.sh --check    # the same, then the check below
#
# It downloads the Debian packages with apt-get download. The .debs are
# cached in $TDM_DEVICE_DEBS (default /var/tmp/tandem-device-debs), outside
# the tree. It unpacks them with dpkg-deb -x into .device/ at the
# repository root, strips documentation, and writes .device/env.sh.
# .device/ is listed in .git/info/exclude, so it travels only when a run
# names it in `carry`. On the device:
#
#   run(command="scripts/device-test.sh", carry=[".device"], timeout_s=600)
#   run(command=". .device/env.sh && mpicc ... && mpirun -np 1 ...", carry=[".device"])
#
# Sourcing .device/env.sh puts the private prefix first on PATH and
# LD_LIBRARY_PATH. It sets what a relocated Open MPI needs: OPAL_PREFIX,
# OPAL_SYSCONFDIR, PMIx's directories, running as root and no ssh. On its
# first use in a new place it rewrites the few absolute paths in the
# Autotools' scripts and the .pc files to that place. .device/.prefix
# records where they point now. It refuses to load (return 1) on a glibc
# older than the packed binaries need (2.36: libevent uses arc4random).
#
# The package set is the Depends closure (not Recommends) of $roots, not
# followed through $stop. $stop holds what any glibc system has (libc6,
# libgcc-s1, libstdc++6, zlib1g, ...), the compiler, and what a
# shared-library MPI on one host does not use: gfortran, the -dev packages
# of Open MPI's dependencies, ssh, and hwloc's X11/OpenCL plugins.
# $fallback packages are base libraries the machine probably has already.
# They go to a side folder that is used only where the machine lacks them.
# Perl is Debian's perl-base plus the few modules the Autotools load. It is
# run through a wrapper (.device/usr/bin/perl), so the machine's own perl
# is never mixed with it. The script fails when a packed program or
# library needs a shared library that is neither packed nor in $BASE_LIBS.
#
# --check: copies .device to another path (which tests the relocation).
# In a private mount namespace (unshare -m) it hides every file of the
# system's copies of the packed packages, and ssh, behind /dev/null. Then,
# in an empty environment, it sources env.sh and checks that mpicc, mpirun,
# perl and autoreconf resolve into the copy. It builds and runs an MPI
# program on 2 ranks, and runs autoreconf, configure and make on a small
# libtool + pkg-config(yaml-0.1) project.
#
# Idempotent: each run rebuilds .device/ from the cached .debs.
# shellcheck disable=SC2086,SC2116  # word lists are split on purpose
set -eu
check=no
case ${1:-} in
  --check) check=yes ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac
top=$(cd "$(dirname "$0")/.." && pwd)
dev=$top/.device
debs=${TDM_DEVICE_DEBS:-/var/tmp/tandem-device-debs}
multiarch=x86_64-linux-gnu

roots="openmpi-bin libopenmpi3 libopenmpi-dev openmpi-common
  libyaml-0-2 libyaml-dev libjansson4 libjansson-dev
  autoconf automake autotools-dev libtool m4 make
  pkg-config pkgconf pkgconf-bin libpkgconf3 perl-base"
# Never packed (nor followed): on every glibc system, the compiler the
# machine has, or unused by a shared MPI build on one host.
stop="libc6 libc6-dev libc-dev-bin linux-libc-dev libcrypt1 libcrypt-dev
  libgcc-s1 libstdc++6 gcc-12-base zlib1g zlib1g-dev libzstd1 liblzma5
  libbz2-1.0 libssl3 libtinfo6 libselinux1 libpcre2-8-0 libmd0
  libbsd0 libacl1 libattr1 libgmp10 libdb5.3 libgdbm6
  libgdbm-compat4 debconf debianutils dpkg tar adduser passwd
  gcc gcc-12 cpp cpp-12 binutils gfortran gfortran-12 libgfortran5
  perl perl-modules-5.36 libperl5.36 file libmagic1
  openssh-client libhwloc-plugins
  libevent-dev libhwloc-dev libibverbs-dev libpmix-dev libnl-3-dev
  libnl-route-3-dev libnuma-dev libltdl-dev libjs-jquery libjs-jquery-ui"
# Base libraries that a machine may lack: packed in a side folder that
# env.sh adds to LD_LIBRARY_PATH only when the machine's ld.so.cache lacks
# one of them, so that they never shadow the machine's own (newer) copies.
fallback="libudev1 libuuid1 libnuma1 libatomic1"
# Modules autoconf/automake/aclocal/autoreconf load beyond perl-base
# (measured with %INC on `autoreconf --install --force` of tandem).
perl_arch_extra="Data/Dumper.pm auto/Data/Dumper Time/HiRes.pm auto/Time/HiRes
  threads.pm threads auto/threads"
perl_share_extra="Class/Struct.pm File/Compare.pm File/Copy.pm File/Find.pm
  File/stat.pm Thread/Queue.pm Thread/Semaphore.pm if.pm"
# Shared libraries assumed on the machine (glibc, gcc's runtime, zlib).
BASE_LIBS="linux-vdso.so.1 ld-linux-x86-64.so.2 libc.so.6 libm.so.6
  libpthread.so.0 libdl.so.2 librt.so.1 libutil.so.1 libresolv.so.2
  libcrypt.so.1 libgcc_s.so.1 libstdc++.so.6 libz.so.1"

say() { echo "device-pack: $*"; }
die() { echo "device-pack: error: $*" >&2; exit 1; }
sudo=
[ "$(id -u)" = 0 ] || sudo=sudo
for t in apt-get apt-cache dpkg-deb readelf objdump; do
  command -v $t >/dev/null || die "$t is missing (a Debian machine with binutils is needed)"
done
[ "$(dpkg --print-architecture)" = amd64 ] ||
  die "the device is x86-64; run this on an amd64 machine"

# 0. Keep .device/ out of git (and so out of the tree that travels unless carried).
exclude=$(cd "$top" && git rev-parse --git-path info/exclude 2>/dev/null) ||
  exclude=$top/.git/info/exclude
case $exclude in /*) ;; *) exclude=$top/$exclude ;; esac
mkdir -p "$(dirname "$exclude")"
grep -qx '/.device/' "$exclude" 2>/dev/null || echo '/.device/' >>"$exclude"

# 1. Package lists.
if ! apt-cache show openmpi-bin >/dev/null 2>&1; then
  say "apt-get update"
  $sudo apt-get update -qq
fi

# 2. The closure: direct Depends/Pre-Depends (first of each alternative),
#    breadth first, not going through $stop.
in_list() { case " $(echo $2) " in *" $1 "*) return 0 ;; esac; return 1; }
closure=
queue=$(echo $roots)
while [ -n "$queue" ]; do
  set -- $queue
  p=$1
  shift
  queue="$*"
  in_list "$p" "$closure" && continue
  in_list "$p" "$stop" && continue
  closure="$closure $p"
  deps=$(apt-cache depends --no-recommends --no-suggests --no-conflicts \
      --no-breaks --no-replaces --no-enhances "$p" 2>/dev/null |
    awk '/^ *\|?(Pre)?Depends:/ { alt = ($1 ~ /^\|/); n = $2; sub(/:any$/, "", n)
           if (!skip && n !~ /^</) print n; skip = alt }')
  queue="$queue $deps"
done
closure=$(echo $closure | tr ' ' '\n' | sort | tr '\n' ' ')
say "packages:$(echo " $closure" | sed 's/ $//')"

# 3. Download (cached; apt-get download skips nothing, so check the version).
mkdir -p "$debs"
chmod 755 "$debs" 2>/dev/null || true
need=
for p in $closure perl-modules-5.36 libperl5.36; do
  v=$(apt-cache policy "$p" | awk '/Candidate:/ {print $2}')
  [ -n "$v" ] && [ "$v" != "(none)" ] || die "no candidate for $p"
  vf=$(echo "$v" | sed 's/:/%3a/')
  ls "$debs/${p}_${vf}_"*.deb >/dev/null 2>&1 || need="$need $p=$v"
done
if [ -n "$need" ]; then
  say "downloading:$need"
  (cd "$debs" && apt-get -q download $need 2>&1 |
    grep -v -e '^W: Download is performed unsandboxed' -e '^Get:' -e '^Fetched' || true)
fi
debfile() { # package -> its cached .deb at the candidate version
  v=$(apt-cache policy "$1" | awk '/Candidate:/ {print $2}' | sed 's/:/%3a/')
  f=$(ls "$debs/${1}_${v}_"*.deb 2>/dev/null | head -1)
  [ -n "$f" ] || die "download of $1 failed"
  echo "$f"
}

# 4. Unpack into a fresh tree.
new=$dev.new
rm -rf "$new"
mkdir -p "$new"
: >"$new/PACKAGES"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp" "$new"' EXIT
fb=$new/usr/lib/tandem-device/fallback
mkdir -p "$fb"
for p in $closure; do
  f=$(debfile "$p")
  if in_list "$p" "$fallback"; then
    rm -rf "$tmp/fb"
    dpkg-deb -x "$f" "$tmp/fb"
    find "$tmp/fb" -name '*.so.*' \( -type f -o -type l \) -exec cp -a {} "$fb/" \;
    echo "$(dpkg-deb -f "$f" Package Version | awk '{print $2}' | paste -sd' ') (fallback)" >>"$new/PACKAGES"
    continue
  fi
  dpkg-deb -x "$f" "$new"
  dpkg-deb -f "$f" Package Version | awk '{print $2}' | paste -sd' ' >>"$new/PACKAGES"
done
for f in "$fb"/*; do
  [ -f "$f" ] && [ ! -L "$f" ] && readelf -d "$f" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p'
done | sort -u >"$fb/SONAMES"
dpkg-deb -x "$(debfile libperl5.36)" "$tmp/libperl"
dpkg-deb -x "$(debfile perl-modules-5.36)" "$tmp/modules"
for p in libperl5.36 perl-modules-5.36; do
  echo "$(dpkg-deb -f "$(debfile $p)" Package Version | awk '{print $2}' | paste -sd' ') (part)" >>"$new/PACKAGES"
done
plib=$new/usr/lib/$multiarch/perl-base
for m in $perl_arch_extra; do
  mkdir -p "$plib/$(dirname "$m")"
  cp -a "$tmp/libperl/usr/lib/$multiarch/perl/5.36.0/$m" "$plib/$(dirname "$m")/"
done
for m in $perl_share_extra; do
  mkdir -p "$plib/$(dirname "$m")"
  cp -a "$tmp/modules/usr/share/perl/5.36.0/$m" "$plib/$(dirname "$m")/"
done

cd "$new"
# 5. What dpkg's maintainer scripts and update-alternatives would have done.
if [ -d lib ]; then # /lib is usr/lib on merged-/usr systems
  (cd lib && find . ! -type d) | while read -r f; do
    mkdir -p "usr/lib/$(dirname "$f")"
    mv "lib/$f" "usr/lib/$f"
  done
  rm -rf lib
fi
ln -sf mpicc.openmpi usr/bin/mpicc
ln -sf mpicxx.openmpi usr/bin/mpicxx
ln -sf mpirun.openmpi usr/bin/mpirun
ln -sf mpiexec.openmpi usr/bin/mpiexec
ln -sf automake-1.16 usr/bin/automake
ln -sf aclocal-1.16 usr/bin/aclocal
for f in usr/lib/libpsm1/libpsm_infinipath.so.1.*; do
  [ -e "$f" ] && ln -sf "../libpsm1/$(basename "$f")" "usr/lib/$multiarch/libpsm_infinipath.so.1"
done
ln -sf openmpi/lib/libmpi.so "usr/lib/$multiarch/libmpi.so"
# Perl: the real binary moves aside; usr/bin/perl becomes a wrapper that
# puts the packed modules first, so that scripts reach only this perl.
mkdir -p usr/lib/tandem-device
mv usr/bin/perl usr/lib/tandem-device/perl
rm -f usr/bin/perl5.36*
cat >usr/bin/perl <<'EOF'
#!/bin/sh
# perl-base 5.36 from Debian bookworm with the modules the Autotools need.
d=$(cd "$(dirname "$0")/../.." && pwd)
exec "$d/usr/lib/tandem-device/perl" -I"$d/usr/lib/x86_64-linux-gnu/perl-base" "$@"
EOF
chmod 755 usr/bin/perl

# 6. Strip what no build or run needs.
rm -rf usr/share/doc usr/share/doc-base usr/share/man usr/share/info \
  usr/share/locale usr/share/lintian usr/share/emacs usr/share/bug \
  etc/emacs etc/perl usr/share/perl5 usr/lib/$multiarch/fortran \
  usr/lib/$multiarch/libmpi_java* usr/lib/$multiarch/openmpi/lib/libmpi_java.so \
  usr/lib/$multiarch/openmpi/lib/mpi.jar usr/lib/$multiarch/openmpi/lib/shmem.jar \
  usr/bin/mpijavac usr/bin/mpijavac.pl usr/bin/dh_autotools-dev_*
# Fortran, Java and OpenSHMEM bindings, and Open MPI's internal headers
# (mpi.h needs only openmpi/include/*.h and, for C++, openmpi/ompi).
ompi=usr/lib/$multiarch/openmpi
rm -rf usr/lib/$multiarch/libmpi_mpifh* usr/lib/$multiarch/libmpi_usempi* \
  $ompi/lib/libmpi_mpifh.so $ompi/lib/libmpi_usempi* \
  usr/lib/$multiarch/liboshmem* $ompi/lib/liboshmem.so usr/bin/osh* usr/bin/shmem* \
  $ompi/lib/openmpi3/mca_spml_* $ompi/lib/openmpi3/mca_sshmem_* \
  $ompi/lib/openmpi3/mca_atomic_* $ompi/lib/openmpi3/mca_scoll_* \
  $ompi/lib/openmpi3/mca_memheap_* $ompi/include/openshmem $ompi/include/*shmem* \
  $ompi/include/openmpi/opal $ompi/include/openmpi/orte $ompi/include/openmpi/oshmem
find . -type l ! -exec test -e {} \; -delete
find . -name '*.a' -delete
find . -name '*.pod' -delete

# 7. Every ELF's needed libraries: packed, or in BASE_LIBS.
have=$(find . -name '*.so*' \( -type f -o -type l \) -exec basename {} \; | sort -u)
missing=
# shellcheck disable=SC2044  # no blanks in these names
for f in $(find . -type f \( -perm -u+x -o -name '*.so*' \)); do
  head -c4 "$f" | grep -q 'ELF' || continue
  for n in $(readelf -d "$f" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    in_list "$n" "$BASE_LIBS" && continue
    echo "$have" | grep -qx "$n" && continue
    missing="$missing\n  $f needs $n"
  done
done
[ -z "$missing" ] || die "unresolved shared libraries:$(printf '%b' "$missing")"
glibc=$(find . -type f \( -perm -u+x -o -name '*.so*' \) -exec sh -c \
    'head -c4 "$1" | grep -q ELF && objdump -T "$1"' _ {} \; 2>/dev/null |
  grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -t. -k1,1n -k2,2n -u | tail -1)
say "newest glibc symbol version needed: $glibc"

# 8. Relocation list and env.sh.
{
  for f in aclocal-1.16 autoconf autoheader autom4te automake-1.16 autoreconf \
    autoscan autoupdate ifnames libtoolize; do
    [ -f "usr/bin/$f" ] && echo "usr/bin/$f"
  done
  echo usr/share/autoconf/autom4te.cfg
  echo usr/share/automake-1.16/Automake/Config.pm
  find usr -name '*.pc' -type f
} >relocate.list
: >.prefix # the paths inside still read /usr/...
cat >env.sh <<EOF
# shellcheck shell=sh disable=SC2046
# .device/env.sh: source it (bash, from the repository root) to use the
# Open MPI, libyaml and Autotools that scripts/device-pack.sh packed:
#   . .device/env.sh
# Generated by scripts/device-pack.sh; do not edit.
tdm_device_glibc=$glibc
EOF
cat >>env.sh <<'EOF'
if [ -n "${BASH_SOURCE:-}" ]; then
  TDM_DEVICE=$(cd "$(dirname "${BASH_SOURCE}")" && pwd -P)
else
  TDM_DEVICE=$(pwd -P)/.device
fi
export TDM_DEVICE
tdm_device_env() {
  # A copy that lost the execute bits: give them back.
  [ -f "$TDM_DEVICE/usr/bin/orterun" ] && [ ! -x "$TDM_DEVICE/usr/bin/orterun" ] &&
    chmod a+x "$TDM_DEVICE"/usr/bin/* "$TDM_DEVICE/usr/lib/tandem-device/perl"
  [ -x "$TDM_DEVICE/usr/bin/orterun" ] || {
    echo "env.sh: $TDM_DEVICE holds no packed Open MPI (run scripts/device-pack.sh, carry .device)" >&2
    return 1; }
  # glibc: bookworm's binaries need $tdm_device_glibc or newer.
  tdm_g=$(ldd --version 2>/dev/null | head -1 | grep -o '[0-9][0-9]*\.[0-9][0-9]*$')
  if [ -n "$tdm_g" ] && [ "$(printf '%s\n%s\n' "$tdm_device_glibc" "$tdm_g" | sort -t. -k1,1n -k2,2n | head -1)" != "$tdm_device_glibc" ]; then
    echo "env.sh: glibc $tdm_g here, but the packed binaries need $tdm_device_glibc" >&2
    return 1
  fi
  # Base libraries the machine lacks (see fallback in device-pack.sh).
  tdm_fb=
  tdm_cache=$( (ldconfig -p || /sbin/ldconfig -p || /usr/sbin/ldconfig -p) 2>/dev/null)
  for tdm_s in $(cat "$TDM_DEVICE/usr/lib/tandem-device/fallback/SONAMES"); do
    printf '%s\n' "$tdm_cache" | grep -q "^[[:space:]]*$tdm_s " ||
      tdm_fb=$TDM_DEVICE/usr/lib/tandem-device/fallback
  done
  # Point the Autotools' scripts and the .pc files at this place (once).
  tdm_old=$(cat "$TDM_DEVICE/.prefix" 2>/dev/null)
  if [ "$tdm_old" != "$TDM_DEVICE" ]; then
    tdm_o=$(printf '%s' "$tdm_old" | sed 's/[].[\*^$#]/\\&/g')
    tdm_n=$(printf '%s' "$TDM_DEVICE" | sed 's/[\&#]/\\&/g')
    (cd "$TDM_DEVICE" && sed -i \
      -e "s#${tdm_o}/usr/bin/\(perl\|m4\|autom4te\|autoconf\|autoheader\)\([^A-Za-z0-9_.-]\|\$\)#${tdm_n}/usr/bin/\1\2#g" \
      -e "s#${tdm_o}/usr/share/\(autoconf\|automake-1\.16\|aclocal\|libtool\)#${tdm_n}/usr/share/\1#g" \
      -e "s#\"${tdm_o}/usr\"#\"${tdm_n}/usr\"#; s#\"${tdm_o}/usr/share\"#\"${tdm_n}/usr/share\"#" \
      -e "s#^prefix=${tdm_o}/usr\$#prefix=${tdm_n}/usr#" \
      $(cat relocate.list)) || { echo "env.sh: relocation failed" >&2; return 1; }
    printf '%s\n' "$TDM_DEVICE" >"$TDM_DEVICE/.prefix"
  fi
  return 0
}
if tdm_device_env; then
  unset tdm_g tdm_old tdm_o tdm_n tdm_cache tdm_s
  tdm_l=$TDM_DEVICE/usr/lib/x86_64-linux-gnu
  export PATH="$TDM_DEVICE/usr/bin:$PATH"
  export LD_LIBRARY_PATH="$tdm_l${tdm_fb:+:$tdm_fb}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export PKG_CONFIG_PATH="$tdm_l/pkgconfig:$TDM_DEVICE/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  # Open MPI 4.1 (Debian: prefix /usr, sysconfdir /etc/openmpi), relocated.
  export OPAL_PREFIX="$TDM_DEVICE/usr"
  export OPAL_SYSCONFDIR="$TDM_DEVICE/etc/openmpi"
  # PMIx 4.2 (Debian: prefix /usr/lib/x86_64-linux-gnu/pmix2, its libdir
  # compiled in as an absolute path: PMIX_PREFIX alone does not move its
  # plugins, PMIX_LIBDIR/PMIX_PKGLIBDIR do).
  export PMIX_INSTALL_PREFIX="$tdm_l/pmix2"
  export PMIX_PREFIX="$tdm_l/pmix2" PMIX_EXEC_PREFIX="$tdm_l/pmix2"
  export PMIX_LIBDIR="$tdm_l/pmix2/lib" PMIX_PKGLIBDIR="$tdm_l/pmix2/lib/pmix"
  export PMIX_DATADIR="$tdm_l/pmix2/share" PMIX_PKGDATADIR="$tdm_l/pmix2/share/pmix"
  # Running as root; no ssh there (Open MPI 4.1 refuses to start without an
  # rsh agent, even on one host: `false` is never called for local ranks);
  # no cross-memory attach assumed (gVisor machines may lack it).
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  export OMPI_MCA_plm_rsh_agent=${OMPI_MCA_plm_rsh_agent:-false}
  export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
  export OMPI_MCA_btl_base_warn_component_unused=0
  unset tdm_l tdm_fb
else
  false
fi
EOF

cd "$top"
rm -rf "$dev"
mv "$new" "$dev"
trap 'rm -rf "$tmp"' EXIT
# Relocate once here, so that the copy works on this machine too.
# shellcheck disable=SC1091
(cd "$top" && . "$dev/env.sh") || die "env.sh failed here"
say "$(wc -l <"$dev/PACKAGES") packages in $dev: $(du -sh --apparent-size "$dev" | cut -f1), $(find "$dev" -type f | wc -l) files"

[ "$check" = yes ] || exit 0

# ---- --check: the packed copy alone, somewhere else --------------------------
command -v unshare >/dev/null || die "--check needs unshare (util-linux)"
chk=$tmp/elsewhere
mkdir -p "$chk/proj"
cp -a "$dev" "$chk/.device"
for p in $(awk '{print $1}' "$dev/PACKAGES") perl perl-modules-5.36 \
    libperl5.36 libpmix-dev libhwloc-dev libevent-dev openssh-client; do
  in_list "$p" "$fallback" || dpkg -L "$p" 2>/dev/null || true
done | sort -u | while read -r f; do
  if [ -f "$f" ] && [ ! -L "$f" ]; then echo "$f"; fi
done >"$chk/hide.list"
cat >"$chk/hello.c" <<'END'
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
  int rank, size, sum = 0;
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  printf("rank %d of %d: sum of ranks %d\n", rank, size, sum);
  MPI_Finalize();
  return sum == size * (size - 1) / 2 ? 0 : 1;
}
END
cat >"$chk/proj/configure.ac" <<'END'
AC_INIT([probe], [1])
AC_CONFIG_AUX_DIR([build-aux])
AC_CONFIG_MACRO_DIRS([m4])
AM_INIT_AUTOMAKE([foreign -Wall -Werror])
AC_PROG_CC
AM_PROG_AR
LT_INIT([disable-static])
PKG_CHECK_MODULES([YAML], [yaml-0.1])
AC_CONFIG_FILES([Makefile])
AC_OUTPUT
END
cat >"$chk/proj/Makefile.am" <<'END'
ACLOCAL_AMFLAGS = -I m4
lib_LTLIBRARIES = libprobe.la
libprobe_la_SOURCES = probe.c
libprobe_la_CFLAGS = $(YAML_CFLAGS)
libprobe_la_LIBADD = $(YAML_LIBS)
END
cat >"$chk/proj/probe.c" <<'END'
#include <yaml.h>
const char *probe(void) { return yaml_get_version_string(); }
END
cat >"$chk/run.sh" <<'END'
set -e
cd "$1"
while read -r f; do mount --bind /dev/null "$f"; done <hide.list
echo "hidden behind /dev/null: $(wc -l <hide.list) files of the system's packages"
exec env -i HOME="$HOME" PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin bash -ec '
. .device/env.sh
for t in mpicc mpirun perl autoreconf pkg-config make m4; do
  w=$(command -v $t); echo "$t -> $w"
  case $w in "$PWD"/.device/*) ;; *) echo "not in the copy: $t"; exit 1 ;; esac
done
mpicc -Wall -Werror -o hello hello.c
timeout 60 mpirun -np 2 --oversubscribe ./hello
cd proj
autoreconf --install >autoreconf.out 2>&1 || { cat autoreconf.out; exit 1; }
./configure -q && make -s >/dev/null
echo "autoreconf, configure and make of a libtool + yaml-0.1 project: ok"'
END
[ -n "$chk" ] && [ -d "$chk/proj" ] || die "--check: no scratch folder"
unshare -m sh "$chk/run.sh" "$chk" || die "--check failed"
say "--check passed: a copy at $chk/.device works alone"
