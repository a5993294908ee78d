#!/usr/bin/env bash
# image/lio-module.sh KVER VERSION OUT.ko: builds the iSCSI target module
# (iscsi_target_mod.ko) for the Debian kernel KVER (package version
# VERSION) with Tidemark's patch, buildroot-overlay/patches/linux/0001-*:
# an ACL with mutual CHAP credentials refuses an initiator that logs in with
# one-way CHAP (stock LIO lets it in). Called by image/build.sh, which puts
# the module in place of the stock one.
#
# From Debian packages only (apt-get download, cached in
# build/image-cache): the kernel's source (only drivers/target/iscsi is
# unpacked), its headers and kbuild; gcc-12, as Debian built the kernel.
# The module is unsigned, as out-of-tree modules are: the kernel loads it
# and marks itself tainted (no Secure Boot lockdown on the appliance).
# The result is cached by kernel version and patch, and is reproducible
# (built in a fixed directory, debug info stripped).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
KVER=$1 VERSION=$2 OUT=$3
CACHE=$ROOT/build/image-cache
PATCH=$(ls "$ROOT"/buildroot-overlay/patches/linux/0001-*.patch)
series=$(cut -d. -f1,2 <<<"$KVER")                  # 6.1
abi=${KVER%-cloud-amd64}                            # 6.1.0-57
key=$(cat "$PATCH" "$0" | sha256sum | cut -c1-16)
cached=$CACHE/iscsi_target_mod-$KVER-$key.ko
if [ -s "$cached" ]; then
    cp "$cached" "$OUT"
    exit 0
fi

echo "image: building iscsi_target_mod for $KVER with $(basename "$PATCH")"
pkgs=("linux-source-$series=$VERSION" "linux-headers-$KVER=$VERSION" "linux-headers-$abi-common=$VERSION" "linux-kbuild-$series=$VERSION")
(cd "$CACHE" && apt-get download -q "${pkgs[@]}" >/dev/null) ||
    { echo "image: cannot fetch ${pkgs[*]} (the kernel's source and headers must be of the kernel's version)" >&2; exit 1; }
# A fixed directory: paths end up in the objects, and the build must be
# the same from any checkout.
B=/tmp/tidemark-lio-build
rm -rf "$B"
mkdir -p "$B/hdr"
trap 'rm -rf "$B"' EXIT
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
patch -s -p1 -d "$src" <"$PATCH"
M=$src/drivers/target/iscsi
rm -rf "$M/cxgbit"
make -s -C "$H" M="$M" CONFIG_ISCSI_TARGET=m -j"$(nproc)" modules 2>&1 | grep -v "Skipping BTF generation" >&2 || true
[ -s "$M/iscsi_target_mod.ko" ] || { echo "image: building iscsi_target_mod failed" >&2; exit 1; }
strip --strip-debug "$M/iscsi_target_mod.ko"
objcopy -O binary --only-section=.modinfo "$M/iscsi_target_mod.ko" "$B/modinfo" &&
    tr '\0' '\n' <"$B/modinfo" | grep -q '^parm=require_mutual_chap:' ||
    { echo "image: the built iscsi_target_mod lacks require_mutual_chap (patch not applied?)" >&2; exit 1; }
cp "$M/iscsi_target_mod.ko" "$cached.tmp" && mv "$cached.tmp" "$cached"
cp "$cached" "$OUT"
