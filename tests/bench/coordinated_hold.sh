#!/usr/bin/env bash
# Coordinated checkpoints (issue 17's bench): how long a checkpoint across
# 2 and 4 protected agents on this machine holds writes, p50/p99/max of the
# longest hold of each (what every member's writes waited at most), while
# every member takes 4 KiB random writes (fio, nbd engine, 500 and then
# 2,000 IOPS each). The peer, in the same run: the same fio's write latency p99 with no
# group checkpoints, beside its p99 while they run (what the holds cost the
# writers). Goal: hold p99 ≤ 5 ms. Writes tests/bench/COORDINATION.md;
# asserts nothing (the machine is shared and noisy).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PORT_BASE=36900
source tests/lib/common.sh
OUT=tests/bench/COORDINATION.md
CHECKPOINTS=${COORD_BENCH_CHECKPOINTS:-100}
PHASE=${COORD_BENCH_SECONDS:-25}
LOADS=${COORD_BENCH_IOPS:-500 2000}
AGENTS=${COORD_BENCH_AGENTS:-2 4}
ROWS=()

mkdir -p "$WORK/b"
FP_R=$("$TIDEMARK" keygen --dir "$WORK/b/keys" --name recovery | tail -n1)
for i in 1 2 3 4; do
    mkdir -p "$WORK/p$i"
    FP[$i]=$("$TIDEMARK" keygen --dir "$WORK/p$i/keys" --name "p$i" | tail -n1)
    truncate -s 256M "$WORK/p$i/vol.img"
done
{
    printf 'role = "recovery"\n%s\n[listen]\naddress = "127.0.0.1"\ncontrol_port = %s\ndata_port = %s\n' \
        "$(node_toml recovery "$WORK/b")" "$CONTROL_PORT" "$DATA_PORT"
    for i in 1 2 3 4; do printf '[[listen.peer]]\nfingerprint = "%s"\nvpgs = ["g%s"]\n' "${FP[$i]}" "$i"; done
} >"$WORK/recovery.toml"
start_recovery

# p1 coordinates group "bench" of g1 (its own) and g2..gN; every other
# agent is a member that pins p1.
protected_toml() { # i members
    local i=$1 n=$2 j
    protected_head "p$i" "$WORK/p$i" "127.0.0.1:$((PORT_BASE + 10 + i))" 127.0.0.1 "$FP_R"
    printf 'control_port = %s\ndata_port = %s\n[[vpg]]\nname = "g%s"\ncheckpoint_interval_ms = 5000\n' \
        "$CONTROL_PORT" "$DATA_PORT" "$i"
    printf '[[vpg.volume]]\nname = "v%s"\npath = "%s"\n[coordination]\n' "$i" "$WORK/p$i/vol.img"
    if [ "$i" = 1 ]; then
        printf '[[coordination.group]]\nname = "bench"\n[[coordination.group.member]]\nvpg = "g1"\n'
        for j in $(seq 2 "$n"); do
            printf '[[coordination.group.member]]\nvpg = "g%s"\naddress = "127.0.0.1:%s"\nfingerprint = "%s"\n' \
                "$j" "$((PORT_BASE + 20 + j))" "${FP[$j]}"
        done
    else
        printf 'listen = "127.0.0.1:%s"\ncoordinators = ["%s"]\n' "$((PORT_BASE + 20 + i))" "${FP[1]}"
    fi
}

pct() { python3 -c "import sys; s=sorted(float(x) for x in sys.stdin.read().split()); p=float(sys.argv[1]); print('%.2f' % s[min(len(s)-1, int(round(p/100*(len(s)-1))))])" "$1"; }

# fio_all N SECONDS IOPS: 4 KiB random writes at IOPS on every member;
# prints each one's write latency p99 in ms.
fio_all() {
    local n=$1 secs=$2 iops=$3 i pids=()
    for i in $(seq 1 "$n"); do
        fio --name=w --ioengine=nbd --uri="nbd://127.0.0.1:$((PORT_BASE + 10 + i))/v$i" --rw=randwrite --bs=4k \
            --iodepth=4 --rate_iops="$iops" --size=256M --time_based --runtime="$secs" --randrepeat=0 \
            --output-format=json --output="$WORK/fio$i.json" >/dev/null 2>&1 &
        pids+=($!)
    done
    wait "${pids[@]}"
    for i in $(seq 1 "$n"); do
        sed -n '/^{/,$p' "$WORK/fio$i.json" | jq -r '.jobs[0].write.clat_ns.percentile["99.000000"] / 1e6'
    done
}

for n in $AGENTS; do
    log "$n agents: starting"
    P=()
    for i in $(seq "$n" -1 1); do
        protected_toml "$i" "$n" >"$WORK/protected$i.toml"
        "$TIDEMARK" protected --config "$WORK/protected$i.toml" >>"$WORK/protected$i.log" 2>&1 &
        P+=($!)
        PIDS+=($!)
        disown $!
        wait_port $((PORT_BASE + 10 + i))
    done
    # Group checkpoints start once every initial copy is in.
    for _ in $(seq 1 300); do
        "$TIDEMARK" group-checkpoint --config "$WORK/protected1.toml" --group bench >/dev/null 2>&1 && break
        sleep 0.5
    done
    for iops in $LOADS; do
    log "$n agents, $iops IOPS each: fio alone for $PHASE s"
    quiet=$(fio_all "$n" "$PHASE" "$iops" | sort -n | tail -n1 | xargs printf '%.2f')
    log "$n agents, $iops IOPS each: fio with $CHECKPOINTS group checkpoints"
    fio_all "$n" "$PHASE" "$iops" >"$WORK/busy" &
    FIO=$!
    : >"$WORK/holds"
    failed=0
    interval=$(python3 -c "print($PHASE * 0.8 / $CHECKPOINTS)")
    for _ in $(seq 1 "$CHECKPOINTS"); do
        if out=$("$TIDEMARK" group-checkpoint --config "$WORK/protected1.toml" --group bench 2>&1); then
            sed -n 's/.*writes held at most \([0-9.]*\) ms.*/\1/p' <<<"$out" | head -n1 >>"$WORK/holds"
        else
            failed=$((failed + 1))
        fi
        sleep "$interval"
    done
    wait "$FIO"
    busy=$(sort -n "$WORK/busy" | tail -n1 | xargs printf '%.2f')
    taken=$(wc -l <"$WORK/holds")
    p50=$(pct 50 <"$WORK/holds")
    p99=$(pct 99 <"$WORK/holds")
    max=$(pct 100 <"$WORK/holds")
    ratio=$(python3 -c "print('%.2f' % ($busy / $quiet))")
    echo "BENCH coordinated_hold_${n}_agents_${iops}iops p50=${p50}ms p99=${p99}ms max=${max}ms taken=$taken failed=$failed write_p99 ${quiet}ms -> ${busy}ms (${ratio}x)"
    ROWS+=("| $n | $iops | $taken of $CHECKPOINTS | $p50 ms | $p99 ms | $max ms | $quiet ms | $busy ms | ${ratio}× |")
    done
    kill9 "${P[@]}"
done

{
    echo "# Coordinated checkpoints (tests/bench/coordinated_hold.sh)"
    echo
    echo "$(date +%F), $(nproc) host cores, every agent on this machine (one recovery agent, N protected"
    echo "agents; p1 coordinates, the others are members over 4009 with mutual TLS). Each member takes"
    echo "4 KiB random writes from fio (nbd engine, QD4, at the IOPS shown). A group checkpoint every"
    echo "$(python3 -c "print('%.0f' % ($PHASE * 800 / $CHECKPOINTS))") ms by \`tidemark group-checkpoint\`; its hold is the longest any member's writes were"
    echo "held (from the write-order lock taken to the checkpoint appended and the lock let go)."
    echo "Peer in the same run: the same fio's write latency p99 (slowest member) without group"
    echo "checkpoints, then with them. Goal: hold p99 ≤ 5 ms."
    echo
    echo "| agents | IOPS per member | taken | hold p50 | hold p99 | hold max | write p99 alone | write p99 with checkpoints | ratio |"
    echo "|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
} >"$OUT"
cat "$OUT"
