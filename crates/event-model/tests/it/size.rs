//! The event size limit applies to the event as the client sent it (its bytes in the body,
//! as the libraries measure it before sending); the record ingest writes may be larger by at
//! most [`RECORD_ALLOWANCE`].

use std::net::{IpAddr, Ipv6Addr};

use event_model::{
    normalize, parse_body, Endpoint, EventType, Limits, Reason, Received, MAX_ID_BYTES, RECORD_ALLOWANCE,
};

use super::{received, run};

const LIMIT: usize = Limits::DEFAULT.max_event_bytes;

/// A track event of exactly `size` bytes, written the way Python's `json.dumps` writes it
/// (`", "` and `": "` separators, as segment-analytics-python and rudder-sdk-python send it),
/// padded through `properties.blob`.
fn python_style_event(size: usize, extra: &str) -> String {
    let make = |pad: usize| {
        format!(
            r#"{{"type": "track", "anonymousId": "a", "event": "e"{extra}, "properties": {{"blob": "{}"}}}}"#,
            "x".repeat(pad)
        )
    };
    let base = make(0).len();
    assert!(size >= base, "{size} is smaller than the event's fields");
    let event = make(size - base);
    assert_eq!(event.len(), size);
    event
}

fn reason_of(result: &Result<event_model::Accepted, event_model::Rejection>) -> Option<Reason> {
    result.as_ref().err().map(|r| r.reason)
}

#[test]
fn a_batch_item_is_measured_by_its_bytes_in_the_body() {
    // (item size as sent, accepted?): the compact form of these items is ~10% smaller, and
    // what ingest adds (message_id, timestamps, context.ip, ...) comes on top: neither counts.
    for (size, accepted) in [
        (LIMIT - 1, true),
        (LIMIT, true),
        (LIMIT + 1, false),
        (LIMIT + 1000, false),
    ] {
        let item = python_style_event(size, "");
        let other = python_style_event(200, "");
        let body = format!(r#"{{"batch": [{other}, {item}, {other}], "sentAt": "2024-05-01T12:00:00Z"}}"#);
        let results = run(Endpoint::Batch, &body).unwrap();
        assert_eq!(results.len(), 3);
        assert_eq!(reason_of(&results[0]), None, "the small item before");
        assert_eq!(reason_of(&results[2]), None, "the small item after");
        match (&results[1], accepted) {
            (Ok(event), true) => assert!(event.value.len() > size - 5000, "{}", event.value.len()),
            (Err(r), false) => {
                assert_eq!((r.reason, r.field.as_str()), (Reason::TooLarge, ""), "{r}");
                assert!(r.detail.contains(&format!("{size} bytes as sent")), "{r}");
            }
            (other, _) => panic!("item of {size} bytes: {other:?}"),
        }
    }
}

#[test]
fn a_single_event_is_measured_by_its_body() {
    for (size, accepted) in [(LIMIT, true), (LIMIT + 1, false)] {
        let body = python_style_event(size, "");
        let result = run(Endpoint::Single(EventType::Track), &body).unwrap().remove(0);
        assert_eq!(
            reason_of(&result).is_none(),
            accepted,
            "{size}: {:?}",
            result.err()
        );
    }
}

#[test]
fn items_are_measured_whatever_surrounds_them() {
    let big = python_style_event(LIMIT + 1, "");
    let fits = python_style_event(LIMIT, "");
    // (body, expected rejection of each item): a repeated `batch` key (the last one counts),
    // items that are not objects, arrays inside items, escaped quotes and brackets in strings.
    let cases = [
        (
            format!(r#"{{"batch": [{big}], "batch": [{fits}, {big}]}}"#),
            vec![None, Some(Reason::TooLarge)],
        ),
        (
            format!(r#"{{"batch": [1, "x", {fits}, [], {big}]}}"#),
            vec![
                Some(Reason::NotAnObject),
                Some(Reason::NotAnObject),
                None,
                Some(Reason::NotAnObject),
                Some(Reason::TooLarge),
            ],
        ),
        (
            format!(
                r#"{{"context": {{"batch": [{{"a": 1}}]}}, "batch": [{}]}}"#,
                python_style_event(
                    LIMIT,
                    r#", "name": "a \"]} [{ \\", "list": [[{}], {"batch": []}]"#
                )
            ),
            vec![None],
        ),
    ];
    for (body, expected) in cases {
        let got: Vec<_> = run(Endpoint::Batch, &body)
            .unwrap()
            .iter()
            .map(reason_of)
            .collect();
        assert_eq!(got, expected, "{}", &body[..200.min(body.len())]);
    }
}

#[test]
fn what_ingest_adds_fits_in_the_allowance() {
    // The most ingest adds to an event: a generated messageId, no timestamps of its own (all
    // four written), the path's type, the longest ids, an IPv6 client address, and every
    // `ignored` note at its largest (batch context, integrations and sentAt unusable, and the
    // event's own sentAt and context.ip), each value 1 KiB.
    let note = format!("\"{}\"", "n".repeat(1020));
    let extra = format!(
        r#", "sentAt": {note}, "context": {{"ip": ["{}"]}}"#,
        "i".repeat(1016)
    );
    let item = python_style_event(LIMIT, &extra);
    let body =
        format!(r#"{{"batch": [{item}], "context": {note}, "integrations": {note}, "sentAt": {note}}}"#);
    let mut bytes = body.into_bytes();
    let limits = Limits::DEFAULT;
    let parsed = parse_body(&mut bytes, Endpoint::Batch, &limits).unwrap();
    assert_eq!(parsed.items[0].sent_bytes, LIMIT);
    let received = Received {
        workspace_id: "w".repeat(MAX_ID_BYTES),
        source_id: "s".repeat(MAX_ID_BYTES),
        client_ip: Some(IpAddr::V6(Ipv6Addr::new(
            0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff,
        ))),
        ..received()
    };
    let event = normalize(&parsed.items[0], None, &parsed.shared, &received, &limits).unwrap();
    let value: serde_json::Value = serde_json::from_slice(&event.value).unwrap();
    assert_eq!(value["ignored"].as_array().map(Vec::len), Some(5), "{value}");
    let added = event.value.len() as i64 - LIMIT as i64;
    assert!(
        added > 4000 && event.value.len() <= limits.max_record_bytes(),
        "ingest added {added} bytes, the allowance is {RECORD_ALLOWANCE}"
    );
}

#[test]
fn a_batch_context_too_large_to_merge_refuses_its_items_as_normalised() {
    let context = format!(r#"{{"blob": "{}"}}"#, "c".repeat(RECORD_ALLOWANCE));
    let item = python_style_event(LIMIT - 100, "");
    let small = python_style_event(300, "");
    let body = format!(r#"{{"context": {context}, "batch": [{item}, {small}]}}"#);
    let results = run(Endpoint::Batch, &body).unwrap();
    let rejection = results[0].as_ref().unwrap_err();
    assert_eq!(rejection.reason, Reason::TooLarge);
    assert!(rejection.detail.contains("as normalised"), "{rejection}");
    assert!(results[1].is_ok(), "the small item still fits");
}
