#!/usr/bin/env bash
# What new page-cache pages cost here, and how much of the 1 MiB
# sequential-write gap it explains (`make bench` -> tests/bench/PAGE_CHURN.md).
#
# This machine is a Firecracker guest with free page reporting on: a page
# the guest frees is handed back to the host, and the next first touch of
# it faults in the host. qemu-nbd overwrites one file whose pages stay
# cached and never pays that; the protected log writes new segment files
# (and deletes retired ones), so it pays it on every byte. The same fio
# run (1 MiB writes at QD8, 2 GiB, capture only: no recovery agent, the
# log takes it all) against qemu-nbd and Tidemark's export, side by side:
# cold, then right after writing and deleting a file larger than the run
# writes (pages the host still backs). "Cold" is after 20 s idle: by then
# the guest has reported what it freed before to the host.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PORT_BASE=36700
source tests/lib/common.sh
source tests/bench/lib.sh
OUT=tests/bench/PAGE_CHURN.md
mkdir -p "$WORK/src"
fallocate -l 1G "$WORK/src/disk0.img"
fallocate -l 1G "$WORK/peer.img"
# Room for every run in the log: no run may reach bitmap mode.
LOG_CAPACITY=$((10 << 30)) setup_pair async 5000 disk0:1G
qemu-nbd -f raw -x disk -p $((PORT_BASE + 9)) -t "$WORK/peer.img" --cache=writeback --aio=threads &
PIDS+=("$!")
wait_port $((PORT_BASE + 9))
PEER_URI=nbd://127.0.0.1:$((PORT_BASE + 9))/disk
mibs() { # uri -> MiB/s of 1 MiB writes at QD8 over the 1 GiB file, twice
    fio --name=b --ioengine=nbd --uri="$1" --rw=write --bs=1M --iodepth=8 --size=1G --loops=2 \
        --output-format=json --output="$WORK/fio.json" >/dev/null 2>&1 || fail "fio to $1 failed"
    sed -n '/^{/,$p' "$WORK/fio.json" | jq -r '.jobs[0].write.bw / 1024 | floor'
}
warm() { dd if=/dev/zero of="$WORK/warm" bs=1M count=6144 2>/dev/null; rm -f "$WORK/warm"; }
start_protected
ROWS=()
row() { # name peer ours
    ROWS+=("| $1 | $3 MiB/s | $2 MiB/s | $(python3 -c "print('%.2f' % ($3 / $2))") |")
}
log "capture only, cold"
sleep 20
p=$(mibs "$PEER_URI")
sleep 20
t=$(mibs "$NBD_URI/disk0")
row "cold" "$p" "$t"
log "capture only, right after 6 GiB were written and deleted"
warm
p=$(mibs "$PEER_URI")
warm
t=$(mibs "$NBD_URI/disk0")
row "warm" "$p" "$t"
log "capture only, warm again"
warm
p=$(mibs "$PEER_URI")
warm
t=$(mibs "$NBD_URI/disk0")
row "warm again" "$p" "$t"
{
    echo "# New page-cache pages (tests/bench/page_churn.sh)"
    echo
    echo "Written by \`make bench\` on $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r)."
    echo "free page reporting: $(if [ -d /sys/module/page_reporting ]; then echo "on, order $(cat /sys/module/page_reporting/parameters/page_reporting_order)"; else echo off; fi)."
    echo
    echo "1 MiB sequential writes at QD8, 2 GiB, capture only (the log takes it all), same run:"
    echo
    echo "| pages | Tidemark | qemu-nbd | ratio |"
    echo "|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "Cold: after 20 s idle. Warm: right after 6 GiB were written and deleted. qemu-nbd"
    echo "overwrites one file whose pages stay cached; the protected log writes new segment files,"
    echo "and on a cold page cache each of their pages faults in the host first."
} >"$OUT"
cat "$OUT"
