#!/usr/bin/env bash
# An idle link stays up. A VPG with a long checkpoint interval and nothing
# written sends nothing, so no ack comes back: before, the protected side
# took that silence for a dead link and dropped and made it again every
# 15 s ("peer silent for 15s"), and the recovery side dropped an idle data
# link after a minute. The control link's pings say the peer is there.
# Then a write after the idle minute replicates at once, and a data link
# that goes silent while records are owed is still dropped, its control
# link answering pings (the WAN proxy blackholes the data port only),
# also when the sender blocks half way through a batch.
source "$(dirname "$0")/../lib/common.sh"

USE_PROXY=1 setup_pair async 600000 disk0:64M
start_wan_link
start_recovery
start_protected
head -c 4M /dev/urandom >"$WORK/base.bin"
nbdcopy "$WORK/base.bin" "$NBD_URI/disk0"
"$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag before --wait 60s >/dev/null ||
    fail "the first checkpoint was not taken"
links_up() { grep -c "link up" "$WORK/protected.log"; }
up=$(links_up)

log "idle for 65 s: no write, no scheduled checkpoint"
sleep 65
[ "$(links_up)" -eq "$up" ] ||
    fail "the idle link was made again $(($(links_up) - up)) time(s): $(grep -E "link to .* down" "$WORK/protected.log" | tail -2)"
grep -qE "data link idle|its control link ended" "$WORK/recovery.log" && fail "the recovery side dropped the idle data link"
[ "$(status_json protected | jq -r '.vpgs[0].link_connected')" = true ] || fail "status says the link is down"

log "a write after the idle minute replicates on the same link"
"$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag after --wait 60s >/dev/null ||
    fail "the checkpoint after the idle minute was not taken"
st=$(fresh_status_json protected) || fail "the protected agent's status was not rewritten within 5 s"
head_seq=$(jq -r '.vpgs[0].head_seq' <<<"$st")
for _ in $(seq 1 50); do
    [ "$(status_json protected | jq -r '.vpgs[0].acked_seq')" -ge "$head_seq" ] && break
    sleep 0.2
done
[ "$(status_json protected | jq -r '.vpgs[0].acked_seq')" -ge "$head_seq" ] ||
    fail "seq $head_seq was not acknowledged within 10 s of the idle minute"
[ "$(links_up)" -eq "$up" ] || fail "the write after the idle minute needed a new link"
restore_equal after "$WORK/src/disk0.img" "after the idle minute"

log "a data link silent while records are owed is still dropped (its control link answering)"
downs() { grep -c "link to .* down: peer silent" "$WORK/protected.log" || true; }
down=$(downs)
echo "blackhole $PROXY_DATA_PORT" >"$WORK/cut"
# One write of 32 MiB that does not compress: one record, one batch, more
# than the sockets and the proxy hold, so the sender blocks in its write
# with everything before it acknowledged (review of helper-49).
head -c 32M /dev/urandom >"$WORK/big.bin"
qio_check "$NBD_URI/disk0" "write -s $WORK/big.bin 0 32M" flush
for _ in $(seq 1 150); do
    [ "$(downs)" -gt "$down" ] && break
    sleep 0.2
done
[ "$(downs)" -gt "$down" ] || fail "a silent link with records owed was not dropped within 30 s"
rm -f "$WORK/cut"
log "PASS"
