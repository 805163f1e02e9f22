//! Every endpoint puts normalised, keyed, headed events on the ingest topic; invalid events go
//! to the DLQ with reason, field and raw payload before the client hears of them.

use serde_json::json;
use test_support::{assert_schema_valid, consume};

use super::{rejected_items, status_json, Server, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_single_event_endpoint_produces_a_keyed_record() {
    let server = Server::start().await;
    let cases = [
        (
            "track",
            json!({"anonymousId":"v-track","event":"Signed Up","properties":{"plan":"pro"}}),
        ),
        (
            "identify",
            json!({"userId":"u-identify","traits":{"email":"a@example.com"}}),
        ),
        (
            "page",
            json!({"anonymousId":"v-page","name":"Home","properties":{"path":"/"}}),
        ),
        ("screen", json!({"anonymousId":"v-screen","name":"Settings"})),
        (
            "group",
            json!({"userId":"u-group","groupId":"g-1","traits":{"name":"Acme"}}),
        ),
        (
            "alias",
            json!({"userId":"u-alias","previousId":"v-alias","anonymousId":"v-alias"}),
        ),
    ];
    for (i, (path, body)) in cases.iter().enumerate() {
        let mut body = body.clone();
        body["messageId"] = json!(format!("m-{i}"));
        let (status, reply) = status_json(server.post(&format!("/v1/{path}"), &body).await).await;
        assert_eq!((status, reply), (200, json!({"success": true})), "/v1/{path}");
    }
    let mut records = consume(&server.topics.ingest, cases.len(), WAIT).await;
    assert_eq!(records.len(), cases.len());
    records.sort_by_key(|r| r.event()["message_id"].as_str().unwrap().to_string());
    for (i, ((path, body), record)) in cases.iter().zip(&records).enumerate() {
        assert_schema_valid(&record.value);
        let value = record.event();
        let expected_key = body.get("anonymousId").or(body.get("userId")).unwrap();
        assert_eq!(record.key.as_deref(), expected_key.as_str(), "key of {path}");
        assert_eq!(record.header("workspace_id"), Some("ws_test"));
        assert_eq!(record.header("source_id"), Some("src_test"));
        assert_eq!(record.header("type"), Some(*path));
        assert_eq!(value["type"], *path);
        assert_eq!(value["message_id"], format!("m-{i}"));
        assert_eq!(value["context"]["ip"], "127.0.0.1");
    }
    assert_eq!(records[0].event()["properties"], json!({"plan": "pro"}));
    assert_eq!(records[4].event()["group_id"], "g-1");
    assert_eq!(records[5].event()["previous_id"], "v-alias");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_batch_sends_valid_items_to_ingest_and_invalid_ones_to_the_dlq() {
    let server = Server::start().await;
    let batch = json!({
        "context": {"library": {"name": "test"}},
        "sentAt": "2024-05-01T12:00:00Z",
        "batch": [
            {"type":"track","anonymousId":"v1","event":"Viewed","messageId":"ok-1"},
            {"type":"track","anonymousId":"v1","messageId":"bad-1"},
            {"type":"identify","userId":"u2","messageId":"ok-2","traits":{"n":1}},
            {"type":"purchase","userId":"u3","messageId":"bad-2"},
            {"type":"page","anonymousId":"v4","messageId":"bad-3","properties":"not an object"},
        ]
    });
    for path in ["/v1/batch", "/v1/import"] {
        let (status, reply) = status_json(server.post(path, &batch).await).await;
        assert_eq!(status, 400, "{path}: {reply}");
        assert_eq!(reply["accepted"], 2);
        let named = rejected_items(&reply);
        let expected = [
            (1, "bad-1", "missing_field", "/event"),
            (3, "bad-2", "unknown_type", "/type"),
            (4, "bad-3", "invalid_type", "/properties"),
        ];
        assert_eq!(
            named,
            expected.map(|(i, m, r, f)| (i, m.to_string(), r.to_string(), f.to_string()))
        );
    }

    let ingest = consume(&server.topics.ingest, 4, WAIT).await;
    let mut ids: Vec<_> = ingest
        .iter()
        .map(|r| r.event()["message_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["ok-1", "ok-1", "ok-2", "ok-2"]);
    for record in &ingest {
        assert_schema_valid(&record.value);
        let value = record.event();
        assert_eq!(
            value["context"]["library"]["name"], "test",
            "batch context applied"
        );
        assert_eq!(value["sent_at"], "2024-05-01T12:00:00.000Z");
        let key = if value["type"] == "track" { "v1" } else { "u2" };
        assert_eq!(record.key.as_deref(), Some(key));
    }

    let dlq = consume(&server.topics.dlq, 6, WAIT).await;
    assert_eq!(dlq.len(), 6);
    let first = &dlq[0];
    assert_eq!(first.key.as_deref(), Some("ws_test"));
    assert_eq!(first.header("reason"), Some("missing_field"));
    let envelope = first.json();
    assert_eq!(envelope["workspace_id"], "ws_test");
    assert_eq!(envelope["source_id"], "src_test");
    assert_eq!(envelope["message_id"], "bad-1");
    assert_eq!(envelope["reason"], "missing_field");
    assert_eq!(envelope["field"], "/event");
    let raw: serde_json::Value = serde_json::from_str(envelope["raw_payload"].as_str().unwrap()).unwrap();
    assert_eq!(
        raw,
        json!({"type":"track","anonymousId":"v1","messageId":"bad-1"}),
        "the item as sent"
    );
    let reasons: Vec<_> = dlq
        .iter()
        .map(|r| r.header("reason").unwrap().to_string())
        .collect();
    assert_eq!(
        reasons,
        [
            "missing_field",
            "unknown_type",
            "invalid_type",
            "missing_field",
            "unknown_type",
            "invalid_type"
        ]
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_single_event_lands_in_the_dlq_with_its_raw_body() {
    let server = Server::start().await;
    let body = r#"{"userId":"u1","event":42,"messageId":"m-bad","writeKey":"test-write-key"}"#;
    let response = server
        .client
        .post(server.url("/v1/track"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let (status, reply) = status_json(response).await;
    assert_eq!(status, 400);
    assert_eq!(reply["accepted"], 0);
    assert_eq!(reply["rejected"][0]["reason"], "invalid_type");
    assert_eq!(reply["rejected"][0]["field"], "/event");
    let dlq = consume(&server.topics.dlq, 1, WAIT).await;
    let raw: serde_json::Value =
        serde_json::from_str(dlq[0].json()["raw_payload"].as_str().unwrap()).unwrap();
    assert_eq!(
        raw,
        json!({"userId":"u1","event":42,"messageId":"m-bad"}),
        "the event, without its write key"
    );
    assert_eq!(dlq[0].json()["message_id"], "m-bad");

    // A body that is not JSON at all, from an authenticated source, is filed too.
    let response = server
        .client
        .post(server.url("/v1/track"))
        .basic_auth(test_support::WRITE_KEY, Some(""))
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, reply) = status_json(response).await;
    assert_eq!(status, 400);
    assert_eq!(reply["rejected"][0]["reason"], "invalid_json");
    let dlq = consume(&server.topics.dlq, 2, WAIT).await;
    assert_eq!(dlq[1].json()["raw_payload"], "{not json");
    assert_eq!(dlq[1].json()["reason"], "invalid_json");
    assert_eq!(dlq[1].json()["message_id"], reply["rejected"][0]["message_id"]);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_beacons_as_text_plain_with_the_key_in_the_body_are_accepted() {
    let server = Server::start().await;
    let body =
        json!({"writeKey": test_support::WRITE_KEY, "anonymousId": "beacon", "event": "Unload"}).to_string();
    let response = server
        .client
        .post(server.url("/v1/track"))
        .header("content-type", "text/plain;charset=UTF-8")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let records = consume(&server.topics.ingest, 1, WAIT).await;
    assert_eq!(records[0].key.as_deref(), Some("beacon"));
    assert!(records[0].event().get("writeKey").is_none());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_event_over_the_event_limit_gets_413_and_lands_in_the_dlq() {
    let server = Server::start().await;
    let event = json!({"anonymousId": "big", "event": "e", "messageId": "m-big", "properties": {"blob": "x".repeat(40 * 1024)}});
    let (status, reply) = status_json(server.post("/v1/track", &event).await).await;
    assert_eq!(status, 413, "{reply}");
    assert_eq!(reply["rejected"][0]["reason"], "too_large");
    let dlq = consume(&server.topics.dlq, 1, WAIT).await;
    let envelope = dlq[0].json();
    assert_eq!(envelope["reason"], "too_large");
    assert_eq!(envelope["message_id"], "m-big");
    let raw: serde_json::Value = serde_json::from_str(envelope["raw_payload"].as_str().unwrap()).unwrap();
    assert_eq!(raw, event);
    assert!(envelope.get("raw_payload_truncated").is_none());
    server.stop().await.unwrap();
}

/// The event limit is measured on the body as sent (whitespace included), not on the record
/// ingest writes (which adds `receivedAt`, ids and the source): a single-event body of exactly
/// `--max-event-bytes` lands, one byte more is `too_large`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_event_exactly_at_the_event_limit_lands_and_one_byte_more_is_too_large() {
    let server = Server::start().await;
    let limit = 32 * 1024;
    let body_of = |id: &str, len: usize| {
        let head = format!(
            r#"{{ "anonymousId": "edge", "event": "e", "messageId": "{id}", "properties": {{"blob": ""#
        );
        let tail = r#""} }"#;
        let blob = "x".repeat(len - head.len() - tail.len());
        format!("{head}{blob}{tail}")
    };
    let at = body_of("m-at", limit);
    assert_eq!(at.len(), limit);
    let (status, reply) = status_json(server.post_raw("/v1/track", at).await).await;
    assert_eq!(status, 200, "{reply}");
    let records = consume(&server.topics.ingest, 1, WAIT).await;
    assert_eq!(records[0].event()["message_id"], "m-at");
    assert!(
        records[0].value.len() > limit,
        "the record carries ingest's fields on top"
    );

    let over = body_of("m-over", limit + 1);
    let (status, reply) = status_json(server.post_raw("/v1/track", over).await).await;
    assert_eq!(status, 413, "{reply}");
    assert_eq!(reply["rejected"][0]["reason"], "too_large");
    assert_eq!(reply["code"], "too_large");
    let dlq = consume(&server.topics.dlq, 1, WAIT).await;
    assert_eq!(dlq[0].json()["message_id"], "m-over");
    server.stop().await.unwrap();
}
