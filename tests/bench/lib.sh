# Helpers the bench scripts share. Source after tests/lib/common.sh; set
# RUNTIME (seconds per timed fio run).

stat_ticks() { # /proc/.../stat -> its user + sys clock ticks. The fields are counted
    # after the command name's closing ')': a name may hold spaces ("CPU 0/TCG").
    sed 's/.*) //' "$1" | awk '{print $12 + $13}'
}

cpu_ticks() { # pid... -> their user + sys clock ticks, summed
    local t=0 pid
    for pid in "$@"; do t=$((t + $(stat_ticks "/proc/$pid/stat"))); done
    echo "$t"
}

vcpu_ticks() { # qemu_pid -> user + sys clock ticks of its vCPU threads ("CPU n/TCG"): the
    # rest of its CPU (cpu_ticks minus this) is QEMU's own, the devices' emulation and I/O.
    local t=0 task
    for task in /proc/"$1"/task/*; do
        [[ $(cat "$task/comm" 2>/dev/null) == CPU* ]] || continue
        t=$((t + $(stat_ticks "$task/stat")))
    done
    echo "$t"
}

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

# replicated_seqwrite URI: 1 MiB writes at QD8 for RUNTIME s through the
# protected agent's export URI, then until the recovery site has
# acknowledged every one of them; prints "fio_MiBps until_replicated_MiBps":
# what the writer saw (the log takes writes ahead of the link until it is
# full, then holds them) and the bytes over the time until the last was
# acknowledged, what the pipeline sustains whatever the log's size. The
# acknowledgement is read from the status file (rewritten every second):
# its own time stamp is the end, so the second rate reads low by up to a
# second in RUNTIME + the drain.
replicated_seqwrite() {
    local t0 bytes bw head st acked at
    t0=$(date +%s%3N)
    fio --name=b --ioengine=nbd --uri="$1" --rw=write --bs=1M --iodepth=8 --size=1G \
        --time_based --runtime="$RUNTIME" --output-format=json --output="$WORK/fio.json" >/dev/null 2>&1 ||
        fail "fio to $1 failed"
    read -r bytes bw < <(sed -n '/^{/,$p' "$WORK/fio.json" | jq -r '.jobs[0].write | "\(.io_bytes) \(.bw)"')
    st=$(fresh_status_json protected) || fail "the protected agent's status was not rewritten within 5 s"
    head=$(jq -r '.vpgs[0].head_seq' <<<"$st")
    for _ in $(seq 1 3000); do
        read -r acked at < <(status_json protected | jq -r '"\(.vpgs[0].acked_seq) \(.updated_ms)"')
        [ "$acked" -ge "$head" ] 2>/dev/null && break
        sleep 0.1
    done
    [ "$acked" -ge "$head" ] 2>/dev/null || fail "the recovery site did not acknowledge seq $head within 300 s"
    python3 -c "print('%.0f %.0f' % ($bw / 1024, $bytes / 2**20 / (($at - $t0) / 1000)))"
}

# seqwrite_setup: the sequential-write benches' setup. A pair (4 GiB log,
# preallocated unless LOG_PREALLOCATE says otherwise, as the agent ships;
# agents not started) protecting a preallocated 1 GiB volume, and qemu-nbd
# serving a preallocated 1 GiB peer file on PORT_BASE + 9; sets QPID and
# PEER_URI. Bitmap mode is off: a VPG in bitmap mode only marks its writes
# (docs/bitmap-mode.md), and a row measured so would not measure
# replication; with it off a full log holds writes until the link drains
# it, and the rows measure what replication sustains.
seqwrite_setup() {
    mkdir -p "$WORK/src"
    fallocate -l 1G "$WORK/src/disk0.img"
    fallocate -l 1G "$WORK/peer.img"
    BITMAP_TOML=$'[vpg.bitmap]\nenabled = false' LOG_PREALLOCATE=${LOG_PREALLOCATE-true} LOG_CAPACITY=$((4 << 30)) \
        setup_pair async 5000 disk0:1G
    qemu-nbd -f raw -x disk -p $((PORT_BASE + 9)) -t "$WORK/peer.img" --cache=writeback --aio=threads &
    QPID=$!
    PIDS+=("$QPID")
    wait_port $((PORT_BASE + 9))
    PEER_URI=nbd://127.0.0.1:$((PORT_BASE + 9))/disk
}
