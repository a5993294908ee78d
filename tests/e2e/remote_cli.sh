#!/usr/bin/env bash
# The CLI from a workstation (issue 17, item 5): `tidemark --server
# https://APPLIANCE:4006 --fingerprint ...` from the management network's
# namespace, with the appliance's firewall on, runs the test-failover and
# failover flows through the management API and prints what the same
# commands print on the appliance; a login per command (operator; dr-admin
# with TOTP), a session from `login`, or an API token. 4006 is open only
# to the management network: from another network the CLI says it got no
# answer. A wrong fingerprint is refused before anything is sent.
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/netns.sh"

make_netns
write_appliance_configs
cat >>"$WORK/recovery.toml" <<TOML
[exports]
listen = "127.0.0.1:10810"
[api]
listen = "0.0.0.0:4006"
TOML
sed -i 's/^\[\[vpg\]\]$/[[vpg]]\ncheckpoint_interval_ms = 1000/' "$WORK/protected.toml"
add_user() { # NAME ROLE PASSWORD
    echo "$3" | "$TIDEMARK_TEST" user add --config "$WORK/recovery.toml" "$1" --role "$2" --assume-console --password-stdin
}
add_user oper1 operator "operator password 1" >/dev/null
DRA_URI=$(add_user dra1 dr-admin "dr-admin password 1" | grep '^otpauth://')
TOKEN=$("$TIDEMARK_TEST" token add --config "$WORK/recovery.toml" auto --role operator --expires 1h --assume-console 2>/dev/null)
in_app "$TIDEMARK" harden --config "$WORK/recovery.toml" >"$WORK/out" 2>&1 || fail "harden: $(cat "$WORK/out")"
start_app_agent recovery 4006
start_app_agent protected 10809
head -c 4M /dev/urandom >"$WORK/chunk"
in_stor nbdcopy "$WORK/chunk" "nbd://$APP_STOR_IP:10809/disk0" || fail "writing through the storage network failed"
FP=$("$TIDEMARK" fingerprint --cert "$WORK/b/keys/cert.pem" | tail -n1)
URL=https://$APP_MGMT_IP:4006
L=(--config "$WORK/recovery.toml")
# remote NS ENV... -- ARGS: the CLI in namespace NS with the given environment.
remote() {
    local ns=$1
    shift
    local envs=()
    while [ "$1" != -- ]; do envs+=("$1"); shift; done
    shift
    ip netns exec "$ns" env "${envs[@]}" "$TIDEMARK" --server "$URL" --fingerprint "$FP" "$@"
}
OPER=(TIDEMARK_USER=oper1 "TIDEMARK_PASSWORD=operator password 1")
# Normalise checkpoint ids and times: the two runs see different ones.
same_shape() { sed -E 's/[0-9]{6,}/N/g; s/[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]+Z/T/g' "$1"; }

for i in $(seq 1 120); do
    "$TIDEMARK" checkpoints "${L[@]}" --vpg vpg1 2>/dev/null | grep -q ' complete ' && break
    sleep 0.5
done
"$TIDEMARK" checkpoints "${L[@]}" --vpg vpg1 2>/dev/null | grep -q ' complete ' || fail "no complete checkpoint"

log "4006 is open to the management network only"
result=$(scan "$NS_MGMT" "$APP_MGMT_IP" 4006)
[ "$result" = "open=4006 closed= rest=none" ] || fail "4006 from the management network: $result"
result=$(scan "$NS_OTHER" "$APP_OTHER_IP" 4006)
[ "$result" = "open= closed= rest=filtered" ] || fail "4006 from an unnamed network: $result"
start=$(date +%s)
ip netns exec "$NS_OTHER" env "${OPER[@]}" "$TIDEMARK" --server "https://$APP_OTHER_IP:4006" --fingerprint "$FP" status \
    >"$WORK/other.out" 2>&1 && fail "the API answered an unnamed network"
grep -q "no answer within" "$WORK/other.out" || fail "from an unnamed network: $(cat "$WORK/other.out")"
log "from an unnamed network after $(($(date +%s) - start)) s: $(cat "$WORK/other.out")"

log "a wrong fingerprint is refused, and none at all"
wrong=$("$TIDEMARK" fingerprint --cert "$WORK/a/keys/cert.pem" | tail -n1)
in_mgmt env "${OPER[@]}" "$TIDEMARK" --server "$URL" --fingerprint "$wrong" status >"$WORK/out" 2>&1 &&
    fail "a wrong fingerprint was accepted"
grep -q "$FP.* is not pinned\|is not pinned" "$WORK/out" || fail "wrong fingerprint: $(cat "$WORK/out")"
in_mgmt env "${OPER[@]}" "$TIDEMARK" --server "$URL" status >"$WORK/out" 2>&1 && fail "ran without a fingerprint"
grep -q "fingerprint.*required" "$WORK/out" || fail "no fingerprint: $(cat "$WORK/out")"

log "status and checkpoints: the same output as on the appliance"
remote "$NS_MGMT" "${OPER[@]}" -- status --json >"$WORK/r.status" || fail "remote status"
"$TIDEMARK" status "${L[@]}" --json >"$WORK/l.status"
[ "$(jq -c '[.role, .node, (.vpgs | map(.name))]' "$WORK/r.status")" = "$(jq -c '[.role, .node, (.vpgs | map(.name))]' "$WORK/l.status")" ] ||
    fail "status differs: $(cat "$WORK/r.status")"
remote "$NS_MGMT" "${OPER[@]}" -- status >"$WORK/r.text" || fail "remote status (text)"
"$TIDEMARK" status "${L[@]}" >"$WORK/l.text"
[ "$(head -1 "$WORK/r.text" | cut -c1-20)" = "$(head -1 "$WORK/l.text" | cut -c1-20)" ] || fail "status text: $(head -3 "$WORK/r.text")"
remote "$NS_MGMT" "${OPER[@]}" -- checkpoints --vpg vpg1 >"$WORK/r.cps" 2>/dev/null || fail "remote checkpoints"
"$TIDEMARK" checkpoints "${L[@]}" --vpg vpg1 >"$WORK/l.cps" 2>/dev/null
[ "$(head -1 "$WORK/r.cps")" = "$(head -1 "$WORK/l.cps")" ] || fail "checkpoint table header: $(head -1 "$WORK/r.cps")"
grep -q ' complete ' "$WORK/r.cps" || fail "remote checkpoints: $(cat "$WORK/r.cps")"

log "test failover through the API (operator, a login per command), as printed on the appliance"
remote "$NS_MGMT" "${OPER[@]}" -- test-failover start --vpg vpg1 --checkpoint latest >"$WORK/r.start" || fail "remote test failover start"
remote "$NS_MGMT" "${OPER[@]}" -- test-failover stop --vpg vpg1 >"$WORK/r.stop" || fail "remote test failover stop"
"$TIDEMARK" test-failover start "${L[@]}" --vpg vpg1 --checkpoint latest >"$WORK/l.start" || fail "local test failover start"
"$TIDEMARK" test-failover stop "${L[@]}" --vpg vpg1 >"$WORK/l.stop" || fail "local test failover stop"
diff <(same_shape "$WORK/r.start") <(same_shape "$WORK/l.start") || fail "test failover start prints differently"
diff <(same_shape "$WORK/r.stop") <(same_shape "$WORK/l.stop") || fail "test failover stop prints differently"
cat "$WORK/r.start" "$WORK/r.stop"

log "a name that is not one never reaches the API (it could name another route)"
remote "$NS_MGMT" "${OPER[@]}" -- test-failover start --vpg 'vpg1/failover?' --checkpoint latest >"$WORK/out" 2>&1 &&
    fail "a crafted VPG name was sent"
grep -q "must be 1-64 characters" "$WORK/out" || fail "a crafted VPG name: $(cat "$WORK/out")"

log "an export held by the CLI is listed, and closed when its terminal goes (SIGHUP)"
# Not through `remote` (a subshell): $! is the CLI itself (ip netns exec
# execs it), so the hang-up reaches it and the cleanup can kill it.
ip netns exec "$NS_MGMT" env TIDEMARK_TOKEN="$TOKEN" "$TIDEMARK" --server "$URL" --fingerprint "$FP" export --vpg vpg1 \
    >"$WORK/export.out" 2>&1 &
export_pid=$!
PIDS+=("$export_pid")
for _ in $(seq 1 100); do grep -q 'nbd://' "$WORK/export.out" && break; sleep 0.1; done
grep -q 'serving checkpoint [0-9]* read-only' "$WORK/export.out" || fail "remote export: $(cat "$WORK/export.out")"
remote "$NS_MGMT" TIDEMARK_TOKEN="$TOKEN" -- exports >"$WORK/exports" 2>&1 || fail "exports: $(cat "$WORK/exports")"
grep -q 'vpg1.*opened by token:auto' "$WORK/exports" || fail "the export is not listed: $(cat "$WORK/exports")"
kill -HUP "$export_pid"
wait "$export_pid" || true
grep -q 'export closed' "$WORK/export.out" || fail "the hung-up export did not close: $(cat "$WORK/export.out")"
[ -z "$(remote "$NS_MGMT" TIDEMARK_TOKEN="$TOKEN" -- exports)" ] || fail "an export is left open"

log "a session from login, and an API token"
session=$(remote "$NS_MGMT" "${OPER[@]}" -- login) || fail "login"
[ "$(remote "$NS_MGMT" TIDEMARK_TOKEN="$session" -- whoami)" = "oper1 (operator)" ] || fail "whoami with the session"
remote "$NS_MGMT" TIDEMARK_TOKEN="$session" -- logout >/dev/null || fail "logout"
remote "$NS_MGMT" TIDEMARK_TOKEN="$session" -- whoami >"$WORK/out" 2>&1 && fail "the session outlived its logout"
grep -q "HTTP 401" "$WORK/out" || fail "after logout: $(cat "$WORK/out")"
[ "$(remote "$NS_MGMT" TIDEMARK_TOKEN="$TOKEN" -- whoami)" = "token:auto (operator)" ] || fail "whoami with the token"

log "failover: refused to the operator, done by the dr-admin with a TOTP code"
remote "$NS_MGMT" TIDEMARK_TOKEN="$TOKEN" -- failover --vpg vpg1 --checkpoint latest --files >"$WORK/out" 2>&1 &&
    fail "an operator token failed over"
grep -q "HTTP 403" "$WORK/out" || fail "the operator's failover: $(cat "$WORK/out")"
remote "$NS_MGMT" TIDEMARK_USER=dra1 "TIDEMARK_PASSWORD=dr-admin password 1" -- failover --vpg vpg1 --checkpoint latest --files \
    </dev/null >"$WORK/out" 2>&1 && fail "a dr-admin failed over without a TOTP code"
code=$(python3 -c 'import sys; from api_client import totp, totp_secret; print(totp(totp_secret(sys.argv[1])))' "$DRA_URI")
remote "$NS_MGMT" TIDEMARK_USER=dra1 "TIDEMARK_PASSWORD=dr-admin password 1" TIDEMARK_TOTP="$code" -- \
    failover --vpg vpg1 --checkpoint latest --files >"$WORK/r.failover" || fail "the dr-admin's failover: $(cat "$WORK/r.failover")"
grep -q 'failed over at checkpoint' "$WORK/r.failover" || fail "failover printed: $(cat "$WORK/r.failover")"
cat "$WORK/r.failover"
wait_status recovery 'failed over at checkpoint'

log "the audit trail, read and verified through the API"
remote "$NS_MGMT" TIDEMARK_TOKEN="$TOKEN" -- audit-log --json >"$WORK/trail.json" || fail "remote audit-log"
jq -e '.[] | select(.op == "failover" and .user == "dra1" and .outcome == "ok" and (.source | contains("'"$MGMT_IP"'")))' \
    "$WORK/trail.json" >/dev/null || fail "the failover is not in the trail with its source"
jq -e '.[] | select(.op == "test-failover start" and .user == "oper1" and .outcome == "ok")' "$WORK/trail.json" >/dev/null ||
    fail "the test failover is not in the trail"
remote "$NS_MGMT" TIDEMARK_TOKEN="$TOKEN" -- audit-log --verify || fail "the trail does not verify through the API"
