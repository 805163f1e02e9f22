//! The DLQ record envelope (brief, S8).

use serde::{Deserialize, Serialize};

use crate::Rejection;

/// The value of a DLQ record. The record key is `workspace_id`; its `reason` header repeats
/// [`DlqEnvelope::reason`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlqEnvelope {
    /// The authenticated source's workspace.
    pub workspace_id: String,
    /// The authenticated source.
    pub source_id: String,
    /// The event's `messageId`, or the one generated for it.
    pub message_id: String,
    /// A [`crate::Reason`] name.
    pub reason: String,
    /// The offending field, a JSON Pointer into the event.
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
    /// Builds the envelope for a rejection, cutting `raw_payload` at [`MAX_RAW_PAYLOAD_BYTES`].
    pub fn new(
        workspace_id: &str,
        source_id: &str,
        message_id: &str,
        rejection: &Rejection,
        mut raw_payload: String,
    ) -> Self {
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
            reason: rejection.reason.as_str().to_string(),
            field: rejection.field.clone(),
            raw_payload,
            raw_payload_truncated,
            received_at: None,
            client_ip: None,
            event_type: None,
        }
    }

    /// Serialises the envelope as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings cannot fail.
        simd_json::to_vec(self).unwrap_or_default()
    }

    /// Parses an envelope from a DLQ record value.
    pub fn from_json(value: &[u8]) -> Result<Self, simd_json::Error> {
        let mut buf = value.to_vec();
        simd_json::serde::from_slice(&mut buf)
    }
}
