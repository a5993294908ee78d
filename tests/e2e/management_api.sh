#!/usr/bin/env bash
# The management API on 4006 (issue 17, items 1-4) over real HTTPS, with
# the appliance certificate pinned, from Python's TLS client:
# - RBAC matrix: every role (and an operator and a viewer token) × every
#   route, allowed or refused as the role says, printed as a table; the
#   calls that are allowed use names that do not exist or bodies that are
#   incomplete, so nothing changes. A token never exceeds its role, and no
#   token may be dr-admin.
# - MFA and sessions: dr-admin without a TOTP code gets no session and
#   cannot fail over; a wrong code and a replayed code are refused; an idle
#   session expires; wrong passwords are throttled (the 10th waits the
#   configured maximum, a parallel attempt meanwhile gets 429) and the 10th
#   locks the account, which then cannot log in until `tidemark user
#   unlock`.
# - Bad input: malformed JSON, wrong types, unknown fields, an oversized
#   body, names with path traversal, plain HTTP, TLS 1.2, a client too slow
#   with its headers or its body: 4xx or a closed connection, nothing
#   changed, the agent keeps serving.
# - The real operations: a checkpoint through the protected agent's API
#   (operator token), listed by a viewer at the recovery site, an export
#   read back equal to the source, a test failover started and stopped by
#   an operator, a failover refused to a viewer and done by a dr-admin.
# - The audit trail has each login, refusal, lock and operation with its
#   user and outcome, and verifies intact.
source "$(dirname "$0")/../lib/common.sh"

setup_pair async 1000 disk0:16M
API_R=127.0.0.1
API_P=127.0.0.2
cat >>"$WORK/recovery.toml" <<TOML
[exports]
listen = "127.0.0.1:$((PORT_BASE + 6))"
[api]
listen = "$API_R:4006"
session_idle = "5s"
login_free_failures = 3
login_delay = "200ms"
login_delay_max = "1s"
lock_after = 10
TOML
printf '[api]\nlisten = "%s:4006"\n' "$API_P" >>"$WORK/protected.toml"
R=(--config "$WORK/recovery.toml")
P=(--config "$WORK/protected.toml")

# Users and tokens are made at the console (the test build's hooks stand
# in for the console line and the hidden password prompt).
add_user() { # CONFIG NAME ROLE PASSWORD
    echo "$4" | "$TIDEMARK_TEST" user add --config "$1" "$2" --role "$3" --assume-console --password-stdin
}
add_user "$WORK/recovery.toml" view1 viewer "viewer password 1" >/dev/null
add_user "$WORK/recovery.toml" oper1 operator "operator password 1" >/dev/null
add_user "$WORK/recovery.toml" victim operator "victim password 1" >/dev/null
DRA_URI=$(add_user "$WORK/recovery.toml" dra1 dr-admin "dr-admin password 1" | grep '^otpauth://') ||
    fail "no TOTP enrolment printed for a dr-admin"
ADM_URI=$(add_user "$WORK/recovery.toml" adm1 admin "admin password 1" | grep '^otpauth://') ||
    fail "no TOTP enrolment printed for an admin"
OP_TOKEN=$("$TIDEMARK_TEST" token add "${R[@]}" optok --role operator --expires 1d --assume-console 2>/dev/null)
VIEW_TOKEN=$("$TIDEMARK_TEST" token add "${R[@]}" viewtok --role viewer --expires 1d --assume-console 2>/dev/null)
P_TOKEN=$("$TIDEMARK_TEST" token add "${P[@]}" optok --role operator --expires 1h --assume-console 2>/dev/null)
"$TIDEMARK_TEST" token add "${R[@]}" big --role dr-admin --expires 1d --assume-console >/dev/null 2>&1 &&
    fail "a dr-admin token was made"
echo "a password long enough" | "$TIDEMARK" user add "${R[@]}" sneaky --role admin >"$WORK/sneaky.out" 2>&1 &&
    fail "user add ran away from the console"
grep -q "console" "$WORK/sneaky.out" || fail "user add off the console says: $(cat "$WORK/sneaky.out")"
echo "short" | "$TIDEMARK_TEST" user add "${R[@]}" shorty --role viewer --assume-console --password-stdin >/dev/null 2>&1 &&
    fail "a short password was taken"
"$TIDEMARK" user list "${R[@]}" >"$WORK/users.before"
grep -q '^dra1 .*dr-admin .*yes' "$WORK/users.before" || fail "user list: $(cat "$WORK/users.before")"
if grep -rqs 'dr-admin password 1\|viewer password 1' "$WORK/b/data"; then fail "a password is stored in clear"; fi
log "users and tokens made at the console; none off it, no dr-admin token, no short password"

start_recovery
start_protected
wait_port 4006 2>/dev/null || true
head -c 4M /dev/urandom | dd of="$WORK/chunk" status=none
nbdcopy "$WORK/chunk" "$NBD_URI/disk0"
wait_replicated 60

FP_R=$("$TIDEMARK" fingerprint --cert "$WORK/b/keys/cert.pem" | tail -n1)
FP_P=$("$TIDEMARK" fingerprint --cert "$WORK/a/keys/cert.pem" | tail -n1)
export API_R API_P FP_R FP_P DRA_URI ADM_URI OP_TOKEN VIEW_TOKEN P_TOKEN WORK TIDEMARK_TEST
export RCONF="$WORK/recovery.toml" SRC="$WORK/src/disk0.img"
python3 - <<'PY' || fail "the management API checks failed"
import json, os, ssl, subprocess, sys, threading, time
from api_client import Api, raw_exchange, totp, totp_secret

E = os.environ
api = Api(E["API_R"], 4006, E["FP_R"])
papi = Api(E["API_P"], 4006, E["FP_P"])
DRA, ADM = totp_secret(E["DRA_URI"]), totp_secret(E["ADM_URI"])
RANK = {"viewer": 0, "operator": 1, "dr-admin": 2, "admin": 3}
failures = []

def check(ok, what):
    if not ok:
        failures.append(what)
        print("FAIL:", what, flush=True)

def stop_if_failed():
    if failures:
        sys.exit(1)

# ---- wrong pin: the client refuses an appliance it does not know
try:
    Api(E["API_R"], 4006, E["FP_P"]).call("GET", "/api/v1/status")
    check(False, "a certificate that is not the pinned one was accepted")
except ssl.SSLError:
    pass

# ---- RBAC matrix
ROUTES = [
    ("GET", "/api/v1/whoami", "viewer"),
    ("GET", "/metrics", "viewer"),
    ("GET", "/api/v1/history", "viewer"),
    ("GET", "/api/v1/status", "viewer"),
    ("GET", "/api/v1/vpgs", "viewer"),
    ("GET", "/api/v1/vpgs/nosuch/checkpoints", "viewer"),
    ("GET", "/api/v1/exports", "viewer"),
    ("GET", "/api/v1/audit", "viewer"),
    ("GET", "/api/v1/audit/verify", "viewer"),
    ("GET", "/api/v1/support-ssh", "viewer"),
    ("POST", "/api/v1/vpgs/nosuch/checkpoints", "operator"),
    ("POST", "/api/v1/groups/nosuch/checkpoints", "operator"),
    ("POST", "/api/v1/vpgs/nosuch/exports", "operator"),
    ("DELETE", "/api/v1/exports/999", "operator"),
    ("POST", "/api/v1/vpgs/nosuch/test-failover", "operator"),
    ("DELETE", "/api/v1/vpgs/nosuch/test-failover", "operator"),
    ("POST", "/api/v1/vpgs/nosuch/verify", "operator"),
    ("POST", "/api/v1/vpgs/nosuch/failover", "dr-admin"),
    ("POST", "/api/v1/vpgs/nosuch/move", "dr-admin"),
    ("POST", "/api/v1/vpgs/nosuch/reverse", "dr-admin"),
    ("POST", "/api/v1/vpgs/nosuch/move-back", "dr-admin"),
    ("POST", "/api/v1/vpgs/nosuch/clear-alert", "dr-admin"),
    ("GET", "/api/v1/users", "admin"),
    ("POST", "/api/v1/users", "admin"),
    ("DELETE", "/api/v1/users/nosuch", "admin"),
    ("POST", "/api/v1/users/nosuch/unlock", "admin"),
    ("GET", "/api/v1/tokens", "admin"),
    ("POST", "/api/v1/tokens", "admin"),
    ("DELETE", "/api/v1/tokens/nosuch", "admin"),
]
CALLERS = [
    ("none", None, lambda: None),
    ("viewer", "viewer", lambda: api.session("view1", "viewer password 1")),
    ("operator", "operator", lambda: api.session("oper1", "operator password 1")),
    ("dr-admin", "dr-admin", lambda: api.session("dra1", "dr-admin password 1", DRA)),
    ("admin", "admin", lambda: api.session("adm1", "admin password 1", ADM)),
    ("tok-view", "viewer", lambda: E["VIEW_TOKEN"]),
    ("tok-oper", "operator", lambda: E["OP_TOKEN"]),
]
table = {}
for name, role, credential in CALLERS:
    token = credential()  # logged in right before its row: sessions idle out after 5 s
    for method, path, needed in ROUTES:
        body = {} if method != "GET" else None
        status, answer, _ = api.call(method, path, body, token=token)
        allowed = status not in (401, 403)
        expected = role is not None and RANK[role] >= RANK[needed]
        table[(method, path, name)] = "%s %d" % ("allow" if allowed else "deny ", status)
        check(allowed == expected, "%s %s as %s: %d %s (expected %s)" % (
            method, path, name, status, answer, "allowed" if expected else "refused"))
        if not allowed:
            check(status == (401 if role is None else 403), "%s %s as %s refused with %d" % (method, path, name, status))
print("RBAC matrix (allow/deny and the HTTP status; allowed calls use names that do not exist):")
print("%-8s %-36s %-9s" % ("METHOD", "ROUTE", "NEEDS") + "".join("%-11s" % c[0] for c in CALLERS))
for method, path, needed in ROUTES:
    print("%-8s %-36s %-9s" % (method, path.replace("/api/v1/", ""), needed) +
          "".join("%-11s" % table[(method, path, c[0])] for c in CALLERS))
stop_if_failed()

# ---- /metrics for Prometheus, with a viewer's token
import re
def metrics(client, token):
    conn = client.connect()
    conn.request("GET", "/metrics", headers={"Authorization": "Bearer " + token})
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    check(response.status == 200 and "openmetrics-text" in response.getheader("Content-Type", ""), "metrics: %d" % response.status)
    return text
text = metrics(api, E["VIEW_TOKEN"])
sent = re.search(r'^tidemark_vpg_transferred_bytes_total\{vpg="vpg1"\} (\d+)$', text, re.M)
check(sent and int(sent.group(1)) > 4 << 20, "recovery metrics, bytes received: %s" % text[:600])
for line in ['tidemark_vpg_state{vpg="vpg1",state="protected"} 1', 'tidemark_agent_up{role="recovery",node="site-b"} 1']:
    check(line in text.splitlines(), "recovery metrics have no %r" % line)
check(re.search(r'^tidemark_vpg_lag_seconds\{vpg="vpg1"\} [0-9.]+$', text, re.M), "no RPO in the recovery metrics")
text = metrics(papi, E["P_TOKEN"])
check('tidemark_link_connected{vpg="vpg1"} 1' in text.splitlines(), "protected metrics: %s" % text[:600])
print("metrics: the recovery site reports bytes received, state and RPO; the protected site %d series, link up" % len([l for l in text.splitlines() if l and not l.startswith("#")]))

# ---- MFA: no code, a wrong code, a replayed code
status, answer, _ = api.login("dra1", "dr-admin password 1")
check(status == 401 and answer.get("totp_required"), "dr-admin without TOTP: %d %s" % (status, answer))
status, _, _ = api.call("POST", "/api/v1/vpgs/vpg1/failover", {"checkpoint": "latest"})
check(status == 401, "a failover without a session: %d" % status)
wrong = "%06d" % ((int(totp(DRA)) + 1) % 1000000)
status, _, _ = api.login("dra1", "dr-admin password 1", code=wrong)
check(status == 401, "a wrong TOTP code: %d" % status)
token = api.session("dra1", "dr-admin password 1", DRA)
# The code that session used, sent again: a replay.
status, answer, _ = api.login("dra1", "dr-admin password 1", code=api.last_code)
check(status == 401, "a replayed TOTP code was accepted: %d %s" % (status, answer))
check(api.call("GET", "/api/v1/whoami", token=token)[1] == {"user": "dra1", "role": "dr-admin"}, "whoami")
print("MFA: no code -> 401 (totp_required), no session -> no failover, wrong code and replays -> 401")

# ---- idle expiry
token = api.session("oper1", "operator password 1")
check(api.call("GET", "/api/v1/whoami", token=token)[0] == 200, "a fresh session works")
time.sleep(6)
status, answer, _ = api.call("GET", "/api/v1/whoami", token=token)
check(status == 401 and "expired" in answer["error"], "an idle session: %d %s" % (status, answer))
print("session idle for 6 s (limit 5 s): 401,", answer["error"])

# ---- throttle and lock, from a source of its own
thr = Api(E["API_R"], 4006, E["FP_R"], source="127.0.0.3")
times = []
for n in range(1, 11):
    if n == 9:
        # While the 9th failure's answer is held, another try is refused at once.
        got = {}
        t = threading.Thread(target=lambda: got.update(r=thr.login("victim", "wrong password %d" % n)))
        start = time.monotonic()
        t.start()
        time.sleep(0.4)
        status, _, headers = thr.login("victim", "victim password 1")
        check(status == 429 and "retry-after" in {k.lower() for k in headers}, "a login during a delay: %d %s" % (status, headers))
        t.join()
        times.append(time.monotonic() - start)
        check(got["r"][0] == 401, "9th wrong password: %s" % (got["r"],))
        continue
    start = time.monotonic()
    status, _, _ = thr.login("victim", "wrong password %d" % n)
    times.append(time.monotonic() - start)
    check(status == 401, "wrong password %d: %d" % (n, status))
print("wrong passwords, seconds each:", " ".join("%.2f" % t for t in times))
check(times[9] >= 1.0, "the 10th wrong password waited %.2f s, not the configured 1 s" % times[9])
check(times[3] >= 0.2, "the 4th wrong password waited %.2f s, not the configured 0.2 s" % times[3])
time.sleep(0.2)
status, answer, _ = thr.login("victim", "victim password 1")
check(status == 403 and "locked" in answer["error"], "the locked account with its password: %d %s" % (status, answer))
out = subprocess.run([E["TIDEMARK_TEST"], "user", "unlock", "--config", E["RCONF"], "victim", "--assume-console"],
                     capture_output=True, text=True)
check(out.returncode == 0 and "unlocked" in out.stdout, "user unlock: %s %s" % (out.stdout, out.stderr))
status, _, _ = thr.login("victim", "victim password 1")
check(status == 200, "after the unlock: %d" % status)
stop_if_failed()

# ---- bad input
admin = api.session("adm1", "admin password 1", ADM)
def slow_headers(result):
    start = time.monotonic()
    got = raw_exchange(E["API_R"], 4006, b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n", wait=25)
    result["headers"] = (time.monotonic() - start, got)
def slow_body(result):
    start = time.monotonic()
    got = raw_exchange(E["API_R"], 4006, b"POST /api/v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"user\"", wait=25)
    result["body"] = (time.monotonic() - start, got)
slow = {}
threads = [threading.Thread(target=f, args=(slow,)) for f in (slow_headers, slow_body)]
for t in threads:
    t.start()
oper = E["OP_TOKEN"]
cases = [
    ("malformed JSON", "POST", "/api/v1/vpgs/vpg1/test-failover", b'{"checkpoint": ', 400),
    ("wrong type", "POST", "/api/v1/vpgs/vpg1/test-failover", b'{"checkpoint": 5}', 400),
    ("unknown field", "POST", "/api/v1/vpgs/vpg1/test-failover", b'{"checkpoint": "latest", "x": 1}', 400),
    ("oversized body", "POST", "/api/v1/vpgs/vpg1/test-failover", b'{"checkpoint": "' + b"a" * 100000 + b'"}', 413),
    ("traversal in a name", "POST", "/api/v1/vpgs/..%2f..%2fetc/test-failover", b'{"checkpoint": "latest"}', 400),
    ("traversal in the path", "GET", "/api/v1/../../etc/passwd", None, 404),
    ("not JSON at all", "POST", "/api/v1/tokens", b'\x00\xff garbage', 400),
    ("a user without a password", "POST", "/api/v1/users", b'{"name": "x1", "role": "admin"}', 400),
    ("a role that is not one", "POST", "/api/v1/users", b'{"name": "x1", "role": "root", "password": "long enough password"}', 400),
    ("a malformed login", "POST", "/api/v1/login", b'{"user": 1}', 400),
    ("a query on a change", "POST", "/api/v1/vpgs/vpg1/test-failover?/failover", b'{"checkpoint": "latest"}', 400),
]
for what, method, path, raw, expected in cases:
    token = admin if "users" in path or "tokens" in path else oper
    try:
        status, answer, _ = api.call(method, path, raw=raw, token=token)
    except (ssl.SSLError, ConnectionError) as e:
        # The 413 goes out as soon as Content-Length is read, and the
        # connection closes before the client has sent the rest.
        status, answer = (413 if expected == 413 else -1), {"error": "connection closed while sending: %s" % e}
    check(status == expected, "%s: %d %s (expected %d)" % (what, status, answer, expected))
    print("bad input: %-26s -> %d %s" % (what, status, (answer or {}).get("error", "")[:70]))
form = b'{"user": "victim", "password": "x"}'
got = raw_exchange(E["API_R"], 4006, b"POST /api/v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(form) + form, wait=5)
check(b" 415 " in got.split(b"\r\n")[0], "a login posted as text/plain (a cross-site form): %r" % got[:60])
print("bad input: a login as text/plain     ->", got.split(b"\r\n")[0].decode())
got = raw_exchange(E["API_R"], 4006, b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n\r\n", tls=False)
check(not got.startswith(b"HTTP/"), "plain HTTP was answered: %r" % got[:80])
print("bad input: plain HTTP               -> no HTTP answer (%d bytes: a TLS alert or nothing)" % len(got))
got = raw_exchange(E["API_R"], 4006, b"", max_version=ssl.TLSVersion.TLSv1_2, min_version=ssl.TLSVersion.TLSv1_2)
check(isinstance(got, str) and got.startswith("handshake failed"), "TLS 1.2 was accepted: %r" % (got,))
print("bad input: TLS 1.2                  ->", got[:70])
for t in threads:
    t.join()
took, got = slow["headers"]
check(took < 20 and b" 200 " not in got, "a client slow with its headers was kept %.1f s: %r" % (took, got[:60]))
print("bad input: headers never finished   -> closed after %.1f s %r" % (took, got[:30]))
took, got = slow["body"]
check(took < 20 and b" 408 " in got, "a client slow with its body: %.1f s %r" % (took, got[:60]))
print("bad input: body never finished      -> %r after %.1f s" % (got[:24], took))
check(api.call("GET", "/api/v1/status", token=oper)[0] == 200, "the agent stopped serving")
admin = api.session("adm1", "admin password 1", ADM)  # the slow clients took longer than the idle limit
greedy = "$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA"
status, answer, _ = api.call("POST", "/api/v1/users", {"name": "greedy", "role": "viewer", "password_hash": greedy}, token=admin)
check(status == 400 and "at most" in answer["error"], "a hash asking 4 GiB per login: %d %s" % (status, answer))
print("bad input: a hash asking 4 GiB      -> %d %s" % (status, answer["error"][:60]))
# A password typed into the name field is not kept anywhere.
status, _, _ = api.login("Typed-Password-In-Name-42", "whatever password")
check(status == 401, "a login with an unknown name: %d" % status)
status, users, _ = api.call("GET", "/api/v1/users", token=admin)
check(status == 200 and sorted(u["name"] for u in users) == ["adm1", "dra1", "oper1", "victim", "view1"],
      "the users changed: %s" % users)
stop_if_failed()

# ---- a user deleted and made again is another user: the old session ends
session = api.session("view1", "viewer password 1")
for argv, stdin in ((["user", "delete", "view1"], None), (["user", "add", "view1", "--role", "viewer", "--password-stdin"], "viewer password 1\n")):
    out = subprocess.run([E["TIDEMARK_TEST"]] + argv[:2] + ["--config", E["RCONF"]] + argv[2:] + ["--assume-console"],
                         input=stdin, capture_output=True, text=True)
    check(out.returncode == 0, "%s: %s %s" % (argv, out.stdout, out.stderr))
status, answer, _ = api.call("GET", "/api/v1/whoami", token=session)
check(status == 401, "a session outlived its user's deletion and re-creation: %d %s" % (status, answer))
print("the session of a user deleted and made again: %d %s" % (status, answer["error"]))

# ---- a client that goes away does not cut an operation short
operator = api.session("oper1", "operator password 1")
body = b'{"checkpoint": "latest"}'
request = (b"POST /api/v1/vpgs/vpg1/test-failover HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + operator.encode() +
           b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
raw_exchange(E["API_R"], 4006, request, wait=0.05)
for _ in range(100):
    status, answer, _ = api.call("DELETE", "/api/v1/vpgs/vpg1/test-failover", token=operator)
    if status == 200:
        break
    time.sleep(0.1)
check(status == 200, "the test failover of a client that went away did not run to its end: %d %s" % (status, answer))
print("a test failover whose client hung up at once ran to its end and was stopped:", answer.get("message", "")[:60])
stop_if_failed()

# ---- the real operations
status, answer, _ = papi.call("POST", "/api/v1/vpgs/vpg1/checkpoints", {"tag": "api-cp", "wait_ms": 60000}, token=E["P_TOKEN"])
check(status == 200 and answer.get("durable"), "a checkpoint through the protected API: %d %s" % (status, answer))
status, _, _ = papi.call("POST", "/api/v1/vpgs/vpg1/move", {}, token=E["P_TOKEN"])
check(status == 403, "an operator token moved a VPG: %d" % status)
viewer = api.session("view1", "viewer password 1")
status, answer, _ = api.call("GET", "/api/v1/vpgs/vpg1/checkpoints", token=viewer)
tags = [c["tag"] for c in answer["checkpoints"]] if status == 200 else []
check("api-cp" in tags, "the checkpoint is not listed: %d %s" % (status, answer))
operator = api.session("oper1", "operator password 1")
status, answer, _ = api.call("POST", "/api/v1/vpgs/vpg1/exports", {"checkpoint": "api-cp"}, token=operator)
check(status == 200 and answer["exports"], "an export: %d %s" % (status, answer))
nbd = [u for u in answer["exports"] if u.startswith("nbd://")][0]
subprocess.run(["nbdcopy", nbd, E["WORK"] + "/exported.img"], check=True)
check(open(E["WORK"] + "/exported.img", "rb").read() == open(E["SRC"], "rb").read(), "the export differs from the source")
status, _, _ = api.call("DELETE", "/api/v1/exports/%d" % answer["export"], token=operator)
check(status == 200, "closing the export: %d" % status)
print("checkpoint api-cp through the protected API; listed to a viewer; exported, read back equal, closed")
status, answer, _ = api.call("POST", "/api/v1/vpgs/vpg1/test-failover", {"checkpoint": "api-cp"}, token=operator)
check(status == 200 and answer["exports"], "test failover start: %d %s" % (status, answer))
status, answer, _ = api.call("DELETE", "/api/v1/vpgs/vpg1/test-failover", token=operator)
check(status == 200, "test failover stop: %d %s" % (status, answer))
status, _, _ = api.call("POST", "/api/v1/vpgs/vpg1/failover", {"checkpoint": "api-cp"}, token=viewer)
check(status == 403, "a viewer failed over: %d" % status)
dra = api.session("dra1", "dr-admin password 1", DRA)
status, answer, _ = api.call("POST", "/api/v1/vpgs/vpg1/failover", {"checkpoint": "api-cp", "serve": False}, token=dra)
check(status == 200, "the dr-admin's failover: %d %s" % (status, answer))
print("test failover started and stopped by an operator; failover refused to a viewer, done by a dr-admin:",
      (answer or {}).get("message", "")[:80])
status, _, _ = api.call("POST", "/api/v1/logout", token=dra)
check(status == 200 and api.call("GET", "/api/v1/whoami", token=dra)[0] == 401, "logout did not end the session")
stop_if_failed()
PY

entries=$("$TIDEMARK" audit-log "${R[@]}" --json)
expect() { # JQ_FILTER WHAT
    jq -e "[.[] | select($1)] | length > 0" <<<"$entries" >/dev/null || fail "$2 is not in the trail"
}
expect '.op == "login" and .user == "view1" and .outcome == "ok" and (.source | test("^api 127.0.0.1:"))' "a viewer's login"
expect '.op == "login" and .user == "dra1" and .outcome == "refused: no TOTP code"' "a login without a TOTP code"
expect '.op == "login" and .user == "dra1" and (.outcome | test("replay"))' "a replayed TOTP code"
expect '.op == "login" and .user == "victim" and .outcome == "refused: wrong password" and (.source | test("127.0.0.3"))' "a wrong password"
expect '.op == "user lock" and .user == "victim" and (.outcome | test("locked after 10"))' "the account lock"
expect '.op == "login" and .user == "victim" and (.outcome | test("^refused: account locked"))' "the locked account's login"
expect '.op == "user unlock" and .params.name == "victim" and .outcome == "ok"' "the unlock"
expect '.op == "failover" and .user == "view1" and (.outcome | test("^refused: role viewer"))' "the viewer's refused failover"
expect '.op == "test-failover start" and .user == "oper1" and .outcome == "ok" and .params.checkpoint == "api-cp"' "the test failover"
expect '.op == "failover" and .user == "dra1" and .role == "dr-admin (api)" and .outcome == "ok"' "the failover"
expect '.op == "export" and .user == "oper1" and .outcome == "ok"' "the export"
expect '.op == "user add" and .params.name == "dra1" and .outcome == "ok"' "the console's user add"
grep -q 'password 1' "$WORK/b/data/audit/trail.jsonl" && fail "a password is in the audit trail"
grep -q "${OP_TOKEN#tmt_}" "$WORK/b/data/audit/trail.jsonl" && fail "a token is in the audit trail"
P_ENTRIES=$("$TIDEMARK" audit-log "${P[@]}" --json)
jq -e '.[] | select(.op == "checkpoint" and .user == "token:optok" and .outcome == "ok")' <<<"$P_ENTRIES" >/dev/null ||
    fail "the protected side's trail has no checkpoint by the token"
"$TIDEMARK" audit-log "${R[@]}" --verify >"$WORK/verify.out" || fail "the trail does not verify: $(cat "$WORK/verify.out")"
log "audit trail: $(jq length <<<"$entries") entries with each login, refusal, lock and operation; $(cat "$WORK/verify.out")"
grep -q 'Typed-Password-In-Name-42' "$WORK/b/data/audit/trail.jsonl" "$WORK/b/logs/"* 2>/dev/null &&
    fail "what was typed as a user name is in the trail or the log"
jq -e '([.[] | select(.op == "test-failover start" and .outcome == "started")] | length) as $started |
       ([.[] | select(.op == "test-failover start" and .of != null)] | length) as $ended | $started == $ended and $started >= 2' \
    <<<"$entries" >/dev/null ||
    fail "a test failover started through the API has no outcome in the trail"
