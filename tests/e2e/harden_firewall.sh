#!/usr/bin/env bash
# The firewall, seen from the network: in namespaces, with real agents
# listening and nmap scanning every TCP port from an allowed network, an
# unnamed network and the storage link. Also: fail closed at first boot,
# and a broken rule file or an iptables failure midway leaves the running
# rules exactly as they were.
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/netns.sh"

make_netns
write_appliance_configs

# A config naming a rule file with a port outside the port table.
printf 'allow tcp 4005 from management\nallow tcp 8080 from management\n' >"$WORK/broken.rules"
sed "s|^\[appliance\]$|[appliance]\nfirewall_rules = \"$WORK/broken.rules\"|" "$WORK/recovery.toml" >"$WORK/broken.toml"

rules_now() { in_app iptables -S; in_app ip6tables -S; }

log "first boot, broken rule file: harden fails and everything stays dropped"
if in_app "$TIDEMARK" harden --config "$WORK/broken.toml" >"$WORK/out" 2>&1; then fail "harden accepted a broken rule file"; fi
grep -q "broken.rules line 2: port 8080 is not in the design's port table" "$WORK/out" || fail "unclear error: $(cat "$WORK/out")"
for t in iptables ip6tables; do
    grep -qx -- "-P INPUT DROP" <<<"$(in_app $t -S INPUT)" || fail "$t INPUT policy is not DROP after a failed first harden"
done
start_app_agent recovery 4005
result=$(scan "$NS_MGMT" "$APP_MGMT_IP")
[ "$result" = "open= closed= rest=filtered" ] || fail "after a failed harden, mgmt sees: $result"
log "nothing reachable after the failed harden: $result"

log "harden with the shipped rules"
in_app "$TIDEMARK" harden --config "$WORK/recovery.toml" >"$WORK/out" 2>&1 || fail "harden failed: $(cat "$WORK/out")"
start_app_agent protected 10809
result=$(scan "$NS_MGMT" "$APP_MGMT_IP")
log "from the management network: $result"
# 4005/4007/4008 have listeners; 4006/4009 are allowed but nothing listens.
[ "$result" = "open=4005,4007,4008 closed=4006,4009 rest=filtered" ] || fail "mgmt sees $result"
result=$(scan "$NS_OTHER" "$APP_OTHER_IP")
log "from an unnamed network: $result"
[ "$result" = "open= closed= rest=filtered" ] || fail "an unnamed network sees $result"
result=$(scan "$NS_STOR" "$APP_STOR_IP")
log "from the storage link: $result"
[ "$result" = "open=10809 closed= rest=filtered" ] || fail "the storage link sees $result"
# The protected agent still reaches its recovery peer over loopback.
timeout 5 ip netns exec "$NS_APP" bash -c "exec 3<>/dev/tcp/127.0.0.1/4007" || fail "loopback to 4007 is blocked"

log "a broken rule file leaves the running rules untouched"
before=$(rules_now)
if in_app "$TIDEMARK" harden --config "$WORK/broken.toml" >"$WORK/out" 2>&1; then fail "harden accepted a broken rule file"; fi
grep -q "port 8080 is not in the design's port table" "$WORK/out" || fail "unclear error: $(cat "$WORK/out")"
[ "$(rules_now)" = "$before" ] || fail "rules changed after a refused rule file"

log "an iptables failure midway leaves the running rules untouched"
real_iptables=$(command -v iptables)
mkdir -p "$WORK/shim"
cat >"$WORK/shim/iptables" <<SH
#!/bin/sh
# Fails like a kernel refusing one rule, half-way through the new chain.
case "\$*" in *TIDEMARK-NEW*"--dport 4008"*) echo "iptables: simulated refusal of rule 4008" >&2; exit 4 ;; esac
exec $real_iptables "\$@"
SH
chmod +x "$WORK/shim/iptables"
if in_app env PATH="$WORK/shim:$PATH" "$TIDEMARK" harden --config "$WORK/recovery.toml" >"$WORK/out" 2>&1; then
    fail "harden succeeded although iptables failed"
fi
grep -q "simulated refusal of rule 4008" "$WORK/out" || fail "the iptables error is not reported: $(cat "$WORK/out")"
grep -q "running rules are unchanged" "$WORK/out" || fail "the error does not say the rules stayed: $(cat "$WORK/out")"
[ "$(rules_now)" = "$before" ] || fail "rules changed after an iptables failure midway"
in_app iptables -S | grep -q TIDEMARK-NEW && fail "the staging chain was left behind"
result=$(scan "$NS_MGMT" "$APP_MGMT_IP" 22,4005-4009,10809)
[ "$result" = "open=4005,4007,4008 closed=4006,4009 rest=filtered" ] || fail "after the failure mgmt sees $result"

log "a new rule set replaces the old one as a whole"
sed -i "s|^management_networks = .*|management_networks = [\"$OTHER_IP\"]|" "$WORK/recovery.toml"
in_app "$TIDEMARK" harden --config "$WORK/recovery.toml" >"$WORK/out" 2>&1 || fail "harden failed: $(cat "$WORK/out")"
result=$(scan "$NS_OTHER" "$APP_OTHER_IP" 22,4005-4009,10809)
[ "$result" = "open=4005 closed=4006,4009 rest=filtered" ] || fail "the new management network sees $result"
result=$(scan "$NS_MGMT" "$APP_MGMT_IP" 22,4005-4009,10809)
[ "$result" = "open=4007,4008 closed= rest=filtered" ] || fail "the old management network (still the peer) sees $result"
log "PASS: only the port table, only from the configured sources; failures change nothing"
