//! The records the producer writes, in one place: an ingest record's key (S4) and headers
//! (S5), its spool form, and the retry-topic and DLQ copies of a record whose delivery failed.

use event_model::{headers, Accepted, DlqEnvelope, DlqReason};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

use crate::retry::{unix_ms_after, RetryInfo};

/// The [`spool::Record::topic`] label of a record bound for the DLQ (a rejected event's
/// envelope spooled in buffered mode while Kafka is not delivering); unlabelled records are
/// bound for the ingest topic.
pub(crate) const DLQ_BOUND: &str = "dlq";

/// A record on its way to a topic.
pub(crate) struct Outgoing {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: OwnedHeaders,
}

/// The ingest record of a valid event, in its spool form (the same key, headers and value
/// as on Kafka): key the visitor (S4), headers `workspace_id`, `source_id`, `type` (S5).
pub(crate) fn event_record(event: &Accepted, workspace_id: &str, source_id: &str) -> spool::Record {
    spool::Record {
        message_id: event.message_id.clone(),
        key: event.key.as_bytes().to_vec(),
        headers: vec![
            (headers::WORKSPACE_ID.into(), workspace_id.as_bytes().to_vec()),
            (headers::SOURCE_ID.into(), source_id.as_bytes().to_vec()),
            (
                headers::TYPE.into(),
                event.event_type.as_str().as_bytes().to_vec(),
            ),
        ],
        value: event.value.clone(),
        topic: String::new(),
    }
}

/// The Kafka headers of an ingest event, without copying its value.
pub(crate) fn event_headers(event: &Accepted, workspace_id: &str, source_id: &str) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(3)
        .insert(Header {
            key: headers::WORKSPACE_ID,
            value: Some(workspace_id),
        })
        .insert(Header {
            key: headers::SOURCE_ID,
            value: Some(source_id),
        })
        .insert(Header {
            key: headers::TYPE,
            value: Some(event.event_type.as_str()),
        })
}

/// Kafka headers from a spool record's.
pub(crate) fn headers_of(record: &spool::Record) -> OwnedHeaders {
    record.headers.iter().fold(
        OwnedHeaders::new_with_capacity(record.headers.len()),
        |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value),
            })
        },
    )
}

/// A Kafka message (from a delivery report) as a spool record.
pub(crate) fn record_of(message_id: String, message: &impl Message) -> spool::Record {
    let headers = message.headers().map_or_else(Vec::new, |headers| {
        headers
            .iter()
            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
            .collect()
    });
    spool::Record {
        message_id,
        key: message.key().unwrap_or_default().to_vec(),
        headers,
        value: message.payload().unwrap_or_default().to_vec(),
        topic: String::new(),
    }
}

/// The record as it was, for the ingest topic again.
pub(crate) fn ingest_copy(record: &spool::Record) -> Outgoing {
    Outgoing {
        key: record.key.clone(),
        value: record.value.clone(),
        headers: headers_of(record),
    }
}

/// The retry-topic copy: the record plus the retry headers ([`crate::retry`]), first attempt,
/// due after `delay`, for `target`.
pub(crate) fn retry_copy(
    record: &spool::Record,
    error: &KafkaError,
    target: &str,
    delay: std::time::Duration,
) -> Outgoing {
    let info = RetryInfo {
        attempt: 1,
        target: target.to_string(),
        not_before_ms: unix_ms_after(delay),
        last_error: error.to_string(),
    };
    Outgoing {
        key: record.key.clone(),
        value: record.value.clone(),
        headers: info.to_headers(Some(&headers_of(record))),
    }
}

/// The DLQ copy of a record Kafka refuses for good: a `delivery_rejected` envelope keyed by
/// workspace (S8), its raw payload the record's value (cut, so that even a record too large
/// for Kafka fits as a DLQ record).
pub(crate) fn dlq_copy(record: &spool::Record, error: &KafkaError) -> Outgoing {
    let text = |name: &str| {
        record
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    let envelope = DlqEnvelope::new(
        &text(headers::WORKSPACE_ID),
        &text(headers::SOURCE_ID),
        &record.message_id,
        DlqReason::DeliveryRejected,
        "",
        String::from_utf8_lossy(&record.value).into_owned(),
    );
    tracing::debug!(message_id = record.message_id, %error, "delivery rejected for good");
    let record = envelope_record(&envelope);
    Outgoing {
        headers: headers_of(&record),
        key: record.key,
        value: record.value,
    }
}

/// The record of a DLQ envelope, the one place it is built (S8): key the workspace, header
/// `reason`, value the envelope's JSON; labelled [`DLQ_BOUND`] for the spool.
pub(crate) fn envelope_record(envelope: &DlqEnvelope) -> spool::Record {
    spool::Record {
        message_id: envelope.message_id.clone(),
        key: envelope.workspace_id.as_bytes().to_vec(),
        headers: vec![(
            headers::REASON.into(),
            envelope.reason.as_str().as_bytes().to_vec(),
        )],
        value: envelope.to_json(),
        topic: DLQ_BOUND.into(),
    }
}
