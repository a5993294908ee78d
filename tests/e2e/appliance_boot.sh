#!/usr/bin/env bash
# The appliance image (`make image`) under QEMU with -accel tcg, the way
# the hardware gives it: the system disk booted by the BIOS (SeaBIOS,
# syslinux, kernel, initramfs, read-only squashfs root), an empty data disk and
# a CD-ROM carrying its configuration; its NIC is a tap in a network
# namespace of ours, where the test stands as the peer appliance.
# - Configured by an OVF environment (ovf-env.xml) on the CD-ROM, as ESXi
#   attaches it, it boots to "tidemark recovery ready" (boot-to-ready is measured),
#   made its key on the data disk (kept across a power cut right after
#   that first boot), and hardened itself first: firewall,
#   all 39 kernel settings read back in a real guest kernel (the kernel-wide
#   ones the namespace tests cannot touch), securetty. `nmap -p-` sees
#   exactly 4007 and 4008 open from the peer address and exactly 4005 and
#   4006 from the management station; the diagnostics bundle fetched over
#   HTTPS from there holds the guest's own `tidemark audit`, every item
#   PASS. The management API's first administrator comes from an argon2id
#   hash in the OVF properties: its TOTP enrolment is shown on the console
#   once (not again after a reboot), and it logs in from the management
#   station with password + TOTP, the certificate pinned by the
#   fingerprint the console printed.
# - On the serial console root logs in with the administrator's password
#   hash from the OVF properties (and a wrong password is refused).
# - Fail closed: with a rule file naming a port outside the port table the
#   same image reports the failed hardening, never starts the agent, and
#   nothing on its network answers.
# - An agent that stops right after it starts (here: its VM disk is not
#   there) says why on the console and is started again after 5 s, 10 s,
#   ... (at most a minute), so the console stays usable.
source "$(dirname "$0")/../lib/common.sh"
source "$ROOT/tests/lib/appliance.sh"

appliance_image_check
NS=tmboot$$
guest_netns "$NS" tap0

# boot NAME: a guest on tap0 with $WORK/NAME/cfg as its CD.
boot() {
    guest_start "$1" "$NS" -netdev tap,id=n0,ifname=tap0,script=no,downscript=no -device virtio-net-pci,netdev=n0
}
port_answers() { ip netns exec "$NS" timeout 3 bash -c "exec 3<>/dev/tcp/10.0.2.15/$1" 2>/dev/null; }

# The OVF environment ESXi would attach (ISO transport).
ovf_env "$WORK/good/cfg/ovf-env.xml" tidemark.role=recovery tidemark.hostname=tm-boot \
    tidemark.mgmt.address=10.0.2.15/24 tidemark.mgmt.networks=10.0.2.9/32 \
    tidemark.diag.token=boot-test-token-0123456789abcdef tidemark.peer.address=10.0.2.2 \
    tidemark.dns=10.0.2.53 tidemark.admin.password_hash="$(openssl passwd -6 -salt bootsalt 'correct horse')" \
    tidemark.api.admin_password_hash="$(echo 'api admin password' | "$TIDEMARK" user hash)" \
    tidemark.peer.fingerprint=sha256:0000000000000000000000000000000000000000000000000000000000000000
log "boot with an OVF environment on the CD-ROM"
boot good
guest_wait good "tidemark recovery ready" 120 || fail "no 'ready' within 120 s: $(tail -20 "$WORK/good/serial.log")"
ready_s=$(guest_seconds_since_start)
log "boot to ready: ${ready_s} s under TCG"
echo "$ready_s" >"$WORK/boot-seconds"
s=$WORK/good/serial.log
grep -q "configuration read from the OVF environment on /dev/sr0" "$s" || fail "the OVF environment was not read from the CD-ROM"
grep -q "tm-boot login:" "$s" || fail "the host name from the OVF properties is not set"
grep -q "data disk /dev/vdb mounted" "$s" || fail "the data disk was not mounted"
grep -q "fingerprint: sha256:" "$s" || fail "no key was made"
grep -q "39 kernel settings applied and read back" "$s" || fail "the kernel settings were not all applied in the guest"
grep -q "allows root on tty1, ttyS0 only" "$s" || fail "securetty was not written"
grep -q "eth0 up with 10.0.2.15/24" "$s" || fail "the network did not come up after hardening"
grep -q "management API administrator admin made from the OVF properties" "$s" || fail "no API administrator was made"
API_URI=$(grep -o 'otpauth://totp/[^[:space:]]*' "$s" | head -1)
[ -n "$API_URI" ] || fail "the API administrator's TOTP enrolment was not shown on the console"
# The identity is what the peer pins: a power cut seconds after the first
# boot made it must not lose it (keygen writes durably).
first_fp=$(grep -o "fingerprint: sha256:[0-9a-f]*" "$s" | head -1)
log "power cut seconds after the first boot made the key; boot again on the same data disk"
guest_stop
mv "$s" "$WORK/good/serial-first-boot.log"
boot good
guest_wait good "tidemark recovery ready" 120 ||
    fail "no 'ready' after a power cut right after the first boot: $(tail -20 "$s")"
again_fp=$(grep -o "fingerprint: sha256:[0-9a-f]*" "$s" | head -1)
[ "$first_fp" = "$again_fp" ] || fail "the appliance's identity changed across the power cut: '$first_fp', then '$again_fp'"
log "same identity after the power cut (${first_fp#fingerprint: })"
grep -q "otpauth://" "$s" && fail "the TOTP enrolment was shown again at the second boot"
# scan_from SOURCE: every TCP port of the guest, as seen from SOURCE: a
# fast scan of all ports, and a patient one of the port table's (a TCG
# guest on a loaded machine can miss the fast scan's one retry).
scan_from() {
    {
        ip netns exec "$NS" nmap -n -Pn -sS -T5 --min-rate 20000 --max-retries 1 -p- -S "$1" -e tap0 10.0.2.15 -oG - 2>/dev/null
        ip netns exec "$NS" nmap -n -Pn -sS -T3 --max-retries 4 -p22,3260,4005-4009,10809 -S "$1" -e tap0 10.0.2.15 -oG - 2>/dev/null
    } |
        python3 -c '
import re, sys
ports = sorted(set(int(p) for p, s in re.findall(r"(\d+)/(\w+)/tcp", sys.stdin.read()) if s == "open"))
print(",".join(map(str, ports)))'
}
from_peer=$(scan_from 10.0.2.2)
from_mgmt=$(scan_from 10.0.2.9)
log "nmap -p- of the guest: open from the peer: [$from_peer], from the management station: [$from_mgmt]"
[ "$from_peer" = "4007,4008" ] || fail "from the peer address, open ports are [$from_peer], not [4007,4008]"
[ "$from_mgmt" = "4005,4006" ] || fail "from the management station, open ports are [$from_mgmt], not [4005,4006]"

log "the management API: the OVF's administrator logs in from the management station with password + TOTP"
ip netns exec "$NS" env PYTHONPATH="$ROOT/tests/lib" python3 - "${first_fp#fingerprint: }" "$API_URI" <<'PY' ||
import sys
from api_client import Api, totp_secret
api = Api("10.0.2.15", 4006, sys.argv[1], source="10.0.2.9")
token = api.session("admin", "api admin password", totp_secret(sys.argv[2]))
status, me, _ = api.call("GET", "/api/v1/whoami", token=token)
assert status == 200 and me == {"user": "admin", "role": "admin"}, (status, me)
status, answer, _ = api.call("GET", "/api/v1/status", token=token)
assert status == 200 and answer["role"] == "recovery", (status, answer)
print("logged in as", me, "; status role", answer["role"])
PY
    fail "the OVF's API administrator could not log in"

log "tidemark audit inside the guest, read from its diagnostics bundle"
guest_bundle "$NS" 10.0.2.9 10.0.2.15 boot-test-token-0123456789abcdef "$WORK/bundle"
bundle_audit_passes "$WORK/bundle" "the guest" >"$WORK/audit-pass"
log "audit in the guest: $(cat "$WORK/audit-pass") items PASS, none FAIL"
log "the console: root logs in on ttyS0 with the administrator's password from the OVF properties, and only with it"
code=0
guest_console good root 'wrong horse' true >/dev/null || code=$?
[ "$code" = 3 ] || fail "a wrong password on the console was not refused (status $code)"
who=$(guest_console good root 'correct horse' 'id -u; hostname; cat /proc/sys/net/ipv4/tcp_syncookies') ||
    fail "root could not log in on the console with the OVF password"
[ "$(tr -d '\r' <<<"$who" | tr '\n' ' ')" = "0 tm-boot 1 " ] || fail "the console session said: $who"
rss=$(bundle_agent_rss_kib "$WORK/bundle")
[ -n "$rss" ] || fail "the bundle does not give the agent's VmRSS"
log "idle recovery agent in the guest: VmRSS $((rss / 1024)) MiB ($rss KiB)"
guest_stop

log "fail closed: a rule file with a port outside the port table"
mkdir -p "$WORK/bad/cfg"
printf "allow tcp 8080 from peers\n" >"$WORK/bad/cfg/bad.rules"
cat >"$WORK/bad/cfg/tidemark.toml" <<TOML
role = "recovery"
[node]
name = "appliance-bad"
data_dir = "/var/lib/tidemark"
cert = "/var/lib/tidemark/keys/cert.pem"
key = "/var/lib/tidemark/keys/key.pem"
[listen]
address = "0.0.0.0"
peer_fingerprints = ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]
[appliance]
management_networks = ["10.0.9.0/24"]
peer_networks = ["10.0.2.2"]
securetty = "/run/tidemark/securetty"
firewall_rules = "/run/tidemark/bad.rules"
TOML
printf 'eth0 10.0.2.15/24\n' >"$WORK/bad/cfg/network"
boot bad
guest_wait bad "HARDENING FAILED\|no configuration found\|ready" 120 || fail "the bad image said nothing: $(tail -20 "$WORK/bad/serial.log")"
grep -q "HARDENING FAILED" "$WORK/bad/serial.log" || fail "a broken rule set did not fail the hardening: $(tail -20 "$WORK/bad/serial.log")"
sleep 3
grep -q "tidemark recovery ready" "$WORK/bad/serial.log" && fail "the agent started although hardening failed"
ip netns exec "$NS" ping -c 2 -W 1 10.0.2.15 >/dev/null 2>&1 && fail "the guest answers pings although hardening failed"
port_answers 4007 && fail "the guest answers on 4007 although hardening failed"
guest_stop

log "an agent that cannot start (its VM disk is missing) is started again after a growing pause"
ovf_env "$WORK/nodisk/cfg/ovf-env.xml" tidemark.role=protected tidemark.hostname=tm-nodisk \
    tidemark.mgmt.address=10.0.2.15/24 tidemark.mgmt.networks=10.0.2.9/32 tidemark.storage.address=10.0.2.16/24 \
    tidemark.peer.address=10.0.2.2 tidemark.vpgs="vm1:disk0=/dev/vdz" \
    tidemark.peer.fingerprint=sha256:0000000000000000000000000000000000000000000000000000000000000000
boot nodisk
guest_wait nodisk "(2 in a row); next start in 10 s" 120 ||
    fail "no growing pause between failed starts: $(tail -20 "$WORK/nodisk/serial.log")"
grep -q 'opening volume "disk0" at /dev/vdz' "$WORK/nodisk/serial.log" || fail "the agent's error is not on the console"
grep -q "(1 in a row); next start in 5 s" "$WORK/nodisk/serial.log" || fail "the first pause is not 5 s"
guest_stop
log "PASS"
