#!/usr/bin/env bash
# Console-only support SSH, end to end in namespaces with real dropbear and
# a real ssh client: refused off the console and for bad keys; when enabled,
# port 22 opens for the given network only, keys work, passwords and
# forwarding do not; it closes by itself when the time runs out, `disable`
# closes it at once (cutting live sessions), and a crashed session is
# cleared by the next `harden` (what a reboot runs).
#
# dropbear reads root's ~/.ssh/authorized_keys: the enable command runs in a
# private mount namespace where /root is $WORK/home, so the host's /root is
# never touched.
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/netns.sh"

make_netns
write_appliance_configs
in_app "$TIDEMARK" harden --config "$WORK/recovery.toml" >"$WORK/out" 2>&1 || fail "harden: $(cat "$WORK/out")"

KEYS=$WORK/sshkeys
mkdir -p "$KEYS"
ssh-keygen -q -t ed25519 -N "" -C engineer -f "$KEYS/good"
ssh-keygen -q -t dsa -N "" -f "$KEYS/dsa"
ssh-keygen -q -t rsa -b 2048 -N "" -f "$KEYS/rsa2048"
head -c 50 "$KEYS/good.pub" >"$KEYS/truncated.pub"
echo "command=\"/bin/sh\" $(cat "$KEYS/good.pub")" >"$KEYS/command.pub"
echo "permitopen=\"10.0.0.1:22\",port-forwarding $(cat "$KEYS/good.pub")" >"$KEYS/forwarding.pub"
cat "$KEYS/good.pub" "$KEYS/good.pub" >"$KEYS/two.pub"

SSH_OPTS=(-o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=5 -o LogLevel=ERROR)
STATE=$WORK/run/support-ssh.json

# enable ARGS...: support-ssh enable in the app netns, /root = $WORK/home,
# with the test build (its --assume-console and --seconds).
enable() {
    in_app unshare --mount bash -c "mount --bind '$WORK/home' /root && exec '$TIDEMARK_TEST' support-ssh enable --config '$WORK/recovery.toml' $*" \
        </dev/null >"$WORK/out" 2>&1
}

# running PID: alive and not a zombie (an orphan waits for init to reap it).
running() { [ -r "/proc/$1/stat" ] && ! awk '{ exit !($3 == "Z" || $3 == "X") }' "/proc/$1/stat"; }

assert_closed() {
    [ -z "$(in_app ss -Hltn 'sport = :22')" ] || fail "$1: something listens on 22"
    [ ! -e "$WORK/home/.ssh/authorized_keys" ] || fail "$1: authorized_keys left behind"
    [ ! -e "$STATE" ] || fail "$1: session state left behind"
    in_app iptables -S TIDEMARK | grep -q -- "--dport 22 " && fail "$1: port 22 rule left behind"
    return 0
}

log "refused when stdin is not a console"
if in_app "$TIDEMARK" support-ssh enable --config "$WORK/recovery.toml" --minutes 5 --from "$MGMT_IP" \
    --key "$KEYS/good.pub" </dev/null >"$WORK/out" 2>&1; then
    fail "enabled without a console"
fi
grep -q "stdin is not a terminal" "$WORK/out" || fail "unclear refusal: $(cat "$WORK/out")"
# A pseudo-terminal (an SSH or web shell) is not the console either.
script -qec "ip netns exec $NS_APP $TIDEMARK support-ssh enable --config $WORK/recovery.toml --minutes 5 --from $MGMT_IP --key $KEYS/good.pub" \
    /dev/null >"$WORK/out" 2>&1 && fail "enabled from a pseudo-terminal"
grep -q "is not a local console line" "$WORK/out" || fail "unclear refusal for a pty: $(cat "$WORK/out")"
# A console line as stdin is not enough: it must be the controlling
# terminal (a shell elsewhere redirecting </dev/tty1 is not at the console).
if [ -c /dev/tty1 ] && (: </dev/tty1) 2>/dev/null; then
    in_app setsid "$TIDEMARK" support-ssh enable --config "$WORK/recovery.toml" --minutes 5 --from "$MGMT_IP" \
        --key "$KEYS/good.pub" </dev/tty1 >"$WORK/out" 2>&1 && fail "enabled with stdin redirected from /dev/tty1"
    grep -q "not this command's controlling terminal" "$WORK/out" || fail "unclear refusal for </dev/tty1: $(cat "$WORK/out")"
else
    fail "this machine has no /dev/tty1 to redirect from"
fi
# The shipped binary has no test hooks at all.
"$TIDEMARK" support-ssh enable --config "$WORK/recovery.toml" --minutes 5 --from "$MGMT_IP" --key "$KEYS/good.pub" \
    --assume-console </dev/null >"$WORK/out" 2>&1 && fail "the shipped binary took --assume-console"
grep -q "unexpected argument '--assume-console'" "$WORK/out" || fail "unclear refusal of --assume-console: $(cat "$WORK/out")"
# A world-open network is refused.
if enable --minutes 5 --from 0.0.0.0/0 --key "$KEYS/good.pub" --assume-console; then fail "accepted --from 0.0.0.0/0"; fi
grep -q "far too many addresses" "$WORK/out" || fail "unclear refusal of 0.0.0.0/0: $(cat "$WORK/out")"
assert_closed "after console refusals"

log "bad keys are refused"
for bad in truncated:"not a valid OpenSSH public key" dsa:"DSA keys are refused" rsa2048:"RSA key of 2048 bits is refused" \
    command:"carries options" forwarding:"carries options" two:"holds 2 keys"; do
    name=${bad%%:*} why=${bad#*:}
    if enable --seconds 30 --from "$MGMT_IP" --key "$KEYS/$name.pub" --assume-console; then fail "accepted the $name key"; fi
    grep -q "$why" "$WORK/out" || fail "$name key: unclear refusal: $(cat "$WORK/out")"
    log "  $name: $(tail -n1 "$WORK/out")"
    assert_closed "after refusing the $name key"
done
if enable --minutes 100000 --from "$MGMT_IP" --key "$KEYS/good.pub" --assume-console; then fail "accepted 100000 minutes"; fi
grep -q "outside 1..=480" "$WORK/out" || fail "unclear refusal of a long session: $(cat "$WORK/out")"

log "enable for 12 s from the management address (with SUDO_USER=mallory, which must not be believed)"
SUDO_USER=mallory enable --seconds 12 --from "$MGMT_IP" --key "$KEYS/good.pub" --assume-console || fail "enable: $(cat "$WORK/out")"
cat "$WORK/out"
who=$(jq -r .who "$STATE")
[ "$who" = "$(id -un)" ] || fail "the session says it was opened by '$who', not by $(id -un)"
server_pid=$(jq -r .server_pid "$STATE")
result=$(scan "$NS_MGMT" "$APP_MGMT_IP" 22)
[ "$result" = "open=22 closed= rest=none" ] || fail "from the allowed network port 22 is: $result"
result=$(scan "$NS_OTHER" "$APP_OTHER_IP" 22)
[ "$result" = "open= closed= rest=filtered" ] || fail "from another network port 22 is: $result"
out=$(in_mgmt ssh "${SSH_OPTS[@]}" -i "$KEYS/good" "root@$APP_MGMT_IP" 'echo logged-in-as-$(id -un)' 2>&1) ||
    fail "key login failed: $out"
[ "$out" = "logged-in-as-root" ] || fail "key login said: $out"
in_mgmt ssh "${SSH_OPTS[@]}" -o PubkeyAuthentication=no -o PreferredAuthentications=password,keyboard-interactive \
    "root@$APP_MGMT_IP" true 2>/dev/null && fail "a login without a key succeeded"
in_mgmt ssh "${SSH_OPTS[@]}" -i "$KEYS/dsa" "root@$APP_MGMT_IP" true 2>/dev/null && fail "another key logged in"
in_mgmt ssh "${SSH_OPTS[@]}" -i "$KEYS/good" -W 127.0.0.1:4005 "root@$APP_MGMT_IP" </dev/null >/dev/null 2>&1 &&
    fail "TCP forwarding through support SSH worked"
grep -q "OPEN from $MGMT_IP/32" <<<"$(in_app "$TIDEMARK" support-ssh status --config "$WORK/recovery.toml")" || fail "status does not say open"
if enable --seconds 30 --from "$OTHER_IP" --key "$KEYS/good.pub" --assume-console; then fail "a second session opened"; fi
grep -q "already open" "$WORK/out" || fail "unclear refusal of a second session: $(cat "$WORK/out")"
in_app "$TIDEMARK" audit --config "$WORK/recovery.toml" >"$WORK/audit.out" 2>&1 || true
grep -q "^PASS   support SSH .*open from $MGMT_IP/32" "$WORK/audit.out" || fail "audit: $(grep 'support SSH' "$WORK/audit.out")"
grep -q "^PASS   listening sockets" "$WORK/audit.out" || fail "audit counts 22 as unexpected while the session is open"

log "the time runs out: everything closes by itself"
for _ in $(seq 1 100); do [ -e "$STATE" ] || break; sleep 0.2; done
[ -e "$STATE" ] && fail "the session did not close after its time"
assert_closed "after the time ran out"
running "$server_pid" && fail "dropbear still runs after the time ran out"
result=$(scan "$NS_MGMT" "$APP_MGMT_IP" 22)
[ "$result" = "open= closed= rest=filtered" ] || fail "after the time ran out port 22 is: $result"
grep -q "support SSH enabled by .* from $MGMT_IP/32 until " "$WORK/logs/tidemark.log" || fail "enable is not in the log"
grep -q "support SSH closed (time ran out)" "$WORK/logs/tidemark.log" || fail "the close is not in the log"

log "disable closes at once and cuts live sessions"
enable --minutes 5 --from "$MGMT_IP" --key "$KEYS/good.pub" --assume-console || fail "enable: $(cat "$WORK/out")"
ip netns exec "$NS_MGMT" ssh "${SSH_OPTS[@]}" -i "$KEYS/good" "root@$APP_MGMT_IP" 'sleep 120' >/dev/null 2>&1 &
live=$!
PIDS+=("$live")
sleep 1
kill -0 "$live" 2>/dev/null || fail "the live session did not start"
grep -q "support SSH closed" <<<"$(in_app "$TIDEMARK" support-ssh disable --config "$WORK/recovery.toml")" || fail "disable said otherwise"
assert_closed "after disable"
for _ in $(seq 1 50); do running "$live" || break; sleep 0.1; done
running "$live" && fail "a live SSH session survived disable"
grep -q "support SSH disable requested by" "$WORK/logs/tidemark.log" || fail "disable is not in the log"

log "a crashed session (warden killed) is cleared by the next harden"
enable --minutes 5 --from "$MGMT_IP" --key "$KEYS/good.pub" --assume-console || fail "enable: $(cat "$WORK/out")"
kill -9 "$(jq -r .warden_pid "$STATE")"
server_pid=$(jq -r .server_pid "$STATE")
in_app "$TIDEMARK" harden --config "$WORK/recovery.toml" >"$WORK/out" 2>&1 || fail "harden: $(cat "$WORK/out")"
assert_closed "after harden found a stale session"
running "$server_pid" && fail "the stale session's dropbear still runs"
log "PASS: support SSH opens only from the console, only for its network and time"
