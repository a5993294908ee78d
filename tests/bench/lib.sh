# Helpers the bench scripts share. Source after tests/lib/common.sh; set
# RUNTIME (seconds per timed fio run).

# wait_log_prepared: waits until the started protected agent's log has
# claimed its capacity (status: what it holds and its spares within one
# segment of it), as a log has a while after its first start; at most
# 180 s. Returns at once for a log that does not preallocate, and for a
# build whose status does not show the log.
wait_log_prepared() {
    local t0=$SECONDS have cap
    ! grep -q '^preallocate = false' "$WORK/protected.toml" || return 0
    while :; do
        read -r have cap < <(fresh_status_json protected |
            jq -r '.vpgs[0].log // {held_bytes: 0, spare_bytes: 0, capacity_bytes: 0} |
                "\(.held_bytes + .spare_bytes) \(.capacity_bytes)"')
        [ "$cap" = 0 ] && return 0
        [ $((have * 16)) -ge $((cap * 15)) ] && break
        [ $((SECONDS - t0)) -lt 180 ] || fail "the protected log did not claim its capacity in 180 s ($have of $cap)"
        sleep 0.5
    done
    log "the protected log claimed its capacity ($have of $cap bytes) in $((SECONDS - t0)) s"
}

fio_twice() { # uri -> MiB/s of 1 MiB writes at qd8 over the 1 GiB file, twice
    fio --name=b --ioengine=nbd --uri="$1" --rw=write --bs=1M --iodepth=8 --size=1G --loops=2 \
        --output-format=json --output="$WORK/fio.json" >/dev/null 2>&1
    sed -n '/^{/,$p' "$WORK/fio.json" | jq -r '.jobs[0].write.bw / 1024 | floor'
}

fio_iops() { # uri rw bs iodepth [size] -> "iops bw_MiBps"
    fio --name=b --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" --iodepth="$4" --size="${5:-1G}" \
        --time_based --runtime="$RUNTIME" --randrepeat=0 --output-format=json --output="$WORK/fio.json" >/dev/null 2>&1
    # fio's nbd engine may print a line before the JSON document.
    local dir=write
    [[ $2 == *read* ]] && dir=read
    sed -n '/^{/,$p' "$WORK/fio.json" | jq -r ".jobs[0].$dir | \"\(.iops) \(.bw / 1024)\""
}

# seqwrite_setup: the sequential-write benches' setup. A pair (4 GiB log,
# preallocated unless LOG_PREALLOCATE says otherwise, as the agent ships;
# agents not started) protecting a preallocated 1 GiB volume, and qemu-nbd
# serving a preallocated 1 GiB peer file on PORT_BASE + 9; sets QPID and
# PEER_URI.
seqwrite_setup() {
    mkdir -p "$WORK/src"
    fallocate -l 1G "$WORK/src/disk0.img"
    fallocate -l 1G "$WORK/peer.img"
    LOG_PREALLOCATE=${LOG_PREALLOCATE-true} LOG_CAPACITY=$((4 << 30)) setup_pair async 5000 disk0:1G
    qemu-nbd -f raw -x disk -p $((PORT_BASE + 9)) -t "$WORK/peer.img" --cache=writeback --aio=threads &
    QPID=$!
    PIDS+=("$QPID")
    wait_port $((PORT_BASE + 9))
    PEER_URI=nbd://127.0.0.1:$((PORT_BASE + 9))/disk
}
