//! One retry record's trip: forward it, or re-queue it, or dead-letter it.

use std::time::Duration;

use event_model::{headers, DlqEnvelope, DlqReason};
use kafka_producer::retry::{header_text, unix_ms_after, without_retry_headers, RetryInfo};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::{metrics, Config};

/// The forwarder's producer: awaited writes, with fatal errors noticed.
pub(crate) type Producer = FutureProducer<FatalWatch>;

/// Notices a fatal producer error (the idempotent producer cannot go on): the forwarder then
/// stops instead of retrying forever; a restart resumes from the committed offsets.
pub(crate) struct FatalWatch {
    pub fatal: Arc<AtomicBool>,
    /// Authentication and TLS failures, counted and logged with their cause.
    pub watch: kafka_producer::ConnectionWatch,
}

impl ClientContext for FatalWatch {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            self.fatal.store(true, Ordering::SeqCst);
        }
        kafka_producer::log_client_error(&self.watch, &error, reason);
    }
}

/// What became of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Written somewhere and acknowledged (target, retry topic or DLQ): store its offset.
    Done,
    /// Nothing could be written: keep the record and try again later.
    RetryLater,
}

/// A retry-topic record and its parsed retry headers (`None`: missing or malformed).
pub(crate) type Entry = (OwnedMessage, Option<RetryInfo>);

/// Processes consecutive records of one partition: sends all forwards at once (the producer
/// keeps their order), then settles each in order. Returns the offset of the last record
/// settled, and the records from the first one that could not be written anywhere on (to be
/// tried again later).
pub(crate) async fn process_batch(
    producer: &Producer,
    config: &Config,
    batch: Vec<Entry>,
) -> (Option<i64>, Vec<Entry>) {
    let sends: Vec<_> = batch
        .iter()
        .map(|(message, info)| {
            let info = info.as_ref()?;
            let record = record(
                &info.target,
                message.key(),
                message.payload(),
                without_retry_headers(message.headers()),
            );
            Some(
                producer
                    .send_result(record)
                    .map_err(|(error, _)| error.to_string()),
            )
        })
        .collect();
    let mut last = None;
    let mut entries = batch.into_iter();
    for send in sends {
        let (message, info) = entries.next().expect("one entry per send");
        let forwarded = match send {
            None => None,
            Some(Ok(delivery)) => Some(match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((error, _))) => Err(error.to_string()),
                Err(_) => Err("delivery canceled".to_string()),
            }),
            Some(Err(error)) => Some(Err(error)),
        };
        let outcome = settle(producer, config, &message, info.as_ref(), forwarded).await;
        if outcome == Outcome::RetryLater {
            let mut rest = vec![(message, info)];
            rest.extend(entries);
            return (last, rest);
        }
        last = Some(message.offset());
    }
    (last, Vec::new())
}

/// Settles one record after its forward: done, or re-queued, or dead-lettered.
async fn settle(
    producer: &Producer,
    config: &Config,
    message: &OwnedMessage,
    info: Option<&RetryInfo>,
    forwarded: Option<Result<(), String>>,
) -> Outcome {
    let message_id = message_id(message);
    let (Some(info), Some(forwarded)) = (info, forwarded) else {
        return dead_letter(
            producer,
            config,
            message,
            &message_id,
            DlqReason::InvalidRetryRecord,
            "missing or malformed retry headers",
        )
        .await;
    };
    let error = match forwarded {
        Ok(()) => {
            metrics::forwarded();
            tracing::debug!(
                message_id,
                target = info.target,
                attempt = info.attempt,
                "forwarded"
            );
            return Outcome::Done;
        }
        Err(error) => error,
    };
    if info.attempt >= config.retry_max_attempts {
        let detail = format!("{} attempts, last error: {error}", info.attempt);
        return dead_letter(
            producer,
            config,
            message,
            &message_id,
            DlqReason::RetriesExhausted,
            &detail,
        )
        .await;
    }
    let next = RetryInfo {
        attempt: info.attempt + 1,
        target: info.target.clone(),
        not_before_ms: unix_ms_after(config.backoff(info.attempt)),
        last_error: error.clone(),
    };
    let headers = next.to_headers(message.headers());
    match produce(
        producer,
        &config.kafka.topic_retry,
        message.key(),
        message.payload(),
        headers,
    )
    .await
    {
        Ok(()) => {
            metrics::requeued();
            tracing::warn!(
                message_id,
                target = info.target,
                attempt = next.attempt,
                error,
                "forward failed, re-queued"
            );
            Outcome::Done
        }
        Err(requeue_error) => {
            metrics::stalled();
            tracing::error!(
                message_id,
                error,
                requeue_error,
                "forward and re-queue failed; will try again"
            );
            Outcome::RetryLater
        }
    }
}

async fn dead_letter(
    producer: &Producer,
    config: &Config,
    message: &OwnedMessage,
    message_id: &str,
    reason: DlqReason,
    detail: &str,
) -> Outcome {
    let text = |name| header_text(message.headers(), name).unwrap_or_default();
    let envelope = DlqEnvelope::new(
        &text(headers::WORKSPACE_ID),
        &text(headers::SOURCE_ID),
        message_id,
        reason,
        "",
        String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
    );
    let headers = OwnedHeaders::new().insert(Header {
        key: headers::REASON,
        value: Some(reason.as_str()),
    });
    let key = envelope.workspace_id.clone();
    match produce(
        producer,
        &config.kafka.topic_dlq,
        Some(key.as_bytes()),
        Some(&envelope.to_json()),
        headers,
    )
    .await
    {
        Ok(()) => {
            metrics::dead_lettered(reason);
            tracing::warn!(
                message_id,
                reason = reason.as_str(),
                detail,
                "retry record sent to the DLQ"
            );
            Outcome::Done
        }
        Err(error) => {
            metrics::stalled();
            tracing::error!(
                message_id,
                reason = reason.as_str(),
                error,
                "DLQ write failed; will try again"
            );
            Outcome::RetryLater
        }
    }
}

/// Produces one record and waits for the broker's acknowledgement.
async fn produce(
    producer: &Producer,
    topic: &str,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: OwnedHeaders,
) -> Result<(), String> {
    producer
        .send(record(topic, key, value, headers), Duration::from_secs(5))
        .await
        .map(|_| ())
        .map_err(|(error, _)| error.to_string())
}

fn record<'a>(
    topic: &'a str,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    headers: OwnedHeaders,
) -> FutureRecord<'a, [u8], [u8]> {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(headers);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(value) = value {
        record = record.payload(value);
    }
    record
}

/// The record's `message_id` (from its JSON value), for logs.
fn message_id(message: &OwnedMessage) -> String {
    #[derive(serde::Deserialize)]
    struct Id {
        message_id: String,
    }
    let mut value = message.payload().unwrap_or_default().to_vec();
    simd_json::serde::from_slice::<Id>(&mut value)
        .map(|id| id.message_id)
        .or_else(|_| header_text(message.headers(), headers::MESSAGE_ID).ok_or(()))
        .unwrap_or_else(|()| format!("{}/{}@{}", message.topic(), message.partition(), message.offset()))
}
