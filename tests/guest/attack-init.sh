#!/bin/busybox sh
# /init of the detection test's guest (the appliance's kernel and busybox,
# nothing else): on its NBD disk (ext4, /dev/vda) it writes ordinary files,
# prints their checksums, waits, then encrypts them in place the way
# ransomware does (random bytes over each file's data, fsync per file) and
# powers off. Markers on the console let the host follow.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /etc/modules); do modprobe "$m" 2>/dev/null; done
mode=full
for arg in $(cat /proc/cmdline); do
    case $arg in tm_every=*) mode=${arg#tm_every=} ;; esac
done
for _ in $(seq 1 100); do [ -b /dev/vda ] && break; sleep 0.1; done
mkdir -p /mnt
mount -t ext4 /dev/vda /mnt || { echo "GUEST-FAIL mount"; poweroff -f; }
mkdir -p /mnt/data /mnt/logs
i=1
while [ $i -le 240 ]; do
    # A log file and a table: the text a server holds.
    seq $i 3 $((i * 40 + 4000)) | sed "s/^/2026-12-03 09:41:07 INFO request $i served status=200 bytes=/" >/mnt/logs/app-$i.log
    seq 1 700 | awk -v k=$i '{printf "%d,customer-%d,%d.%02d,paid\n", $1, ($1*k)%977, $1%90, k%100}' >/mnt/data/table-$i.csv
    i=$((i + 1))
done
sync
echo "SUMS-BEGIN"
cd /mnt && find logs data -type f | sort | xargs md5sum
echo "SUMS-END"
cd /
echo "FILES-WRITTEN"
# Quiet time: automatic checkpoints of the clean files, quiet intervals.
sleep 20
echo "ATTACK-START"
for f in $(find /mnt/logs /mnt/data -type f | sort); do
    size=$(stat -c %s "$f")
    blocks=$(((size + 4095) / 4096))
    if [ "$mode" = full ]; then
        dd if=/dev/urandom of="$f" bs=4096 count=$blocks conv=notrunc,fsync 2>/dev/null
    else
        # Intermittent: every Nth 4 KiB block of each file.
        b=0
        while [ $b -lt $blocks ]; do
            dd if=/dev/urandom of="$f" bs=4096 seek=$b count=1 conv=notrunc,fsync 2>/dev/null
            b=$((b + mode))
        done
    fi
done
sync
echo "ATTACK-DONE"
umount /mnt
poweroff -f
