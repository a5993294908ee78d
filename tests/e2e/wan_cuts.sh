#!/usr/bin/env bash
# The WAN: the userspace proxy (tests/wanproxy) sits between the agents
# with 20 ms latency and a 100 Mbit/s cap. Replication survives a reset
# cut (connections killed, refused for 4 s) and a blackhole cut (bytes stop
# for 4 s), resumes from the last acknowledged seq, and does not resend the
# journal: the bytes that crossed the proxy stay close to the journal size.
source "$(dirname "$0")/../lib/common.sh"

USE_PROXY=1 setup_pair async 1000 disk0:128M
start_wan_link --latency-ms 20 --bandwidth-bps 100000000
start_recovery
start_protected

write_random() { # offset_mib size_mib
    head -c "$(($2 << 20))" /dev/urandom >"$WORK/chunk"
    python3 - "$NBD_PORT" "$1" "$WORK/chunk" <<'PY'
import sys
from nbdclient import Client
port, off_mib, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
data = open(path, "rb").read()
c = Client("127.0.0.1", port, "disk0")
for i in range(0, len(data), 1 << 20):
    c.write((off_mib << 20) + i, data[i:i + (1 << 20)])
c.flush(); c.close()
PY
}

write_random 0 16
wait_replicated 120
log "baseline replicated through the proxy"

echo reset >"$WORK/cut"
write_random 16 16
sleep 4
rm -f "$WORK/cut"
wait_replicated 120
log "survived a 4 s reset cut"

echo blackhole >"$WORK/cut"
write_random 32 16
sleep 4
rm -f "$WORK/cut"
wait_replicated 120
log "survived a 4 s blackhole cut"

restore_to latest "$WORK/out"
cmp "$WORK/out/disk0.img" "$WORK/src/disk0.img" || fail "restored image differs from the source after cuts"

links=$(grep -c "link up" "$WORK/protected.log")
[ "$links" -ge 2 ] || fail "the link never reconnected ($links link-ups); the reset cut did nothing"
resumed=$(grep "link up" "$WORK/protected.log" | tail -n +2 | grep -vc "durable_seq=0 " || true)
[ "$resumed" -ge 1 ] || fail "no reconnect resumed from a non-zero acknowledged seq"
grep "link up" "$WORK/protected.log" | tail -n +2 | while read -r line; do
    d=$(sed -n 's/.*durable_seq=\([0-9]*\).*/\1/p' <<<"$line")
    s=$(sed -n 's/.*start_seq=\([0-9]*\).*/\1/p' <<<"$line")
    [ "$s" = $((d + 1)) ] || fail "reconnect did not resume right after the last ack: $line"
done
journal=$(du -sb "$WORK/b/data/journal" | cut -f1)
sent=$(jq -r .forward_bytes "$WORK/proxy.json")
log "journal $journal bytes; proxy forwarded $sent bytes over $links link-ups"
# Everything resent is at most what was in flight at a cut (32 MiB each).
[ "$sent" -le $((journal + 2 * (32 << 20) + (4 << 20))) ] || fail "sender resent far more than in-flight data: $sent > $journal + 68 MiB"
