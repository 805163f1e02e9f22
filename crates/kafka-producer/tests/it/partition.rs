//! One partition failing is not Kafka failing: the other partitions keep delivering.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use event_model::{Accepted, EventType};
use test_support::mock::{mock_topics, Fault, Mock};

use super::{message_id, Harness, Spooled, SOURCE, WORKSPACE};

/// An event of one of 24 visitors.
fn visit(n: usize) -> Accepted {
    let id = format!("p-{n:05}");
    Accepted {
        value: serde_json::to_vec(&serde_json::json!({"message_id": id, "type": "track", "event": "e"}))
            .unwrap(),
        message_id: id,
        event_type: EventType::Track,
        key: format!("visitor-{}", n % 24),
    }
}

/// Three brokers, partition p of the ingest topic led by broker p + 1; broker 3 down for five
/// ack windows under steady traffic over 24 visitors. The producer stays `Delivering` (no
/// rebuild, no event refused or spooled), partitions 0 and 1 are acknowledged throughout, the
/// status and `kafka_partitions_failing` name partition 2; once its leader is back every
/// record lands once, each visitor's in the order sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_partition_without_its_leader_leaves_the_others_delivering() {
    let topics = mock_topics();
    let mock = Mock::start_spread(&topics);
    let h = Harness::start_on(mock, topics, "partition_down", Spooled::Yes, |c| {
        c.ack_window = Duration::from_secs(2);
    })
    .await;
    let delivered = || h.metric(&format!("kafka_delivered_total{{topic=\"{}\"}}", h.topics.ingest));
    let failing = || {
        h.metric(&format!(
            "kafka_partitions_failing{{topic=\"{}\"}}",
            h.topics.ingest
        ))
    };
    let mut sent = 0usize;
    let send_for = |sent: &mut usize, length: Duration| {
        let producer = h.producer.clone();
        let start = *sent;
        async move {
            let until = Instant::now() + length;
            let mut n = start;
            while Instant::now() < until {
                producer
                    .send_events(&[visit(n)], WORKSPACE, SOURCE, false)
                    .await
                    .unwrap_or_else(|refused| panic!("event {n} refused: {refused:?}"));
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await; // the load's pace
            }
            n
        }
    };
    sent = send_for(&mut sent, Duration::from_secs(1)).await;
    h.mock.inject(Fault::BrokerDown(3));
    let down_at = Instant::now();
    // Two windows in: the fault is named, and what was stuck since did not stall the producer.
    sent = send_for(&mut sent, Duration::from_secs(4)).await;
    h.until("partition 2 named as failing", Duration::from_secs(5), || {
        h.producer.status().failing_partitions == [format!("{}/2", h.topics.ingest)]
    })
    .await;
    assert_eq!(failing(), 1.0, "{}", h.describe());
    let (delivered_before, sent_before) = (delivered(), sent);
    sent = send_for(&mut sent, Duration::from_secs(6)).await;
    let healthy_acked = delivered() - delivered_before;
    let fault = down_at.elapsed();
    assert!(
        healthy_acked >= (sent - sent_before) as f64 / 3.0,
        "{healthy_acked} acknowledged of {} sent in the fault's last 6 s: {}",
        sent - sent_before,
        h.describe()
    );
    assert!(h.producer.health().is_delivering(), "{}", h.describe());
    assert!(h.spool().is_empty(), "events spooled: {}", h.describe());
    h.mock.inject(Fault::BrokerUp(3));
    sent = send_for(&mut sent, Duration::from_secs(1)).await;
    h.until("every partition led again", Duration::from_secs(15), || {
        h.producer.status().failing_partitions.is_empty()
    })
    .await;
    assert_eq!(failing(), 0.0, "{}", h.describe());
    assert_eq!(h.rebuilds(), 0.0, "{}", h.describe());

    let ids: Vec<String> = (0..sent).map(|n| visit(n).message_id).collect();
    let records = h.read(&h.topics.ingest, &ids).await;
    let on_topic: Vec<String> = records.iter().map(message_id).collect();
    let missing: Vec<&String> = ids.iter().filter(|id| !on_topic.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {sent} missing: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let duplicates = on_topic.len() - ids.len();
    assert!(duplicates * 200 <= sent, "{duplicates} duplicates of {sent}");
    let mut by_visitor: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for record in &records {
        by_visitor
            .entry(record.key.clone().unwrap_or_default())
            .or_default()
            .push(message_id(record));
    }
    for (visitor, seen) in &by_visitor {
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        let mut first = seen.clone();
        first.dedup();
        assert_eq!(first, sorted, "{visitor}'s events out of order");
    }
    let partitions: BTreeMap<i32, usize> = records.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.partition).or_default() += 1;
        m
    });
    eprintln!("{sent} events over a {fault:?} fault; per partition {partitions:?}; {duplicates} duplicates");
    assert_eq!(partitions.len(), 3, "{partitions:?}");
}
