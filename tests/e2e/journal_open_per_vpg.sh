#!/usr/bin/env bash
# A slow first open of one VPG's journal does not hold up another VPG's
# (review of helper-52). Opens of journals no slot holds went one at a
# time across all VPGs, and an open can take long (a slow disk, a seed
# that still writes holds the apply lock): every new VPG's hello waited
# behind it. Now only hellos of the same VPG wait for each other
# (journal_open_once.sh checks they still do). The failpoint journal-open
# makes the first open take 20 s.
source "$(dirname "$0")/../lib/common.sh"
[ -x "$TIDEMARK_TEST" ] || fail "no test build: run make build"

setup_pair async 1000 disk0:16M
truncate -s 16M "$WORK/src/disk1.img"
cat >>"$WORK/protected.toml" <<TOML
[[vpg]]
name = "vpg2"
checkpoint_interval_ms = 1000
[[vpg.volume]]
name = "disk1"
path = "$WORK/src/disk1.img"
TOML
AGENT_BIN=$TIDEMARK_TEST FAILPOINTS="journal-open=1*sleep(20000)" start_recovery
start_protected

opens() { grep -c "opened the journal for the VPG's first hello" "$WORK/recovery.log" || true; }
for _ in $(seq 1 50); do
    [ "$(opens)" -ge 1 ] && break
    sleep 0.2
done
[ "$(opens)" -ge 1 ] || fail "no VPG's journal opened within 10 s while the other's first open took 20 s"
log "$(grep -o "opened the journal for the VPG's first hello vpg=[a-z0-9]*" "$WORK/recovery.log") while the other's open waits"
for _ in $(seq 1 150); do
    [ "$(opens)" -ge 2 ] && break
    sleep 0.2
done
[ "$(opens)" -eq 2 ] || fail "$(opens) journal opens after 30 s, not 2"
# The failpoint fired: the slow open ended well after the other.
mapfile -t at < <(grep "opened the journal for the VPG's first hello" "$WORK/recovery.log" | cut -c12-19 |
    awk -F: '{print $1 * 3600 + $2 * 60 + $3}')
[ $((at[1] - at[0])) -ge 15 ] || fail "the two opens ended $((at[1] - at[0])) s apart: the slow open did not happen"
log "PASS"
