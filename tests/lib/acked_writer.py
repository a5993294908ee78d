"""Writes numbered 4 KiB blocks to fresh slots of an export, flushing every
few writes, and records in ACKED_FILE (fsynced) every slot whose write was
acknowledged by a FLUSH that returned. Runs until the server goes away or
the time is up. Used by the crash tests: whatever ACKED_FILE lists must be
in every later restore.

usage: acked_writer.py PORT EXPORT COUNTER_FILE ACKED_FILE SECONDS TAG
"""
import os
import struct
import sys
import time

from nbdclient import Client

port, export, counter_file, acked_file, seconds, tag = sys.argv[1:7]
FLUSH_EVERY = 8


def block(slot, tag):
    return struct.pack("<QQ", slot + 1, int(tag)) * 256


def main():
    slot = int(open(counter_file).read()) if os.path.exists(counter_file) else 0
    deadline = time.time() + float(seconds)
    c = Client("127.0.0.1", int(port), export)
    slots = c.size // 4096  # every write gets a fresh 4 KiB slot
    pending = []
    with open(acked_file, "a") as acked:
        try:
            while time.time() < deadline and slot < slots:
                c.write(slot * 4096, block(slot, tag))
                pending.append(slot)
                slot += 1
                with open(counter_file, "w") as f:
                    f.write(str(slot))
                if len(pending) == FLUSH_EVERY:
                    c.flush()
                    acked.write("".join("%d %s\n" % (s, tag) for s in pending))
                    acked.flush()
                    os.fsync(acked.fileno())
                    pending = []
        except (OSError, ConnectionError, AssertionError) as e:
            print("writer stopped: %s" % e)
            return
    if slot >= slots:
        print("writer ran out of slots")
    c.close()


main()
