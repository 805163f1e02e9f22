//! The DLQ envelope and its closed set of reasons.

use event_model::{DlqEnvelope, DlqReason, Reason, MAX_RAW_PAYLOAD_BYTES};
use serde_json::json;

/// Every DLQ reason and its name on the wire (envelope, `reason` header, metric labels).
const NAMES: [(DlqReason, &str); 13] = [
    (DlqReason::Rejected(Reason::InvalidJson), "invalid_json"),
    (DlqReason::Rejected(Reason::NotAnObject), "not_an_object"),
    (DlqReason::Rejected(Reason::MissingField), "missing_field"),
    (DlqReason::Rejected(Reason::InvalidType), "invalid_type"),
    (DlqReason::Rejected(Reason::InvalidValue), "invalid_value"),
    (DlqReason::Rejected(Reason::MissingIdentity), "missing_identity"),
    (DlqReason::Rejected(Reason::TooLarge), "too_large"),
    (DlqReason::Rejected(Reason::TooDeep), "too_deep"),
    (DlqReason::Rejected(Reason::TooManyKeys), "too_many_keys"),
    (DlqReason::Rejected(Reason::UnknownType), "unknown_type"),
    (DlqReason::DeliveryRejected, "delivery_rejected"),
    (DlqReason::RetriesExhausted, "retries_exhausted"),
    (DlqReason::InvalidRetryRecord, "invalid_retry_record"),
];

#[test]
fn every_dlq_reason_has_a_stable_name_that_reads_back() {
    for (reason, name) in NAMES {
        assert_eq!(reason.as_str(), name);
        assert_eq!(reason.to_string(), name);
        assert_eq!(DlqReason::from_name(name), Some(reason), "{name}");
        assert_eq!(serde_json::to_value(reason).unwrap(), json!(name));
        assert_eq!(serde_json::from_value::<DlqReason>(json!(name)).unwrap(), reason);
    }
}

#[test]
fn the_table_lists_every_validation_reason() {
    for reason in Reason::ALL {
        let wrapped = DlqReason::Rejected(reason);
        assert!(NAMES.iter().any(|(r, _)| *r == wrapped), "{reason} missing");
        assert_eq!(wrapped.as_str(), reason.as_str());
    }
}

#[test]
fn unknown_names_are_not_reasons() {
    for name in ["", "Invalid_json", "delivery-rejected", "timeout"] {
        assert_eq!(DlqReason::from_name(name), None, "{name:?}");
        assert!(
            serde_json::from_value::<DlqReason>(json!(name)).is_err(),
            "{name:?}"
        );
    }
}

#[test]
fn the_dlq_envelope_has_the_go_services_fields() {
    let reason = DlqReason::Rejected(Reason::MissingField);
    let envelope = DlqEnvelope::new(
        "ws_1",
        "src_1",
        "m-1",
        reason,
        "/event",
        r#"{"userId":"u"}"#.into(),
    );
    let json: serde_json::Value = serde_json::from_slice(&envelope.to_json()).unwrap();
    assert_eq!(
        json,
        json!({"workspace_id":"ws_1","source_id":"src_1","message_id":"m-1","reason":"missing_field",
               "field":"/event","raw_payload":"{\"userId\":\"u\"}"})
    );
    assert_eq!(DlqEnvelope::from_json(&envelope.to_json()).unwrap(), envelope);
}

#[test]
fn the_raw_payload_is_cut_on_a_character_boundary() {
    // 'é' is two bytes: the limit falls inside the last one, which is dropped whole.
    let raw = format!("{}é", "a".repeat(MAX_RAW_PAYLOAD_BYTES - 1));
    let envelope = DlqEnvelope::new("ws_1", "src_1", "m-1", DlqReason::DeliveryRejected, "", raw);
    assert_eq!(envelope.raw_payload.len(), MAX_RAW_PAYLOAD_BYTES - 1);
    assert!(envelope.raw_payload_truncated);
    let json: serde_json::Value = serde_json::from_slice(&envelope.to_json()).unwrap();
    assert_eq!(json["reason"], "delivery_rejected");
    assert_eq!(json["raw_payload_truncated"], true);
}

#[test]
fn a_reason_this_version_does_not_know_is_read_as_its_name() {
    let value = json!({"workspace_id":"ws_1","source_id":"src_1","message_id":"m-1",
                       "reason":"from_a_newer_version","field":"","raw_payload":"{}"})
    .to_string();
    assert!(DlqEnvelope::<DlqReason>::from_json(value.as_bytes()).is_err());
    let read = DlqEnvelope::<String>::from_json(value.as_bytes()).unwrap();
    assert_eq!(read.reason, "from_a_newer_version");
    assert_eq!(read.message_id, "m-1");
    let today = read.with_reason(DlqReason::Rejected(Reason::InvalidJson));
    let json: serde_json::Value = serde_json::from_slice(&today.to_json()).unwrap();
    assert_eq!(json["reason"], "invalid_json");
    assert_eq!(json["message_id"], "m-1");
}
