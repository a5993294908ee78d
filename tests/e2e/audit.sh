#!/usr/bin/env bash
# `tidemark audit` on a hardened namespace passes; each single breakage
# (a sysctl flipped back, an extra listening port, INPUT policy ACCEPT, a
# stray securetty line, an unexpected process, a setuid file, a compiler,
# a private key others may read)
# makes it fail, naming that item and only that item. The audit runs in its
# own PID namespace so the process check sees the appliance's processes,
# not the test host's.
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/netns.sh"

make_netns
write_appliance_configs

# audit [EXTRA_COMMAND]: runs the audit in a fresh PID namespace inside the
# app namespace (EXTRA_COMMAND first, in the background, if given).
audit() {
    in_app unshare --pid --fork --mount-proc bash -c "${1:-true}
exec '$TIDEMARK' audit --config '$WORK/recovery.toml'" \
        >"$WORK/audit.out" 2>&1
}

# expect_only_failure ITEM_PATTERN: the audit failed, and its only FAIL line matches.
expect_only_failure() {
    if audit "${2:-true}"; then fail "audit passed although $1 is wrong"; fi
    local fails
    fails=$(grep '^FAIL' "$WORK/audit.out" || true)
    [ "$(printf '%s\n' "$fails" | grep -c .)" = 1 ] || fail "expected one failure ($1), got: $fails"
    printf '%s\n' "$fails" | grep -q -- "$1" || fail "the failure does not name $1: $fails"
    log "  fails as it should: $fails"
}

log "before hardening the audit fails"
if audit; then fail "audit passed on an unhardened namespace"; fi
grep -q "^FAIL   firewall V4 INPUT policy .*ACCEPT, want DROP" "$WORK/audit.out" || fail "no INPUT policy failure: $(cat "$WORK/audit.out")"

log "harden, then every item passes"
in_app "$TIDEMARK" harden --config "$WORK/recovery.toml" >"$WORK/out" 2>&1 || fail "harden: $(cat "$WORK/out")"
start_app_agent recovery 4005
audit || fail "audit fails on the hardened namespace: $(grep FAIL "$WORK/audit.out")"
tail -n1 "$WORK/audit.out"
grep -q '^PASS   listening sockets .*3 listeners' "$WORK/audit.out" || fail "the agent's listeners are not counted"
in_app unshare --pid --fork --mount-proc "$TIDEMARK" audit --config "$WORK/recovery.toml" --json >"$WORK/audit.json" ||
    fail "audit --json exits non-zero on a hardened namespace"
python3 -c '
import json, sys
items = json.load(open(sys.argv[1]))["items"]
assert any(i["item"] == "sysctl net.ipv4.tcp_syncookies" and i["verdict"] == "PASS" for i in items), items
assert all(i["verdict"] in ("PASS", "SKIP") for i in items), items
' "$WORK/audit.json" || fail "audit --json is wrong"

log "a sysctl flipped back"
in_app sysctl -qw net.ipv4.conf.all.accept_redirects=1
expect_only_failure "sysctl net.ipv4.conf.all.accept_redirects .*= 1, want 0"
in_app sysctl -qw net.ipv4.conf.all.accept_redirects=0
echo 1 >"$WORK/global-sysctl/fs/suid_dumpable"
expect_only_failure "sysctl fs.suid_dumpable .*= 1, want 0"
echo 0 >"$WORK/global-sysctl/fs/suid_dumpable"

log "an extra listening port"
ip netns exec "$NS_APP" python3 -m http.server 8089 --bind 0.0.0.0 >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 1 50); do [ -n "$(in_app ss -Hltn 'sport = :8089')" ] && break; sleep 0.1; done
expect_only_failure "listening sockets .*8089/tcp"
kill -9 "${PIDS[-1]}"
wait "${PIDS[-1]}" 2>/dev/null || true
[ -z "$(in_app ss -Hltn 'sport = :8089')" ] || fail "the extra listener did not stop"

log "the INPUT policy set to ACCEPT"
in_app iptables -P INPUT ACCEPT
expect_only_failure "firewall V4 INPUT policy .*ACCEPT, want DROP"
in_app iptables -P INPUT DROP

log "a rule slipped into the chain"
in_app iptables -A TIDEMARK -p tcp --dport 8080 -j ACCEPT
expect_only_failure "firewall V4 TIDEMARK rules .*8080"
in_app iptables -D TIDEMARK -p tcp --dport 8080 -j ACCEPT

log "a stray line in securetty"
echo "pts/0" >>"$WORK/securetty"
expect_only_failure "securetty .*pts/0"
sed -i '/pts\/0/d' "$WORK/securetty"

log "an unexpected process"
expect_only_failure "processes .*not allowed: sleep" "sleep 30 &"

log "a setuid file and a compiler on the root"
touch "$WORK/fsroot/usr/bin/helper" && chmod 4755 "$WORK/fsroot/usr/bin/helper"
expect_only_failure "setuid files .*/usr/bin/helper"
rm "$WORK/fsroot/usr/bin/helper"
touch "$WORK/fsroot/usr/bin/gcc"
expect_only_failure "no compilers, package managers or cron .*/usr/bin/gcc"
rm "$WORK/fsroot/usr/bin/gcc"

log "the private key readable by others"
chmod 0644 "$WORK/b/keys/key.pem"
expect_only_failure "private key .*mode 0644"
chmod 0600 "$WORK/b/keys/key.pem"

log "all repaired: the audit passes again"
audit || fail "audit still fails after repairs: $(grep FAIL "$WORK/audit.out")"
log "PASS: audit names each broken item and passes when all are right"
