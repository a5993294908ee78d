#!/usr/bin/env bash
# An export ends with its command, whatever its clients do. `tidemark
# export` serves a checkpoint; a client connects and reads, and keeps its
# connection open; the export command is killed (SIGKILL). Then at once:
# the served view and its lease are gone, so a failover goes through
# (before: refused, "a reader of VPG is open", until that client left, and
# the operator could do nothing about it); the client's next read fails and
# its connection is closed. The recovery side does not list its exports
# (their names say which VPGs and checkpoints it holds).
source "$(dirname "$0")/../lib/common.sh"

EXPORT_PORT=$((PORT_BASE + 6))
setup_pair async 1000 disk0:32M
printf '[exports]\nlisten = "127.0.0.1:%s"\n' "$EXPORT_PORT" >>"$WORK/recovery.toml"
start_recovery
start_protected
wait_replicated 60
qio_check "$NBD_URI/disk0" "write -P 0x41 0 4M" "flush"
"$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag golden --wait 30s >/dev/null || fail "checkpoint failed"

"$TIDEMARK" export --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint golden >"$WORK/export.out" 2>&1 &
export_pid=$!
disown "$export_pid"
PIDS+=("$export_pid")
for _ in $(seq 1 100); do grep -q "nbd://" "$WORK/export.out" && break; sleep 0.1; done
uri=$(grep -o 'nbd://[^ ]*' "$WORK/export.out" | head -1)
[ -n "$uri" ] || fail "the export printed no URI: $(cat "$WORK/export.out")"
name=${uri#nbd://127.0.0.1:$EXPORT_PORT/}

nbdinfo --list "nbd://127.0.0.1:$EXPORT_PORT" >"$WORK/list.out" 2>&1 && grep -q "$name" "$WORK/list.out" &&
    fail "the recovery side lists its exports to anyone: $(cat "$WORK/list.out")"

log "a client reads $name and keeps its connection; the export command is killed"
python3 - "$EXPORT_PORT" "$name" "$WORK/go" >"$WORK/holder.out" 2>&1 <<'PY' &
import os, sys, time
from nbdclient import Client
c = Client("127.0.0.1", int(sys.argv[1]), sys.argv[2])
first = c.read(0, 4096)
print("first read", first[:1].hex(), flush=True)
while not os.path.exists(sys.argv[3]):
    time.sleep(0.05)
try:
    c.read(0, 4096)
    print("second read succeeded", flush=True)
except Exception as e:
    print("second read failed:", type(e).__name__, flush=True)
PY
holder=$!
for _ in $(seq 1 100); do grep -q "first read" "$WORK/holder.out" && break; sleep 0.1; done
grep -q "first read 41" "$WORK/holder.out" || fail "the client could not read the export: $(cat "$WORK/holder.out")"
kill9 "$export_pid"

t0=$(date +%s.%N)
out=$(timeout 20 "$TIDEMARK" failover --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint golden --files 2>&1) ||
    fail "failover refused after the export was killed: $out"
took=$(python3 -c "import time; print('%.1f' % (time.time() - $t0))")
log "failover went through ${took}s after the export was killed"
touch "$WORK/go"
wait "$holder"
grep -q "second read failed" "$WORK/holder.out" || fail "the old connection still reads: $(cat "$WORK/holder.out")"
[ -z "$(ls "$WORK/b/data/journal/vpg1/leases" 2>/dev/null)" ] || fail "a lease was left behind"
log "PASS"
