#!/usr/bin/env bash
# A replication link whose peer vanishes without a word (a cable pulled, a
# host frozen: no FIN, no RST) while this end is writing to it. The agents
# run in two network namespaces joined by a veth pair, and the link is cut
# by dropping every packet in the recovery side's namespace, so nothing on
# the way answers for the peer (a userspace proxy would). The old protected
# site, after a failover, sends the recovery site its extent hashes for
# reverse protection and reads nothing meanwhile; cut half way, its write
# blocked until the kernel's retransmissions gave up, about 15 minutes,
# and reverse protection said nothing was wrong all that while (review of
# helper-66). Now the link's sockets end a connection whose sent bytes go
# unacknowledged for 20 s (TCP_USER_TIMEOUT): the old site says the link
# is down while it is still cut, retries, and comes in sync once it heals.
# The old site's send buffer is kept small in its namespace (64 KiB), so a
# message of hashes (68 kB) fills it as soon as the link is dead.
source "$(dirname "$0")/../lib/common.sh"
[ -x "$TIDEMARK_TEST" ] || fail "no test build: run make build"
source "$(dirname "$0")/../lib/netns.sh"
# The protected agent in the app namespace, the recovery agent in mgmt
# (the replication peer's network), joined by their veth pair.
make_netns
in_app sysctl -qw net.ipv4.tcp_wmem="4096 16384 65536"
R_IP=$MGMT_IP
link_cut() { in_mgmt iptables -I INPUT -j DROP && in_mgmt iptables -I OUTPUT -j DROP; }
link_heal() { in_mgmt iptables -F INPUT && in_mgmt iptables -F OUTPUT; }

EXPORT_PORT=$((PORT_BASE + 6))
EXPORTS=nbd://127.0.0.1:$EXPORT_PORT
setup_pair async 1000 disk0:1G
sed -i "s/^address = \"127.0.0.1\"/address = \"$R_IP\"/" "$WORK/recovery.toml" "$WORK/protected.toml"
grep -q "^address = \"$R_IP\"" "$WORK/protected.toml" || fail "the protected config names no peer address to change"
printf '[exports]\nlisten = "127.0.0.1:%s"\n' "$EXPORT_PORT" >>"$WORK/recovery.toml"
start_agent recovery "$CONTROL_PORT" "$NS_MGMT"
RECOVERY_PID=$AGENT_PID
start_agent protected "$NBD_PORT" "$NS_APP"
PROTECTED_PID=$AGENT_PID
head -c 8M /dev/urandom >"$WORK/base"
in_app qemu-io -f raw -c "write -s $WORK/base 100M 8M" -c flush "$NBD_URI/disk0" >/dev/null || fail "the first write failed"
wait_replicated 120

log "failover; 1 MiB changed on the recovered side"
in_mgmt "$TIDEMARK" failover --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint latest >/dev/null || fail "failover failed"
in_mgmt qemu-io -f raw -c "write -P 0x5c 900M 1M" -c flush "$EXPORTS/vpg1/disk0" >/dev/null || fail "the write on the recovered side failed"

log "reverse: the old site hashes 1 GiB (1 ms an extent: a message of hashes a second); the link is cut 3 s in"
kill9 "$PROTECTED_PID"
AGENT_BIN=$TIDEMARK_TEST FAILPOINTS="hash-extent=sleep(1)" start_agent protected "$NBD_PORT" "$NS_APP"
PROTECTED_PID=$AGENT_PID
in_app "$TIDEMARK" reverse --config "$WORK/protected.toml" --vpg vpg1 --wait 240s >"$WORK/reverse.out" 2>&1 &
REVERSE_PID=$!
# Hashing takes about 16 s; the hello is done well before 3 s. A cut that
# missed the upload fails the checks below (a different cause), never
# passes them.
sleep 3
lines_before=$(wc -l <"$WORK/protected.log")
link_cut
cut_at=$(date +%s)
log "link cut"
down=""
for _ in $(seq 1 400); do
    down=$(tail -n +$((lines_before + 1)) "$WORK/protected.log" | grep -m1 "reverse link to .* down" || true)
    [ -n "$down" ] && break
    sleep 0.1
done
took=$(($(date +%s) - cut_at))
[ -n "$down" ] || fail "40 s after the cut the old site still does not say the reverse link is down (its write to the dead peer blocks)"
# The write to the dead peer is what ended it, after the kernel's limit:
# not a cut that missed the upload (a dial or a read timing out instead).
grep -q "sending a control message" <<<"$down" || fail "the link ended, but not in the hash upload's write: $down"
[ "$took" -ge 15 ] || fail "the link ended ${took} s after the cut, before any limit could have: $down"
log "the old site saw the link down ${took} s after the cut, the link still cut: $(cut -c1-200 <<<"$down")"
link_heal
log "link healed"
wait "$REVERSE_PID" || fail "reverse did not come in sync after the link healed: $(tail -3 "$WORK/reverse.out")"
cmp=$(in_mgmt qemu-img compare -f raw -F raw "$WORK/src/disk0.img" "$EXPORTS/vpg1/disk0" 2>&1) || fail "the sites differ: $cmp"
log "PASS: the dead link was noticed ${took} s after the cut, while still cut; in sync once healed"
