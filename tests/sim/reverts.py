#!/usr/bin/env python3
"""Reverts the fix of one earlier defect in a copy of the tree (the
simulator must then find it: tests/sim/reverts.sh). Usage:
reverts.py TREE NAME, reverts.py --list, or reverts.py --check TREE."""
import sys

# name: (file, the fixed code, the defect as it was, in effect)
REVERTS = {
    "unicode-tag": (
        "agent/src/record.rs",
        "RecordBody::Checkpoint { tag, .. } if tag.len() > CHECKPOINT_TAG_BYTES_MAX => {",
        "RecordBody::Checkpoint { tag, .. } if tag.chars().count() > CHECKPOINT_TAG_BYTES_MAX => {",
    ),
    "eio-taken-for-corruption": (
        "agent/src/log/open.rs",
        "                Err(e @ SegmentError::Io { .. }) => return Err(LogError::Read(e)),",
        """                Err(SegmentError::Io { offset, source, .. }) => {
                    return Ok(cut_here(scan, found, i, offset, source.to_string()));
                }""",
    ),
    "unsynced-records-sent": (
        "agent/src/log/cursor.rs",
        ".filter(|r| r.seq <= synced))",
        ".filter(|r| r.seq <= synced || r.seq > synced))",
    ),
    "old-segment-not-synced-at-roll": (
        "agent/src/log/mod.rs",
        "let mut files = std::mem::take(&mut inner.unsynced_closed);",
        "inner.unsynced_closed.clear(); let mut files = Vec::new();",
    ),
    "batch-overshoot": (
        "agent/src/log/cursor.rs",
        "if !batch.is_empty() && batch.raw_len() + len > max_bytes {",
        "if !batch.is_empty() && batch.raw_len() >= max_bytes {",
    ),
    "open-trusts-page-cache": (
        "agent/src/log/open.rs",
        """        fs.open_read(path)
            .and_then(|f| f.sync_all())""",
        """        fs.open_read(path)
            .map(drop)""",
    ),
    "open-trusts-unsynced-names": (
        "agent/src/log/open.rs",
        """    fs.sync_dir(dir).doing(|| format!("syncing directory {} (named before this start)", dir.display()))?;
""",
        "",
    ),
    "tail-read-from-page-cache": (
        "agent/src/log/open.rs",
        "SegmentReader::open_direct_on(fs, &f.path, SegmentKind::ProtectedLog, vpg_id)?;",
        "SegmentReader::open_on(fs, &f.path, SegmentKind::ProtectedLog, vpg_id)?;",
    ),
    "failed-removal-forgotten": (
        "agent/src/log/mod.rs",
        """                for kept in std::iter::once(seg).chain(retired.drain(..)).rev() {""",
        """                for kept in std::iter::empty::<Segment>() {""",
    ),
    "dropped-stream-unreported": (
        "agent/src/log/open.rs",
        "        before_dropping(&what).map_err(LogError::BeforeDropping)?;\n",
        "        let _ = (what, before_dropping);\n",
    ),
    "journal-tail-read-from-page-cache": (
        "agent/src/journal/scan.rs",
        "    scan_journal_with(fs, Source::Disk, dir, vpg_id, in_replica, |rec, at| {",
        "    scan_journal_with(fs, Source::PageCache, dir, vpg_id, in_replica, |rec, at| { let _ = Source::Disk;",
    ),
    "journal-roll-leftover-kept": (
        "agent/src/journal/segments.rs",
        "            if self.fs.exists(&leftover) {",
        "            if false && self.fs.exists(&leftover) {",
    ),
    # Once: the end of a segment an ack retired under the cursor was taken
    # for a gap (damage). Since retired segments are reused, the cursor
    # leaves one as soon as it is retired (before and after each read).
    "cursor-takes-retired-segments-for-damage": (
        "agent/src/log/cursor.rs",
        "(place != SegmentPlace::Retired).then_some(place)",
        "Some(place)",
    ),
    # Not an earlier defect: a rule of the journal's intake, kept here as
    # the link scenario's proof that it can fail.
    "journal-takes-a-gap": (
        "agent/src/journal/intake.rs",
        "        _ if first.seq != index.durable_seq + 1 => {",
        "        _ if first.seq != index.durable_seq + 1 && false => {",
    ),
    # Found by the scenario before it landed (seed 513; now 569): spares made while
    # the log was small stayed as it grew past their room.
    "spares-outgrown-kept": (
        "agent/src/log/mod.rs",
        """        inner.bytes_total += bytes;
        self.drop_outgrown_spares(inner);""",
        """        inner.bytes_total += bytes;""",
    ),
}

if sys.argv[1:] == ["--list"]:
    print("\n".join(REVERTS))
    sys.exit(0)
if sys.argv[1] == "--check":
    # Every fix is in the tree as written here (run by `make lint`, so a
    # refactor that moves a fix breaks the build, not a later reverts run).
    stale = [n for n, (path, fixed, _) in REVERTS.items() if open(f"{sys.argv[2]}/{path}").read().count(fixed) != 1]
    if stale:
        sys.exit(f"reverts.py: the fixes of {', '.join(stale)} are not where this script says: update it")
    sys.exit(0)
tree, name = sys.argv[1], sys.argv[2]
path, fixed, defect = REVERTS[name]
text = open(f"{tree}/{path}").read()
if text.count(fixed) != 1:
    sys.exit(f"reverts.py: the fix of {name} is not in {path} as expected: update this script")
open(f"{tree}/{path}", "w").write(text.replace(fixed, defect))
