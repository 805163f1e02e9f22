//! Closing with records in flight: `* -> Closed`; what librdkafka still holds goes to the
//! spool, or, without one, is counted lost.

use std::collections::BTreeSet;
use std::time::Duration;

use kafka_producer::spool::{self, Spool};
use kafka_producer::{Error, Health, NotReady};
use test_support::mock::Fault;

use super::{event, ids, Harness, Spooled, SOURCE, WORKSPACE};

/// `close(Duration::ZERO)` under a slow broker: every unacknowledged record is spooled
/// (`Closed { spooled, .. }` says how many, none lost), and reopening the spool directory
/// shows exactly those records; later sends are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_with_records_in_flight_spools_them() {
    let h = Harness::start("close_spool", Spooled::Yes, |_| {}).await;
    h.mock.inject(Fault::Rtt(1, Duration::from_secs(3)));
    let held = ids("held", 10);
    h.send(&held, false).await.unwrap();
    assert!(h.producer.in_flight() >= held.len());
    assert_eq!(h.spool().records(), 0);

    let closed = h.close(Duration::ZERO).await;
    // (`unflushed` counts what librdkafka's out-queue holds, events as well as records.)
    assert!(closed.unflushed >= held.len(), "{closed:?}");
    assert_eq!(
        (closed.spooled, closed.lost),
        (held.len() as u64, 0),
        "{closed:?}"
    );
    assert_eq!(h.producer.health(), Health::Closed);
    assert_eq!(h.producer.status().not_ready(true), Some(NotReady::Closed));
    assert_eq!(h.spool().records(), held.len() as u64);
    assert_eq!(
        h.metric("spool_appended_total{from=\"rescue\"}"),
        held.len() as f64
    );
    assert_eq!(h.lost(), 0.0);

    // A new process finds them.
    let Harness {
        producer, spool_dir, ..
    } = h;
    let refused = producer
        .send_events(&[event("late-0")], WORKSPACE, SOURCE, false)
        .await
        .expect_err("closed");
    drop(producer);
    let dir = spool_dir.unwrap();
    let reopened = Spool::open(dir.path(), spool::Options::default()).unwrap();
    assert_eq!(reopened.records(), held.len() as u64);
    let mut found = BTreeSet::new();
    for segment in reopened.take_all() {
        found.extend(segment.read().unwrap().into_iter().map(|r| r.message_id));
    }
    assert_eq!(found, held.iter().cloned().collect::<BTreeSet<_>>());
    assert!(
        matches!(refused.error, Error::Unavailable),
        "a send after close: {:?}",
        refused.error
    );
}

/// The same close without a spool: every unacknowledged record is counted in
/// `<prefix>_kafka_records_lost_total` and in `Closed::lost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_with_records_in_flight_without_a_spool_counts_them_lost() {
    let h = Harness::start("close_lost", Spooled::No, |_| {}).await;
    h.mock.inject(Fault::Rtt(1, Duration::from_secs(3)));
    let held = ids("held", 10);
    h.send(&held, false).await.unwrap();
    assert!(h.producer.in_flight() >= held.len());

    let closed = h.close(Duration::ZERO).await;
    assert!(closed.unflushed >= held.len(), "{closed:?}");
    assert_eq!(
        (closed.spooled, closed.lost),
        (0, held.len() as u64),
        "{closed:?}"
    );
    assert_eq!(h.lost(), held.len() as f64);
    assert_eq!(h.producer.health(), Health::Closed);
}
