use super::*;
use crate::error_chain::Chain;
use crate::segment::{list_segments, END_MARKER, SEGMENT_HEADER_BYTES};

fn write(i: u64, size: usize) -> RecordBody {
    RecordBody::Write { volume: 0, offset: i * 4096, data: vec![i as u8; size] }
}

fn open(dir: &Path, capacity: u64) -> (Arc<ProtectedLog>, LogOpenReport) {
    ProtectedLog::open(dir, 1, LogSize::for_capacity(capacity, Preallocation::Off), 0, &mut |_| Ok(())).unwrap()
}

/// Segments of 64 KiB (reads of 64 KiB, records of 8 KiB: several
/// segments, each longer than one read), in 64 MiB.
const SMALL_SEGMENTS: LogSize =
    LogSize { capacity_bytes: 64 << 20, segment_bytes: 64 << 10, preallocation: Preallocation::Off };

/// A log of `SMALL_SEGMENTS` in `dir`.
fn open_small(dir: &Path) -> (Arc<ProtectedLog>, LogOpenReport) {
    ProtectedLog::open_on(LogEnv::real(), dir, 1, SMALL_SEGMENTS, 0, &mut |_| Ok(())).unwrap()
}

/// Appends `count` writes of `bytes` each, makes them durable, and
/// returns the last seq.
async fn append_synced(log: &ProtectedLog, count: u64, bytes: usize) -> u64 {
    let mut last = 0;
    for i in 0..count {
        last = log.append(&write(i, bytes)).await.unwrap();
    }
    log.sync_to(last).await.unwrap();
    last
}

/// The seqs of every record the cursor has for now, from `from`, read in
/// batches as the sender does and decoded as the receiver does.
fn read_all(log: &Arc<ProtectedLog>, from: u64) -> Vec<u64> {
    drain(&mut log.cursor(from), crate::wire::batch::BATCH_RAW_BYTES_TARGET)
}

/// A reopened log whose last record is `last` takes one more, durably,
/// right after it.
async fn assert_goes_on_after(log: &Arc<ProtectedLog>, last: u64) {
    let next = log.append(&write(99, 100)).await.unwrap();
    log.sync_to(next).await.unwrap();
    assert_eq!(read_all(log, last), vec![last, next]);
}

/// The seqs of every record `cursor` has for now, in batches of up to
/// `batch_bytes`, decoded as the receiver does (VPG id 1).
fn drain(cursor: &mut LogCursor, batch_bytes: usize) -> Vec<u64> {
    use crate::wire::batch::{decode, BatchBuilder, BatchEncoder, BATCH_RECORDS_MAX};
    let (mut batch, mut encoder) = (BatchBuilder::default(), BatchEncoder::default());
    let mut seqs = Vec::new();
    loop {
        batch.clear();
        cursor.fill(&mut batch, batch_bytes, BATCH_RECORDS_MAX).expect("the log reads without error");
        if batch.is_empty() {
            return seqs;
        }
        let decoded = decode(encoder.encode(&mut batch).bytes, 1).unwrap();
        seqs.extend(decoded.records.iter().map(|r| r.seq));
    }
}

/// `seqs` are in order, with a hole only where every record skipped was
/// acknowledged (through `acked`), and hold every record owed to `last`.
fn assert_every_owed_record_read(seqs: &[u64], acked: u64, last: u64) {
    let holes_acked = seqs.windows(2).all(|w| w[1] == w[0] + 1 || (w[1] > w[0] && w[1] - 1 <= acked));
    assert!(holes_acked, "{seqs:?} with {acked} acknowledged");
    assert!((acked + 1..=last).all(|s| seqs.contains(&s)), "everything unacknowledged is read: {seqs:?}");
}

/// A record set to precede the next append goes in right before it, in
/// the same write, whichever record comes next; then no more.
#[tokio::test]
async fn a_preceding_record_goes_in_before_the_next_append_only() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 64 << 20);
    let first = log.append(&write(1, 512)).await.unwrap();
    let mark = RecordBody::Checkpoint { time_ms: 7, tag: "resync-start".into(), resync: true };
    log.precede_next_append(mark.clone()).unwrap();
    assert!(log.next_append_preceded());
    let (used, _) = log.usage();
    let mark_bytes = encoded_bytes(&mark).unwrap();
    let body = write(2, 512);
    let second = log.append(&body).await.unwrap();
    assert_eq!(second, first + 2, "the mark took the seq between");
    assert!(!log.next_append_preceded());
    assert_eq!(log.usage().0, used + mark_bytes + encoded_bytes(&body).unwrap());
    let third = log.append(&write(3, 512)).await.unwrap();
    assert_eq!(third, second + 1, "the mark went in once");
    log.sync_to(third).await.unwrap();
    drop(log);
    let (log, report) = open(dir.path(), 64 << 20);
    assert!(report.cut.is_none(), "{:?}", report.cut);
    assert_eq!(read_all(&log, first), vec![first, first + 1, second, third]);
    let bytes = std::fs::read(&list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap()[0].1).unwrap();
    let mut at = SEGMENT_HEADER_BYTES;
    let mut records = Vec::new();
    while let Ok((record, len)) = crate::record::Record::decode(&bytes[at..]) {
        records.push(record);
        at += len;
    }
    assert!(records.iter().any(|r| r.seq == first + 1 && r.body == mark), "{records:?}");
}

/// The room a pending preceding record takes counts against the capacity
/// before it is written: a reservation that would leave it none waits.
#[tokio::test]
async fn a_preceding_record_counts_against_the_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 64 << 20);
    let (used, capacity) = log.usage();
    let mark = RecordBody::Checkpoint { time_ms: 7, tag: "resync-start".into(), resync: true };
    let mark_bytes = encoded_bytes(&mark).unwrap();
    log.precede_next_append(mark).unwrap();
    assert!(log.try_reserve_bytes(capacity - used - mark_bytes + 1).is_none());
    assert!(log.try_reserve_bytes(capacity - used - mark_bytes).is_some());
    // Taken back (a mark appended in its place): its room with it.
    assert!(log.take_preceding().is_some());
    assert!(!log.next_append_preceded());
    assert!(log.try_reserve_bytes(capacity - used).is_some());
}

#[tokio::test]
async fn reopen_resumes_after_last_record_and_cursor_reads_all() {
    let dir = tempfile::tempdir().unwrap();
    let (log, report) = open(dir.path(), 64 << 20);
    assert!(report.fresh);
    let mut seqs = vec![];
    for i in 0..100 {
        seqs.push(log.append(&write(i, 4096)).await.unwrap());
    }
    log.sync_to(*seqs.last().unwrap()).await.unwrap();
    let stream = log.stream_id();
    drop(log);
    let (log, report) = open(dir.path(), 64 << 20);
    assert!(!report.fresh);
    assert_eq!(report.next_seq, seqs.last().unwrap() + 1);
    assert_eq!(log.stream_id(), stream, "the stream goes on");
    assert_eq!(read_all(&log, seqs[10]), seqs[10..].to_vec());
}

#[tokio::test]
async fn the_cursor_reads_only_what_is_fsynced() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 64 << 20);
    let first = log.append(&write(1, 512)).await.unwrap();
    log.sync_to(first).await.unwrap();
    let second = log.append(&write(2, 512)).await.unwrap();
    // Appended but not fsynced: a power cut could still take it, so the
    // recovery side must not get it yet.
    assert_eq!(read_all(&log, first), vec![first]);
    let mut cursor = log.cursor(second);
    assert!(cursor.peek().unwrap().is_none());
    log.sync_to(second).await.unwrap();
    assert_eq!(cursor.peek().unwrap().map(|r| r.seq), Some(second));
    // An ack of what the log does not hold durably retires nothing.
    let third = log.append(&write(3, 512)).await.unwrap();
    log.ack(third);
    assert_eq!(log.acked_seq(), 0);
}

#[tokio::test]
async fn batches_never_exceed_the_receivers_limit() {
    use crate::record::RECORD_PAYLOAD_BYTES_MAX;
    use crate::wire::batch::{BatchBuilder, BatchEncoder, BATCH_RAW_BYTES_TARGET, BATCH_RECORDS_MAX};
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 256 << 20);
    // Small writes ending 28 bytes short of the batch target, then one
    // of the largest size: the big one must travel alone, not on top of
    // a nearly full batch (together they are over the receiver's limit).
    for i in 0..63 {
        log.append(&write(i, 64 << 10)).await.unwrap();
    }
    log.append(&write(63, 62_120)).await.unwrap();
    let big = RecordBody::Write { volume: 0, offset: 0, data: vec![7; RECORD_PAYLOAD_BYTES_MAX] };
    let last = log.append(&big).await.unwrap();
    log.sync_to(last).await.unwrap();
    let mut cursor = log.cursor(0);
    let mut seen = 0;
    loop {
        // As the sender does: a batch, then a second look (its linger).
        let mut batch = BatchBuilder::default();
        cursor.fill(&mut batch, BATCH_RAW_BYTES_TARGET, BATCH_RECORDS_MAX).unwrap();
        if batch.is_empty() {
            break;
        }
        cursor.fill(&mut batch, BATCH_RAW_BYTES_TARGET, BATCH_RECORDS_MAX).unwrap();
        seen += batch.count();
        let encoded = BatchEncoder::default().encode(&mut batch).bytes.to_vec();
        let decoded = crate::wire::batch::decode(&encoded, 1).expect("the receiver takes every batch the cursor makes");
        assert!(decoded.records.last().unwrap().seq <= last);
    }
    assert_eq!(seen, 66, "stream start, 64 writes and the big one");
}

#[tokio::test]
async fn a_record_its_readers_would_refuse_is_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 64 << 20);
    let before = log.appended_seq();
    let tag = RecordBody::Checkpoint { time_ms: 1, tag: "€".repeat(100), resync: false };
    let err = log.append(&tag).await.unwrap_err();
    let err = Chain(&err).to_string();
    assert!(err.contains("300 bytes"), "{err}");
    assert_eq!(log.appended_seq(), before);
    // The log goes on, and reopens without cutting anything.
    let seq = log.append(&write(1, 512)).await.unwrap();
    log.sync_to(seq).await.unwrap();
    drop(log);
    let (_, report) = open(dir.path(), 64 << 20);
    assert!(report.cut.is_none());
    assert_eq!(report.next_seq, seq + 1);
}

#[tokio::test]
async fn torn_tail_is_cut_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 64 << 20);
    let last = log.append(&write(1, 512)).await.unwrap();
    drop(log);
    let seg = list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap().pop().unwrap().1;
    // Where the end marker is, the start of a record a crash cut short.
    let end = std::fs::metadata(&seg).unwrap().len() - END_MARKER.len() as u64;
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::File::options().write(true).open(&seg).unwrap(),
        b"TMRC\x01",
        end,
    )
    .unwrap();
    let (log, report) = open(dir.path(), 64 << 20);
    let cut = report.cut.expect("the torn record is cut");
    assert_eq!(cut.after_seq, last);
    assert_eq!(report.next_seq, last + 1);
    assert_eq!(log.append(&write(2, 512)).await.unwrap(), last + 1);
}

/// A power cut after a roll: the old segment's unsynced tail is lost and
/// the new segment holds only its header. Once the agent could not start
/// ("damaged before its tail"); now the torn end is cut there.
#[tokio::test]
async fn a_torn_segment_before_an_empty_newest_one_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    // 64 MiB capacity: 4 MiB segments.
    let (log, _) = open(dir.path(), 64 << 20);
    let mut last = 0;
    for i in 0..5 {
        last = log.append(&write(i, 1 << 20)).await.unwrap();
    }
    // The fifth write went into the second segment: roll it too.
    let segments = list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap();
    assert_eq!(segments.len(), 2);
    drop(log);
    // Lose the tail of the first segment and the record in the second.
    let (first, second) = (&segments[0].1, &segments[1].1);
    let len = std::fs::metadata(first).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(first).unwrap().set_len(len - 1000).unwrap();
    std::fs::OpenOptions::new().write(true).open(second).unwrap().set_len(SEGMENT_HEADER_BYTES as u64).unwrap();
    let (log, report) = open(dir.path(), 64 << 20);
    let cut = report.cut.expect("the torn end is cut");
    assert_eq!(cut.segments_dropped, 1);
    assert!(cut.after_seq < last);
    assert_eq!(report.next_seq, cut.after_seq + 1);
    assert_eq!(list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap().len(), 1);
    let next = log.append(&write(9, 512)).await.unwrap();
    assert_eq!(next, cut.after_seq + 1);
}

/// A power cut after a roll: the old segment lost its unsynced tail at a
/// record boundary (no torn record to see), while the new segment kept
/// records written back after the gap. Once the sender looped for ever on
/// the gap (or the next open refused to start); now the log is cut there.
#[tokio::test]
async fn a_gap_between_segments_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 64 << 20);
    let mut seqs = Vec::new();
    for i in 0..6 {
        seqs.push(log.append(&write(i, 1 << 20)).await.unwrap());
    }
    log.sync_to(*seqs.last().unwrap()).await.unwrap();
    drop(log);
    let segments = list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap();
    assert_eq!(segments.len(), 2);
    // Drop the first segment's last record, whole.
    let first = &segments[0].1;
    let len = std::fs::metadata(first).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(first)
        .unwrap()
        .set_len(len - (RECORD_HEADER_BYTES as u64 + (1 << 20)))
        .unwrap();
    let (log, report) = open(dir.path(), 64 << 20);
    let cut = report.cut.expect("the gap is cut");
    assert_eq!(cut.segments_dropped, 1);
    assert_eq!(report.next_seq, segments[1].0 - 1, "the record lost before the gap is the next seq");
    assert_eq!(read_all(&log, 0).last().copied(), Some(report.next_seq - 1));
    let next = log.append(&write(9, 512)).await.unwrap();
    log.sync_to(next).await.unwrap();
    drop(log);
    // And it opens again (once: "sequence goes backwards").
    let (_, report) = open(dir.path(), 64 << 20);
    assert_eq!(report.next_seq, next + 1);
}

/// A new stream right after a roll, with the current segment still empty
/// (once: "segment exists already", and no new stream ever).
#[tokio::test]
async fn a_new_stream_starts_over_an_empty_current_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 64 << 20);
    // Four 1 MiB writes fill the first 4 MiB segment; the fifth goes into a
    // new one, which a power cut then leaves with only its header.
    for i in 0..4 {
        log.append(&write(i, 1 << 20)).await.unwrap();
    }
    let last = log.append(&write(4, 1 << 20)).await.unwrap();
    drop(log);
    let segments = list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap();
    let newest = &segments.last().unwrap().1;
    std::fs::OpenOptions::new().write(true).open(newest).unwrap().set_len(SEGMENT_HEADER_BYTES as u64).unwrap();
    let (log, report) = open(dir.path(), 64 << 20);
    assert_eq!(report.next_seq, last, "the newest segment is empty and named after the next seq");
    let start = log.start_stream(0).expect("a new stream over an empty current segment");
    assert!(start > last);
    assert_eq!(read_all(&log, 0), vec![start]);
}

#[tokio::test]
async fn an_ack_of_a_new_stream_is_no_ack_of_a_dropped_record() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 64 << 20);
    let acked = log.append(&write(1, 512)).await.unwrap();
    log.sync_to(acked).await.unwrap();
    log.ack(acked);
    let dropped = log.append(&write(2, 512)).await.unwrap();
    let start = log.start_stream(0).unwrap();
    log.ack(start);
    assert!(log.wait_acked(acked).await.unwrap(), "acknowledged before the new stream");
    assert!(!log.wait_acked(dropped).await.unwrap(), "dropped with the old stream, never acknowledged");
    assert!(log.wait_acked(start).await.unwrap());
}

/// A segment named before its header was durable (earlier builds, or a
/// file system that orders it so) must not keep the agent from starting.
#[tokio::test]
async fn a_newest_segment_without_its_header_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 64 << 20);
    let last = log.append(&write(1, 512)).await.unwrap();
    drop(log);
    let stray = crate::segment::segment_path(dir.path(), SegmentKind::ProtectedLog, last + 1);
    std::fs::write(&stray, b"").unwrap();
    let (_, report) = open(dir.path(), 64 << 20);
    assert_eq!(report.next_seq, last + 1);
    assert!(!stray.exists());
}

#[tokio::test]
async fn a_new_stream_drops_the_old_one_and_an_interrupted_one_is_finished() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 64 << 20);
    for i in 0..9 {
        log.append(&write(i, 1 << 20)).await.unwrap();
    }
    let old_stream = log.stream_id();
    let old_segments = list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap();
    assert!(old_segments.len() > 1);
    let old_bytes: Vec<Vec<u8>> = old_segments.iter().map(|(_, p)| std::fs::read(p).unwrap()).collect();
    let start = log.start_stream(0).unwrap();
    assert_ne!(log.stream_id(), old_stream);
    assert_eq!(read_all(&log, 0), vec![start], "only the new StreamStart is left");
    assert_eq!(log.synced_seq(), start, "the StreamStart is durable");
    drop(log);
    // A stop between the new segment and the removal of the old ones.
    for ((_, path), bytes) in old_segments.iter().zip(&old_bytes) {
        std::fs::write(path, bytes).unwrap();
    }
    // The caller is told before the old stream's records go; when it
    // cannot make that durable, nothing goes.
    let refused =
        ProtectedLog::open(dir.path(), 1, LogSize::for_capacity(64 << 20, Preallocation::Off), 0, &mut |_| {
            Err("no room to say it".into())
        });
    assert!(Chain(&refused.err().expect("the open fails with its caller")).to_string().contains("no room to say it"));
    assert_eq!(list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap().len(), old_segments.len() + 1);
    let mut told = Vec::new();
    let (log, report) =
        ProtectedLog::open(dir.path(), 1, LogSize::for_capacity(64 << 20, Preallocation::Off), 0, &mut |what| {
            told.push(what.to_string());
            Ok(())
        })
        .unwrap();
    assert_eq!(told.len(), 1, "{told:?}");
    for (_, path) in &old_segments {
        assert!(told[0].contains(&path.display().to_string()), "{told:?} names {}", path.display());
    }
    assert_eq!(report.next_seq, start + 1);
    assert_eq!(list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap().len(), 1);
    assert_eq!(read_all(&log, 0), vec![start]);
}

#[tokio::test]
async fn a_failed_stream_start_left_behind_the_old_stream_is_dropped_without_a_word() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 64 << 20);
    let first = log.append(&write(0, 4096)).await.unwrap();
    // A start that failed once its segment was named, after which the log
    // went on in its old stream past it (a roll names a later segment).
    let failed_at = first + 2;
    let (path, _, _) = {
        let (segment, file, id) =
            create_stream_segment(&*log.fs, dir.path(), 1, failed_at, 0).expect("the start's segment");
        (segment.path, file, id)
    };
    for i in 1..20 {
        // Small records past the failed start, then a roll well after it.
        log.append(&write(i, if i < 4 { 4096 } else { 1 << 20 })).await.unwrap();
    }
    let last = log.appended_seq();
    log.sync_to(last).await.unwrap();
    let starts = log.segment_starts();
    assert!(!starts.contains(&failed_at) && starts.iter().any(|s| *s > failed_at), "{starts:?}");
    drop(log);
    let (log, report) =
        ProtectedLog::open(dir.path(), 1, LogSize::for_capacity(64 << 20, Preallocation::Off), 0, &mut |what| {
            panic!("a lone StreamStart holds no record to lose: {what}")
        })
        .unwrap();
    assert!(!path.exists());
    assert_eq!(report.next_seq, last + 1);
    // The stream's own StreamStart, then every record appended.
    assert_eq!(read_all(&log, 0), (first - 1..=last).collect::<Vec<_>>());
}

/// (Review finding of helper-28.) A segment of the old stream holding one
/// small record (a Zero, a CopyDone, a short checkpoint) is no larger than
/// a lone StreamStart: whether a segment holds records is what it holds,
/// not its size.
#[tokio::test]
async fn an_old_stream_segment_holding_one_small_record_is_reported_before_it_goes() {
    let dir = tempfile::tempdir().unwrap();
    let size = LogSize { capacity_bytes: 64 << 20, segment_bytes: 1 << 20, preallocation: Preallocation::Off };
    let (log, _) = ProtectedLog::open_on(LogEnv::real(), dir.path(), 1, size, 0, &mut |_| Ok(())).unwrap();
    for i in 0..3 {
        log.append(&write(i, 1 << 20)).await.unwrap();
    }
    let zero_seq = log.append(&RecordBody::Zero { volume: 0, offset: 0, length: 4096 }).await.unwrap();
    log.sync_to(zero_seq).await.unwrap();
    let starts = log.segment_starts();
    assert_eq!(*starts.last().unwrap(), zero_seq, "the Zero is alone in its segment: {starts:?}");
    // A start that failed once its segment was named, left behind.
    create_stream_segment(&*log.fs, dir.path(), 1, zero_seq + 1, 0).expect("the start's segment");
    drop(log);
    // The old stream's earlier segments were acknowledged and retired.
    for (first, path) in list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap() {
        if first < zero_seq {
            std::fs::remove_file(path).unwrap();
        }
    }
    let mut told = None;
    let (_log, report) =
        ProtectedLog::open(dir.path(), 1, LogSize::for_capacity(64 << 20, Preallocation::Off), 0, &mut |what| {
            told = Some(what.to_string());
            Ok(())
        })
        .unwrap();
    assert!(told.is_some(), "the fsynced Zero at seq {zero_seq} was dropped unreported (next seq {})", report.next_seq);
}

#[tokio::test]
async fn full_log_waits_until_acked() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 64 << 20);
    let mut last = 0;
    // 64 MiB capacity, 4 MiB segments: fill it with 1 MiB writes.
    for i in 0..63 {
        last = log.append(&write(i, 1 << 20)).await.unwrap();
    }
    let blocked = tokio::time::timeout(std::time::Duration::from_millis(300), log.append(&write(99, 1 << 20))).await;
    assert!(blocked.is_err(), "append must wait on a full log");
    // A reservation waits too, without anything held.
    let waiting = tokio::time::timeout(std::time::Duration::from_millis(100), log.reserve(&write(98, 1 << 20))).await;
    assert!(waiting.is_err(), "reserve must wait on a full log");
    log.sync_to(last).await.unwrap();
    log.ack(last);
    let seq = tokio::time::timeout(std::time::Duration::from_secs(5), log.append(&write(99, 1 << 20)))
        .await
        .expect("space after ack")
        .unwrap();
    assert_eq!(seq, last + 1);
}

/// Storage faults at exact points (`--features test-build`, one at a time).
#[cfg(feature = "test-build")]
mod failpoints {
    use super::*;

    /// Appends a 4 KiB write whose first try the disk refuses (ENOSPC half
    /// way through the record, undone).
    async fn append_on_full_disk(log: &ProtectedLog, i: u64) -> Result<u64> {
        fail::cfg("log-append-torn", "1*return").unwrap();
        let appended = log.append(&write(i, 4096)).await;
        fail::remove("log-append-torn");
        appended
    }

    #[tokio::test]
    async fn a_read_error_at_open_is_reported_and_cuts_nothing() {
        let scenario = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path(), 64 << 20);
        let mut last = 0;
        for i in 0..3 {
            last = log.append(&write(i, 512)).await.unwrap();
        }
        log.sync_to(last).await.unwrap();
        drop(log);
        let (_, path) = list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap().pop().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        fail::cfg("segment-read", "2*off->return").unwrap();
        let err =
            ProtectedLog::open(dir.path(), 1, LogSize::for_capacity(64 << 20, Preallocation::Off), 0, &mut |_| Ok(()))
                .err()
                .expect("an I/O error must fail the open");
        let err = Chain(&err).to_string();
        assert!(err.contains("read error"), "{err}");
        fail::remove("segment-read");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "the log was cut on a read error");
        let (_, report) = open(dir.path(), 64 << 20);
        assert_eq!(report.next_seq, last + 1);
        scenario.teardown();
    }

    /// ENOSPC in the middle of an append: the partial record is undone, the
    /// write fails, and the records after it are read back whole (once
    /// they followed the garbage and were cut as a torn tail).
    #[tokio::test]
    async fn a_failed_append_leaves_nothing_behind() {
        let scenario = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path(), 64 << 20);
        let first = log.append(&write(1, 4096)).await.unwrap();
        assert!(append_on_full_disk(&log, 2).await.is_err());
        // With no spare, no file is made on a full disk.
        assert_eq!(list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap().len(), 1);
        let third = log.append(&write(3, 4096)).await.unwrap();
        assert_eq!(third, first + 1, "the failed record has no seq");
        log.sync_to(third).await.unwrap();
        drop(log);
        let (log, report) = open(dir.path(), 64 << 20);
        assert!(report.cut.is_none(), "{:?}", report.cut);
        assert_eq!(read_all(&log, first), vec![first, third]);
        scenario.teardown();
    }

    /// An append the disk refuses writes neither its record nor the one
    /// set to precede it: the next append writes both.
    #[tokio::test]
    async fn a_failed_append_keeps_the_preceding_record_pending() {
        let scenario = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path(), 64 << 20);
        let first = log.append(&write(1, 4096)).await.unwrap();
        log.precede_next_append(RecordBody::Checkpoint { time_ms: 7, tag: "m".into(), resync: true }).unwrap();
        assert!(append_on_full_disk(&log, 2).await.is_err());
        assert!(log.next_append_preceded(), "the refused append took the mark with it");
        let third = log.append(&write(3, 4096)).await.unwrap();
        assert_eq!(third, first + 2);
        log.sync_to(third).await.unwrap();
        drop(log);
        let (log, report) = open(dir.path(), 64 << 20);
        assert!(report.cut.is_none(), "{:?}", report.cut);
        assert_eq!(read_all(&log, first), vec![first, first + 1, third]);
        scenario.teardown();
    }

    /// A full disk (ENOSPC) in a segment that holds records: it is closed
    /// short and the record goes into a spare, whose blocks are on the
    /// disk already. The write does not fail, and both records read back
    /// after a reopen.
    #[tokio::test]
    async fn a_full_disk_moves_the_record_into_a_spare() {
        let scenario = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open_preallocated(dir.path());
        // A spare from a retired segment (not made ahead: the machine's
        // own disk may be at its reserve).
        let full = append_synced(&log, 4, 256 << 10).await;
        let first = log.append(&write(1, 4096)).await.unwrap();
        log.sync_to(first).await.unwrap();
        log.ack(full);
        let spares = log.space_status().spare_bytes;
        assert!(spares > 0, "the retired segment was not kept as a spare");
        let second = append_on_full_disk(&log, 2).await.expect("written into a spare");
        assert_eq!(second, first + 1);
        assert!(log.space_status().spare_bytes < spares, "no spare was taken");
        assert_eq!(list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap().len(), 2);
        log.sync_to(second).await.unwrap();
        drop(log);
        let (log, report) = open_preallocated(dir.path());
        assert!(report.cut.is_none(), "{:?}", report.cut);
        assert_eq!(read_all(&log, first), vec![first, second]);
        scenario.teardown();
    }

    /// With no spare, a segment whose records are all acknowledged (one
    /// that never filled on a small disk) is closed and retired at once,
    /// and the record written again in the next.
    #[tokio::test]
    async fn a_full_disk_retires_an_acknowledged_segment_at_once() {
        let scenario = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path(), 64 << 20);
        let first = append_synced(&log, 3, 4096).await;
        log.ack(first);
        let held = log.space_status().held_bytes;
        let next = append_on_full_disk(&log, 4).await.expect("written again");
        assert_eq!(next, first + 1);
        assert!(log.space_status().held_bytes < held, "the acknowledged segment is still held");
        let segments = list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap();
        assert_eq!(segments.len(), 1, "{segments:?}");
        log.sync_to(next).await.unwrap();
        drop(log);
        let (log, report) = open(dir.path(), 64 << 20);
        assert!(report.cut.is_none(), "{:?}", report.cut);
        assert_eq!(read_all(&log, next), vec![next]);
        scenario.teardown();
    }

    /// The same on a disk with no free block, where a new segment file
    /// cannot be made (its creation fails here): the new segment's header
    /// goes over the roll reserve, and the reserve is made again once the
    /// acknowledged segment is retired. (Before the reserve, the resync of
    /// a log on a small disk never began: e2e log_disk_full_small_writes.)
    #[tokio::test]
    async fn a_disk_with_no_free_block_rolls_into_the_reserve() {
        let scenario = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path(), 64 << 20);
        let reserve = dir.path().join("roll-reserve");
        assert!(reserve.exists(), "no roll reserve made at open");
        use std::os::unix::fs::MetadataExt;
        let reserve_inode = std::fs::metadata(&reserve).unwrap().ino();
        let first = append_synced(&log, 3, 4096).await;
        log.ack(first);
        fail::cfg("segment-create-before-sync", "return").unwrap();
        let next = append_on_full_disk(&log, 4).await.expect("written again");
        fail::remove("segment-create-before-sync");
        assert_eq!(next, first + 1);
        let segments = list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap();
        assert_eq!(segments.len(), 1, "the acknowledged segment was not retired: {segments:?}");
        assert_eq!(std::fs::metadata(&segments[0].1).unwrap().ino(), reserve_inode, "not written over the reserve");
        assert!(reserve.exists(), "the reserve was not made again after the retire");
        log.sync_to(next).await.unwrap();
        drop(log);
        let (log, report) = open(dir.path(), 64 << 20);
        assert!(report.cut.is_none(), "{:?}", report.cut);
        assert_eq!(read_all(&log, next).first(), Some(&next));
        scenario.teardown();
    }

    /// The same when the roll before the record closed the acknowledged
    /// segment and the new one holds no record yet: the closed segment is
    /// retired at once (an ack would do it only once the recovery site
    /// answers again), and the record written.
    #[tokio::test]
    async fn a_full_disk_retires_an_acknowledged_closed_segment_at_once() {
        let scenario = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open_preallocated(dir.path());
        // A full segment: the next append rolls into a new file first.
        let last = append_synced(&log, 4, 256 << 10).await;
        log.ack(last);
        let next = append_on_full_disk(&log, 5).await.expect("written again");
        assert_eq!(next, last + 1);
        let segments = list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap();
        assert_eq!(segments.len(), 1, "the acknowledged segment was not retired: {segments:?}");
        log.sync_to(next).await.unwrap();
        drop(log);
        let (log, report) = open_preallocated(dir.path());
        assert!(report.cut.is_none(), "{:?}", report.cut);
        assert_eq!(read_all(&log, next), vec![next]);
        scenario.teardown();
    }

    /// With no spare, nothing is done and the write fails. With one, a
    /// segment that holds no record (which a roll cannot close: the next
    /// would have its name) gets the spare's blocks: the spare is given
    /// back to the disk, and the record written again in the same file.
    #[tokio::test]
    async fn a_full_disk_gives_a_spare_back_for_a_segment_with_no_record() {
        let scenario = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open_preallocated(dir.path());
        // A full segment: the next append rolls into a new file first.
        let first = append_synced(&log, 4, 256 << 10).await;
        assert!(append_on_full_disk(&log, 2).await.is_err(), "no spare to help");
        let segments = list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap();
        assert_eq!(segments.len(), 2, "the roll before the write, and no other file: {segments:?}");
        // The sender reads the empty segment's file by its handle.
        let mut cursor = log.cursor(first);
        assert_eq!(drain(&mut cursor, crate::wire::batch::BATCH_RAW_BYTES_TARGET).last(), Some(&first));
        // A spare from the retired segment (not made ahead: the machine's
        // own disk may be at its reserve).
        log.ack(first);
        let spares = log.space_status().spare_bytes;
        assert!(spares > 0, "the retired segment was not kept as a spare");
        let segments = list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap();
        let second = append_on_full_disk(&log, 3).await.expect("written again");
        assert_eq!(second, first + 1, "the failed record has no seq");
        assert_eq!(list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap(), segments, "the same file");
        assert!(log.space_status().spare_bytes < spares, "no spare was given back");
        log.sync_to(second).await.unwrap();
        assert_eq!(
            drain(&mut cursor, crate::wire::batch::BATCH_RAW_BYTES_TARGET),
            vec![second],
            "the sender does not see the record in the file it reads"
        );
        drop(cursor);
        drop(log);
        let (log, report) = open_preallocated(dir.path());
        assert!(report.cut.is_none(), "{:?}", report.cut);
        // The first segment was retired: the log holds the second record.
        assert_eq!(read_all(&log, second), vec![second]);
        scenario.teardown();
    }
}

/// The kernel's file system, except that once armed the next removal
/// waits until the test lets it go on, and then fails.
struct NextRemovalStalls {
    entered: std::sync::mpsc::SyncSender<()>,
    go: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl Storage for NextRemovalStalls {
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        RealStorage.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        RealStorage.list(dir)
    }
    fn exists(&self, path: &Path) -> bool {
        RealStorage.exists(path)
    }
    fn size_of(&self, path: &Path) -> std::io::Result<u64> {
        RealStorage.size_of(path)
    }
    fn create_new(&self, path: &Path) -> std::io::Result<Arc<dyn StorageFile>> {
        RealStorage.create_new(path)
    }
    fn open_append(&self, path: &Path) -> std::io::Result<Arc<dyn StorageFile>> {
        RealStorage.open_append(path)
    }
    fn open_rw(&self, path: &Path) -> std::io::Result<Arc<dyn StorageFile>> {
        RealStorage.open_rw(path)
    }
    fn open_read(&self, path: &Path) -> std::io::Result<Arc<dyn StorageFile>> {
        RealStorage.open_read(path)
    }
    fn open_direct(&self, path: &Path) -> std::io::Result<Arc<dyn StorageFile>> {
        RealStorage.open_direct(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        RealStorage.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        let Some(go) = self.go.lock().unwrap().take() else { return RealStorage.remove_file(path) };
        self.entered.send(()).unwrap();
        go.recv().unwrap();
        Err(std::io::Error::from_raw_os_error(5))
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        RealStorage.sync_dir(dir)
    }
    fn space(&self, dir: &Path) -> std::io::Result<crate::storage::FsSpace> {
        RealStorage.space(dir)
    }
}

/// An acknowledgement whose removal fails puts its segment back; a new
/// stream started meanwhile must not get the old stream's segment (it sat
/// before the new stream's first segment, and the sender's cursor and the
/// next ack read it as part of the new stream).
#[test]
fn a_failed_retirement_does_not_put_a_segment_into_a_new_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (entered, entered_rx) = std::sync::mpsc::sync_channel(1);
    let (go_tx, go) = std::sync::mpsc::sync_channel(1);
    let storage = Arc::new(NextRemovalStalls { entered, go: Mutex::new(None) });
    let env = LogEnv { storage: storage.clone(), clock: Arc::new(SystemClock) };
    let size = LogSize { capacity_bytes: 64 << 20, segment_bytes: 1 << 20, preallocation: Preallocation::Off };
    let (log, _) = ProtectedLog::open_on(env, dir.path(), 1, size, 0, &mut |_| Ok(())).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut last = 0;
    for i in 0..4 {
        last = runtime.block_on(log.append(&write(i, 1 << 20))).unwrap();
    }
    runtime.block_on(log.sync_to(last)).unwrap();
    *storage.go.lock().unwrap() = Some(go);
    let acking = std::thread::spawn({
        let log = log.clone();
        move || log.ack(last)
    });
    entered_rx.recv_timeout(std::time::Duration::from_secs(10)).expect("the acknowledgement removes a segment");
    let (started_tx, started) = std::sync::mpsc::channel();
    let starting = std::thread::spawn({
        let log = log.clone();
        move || started_tx.send(log.start_stream(0).unwrap()).unwrap()
    });
    // The new stream starts now, or (serialised with retirement) once the
    // removal has failed: either way the old segment must stay out of it.
    let early = started.recv_timeout(std::time::Duration::from_millis(500)).ok();
    go_tx.send(()).unwrap();
    acking.join().unwrap();
    let start = early.unwrap_or_else(|| started.recv().unwrap());
    starting.join().unwrap();
    let starts = log.segment_starts();
    assert!(starts.iter().all(|s| *s >= start), "segments {starts:?} in a stream starting at {start}");
    assert_eq!(read_all(&log, 0), vec![start], "only the new StreamStart is left");
}

/// A segment that is already gone when its acknowledgement retires it
/// (removed by hand to free space, or by a removal whose success was not
/// reported) is retired: kept, it would be retried forever and hold its
/// space, and every later segment's, until writers wait on a full log.
#[tokio::test]
async fn a_segment_already_gone_is_retired() {
    let dir = tempfile::tempdir().unwrap();
    let size = LogSize { capacity_bytes: 64 << 20, segment_bytes: 1 << 20, preallocation: Preallocation::Off };
    let (log, _) = ProtectedLog::open_on(LogEnv::real(), dir.path(), 1, size, 0, &mut |_| Ok(())).unwrap();
    let mut last = 0;
    for i in 0..4 {
        last = log.append(&write(i, 1 << 20)).await.unwrap();
    }
    log.sync_to(last).await.unwrap();
    let (_, oldest) = list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap().remove(0);
    std::fs::remove_file(&oldest).unwrap();
    log.ack(last);
    assert_eq!(log.segment_starts().len(), 1, "segments {:?} after acknowledging all", log.segment_starts());
    assert!(log.usage().0 < 2 << 20, "{} bytes held", log.usage().0);
}

/// Segments no larger than their header would roll while empty, naming
/// the new segment as the empty one is named (and removing it as the
/// leftover of a failed creation): refused at open.
#[test]
#[should_panic(expected = "LogSize")]
fn segments_no_larger_than_their_header_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let size = LogSize {
        capacity_bytes: 1 << 20,
        segment_bytes: SEGMENT_HEADER_BYTES as u64,
        preallocation: Preallocation::Off,
    };
    let _ = ProtectedLog::open_on(LogEnv::real(), dir.path(), 1, size, 0, &mut |_| Ok(()));
}

/// An ack may run ahead of a session's cursor (a recovery side that holds
/// more than this session sent it: a welcome from before an older link's
/// last batch landed) and retire segments the cursor has not read yet:
/// what they held is acknowledged, so the cursor goes on from the next
/// segment left, instead of taking the hole for damage (which starts the
/// stream over, with a full copy). Review finding of helper-29.
#[tokio::test]
async fn a_cursor_skips_segments_an_ack_retired_ahead_of_it() {
    use crate::wire::batch::{BatchBuilder, BATCH_RECORDS_MAX};
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open_small(dir.path());
    let last = append_synced(&log, 100, 8192).await;
    let first = log.segment_starts()[0];
    let mut cursor = log.cursor(first + 1);
    let mut batch = BatchBuilder::default();
    cursor.fill(&mut batch, 20_000, BATCH_RECORDS_MAX).unwrap();
    assert!(batch.count() > 0);
    let acked = last - 5;
    log.ack(acked);
    assert!(log.segment_starts()[0] > first + 16, "the ack retired several segments: {:?}", log.segment_starts());
    let seqs = drain(&mut cursor, 1 << 20);
    assert_eq!(seqs.last(), Some(&last), "the cursor reads on to the end");
    assert_every_owed_record_read(&seqs, acked, last);
}

fn inode(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
}

fn spares_in(dir: &Path) -> Vec<PathBuf> {
    let spare = |p: &PathBuf| p.extension().is_some_and(|e| e == "spare");
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(spare).collect()
}

/// Acknowledged segments are kept as spares and written over by the next
/// rolls; records of other sizes than the file's earlier ones leave its
/// old bytes behind them, which neither a reopen nor a cursor takes for
/// records (or for damage).
#[tokio::test]
async fn retired_segment_files_are_reused_and_their_old_bytes_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open_small(dir.path());
    let mut last = append_synced(&log, 40, 8192).await;
    let retired: Vec<u64> = list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap()[..2]
        .iter()
        .map(|(_, path)| inode(path))
        .collect();
    log.ack(last - 1);
    assert_eq!(spares_in(dir.path()).len(), SPARES_MAX, "the first retired segments are kept");
    // Smaller records: the reused files' old records go on after them.
    let from = last + 1;
    for i in 0..30 {
        last = log.append(&write(i, 3000 + i as usize)).await.unwrap();
    }
    log.sync_to(last).await.unwrap();
    let inodes: Vec<u64> =
        list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap().iter().map(|(_, path)| inode(path)).collect();
    assert!(retired.iter().all(|i| inodes.contains(i)), "both spares hold segments again");
    assert!(spares_in(dir.path()).is_empty());
    assert_eq!(read_all(&log, from), (from..=last).collect::<Vec<_>>());
    drop(log);
    let (log, report) = open_small(dir.path());
    assert!(report.cut.is_none(), "{:?}", report.cut);
    assert_eq!(report.next_seq, last + 1);
    assert_eq!(read_all(&log, from), (from..=last).collect::<Vec<_>>());
    assert_goes_on_after(&log, last).await;
}

/// A cursor left inside a segment that an ack retires, and whose file a
/// roll then reuses, reads on from the records still owed, never the new
/// bytes written over what it had open.
#[tokio::test]
async fn a_cursor_in_a_segment_retired_and_reused_under_it_reads_on() {
    use crate::wire::batch::{BatchBuilder, BATCH_RECORDS_MAX};
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open_small(dir.path());
    let mut last = append_synced(&log, 20, 8192).await;
    let first = log.segment_starts()[0];
    let mut cursor = log.cursor(first);
    let mut batch = BatchBuilder::default();
    cursor.fill(&mut batch, 20_000, BATCH_RECORDS_MAX).unwrap();
    let read_before = batch.count() as u64;
    let acked = log.segment_starts()[1];
    log.ack(acked);
    for i in 0..20 {
        last = log.append(&write(i, 5000)).await.unwrap();
    }
    log.sync_to(last).await.unwrap();
    assert!(spares_in(dir.path()).is_empty(), "the retired file was reused");
    assert!(first + read_before <= acked);
    assert_every_owed_record_read(&drain(&mut cursor, 1 << 20), acked, last);
}

/// A segment ends past its size by up to one record; its file, reused,
/// is cut back to the size, so no file keeps the largest length it ever
/// had (disk use the log does not count). Review finding of helper-32.
#[tokio::test]
async fn a_reused_file_is_cut_to_the_segment_size() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open_small(dir.path());
    let big = log.append(&write(0, 1 << 20)).await.unwrap();
    let after = log.append(&write(1, 512)).await.unwrap();
    log.sync_to(after).await.unwrap();
    let first = list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap()[0].1.clone();
    assert!(std::fs::metadata(&first).unwrap().len() > 1 << 20);
    let reused = inode(&first);
    log.ack(big);
    assert_eq!(spares_in(dir.path()).len(), 1);
    let mut last = after;
    while spares_in(dir.path()).len() == 1 {
        last = log.append(&write(2, 8192)).await.unwrap();
    }
    log.sync_to(last).await.unwrap();
    let (_, path) = list_segments(dir.path(), SegmentKind::ProtectedLog)
        .unwrap()
        .into_iter()
        .find(|(_, p)| inode(p) == reused)
        .expect("the spare holds a segment again");
    assert!(std::fs::metadata(&path).unwrap().len() <= SMALL_SEGMENTS.segment_bytes, "cut to the segment size");
    assert_eq!(read_all(&log, after), (after..=last).collect::<Vec<_>>());
}

/// A log of 1 MiB segments in 8 MiB that makes its spares when told.
const PREALLOCATED: LogSize =
    LogSize { capacity_bytes: 8 << 20, segment_bytes: 1 << 20, preallocation: Preallocation::ByCaller };

fn open_preallocated(dir: &Path) -> (Arc<ProtectedLog>, LogOpenReport) {
    ProtectedLog::open_on(LogEnv::real(), dir, 1, PREALLOCATED, 0, &mut |_| Ok(())).unwrap()
}

fn prepare_all(log: &ProtectedLog) -> usize {
    let mut made = 0;
    while log.prepare_spare().unwrap() == Prepared::Made {
        made += 1;
    }
    made
}

/// A log that preallocates fills its capacity with zero-filled spares
/// (less its current segment), rolls into them without making a file,
/// keeps them across a reopen, and removes what a preparation cut short
/// left; the records written over them read back, and nothing more.
#[tokio::test]
async fn a_preallocating_log_claims_its_capacity_and_rolls_into_it() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open_preallocated(dir.path());
    assert_eq!(prepare_all(&log), 7, "8 MiB less the current 1 MiB segment, in spares of 1 MiB");
    let spares = spares_in(dir.path());
    assert_eq!(spares.len(), 7);
    for spare in &spares {
        let bytes = std::fs::read(spare).unwrap();
        assert_eq!(bytes.len(), 1 << 20);
        assert!(bytes.iter().all(|b| *b == 0), "{} is zero-filled", spare.display());
    }
    assert_eq!(log.space_status().spare_bytes, 7 << 20);
    let prepared: Vec<u64> = spares.iter().map(|p| inode(p)).collect();
    // Three rolls: each takes a spare, none makes a file.
    let first = log.appended_seq() + 1;
    let mut last = 0;
    while log.segment_starts().len() < 4 {
        last = log.append(&write(last, 100_000)).await.unwrap();
    }
    log.sync_to(last).await.unwrap();
    let segments = list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap();
    assert!(segments[1..].iter().all(|(_, p)| prepared.contains(&inode(p))), "the rolls took prepared files");
    // 7 less the 3 taken, and one the closed segments outgrew: each ends
    // past 1 MiB by part of a record.
    assert_eq!(spares_in(dir.path()).len(), 3);
    assert_eq!(log.prepare_spare().unwrap(), Prepared::LogFull, "the log and its spares fill the capacity");
    drop(log);
    std::fs::write(dir.path().join("prepared-000042.zeroing"), [0u8; 4096]).unwrap();
    let (log, report) = open_preallocated(dir.path());
    assert!(report.cut.is_none(), "{:?}", report.cut);
    assert_eq!(spares_in(dir.path()).len(), 3, "spares are kept across a reopen");
    assert!(!dir.path().join("prepared-000042.zeroing").exists(), "a cut-short preparation is removed");
    assert_eq!(read_all(&log, first), (first..=last).collect::<Vec<_>>());
    assert_goes_on_after(&log, last).await;
}

/// Spares never take a log past its capacity on disk: a log that grows
/// past what its spares were counted in (segments pass their size by up
/// to a record) gives them up, and a reopen with a smaller capacity keeps
/// only what fits; a log that does not preallocate removes them.
#[tokio::test]
async fn spares_give_way_to_the_log_and_to_a_smaller_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open_preallocated(dir.path());
    prepare_all(&log);
    let mut last = 0;
    // Records of 900 KiB: each segment ends near 2 MiB long.
    for i in 0..6 {
        last = log.append(&write(i, 900 << 10)).await.unwrap();
    }
    log.sync_to(last).await.unwrap();
    let on_disk: u64 = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(on_disk <= (8 << 20) + (1 << 20), "{on_disk} bytes on disk for 8 MiB");
    drop(log);
    let smaller = LogSize { capacity_bytes: 6 << 20, ..PREALLOCATED };
    let (log, _) = ProtectedLog::open_on(LogEnv::real(), dir.path(), 1, smaller, 0, &mut |_| Ok(())).unwrap();
    let status = log.space_status();
    assert!(status.held_bytes + status.spare_bytes <= 6 << 20, "{status:?}");
    drop(log);
    let (_log, _) = open(dir.path(), 8 << 20);
    assert!(spares_in(dir.path()).is_empty(), "a log without preallocation removes its spares");
}

/// With `Preallocation::Background` the log's own thread makes the
/// spares, as the agent runs it.
#[tokio::test]
async fn a_background_log_makes_its_spares_itself() {
    let dir = tempfile::tempdir().unwrap();
    let size = LogSize { preallocation: Preallocation::Background, ..PREALLOCATED };
    let (log, _) = ProtectedLog::open_on(LogEnv::real(), dir.path(), 1, size, 0, &mut |_| Ok(())).unwrap();
    for _ in 0..200 {
        if log.space_status().spare_bytes == 7 << 20 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(log.space_status().spare_bytes, 7 << 20);
    assert_eq!(spares_in(dir.path()).len(), 7);
}

/// The logs of one process claim disk space one file at a time: each
/// checks the free space with the others' files made, so several VPGs on
/// one data disk cannot each take the same free space into its reserve.
#[tokio::test]
async fn logs_claim_the_disk_one_file_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open_preallocated(dir.path());
    let turn = super::prepare::disk_claim();
    let preparer = std::thread::spawn({
        let log = log.clone();
        move || log.prepare_spare().unwrap()
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    let made: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(
        !made.iter().any(|n| n.to_string_lossy().starts_with("prepared-")),
        "a spare was made while another log had the disk: {made:?}"
    );
    drop(turn);
    assert_eq!(preparer.join().unwrap(), Prepared::Made);
}

/// A record to `log` that ends its current segment exactly at its size.
fn filling_write(log: &ProtectedLog, i: u64) -> RecordBody {
    let in_current = {
        let inner = log.inner.lock().unwrap();
        inner.current.bytes
    };
    let need = (PREALLOCATED.segment_bytes - in_current) as usize;
    let overhead = encoded_bytes(&write(i, 0)).unwrap() as usize;
    write(i, need - overhead)
}

/// Records reserved and not yet written are not counted with the spares
/// (they go into the current segment or a spare, both counted): a roll
/// with writes in flight gives up no spare. Review finding of helper-34.
#[tokio::test]
async fn a_roll_with_writes_in_flight_keeps_its_spares() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open_preallocated(dir.path());
    assert_eq!(prepare_all(&log), 7);
    let in_flight = log.reserve_bytes(3 << 20).await.unwrap();
    let full = log.append(&filling_write(&log, 1)).await.unwrap();
    let next = log.append(&write(2, 4096)).await.unwrap();
    assert_eq!(log.segment_starts().len(), 2, "the segment was full at its size: one roll");
    assert_eq!(spares_in(dir.path()).len(), 6, "one spare taken, none given up");
    drop(in_flight);
    log.sync_to(next).await.unwrap();
    assert_eq!(read_all(&log, full), vec![full, next]);
}

/// A new stream keeps the old stream's files as spares when the log
/// preallocates, rather than removing them and zero-filling new ones.
/// Review finding of helper-34.
#[tokio::test]
async fn a_new_stream_keeps_the_old_files_as_spares() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open_preallocated(dir.path());
    prepare_all(&log);
    let mut last = 0;
    while log.segment_starts().len() < 4 {
        last = log.append(&write(last, 100_000)).await.unwrap();
    }
    log.sync_to(last).await.unwrap();
    let before: Vec<u64> =
        list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap().iter().map(|(_, p)| inode(p)).collect();
    let seq = log.start_stream(last + 1).unwrap();
    let spares: Vec<u64> = spares_in(dir.path()).iter().map(|p| inode(p)).collect();
    // All but what would pass the capacity: the old segments ended past
    // their size, and the new one's rest is counted.
    let kept = before.iter().filter(|i| spares.contains(i)).count();
    assert!(kept >= before.len() - 1, "{kept} of {} old segment files kept", before.len());
    assert_eq!(list_segments(dir.path(), SegmentKind::ProtectedLog).unwrap().len(), 1);
    let status = log.space_status();
    assert!(status.held_bytes + status.spare_bytes <= PREALLOCATED.capacity_bytes, "{status:?}");
    drop(log);
    let (log, report) = open_preallocated(dir.path());
    assert!(report.cut.is_none());
    assert_eq!(log.appended_seq(), seq);
}
