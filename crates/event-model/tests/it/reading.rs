//! How JSON is read (issue 14): as Go's `encoding/json` and browsers' `JSON.parse` read it, and
//! batch-level problems that cost no event.

use event_model::{parse_body, Endpoint, EventType::Track, Limits, Reason};
use serde_json::{json, Value};

use super::{accept, assert_schema_valid, run};

/// The ingest value of a track event whose `properties` are `props` (JSON text).
fn properties(props: &str) -> Value {
    let (_, value) = accept(
        Track,
        &format!(r#"{{"anonymousId":"a","event":"e","properties":{props}}}"#),
    );
    value["properties"].clone()
}

/// The raw ingest value (bytes as text) of a track event with `properties`.
fn raw_value(props: &str) -> String {
    let body = format!(r#"{{"anonymousId":"a","event":"e","properties":{props}}}"#);
    let accepted = run(Endpoint::Single(Track), &body).unwrap().remove(0).unwrap();
    String::from_utf8(accepted.value).unwrap()
}

#[test]
fn a_lone_surrogate_escape_becomes_u_fffd() {
    assert_eq!(
        properties(r#"{"preview":"Great product \ud83d"}"#),
        json!({"preview": "Great product \u{FFFD}"})
    );
    let cases = [
        (r#""\ud83d""#, "\u{FFFD}"),
        (r#""\udc00""#, "\u{FFFD}"),
        (r#""\uDFFFx""#, "\u{FFFD}x"),
        (r#""\ud83d\ude00""#, "\u{1F600}"),
        (r#""\uD83D\uDE00""#, "\u{1F600}"),
        (r#""\ud83d\ud83d\ude00""#, "\u{FFFD}\u{1F600}"),
        (r#""\ude00\ud83d""#, "\u{FFFD}\u{FFFD}"),
        (r#""\ud83d\u0041""#, "\u{FFFD}A"),
        (r#""\ud83d\n""#, "\u{FFFD}\n"),
        (r#""\ud83dude00""#, "\u{FFFD}ude00"),
        // An escaped backslash, then text: no escape at all.
        (r#""\\ud83d""#, "\\ud83d"),
        (r#""\\\ud83d""#, "\\\u{FFFD}"),
        (r#""\u00e9\u20ac""#, "é€"),
        (r#""\u0000""#, "\u{0}"),
    ];
    for (text, expected) in cases {
        assert_eq!(
            properties(&format!(r#"{{"s":{text}}}"#)),
            json!({ "s": expected }),
            "{text}"
        );
    }
    // In keys too, and in fields the validator reads.
    assert_eq!(properties(r#"{"\ud800":1}"#), json!({"\u{FFFD}": 1}));
    let (accepted, _) = accept(Track, r#"{"anonymousId":"a\udbff","event":"e"}"#);
    assert_eq!(accepted.key, "a\u{FFFD}");
}

#[test]
fn a_repeated_key_keeps_its_last_value_at_every_level() {
    assert_eq!(
        properties(r#"{"plan":"free","seats":3,"plan":"pro"}"#),
        json!({"plan": "pro", "seats": 3})
    );
    assert_eq!(
        raw_value(r#"{"plan":"free","seats":3,"plan":"pro"}"#)
            .matches("\"plan\"")
            .count(),
        1
    );
    let (accepted, value) = accept(
        Track,
        r#"{"anonymousId":"a","event":"first","messageId":"m1","anonymousId":"b","event":"second",
            "messageId":"m2","properties":{"x":1},"properties":{"n":{"k":1,"k":2}}}"#,
    );
    assert_eq!((accepted.key.as_str(), accepted.message_id.as_str()), ("b", "m2"));
    assert_eq!(value["event"], "second");
    assert_eq!(value["properties"], json!({"n": {"k": 2}}));
    // Copies of one key are counted each against the key limit (before parsing, which must
    // not see more): up to it, they are one key.
    let many = format!("{{{}\"\":1}}", "\"\":0,".repeat(999));
    assert_eq!(properties(&many), json!({"": 1}));
}

#[test]
fn numbers_beyond_64_bits_are_kept() {
    let cases = [
        ("123456789012345678901234567890", "123456789012345678901234567890"),
        (
            "-123456789012345678901234567890",
            "-123456789012345678901234567890",
        ),
        ("18446744073709551616", "18446744073709551616"),
        (
            "340282366920938463463374607431768211455",
            "340282366920938463463374607431768211455",
        ),
        (
            "-170141183460469231731687303715884105728",
            "-170141183460469231731687303715884105728",
        ),
        // Past 128 bits: the nearest double, as JSON.parse and Go's interface{} read it.
        ("340282366920938463463374607431768211456", "3.402823669209385e38"),
        ("1e300", "1e300"),
        // Underflow reads as zero in both reference decoders.
        ("1e-400", "0.0"),
        ("-1e-400", "-0.0"),
    ];
    for (number, written) in cases {
        let raw = raw_value(&format!(r#"{{"n":{number}}}"#));
        assert!(
            raw.contains(&format!(r#""properties":{{"n":{written}}}"#)),
            "{number}: {raw}"
        );
        let expected: f64 = number.parse().unwrap();
        assert_eq!(
            properties(&format!(r#"{{"n":{number}}}"#))["n"].as_f64(),
            Some(expected)
        );
    }
    // Identifiers are stringified exactly.
    let (accepted, value) = accept(Track, r#"{"userId":123456789012345678901234567890,"event":"e"}"#);
    assert_eq!(accepted.key, "123456789012345678901234567890");
    assert_eq!(value["user_id"], "123456789012345678901234567890");
}

#[test]
fn numbers_beyond_the_largest_double_refuse_the_body_as_go_does() {
    for number in ["1e400", "-1e400", "1.8e308", &"9".repeat(400)] {
        let body = format!(r#"{{"anonymousId":"a","event":"e","properties":{{"n":{number}}}}}"#);
        let rejection = run(Endpoint::Single(Track), &body).unwrap_err();
        assert_eq!(rejection.reason, Reason::InvalidJson, "{number}");
    }
    let (_, value) = accept(
        Track,
        r#"{"anonymousId":"a","event":"e","properties":{"n":1.7976931348623157e308}}"#,
    );
    assert_eq!(value["properties"]["n"].as_f64(), Some(f64::MAX));
}

#[test]
fn invalid_utf8_is_read_as_u_fffd_and_a_bom_is_ignored() {
    let limits = Limits::default();
    let cases: [(&[u8], &str); 5] = [
        (b"\xff", "\u{FFFD}"),
        (b"caf\xc3", "caf\u{FFFD}"),
        (b"\xe2\x82x", "\u{FFFD}x"),
        // A UTF-8-encoded surrogate: three sequences, one U+FFFD each (WHATWG).
        (b"\xed\xa0\x80", "\u{FFFD}\u{FFFD}\u{FFFD}"),
        (b"\xc0\x80ok", "\u{FFFD}\u{FFFD}ok"),
    ];
    for (bytes, expected) in cases {
        let mut body = br#"{"anonymousId":"a","event":"e","properties":{"s":""#.to_vec();
        body.extend_from_slice(bytes);
        body.extend_from_slice(br#""}}"#);
        let parsed = parse_body(&mut body, Endpoint::Single(Track), &limits).unwrap();
        let props = simd_json::to_string(&parsed.items[0].value).unwrap();
        let props: Value = serde_json::from_str(&props).unwrap();
        assert_eq!(props["properties"]["s"], expected, "{bytes:?}");
    }
    // A byte order mark is not JSON, but decoders skip it.
    let (accepted, _) = accept(Track, "\u{FEFF}{\"anonymousId\":\"a\",\"event\":\"e\"}");
    assert_eq!(accepted.key, "a");
    // Outside strings, invalid bytes are still not JSON.
    let mut body = b"{\"anonymousId\":\"a\",\xff\"event\":\"e\"}".to_vec();
    let rejection = parse_body(&mut body, Endpoint::Single(Track), &limits).unwrap_err();
    assert_eq!(rejection.reason, Reason::InvalidJson);
}

#[test]
fn a_null_user_id_with_an_anonymous_id_is_keyed_by_the_anonymous_id() {
    let (accepted, value) = accept(Track, r#"{"userId":null,"anonymousId":"anon-1","event":"e"}"#);
    assert_eq!(accepted.key, "anon-1");
    assert!(value.get("user_id").is_none());
}

#[test]
fn php_empty_maps_are_read_as_empty_objects() {
    let body = r#"{"batch":[{"type":"track","event":"E","userId":"u-2","messageId":"m-4"}],"context":[]}"#;
    let accepted = run(Endpoint::Batch, body).unwrap().remove(0).unwrap();
    assert_eq!(accepted.message_id, "m-4");
    let value: Value = serde_json::from_slice(&accepted.value).unwrap();
    assert_eq!(value["context"], json!({"ip": "203.0.113.7"}));
    assert!(value.get("ignored").is_none());

    let body = r#"{"batch":[{"type":"identify","userId":"u","traits":[],"properties":[],"context":[],"integrations":[]}],
                   "integrations":[]}"#;
    let accepted = run(Endpoint::Batch, body).unwrap().remove(0).unwrap();
    let value: Value = serde_json::from_slice(&accepted.value).unwrap();
    assert_eq!(value["traits"], json!({}));
    assert_eq!(value["properties"], json!({}));
    assert_eq!(value["integrations"], json!({}));
    assert_eq!(value["context"], json!({"ip": "203.0.113.7"}));
}

#[test]
fn unusable_batch_fields_are_dropped_and_noted_in_every_item() {
    let body = json!({
        "context": "mobile",
        "integrations": 5,
        "sentAt": "yesterday",
        "batch": [
            {"type":"track","userId":"u","event":"e","timestamp":"2024-05-01T11:00:00Z"},
            {"type":"identify","userId":"u","context":{"locale":"de"}},
        ]
    })
    .to_string();
    let results = run(Endpoint::Batch, &body).unwrap();
    let expected = json!([
        {"field":"/context","scope":"batch","reason":"invalid_type","value":"mobile"},
        {"field":"/integrations","scope":"batch","reason":"invalid_type","value":5},
        {"field":"/sentAt","scope":"batch","reason":"invalid_value","value":"yesterday"},
    ]);
    for result in results {
        let value: Value = serde_json::from_slice(&result.unwrap().value).unwrap();
        assert_eq!(value["ignored"], expected, "{value}");
        assert!(value.get("integrations").is_none());
        assert!(value.get("sent_at").is_none());
    }

    // A sentAt that is not a string; a huge value is noted without its value.
    let body = json!({"sentAt": 17, "context": {"x": "y".repeat(4000)}, "integrations": ["x".repeat(4000)],
                      "batch": [{"type":"identify","userId":"u"}]})
    .to_string();
    let value: Value =
        serde_json::from_slice(&run(Endpoint::Batch, &body).unwrap().remove(0).unwrap().value).unwrap();
    assert_eq!(
        value["ignored"],
        json!([
            {"field":"/integrations","scope":"batch","reason":"invalid_type","truncated":true},
            {"field":"/sentAt","scope":"batch","reason":"invalid_type","value":17},
        ])
    );
}

#[test]
fn an_items_unreadable_sent_at_is_noted_and_the_batchs_is_used() {
    let body = json!({
        "sentAt": "2024-05-01T11:00:10Z",
        "batch": [
            {"type":"track","userId":"u","event":"e","sentAt":"x","timestamp":"2024-05-01T11:00:00Z"},
            {"type":"track","userId":"u","event":"e","sentAt":{"at":1}},
        ]
    })
    .to_string();
    let values: Vec<Value> = run(Endpoint::Batch, &body)
        .unwrap()
        .into_iter()
        .map(|r| serde_json::from_slice(&r.unwrap().value).unwrap())
        .collect();
    assert_eq!(
        values[0]["ignored"],
        json!([{"field":"/sentAt","scope":"event","reason":"invalid_value","value":"x"}])
    );
    assert_eq!(values[0]["sent_at"], "2024-05-01T11:00:10.000Z");
    assert_eq!(values[0]["timestamp"], "2024-05-01T11:59:50.000Z");
    assert_eq!(
        values[1]["ignored"],
        json!([{"field":"/sentAt","scope":"event","reason":"invalid_type","value":{"at":1}}])
    );
    // A single event's unreadable sentAt: its own time is used as is.
    let (_, value) = accept(
        Track,
        r#"{"anonymousId":"a","event":"e","sentAt":"soon","timestamp":"2024-05-01T10:00:00Z"}"#,
    );
    assert_eq!(value["timestamp"], "2024-05-01T10:00:00.000Z");
    assert_eq!(value["ignored"][0]["field"], "/sentAt");
}

#[test]
fn the_write_key_comes_from_the_top_level_then_the_first_item_and_leaves_every_item() {
    let limits = Limits::default();
    let key_of = |body: &str| {
        let mut bytes = body.as_bytes().to_vec();
        let parsed = parse_body(&mut bytes, Endpoint::Batch, &limits).unwrap();
        for item in &parsed.items {
            assert!(
                !simd_json::to_string(&item.value).unwrap().contains("writeKey"),
                "{body}"
            );
        }
        parsed.write_key
    };
    assert_eq!(
        key_of(r#"{"writeKey":"top","batch":[{"writeKey":"item"}]}"#).as_deref(),
        Some("top")
    );
    assert_eq!(
        key_of(r#"{"batch":[{"type":"track"},{"writeKey":""},{"writeKey":5},{"writeKey":"second"},{"writeKey":"third"}]}"#)
            .as_deref(),
        Some("second")
    );
    assert_eq!(
        key_of(r#"{"writeKey":"","batch":[3,{"writeKey":"item"}]}"#).as_deref(),
        Some("item")
    );
    assert_eq!(key_of(r#"{"batch":[{"type":"track"}]}"#), None);
    // The value never carries it either (unknown top-level fields are not carried anyway).
    let body = r#"{"batch":[{"type":"track","userId":"u","event":"e","writeKey":"k"}]}"#;
    let accepted = run(Endpoint::Batch, body).unwrap().remove(0).unwrap();
    assert!(!String::from_utf8(accepted.value).unwrap().contains("\"k\""));
}

#[test]
fn long_fractions_read_as_the_nearest_double_wherever_they_are() {
    // simd-json 0.14.3 misread some of these depending on their offset in the body.
    for number in [
        "60580214494483315.40170497462772481",
        "-0.123456789012345678901234567890",
        "1234567890123456789012345.5e-10",
        "0.00000000000000000000000000001234567890123456789012",
        "123456789012345678901234567890e-300",
    ] {
        let expected: f64 = number.parse().unwrap();
        for pad in 0..80 {
            let props = format!(r#"{{"p":"{}","n":{number}}}"#, "x".repeat(pad));
            assert_eq!(
                properties(&props)["n"].as_f64(),
                Some(expected),
                "{number} after {pad} bytes"
            );
        }
    }
}

#[test]
fn a_context_ip_that_is_not_a_string_is_noted_and_the_client_address_used() {
    for ip in [json!(false), json!(17), json!({"v4": "1.2.3.4"})] {
        let body =
            json!({"anonymousId": "a", "event": "e", "context": {"ip": ip.clone(), "x": 1}}).to_string();
        let (accepted, value) = accept(Track, &body);
        assert_schema_valid(&accepted.value);
        assert_eq!(value["context"]["ip"], "203.0.113.7", "{value}");
        assert_eq!(value["context"]["x"], 1);
        assert_eq!(
            value["ignored"],
            json!([{"field": "/context/ip", "scope": "event", "reason": "invalid_type", "value": ip}])
        );
    }
    // A string is kept as sent.
    let (_, value) = accept(
        Track,
        r#"{"anonymousId":"a","event":"e","context":{"ip":"10.0.0.1"}}"#,
    );
    assert_eq!(value["context"]["ip"], "10.0.0.1");
}
