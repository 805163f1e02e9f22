//! The DLQ record: its envelope (brief, S8) and the closed set of reasons a record is there for.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::reject::Reason;

/// Why a record is on the DLQ: the closed set of every writer's reasons. The names are stable:
/// they are the envelope's `reason`, the record's `reason` header and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DlqReason {
    /// Ingest rejected the event (HTTP 400); named by the [`Reason`]'s own name.
    Rejected(Reason),
    /// The broker refused the record for good (too large, invalid): `delivery_rejected`,
    /// written by `kafka-producer`'s rescuer.
    DeliveryRejected,
    /// The record failed its last allowed forward attempt: `retries_exhausted`, written by the
    /// retry-forwarder.
    RetriesExhausted,
    /// A retry-topic record without valid retry headers: `invalid_retry_record`, written by the
    /// retry-forwarder.
    InvalidRetryRecord,
}

impl DlqReason {
    /// The stable snake_case name: a [`Reason`]'s own name for [`DlqReason::Rejected`].
    pub fn as_str(self) -> &'static str {
        match self {
            DlqReason::Rejected(reason) => reason.as_str(),
            DlqReason::DeliveryRejected => "delivery_rejected",
            DlqReason::RetriesExhausted => "retries_exhausted",
            DlqReason::InvalidRetryRecord => "invalid_retry_record",
        }
    }

    /// Parses a stable name back into a reason; `None` for a name this version does not know.
    pub fn from_name(name: &str) -> Option<Self> {
        if let Some(reason) = Reason::from_name(name) {
            return Some(DlqReason::Rejected(reason));
        }
        [
            DlqReason::DeliveryRejected,
            DlqReason::RetriesExhausted,
            DlqReason::InvalidRetryRecord,
        ]
        .into_iter()
        .find(|r| r.as_str() == name)
    }
}

impl fmt::Display for DlqReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Written as its name, a plain JSON string.
impl Serialize for DlqReason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Read from its name; a name this version does not know is an error (read such records as
/// `DlqEnvelope<String>`, see [`DlqEnvelope`]).
impl<'de> Deserialize<'de> for DlqReason {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = DlqReason;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a DLQ reason name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<DlqReason, E> {
                DlqReason::from_name(name)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(name), &self))
            }
        }
        deserializer.deserialize_str(Name)
    }
}

/// The value of a DLQ record. The record key is `workspace_id`; its `reason` header repeats
/// [`DlqEnvelope::reason`].
///
/// Writers use the default `R`, [`DlqReason`]. A consumer of the DLQ topic reads
/// `DlqEnvelope<String>`: records outlive releases, and one written by another version may
/// carry a reason name this one does not know; it must still be read, not dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlqEnvelope<R = DlqReason> {
    /// The authenticated source's workspace.
    pub workspace_id: String,
    /// The authenticated source.
    pub source_id: String,
    /// The event's `messageId`, or the one generated for it.
    pub message_id: String,
    /// Why the record is on the DLQ: a [`DlqReason`] name on the wire.
    pub reason: R,
    /// The offending field, a JSON Pointer into the event (`""`: the whole event, or no field).
    pub field: String,
    /// The event's text as received: the event object (without `writeKey`), or the whole body
    /// when it was not JSON. Cut at [`MAX_RAW_PAYLOAD_BYTES`].
    pub raw_payload: String,
    /// True when `raw_payload` was cut at [`MAX_RAW_PAYLOAD_BYTES`] (an addition to S8).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub raw_payload_truncated: bool,
    /// When ingest received the event (RFC 3339), for faithful replays (an addition to S8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<String>,
    /// The client address ingest saw (an addition to S8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    /// The type set by a single-event endpoint's path, which the raw event may not carry
    /// (an addition to S8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
}

/// Longest `raw_payload` kept, so that an envelope stays well under Kafka's 1 MB record limit
/// even when every byte needs escaping.
pub const MAX_RAW_PAYLOAD_BYTES: usize = 128 * 1024;

impl DlqEnvelope {
    /// Builds the envelope of every DLQ writer, cutting `raw_payload` at
    /// [`MAX_RAW_PAYLOAD_BYTES`] (on a character boundary) and leaving the optional fields
    /// `None` (the caller sets those it knows).
    pub fn new(
        workspace_id: &str,
        source_id: &str,
        message_id: &str,
        reason: DlqReason,
        field: &str,
        mut raw_payload: String,
    ) -> DlqEnvelope {
        let raw_payload_truncated = raw_payload.len() > MAX_RAW_PAYLOAD_BYTES;
        if raw_payload_truncated {
            let mut end = MAX_RAW_PAYLOAD_BYTES;
            while !raw_payload.is_char_boundary(end) {
                end -= 1;
            }
            raw_payload.truncate(end);
        }
        DlqEnvelope {
            workspace_id: workspace_id.to_string(),
            source_id: source_id.to_string(),
            message_id: message_id.to_string(),
            reason,
            field: field.to_string(),
            raw_payload,
            raw_payload_truncated,
            received_at: None,
            client_ip: None,
            event_type: None,
        }
    }
}

impl<R> DlqEnvelope<R> {
    /// The same envelope with another reason (a replay's verdict of today, say).
    pub fn with_reason<S>(self, reason: S) -> DlqEnvelope<S> {
        DlqEnvelope {
            workspace_id: self.workspace_id,
            source_id: self.source_id,
            message_id: self.message_id,
            reason,
            field: self.field,
            raw_payload: self.raw_payload,
            raw_payload_truncated: self.raw_payload_truncated,
            received_at: self.received_at,
            client_ip: self.client_ip,
            event_type: self.event_type,
        }
    }
}

impl<R: Serialize> DlqEnvelope<R> {
    /// Serialises the envelope as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising strings and a bool cannot fail.
        simd_json::to_vec(self).unwrap_or_default()
    }
}

impl<R: DeserializeOwned> DlqEnvelope<R> {
    /// Parses an envelope from a DLQ record value. As `DlqEnvelope` (a [`DlqReason`]), a
    /// reason name this version does not know is an error; as `DlqEnvelope<String>`, any
    /// reason name is read.
    pub fn from_json(value: &[u8]) -> Result<Self, simd_json::Error> {
        let mut buf = value.to_vec();
        simd_json::serde::from_slice(&mut buf)
    }
}
