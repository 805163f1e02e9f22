//! Batches: size limits, mixed items, batch-level fields.

use event_model::{message_id_of, parse_body, Endpoint, Limits, Reason};
use serde_json::json;

use super::run;

fn track(i: usize) -> serde_json::Value {
    json!({"type":"track","anonymousId":format!("a{i}"),"event":"e","messageId":format!("m{i}")})
}

#[test]
fn a_batch_of_2500_events_is_accepted_in_order() {
    let body = json!({"batch": (0..2500).map(track).collect::<Vec<_>>()}).to_string();
    let results = run(Endpoint::Batch, &body).unwrap();
    assert_eq!(results.len(), 2500);
    for (i, r) in results.into_iter().enumerate() {
        let accepted = r.unwrap();
        assert_eq!(accepted.message_id, format!("m{i}"));
        assert_eq!(accepted.key, format!("a{i}"));
    }
}

#[test]
fn a_batch_over_the_event_limit_is_refused_whole() {
    let body = json!({"batch": (0..2501).map(track).collect::<Vec<_>>()}).to_string();
    let rejection = run(Endpoint::Batch, &body).unwrap_err();
    assert_eq!(
        (rejection.reason, rejection.field.as_str()),
        (Reason::TooLarge, "/batch")
    );
}

#[test]
fn a_mixed_batch_rejects_only_the_invalid_items() {
    let body = json!({"batch": [
        track(0),
        {"type":"track","anonymousId":"a1","messageId":"m1"},
        {"type":"identify","userId":"u2","messageId":"m2"},
        {"type":"group","userId":"u3","messageId":"m3","groupId":{"no":1}},
    ]})
    .to_string();
    let results = run(Endpoint::Batch, &body).unwrap();
    let summary: Vec<_> = results
        .iter()
        .map(|r| match r {
            Ok(a) => Ok(a.message_id.clone()),
            Err(r) => Err((r.reason, r.field.clone())),
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            Ok("m0".to_string()),
            Err((Reason::MissingField, "/event".to_string())),
            Ok("m2".to_string()),
            Err((Reason::InvalidType, "/groupId".to_string())),
        ]
    );
}

#[test]
fn batch_context_integrations_and_sent_at_apply_to_items_whose_own_fields_win() {
    let body = json!({
        "writeKey": "wk",
        "context": {"library": {"name": "analytics-python"}, "locale": "en"},
        "integrations": {"All": true},
        "sentAt": "2024-05-01T12:00:10Z",
        "batch": [
            {"type":"track","userId":"u","event":"e","context":{"locale":"de"},"timestamp":"2024-05-01T12:00:00Z"},
            {"type":"identify","userId":"u","sentAt":"2024-05-01T12:00:00Z","integrations":{"All":false}},
        ]
    })
    .to_string();
    let mut bytes = body.clone().into_bytes();
    let parsed = parse_body(&mut bytes, Endpoint::Batch, &Limits::default()).unwrap();
    assert_eq!(parsed.write_key.as_deref(), Some("wk"));

    let values: Vec<serde_json::Value> = run(Endpoint::Batch, &body)
        .unwrap()
        .into_iter()
        .map(|r| serde_json::from_slice(&r.unwrap().value).unwrap())
        .collect();
    assert_eq!(
        values[0]["context"],
        json!({"library":{"name":"analytics-python"},"locale":"de","ip":"203.0.113.7"})
    );
    assert_eq!(values[0]["integrations"], json!({"All": true}));
    assert_eq!(values[0]["sent_at"], "2024-05-01T12:00:10.000Z");
    // Skew of 10 s removed from the client's timestamp.
    assert_eq!(values[0]["timestamp"], "2024-05-01T11:59:50.000Z");
    assert_eq!(values[1]["sent_at"], "2024-05-01T12:00:00.000Z");
    assert_eq!(values[1]["integrations"], json!({"All": false}));
    assert_eq!(values[1]["context"]["locale"], "en");
}

#[test]
fn message_ids_of_items_are_found_for_naming_rejections() {
    let mut bytes = br#"{"batch":[{"messageId":"m"},{"messageId":3},4]}"#.to_vec();
    let parsed = parse_body(&mut bytes, Endpoint::Batch, &Limits::default()).unwrap();
    let ids: Vec<_> = parsed
        .items
        .iter()
        .map(|item| message_id_of(&item.value))
        .collect();
    assert_eq!(ids, vec![Some("m"), None, None]);
}

#[test]
fn batch_fields_are_not_copied_into_the_items() {
    // A big batch context and many items: each item stays as sent (it is what the DLQ gets),
    // and events that the merged context makes too large are rejected, not built.
    let context = json!({"blob": "x".repeat(100 * 1024)});
    let items: Vec<_> = (0..2500)
        .map(|i| json!({"type":"track","anonymousId":format!("a{i}"),"event":"e"}))
        .collect();
    let body = json!({"context": context, "batch": items}).to_string();
    let mut bytes = body.clone().into_bytes();
    let parsed = parse_body(&mut bytes, Endpoint::Batch, &Limits::default()).unwrap();
    assert_eq!(
        simd_json::to_string(&parsed.items[7].value).unwrap(),
        items[7].to_string()
    );
    let results = run(Endpoint::Batch, &body).unwrap();
    assert!(results
        .iter()
        .all(|r| r.as_ref().unwrap_err().reason == Reason::TooLarge));
}

#[test]
fn the_batch_context_ip_wins_over_the_peer_and_the_items_ip_over_both() {
    let body = json!({"context": {"ip": "198.51.100.9"}, "batch": [
        {"type":"identify","userId":"u"},
        {"type":"identify","userId":"u","context":{"ip":"192.0.2.1"}},
        {"type":"identify","userId":"u","context":{"ip":null}},
    ]})
    .to_string();
    let ips: Vec<_> = run(Endpoint::Batch, &body)
        .unwrap()
        .into_iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.unwrap().value).unwrap()["context"]["ip"].clone()
        })
        .collect();
    assert_eq!(
        ips,
        [json!("198.51.100.9"), json!("192.0.2.1"), json!("198.51.100.9")]
    );
}
