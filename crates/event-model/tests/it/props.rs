//! Property tests: arbitrary input gives an event or a reasoned rejection, never a panic.

use event_model::{normalize, parse_body, Endpoint, EventType, Limits, Reason};
use proptest::prelude::*;
use serde_json::Value;

use super::{assert_schema_valid, received};

fn endpoints() -> impl Strategy<Value = Endpoint> {
    prop_oneof![
        Just(Endpoint::Batch),
        proptest::sample::select(EventType::ALL.to_vec()).prop_map(Endpoint::Single),
    ]
}

/// Arbitrary JSON, biased towards the field names the validator looks at.
fn json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        proptest::sample::select(vec![
            "type",
            "userId",
            "anonymousId",
            "event",
            "messageId",
            "groupId",
            "previousId",
            "name",
            "category",
            "properties",
            "traits",
            "context",
            "integrations",
            "timestamp",
            "sentAt",
            "originalTimestamp",
            "batch",
            "writeKey",
            "ip",
        ])
        .prop_map(str::to_string),
        "[a-z]{1,4}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop_oneof![
            proptest::sample::select(vec![
                "track",
                "page",
                "alias",
                "group",
                "2024-05-01T12:00:00Z",
                ""
            ])
            .prop_map(str::to_string),
            ".{0,8}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Parses and normalises; every outcome must be an event that matches the schema, or a
/// rejection whose field points into the input (or names a missing child of it).
fn check(endpoint: Endpoint, mut bytes: Vec<u8>, input: Option<&Value>) {
    let limits = Limits::default();
    let fixed = match endpoint {
        Endpoint::Single(t) => Some(t),
        Endpoint::Batch => None,
    };
    let parsed = match parse_body(&mut bytes, endpoint, &limits) {
        Ok(parsed) => parsed,
        Err(rejection) => {
            if let Some(input) = input {
                assert_ne!(
                    rejection.reason,
                    Reason::InvalidJson,
                    "valid JSON refused: {rejection}"
                );
                assert_pointer_fits(input, &rejection.field);
            }
            return;
        }
    };
    for item in &parsed.items {
        match normalize(item, fixed, &parsed.shared, &received(), &limits) {
            Ok(accepted) => {
                assert_schema_valid(&accepted.value);
                assert!(!accepted.key.is_empty());
            }
            Err(rejection) => {
                assert!(Reason::ALL.contains(&rejection.reason));
                let item: Value = serde_json::from_slice(&simd_json::to_vec(&item.value).unwrap()).unwrap();
                assert_pointer_fits(&item, &rejection.field);
            }
        }
    }
}

/// A rejection's field is `""`, or a pointer whose parent exists in the input.
fn assert_pointer_fits(input: &Value, field: &str) {
    if field.is_empty() {
        return;
    }
    assert!(field.starts_with('/'), "not a JSON Pointer: {field:?}");
    let parent = &field[..field.rfind('/').unwrap()];
    assert!(
        input.pointer(parent).is_some(),
        "{field:?} does not point into {input}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(endpoint in endpoints(), bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(endpoint, bytes, None);
    }

    #[test]
    fn arbitrary_json_gives_an_event_or_a_reasoned_rejection(endpoint in endpoints(), value in json()) {
        check(endpoint, value.to_string().into_bytes(), Some(&value));
    }

    #[test]
    fn events_with_an_identity_and_the_right_fields_are_accepted(
        t in proptest::sample::select(EventType::ALL.to_vec()),
        id in "[a-zA-Z0-9_-]{1,20}",
        props in json(),
    ) {
        let mut event = serde_json::json!({"userId": id, "anonymousId": id, "event": "e", "groupId": "g", "previousId": "p"});
        if let Value::Object(_) = props {
            event["properties"] = props;
        }
        let mut bytes = event.to_string().into_bytes();
        let parsed = parse_body(&mut bytes, Endpoint::Single(t), &Limits::default()).unwrap();
        let accepted = normalize(&parsed.items[0], Some(t), &parsed.shared, &received(), &Limits::default());
        let accepted = accepted.unwrap_or_else(|r| panic!("{event} rejected: {r}"));
        prop_assert_eq!(accepted.key, id);
    }
}
