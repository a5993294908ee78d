#!/bin/busybox sh
# /init of the detection tests' guest (the appliance's kernel and busybox,
# nothing else): on its NBD disk (ext4, /dev/vda) it writes ordinary files,
# prints their checksums, waits, then encrypts them in place the way
# ransomware does (random bytes over each file's data, fsync per file;
# with tm_every=N only every Nth 4 KiB block) and powers off. With
# tm_work=archive|randcopy|dbwrites|mkfs|luks it runs that benign workload
# for tm_secs seconds instead. Markers on the console let the host follow.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /etc/modules); do modprobe "$m" 2>/dev/null; done
mode=full work=attack secs=120
for arg in $(cat /proc/cmdline); do
    case $arg in
    tm_every=*) mode=${arg#tm_every=} ;;
    tm_work=*) work=${arg#tm_work=} ;;
    tm_secs=*) secs=${arg#tm_secs=} ;;
    esac
done
for _ in $(seq 1 100); do [ -b /dev/vda ] && break; sleep 0.1; done
mkdir -p /mnt
if [ "$work" = luks ]; then
    # The volume is random from the start (as if encrypted at rest): no
    # file system to write files into.
    echo "FILES-WRITTEN"
else
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
fi
# benign WORK: runs one of the workloads that must raise no alarm for
# $secs seconds.
benign() {
    end=$(($(date +%s) + secs))
    n=0
    while [ "$(date +%s)" -lt $end ]; do
        n=$((n + 1))
        case $1 in
        archive) # new compressed archives into free space
            tar -cf - /mnt/logs | gzip -c >/mnt/archive-$n.tar.gz
            sync
            [ $n -ge 4 ] && rm -f /mnt/archive-$((n - 3)).tar.gz ;;
        randcopy) # a large file of random data copied into a new file
            dd if=/dev/urandom of=/mnt/random.bin bs=1M count=8 2>/dev/null
            cp /mnt/random.bin /mnt/random-copy-$n.bin
            sync
            rm -f /mnt/random-copy-$((n - 1)).bin ;;
        dbwrites) # small overwrites of compressible pages in place
            for k in $(seq 1 50); do
                page=$(( (n * 131 + k * 17) % 700 ))
                seq $k $((k + 800)) | head -c 4096 | dd of=/mnt/data/table-1.csv bs=4096 seek=$((page % 8)) conv=notrunc,fsync 2>/dev/null
            done ;;
        mkfs) # a new file system over a scratch file's blocks, then trim
            dd if=/dev/zero of=/mnt/scratch.img bs=1M count=16 2>/dev/null
            mke2fs -q -F /mnt/scratch.img >/dev/null 2>&1 || mkfs.ext2 -q /mnt/scratch.img >/dev/null 2>&1
            rm -f /mnt/scratch.img
            sync
            fstrim /mnt 2>/dev/null ;;
        luks) # random data over random data: a volume encrypted at rest
            dd if=/dev/urandom of=/dev/vda bs=64k seek=$((256 + n % 256)) count=16 conv=fsync 2>/dev/null ;;
        esac
    done
}
if [ "$work" != attack ]; then
    echo "BENIGN-START $work"
    benign "$work"
    echo "BENIGN-DONE $work"
    umount /mnt 2>/dev/null
    poweroff -f
fi
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
