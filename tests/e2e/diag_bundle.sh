#!/usr/bin/env bash
# The diagnostics bundle on 4005 over real HTTPS (curl) from the management
# namespace: 401 and nothing else without the right token, a tar.zst with
# every listed part with it, no secret anywhere in it or in the logs, one
# bundle at a time, the same bundle from `tidemark diag --out`, and log
# files that stay within their size cap. Nobody holds the port for others:
# a refused request closes its connection, a source holds at most 4
# connections (another management station is still served), and a client
# that takes nothing loses its bundle after 15 s, freeing the one slot,
# and its connection once it has acknowledged nothing for 60 s.
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/netns.sh"

LOG_FILE_BYTES=65536
make_netns
# A second management station, on the same network.
MGMT2_IP=${MGMT_IP%.*}.3
ip netns exec "$NS_MGMT" ip addr add "$MGMT2_IP/24" dev "$(ip netns exec "$NS_MGMT" ip -o -4 addr show | awk -v ip="$MGMT_IP" '$4 ~ ip"/" {print $2}')"
EXTRA_LOGGING="file_bytes = $LOG_FILE_BYTES
files_kept = 2" write_appliance_configs
sed -i "s|^management_networks = \[\"$MGMT_IP\"\]|management_networks = [\"$MGMT_IP\", \"$MGMT2_IP\"]|" "$WORK/recovery.toml"
in_app "$TIDEMARK" harden --config "$WORK/recovery.toml" >"$WORK/out" 2>&1 || fail "harden: $(cat "$WORK/out")"
start_app_agent recovery 4005
start_app_agent protected 10809
URL=https://$APP_MGMT_IP:4005
# The appliance's certificate is self-signed; a manager pins it. Here: -k.
get() { in_mgmt curl -sk --max-time 20 -o "$WORK/body" -w '%{http_code}' "$@"; }

log "no token, a wrong token, the wrong scheme: 401 and nothing else"
[ "$(get "$URL/bundle")" = 401 ] || fail "no token: not 401"
[ "$(cat "$WORK/body")" = "unauthorized" ] || fail "401 body says more: $(head -c 200 "$WORK/body")"
[ "$(get -H "Authorization: Bearer ${DIAG_TOKEN}x" "$URL/bundle")" = 401 ] || fail "wrong token: not 401"
[ "$(get -H "Authorization: Bearer ${DIAG_TOKEN:0:10}" "$URL/bundle")" = 401 ] || fail "token prefix: not 401"
[ "$(get -H "Authorization: Basic $DIAG_TOKEN" "$URL/bundle")" = 401 ] || fail "Basic scheme: not 401"
[ "$(get "$URL/anything")" = 401 ] || fail "unknown path without a token: not 401"
[ "$(get -H "Authorization: Bearer $DIAG_TOKEN" "$URL/anything")" = 404 ] || fail "unknown path with the token: not 404"
[ "$(get -X POST -H "Authorization: Bearer $DIAG_TOKEN" "$URL/bundle")" = 405 ] || fail "POST: not 405"
result=$(scan "$NS_OTHER" "$APP_OTHER_IP" 4005)
[ "$result" = "open= closed= rest=filtered" ] || fail "4005 from an unnamed network: $result"

log "the right token: a tar.zst with every part"
code=$(get -H "Authorization: Bearer $DIAG_TOKEN" -D "$WORK/headers" "$URL/bundle")
[ "$code" = 200 ] || fail "with the token: $code"
grep -qi '^content-type: application/zstd' "$WORK/headers" || fail "content type: $(cat "$WORK/headers")"
mv "$WORK/body" "$WORK/bundle.tar.zst"
mkdir -p "$WORK/unpacked"
tar --zstd -xf "$WORK/bundle.tar.zst" -C "$WORK/unpacked" || fail "the bundle does not unpack"
top=$(ls "$WORK/unpacked")
for part in version.txt audit.txt audit.json config.toml status.json system.txt logs/tidemark.log; do
    [ -s "$WORK/unpacked/$top/$part" ] || fail "the bundle has no $part"
done
grep -q "^tidemark " "$WORK/unpacked/$top/version.txt" || fail "no version"
grep -q "^audit: " "$WORK/unpacked/$top/audit.txt" || fail "no audit verdict"
grep -q 'token = "<redacted>"' "$WORK/unpacked/$top/config.toml" || fail "the token is not shown as redacted"
grep -q "diagnostics: refused GET /bundle from $MGMT_IP" "$WORK/unpacked/$top/logs/tidemark.log" || fail "refusals are not logged"
log "bundle: $(stat -c %s "$WORK/bundle.tar.zst") bytes, $(find "$WORK/unpacked" -type f | wc -l) files"

log "no secret in the bundle or the logs"
secrets=("$DIAG_TOKEN")
for keyfile in "$WORK/a/keys/key.pem" "$WORK/b/keys/key.pem"; do
    while read -r line; do secrets+=("$line"); done < <(grep -v -- '-----' "$keyfile")
done
for s in "${secrets[@]}"; do
    grep -rqF -- "$s" "$WORK/unpacked" && fail "a secret is in the bundle: ${s:0:6}..."
    grep -rqF -- "$s" "$WORK/logs" "$WORK"/*.log && fail "a secret is in a log: ${s:0:6}..."
done
log "checked ${#secrets[@]} secret values: none found"

log "one bundle at a time"
head -c 24M /dev/urandom >"$WORK/logs/noise.log"  # incompressible: the first bundle stays busy
made=$(grep -c "diagnostics: making a bundle" "$WORK/recovery.log")
ip netns exec "$NS_MGMT" curl -sk --limit-rate 50k -o /dev/null -H "Authorization: Bearer $DIAG_TOKEN" "$URL/bundle" &
slow=$!
PIDS+=("$slow")
# Asked as soon as the first is being made (a fixed 2 s once let a first
# bundle the client's buffers took whole end before the second was asked).
for _ in $(seq 1 100); do
    [ "$(grep -c "diagnostics: making a bundle" "$WORK/recovery.log")" -gt "$made" ] && break
    sleep 0.05
done
[ "$(get -H "Authorization: Bearer $DIAG_TOKEN" "$URL/bundle")" = 429 ] || fail "a second bundle at the same time was not refused"
kill "$slow"
rm "$WORK/logs/noise.log"
for _ in $(seq 1 50); do
    code=$(get -H "Authorization: Bearer $DIAG_TOKEN" "$URL/bundle")
    [ "$code" = 200 ] && break
    sleep 0.2
done
[ "$code" = 200 ] || fail "the slot was not freed after the first client went away ($code)"

# hold SOURCE N SECONDS [REQUEST]: N TLS connections to 4005 from SOURCE,
# each sending REQUEST (nothing by default) and reading nothing; prints
# how many the appliance closed at once, then holds the rest SECONDS.
hold() {
    in_mgmt python3 - "$APP_MGMT_IP" "$1" "$2" "$3" "${4:-}" <<'PY'
import socket, ssl, sys, time
host, source, n, hold, request = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
held, closed = [], 0
for _ in range(n):
    raw = socket.create_connection((host, 4005), timeout=5, source_address=(source, 0))
    try:
        s = ctx.wrap_socket(raw)
        if request:
            s.sendall(request.encode().replace(b"\\n", b"\r\n"))
        held.append(s)
    except (ssl.SSLError, OSError):
        closed += 1
print(closed, flush=True)
time.sleep(hold)
PY
}

log "a refused request closes its connection"
out=$(in_mgmt python3 - "$APP_MGMT_IP" <<'PY'
import socket, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection((sys.argv[1], 4005), timeout=10))
s.sendall(b"GET /bundle HTTP/1.1\r\nHost: x\r\n\r\n")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print("closed" if b" 401 " in data.split(b"\r\n")[0] and b"connection: close" in data.lower() else data[:200])
PY
)
[ "$out" = closed ] || fail "a 401 did not close its connection: $out"

log "one source holds at most 4 connections; another is served meanwhile"
hold "$MGMT_IP" 5 6 >"$WORK/hold.out" &
holder=$!
sleep 2
[ "$(head -1 "$WORK/hold.out")" = 1 ] || fail "the fifth connection from one source was not refused: $(cat "$WORK/hold.out")"
[ "$(in_mgmt curl -sk --interface "$MGMT2_IP" --max-time 20 -o /dev/null -w '%{http_code}' \
    -H "Authorization: Bearer $DIAG_TOKEN" "$URL/bundle")" = 200 ] || fail "another station was not served"
wait "$holder"

log "a client that takes nothing loses its bundle after 15 s, and its connection after 60 s"
head -c 24M /dev/urandom >"$WORK/logs/noise.log"
hold "$MGMT_IP" 1 100 "GET /bundle HTTP/1.1\nHost: x\nAuthorization: Bearer $DIAG_TOKEN\n\n" >/dev/null &
holder=$!
stalled_at=$SECONDS
sleep 3
code=$(in_mgmt curl -sk --interface "$MGMT2_IP" --max-time 20 -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $DIAG_TOKEN" "$URL/bundle")
[ "$code" = 429 ] || fail "the stalled bundle did not hold the slot ($code)"
rm "$WORK/logs/noise.log"
for _ in $(seq 1 30); do
    code=$(in_mgmt curl -sk --interface "$MGMT2_IP" --max-time 20 -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $DIAG_TOKEN" "$URL/bundle")
    [ "$code" = 200 ] && break
    sleep 1
done
[ "$code" = 200 ] || fail "the slot of a client that takes nothing was not freed ($code)"
kill -0 "$holder" 2>/dev/null || fail "the stalled client was gone before the slot was freed (the test proves nothing)"
# The connection itself (one of the source's 4): the client is alive and
# answers the appliance's window probes, so only the appliance's limit on
# unacknowledged bytes ends it (the build before held it for good).
held() { in_app ss -Htn state established "( sport = :4005 )" | grep -c " $MGMT_IP:" || true; }
[ "$(held)" = 1 ] || fail "the stalled client's connection is not there to watch: $(in_app ss -tn)"
while [ "$(held)" != 0 ] && ((SECONDS - stalled_at < 85)); do sleep 1; done
[ "$(held)" = 0 ] || fail "the appliance still holds the connection of a client that took nothing for $((SECONDS - stalled_at)) s"
log "the stalled client's connection was closed $((SECONDS - stalled_at)) s after its request"
kill -0 "$holder" 2>/dev/null || fail "the stalled client was gone before its connection was closed (the test proves nothing)"
pkill -P "$holder"
wait "$holder" || true

log "tidemark diag --out writes the same parts locally, never over a file"
in_app "$TIDEMARK" diag --config "$WORK/recovery.toml" --out "$WORK/local.tar.zst" >/dev/null || fail "diag --out failed"
grep -q '/audit.json$' <<<"$(tar --zstd -tf "$WORK/local.tar.zst")" || fail "the local bundle has no audit"
if in_app "$TIDEMARK" diag --config "$WORK/recovery.toml" --out "$WORK/local.tar.zst" 2>"$WORK/out"; then
    fail "diag overwrote an existing file"
fi
grep -q "never overwritten" "$WORK/out" || fail "unclear refusal: $(cat "$WORK/out")"

log "log files stay within their cap"
# Each refused request logs one line; enough of them to rotate several times.
urls=()
for i in $(seq 1 1500); do urls+=("$URL/bundle?n=$i"); done
in_mgmt curl -sk "${urls[@]}" >/dev/null || true
ls -l "$WORK/logs"
total=$(du -cb "$WORK"/logs/tidemark.log* | tail -n1 | cut -f1)
files=$(ls "$WORK"/logs/tidemark.log* | wc -l)
[ "$files" = 3 ] || fail "expected tidemark.log and 2 rotated files, got $files"
((total <= 3 * LOG_FILE_BYTES + 4096)) || fail "logs hold $total bytes, over the cap"
log "PASS: 401 without the token, a complete bundle with it, no secrets, logs capped at $total bytes"
