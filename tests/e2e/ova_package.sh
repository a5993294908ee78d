#!/usr/bin/env bash
# `make ova`: the OVA is a ustar with the descriptor first; the manifest's
# SHA-256 lines verify; the OVF is well-formed XML whose References name
# every other file with its real size, on the hardware ESXi 6.7+ takes
# (vmx-14, other4xLinux64Guest, 2 vCPU, 2 GiB, PVSCSI, three vmxnet3 NICs,
# an ISO-transport CD-ROM); its ProductSection declares exactly the
# properties the appliance reads, with the wizard's checks (a ValueMap for
# the role, MinLen(24) for the token) and the secrets hidden; the disks are
# streamOptimized VMDKs; `tidemark config-iso` refuses a wrong property and
# writes the CD of a right set; and the system VMDK itself boots in QEMU to
# "ready" with that CD attached and a vmxnet3 NIC (what ESXi gives), on an
# isolated user-mode network.
source "$(dirname "$0")/../lib/common.sh"
source "$ROOT/tests/lib/appliance.sh"

OVA_OUT=$WORK/ova "$ROOT/ova/package.sh" >"$WORK/package.log" 2>&1 || fail "packaging failed: $(cat "$WORK/package.log")"
OVA=$WORK/ova/tidemark.ova
size=$(stat -c %s "$OVA")
log "OVA: $((size >> 20)) MiB ($size bytes)"
[ "$size" -le $((32 << 20)) ] || fail "the OVA is over 32 MiB"
[ "$(tar -tf "$OVA" | head -1)" = tidemark.ovf ] || fail "the descriptor is not the first file in the OVA"
mkdir -p "$WORK/x"
tar -C "$WORK/x" -xf "$OVA"
cd "$WORK/x"
while read -r line; do
    f=$(sed -n 's/^SHA256(\(.*\))= .*/\1/p' <<<"$line")
    want=${line##* }
    [ "$(sha256sum "$f" | cut -d' ' -f1)" = "$want" ] || fail "manifest: $f does not match"
done <tidemark.mf
[ "$(wc -l <tidemark.mf)" = 3 ] || fail "the manifest does not cover every file"
"$TIDEMARK" ovf-properties >"$WORK/props.expected"
python3 - "$WORK/props.expected" <<'PY' || fail "the OVF descriptor is wrong"
import os, sys, xml.etree.ElementTree as ET
ns = {"o": "http://schemas.dmtf.org/ovf/envelope/1",
      "r": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData",
      "v": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"}
O = "{http://schemas.dmtf.org/ovf/envelope/1}"
root = ET.parse("tidemark.ovf").getroot()
for f in root.findall("o:References/o:File", ns):
    href, size = f.get(O + "href"), int(f.get(O + "size"))
    assert os.path.getsize(href) == size, f"{href}: size {os.path.getsize(href)} != {size}"
hw = root.find("o:VirtualSystem/o:VirtualHardwareSection", ns)
assert hw.get(O + "transport") == "iso", "no ISO transport for the OVF environment"
assert hw.find("o:System/v:VirtualSystemType", ns).text == "vmx-14"
items = hw.findall("o:Item", ns)
kind = lambda t: [i for i in items if i.find("r:ResourceType", ns).text == t]
assert kind("3")[0].find("r:VirtualQuantity", ns).text == "2"
assert kind("4")[0].find("r:VirtualQuantity", ns).text == "2048"
assert kind("6")[0].find("r:ResourceSubType", ns).text == "VirtualSCSI"
nics = [i.find("r:ResourceSubType", ns).text for i in kind("10")]
assert nics == ["VmxNet3"] * 3, nics
assert len(kind("17")) == 2 and len(kind("15")) == 1
props = sorted(p.get(O + "key") for p in root.findall("o:VirtualSystem/o:ProductSection/o:Property", ns))
appliance = {f[0]: f for f in (line.split("\t") for line in open(sys.argv[1]).read().splitlines())}
expected = sorted(appliance)
assert props == expected, f"ProductSection {props} != appliance {expected}"
by_key = {p.get(O + "key"): p for p in root.findall("o:VirtualSystem/o:ProductSection/o:Property", ns)}
# Each property carries exactly the appliance's qualifiers and secrecy.
for key, (_, _, qualifiers, secret) in appliance.items():
    assert (by_key[key].get(O + "qualifiers") or "") == qualifiers, f"{key}: {by_key[key].get(O + 'qualifiers')!r}"
    assert (by_key[key].get(O + "password") == "true") == (secret == "true"), f"{key}: password flag"
assert by_key["tidemark.role"].get(O + "qualifiers") == 'ValueMap{"protected","recovery"}', "role has no ValueMap"
assert by_key["tidemark.diag.token"].get(O + "qualifiers") == "MinLen(24)", "the token has no MinLen(24)"
for key in ("tidemark.diag.token", "tidemark.iscsi.chap_secret", "tidemark.iscsi.mutual_chap_secret"):
    assert by_key[key].get(O + "password") == "true", f"{key} is shown in the wizard"
assert not [k for k, p in by_key.items() if "secret" not in k and "token" not in k and p.get(O + "password")], "a non-secret is hidden"
os_type = root.find("o:VirtualSystem/o:OperatingSystemSection", ns).get("{http://www.vmware.com/schema/ovf}osType")
assert os_type == "other4xLinux64Guest", os_type
print(f"OVF: {len(props)} properties, {len(items)} hardware items, sizes match")
PY
for d in system data; do
    qemu-img info "$d.vmdk" | grep -q "create type: streamOptimized" || fail "$d.vmdk is not streamOptimized"
done

log "config-iso: the properties of a standalone ESXi deployment, checked as first boot checks them"
cat >"$WORK/props.txt" <<'PROPS'
# a recovery appliance on a standalone host
tidemark.role = recovery
tidemark.hostname = tm-ova
tidemark.mgmt.address = 10.0.2.15/24
tidemark.peer.address = 10.0.2.2
tidemark.peer.fingerprint = sha256:0000000000000000000000000000000000000000000000000000000000000000
PROPS
sed 's/= recovery/= witness/' "$WORK/props.txt" >"$WORK/bad.txt"
if "$TIDEMARK" config-iso --properties "$WORK/bad.txt" --out "$WORK/bad.iso" >"$WORK/bad.out" 2>&1; then
    fail "config-iso took a wrong role"
fi
grep -q "tidemark.role" "$WORK/bad.out" || fail "config-iso did not name the wrong property: $(cat "$WORK/bad.out")"
[ ! -e "$WORK/bad.iso" ] || fail "config-iso wrote an ISO from wrong properties"
"$TIDEMARK" config-iso --properties "$WORK/props.txt" --out "$WORK/cfg.iso" >"$WORK/iso.out" 2>&1 ||
    fail "config-iso failed: $(cat "$WORK/iso.out")"
blkid "$WORK/cfg.iso" | grep -q 'LABEL="TIDEMARK-CFG"' || fail "the ISO is not labelled TIDEMARK-CFG: $(blkid "$WORK/cfg.iso")"
log "the system VMDK boots in QEMU with that ISO as its CD-ROM"
qemu-img convert -O raw data.vmdk "$WORK/data.img"
GUEST_SYSTEM="file=$WORK/x/system.vmdk,format=vmdk" GUEST_DATA=$WORK/data.img GUEST_CFG_ISO=$WORK/cfg.iso \
    guest_start ova-guest "" -netdev user,id=n0,restrict=on -device vmxnet3,netdev=n0
guest_wait ova-guest "tidemark recovery ready" 120 ||
    fail "the VMDK did not boot to ready: $(tail -20 "$WORK/ova-guest/serial.log")"
grep -q "tm-ova login:" "$WORK/ova-guest/serial.log" || fail "the OVF properties were not applied"
guest_stop
log "PASS"
