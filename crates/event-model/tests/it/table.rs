//! A table of valid and invalid events for each type.

use event_model::{Endpoint, EventType, Reason};
use serde_json::json;

use super::{accept, run};

use EventType::*;

#[test]
fn valid_events_of_every_type_are_normalised() {
    let cases = [
        (
            Track,
            r#"{"anonymousId":"a1","event":"Signed Up","properties":{"plan":"pro","n":[1,{"x":null}]}}"#,
            json!({"type":"track","anonymous_id":"a1","event":"Signed Up","properties":{"plan":"pro","n":[1,{"x":null}]}}),
        ),
        (
            Identify,
            r#"{"userId":"u1","traits":{"email":"a@b.c"}}"#,
            json!({"type":"identify","user_id":"u1","traits":{"email":"a@b.c"}}),
        ),
        (
            Page,
            r#"{"anonymousId":"a1","name":"Home","category":"Docs","properties":{"url":"https://x"}}"#,
            json!({"type":"page","anonymous_id":"a1","name":"Home","category":"Docs","properties":{"url":"https://x"}}),
        ),
        (
            Screen,
            r#"{"userId":42,"name":"Settings"}"#,
            json!({"type":"screen","user_id":"42","name":"Settings"}),
        ),
        (
            Group,
            r#"{"userId":"u1","groupId":7,"traits":{"name":"Acme"}}"#,
            json!({"type":"group","user_id":"u1","group_id":"7","traits":{"name":"Acme"}}),
        ),
        (
            Alias,
            r#"{"userId":"u1","previousId":"a1"}"#,
            json!({"type":"alias","user_id":"u1","previous_id":"a1"}),
        ),
    ];
    for (t, body, expected) in cases {
        let (accepted, value) = accept(t, body);
        assert_eq!(accepted.event_type, t);
        for (k, v) in expected.as_object().unwrap() {
            assert_eq!(&value[k], v, "{body}: field {k} in {value}");
        }
        assert_eq!(value["workspace_id"], "ws_1");
        assert_eq!(value["source_id"], "src_1");
        assert_eq!(value["received_at"], "2024-05-01T12:00:00.000Z");
        assert_eq!(value["context"]["ip"], "203.0.113.7", "{body}");
        assert_eq!(value["message_id"].as_str().unwrap(), accepted.message_id);
        assert_eq!(accepted.message_id.len(), 36, "generated UUID");
    }
}

#[test]
fn the_key_is_anonymous_id_falling_back_to_user_id() {
    let (both, _) = accept(Track, r#"{"anonymousId":"anon","userId":"user","event":"e"}"#);
    assert_eq!(both.key, "anon");
    let (user_only, _) = accept(Track, r#"{"userId":"user","event":"e"}"#);
    assert_eq!(user_only.key, "user");
    let (empty_anon, _) = accept(Track, r#"{"anonymousId":"","userId":"user","event":"e"}"#);
    assert_eq!(empty_anon.key, "user", "an empty anonymousId counts as absent");
}

#[test]
fn client_fields_are_kept_and_server_fields_are_not_taken_from_the_client() {
    let (accepted, value) = accept(
        Track,
        r#"{"anonymousId":"a","event":"e","messageId":"m-1","context":{"ip":"198.51.100.1","locale":"de"},
            "integrations":{"All":false},"workspace_id":"evil","receivedAt":"2000-01-01T00:00:00Z","extra":1}"#,
    );
    assert_eq!(accepted.message_id, "m-1");
    assert_eq!(value["message_id"], "m-1");
    assert_eq!(
        value["context"],
        json!({"ip":"198.51.100.1","locale":"de"}),
        "the event's own ip wins"
    );
    assert_eq!(value["integrations"], json!({"All":false}));
    assert_eq!(value["workspace_id"], "ws_1");
    assert_eq!(value["received_at"], "2024-05-01T12:00:00.000Z");
    assert!(value.get("extra").is_none());
}

#[test]
fn the_path_sets_the_type_of_a_single_event() {
    let (accepted, value) = accept(Identify, r#"{"type":"track","userId":"u"}"#);
    assert_eq!(accepted.event_type, Identify);
    assert_eq!(value["type"], "identify");
}

#[test]
fn invalid_events_are_rejected_with_reason_and_field() {
    use Reason::*;
    let cases: &[(Endpoint, &str, Reason, &str)] = &[
        (
            Endpoint::Single(Track),
            r#"{"anonymousId":"a","event":"e""#,
            InvalidJson,
            "",
        ),
        (Endpoint::Single(Track), "\u{0}", InvalidJson, ""),
        (Endpoint::Single(Track), "[1,2]", NotAnObject, ""),
        (Endpoint::Single(Track), r#""text""#, NotAnObject, ""),
        (
            Endpoint::Single(Track),
            r#"{"anonymousId":"a"}"#,
            MissingField,
            "/event",
        ),
        (
            Endpoint::Single(Track),
            r#"{"anonymousId":"a","event":5}"#,
            InvalidType,
            "/event",
        ),
        (
            Endpoint::Single(Track),
            r#"{"anonymousId":"a","event":""}"#,
            InvalidValue,
            "/event",
        ),
        (
            Endpoint::Single(Track),
            r#"{"event":"e"}"#,
            MissingIdentity,
            "/anonymousId",
        ),
        (
            Endpoint::Single(Track),
            r#"{"event":"e","userId":"","anonymousId":null}"#,
            MissingIdentity,
            "/anonymousId",
        ),
        (
            Endpoint::Single(Track),
            r#"{"event":"e","userId":true}"#,
            InvalidType,
            "/userId",
        ),
        (
            Endpoint::Single(Track),
            r#"{"event":"e","anonymousId":{"a":1}}"#,
            InvalidType,
            "/anonymousId",
        ),
        (
            Endpoint::Single(Track),
            r#"{"event":"e","anonymousId":"a","properties":[1]}"#,
            InvalidType,
            "/properties",
        ),
        (
            Endpoint::Single(Track),
            r#"{"event":"e","anonymousId":"a","context":"x"}"#,
            InvalidType,
            "/context",
        ),
        (
            Endpoint::Single(Track),
            r#"{"event":"e","anonymousId":"a","integrations":1}"#,
            InvalidType,
            "/integrations",
        ),
        (
            Endpoint::Single(Track),
            r#"{"event":"e","anonymousId":"a","timestamp":"yesterday"}"#,
            InvalidValue,
            "/timestamp",
        ),
        (
            Endpoint::Single(Track),
            r#"{"event":"e","anonymousId":"a","timestamp":1714564800}"#,
            InvalidType,
            "/timestamp",
        ),
        (
            Endpoint::Single(Track),
            r#"{"event":"e","anonymousId":"a","originalTimestamp":"2024-05-01T25:00:00"}"#,
            InvalidValue,
            "/originalTimestamp",
        ),
        (
            Endpoint::Single(Track),
            r#"{"event":"e","anonymousId":"a","properties":[{}]}"#,
            InvalidType,
            "/properties",
        ),
        (
            Endpoint::Single(Track),
            r#"{"event":"e","anonymousId":"a","messageId":7}"#,
            InvalidType,
            "/messageId",
        ),
        (
            Endpoint::Single(Track),
            r#"{"event":"e","anonymousId":"a","messageId":""}"#,
            InvalidValue,
            "/messageId",
        ),
        (
            Endpoint::Single(Identify),
            r#"{"traits":{}}"#,
            MissingIdentity,
            "/anonymousId",
        ),
        (
            Endpoint::Single(Identify),
            r#"{"userId":"u","traits":"vip"}"#,
            InvalidType,
            "/traits",
        ),
        (
            Endpoint::Single(Page),
            r#"{"userId":"u","name":3}"#,
            InvalidType,
            "/name",
        ),
        (
            Endpoint::Single(Page),
            r#"{"userId":"u","category":[]}"#,
            InvalidType,
            "/category",
        ),
        (
            Endpoint::Single(Page),
            r#"{"name":"Home"}"#,
            MissingIdentity,
            "/anonymousId",
        ),
        (
            Endpoint::Single(Screen),
            r#"{"anonymousId":"a","name":false}"#,
            InvalidType,
            "/name",
        ),
        (
            Endpoint::Single(Screen),
            r#"{"anonymousId":"a","properties":"p"}"#,
            InvalidType,
            "/properties",
        ),
        (
            Endpoint::Single(Group),
            r#"{"userId":"u"}"#,
            MissingField,
            "/groupId",
        ),
        (
            Endpoint::Single(Group),
            r#"{"userId":"u","groupId":[1]}"#,
            InvalidType,
            "/groupId",
        ),
        (
            Endpoint::Single(Group),
            r#"{"userId":"u","groupId":"g","traits":1}"#,
            InvalidType,
            "/traits",
        ),
        (
            Endpoint::Single(Alias),
            r#"{"anonymousId":"a","previousId":"p"}"#,
            MissingField,
            "/userId",
        ),
        (
            Endpoint::Single(Alias),
            r#"{"userId":"u"}"#,
            MissingField,
            "/previousId",
        ),
        (
            Endpoint::Single(Alias),
            r#"{"userId":"u","previousId":false}"#,
            InvalidType,
            "/previousId",
        ),
        (
            Endpoint::Batch,
            r#"{"batch":[{"type":"purchase","userId":"u"}]}"#,
            UnknownType,
            "/type",
        ),
        (
            Endpoint::Batch,
            r#"{"batch":[{"userId":"u"}]}"#,
            MissingField,
            "/type",
        ),
        (
            Endpoint::Batch,
            r#"{"batch":[{"type":1,"userId":"u"}]}"#,
            InvalidType,
            "/type",
        ),
        (Endpoint::Batch, r#"{"batch":[3]}"#, NotAnObject, ""),
        (Endpoint::Batch, r#"{"batch":{}}"#, InvalidType, "/batch"),
        (Endpoint::Batch, r#"{"batch":null}"#, MissingField, "/batch"),
        (Endpoint::Batch, r#"{"events":[]}"#, MissingField, "/batch"),
    ];
    for (endpoint, body, reason, field) in cases {
        let rejection = match run(*endpoint, body) {
            Err(whole_body) => whole_body,
            Ok(mut items) => items.remove(0).expect_err(body),
        };
        assert_eq!(
            (rejection.reason, rejection.field.as_str()),
            (*reason, *field),
            "{body}: {rejection}"
        );
    }
}

#[test]
fn an_event_over_the_size_limit_is_too_large() {
    let body = format!(
        r#"{{"anonymousId":"a","event":"e","properties":{{"blob":"{}"}}}}"#,
        "x".repeat(33 * 1024)
    );
    let rejection = run(Endpoint::Single(Track), &body)
        .unwrap()
        .remove(0)
        .unwrap_err();
    assert_eq!(
        (rejection.reason, rejection.field.as_str()),
        (Reason::TooLarge, "")
    );
}

#[test]
fn deeply_nested_json_is_refused_before_parsing() {
    let body = format!(
        r#"{{"anonymousId":"a","event":"e","properties":{}1{}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    let rejection = run(Endpoint::Single(Track), &body).unwrap_err();
    // Named by the pointer to the container that is one too deep.
    assert_eq!(
        (rejection.reason, rejection.field),
        (Reason::TooDeep, format!("/properties{}", "/0".repeat(63)))
    );
    // Brackets inside strings do not count, escaped quotes included.
    let body = format!(r#"{{"anonymousId":"a","event":"{}"}}"#, "[".repeat(100));
    accept(Track, &body);
    let body = format!(
        r#"{{"anonymousId":"a","event":"x\"{}\\","p":1}}"#,
        "[".repeat(100)
    );
    accept(Track, &body);
}

#[test]
fn objects_with_too_many_keys_are_rejected_with_their_pointer() {
    let keys: serde_json::Map<String, serde_json::Value> =
        (0..1001).map(|i| (format!("k{i}"), json!(i))).collect();
    let body =
        json!({"anonymousId": "a", "event": "e", "properties": {"a/b": [1, {"deep": keys}]}}).to_string();
    // Refused by the scan before parsing, named by its pointer into the body.
    let rejection = run(Endpoint::Single(Track), &body).unwrap_err();
    assert_eq!(
        (rejection.reason, rejection.field.as_str()),
        (Reason::TooManyKeys, "/properties/a~1b/1/deep")
    );
    let ok: serde_json::Map<String, serde_json::Value> =
        (0..1000).map(|i| (format!("k{i}"), json!(i))).collect();
    accept(
        Track,
        &json!({"anonymousId": "a", "event": "e", "properties": ok}).to_string(),
    );
}

#[test]
fn repeated_keys_are_refused_before_parsing_however_many() {
    // The issue's body: 102 388 copies of `"":0` in properties, 512 KB.
    let copies = vec![r#""":0"#; 102_388].join(",");
    let body = format!(r#"{{"anonymousId":"a","event":"e","properties":{{{copies}}}}}"#);
    let rejection = run(Endpoint::Single(Track), &body).unwrap_err();
    assert_eq!(
        (rejection.reason, rejection.field.as_str()),
        (Reason::TooManyKeys, "/properties")
    );
    // In a batch, an item over the limit costs that item alone (one event's problem never costs
    // another); its pointer is into the event, escaped keys decoded.
    let keys: serde_json::Map<String, serde_json::Value> =
        (0..1001).map(|i| (format!("k{i}"), json!(i))).collect();
    let ok = json!({"type": "track", "event": "e", "anonymousId": "a"});
    let body = json!({"batch": [ok, {"type": "track", "properties": {"\"q~": keys}}]}).to_string();
    let mut items = run(Endpoint::Batch, &body).unwrap();
    let rejection = items.remove(1).unwrap_err();
    assert_eq!(
        (rejection.reason, rejection.field.as_str()),
        (Reason::TooManyKeys, "/properties/\"q~0")
    );
    assert!(items.remove(0).is_ok(), "the other item stands");
    // Many objects, each under the limit, over the body's total.
    let limits = event_model::Limits::default();
    let object = format!("{{{}}}", vec![r#""k":0"#; 1000].join(","));
    let objects = vec![object.as_str(); limits.max_total_keys / 1000 + 1].join(",");
    let mut body =
        format!(r#"{{"anonymousId":"a","event":"e","properties":{{"p":[{objects}]}}}}"#).into_bytes();
    let rejection = event_model::parse_event(&mut body, &limits).unwrap_err();
    assert_eq!(
        (rejection.reason, rejection.field.as_str()),
        (Reason::TooManyKeys, "")
    );
    // Keys in strings, and `:` in strings, are not keys.
    let text = vec![r#"\"k\":0"#; 2000].join(",");
    accept(
        Track,
        &json!({"anonymousId": "a", "event": "e", "properties": {"t": text, "u": ":::"}}).to_string(),
    );
}

#[test]
fn hostile_numbers_and_duplicate_keys_give_valid_json_or_a_rejection() {
    for body in [
        format!(
            r#"{{"anonymousId":"a","event":"e","properties":{{"n":{}}}}}"#,
            "9".repeat(10_000)
        ),
        format!(
            r#"{{"anonymousId":"a","event":"e","properties":{{"n":0.{}1}}}}"#,
            "0".repeat(10_000)
        ),
        format!(
            r#"{{"anonymousId":"a","event":"e","properties":{{"n":1e{}}}}}"#,
            "9".repeat(400)
        ),
        r#"{"anonymousId":"a","anonymousId":"b","event":"e"}"#.to_string(),
    ] {
        match run(Endpoint::Single(Track), &body) {
            Err(rejection) => assert_eq!(rejection.reason, Reason::InvalidJson, "{rejection}"),
            Ok(mut results) => match results.remove(0) {
                // run() already checked the value against the schema, so it is valid JSON.
                Ok(accepted) => {
                    let value: serde_json::Value = serde_json::from_slice(&accepted.value).unwrap();
                    assert_eq!(value["anonymous_id"].as_str(), Some(accepted.key.as_str()));
                }
                Err(rejection) => panic!("unexpected {rejection}"),
            },
        }
    }
}

#[test]
fn every_reason_has_a_stable_name() {
    for reason in Reason::ALL {
        assert_eq!(Reason::from_name(reason.as_str()), Some(reason));
    }
    assert_eq!(Reason::InvalidJson.as_str(), "invalid_json");
    assert_eq!(Reason::MissingIdentity.to_string(), "missing_identity");
}
