#!/usr/bin/env bash
# Same-run A/B of two agent builds on 1 MiB sequential writes at QD8 with
# replication on, each beside qemu-nbd in the same round:
#   tests/bench/ab_seqwrite.sh OLD_BINARY NEW_BINARY [ROUNDS]
# Each round sets up a fresh pair per binary (4 GiB log, each build's
# default preallocation unless AB_PREALLOCATE=true|false), waits for the
# log to claim its capacity (if it does), writes 2 GiB to the 1 GiB volume
# with the recovery agent not started (capture alone: the log takes it
# all), starts it, waits until everything is replicated, writes the volume
# with fio for RUNTIME s until it is all replicated (bench/lib.sh's
# replicated_seqwrite: what fio saw, and the rate until replicated; bitmap
# mode is off), and once more (the second pass finds acknowledged
# segments to reuse). Rounds
# alternate the binaries so drift on a shared machine hits both. Prints
# `AB` lines; asserts nothing.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY [ROUNDS]" >&2; exit 2; }
old=$(realpath "$1") new=$(realpath "$2") rounds=${3:-3}
cd "$(dirname "$0")/../.."
export PORT_BASE=37000
source tests/lib/common.sh
source tests/bench/lib.sh
RUNTIME=${BENCH_RUNTIME:-10}
for round in $(seq 1 "$rounds"); do
    for which in old new; do
        if [ "$which" = old ]; then TIDEMARK=$old; else TIDEMARK=$new; fi
        # Each build's default, unless AB_PREALLOCATE names one for both.
        LOG_PREALLOCATE=${AB_PREALLOCATE-}
        rm -rf "${WORK:?}"/*
        seqwrite_setup
        start_protected
        wait_log_prepared
        pc=$(fio_twice "$PEER_URI")
        tc=$(fio_twice "$NBD_URI/disk0")
        start_recovery
        wait_replicated 300
        read -r _ p1 < <(fio_iops "$PEER_URI" write 1M 8)
        read -r t1 e1 < <(replicated_seqwrite "$NBD_URI/disk0")
        read -r _ p2 < <(fio_iops "$PEER_URI" write 1M 8)
        read -r t2 e2 < <(replicated_seqwrite "$NBD_URI/disk0")
        printf 'AB round %s %s: capture alone %.0f MiB/s (qemu-nbd %.0f); replicated 1st pass %.0f MiB/s, %.0f until replicated (qemu-nbd %.0f), 2nd pass %.0f, %.0f until replicated (qemu-nbd %.0f)\n' \
            "$round" "$which" "$tc" "$pc" "$t1" "$e1" "$p1" "$t2" "$e2" "$p2"
        kill -9 "$PROTECTED_PID" "$RECOVERY_PID" "$QPID" 2>/dev/null || true
        wait 2>/dev/null || true
    done
done
