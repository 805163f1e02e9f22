//! Replacing the librdkafka producer: `Delivering -> Rebuilding(Fatal)` on a fatal idempotence
//! error and `Delivering -> Rebuilding(Failing)` when every record fails with errors a retry
//! could fix; both back to `Delivering` with the new producer, and what the old one held sent
//! again.

use std::time::{Duration, Instant};

use kafka_producer::Health;
use rdkafka::types::RDKafkaRespErr;
use test_support::mock::{Fault, ONE_IN_FLIGHT};

use super::{ids, Harness, Spooled, WAIT};

/// A fatal error that every new producer hits (a sequence error on every produce request for
/// 10 s) does not become a rebuild loop: the first replacement at once, then 1 s, 2 s, 4 s, 8 s
/// apart; events go to the spool meanwhile (taken, readiness 503 while replacing), and once the
/// fault is gone every event lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_errors_again_and_again_back_off_instead_of_looping() {
    let h = Harness::start("fatal_loop", Spooled::Yes, |_| {}).await;
    h.mock.inject(Fault::ProduceErrorsN(
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
        100_000,
    ));
    let started = Instant::now();
    let mut sent = Vec::new();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(10) {
        let batch = ids(&format!("loop-{n:03}"), 2);
        h.send(&batch, false)
            .await
            .unwrap_or_else(|refused| panic!("refused: {refused:?}"));
        sent.extend(batch);
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await; // the load's pace
    }
    let rebuilds = h.rebuilds();
    eprintln!(
        "{rebuilds} rebuilds in {:?} of a fatal error every producer hits",
        started.elapsed()
    );
    // Due at 0, 1, 3, 7 s (then 15 s): four in ten seconds; a loop would be dozens.
    assert!(
        (2.0..=5.0).contains(&rebuilds),
        "{rebuilds} rebuilds; {}",
        h.describe()
    );
    h.mock.inject(Fault::ClearProduceErrors);
    h.until("delivering again", Duration::from_secs(30), || {
        h.producer.health() == Health::Delivering
    })
    .await;
    h.until("the spool drained", WAIT, || h.spool().is_empty()).await;
    h.settled().await;
    h.assert_on_ingest_or_retry(&sent).await;
    assert_eq!(h.lost(), 0.0, "{}", h.describe());
}

/// A fatal error (a sequence error on one produce request makes the idempotent producer
/// fatal): the producer is rebuilt once, and every record, those it held included, is
/// delivered to the ingest topic (no spool: they are sent again on the new producer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_error_rebuilds_the_producer_and_every_record_is_delivered() {
    let h = Harness::start("fatal", Spooled::No, |_| {}).await;
    let ingest = h.topics.ingest.clone();
    let before = ids("before", 5);
    h.send(&before, false).await.unwrap();
    h.assert_on(&ingest, &before).await;

    h.mock.inject(Fault::ProduceErrorsN(
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
        1,
    ));
    let fatal = ids("fatal", 20);
    h.send(&fatal, false).await.unwrap();
    h.until("the producer replaced and delivering", WAIT, || {
        h.rebuilds() >= 1.0 && h.producer.health() == Health::Delivering
    })
    .await;
    assert_eq!(h.producer.status().not_ready(false), None);
    let after = ids("after", 5);
    h.send(&after, false).await.unwrap();

    h.settled().await;
    h.assert_on(&ingest, &[before, after].concat()).await;
    // The records of the request that hit the sequence error fail with it (a transient
    // error): the retry topic. Those librdkafka still queued fail as purged: the ingest topic.
    let retried = h.assert_on_ingest_or_retry(&fatal).await;
    eprintln!(
        "{} of the {} records held at the fatal error went to the retry topic",
        retried.len(),
        fatal.len()
    );
    assert_eq!(
        h.rebuilds(),
        1.0,
        "one fatal error, one rebuild; {}",
        h.describe()
    );
    assert_eq!(h.lost(), 0.0, "{}", h.describe());
    assert_eq!(h.producer.health(), Health::Delivering);
    let closed = h.close(Duration::from_secs(5)).await;
    assert_eq!((closed.unflushed, closed.lost), (0, 0), "{closed:?}");
}

/// Produce requests that fail for longer than `failing_rebuild_after` with a retriable error
/// (`NOT_ENOUGH_REPLICAS`, until the message timeout): one rebuild for the episode however
/// many records failed, and every record ends on the ingest or retry topic (via the spool when
/// its rescue failed too), none lost.
///
/// The errors stop once the producer was replaced, so that the episode ends well inside the
/// next `failing_rebuild_after` however slowly the machine runs (left to run out by count, a
/// loaded machine stretched it into a second rebuild). One produce request is kept in flight:
/// see [`test_support::mock::ONE_IN_FLIGHT`] for what the mock cluster would otherwise count
/// delivered without storing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_failing_for_a_while_rebuild_the_producer_once() {
    let h = Harness::start("failing", Spooled::Yes, |c| {
        c.message_timeout = Duration::from_secs(1);
        c.failing_rebuild_after = Duration::from_secs(2);
        c.kafka.options.push(ONE_IN_FLIGHT.into());
    })
    .await;
    let ingest = h.topics.ingest.clone();
    let before = ids("before", 3);
    h.send(&before, false).await.unwrap();
    h.assert_on(&ingest, &before).await;
    h.until("the first events acknowledged", WAIT, || {
        h.producer.in_flight() == 0
    })
    .await;
    let delivered = format!("kafka_delivered_total{{topic=\"{ingest}\"}}");
    let acked_before = h.metric(&delivered);

    // Every produce request fails until the errors are cleared (far more than the episode
    // can send).
    h.mock.inject(Fault::ProduceErrorsN(
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        100_000,
    ));
    // One event every 100 ms until the producer was replaced (then the errors stop) and
    // acknowledges again.
    let started = Instant::now();
    let mut failing = Vec::new();
    let mut rebuilt_at = None;
    while h.metric(&delivered) == acked_before || rebuilt_at.is_none() {
        assert!(
            started.elapsed() < WAIT,
            "no rebuild, or no acknowledgement after it; {}",
            h.describe()
        );
        let id = format!("failing-{}", failing.len());
        h.send(std::slice::from_ref(&id), false).await.unwrap();
        failing.push(id);
        if rebuilt_at.is_none() && h.rebuilds() >= 1.0 {
            rebuilt_at = Some(started.elapsed());
            h.mock.inject(Fault::ClearProduceErrors);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{} events sent; rebuilt after {rebuilt_at:?}, acknowledging again after {:?}",
        failing.len(),
        started.elapsed()
    );
    h.until("the episode over: delivering, spool drained", WAIT, || {
        h.producer.health() == Health::Delivering
            && h.spool().is_empty()
            && h.producer.in_flight() == 0
            && h.metric("kafka_rescue_pending_records") == 0.0
    })
    .await;

    // Many records failed, one rebuild.
    let failures = h.metric(&format!("kafka_delivery_failures_total{{topic=\"{ingest}\"}}"));
    assert!(failures >= 5.0, "only {failures} failures; {}", h.describe());
    assert_eq!(
        h.rebuilds(),
        1.0,
        "one failing episode, one rebuild; {}",
        h.describe()
    );

    // Every record is on the ingest topic or the retry topic.
    let all = [before, failing].concat();
    h.assert_on_ingest_or_retry(&all).await;
    let rescued =
        h.metric("kafka_rescued_total{to=\"retry\"}") + h.metric("spool_appended_total{from=\"rescue\"}");
    assert!(
        rescued > 0.0,
        "no record was rescued: the test proves nothing; {}",
        h.describe()
    );
    assert_eq!(h.lost(), 0.0, "{}", h.describe());
    let closed = h.close(Duration::from_secs(5)).await;
    assert_eq!((closed.unflushed, closed.lost), (0, 0), "{closed:?}");
}
