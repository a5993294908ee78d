#!/usr/bin/env bash
# image/lio-module.sh KVER VERSION OUT.ko: builds the iSCSI target module
# (iscsi_target_mod.ko) for the Debian kernel KVER (package version
# VERSION) with Tidemark's patches, buildroot-overlay/patches/linux/*.patch
# (each may touch drivers/target/iscsi only; today one: an ACL with mutual
# CHAP credentials refuses an initiator that logs in with one-way CHAP,
# which stock LIO lets in). Called by image/build.sh, which puts
# the module in place of the stock one.
#
# From Debian packages only (apt-get download, cached in
# build/image-cache): the kernel's source (only drivers/target/iscsi is
# unpacked), its headers and kbuild; gcc-12, as Debian built the kernel.
# The module is unsigned, as out-of-tree modules are: the kernel loads it
# and marks itself tainted (no Secure Boot lockdown on the appliance).
# The result is cached by kernel release, package version, patches and this
# script, and is reproducible (build paths mapped away, debug info
# stripped).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
KVER=$1 VERSION=$2 OUT=$3
CACHE=$ROOT/build/image-cache
mapfile -t PATCHES < <(ls "$ROOT"/buildroot-overlay/patches/linux/*.patch | sort)
((${#PATCHES[@]})) || { echo "image: no patch in buildroot-overlay/patches/linux" >&2; exit 1; }
series=$(cut -d. -f1,2 <<<"$KVER")                  # 6.1
abi=${KVER%-cloud-amd64}                            # 6.1.0-57
key=$(cat "${PATCHES[@]}" "$0" | sha256sum | cut -c1-16)
cached=$CACHE/iscsi_target_mod-$KVER-$(tr ':' '_' <<<"$VERSION")-$key.ko
mkdir -p "$CACHE"
# One build at a time per cache (two checkouts may share none of this).
exec 9>"$CACHE/.lio-module.lock"
flock 9

# modinfo FILE KEY: the values of KEY in a module's .modinfo.
modinfo_of() {
    objcopy -O binary --only-section=.modinfo "$1" /dev/stdout | tr '\0' '\n' | sed -n "s/^$2=//p"
}
# A module the kernel will take as its own: vermagic names KVER, and the
# parameter the agent looks for is there.
check() {
    local vermagic parms
    vermagic=$(modinfo_of "$1" vermagic)
    parms=$(modinfo_of "$1" parm)
    [[ $vermagic == "$KVER "* ]] || { echo "image: $1 is not built for $KVER ($vermagic)" >&2; exit 1; }
    grep -q '^require_mutual_chap:' <<<"$parms" ||
        { echo "image: $1 lacks require_mutual_chap (patch not applied?)" >&2; exit 1; }
}
if [ -s "$cached" ]; then
    check "$cached"
    cp "$cached" "$OUT"
    exit 0
fi

echo "image: building iscsi_target_mod for $KVER ($VERSION) with ${PATCHES[*]##*/}"
pkgs=("linux-source-$series=$VERSION" "linux-headers-$KVER=$VERSION" "linux-headers-$abi-common=$VERSION" "linux-kbuild-$series=$VERSION")
(cd "$CACHE" && apt-get download -q "${pkgs[@]}" >/dev/null) ||
    { echo "image: cannot fetch ${pkgs[*]} (the kernel's source and headers must be of the kernel's version)" >&2; exit 1; }
B=$(mktemp -d /tmp/tidemark-lio.XXXXXX)
trap 'rm -rf "$B"' EXIT
mkdir "$B/hdr"
deb() { ls "$CACHE/${1}_$(sed 's/:/%3a/' <<<"$VERSION")"_*.deb; }
for p in "linux-headers-$KVER" "linux-headers-$abi-common" "linux-kbuild-$series"; do
    dpkg-deb -x "$(deb "$p")" "$B/hdr"
done
H=$B/hdr/usr/src/linux-headers-$KVER
# The headers' Makefile includes the common half by its installed path.
sed -i "s|include /usr/src/|include $B/hdr/usr/src/|" "$H/Makefile"
dpkg-deb --fsys-tarfile "$(deb "linux-source-$series")" | tar -xO "./usr/src/linux-source-$series.tar.xz" |
    tar -xJ -C "$B" "linux-source-$series/drivers/target/iscsi"
src=$B/linux-source-$series
for p in "${PATCHES[@]}"; do
    patch -s -p1 -d "$src" <"$p" || { echo "image: $(basename "$p") does not apply to $VERSION's source" >&2; exit 1; }
done
M=$src/drivers/target/iscsi
rm -rf "$M/cxgbit"
# The build directory's name is random: map it away, so that no path of it
# is in the module (the same module from any checkout).
if ! make -s -C "$H" M="$M" CONFIG_ISCSI_TARGET=m KCFLAGS="-ffile-prefix-map=$B/=" -j"$(nproc)" modules \
    2> >(grep -v "Skipping BTF generation" >&2); then
    echo "image: building iscsi_target_mod failed" >&2
    exit 1
fi
strip --strip-debug "$M/iscsi_target_mod.ko"
! grep -q "$B" "$M/iscsi_target_mod.ko" || { echo "image: the module names its build directory" >&2; exit 1; }
check "$M/iscsi_target_mod.ko"
cp "$M/iscsi_target_mod.ko" "$cached.tmp" && mv "$cached.tmp" "$cached"
cp "$cached" "$OUT"
