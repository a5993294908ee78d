# Helpers the bench scripts share. Source after tests/lib/common.sh; set
# RUNTIME (seconds per timed fio run).

fio_iops() { # uri rw bs iodepth [size] -> "iops bw_MiBps"
    fio --name=b --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" --iodepth="$4" --size="${5:-1G}" \
        --time_based --runtime="$RUNTIME" --randrepeat=0 --output-format=json --output="$WORK/fio.json" >/dev/null 2>&1
    # fio's nbd engine may print a line before the JSON document.
    local dir=write
    [[ $2 == *read* ]] && dir=read
    sed -n '/^{/,$p' "$WORK/fio.json" | jq -r ".jobs[0].$dir | \"\(.iops) \(.bw / 1024)\""
}

# seqwrite_setup: the sequential-write benches' setup. A pair (4 GiB log,
# agents not started) protecting a preallocated 1 GiB volume, and qemu-nbd
# serving a preallocated 1 GiB peer file on PORT_BASE + 9; sets QPID and
# PEER_URI.
seqwrite_setup() {
    mkdir -p "$WORK/src"
    fallocate -l 1G "$WORK/src/disk0.img"
    fallocate -l 1G "$WORK/peer.img"
    LOG_CAPACITY=$((4 << 30)) setup_pair async 5000 disk0:1G
    qemu-nbd -f raw -x disk -p $((PORT_BASE + 9)) -t "$WORK/peer.img" --cache=writeback --aio=threads &
    QPID=$!
    PIDS+=("$QPID")
    wait_port $((PORT_BASE + 9))
    PEER_URI=nbd://127.0.0.1:$((PORT_BASE + 9))/disk
}
