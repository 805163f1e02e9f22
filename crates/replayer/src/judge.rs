//! What to do with one DLQ record: replay it, count it as still failing, or skip it. No I/O.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use event_model::{
    normalize, parse_event, Accepted, BatchFields, DlqEnvelope, DlqReason, EventType, Limits, Received,
    Rejection,
};
use simd_json::BorrowedValue;

/// Which DLQ records to consider. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    /// DLQ reason names, compared with the record's as written: a name this version does not
    /// know (see [`event_model::DlqReason`]) selects the records that carry it.
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
    fn matches(&self, envelope: &DlqEnvelope<String>, received: DateTime<Utc>) -> bool {
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
    // Read with the reason as written: a record whose reason this version does not know (a
    // newer writer's) is filtered and re-validated like any other, not dropped.
    let envelope = match DlqEnvelope::<String>::from_json(value) {
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
        if let BorrowedValue::Object(obj) = &mut item.value {
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
            let mut envelope = Box::new(envelope.with_reason(DlqReason::Rejected(rejection.reason)));
            envelope.field = rejection.field.clone();
            Verdict::StillFailing { envelope, rejection }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DLQ record value with `reason` and `raw_payload`, written by some version of ingest.
    fn record(reason: &str, raw_payload: &str) -> Vec<u8> {
        format!(
            r#"{{"workspace_id":"ws_1","source_id":"src_1","message_id":"m-1","reason":"{reason}","field":"","raw_payload":{}}}"#,
            simd_json::to_string(raw_payload).unwrap()
        )
        .into_bytes()
    }

    fn filters(reasons: &[&str]) -> Filters {
        Filters {
            reasons: reasons.iter().map(|r| r.to_string()).collect(),
            ..Filters::default()
        }
    }

    const VALID: &str = r#"{"type":"track","event":"Signed Up","userId":"u-1"}"#;
    const NO_EVENT: &str = r#"{"type":"track","userId":"u-1"}"#;

    #[test]
    fn a_reason_this_version_does_not_know_is_judged_like_any_other() {
        let value = record("from_a_newer_version", VALID);
        let verdict = judge(&value, None, &filters(&[]), &Limits::default());
        assert!(
            matches!(&verdict, Verdict::Replay { event, workspace_id, .. } if event.message_id == "m-1" && workspace_id == "ws_1"),
            "{verdict:?}"
        );
        let selected = judge(
            &value,
            None,
            &filters(&["from_a_newer_version"]),
            &Limits::default(),
        );
        assert!(matches!(selected, Verdict::Replay { .. }), "{selected:?}");
        let other = judge(&value, None, &filters(&["missing_field"]), &Limits::default());
        assert!(matches!(other, Verdict::Filtered), "{other:?}");
    }

    #[test]
    fn a_record_still_failing_gets_todays_reason_and_field() {
        let value = record("from_a_newer_version", NO_EVENT);
        let verdict = judge(&value, None, &filters(&[]), &Limits::default());
        let Verdict::StillFailing { envelope, rejection } = verdict else {
            panic!("{verdict:?}");
        };
        assert_eq!(
            envelope.reason,
            DlqReason::Rejected(event_model::Reason::MissingField)
        );
        assert_eq!(envelope.field, "/event");
        assert_eq!(rejection.field, "/event");
        assert_eq!(envelope.message_id, "m-1");
        assert_eq!(envelope.raw_payload, NO_EVENT);
    }

    #[test]
    fn a_value_that_is_not_an_envelope_is_undecodable() {
        let verdict = judge(b"{\"reason\":1}", None, &filters(&[]), &Limits::default());
        assert!(matches!(verdict, Verdict::Undecodable(_)), "{verdict:?}");
    }
}
