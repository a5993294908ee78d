# Helpers the bench scripts share. Source after tests/lib/common.sh; set
# RUNTIME (seconds per timed fio run).

fio_iops() { # uri rw bs iodepth [size] -> "iops bw_MiBps"
    fio --name=b --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" --iodepth="$4" --size="${5:-1G}" \
        --time_based --runtime="$RUNTIME" --randrepeat=0 --output-format=json --output="$WORK/fio.json" >/dev/null 2>&1
    # fio's nbd engine may print a line before the JSON document.
    local dir=write
    [[ $2 == *read* ]] && dir=read
    sed -n '/^{/,$p' "$WORK/fio.json" | jq -r ".jobs[0].$dir | \"\(.iops) \(.bw / 1024)\""
}
