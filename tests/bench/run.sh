#!/usr/bin/env bash
# `make bench`: Tidemark's figures, each beside a peer measured in the same
# run on the same disk. Prints `BENCH <name> <value> <unit> peer=<v>
# ratio=<r>` lines and writes tests/bench/RESULTS.md. Nothing here asserts:
# the machines are shared and noisy; goals are in the table for reading.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PORT_BASE=36000
source tests/lib/common.sh
source tests/bench/lib.sh
RESULTS=tests/bench/RESULTS.md
RUNTIME=${BENCH_RUNTIME:-10}
ROWS=()
NOTES=()

bench() { # name value unit peer_name peer_value goal higher_is_better(1|0)
    local ratio
    ratio=$(python3 -c "print('%.2f' % ($2 / $5) if $5 else 'n/a')")
    echo "BENCH $1 $2 $3 peer=$5 ratio=$ratio"
    ROWS+=("| $1 | $2 $3 | $4: $5 $3 | $ratio | $6 |")
}

seconds() { python3 -c "import time; print(time.time())"; }

rss_mib() { awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }

cpu_of() { # command... -> user + sys seconds it took (its output is discarded)
    local TIMEFORMAT='%U %S' t
    t=$({ time "$@" >/dev/null 2>&1; } 2>&1)
    awk '{printf "%.3f", $1 + $2}' <<<"$t"
}

wait_quiet() { # pid... : until they use under 2 ticks in half a second (30 s at most)
    local before after
    for _ in $(seq 1 60); do
        before=$(cpu_ticks "$@")
        sleep 0.5
        after=$(cpu_ticks "$@")
        [ $((after - before)) -lt 2 ] && return 0
    done
}

fio_gib() { # uri: 1 GiB of 1 MiB writes at QD8, once, of data that compresses about 2:1
    fio --name=b --ioengine=nbd --uri="$1" --rw=write --bs=1M --iodepth=8 --size=1G \
        --refill_buffers --buffer_compress_percentage=50 --buffer_compress_chunk=4k \
        --output-format=json --output="$WORK/fio.json" >/dev/null 2>&1 || fail "fio to $1 failed"
}

# CPU seconds (user + sys, both agents) to replicate 1 GiB of 1 MiB writes,
# from the NBD socket to the replica, beside the floor of the work the
# pipeline cannot skip on the same bytes: serving them over NBD (qemu-nbd),
# compressing and decompressing them (zstd -1, in memory) and encrypting
# and decrypting what compression leaves (AES-256-GCM). Then what the three
# extra writes of the bytes (protected log, recovery journal, replica) cost
# as a plain `dd` into a new file; the rest is Tidemark's own overhead.
cpu_per_gib() {
    local tck q0 q1 p0 p1 r0 r1 zline zin zout zc_mbs zd_mbs aes_kps dd_one
    local serve prot rec ours zc zd aes floor dd3 left
    tck=$(getconf CLK_TCK)
    wait_quiet "$QPID"
    q0=$(cpu_ticks "$QPID")
    fio_gib "$PEER_URI"
    wait_quiet "$QPID"
    q1=$(cpu_ticks "$QPID")
    wait_quiet "$PROTECTED_PID" "$RECOVERY_PID"
    p0=$(cpu_ticks "$PROTECTED_PID")
    r0=$(cpu_ticks "$RECOVERY_PID")
    fio_gib "$NBD_URI/disk0"
    wait_replicated 300
    wait_quiet "$PROTECTED_PID" "$RECOVERY_PID"
    p1=$(cpu_ticks "$PROTECTED_PID")
    r1=$(cpu_ticks "$RECOVERY_PID")
    # The peer file now holds 1 GiB of the kind of bytes fio sent both.
    # zstd's own benchmark: one thread, in memory, no file written.
    zline=$(zstd -b1 -i1 "$WORK/peer.img" 2>&1 | tr '\r' '\n' | grep 'MB/s, ' | tail -1)
    read -r zin zout zc_mbs zd_mbs < <(sed -E 's/.*: *([0-9]+) -> *([0-9]+) .*, *([0-9.]+) MB\/s, *([0-9.]+) MB\/s.*/\1 \2 \3 \4/' <<<"$zline")
    aes_kps=$(openssl speed -elapsed -seconds 2 -bytes 16384 -evp aes-256-gcm 2>/dev/null | awk '/^AES-256-GCM/ {sub("k", "", $2); print $2}')
    dd_one=$(cpu_of dd if=/dev/zero of="$WORK/dd.img" bs=1M count=1024 conv=fdatasync)
    rm -f "$WORK/dd.img"
    read -r serve prot rec ours zc zd aes floor dd3 left aes_raw floor_raw left_raw < <(python3 -c "
tck = $tck
serve = ($q1 - $q0) / tck
prot = ($p1 - $p0) / tck
rec = ($r1 - $r0) / tck
ours = prot + rec
zc = $zin / ($zc_mbs * 1e6)
zd = $zin / ($zd_mbs * 1e6)
aes = 2 * $zout / ($aes_kps * 1000)
floor = serve + zc + zd + aes
dd3 = 3 * $dd_one
aes_raw = 2 * $zin / ($aes_kps * 1000)
floor_raw = serve + aes_raw
print('%.2f %.2f %.2f %.2f %.2f %.2f %.2f %.2f %.2f %.2f %.2f %.2f %.2f' % (serve, prot, rec, ours, zc, zd, aes, floor, dd3, ours - floor - dd3, aes_raw, floor_raw, ours - floor_raw - dd3))")
    bench cpu_s_per_replicated_GiB "$ours" s floor "$floor" "— (lower is better)"
    NOTES+=("CPU per replicated GiB of 1 MiB writes (data fio makes 2:1 compressible): Tidemark ${ours} s,")
    NOTES+=("protected agent ${prot} s and recovery agent ${rec} s. The floor, ${floor} s: qemu-nbd serving the same")
    NOTES+=("GiB ${serve} s, zstd -1 ${zc} s, zstd -d ${zd} s, AES-256-GCM both ways on the $((zout >> 20)) MiB zstd")
    NOTES+=("leaves ${aes} s. Beyond it: the log, journal and replica writes, as \`dd\` into a new file, ${dd3} s")
    NOTES+=("(3 x ${dd_one} s); Tidemark's own overhead, the rest: ${left} s (see the profile below).")
    NOTES+=("On loopback the link takes bytes faster than zstd makes them, so the sender sends a backlog")
    NOTES+=("raw (wire/link_pace.rs): that floor is then qemu-nbd's ${serve} s and AES-256-GCM both ways on the")
    NOTES+=("whole GiB ${aes_raw} s, ${floor_raw} s, and the rest beyond it and the writes ${left_raw} s.")
}

log "1/6 fio through the inline export (replication running) vs qemu-nbd, same disk"
seqwrite_setup
# Capture alone first (no recovery agent yet: the log takes it all), so
# the cost of replicating on the same cores shows apart. A fixed 2 GiB,
# not a time, so the 4 GiB log cannot fill.
start_protected
wait_log_prepared
pbw=$(fio_twice "$PEER_URI")
tbw=$(fio_twice "$NBD_URI/disk0")
bench fio_seqwrite_1M_qd8_capture_only "$tbw" MiB/s qemu-nbd "$pbw" "≥ 0.9×"
start_recovery
wait_replicated 180
read -r piops _ < <(fio_iops "$PEER_URI" randwrite 4k 32)
read -r tiops _ < <(fio_iops "$NBD_URI/disk0" randwrite 4k 32)
bench fio_randwrite_4k_qd32 "$(printf %.0f "$tiops")" IOPS qemu-nbd "$(printf %.0f "$piops")" "≥ 0.8×"
read -r _ pbw < <(fio_iops "$PEER_URI" write 1M 8)
read -r tbw tend < <(replicated_seqwrite "$NBD_URI/disk0")
bench fio_seqwrite_1M_qd8 "$tbw" MiB/s qemu-nbd "$(printf %.0f "$pbw")" "≥ 0.9×"
bench seqwrite_1M_qd8_until_replicated "$tend" MiB/s qemu-nbd "$(printf %.0f "$pbw")" "≥ 0.9×"
wait_replicated 300
cpu_per_gib
RSS_P=$(rss_mib "$PROTECTED_PID")
RSS_R=$(rss_mib "$RECOVERY_PID")
RSS_Q=$(rss_mib "$QPID")
bench peak_rss_protected "$RSS_P" MiB qemu-nbd "$RSS_Q" "≤ 64 MiB"
bench peak_rss_recovery "$RSS_R" MiB qemu-nbd "$RSS_Q" "≤ 64 MiB"
kill -9 "$PROTECTED_PID" "$RECOVERY_PID" "$QPID"

log "2/6 RPO through a 100 Mbit/s link, writes at 50 Mbit/s, vs plain TCP on the same link"
rm -rf "$WORK/a" "$WORK/b" "$WORK/src"
USE_PROXY=1 setup_pair async 1000 rpo:64M
start_wan_link --map "$((PORT_BASE + 7))=127.0.0.1:$((PORT_BASE + 8))" --bandwidth-bps 100000000
start_recovery
start_protected
wait_replicated 120
python3 tests/bench/rpo.py watch "$WORK/b/data/journal/vpg1" $((RUNTIME + 5)) "$WORK/seen" &
W=$!
python3 tests/bench/rpo.py writer "$NBD_PORT" rpo "$RUNTIME" 6250000 "$WORK/flushed"
wait "$W"
read -r p50 p99 n total < <(python3 tests/bench/rpo.py report "$WORK/flushed" "$WORK/seen")
python3 tests/bench/rpo.py sink $((PORT_BASE + 8)) "$WORK/arrived" $((RUNTIME + 10)) &
S=$!
sleep 0.5
python3 tests/bench/rpo.py source $((PORT_BASE + 7)) "$RUNTIME" 6250000 "$WORK/sent"
wait "$S" || true
read -r l50 l99 _ _ < <(python3 tests/bench/rpo.py report "$WORK/sent" "$WORK/arrived")
bench rpo_p50 "$p50" ms plain-TCP "$l50" "—"
bench rpo_p99 "$p99" ms plain-TCP "$l99" "p99 ≤ 1000 ms"
log "RPO samples: $n of $total flushed writes seen in the journal"
kill -9 "$PROTECTED_PID" "$RECOVERY_PID"

log "3/6 batch compression vs the zstd -1 CLI on the same data"
# A mixed corpus: text (docs, man pages) and binaries, 128 MiB.
( set +o pipefail
  tar -cf - /usr/share/doc /usr/share/man 2>/dev/null | head -c $((96 << 20))
  cat /usr/lib/x86_64-linux-gnu/*.so* 2>/dev/null | head -c $((32 << 20)) ) >"$WORK/corpus"
cat "$WORK/corpus" >/dev/null # both read it from the page cache
line=$("$TIDEMARK" bench-compress "$WORK/corpus")
ours=${line%% *}
ours_ratio=$(sed -n 's/.*(\([0-9.]*\)x).*/\1/p' <<<"$line")
start=$(date +%s.%N)
zstd -1 -q -c "$WORK/corpus" >"$WORK/corpus.zst"
end=$(date +%s.%N)
size=$(stat -c %s "$WORK/corpus")
peer=$(python3 -c "print('%.1f' % ($size / ($end - $start) / 1e6))")
peer_ratio=$(python3 -c "print('%.2f' % ($size / $(stat -c %s "$WORK/corpus.zst")))")
bench zstd_batch_compress "$ours" MB/s zstd-1-CLI "$peer" "—"
bench zstd_compression_ratio "$ours_ratio" x zstd-1-CLI "$peer_ratio" "— (4 MiB batches, adaptive)"

log "4/6 recovery: restore vs qemu-img convert, PIT export reads vs qemu-nbd, failback bytes vs rsync"
rm -rf "$WORK/a" "$WORK/b" "$WORK/src"
mkdir -p "$WORK/src"
head -c 512M /dev/urandom >"$WORK/src/disk0.img"
setup_pair async 1000 disk0:512M
printf '[exports]\nlisten = "127.0.0.1:%s"\n' $((PORT_BASE + 6)) >>"$WORK/recovery.toml"
start_recovery
start_protected
wait_replicated 300
sync
# Restore (from the journal: the replica is empty inside a 4 h window).
t0=$(seconds)
restore_to latest "$WORK/restored"
t1=$(seconds)
rm -rf "$WORK/restored"
t2=$(seconds)
qemu-img convert -f raw -O raw "$WORK/src/disk0.img" "$WORK/converted.img"
sync -f "$WORK/converted.img"
t3=$(seconds)
rm -f "$WORK/converted.img"
ours=$(python3 -c "print('%.0f' % (512 / ($t1 - $t0)))")
peer=$(python3 -c "print('%.0f' % (512 / ($t3 - $t2)))")
bench restore_512M "$ours" MiB/s qemu-img-convert "$peer" "≥ 0.8×"
# Point-in-time export reads vs qemu-nbd on a plain file.
"$TIDEMARK" export --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint latest >"$WORK/export.out" 2>&1 &
EXPORT_PID=$!
PIDS+=("$EXPORT_PID")
for _ in $(seq 1 300); do grep -q nbd:// "$WORK/export.out" && break; sleep 0.1; done
PIT_URI=$(grep -o 'nbd://[^ ]*' "$WORK/export.out" | head -1)
qemu-nbd -f raw -x disk -p $((PORT_BASE + 9)) -r -t "$WORK/src/disk0.img" --cache=writeback --aio=threads &
QPID=$!
PIDS+=("$QPID")
wait_port $((PORT_BASE + 9))
read -r _ pbw < <(fio_iops "nbd://127.0.0.1:$((PORT_BASE + 9))/disk" read 1M 8 512M)
read -r _ tbw < <(fio_iops "$PIT_URI" read 1M 8 512M)
bench pit_export_seqread_1M_qd8 "$(printf %.0f "$tbw")" MiB/s qemu-nbd "$(printf %.0f "$pbw")" "≥ 0.7×"
kill "$EXPORT_PID" "$QPID"
# Failback: fail over, change 1 % of the 64 KiB extents on the recovered
# side, reverse; rsync's delta transfer of the same change is the peer.
"$TIDEMARK" failover --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint latest >/dev/null
cp --sparse=never "$WORK/src/disk0.img" "$WORK/rsync-old.img"
args=()
for i in $(seq 0 81); do
    head -c 64K /dev/urandom >"$WORK/change-$i"
    args+=(-c "write -s $WORK/change-$i $((i * 100 * 65536)) 64k")
done
qemu-io -f raw "${args[@]}" "nbd://127.0.0.1:$((PORT_BASE + 6))/vpg1/disk0" >/dev/null
wait_status protected "stopped:" # the protected side has heard of the failover
out=$("$TIDEMARK" reverse --config "$WORK/protected.toml" --vpg vpg1 --wait 300s)
pct=$(sed -n 's/.*(\([0-9.]*\)%).*/\1/p' <<<"$out")
qemu-img convert -f raw -O raw "nbd://127.0.0.1:$((PORT_BASE + 6))/vpg1/disk0" "$WORK/rsync-new.img"
sent=$(rsync --no-whole-file --inplace --stats "$WORK/rsync-new.img" "$WORK/rsync-old.img" | sed -n 's/^Total bytes sent: \([0-9,]*\).*/\1/p' | tr -d ,)
rsync_pct=$(python3 -c "print('%.2f' % ($sent * 100 / (512 << 20)))")
bench failback_bytes_for_1pct_change "$pct" "%_of_volume" rsync-delta "$rsync_pct" "≤ 2 %"
kill -9 "$PROTECTED_PID" "$RECOVERY_PID"
rm -f "$WORK/rsync-old.img" "$WORK/rsync-new.img"

log "5/6 scale: one protected agent with 16 VPGs x 8 volumes (128 exports), writes on all of them"
rm -rf "$WORK/a" "$WORK/b" "$WORK/src" "$WORK/peer"
mkdir -p "$WORK/peer"
specs=()
for v in $(seq 0 7); do specs+=("g1v$v:32M"); done
LOG_CAPACITY=$((64 << 20)) setup_pair async 5000 "${specs[@]}"
for g in $(seq 2 16); do
    printf '[[vpg]]\nname = "vpg%s"\ncheckpoint_interval_ms = 5000\n' "$g" >>"$WORK/protected.toml"
    for v in $(seq 0 7); do
        truncate -s 32M "$WORK/src/g${g}v$v.img"
        printf '[[vpg.volume]]\nname = "g%sv%s"\npath = "%s"\n' "$g" "$v" "$WORK/src/g${g}v$v.img" >>"$WORK/protected.toml"
    done
done
start_recovery
start_protected
wait_replicated 300
# One fio job per export: 16 MiB of 256 KiB writes each at QD2, 2 GiB in
# all. The peer is the same jobs against 128 qemu-nbd processes, one per
# file (what serving 128 disks over NBD costs without Tidemark).
{ echo "[global]"; echo "rw=write"; echo "bs=256k"; echo "size=16M"; echo "thread"; echo "ioengine=nbd"; echo "iodepth=2"; } >"$WORK/scale-tm.fio"
cp "$WORK/scale-tm.fio" "$WORK/scale-peer.fio"
PEER_PIDS=()
port=$((PORT_BASE + 100))
for g in $(seq 1 16); do
    for v in $(seq 0 7); do
        printf '[g%sv%s]\nuri=nbd://127.0.0.1:%s/g%sv%s\n' "$g" "$v" "$NBD_PORT" "$g" "$v" >>"$WORK/scale-tm.fio"
        truncate -s 32M "$WORK/peer/g${g}v$v.img"
        qemu-nbd -f raw -x disk -p "$port" -t "$WORK/peer/g${g}v$v.img" --cache=writeback --aio=threads &
        PEER_PIDS+=($!)
        PIDS+=($!)
        printf '[g%sv%s]\nuri=nbd://127.0.0.1:%s/disk\n' "$g" "$v" "$port" >>"$WORK/scale-peer.fio"
        port=$((port + 1))
    done
done
for p in $(seq $((PORT_BASE + 100)) $((port - 1))); do wait_port "$p"; done
scale_bw() { # jobfile -> aggregate MiB/s
    fio --group_reporting --output-format=json --output="$WORK/scale.json" "$1" >"$WORK/scale.err" 2>&1 || fail "fio $1 failed: $(tail -5 "$WORK/scale.err")"
    sed -n '/^{/,$p' "$WORK/scale.json" | jq -r '.jobs[0].write.bw / 1024 | floor'
}
pbw=$(scale_bw "$WORK/scale-peer.fio")
tbw=$(scale_bw "$WORK/scale-tm.fio")
bench scale_128_exports_write_256k "$tbw" MiB/s 128-qemu-nbd "$pbw" "—"
peer_rss=$(for pid in "${PEER_PIDS[@]}"; do rss_mib "$pid"; echo; done | awk '{s += $1} END {printf "%.1f", s}')
bench scale_128_exports_rss_protected "$(rss_mib "$PROTECTED_PID")" MiB 128-qemu-nbd "$peer_rss" "≤ 128 MiB"
kill -9 "$PROTECTED_PID" "$RECOVERY_PID" "${PEER_PIDS[@]}"

log "6/6 writing $RESULTS"
{
    echo "# Benchmark results"
    echo
    echo "Written by \`make bench\` on $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r)."
    echo "Each figure is measured beside its peer in the same run, on the same disk."
    echo "fio runs ${RUNTIME} s per job against preallocated 1 GiB files; replication to a"
    echo "local recovery agent runs throughout, except in the capture_only row (2 GiB written before"
    echo "the recovery agent starts, so the log takes it all). The sequential rows run with bitmap mode"
    echo "off (in bitmap mode writes are only marked, not replicated): a full 4 GiB log holds writes"
    echo "until the link drains it. fio_seqwrite_1M_qd8 is what fio saw; the until_replicated row is"
    echo "the same bytes over the time until the recovery site acknowledged the last (status, +-1 s)."
    echo "RPO: time from a FLUSH reply to the write"
    echo "appearing in the recovery journal, through wanproxy capped at 100 Mbit/s,"
    echo "writes of 64 KiB at 50 Mbit/s; the peer is the same messages over plain TCP."
    echo "Recovery: a 512 MiB volume of random data. Restore (journal -> image, fsynced) vs"
    echo '`qemu-img convert` of the source image; PIT export (replica + journal) read with fio'
    echo "vs qemu-nbd serving the plain file; failback after 1 % of the 64 KiB extents changed:"
    echo "bytes on the wire as % of the volume, vs rsync's delta transfer of the same change."
    echo "Scale: 16 VPGs x 8 volumes of 32 MiB on one protected agent (64 MiB log each), one fio"
    echo "job per export (256 KiB writes at QD2, 16 MiB each, 2 GiB in all) with replication on, vs"
    echo "the same jobs against 128 qemu-nbd processes, one per file; peak RSS vs theirs summed."
    echo
    echo "| figure | Tidemark | peer | ratio | goal |"
    echo "|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
    echo
    printf '%s\n' "${NOTES[@]}"
    echo
    cat tests/bench/profile.md
} >"$RESULTS"
cat "$RESULTS"
