//! Integration tests of the event model: one binary, one module per concern.

mod batch;
mod cost;
mod dlq;
mod props;
mod reading;
mod reference;
mod size;
mod skew;
mod table;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use event_model::{normalize, parse_body, Accepted, Endpoint, EventType, Limits, Received, Rejection};

/// The receipt context used by the tests: fixed clock, source and client address.
fn received() -> Received {
    Received {
        at: "2024-05-01T12:00:00Z".parse::<DateTime<Utc>>().unwrap(),
        workspace_id: "ws_1".into(),
        source_id: "src_1".into(),
        client_ip: Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7))),
    }
}

/// Parses `body` for `endpoint` and normalises every item, checking each accepted event
/// against the published JSON Schema.
fn run(endpoint: Endpoint, body: &str) -> Result<Vec<Result<Accepted, Rejection>>, Rejection> {
    let mut bytes = body.as_bytes().to_vec();
    let limits = Limits::default();
    let parsed = parse_body(&mut bytes, endpoint, &limits)?;
    let fixed = match endpoint {
        Endpoint::Single(t) => Some(t),
        Endpoint::Batch => None,
    };
    let results: Vec<_> = parsed
        .items
        .iter()
        .map(|item| normalize(item, fixed, &parsed.shared, &received(), &limits))
        .collect();
    for accepted in results.iter().flatten() {
        assert_schema_valid(&accepted.value);
    }
    Ok(results)
}

/// One single-event body, which must be accepted; returns the event and its value as JSON.
fn accept(t: EventType, body: &str) -> (Accepted, serde_json::Value) {
    let mut results = run(Endpoint::Single(t), body).unwrap_or_else(|r| panic!("body rejected: {r}"));
    let accepted = results
        .remove(0)
        .unwrap_or_else(|r| panic!("{body} rejected: {r}"));
    let value = serde_json::from_slice(&accepted.value).unwrap();
    (accepted, value)
}

/// Asserts that an ingest-topic value validates against `schema/ingest-event.schema.json`.
fn assert_schema_valid(value: &[u8]) {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    let validator = VALIDATOR.get_or_init(|| {
        let schema: serde_json::Value = serde_json::from_str(event_model::INGEST_EVENT_SCHEMA).unwrap();
        jsonschema::validator_for(&schema).unwrap()
    });
    let instance: serde_json::Value = serde_json::from_slice(value).unwrap();
    let errors: Vec<String> = validator.iter_errors(&instance).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{instance} does not match the schema: {errors:?}"
    );
}
