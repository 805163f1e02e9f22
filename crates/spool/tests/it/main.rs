//! The spool through its public API, on a real directory: append, reopen after a crash,
//! torn and corrupt tails, the cap, draining segment by segment.

use std::time::Duration;

use proptest::prelude::*;
use spool::{Error, Options, Record, Spool};

fn record(i: usize, size: usize) -> Record {
    Record {
        message_id: format!("m-{i}"),
        key: format!("visitor-{}", i % 7).into_bytes(),
        headers: vec![
            ("workspace_id".into(), b"ws".to_vec()),
            ("type".into(), b"track".to_vec()),
        ],
        value: vec![b'x'; size],
        topic: String::new(),
    }
}

fn options(max_bytes: u64, segment_bytes: u64) -> Options {
    Options {
        max_bytes,
        segment_bytes,
        fsync_interval: Duration::from_millis(10),
    }
}

/// Segment files in `dir`.
fn segments(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "spool")
        })
        .count()
}

/// Takes, reads and removes every segment: the records in drain order.
fn drain(spool: &Spool) -> Vec<Record> {
    let mut out = Vec::new();
    while let Some(segment) = spool.take_segment().unwrap() {
        let records = segment.read().unwrap();
        assert_eq!(records.len() as u64, segment.records());
        out.extend(records);
        spool.remove(&segment).unwrap();
    }
    assert!(spool.is_empty());
    assert_eq!(spool.bytes(), 0);
    out
}

#[test]
fn records_come_back_in_append_order_across_segments_and_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let written: Vec<Record> = (0..300).map(|i| record(i, 100 + i)).collect();
    {
        let spool = Spool::open(dir.path(), options(1 << 20, 4096)).unwrap();
        for r in &written {
            spool.append(r).unwrap();
        }
        assert_eq!(spool.records(), 300);
        // Dropped without a sync or seal, as a killed process would leave it.
    }
    let files = segments(dir.path());
    assert!(
        files > 10,
        "only {files} segments for 300 records of 4 KiB segments"
    );
    let spool = Spool::open(dir.path(), options(1 << 20, 4096)).unwrap();
    assert_eq!(spool.records(), 300, "recovered count");
    // New appends go after the recovered ones.
    spool.append(&record(300, 10)).unwrap();
    let drained = drain(&spool);
    assert_eq!(drained[..300], written[..]);
    assert_eq!(drained[300], record(300, 10));
    assert_eq!(segments(dir.path()), 0, "drained segments are deleted");
}

#[test]
fn a_torn_or_corrupt_tail_is_cut_off_and_the_rest_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = Spool::open(dir.path(), options(1 << 20, 1 << 20)).unwrap();
        for i in 0..10 {
            spool.append(&record(i, 50)).unwrap();
        }
        spool.sync().unwrap();
    }
    let segment = dir.path().join(format!("{:020}.spool", 0));
    let full = std::fs::read(&segment).unwrap();
    // A crash mid-write: the last frame is half there.
    std::fs::write(&segment, &full[..full.len() - 20]).unwrap();
    let spool = Spool::open(dir.path(), options(1 << 20, 1 << 20)).unwrap();
    assert_eq!(spool.records(), 9);
    assert!(
        dir.path().join(format!("{:020}.spool.corrupt", 0)).exists(),
        "the damaged segment is kept for inspection"
    );
    drop(spool);
    // A flipped bit in the 5th record: it and everything after it in the segment are cut.
    let data = std::fs::read(&segment).unwrap();
    let frame = data.len() / 9;
    let mut corrupt = data.clone();
    corrupt[4 * frame + 30] ^= 1;
    std::fs::write(&segment, &corrupt).unwrap();
    let spool = Spool::open(dir.path(), options(1 << 20, 1 << 20)).unwrap();
    let drained = drain(&spool);
    assert_eq!(drained, (0..4).map(|i| record(i, 50)).collect::<Vec<_>>());
}

#[test]
fn appends_over_the_cap_fail_with_full_until_a_segment_is_drained() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), options(10_000, 2_000)).unwrap();
    let mut appended = 0;
    let error = loop {
        match spool.append(&record(appended, 500)) {
            Ok(()) => appended += 1,
            Err(error) => break error,
        }
    };
    assert!(matches!(error, Error::Full { cap: 10_000 }), "{error}");
    assert_eq!(error.to_string(), "the local spool is full (10000 bytes)");
    assert!(spool.bytes() <= 10_000);
    assert!(
        (15..20).contains(&appended),
        "{appended} records of ~560 bytes under 10 000"
    );
    let segment = spool.take_segment().unwrap().unwrap();
    spool.remove(&segment).unwrap();
    spool.append(&record(appended, 500)).unwrap();
}

#[test]
fn a_segment_is_offered_again_until_removed() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), options(1 << 20, 1 << 20)).unwrap();
    assert_eq!(spool.take_segment().unwrap(), None);
    spool.append(&record(0, 10)).unwrap();
    let first = spool.take_segment().unwrap().unwrap();
    // Appends after the seal go to a new segment; the sealed one is offered until removed.
    spool.append(&record(1, 10)).unwrap();
    assert_eq!(spool.take_segment().unwrap().as_ref(), Some(&first));
    spool.remove(&first).unwrap();
    let second = spool.take_segment().unwrap().unwrap();
    assert_eq!(second.read().unwrap(), vec![record(1, 10)]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn any_records_round_trip_through_disk(
        records in prop::collection::vec(
            (".{0,20}", prop::collection::vec(any::<u8>(), 0..40),
             prop::collection::vec((".{0,10}", prop::collection::vec(any::<u8>(), 0..20)), 0..4),
             prop::collection::vec(any::<u8>(), 0..300), "(|dlq|[a-z]{1,8})"),
            0..40),
        garbage in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let records: Vec<Record> = records
            .into_iter()
            .map(|(message_id, key, headers, value, topic)| Record { message_id, key, headers, value, topic })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path(), options(1 << 24, 1024)).unwrap();
            for r in &records {
                spool.append(r).unwrap();
            }
        }
        // Garbage after the last frame (a torn write) never costs a complete record.
        if let Some(last) = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "spool")).max() {
            let mut data = std::fs::read(&last).unwrap();
            data.extend_from_slice(&garbage);
            std::fs::write(&last, data).unwrap();
        }
        let spool = Spool::open(dir.path(), options(1 << 24, 1024)).unwrap();
        prop_assert_eq!(drain(&spool), records);
    }
}

#[test]
fn a_second_process_cannot_open_the_same_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Spool::open(dir.path(), Options::default()).unwrap();
    let error = Spool::open(dir.path(), Options::default()).err().unwrap();
    assert!(matches!(error, Error::Locked(_)), "{error}");
    assert!(error.to_string().contains("in use by another process"), "{error}");
}

/// The segment files in `dir`, sorted.
fn segment_paths(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "spool"))
        .collect();
    paths.sort();
    paths
}

/// Makes a segment unreadable whatever the user (root reads a file without permissions): a
/// directory in its place.
fn make_unreadable(path: &std::path::Path) {
    std::fs::remove_file(path).unwrap();
    std::fs::create_dir(path).unwrap();
}

/// A segment that cannot be read at start is moved aside (`.spool.unreadable`) and named; the
/// spool opens with the others, which drain in order.
#[test]
fn a_start_with_an_unreadable_segment_sets_it_aside_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let written: Vec<Record> = (0..60).map(|i| record(i, 200)).collect();
    {
        let spool = Spool::open(dir.path(), options(1 << 20, 4096)).unwrap();
        for r in &written {
            spool.append(r).unwrap();
        }
    }
    let paths = segment_paths(dir.path());
    assert!(paths.len() >= 3, "{paths:?}");
    make_unreadable(&paths[1]);
    let spool = Spool::open(dir.path(), options(1 << 20, 4096)).unwrap();
    let aside = spool.set_aside_at_open();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(
        aside[0].path.to_string_lossy().ends_with(".spool.unreadable"),
        "{aside:?}"
    );
    assert!(aside[0].path.exists());
    let drained = drain(&spool);
    let ids: Vec<&str> = drained.iter().map(|r| r.message_id.as_str()).collect();
    assert!(ids.contains(&"m-0") && ids.contains(&"m-59"), "{ids:?}");
    assert!(
        drained.len() < written.len(),
        "the unreadable segment's records are not drained"
    );
    assert!(drained.windows(2).all(|w| w[0].message_id != w[1].message_id));
}

/// A segment that becomes unreadable while the process runs is taken out of the spool by
/// `set_aside` (its records leave the count); the segments after it drain.
#[test]
fn a_segment_set_aside_while_running_leaves_the_count_and_the_rest_drains() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), options(1 << 20, 4096)).unwrap();
    for i in 0..60 {
        spool.append(&record(i, 200)).unwrap();
    }
    let first = spool.take_segment().unwrap().unwrap();
    make_unreadable(first.path());
    let error = first.read().unwrap_err();
    let aside = spool.set_aside(&first, &error).expect("in the spool");
    assert!(
        aside.path.to_string_lossy().ends_with(".spool.unreadable"),
        "{aside:?}"
    );
    assert_eq!(spool.records(), 60 - first.records());
    let drained = drain(&spool);
    assert_eq!(drained.len() as u64, 60 - first.records());
    assert_eq!(drained.last().unwrap().message_id, "m-59");
}

/// The spool directory deleted under a running spool: the next look (`check_dir`, before each
/// batch of appends) says how many records went with it, re-creates the directory with a new
/// lock, and appends go on there.
#[test]
fn a_deleted_directory_is_detected_its_records_counted_and_appends_go_on() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("spool");
    let spool = Spool::open(&dir, options(1 << 20, 4096)).unwrap();
    assert_eq!(spool.check_dir().unwrap(), None, "the directory opened");
    for i in 0..40 {
        spool.append(&record(i, 200)).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(spool.check_dir().unwrap(), Some(40));
    assert!(
        dir.join("lock").exists(),
        "the directory and its lock are re-created"
    );
    assert_eq!((spool.records(), spool.bytes()), (0, 0));
    spool.append(&record(40, 200)).unwrap();
    assert_eq!(spool.check_dir().unwrap(), None);
    let drained = drain(&spool);
    assert_eq!(drained.len(), 1);
    assert_eq!(drained[0].message_id, "m-40");
    // Another process cannot take the re-created directory.
    assert!(matches!(
        Spool::open(&dir, options(1 << 20, 4096)),
        Err(Error::Locked(_))
    ));
}
