#!/bin/sh
# Buildroot post-image: an empty data disk beside the squashfs root, then
# the OVA packager when it exists (ova/, open issue). $BINARIES_DIR holds
# bzImage and rootfs.squashfs.
set -eu
: "${BINARIES_DIR:?run from Buildroot}"
rm -f "$BINARIES_DIR/data.img"
truncate -s 256M "$BINARIES_DIR/data.img"
"$HOST_DIR/sbin/mkfs.ext4" -q -F -L tidemark-data "$BINARIES_DIR/data.img"
packager=$BR2_EXTERNAL_TIDEMARK_PATH/../ova/package.sh
if [ -x "$packager" ]; then
    "$packager" "$BINARIES_DIR"
else
    echo "post-image: no OVA packager yet; images are in $BINARIES_DIR"
fi
