//! Kafka unreachable: `Delivering -> Unreachable` on a broker outage, the stall rebuild that
//! moves what librdkafka held to the spool, the way back on a probe (`Unreachable ->
//! Delivering`) and the drain; and acked mode, which never spools.

use std::time::{Duration, Instant};

use kafka_producer::{Error, Health, NotReady, Why};
use test_support::mock::Fault;

use super::{duplicates, ids, Harness, Spooled, WAIT};

/// An outage longer than the message timeout: events sent while up are delivered; what
/// librdkafka held when the broker went down moves to the spool (stall, rebuild); events sent
/// while down are spooled; after the broker is back everything is drained to the ingest topic,
/// the spool is empty and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_past_the_message_timeout_spools_then_drains_everything() {
    let message_timeout = Duration::from_secs(2);
    let h = Harness::start("outage", Spooled::Yes, |c| {
        c.message_timeout = message_timeout;
        c.ack_window = Duration::from_secs(1);
    })
    .await;
    let ingest = h.topics.ingest.clone();

    let before = ids("before", 5);
    h.send(&before, false).await.unwrap();
    h.assert_on(&ingest, &before).await;
    h.until("the first events acknowledged", WAIT, || {
        h.producer.in_flight() == 0
    })
    .await;
    assert_eq!(h.producer.health(), Health::Delivering);

    // A hung broker first, so that the next events are surely held by librdkafka (not yet
    // acknowledged) when the broker goes down.
    h.mock.inject(Fault::Rtt(1, Duration::from_secs(30)));
    let held = ids("held", 5);
    h.send(&held, false).await.unwrap();
    assert_eq!(h.spool().records(), 0, "Kafka was delivering: nothing is spooled");
    assert!(
        h.producer.in_flight() >= held.len(),
        "librdkafka holds the events"
    );
    h.mock.inject(Fault::BrokerDown(1));
    let down_at = Instant::now();

    // Past the ack window the held records are a stall: the producer is replaced and what it
    // held comes back, to the spool (Kafka is not delivering).
    h.until("the held records moved to the spool", WAIT, || {
        matches!(h.producer.health(), Health::Unreachable(_))
            && h.spool().records() == held.len() as u64
            && h.producer.in_flight() == 0
    })
    .await;
    assert_eq!(h.rebuilds(), 1.0, "one stall, one rebuild; {}", h.describe());

    // The outage outlasts the message timeout; events sent now go to the spool at once.
    h.until("the outage outlasts the message timeout", WAIT, || {
        down_at.elapsed() > message_timeout + Duration::from_millis(500)
    })
    .await;
    assert!(
        matches!(h.producer.health(), Health::Unreachable(_)),
        "{}",
        h.describe()
    );
    let status = h.producer.status();
    assert_eq!(
        status.not_ready(true),
        None,
        "buffered mode: the spool takes events"
    );
    assert!(
        matches!(status.not_ready(false), Some(NotReady::Unreachable(_))),
        "acked mode: not ready; {status:?}"
    );
    let down = ids("down", 10);
    h.send(&down, false).await.unwrap();
    assert_eq!(h.spool().records(), (held.len() + down.len()) as u64);
    assert_eq!(h.producer.in_flight(), 0, "nothing new went to librdkafka");

    h.mock.inject(Fault::Rtt(1, Duration::ZERO));
    h.mock.inject(Fault::BrokerUp(1));
    h.until("delivering again with an empty spool", WAIT, || {
        h.producer.health() == Health::Delivering && h.spool().is_empty()
    })
    .await;
    assert_eq!(h.producer.status().not_ready(false), None);

    // Back to Kafka directly.
    let after = ids("after", 3);
    h.send(&after, false).await.unwrap();
    assert_eq!(
        h.spool().records(),
        0,
        "delivering, no backlog: nothing is spooled"
    );

    let all: Vec<String> = [before, held.clone(), down, after].concat();
    let read = h.assert_on(&ingest, &all).await;
    // A record the hung broker wrote before it went down is also spooled: a duplicate, never a
    // gap. Nothing else may be repeated.
    assert!(duplicates(&read) <= held.len(), "{read:?}");
    assert!(
        h.metric("spool_drained_total") >= (all.len() - 8) as f64,
        "{}",
        h.describe()
    );
    assert_eq!(h.lost(), 0.0, "{}", h.describe());
    let closed = h.close(Duration::from_secs(5)).await;
    assert_eq!((closed.unflushed, closed.lost), (0, 0), "{closed:?}");
}

/// Acked mode while Kafka is unreachable: the request is refused at once with
/// `Error::Unavailable` and nothing is spooled; once the broker is back it is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_events_are_refused_not_spooled_while_unreachable() {
    let h = Harness::start("acked_unreachable", Spooled::Yes, |_| {}).await;
    let ingest = h.topics.ingest.clone();
    h.mock.inject(Fault::BrokerDown(1));
    h.until("Kafka unreachable", WAIT, || {
        h.producer.health() == Health::Unreachable(Why::BrokersDown)
    })
    .await;
    let status = h.producer.status();
    assert_eq!(
        status.not_ready(false),
        Some(NotReady::Unreachable(Why::BrokersDown)),
        "{status:?}"
    );
    assert_eq!(status.not_ready(true), None, "{status:?}");

    let refused = ids("refused", 3);
    let started = Instant::now();
    let error = h
        .send(&refused, true)
        .await
        .expect_err("acked events while unreachable");
    assert!(started.elapsed() < Duration::from_secs(1), "refused at once");
    assert_eq!(error.taken, 0);
    assert!(matches!(error.error, Error::Unavailable), "{:?}", error.error);
    assert_eq!(h.spool().records(), 0, "acked events are never spooled");
    assert_eq!(h.producer.in_flight(), 0);

    h.mock.inject(Fault::BrokerUp(1));
    h.until("delivering again", WAIT, || {
        h.producer.health() == Health::Delivering
    })
    .await;
    // An acked client retries a refused request (503). Right after an outage librdkafka can
    // report all brokers down once more (seen in CI), and the producer is then replaced,
    // refusing what it held: refused whole (taken 0), never lost, and the retry delivers it.
    let acked = ids("acked", 2);
    let deadline = Instant::now() + WAIT;
    while let Err(refused) = h.send(&acked, true).await {
        assert!(
            refused.taken == 0 && Instant::now() < deadline,
            "{refused:?}; {}",
            h.describe()
        );
        h.until("delivering again", WAIT, || {
            h.producer.health() == Health::Delivering
        })
        .await;
    }
    let read = h.assert_on(&ingest, &acked).await;
    assert!(
        !read.iter().any(|id| refused.contains(id)),
        "a refused event was produced: {read:?}"
    );
    assert_eq!(h.spool().records(), 0);
    assert_eq!(h.lost(), 0.0);
    h.close(Duration::from_secs(5)).await;
}
