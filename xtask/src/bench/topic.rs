//! The broker side: a fresh broker and topics per phase, the records on the topic counted, and
//! the per-visitor order check.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::broker::Broker;
use crate::stack::http;

/// Visitors of the ordering check.
pub const ORDER_KEYS: usize = 8;
/// Events of each visitor in the ordering check.
pub const ORDER_EVENTS: usize = 250;

/// The broker and topics of one phase. tansu's memory engine keeps every record and slows down
/// as it grows (a saturation run leaves over a GiB), so each phase gets a fresh one; with
/// `KAFKA_BROKERS`, the same cluster and fresh topics.
pub struct Phase {
    /// The broker (stopped on drop when it is ours).
    pub broker: Broker,
    /// ingest's topics.
    pub ingest: String,
    /// ingest's dead-letter topic.
    pub dlq: String,
    /// ingest's retry topic.
    pub retry: String,
    /// The bare producer's topic (as many partitions as ingest's).
    pub bare: String,
}

impl Phase {
    /// A fresh broker (or fresh topics on `KAFKA_BROKERS`), its topics named after `name`.
    pub async fn start(root: &Path, name: &str) -> Result<Phase> {
        let broker = Broker::start_or_existing(root).await?;
        let base = format!("bench-{}.{name}", std::process::id());
        let topic = |t: &str| format!("{base}.{t}");
        let (ingest, dlq, retry, bare) = (topic("ingest"), topic("dlq"), topic("retry"), topic("bare"));
        broker
            .create_topics(&[(&ingest, 3), (&dlq, 1), (&retry, 1), (&bare, 3)])
            .await?;
        Ok(Phase {
            broker,
            ingest,
            dlq,
            retry,
            bare,
        })
    }

    /// Reads the ingest topic until `expected` records or `timeout`: how many, and the order
    /// of the [`send_ordered`] visitors' events.
    pub async fn read(&self, expected: usize, timeout: Duration) -> Result<(usize, Order)> {
        read_records(self.broker.settings(), &self.ingest, expected, timeout).await
    }
}

/// Sends [`ORDER_EVENTS`] events for each of [`ORDER_KEYS`] visitors, all visitors at once and
/// each visitor's events one after another (the next once the previous got its 200), with
/// `properties.seq` counting up.
pub async fn send_ordered(port: u16) -> Result<()> {
    use base64::Engine;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("bench-key:")
    );
    let visitors = (0..ORDER_KEYS).map(|k| {
        let auth = auth.clone();
        tokio::spawn(async move {
            for seq in 0..ORDER_EVENTS {
                let body = json!({"anonymousId": format!("order-{k}"), "event": "Ordered", "messageId": format!("order-{k}-{seq}"), "properties": {"seq": seq}});
                let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
                // A 503 (a full producer queue) is retried, as a client would.
                let mut tries = 0;
                loop {
                    let (status, reply) = http(port, "POST", "/v1/track", &headers, &body.to_string()).await?;
                    tries += 1;
                    match status {
                        200 => break,
                        503 if tries < 20 => tokio::time::sleep(Duration::from_millis(100)).await,
                        _ => bail!("ordering check: {status} {reply}"),
                    }
                }
            }
            anyhow::Ok(())
        })
    });
    for visitor in visitors.collect::<Vec<_>>() {
        visitor.await??;
    }
    Ok(())
}

/// What the topic says about the [`send_ordered`] visitors.
#[derive(Debug, Default, Clone, Copy)]
pub struct Order {
    /// Their records found.
    pub seen: usize,
    /// Records whose `seq` is not above the previous one of the same visitor.
    pub out_of_order: usize,
}

impl Order {
    /// Every one of their events found, each visitor's in the order sent.
    pub fn holds(&self) -> bool {
        self.seen == ORDER_KEYS * ORDER_EVENTS && self.out_of_order == 0
    }
}

/// Reads `topic` from the start until `expected` records or `timeout`: how many, and the order
/// of the [`send_ordered`] visitors' records (one visitor, one partition).
async fn read_records(
    kafka: &kafka_producer::KafkaSettings,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Result<(usize, Order)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let (kafka, topic) = (kafka.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || -> Result<(usize, Order)> {
        let mut config = ClientConfig::new();
        config
            .set("group.id", "bench-count")
            .set("enable.auto.commit", "false");
        let consumer: BaseConsumer = kafka
            .apply(&mut config)?
            .create()
            .map_err(kafka_producer::config_error)?;
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let mut tpl = TopicPartitionList::new();
        for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
            tpl.add_partition_offset(&topic, p.id(), Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let deadline = Instant::now() + timeout;
        let (mut n, mut order) = (0, Order::default());
        let mut last = std::collections::HashMap::new();
        while n < expected && Instant::now() < deadline {
            let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            n += 1;
            let Some(key) = message.key().filter(|k| k.starts_with(b"order-")) else {
                continue;
            };
            let value: Value = serde_json::from_slice(message.payload().unwrap_or_default())?;
            let seq = value["properties"]["seq"].as_i64().unwrap_or(-1);
            order.seen += 1;
            if last
                .insert(key.to_vec(), seq)
                .is_some_and(|previous| previous >= seq)
            {
                order.out_of_order += 1;
            }
        }
        Ok((n, order))
    })
    .await?
}
