#!/usr/bin/env bash
# The audit trail (issue 17, item 4): every operation is recorded with who,
# from where, its parameters and its outcome, in a hash chain that
# `tidemark audit-log --verify` checks.
# - Operations through the agents' control sockets (checkpoint, test
#   failover, a refused request, a malformed one) and console commands that
#   run without the agent (restore, a failed restore, pin, unpin) each
#   leave a `started` entry and an outcome entry naming it, as root.
# - The trail survives a SIGKILL of the agent right after an operation, and
#   the next entry follows it in the chain.
# - Editing an entry, removing one, or swapping two is found by --verify
#   (exit 1), which names the line; the intact trail verifies (exit 0).
# - A last line cut short (a crash mid-append) is reported, and the next
#   append removes it; the chain stays intact.
# - The diagnostics bundle carries the trail and its verdict.
source "$(dirname "$0")/../lib/common.sh"

setup_pair async 1000 disk0:16M
printf '[exports]\nlisten = "127.0.0.1:%s"\n' $((PORT_BASE + 6)) >>"$WORK/recovery.toml"
start_recovery
start_protected
head -c 4M /dev/urandom | dd of="$WORK/chunk" status=none
nbdcopy "$WORK/chunk" "$NBD_URI/disk0"
wait_replicated 60
R=(--config "$WORK/recovery.toml")
P=(--config "$WORK/protected.toml")
TRAIL_R=$WORK/b/data/audit/trail.jsonl

"$TIDEMARK" checkpoint "${P[@]}" --vpg vpg1 --tag "audit é" --wait 60s >/dev/null || fail "checkpoint failed"
"$TIDEMARK" restore "${R[@]}" --vpg vpg1 --checkpoint "audit é" --out "$WORK/out" >/dev/null || fail "restore failed"
"$TIDEMARK" restore "${R[@]}" --vpg vpg1 --checkpoint nosuch --out "$WORK/out2" >/dev/null 2>&1 &&
    fail "a restore of an unknown checkpoint ran"
"$TIDEMARK" pin "${R[@]}" --vpg vpg1 --checkpoint "audit é" --reason "e2e audit" >/dev/null || fail "pin failed"
"$TIDEMARK" unpin "${R[@]}" --vpg vpg1 --checkpoint "audit é" >/dev/null || fail "unpin failed"
"$TIDEMARK" test-failover start "${R[@]}" --vpg vpg1 --checkpoint latest >/dev/null || fail "test failover failed"
"$TIDEMARK" test-failover stop "${R[@]}" --vpg vpg1 >/dev/null || fail "test failover stop failed"
# Refused by the agent: the recovery agent does not take checkpoints.
python3 - "$WORK/b/data/control.sock" <<'EOF' || fail "the control socket did not answer"
import socket, sys
for request in [b'{"op":"checkpoint","vpg":"vpg1","tag":"x","wait_ms":1}\n', b'\x00garbage{\n']:
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.sendall(request)
    assert b'"ok":false' in s.recv(4096)
    s.close()
EOF
[ -f "$TRAIL_R" ] || fail "the recovery side has no audit trail at $TRAIL_R"

log=$("$TIDEMARK" audit-log "${R[@]}") || fail "audit-log failed"
entries=$("$TIDEMARK" audit-log "${R[@]}" --json)
# expect OP OUTCOME_REGEX WHAT: an outcome entry of OP whose started entry
# exists, by root, matching OUTCOME_REGEX.
expect() {
    jq -e --arg op "$1" --arg re "$2" '
        . as $all | [.[] | select(.op == $op and .of != null and (.outcome | test($re)))] | length > 0 and
        all(.[]; . as $e | $all | any(.seq == $e.of and .outcome == "started" and .op == $op)) and
        all(.[] | select(.op == $op); .user | test("root"))' <<<"$entries" >/dev/null ||
        fail "$3 is not in the trail as it should be: $log"
}
expect restore '^ok$' "the restore"
expect restore '^failed: .*nosuch' "the failed restore"
expect pin '^ok$' "the pin"
expect unpin '^ok$' "the unpin"
expect "test-failover start" '^ok$' "the test failover"
expect "test-failover stop" '^ok$' "the test failover's stop"
expect checkpoint '^failed: .*does not do' "the refused request"
jq -e '.[] | select(.op == "invalid-request" and (.outcome | startswith("refused: malformed")))' <<<"$entries" >/dev/null ||
    fail "the malformed request is not in the trail: $log"
jq -e '.[] | select(.op == "restore" and .params.checkpoint == "audit é" and (.source | test("console")))' \
    <<<"$entries" >/dev/null || fail "the restore's parameters or source are not recorded: $log"
jq -e '.[] | select(.op == "pin" and (.source | test("^console")))' <<<"$entries" >/dev/null || fail "no console source: $log"
jq -e --arg agent "$RECOVERY_PID" '.[] | select(.op == "test-failover start" and
    (.source | test("^control socket \\(pid [0-9]+\\)")) and (.source | contains("(pid \($agent))") | not))' \
    <<<"$entries" >/dev/null || fail "the socket's peer (not the agent) is not recorded: $log"
P_ENTRIES=$("$TIDEMARK" audit-log "${P[@]}" --json)
jq -e '.[] | select(.op == "checkpoint" and .params.tag == "audit é" and .outcome == "ok")' <<<"$P_ENTRIES" >/dev/null ||
    fail "the protected side's trail has no checkpoint: $("$TIDEMARK" audit-log "${P[@]}")"
"$TIDEMARK" audit-log "${R[@]}" --verify >"$WORK/verify.out" || fail "the intact trail does not verify: $(cat "$WORK/verify.out")"
grep -q "intact: $(jq length <<<"$entries") entries" "$WORK/verify.out" || fail "verify says: $(cat "$WORK/verify.out")"
log "$(jq length <<<"$entries") entries at the recovery side, each operation started and ended, by root, chain intact"

log "SIGKILL of the recovery agent right after an operation"
"$TIDEMARK" test-failover start "${R[@]}" --vpg vpg1 --checkpoint latest >/dev/null || fail "test failover failed"
kill9 "$RECOVERY_PID"
start_recovery
"$TIDEMARK" test-failover stop "${R[@]}" --vpg vpg1 >/dev/null 2>&1 || true
"$TIDEMARK" audit-log "${R[@]}" --verify >"$WORK/verify.out" || fail "after the kill: $(cat "$WORK/verify.out")"
after=$("$TIDEMARK" audit-log "${R[@]}" --json)
[ "$(jq length <<<"$after")" -ge $(($(jq length <<<"$entries") + 3)) ] ||
    fail "entries from around the kill are missing: $("$TIDEMARK" audit-log "${R[@]}")"
jq -e '[.[] | select(.op == "test-failover start")] | last | .outcome == "ok"' <<<"$after" >/dev/null ||
    fail "the test failover before the kill has no outcome"

log "tampering: edit, removal, reordering"
cp "$TRAIL_R" "$WORK/trail.orig"
# verify_breaks WHAT: --verify exits 1 and names a line; the trail is then put back.
verify_breaks() {
    local out
    out=$("$TIDEMARK" audit-log "${R[@]}" --verify 2>&1) && fail "$1 was not found: $out"
    grep -q "BROKEN at line [0-9]" <<<"$out" || fail "$1: verify says: $out"
    log "$1: $(head -1 <<<"$out")"
    cp "$WORK/trail.orig" "$TRAIL_R"
}
sed -i '3s/"ok"/"OK"/; 3s/"started"/"STARTED"/' "$TRAIL_R"
cmp -s "$TRAIL_R" "$WORK/trail.orig" && fail "the edit changed nothing"
verify_breaks "an edited entry"
sed -i '4d' "$TRAIL_R"
verify_breaks "a removed entry"
sed -i '5{h;d};6G' "$TRAIL_R"
verify_breaks "two swapped entries"
"$TIDEMARK" audit-log "${R[@]}" --verify >/dev/null || fail "the trail put back does not verify"

log "a last line cut short, as a crash mid-append leaves it"
printf '{"seq":999,"time_ms":' >>"$TRAIL_R"
"$TIDEMARK" audit-log "${R[@]}" --verify >"$WORK/verify.out" || fail "a torn tail counts as tampering: $(cat "$WORK/verify.out")"
grep -q "cut short" "$WORK/verify.out" || fail "the torn tail is not reported: $(cat "$WORK/verify.out")"
"$TIDEMARK" pin "${R[@]}" --vpg vpg1 --checkpoint nosuch --reason x >/dev/null 2>&1 || true
"$TIDEMARK" audit-log "${R[@]}" --verify >"$WORK/verify.out" || fail "after the next append: $(cat "$WORK/verify.out")"
grep -q "cut short" "$WORK/verify.out" && fail "the next append left the torn line"

log "the diagnostics bundle carries the trail and its verdict"
"$TIDEMARK" diag "${R[@]}" --out "$WORK/diag.tar.zst" >/dev/null || fail "diag failed"
mkdir -p "$WORK/diag"
zstd -dc "$WORK/diag.tar.zst" | tar -x -C "$WORK/diag"
grep -q "audit trail intact" "$WORK"/diag/*/audit-trail-verify.txt || fail "the bundle has no verdict"
grep -q '"op":"restore"' "$WORK"/diag/*/audit-trail.jsonl || fail "the bundle has no trail"
log "PASS"
