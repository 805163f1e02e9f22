//! What to do with one DLQ record: replay it, count it as still failing, or skip it. No I/O.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use event_model::{
    normalize, parse_event, Accepted, BatchFields, DlqEnvelope, EventType, Limits, Received, Rejection,
};
use simd_json::BorrowedValue;

/// Which DLQ records to consider. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    /// DLQ reasons.
    pub reasons: Vec<String>,
    /// Workspace.
    pub workspace_id: Option<String>,
    /// Source.
    pub source_id: Option<String>,
    /// Received at or after.
    pub received_after: Option<DateTime<Utc>>,
    /// Received before.
    pub received_before: Option<DateTime<Utc>>,
}

impl Filters {
    fn matches(&self, envelope: &DlqEnvelope, received: DateTime<Utc>) -> bool {
        (self.reasons.is_empty() || self.reasons.contains(&envelope.reason))
            && self
                .workspace_id
                .as_ref()
                .is_none_or(|w| *w == envelope.workspace_id)
            && self.source_id.as_ref().is_none_or(|s| *s == envelope.source_id)
            && self.received_after.is_none_or(|t| received >= t)
            && self.received_before.is_none_or(|t| received < t)
    }
}

/// The decision for one DLQ record.
#[derive(Debug)]
pub enum Verdict {
    /// Passes today: produce it to the ingest topic.
    Replay {
        /// The re-validated event, with its original `message_id`.
        event: Accepted,
        /// From the envelope.
        workspace_id: String,
        /// From the envelope.
        source_id: String,
    },
    /// Still invalid: today's reason and field.
    StillFailing {
        /// The envelope, with today's reason, field and detail.
        envelope: Box<DlqEnvelope>,
        /// Today's rejection.
        rejection: Rejection,
    },
    /// Not selected by the filters.
    Filtered,
    /// Not a DLQ envelope.
    Undecodable(String),
}

/// Judges one DLQ record value. `record_time` (the record's timestamp) stands in for the
/// receipt time of envelopes that do not carry `received_at`.
pub fn judge(
    value: &[u8],
    record_time: Option<DateTime<Utc>>,
    filters: &Filters,
    limits: &Limits,
) -> Verdict {
    let envelope = match DlqEnvelope::from_json(value) {
        Ok(envelope) => envelope,
        Err(error) => return Verdict::Undecodable(error.to_string()),
    };
    let received_at = envelope
        .received_at
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .or(record_time)
        .unwrap_or_else(Utc::now);
    if !filters.matches(&envelope, received_at) {
        return Verdict::Filtered;
    }
    let mut raw = envelope.raw_payload.clone().into_bytes();
    let validated = parse_event(&mut raw, limits).and_then(|mut item| {
        // The original message id, also where ingest generated it.
        if let BorrowedValue::Object(obj) = &mut item {
            if !matches!(obj.get("messageId"), Some(BorrowedValue::String(_))) {
                obj.insert(
                    "messageId".into(),
                    BorrowedValue::String(envelope.message_id.clone().into()),
                );
            }
        }
        let received = Received {
            at: received_at,
            workspace_id: envelope.workspace_id.clone(),
            source_id: envelope.source_id.clone(),
            client_ip: envelope
                .client_ip
                .as_deref()
                .and_then(|ip| ip.parse::<IpAddr>().ok()),
        };
        let fixed = envelope.event_type.as_deref().and_then(EventType::from_name);
        normalize(&item, fixed, &BatchFields::default(), &received, limits)
    });
    match validated {
        Ok(event) => Verdict::Replay {
            event,
            workspace_id: envelope.workspace_id,
            source_id: envelope.source_id,
        },
        Err(rejection) => {
            let mut envelope = Box::new(envelope);
            envelope.reason = rejection.reason.as_str().to_string();
            envelope.field = rejection.field.clone();
            Verdict::StillFailing { envelope, rejection }
        }
    }
}
