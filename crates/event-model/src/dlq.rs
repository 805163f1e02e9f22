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
    /// The event's text: the request body for single-event endpoints, the item (with the
    /// batch-level fields applied) for batches.
    pub raw_payload: String,
}

impl DlqEnvelope {
    /// Builds the envelope for a rejection.
    pub fn new(
        workspace_id: &str,
        source_id: &str,
        message_id: &str,
        rejection: &Rejection,
        raw_payload: String,
    ) -> Self {
        DlqEnvelope {
            workspace_id: workspace_id.to_string(),
            source_id: source_id.to_string(),
            message_id: message_id.to_string(),
            reason: rejection.reason.as_str().to_string(),
            field: rejection.field.clone(),
            raw_payload,
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
