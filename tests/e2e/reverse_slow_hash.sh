#!/usr/bin/env bash
# Reverse protection of a volume whose hashing takes longer than the
# recovery site waits for a message (15 s). The old site hashed a whole
# volume before it sent the first of its extent hashes; the recovery site,
# hearing nothing for 15 s, ended the session, and the next one hashed
# again: a volume of a few GiB never came back (review of helper-52). Now
# each message's hashes (64 MiB of the volume) go as soon as they are
# made. The failpoint hash-extent makes each 64 KiB extent take 1 ms more
# (a slow disk): 1 GiB takes about 17 s, one message 1 s.
source "$(dirname "$0")/../lib/common.sh"
[ -x "$TIDEMARK_TEST" ] || fail "no test build: run make build"

EXPORT_PORT=$((PORT_BASE + 6))
EXPORTS=nbd://127.0.0.1:$EXPORT_PORT
setup_pair async 1000 disk0:1G
printf '[exports]\nlisten = "127.0.0.1:%s"\n' "$EXPORT_PORT" >>"$WORK/recovery.toml"
start_recovery
AGENT_BIN=$TIDEMARK_TEST FAILPOINTS="hash-extent=sleep(1)" start_protected
head -c 8M /dev/urandom >"$WORK/base"
qio_check "$NBD_URI/disk0" "write -s $WORK/base 100M 8M" flush
wait_replicated 120

log "failover; 1 MiB changes on the recovered side"
failover_to latest
qio_check "$EXPORTS/vpg1/disk0" "write -P 0x5c 900M 1M" flush

log "reverse: the old site hashes 1 GiB for about 17 s"
started=$(date +%s)
out=$("$TIDEMARK" reverse --config "$WORK/protected.toml" --vpg vpg1 --wait 120s 2>&1) ||
    fail "reverse did not come in sync: $out; $(grep -i "reverse" "$WORK/recovery.log" | tail -3)"
took=$(($(date +%s) - started))
[ "$took" -ge 15 ] || fail "reverse took ${took} s: the hashing was not slow enough to prove anything"
cmp=$(qemu-img compare -f raw -F raw "$WORK/src/disk0.img" "$EXPORTS/vpg1/disk0" 2>&1) || fail "the sites differ: $cmp"
log "PASS (in sync after ${took} s)"
