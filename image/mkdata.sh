#!/usr/bin/env bash
# mkdata.sh OUT: the appliance's empty data disk (256 MiB ext4,
# LABEL=tidemark-data, where the journal or log and the keys live), for
# both builders. Reproducible: a fixed UUID and hash seed, times from
# SOURCE_DATE_EPOCH. mke2fs is taken from $HOST_DIR (Buildroot) before PATH.
set -euo pipefail
[ $# = 1 ] || { echo "usage: mkdata.sh OUT" >&2; exit 2; }
[ -n "${HOST_DIR:-}" ] && export PATH=$HOST_DIR/bin:$HOST_DIR/sbin:$PATH
export PATH=$PATH:/usr/sbin:/sbin
: "${SOURCE_DATE_EPOCH:=1767225600}"
ID=5f0e3c1a-7d1e-4c5b-9a0e-7469646d6172
rm -f "$1"
truncate -s 256M "$1"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mke2fs -q -F -t ext4 -L tidemark-data -U "$ID" \
    -E "hash_seed=$ID,lazy_itable_init=0,lazy_journal_init=0" "$1" >/dev/null
