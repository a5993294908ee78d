"""Checks two volume images written by an ordered writer: write k (k from
0) went to slot k // 2 of image A when k is even, of image B when odd, as 4
KiB of the little-endian u64 k+1 (zeros: not written). A crash-consistent
pair holds exactly writes 0..m for some m: prints m (-1 for none), or
explains the first violation and exits 1.

usage: order_prefix.py IMAGE_A IMAGE_B WRITES
"""
import struct
import sys


def main():
    va, vb, n = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read(), int(sys.argv[3])
    present = set()
    for k in range(n):
        vol = va if k % 2 == 0 else vb
        slot = vol[(k // 2) * 4096:(k // 2) * 4096 + 4096]
        if slot == bytes(4096):
            continue
        if slot != struct.pack("<Q", k + 1) * 512:
            print("torn or foreign data in the slot of write %d" % k)
            sys.exit(1)
        present.add(k)
    m = max(present) if present else -1
    missing = [k for k in range(m + 1) if k not in present]
    if missing:
        side = lambda k: "A" if k % 2 == 0 else "B"
        print("write %d (%s) is there but write %d (%s) before it is not" % (m, side(m), missing[0], side(missing[0])))
        sys.exit(1)
    print(m)


main()
