//! A full librdkafka queue. Without a spool, the request is refused from the first event the
//! queue did not take (`Refused::taken`); with one, the rest of a request the queue filled
//! half-way through is spooled, so that a request is taken whole or refused whole. Readiness
//! says so, and both clear by themselves once the broker catches up.

use std::time::Duration;

use kafka_producer::{Error, Health, NotReady};
use test_support::mock::Fault;

use super::{ids, Harness, Spooled, WAIT};

/// A tiny queue under a slow broker, no spool: `send_events` takes the first five events and refuses the
/// rest with `Refused { taken: 5, error: QueueFull }`; `status()` says QueueFull until the
/// broker acknowledges, then clears without intervention; exactly the taken events (and later
/// ones) are on the ingest topic, the refused ones nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_spool_a_full_queue_refuses_the_rest_of_the_request_and_clears_by_itself() {
    let h = Harness::start("queue_full", Spooled::No, |c| c.queue_max_messages = 5).await;
    let ingest = h.topics.ingest.clone();
    assert_eq!(h.metric("kafka_queue_max_messages"), 5.0);
    h.mock.inject(Fault::Rtt(1, Duration::from_secs(1)));

    let request = ids("request", 8);
    let refused = h
        .send(&request, false)
        .await
        .expect_err("8 events into a 5-record queue");
    assert_eq!(refused.taken, 5, "{:?}", refused.error);
    assert!(matches!(refused.error, Error::QueueFull), "{:?}", refused.error);
    let status = h.producer.status();
    assert!(status.queue_full, "{status:?}");
    assert_eq!(status.health, Health::Delivering);
    assert_eq!(status.not_ready(true), Some(NotReady::QueueFull));
    assert_eq!(status.not_ready(false), Some(NotReady::QueueFull));
    assert!(h.producer.in_flight() >= 5, "librdkafka holds the five taken");

    h.until("the queue drained and readiness back", WAIT, || {
        let status = h.producer.status();
        !status.queue_full && status.not_ready(true).is_none() && h.producer.in_flight() == 0
    })
    .await;
    h.mock.inject(Fault::Rtt(1, Duration::ZERO));
    let later = ids("later", 5);
    h.send(&later, false).await.unwrap();

    let (taken, not_taken) = request.split_at(5);
    let expected = [taken, &later].concat();
    let read = h.assert_on(&ingest, &expected).await;
    assert_eq!(read, expected, "the taken events, then the later ones, once each");
    assert!(!read.iter().any(|id| not_taken.contains(id)));
    assert_eq!(h.lost(), 0.0);
    assert_eq!(h.producer.health(), Health::Delivering);
    let closed = h.close(Duration::from_secs(5)).await;
    assert_eq!((closed.unflushed, closed.lost), (0, 0), "{closed:?}");
}

/// The same queue with a spool: the request the queue fills half-way through is taken whole
/// (five events in librdkafka, the other three spooled), later requests queue behind the
/// spooled ones, and every event lands once, in send order (one partition).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_spool_a_request_the_queue_fills_half_way_is_taken_whole_and_in_order() {
    let h = Harness::start("queue_spill", Spooled::Yes, |c| c.queue_max_messages = 5).await;
    let ingest = h.topics.ingest.clone();
    h.mock.inject(Fault::Rtt(1, Duration::from_secs(1)));

    let request = ids("request", 8);
    h.send(&request, false).await.expect("taken whole");
    assert_eq!(
        h.spool().records(),
        3,
        "the three the queue could not hold are spooled"
    );
    let later = ids("later", 5);
    h.send(&later, false).await.expect("spooled behind the backlog");
    h.mock.inject(Fault::Rtt(1, Duration::ZERO));

    let expected = [request, later].concat();
    let read = h.assert_on(&ingest, &expected).await;
    assert_eq!(read, expected, "every event once, in send order");
    h.until("the spool drained", WAIT, || h.spool().records() == 0)
        .await;
    assert_eq!(h.lost(), 0.0);
    let closed = h.close(Duration::from_secs(5)).await;
    assert_eq!((closed.unflushed, closed.lost), (0, 0), "{closed:?}");
}
