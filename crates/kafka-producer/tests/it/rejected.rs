//! Records Kafka refuses for good (permanent errors): routed to the DLQ as
//! `delivery_rejected`, never to the retry topic or the spool, and the producer stays
//! `Delivering`.

use std::time::Duration;

use event_model::DlqReason;
use kafka_producer::Health;
use rdkafka::types::RDKafkaRespErr;
use test_support::consume_from;
use test_support::mock::Fault;

use super::{ids, message_id, Harness, Spooled, SOURCE, WORKSPACE};

/// The DLQ reason of a record Kafka refused for good.
const DELIVERY_REJECTED: &str = "delivery_rejected";

/// Injects `error` on the next produce request, sends one event, and checks it ends on the DLQ
/// (only there) while a later event reaches the ingest topic.
async fn rejected_by_the_broker(h: &Harness, error: RDKafkaRespErr) {
    h.mock.inject(Fault::ProduceErrorsN(error, 1));
    let rejected = ids("rejected", 1);
    h.send(&rejected, false).await.unwrap();

    let dlq = h.read(&h.topics.dlq, &rejected).await;
    assert_eq!(dlq.len(), 1, "{dlq:?}; {}", h.describe());
    let record = &dlq[0];
    assert_eq!(message_id(record), rejected[0]);
    assert_eq!(DlqReason::DeliveryRejected.as_str(), DELIVERY_REJECTED);
    assert_eq!(record.header("reason"), Some(DELIVERY_REJECTED), "{record:?}");
    assert_eq!(record.key.as_deref(), Some(WORKSPACE));
    let envelope = record.json();
    assert_eq!(envelope["reason"], DELIVERY_REJECTED);
    assert_eq!(envelope["workspace_id"], WORKSPACE);
    assert_eq!(envelope["source_id"], SOURCE);
    let raw = envelope["raw_payload"].as_str().unwrap();
    assert!(
        raw.contains(&rejected[0]),
        "the raw payload is the record's value: {raw}"
    );

    // A later event is delivered, and is the only record on the ingest topic (one partition:
    // the rejected one would come before it).
    let later = ids("later", 1);
    h.send_once_taken(&later).await;
    let read = h.assert_on(&h.topics.ingest, &later).await;
    assert_eq!(read, later, "the rejected record is not on the ingest topic");
    h.until("every record reported", super::WAIT, || {
        h.producer.in_flight() == 0
    })
    .await;
    let retried = format!("kafka_delivered_total{{topic=\"{}\"}}", h.topics.retry);
    assert_eq!(
        h.metric(&retried),
        0.0,
        "nothing on the retry topic; {}",
        h.describe()
    );
    if let Some(spool) = h.producer.spool() {
        assert_eq!(spool.records(), 0, "nothing spooled");
    }
    assert_eq!(
        h.metric("kafka_rescued_total{to=\"dlq\"}"),
        1.0,
        "{}",
        h.describe()
    );
    assert_eq!(h.lost(), 0.0);
    assert_eq!(h.rebuilds(), 0.0);
    assert_eq!(h.producer.health(), Health::Delivering);
    assert_eq!(h.producer.status().not_ready(false), None);
    let closed = h.close(Duration::from_secs(5)).await;
    assert_eq!((closed.unflushed, closed.lost), (0, 0), "{closed:?}");
}

/// A record the broker refuses as too large (`MSG_SIZE_TOO_LARGE` on its produce request) ends
/// on the DLQ with header `reason=delivery_rejected`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_goes_to_the_dlq() {
    let h = Harness::start("too_large", Spooled::No, |_| {}).await;
    rejected_by_the_broker(&h, RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE).await;
}

/// A record the broker refuses as not authorised (`TOPIC_AUTHORIZATION_FAILED` on its produce
/// request) ends on the DLQ, not in the spool the producer has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_error_goes_to_the_dlq() {
    let h = Harness::start("unauthorized", Spooled::Yes, |_| {}).await;
    rejected_by_the_broker(&h, RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED).await;
}

/// A record refused for good by the ingest topic and then by the DLQ (its copy too large for
/// it, say) is the end of the line: counted lost once, with nothing spooled to come round
/// again. The loop this replaced (DLQ copy refused → spool → drainer → refused → ...) ran
/// about 185 times a second; here the counts say it ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_dlq_refuses_too_is_counted_lost_once_and_not_spooled() {
    let h = Harness::start("poison", Spooled::Yes, |_| {}).await;
    // The ingest record's produce request, then its DLQ copy's.
    let too_large = RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE;
    h.mock.inject(Fault::ProduceErrorsN(too_large, 2));
    let poison = ids("poison", 1);
    h.send(&poison, false).await.unwrap();
    h.until("the poison record counted lost", super::WAIT, || h.lost() == 1.0)
        .await;
    h.settled().await;

    let later = ids("later", 1);
    h.send_once_taken(&later).await;
    let read = h.assert_on(&h.topics.ingest, &later).await;
    assert_eq!(read, later, "the poison record never reached the ingest topic");
    h.settled().await;
    assert_eq!(h.lost(), 1.0, "lost once; {}", h.describe());
    assert_eq!(
        h.metric("kafka_rescued_total{to=\"dlq\"}"),
        1.0,
        "{}",
        h.describe()
    );
    assert_eq!(
        h.metric("spool_appended_total{from=\"rescue\"}"),
        0.0,
        "{}",
        h.describe()
    );
    assert_eq!(h.spool().records(), 0, "nothing spooled; {}", h.describe());
    let dlq = consume_from(
        h.mock.bootstrap.as_str(),
        &h.topics.dlq,
        1,
        Duration::from_secs(2),
    )
    .await;
    assert!(dlq.is_empty(), "{dlq:?}");
    assert_eq!(h.rebuilds(), 0.0);
    assert_eq!(h.producer.health(), Health::Delivering);
    h.close(Duration::from_secs(5)).await;
}
