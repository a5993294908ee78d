#!/bin/busybox sh
# /init of the detection tests' guest (the appliance's kernel and busybox,
# nothing else): on its NBD disk (ext4, /dev/vda) it writes ordinary files,
# prints their checksums, waits, then encrypts them in place the way
# ransomware does (random bytes over each file's data, fsync per file;
# with tm_every=N only every Nth 4 KiB block) and powers off. With
# tm_work=archive|randcopy|dbwrites|mkfs|luks it runs that benign workload
# for tm_secs seconds instead. With tm_disks=W1,W2,... each disk (vda,
# vdb, ...; ext4 with the files already on it, or random for luks) runs
# its own benign workload, all at the same time; then each everyN disk
# has its files encrypted (the intermittent attack), one after another. Markers on the console let the host follow.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /etc/modules); do modprobe "$m" 2>/dev/null; done
mode=full work=attack secs=120 disks=
for arg in $(cat /proc/cmdline); do
    case $arg in
    tm_every=*) mode=${arg#tm_every=} ;;
    tm_work=*) work=${arg#tm_work=} ;;
    tm_secs=*) secs=${arg#tm_secs=} ;;
    tm_disks=*) disks=$(echo "${arg#tm_disks=}" | tr , ' ') ;;
    esac
done
# benign WORK [DIR DEVICE]: runs one of the workloads that must raise no
# alarm for $secs seconds, on the file system at DIR (default /mnt) of
# DEVICE (default /dev/vda).
benign() {
    local m=${2:-/mnt} dev=${3:-/dev/vda} end n
    end=$(($(date +%s) + secs))
    n=0
    while [ "$(date +%s)" -lt $end ]; do
        n=$((n + 1))
        case $1 in
        archive) # new compressed archives into free space
            tar -cf - $m/logs | gzip -c >$m/archive-$n.tar.gz
            sync
            [ $n -ge 4 ] && rm -f $m/archive-$((n - 3)).tar.gz ;;
        randcopy) # a large file of random data copied into a new file
            dd if=/dev/urandom of=$m/random.bin bs=1M count=8 2>/dev/null
            cp $m/random.bin $m/random-copy-$n.bin
            sync
            rm -f $m/random-copy-$((n - 1)).bin ;;
        dbwrites) # small overwrites of compressible pages in place
            for k in $(seq 1 50); do
                page=$(( (n * 131 + k * 17) % 700 ))
                seq $k $((k + 800)) | head -c 4096 | dd of=$m/data/table-1.csv bs=4096 seek=$((page % 8)) conv=notrunc,fsync 2>/dev/null
            done ;;
        mkfs) # a new file system over a scratch file's blocks, then trim
            dd if=/dev/zero of=$m/scratch.img bs=1M count=16 2>/dev/null
            mke2fs -q -F $m/scratch.img >/dev/null 2>&1 || mkfs.ext2 -q $m/scratch.img >/dev/null 2>&1
            rm -f $m/scratch.img
            sync
            fstrim $m 2>/dev/null ;;
        luks) # random data over random data: a volume encrypted at rest
            dd if=/dev/urandom of=$dev bs=64k seek=$((256 + n % 256)) count=16 conv=fsync 2>/dev/null ;;
        esac
    done
}
# encrypt DIR MODE: encrypts the files under DIR in place (MODE full, or
# N for every Nth 4 KiB block of each file), fsync per write.
encrypt() {
    local f size blocks b
    for f in $(find $1/logs $1/data -type f | sort); do
        size=$(stat -c %s "$f")
        blocks=$(((size + 4095) / 4096))
        if [ "$2" = full ]; then
            dd if=/dev/urandom of="$f" bs=4096 count=$blocks conv=notrunc,fsync 2>/dev/null
        else
            # Intermittent: every Nth 4 KiB block of each file.
            b=0
            while [ $b -lt $blocks ]; do
                dd if=/dev/urandom of="$f" bs=4096 seek=$b count=1 conv=notrunc,fsync 2>/dev/null
                b=$((b + $2))
            done
        fi
    done
}
if [ -n "$disks" ]; then
    # One workload per disk, all at once, after a quiet time to learn in.
    set -- a b c d e f g h
    i=0
    for w in $disks; do
        dev=/dev/vd$1
        shift
        for _ in $(seq 1 100); do [ -b $dev ] && break; sleep 0.1; done
        mkdir -p /mnt/$i
        if [ "$w" != luks ]; then
            mount -t ext4 $dev /mnt/$i || { echo "GUEST-FAIL mount $dev"; poweroff -f; }
        fi
        i=$((i + 1))
    done
    echo "DISKS-READY"
    sleep 20
    set -- a b c d e f g h
    i=0
    for w in $disks; do
        dev=/dev/vd$1
        shift
        case $w in
        every*) ;;
        *) (echo "BENIGN-START $w"; benign $w /mnt/$i $dev; echo "BENIGN-DONE $w") & ;;
        esac
        i=$((i + 1))
    done
    wait
    sync
    echo "BENIGN-ALL-DONE"
    # Quiet: the last windows close before the attack.
    sleep 20
    # Then each attack alone (sharing the vCPU with the others slowed it
    # to the detector's floor).
    i=0
    for w in $disks; do
        case $w in
        every*) echo "ATTACK-START $w"; encrypt /mnt/$i ${w#every}; sync; echo "ATTACK-DONE $w" ;;
        esac
        i=$((i + 1))
    done
    for d in /mnt/*; do umount $d 2>/dev/null; done
    echo "ALL-DONE"
    poweroff -f
fi
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
if [ "$work" != attack ]; then
    echo "BENIGN-START $work"
    benign "$work"
    echo "BENIGN-DONE $work"
    umount /mnt 2>/dev/null
    poweroff -f
fi
echo "ATTACK-START"
encrypt /mnt "$mode"
sync
echo "ATTACK-DONE"
umount /mnt
poweroff -f
