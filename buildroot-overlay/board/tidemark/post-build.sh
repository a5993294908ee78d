#!/bin/sh
# Fix-ups to the root file system after the overlay is in place, shared by
# Buildroot (BR2_ROOTFS_POST_BUILD_SCRIPT) and the offline builder
# (image/build.sh). $1 is the target directory; TIDEMARK_BUILT_BY names
# the builder in /etc/tidemark-release (default: buildroot).
set -eu
TARGET=$1
# What first boot writes lives in /run/tidemark; /etc points there.
for f in securetty shadow resolv.conf hosts; do
    rm -f "$TARGET/etc/$f"
    ln -s "/run/tidemark/$f" "$TARGET/etc/$f"
done
ln -sfn /run/root "$TARGET/root"
mkdir -p "$TARGET/var/lib/tidemark" "$TARGET/mnt/config"
{
    echo "NAME=Tidemark appliance"
    echo "VERSION=$("$TARGET/usr/bin/tidemark" --version 2>/dev/null | awk '{print $2}' || echo unknown)"
    echo "BUILT_BY=${TIDEMARK_BUILT_BY:-buildroot}"
} >"$TARGET/etc/tidemark-release"
