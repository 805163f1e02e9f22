//! Write keys: Basic auth or body `writeKey`; unknown, disabled or missing keys get 401.

use serde_json::json;
use test_support::{consume, DISABLED_WRITE_KEY, WRITE_KEY};

use super::{status_json, Server, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_disabled_and_missing_keys_get_401_and_nothing_is_produced() {
    let server = Server::start().await;
    let event = json!({"anonymousId": "a", "event": "e"});
    let url = server.url("/v1/track");
    let attempts = [
        server
            .client
            .post(&url)
            .basic_auth("no-such-key", Some(""))
            .json(&event),
        server
            .client
            .post(&url)
            .basic_auth(DISABLED_WRITE_KEY, Some(""))
            .json(&event),
        server.client.post(&url).json(&event),
        server
            .client
            .post(&url)
            .json(&json!({"writeKey": "no-such-key", "anonymousId": "a", "event": "e"})),
        server
            .client
            .post(&url)
            .header("authorization", "Basic %%%")
            .json(&event),
    ];
    let mut errors = Vec::new();
    for attempt in attempts {
        let (status, reply) = status_json(attempt.send().await.unwrap()).await;
        assert_eq!(status, 401, "{reply}");
        assert_eq!(reply["success"], false);
        errors.push(reply["error"].as_str().unwrap().to_string());
    }
    assert_eq!(
        errors,
        [
            "unknown write key",
            "this write key's source is disabled",
            "missing write key: send it as the Basic auth username, the writeKey query parameter or writeKey in the body",
            "unknown write key",
            "malformed Authorization header and no writeKey",
        ]
    );
    // A valid request after them is the only record on the topic.
    let ok = server
        .client
        .post(&url)
        .json(&json!({"writeKey": WRITE_KEY, "anonymousId": "ok", "event": "e"}));
    assert_eq!(ok.send().await.unwrap().status(), 200);
    let records = consume(&server.topics.ingest, 2, std::time::Duration::from_secs(5)).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key.as_deref(), Some("ok"));
    assert!(consume(&server.topics.dlq, 1, std::time::Duration::from_secs(1))
        .await
        .is_empty());
    let _ = WAIT;
    server.stop().await.unwrap();
}
