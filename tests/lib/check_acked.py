"""Checks that every slot listed in ACKED_FILE holds its write in IMAGE.
usage: check_acked.py IMAGE ACKED_FILE"""
import struct
import sys

image, acked_file = sys.argv[1:3]
data = open(image, "rb").read()
n = 0
for line in open(acked_file):
    slot, tag = map(int, line.split())
    want = struct.pack("<QQ", slot + 1, tag) * 256
    got = data[slot * 4096:slot * 4096 + 4096]
    if got != want:
        print("acknowledged write to slot %d (tag %d) is missing" % (slot, tag))
        sys.exit(1)
    n += 1
print(n)
