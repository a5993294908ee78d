#!/usr/bin/env bash
# Two VPGs share one link capped at 4 MB/s (peer.throttle_bytes_per_sec),
# through the WAN proxy (48 Mbit/s, 10 ms each way): "bulk" writes
# incompressible data at 12 MB/s, three times the cap, and "vpg1" writes
# 1 MiB/s (64 KiB and a FLUSH every 62 ms, random data). Checked:
#  - the cap is the link's: both VPGs together put at most ~4 MB/s into the
#    recovery journals (each VPG once had a bucket of its own: 5 MB/s);
#  - the light VPG's RPO (FLUSH reply to the write in the recovery journal)
#    has a p99 under its 2 s target (rpo_alert), and status shows no RPO
#    warning for it;
#  - the bulk VPG falls behind its 1 s target, and status and the agent's
#    log say so.
source "$(dirname "$0")/../lib/common.sh"

SECONDS_OF_LOAD=15
CAP=4000000
USE_PROXY=1 THROTTLE=$CAP setup_pair async 1000 light0:64M
# The light VPG's target, then a second VPG on the same link.
sed -i '/^checkpoint_interval_ms/a rpo_alert = "2s"' "$WORK/protected.toml"
truncate -s 256M "$WORK/src/bulk0.img"
cat >>"$WORK/protected.toml" <<TOML
[[vpg]]
name = "bulk"
checkpoint_interval_ms = 1000
rpo_alert = "1s"
[[vpg.volume]]
name = "bulk0"
path = "$WORK/src/bulk0.img"
TOML
"$WANPROXY" --map "$PROXY_CONTROL_PORT=127.0.0.1:$CONTROL_PORT" --map "$PROXY_DATA_PORT=127.0.0.1:$DATA_PORT" \
    --bandwidth-bps 48000000 --latency-ms 10 >"$WORK/proxy.log" 2>&1 &
PIDS+=($!)
disown $!
wait_port "$PROXY_DATA_PORT"
start_recovery
start_protected
wait_replicated 120

journal_bytes() {
    python3 - "$WORK/b/data/journal" <<'PY'
import os, sys
print(sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(sys.argv[1]) for f in fs if f.endswith(".tmjrn")))
PY
}

log "bulk writes 12 MB/s and vpg1 1 MiB/s for ${SECONDS_OF_LOAD} s, through a 4 MB/s cap"
python3 - "$NBD_PORT" "$SECONDS_OF_LOAD" <<'PY' &
import os, sys, time
from nbdclient import Client
port, seconds = int(sys.argv[1]), float(sys.argv[2])
c = Client("127.0.0.1", port, "bulk0")
chunk, rate, end = 1 << 20, 12_000_000, time.time() + seconds
start, n = time.time(), 0
while time.time() < end:
    c.write((n % 256) * chunk, os.urandom(chunk))
    n += 1
    time.sleep(max(0.0, start + n * chunk / rate - time.time()))
c.close()
PY
BULK=$!
before=$(journal_bytes)
t0=$(date +%s.%N)
python3 tests/bench/rpo.py watch "$WORK/b/data/journal/vpg1" $((SECONDS_OF_LOAD + 5)) "$WORK/seen" &
WATCH=$!
python3 tests/bench/rpo.py writer "$NBD_PORT" light0 "$SECONDS_OF_LOAD" 1048576 "$WORK/flushed"
after=$(journal_bytes)
t1=$(date +%s.%N)
wait "$BULK" || fail "the bulk writer failed"
wait "$WATCH"

rate=$(python3 -c "print(int(($after - $before) / ($t1 - $t0)))")
log "both VPGs into the journals: $rate bytes/s (cap $CAP)"
# The bucket's burst (a quarter second) and a batch in flight at each end.
python3 -c "import sys; sys.exit(0 if $rate <= $CAP * 1.1 + 2000000 / ($t1 - $t0) else 1)" ||
    fail "the VPGs together sent $rate bytes/s through a $CAP bytes/s cap"
python3 -c "import sys; sys.exit(0 if $rate >= $CAP * 0.6 else 1)" || fail "the link carried only $rate bytes/s"

read -r p50 p99 n total < <(python3 tests/bench/rpo.py report "$WORK/flushed" "$WORK/seen")
log "light VPG RPO: p50 ${p50} ms, p99 ${p99} ms ($n of $total writes seen)"
[ "$n" -ge $((total * 9 / 10)) ] || fail "only $n of $total light writes reached the journal in time"
python3 -c "import sys; sys.exit(0 if $p99 < 2000 else 1)" || fail "the light VPG's RPO p99 is ${p99} ms, over 2 s"

st=$(status_json protected)
jq -e '.vpgs[] | select(.name == "vpg1") | .rpo_over_target == false and .rpo_target_seconds == 2' <<<"$st" >/dev/null ||
    fail "status of vpg1: $(jq -c '.vpgs[0]' <<<"$st")"
jq -e '.vpgs[] | select(.name == "bulk") | .rpo_over_target and .priority == "medium"' <<<"$st" >/dev/null ||
    fail "status of bulk does not show its missed RPO: $(jq -c '.vpgs[1]' <<<"$st")"
"$TIDEMARK" status --config "$WORK/protected.toml" | grep -q "RPO target missed" || fail "status text has no RPO warning"
grep -q 'RPO target missed.*bulk\|bulk.*RPO target missed' "$WORK/protected.log" "$WORK"/a/logs/* 2>/dev/null ||
    fail "the agent's log does not say bulk missed its RPO target"
log "ok: the cap held for both, the light VPG kept its RPO, the bulk one is reported behind"
