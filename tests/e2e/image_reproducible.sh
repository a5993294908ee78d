#!/usr/bin/env bash
# `make image` is reproducible: a second build from the same inputs (same
# packages, same commit, same SOURCE_DATE_EPOCH) into another directory
# gives byte-identical files, the bootable disk included.
source "$(dirname "$0")/../lib/common.sh"

[ -f "$ROOT/build/image/SHA256SUMS" ] || fail "no image: run make image"
IMAGE_OUT=$WORK/image "$ROOT/image/build.sh" >"$WORK/build.log" 2>&1 || fail "second build failed: $(tail -5 "$WORK/build.log")"
diff <(cd "$ROOT/build/image" && cat SHA256SUMS packages.lock) <(cd "$WORK/image" && cat SHA256SUMS packages.lock) ||
    fail "two builds from the same inputs differ"
log "identical: $(wc -l <"$WORK/image/SHA256SUMS") files, disk $(sed -n 's/ *disk.img$//p' "$WORK/image/SHA256SUMS" | cut -c1-16)..."
log "PASS"
