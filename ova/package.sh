#!/usr/bin/env bash
# `make ova`: the appliance as an OVA for ESXi 6.7 or later (vmx-14 and the
# guest OS id other4xLinux64Guest both need 6.7), from build/image/.
#   tidemark.ovf   OVF 1.0 descriptor: 2 vCPU, 2 GiB, vmx-14 (ESXi 6.7+),
#                  a PVSCSI controller with the system and data disks, three
#                  vmxnet3 NICs (management, replication, storage), a CD-ROM
#                  for the OVF environment (ISO transport), a ProductSection
#                  with every property the appliance reads (the list comes
#                  from `tidemark ovf-properties`, so the two cannot drift)
#   system.vmdk, data.vmdk   streamOptimized (qemu-img)
#   tidemark.mf    SHA256(file)= lines
# packed as a ustar archive with the .ovf first, reproducibly.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
IMAGE=${1:-$ROOT/build/image}
OUT=${OVA_OUT:-$ROOT/build/ova}
TIDEMARK=${TIDEMARK:-$ROOT/build/tidemark}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 1767225600)}
[ -f "$IMAGE/disk.img" ] || { echo "ova: no image in $IMAGE (make image)" >&2; exit 2; }
STAGE=$(mktemp -d /tmp/tidemark-ova.XXXXXX)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$OUT"

echo "ova: converting the disks to streamOptimized VMDK"
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$IMAGE/disk.img" "$STAGE/system.vmdk"
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$IMAGE/data.img" "$STAGE/data.vmdk"
version=$("$TIDEMARK" --version | awk '{print $2}')
size() { stat -c %s "$1"; }
capacity() { qemu-img info --output=json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])'; }
xml_escape() { sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' -e 's/"/\&quot;/g'; }

# The wizard checks what it can (ovf:qualifiers) and hides secrets
# (ovf:password, OVF 1.1); first boot checks everything again.
# (Fields are tab separated, and empty ones are common: a tab in IFS is
# whitespace and runs of it collapse, so each tab becomes \x1f first.)
properties=$("$TIDEMARK" ovf-properties | tr '\t' '\037' | while IFS=$'\037' read -r key what qualifiers secret; do
    label=${key#tidemark.}
    extra=""
    [ -n "$qualifiers" ] && extra+=" ovf:qualifiers=\"$(printf '%s' "$qualifiers" | xml_escape)\""
    [ "$secret" = true ] && extra+=' ovf:password="true"'
    printf '      <Property ovf:key="%s" ovf:type="string" ovf:userConfigurable="true" ovf:value=""%s>\n' "$key" "$extra"
    printf '        <Label>%s</Label>\n        <Description>%s</Description>\n      </Property>\n' \
        "$label" "$(printf '%s' "$what" | xml_escape)"
done)

cat >"$STAGE/tidemark.ovf" <<OVF
<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
          xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
          xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
          xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
          xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>
    <File ovf:id="system" ovf:href="system.vmdk" ovf:size="$(size "$STAGE/system.vmdk")"/>
    <File ovf:id="data" ovf:href="data.vmdk" ovf:size="$(size "$STAGE/data.vmdk")"/>
  </References>
  <DiskSection>
    <Info>Virtual disks</Info>
    <Disk ovf:diskId="system" ovf:fileRef="system" ovf:capacity="$(capacity "$IMAGE/disk.img")" ovf:capacityAllocationUnits="byte" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
    <Disk ovf:diskId="data" ovf:fileRef="data" ovf:capacity="$(capacity "$IMAGE/data.img")" ovf:capacityAllocationUnits="byte" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>Networks</Info>
    <Network ovf:name="Management"><Description>Management: 4005, 4006, 4009 (eth0)</Description></Network>
    <Network ovf:name="Replication"><Description>Peer appliance: 4007, 4008 (eth1)</Description></Network>
    <Network ovf:name="Storage"><Description>Hypervisor storage network: NBD 10809, iSCSI 3260 (eth2)</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="tidemark">
    <Info>Tidemark replication appliance</Info>
    <Name>tidemark</Name>
    <OperatingSystemSection ovf:id="101" vmw:osType="other4xLinux64Guest">
      <Info>Linux 64-bit; other4xLinux64Guest and vmx-14 need ESXi 6.7 or later</Info>
    </OperatingSystemSection>
    <ProductSection ovf:required="true">
      <Info>Appliance settings, read at first boot from the OVF environment</Info>
      <Product>Tidemark</Product>
      <Vendor>Tidemark</Vendor>
      <Version>$version</Version>
$properties
    </ProductSection>
    <VirtualHardwareSection ovf:transport="iso">
      <Info>2 vCPU, 2 GiB, PVSCSI, vmxnet3</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>tidemark</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-14</vssd:VirtualSystemType>
      </System>
      <Item><rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits><rasd:ElementName>2 virtual CPUs</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ElementName>2048 MB of memory</rasd:ElementName><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>2048</rasd:VirtualQuantity></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:ElementName>SCSI controller 0</rasd:ElementName><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:ElementName>IDE controller 0</rasd:ElementName><rasd:InstanceID>4</rasd:InstanceID><rasd:ResourceType>5</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:ElementName>System disk</rasd:ElementName><rasd:HostResource>ovf:/disk/system</rasd:HostResource><rasd:InstanceID>5</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>1</rasd:AddressOnParent><rasd:ElementName>Data disk</rasd:ElementName><rasd:HostResource>ovf:/disk/data</rasd:HostResource><rasd:InstanceID>6</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item ovf:required="false"><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:AutomaticAllocation>false</rasd:AutomaticAllocation><rasd:ElementName>CD-ROM (OVF environment)</rasd:ElementName><rasd:InstanceID>7</rasd:InstanceID><rasd:Parent>4</rasd:Parent><rasd:ResourceType>15</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>7</rasd:AddressOnParent><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation><rasd:Connection>Management</rasd:Connection><rasd:ElementName>eth0 management</rasd:ElementName><rasd:InstanceID>8</rasd:InstanceID><rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>8</rasd:AddressOnParent><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation><rasd:Connection>Replication</rasd:Connection><rasd:ElementName>eth1 replication</rasd:ElementName><rasd:InstanceID>9</rasd:InstanceID><rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>9</rasd:AddressOnParent><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation><rasd:Connection>Storage</rasd:Connection><rasd:ElementName>eth2 storage</rasd:ElementName><rasd:InstanceID>10</rasd:InstanceID><rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
OVF

(cd "$STAGE" && for f in tidemark.ovf system.vmdk data.vmdk; do echo "SHA256($f)= $(sha256sum "$f" | cut -d' ' -f1)"; done) >"$STAGE/tidemark.mf"
find "$STAGE" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
rm -f "$OUT/tidemark.ova"
# The descriptor first, as the OVF specification requires.
tar -C "$STAGE" --format=ustar --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
    -cf "$OUT/tidemark.ova" tidemark.ovf tidemark.mf system.vmdk data.vmdk
echo "ova: $OUT/tidemark.ova ($(du -h --apparent-size "$OUT/tidemark.ova" | cut -f1))"
