//! What Segment and RudderStack libraries send, as they send it: every path and its preflight,
//! every place a write key goes, any content type, gzip however labelled, JSON as Go and
//! browsers read it, pixels and the analytics.js settings. Each example of issue 14 is a test
//! here with the right answer; the real libraries are in `bins/ingest/tests/it`.

use std::io::Write;
use std::time::Duration;

use serde_json::json;
use test_support::{consume, DISABLED_WRITE_KEY, WRITE_KEY};

use super::{basic, rejected_items, status_json, Server, WAIT};

/// How long a test waits to be sure that nothing (more) arrives.
const QUIET: Duration = Duration::from_secs(2);

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The issue's table, row by row: each request as the library sends it, and its right answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issue_examples_are_accepted_intact() {
    let server = Server::start().await;
    let auth = format!("Basic {}", basic(WRITE_KEY));

    // analytics.js 2.0: a one-letter path, text/plain, the key in Basic auth and in the body.
    let response = server
        .client
        .post(server.url("/v1/t"))
        .header("content-type", "text/plain")
        .header("authorization", &auth)
        .body(format!(r#"{{"type":"track","event":"Button Clicked","anonymousId":"a-1","messageId":"m-1","writeKey":"{WRITE_KEY}","userId":null}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(status_json(response).await, (200, json!({"success": true})));

    // Its preflight: 204 with the CORS headers.
    let response = server
        .client
        .request(reqwest::Method::OPTIONS, server.url("/v1/b"))
        .header("origin", "http://shop.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(
        header("access-control-allow-origin").as_deref(),
        Some("http://shop.example")
    );
    assert!(header("access-control-allow-methods").unwrap().contains("POST"));
    assert!(header("access-control-allow-headers")
        .unwrap()
        .to_lowercase()
        .contains("authorization"));

    // RudderStack's Node library: gzip'd JSON labelled as a form.
    let response = server
        .client
        .post(server.url("/v1/batch"))
        .header("authorization", &auth)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("content-encoding", "gzip")
        .body(gzip(
            br#"{"batch":[{"type":"track","event":"E","userId":"u-1","messageId":"m-2"}]}"#,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(status_json(response).await, (200, json!({"success": true})));

    // A string cut in the middle of an emoji: U+FFFD, nothing else changed.
    let body = r#"{"event":"Review","anonymousId":"a-2","messageId":"m-3","properties":{"preview":"Great product \ud83d"}}"#;
    assert_eq!(server.post_raw("/v1/track", body).await.status(), 200);

    // A repeated key: the last wins.
    let body = r#"{"event":"Plan","anonymousId":"a-3","messageId":"m-5","properties":{"plan":"free","seats":3,"plan":"pro"}}"#;
    assert_eq!(server.post_raw("/v1/track", body).await.status(), 200);

    // PHP's empty map as the batch context: the event stands on its own.
    let body = r#"{"batch":[{"type":"track","event":"E","userId":"u-2","messageId":"m-4"}],"context":[]}"#;
    let response = server.post_raw("/v1/batch", body).await;
    assert_eq!(status_json(response).await, (200, json!({"success": true})));

    let records = consume(&server.topics.ingest, 5, WAIT).await;
    let by_id = |id: &str| {
        records
            .iter()
            .find(|r| r.event()["message_id"] == id)
            .unwrap_or_else(|| panic!("{id} not on the ingest topic: {records:?}"))
    };
    let m1 = by_id("m-1");
    assert_eq!(m1.key.as_deref(), Some("a-1"));
    assert_eq!(m1.header("type"), Some("track"));
    assert_eq!(m1.event()["event"], "Button Clicked");
    assert!(m1.event().get("user_id").is_none());
    assert_eq!(by_id("m-2").key.as_deref(), Some("u-1"));
    let m3 = by_id("m-3");
    assert_eq!(m3.event()["properties"]["preview"], "Great product \u{FFFD}");
    assert!(String::from_utf8_lossy(&m3.value).contains("Great product \u{FFFD}\""));
    let m5 = by_id("m-5");
    assert_eq!(m5.event()["properties"], json!({"plan": "pro", "seats": 3}));
    assert_eq!(String::from_utf8_lossy(&m5.value).matches("\"plan\"").count(), 1);
    assert_eq!(by_id("m-4").key.as_deref(), Some("u-2"));
    assert!(consume(&server.topics.dlq, 1, QUIET).await.is_empty());
    server.stop().await.unwrap();
}

/// Every path the libraries use, with and without a trailing slash, for POST and preflight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sdk_path_takes_events_and_answers_its_preflight() {
    let server = Server::start().await;
    let singles = [
        ("track", "track"),
        ("t", "track"),
        ("identify", "identify"),
        ("i", "identify"),
        ("page", "page"),
        ("p", "page"),
        ("screen", "screen"),
        ("s", "screen"),
        ("group", "group"),
        ("g", "group"),
        ("alias", "alias"),
        ("a", "alias"),
    ];
    let mut expected = Vec::new();
    for (i, (path, event_type)) in singles.iter().enumerate() {
        let id = format!("single-{i}");
        let path = if i % 2 == 0 {
            format!("/v1/{path}")
        } else {
            format!("/v1/{path}/")
        };
        let body = json!({"messageId": id, "anonymousId": "v", "userId": "u", "event": "E", "groupId": "g", "previousId": "p"});
        let (status, reply) = status_json(server.post(&path, &body).await).await;
        assert_eq!(status, 200, "{path}: {reply}");
        expected.push((id, event_type.to_string()));
    }
    for (i, path) in [
        "/v1/batch",
        "/v1/b",
        "/v1/b/",
        "/v1/import",
        "/beacon/v1/batch",
        "//v1/batch",
    ]
    .iter()
    .enumerate()
    {
        let id = format!("batch-{i}");
        let body = json!({"batch": [{"type": "identify", "messageId": id, "userId": "u"}]});
        let (status, reply) = status_json(server.post(path, &body).await).await;
        assert_eq!(status, 200, "{path}: {reply}");
        expected.push((id, "identify".to_string()));
    }
    for path in [
        "/v1/t",
        "/v1/b/",
        "/v1/import",
        "/beacon/v1/batch",
        "/v1/identify",
    ] {
        let response = server
            .client
            .request(reqwest::Method::OPTIONS, server.url(path))
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,authorization")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204, "OPTIONS {path}");
        assert_eq!(
            response.headers()["access-control-allow-origin"],
            "https://app.example",
            "{path}"
        );
    }
    for path in [
        "/v1/tr",
        "/v1/batches",
        "/v2/track",
        "/beacon/v1/track",
        "/v1/track/x",
    ] {
        let response = server.post(path, &json!({})).await;
        assert_eq!(response.status(), 404, "{path}");
    }

    let records = consume(&server.topics.ingest, expected.len(), WAIT).await;
    let mut got: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            let id = r.event()["message_id"].as_str().unwrap().to_string();
            (id, r.header("type").unwrap().to_string())
        })
        .collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    server.stop().await.unwrap();
}

/// Every place a write key goes, and which place wins when two disagree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_keys_are_read_from_every_place_clients_put_them() {
    let server = Server::start().await;
    let event = |id: &str| json!({"messageId": id, "anonymousId": "v", "event": "E"});
    let url = server.url("/v1/track");
    let c = &server.client;
    let key_only = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(WRITE_KEY)
    };
    let accepted = [
        ("basic", c.post(&url).basic_auth(WRITE_KEY, Some("")).json(&event("basic"))),
        ("basic-no-colon", c.post(&url).header("authorization", format!("Basic {key_only}")).json(&event("basic-no-colon"))),
        ("basic-password", c.post(&url).basic_auth(WRITE_KEY, Some("ignored")).json(&event("basic-password"))),
        ("bearer-base64", c.post(&url).header("authorization", format!("Bearer {}", basic(WRITE_KEY))).json(&event("bearer-base64"))),
        ("bearer-raw", c.post(&url).header("authorization", format!("Bearer {WRITE_KEY}")).json(&event("bearer-raw"))),
        ("query", c.post(format!("{url}?writeKey={WRITE_KEY}")).json(&event("query"))),
        ("body", c.post(&url).json(&json!({"writeKey": WRITE_KEY, "messageId": "body", "anonymousId": "v", "event": "E"}))),
        // The header wins over a disagreeing body key; the query over the body.
        ("header-wins", c.post(&url).basic_auth(WRITE_KEY, Some("")).json(&json!({"writeKey": "other", "messageId": "header-wins", "anonymousId": "v", "event": "E"}))),
        ("query-wins", c.post(format!("{url}?writeKey={WRITE_KEY}")).json(&json!({"writeKey": "other", "messageId": "query-wins", "anonymousId": "v", "event": "E"}))),
        // An unusable Authorization header is skipped when the body has a key.
        ("bad-header-body-key", c.post(&url).header("authorization", "Basic !!!").json(&json!({"writeKey": WRITE_KEY, "messageId": "bad-header-body-key", "anonymousId": "v", "event": "E"}))),
        // A batch's key at its top, or in its items.
        ("batch-top", c.post(server.url("/v1/batch")).json(&json!({"writeKey": WRITE_KEY, "batch": [{"type": "track", "messageId": "batch-top", "anonymousId": "v", "event": "E"}]}))),
        ("batch-item", c.post(server.url("/v1/batch")).json(&json!({"batch": [{"type": "track", "writeKey": WRITE_KEY, "messageId": "batch-item", "anonymousId": "v", "event": "E"}]}))),
    ];
    for (name, request) in accepted {
        let (status, reply) = status_json(request.send().await.unwrap()).await;
        assert_eq!(status, 200, "{name}: {reply}");
    }
    let refused = [
        (
            "header-unknown",
            c.post(&url)
                .basic_auth("other", Some(""))
                .json(&json!({"writeKey": WRITE_KEY, "anonymousId": "v", "event": "E"})),
        ),
        (
            "query-disabled",
            c.post(format!("{url}?writeKey={DISABLED_WRITE_KEY}"))
                .json(&event("x")),
        ),
        (
            "item-unknown",
            c.post(server.url("/v1/batch")).json(
                &json!({"batch": [{"type": "track", "writeKey": "other", "anonymousId": "v", "event": "E"}]}),
            ),
        ),
        ("none", c.post(&url).json(&event("x"))),
    ];
    for (name, request) in refused {
        let (status, reply) = status_json(request.send().await.unwrap()).await;
        assert_eq!(status, 401, "{name}: {reply}");
    }
    let records = consume(&server.topics.ingest, 12, WAIT).await;
    let mut ids: Vec<String> = records
        .iter()
        .map(|r| {
            assert_eq!(r.header("source_id"), Some("src_test"));
            r.event()["message_id"].as_str().unwrap().to_string()
        })
        .collect();
    ids.sort();
    let mut want = vec![
        "basic",
        "basic-no-colon",
        "basic-password",
        "bearer-base64",
        "bearer-raw",
        "query",
        "body",
        "header-wins",
        "query-wins",
        "bad-header-body-key",
        "batch-top",
        "batch-item",
    ];
    want.sort();
    assert_eq!(ids, want);
    assert!(
        !records
            .iter()
            .any(|r| String::from_utf8_lossy(&r.value).contains(WRITE_KEY)),
        "a write key leaked into a record value"
    );
    server.stop().await.unwrap();
}

/// The body is JSON whatever Content-Type says; gzip in any letter case, listed with identity,
/// or unlabelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_content_type_and_every_gzip_labelling_is_read() {
    let server = Server::start().await;
    let body = |id: &str| format!(r#"{{"messageId":"{id}","anonymousId":"v","event":"E"}}"#);
    let cases: [(&str, Option<&str>, Option<&str>, bool); 10] = [
        ("none", None, None, false),
        (
            "json-charset",
            Some("application/json; charset=utf-8"),
            None,
            false,
        ),
        ("text", Some("text/plain;charset=UTF-8"), None, false),
        ("form", Some("application/x-www-form-urlencoded"), None, false),
        ("xml", Some("application/xml"), None, false),
        ("gzip-upper", Some("application/json"), Some("GZIP"), true),
        ("x-gzip", None, Some("x-gzip"), true),
        ("identity", None, Some("Identity"), false),
        ("gzip-identity", None, Some("gzip, identity"), true),
        ("gzip-unlabelled", Some("application/octet-stream"), None, true),
    ];
    for (id, content_type, encoding, gzipped) in cases {
        let mut request = server
            .client
            .post(server.url("/v1/track"))
            .basic_auth(WRITE_KEY, Some(""));
        if let Some(t) = content_type {
            request = request.header("content-type", t);
        }
        if let Some(e) = encoding {
            request = request.header("content-encoding", e);
        }
        let bytes = if gzipped {
            gzip(body(id).as_bytes())
        } else {
            body(id).into_bytes()
        };
        let (status, reply) = status_json(request.body(bytes).send().await.unwrap()).await;
        assert_eq!(status, 200, "{id}: {reply}");
    }
    let records = consume(&server.topics.ingest, cases.len(), WAIT).await;
    let mut ids: Vec<String> = records
        .iter()
        .map(|r| r.event()["message_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let mut want: Vec<&str> = cases.iter().map(|c| c.0).collect();
    want.sort();
    assert_eq!(ids, want);
    server.stop().await.unwrap();
}

/// JSON as Go's encoding/json and JSON.parse read it: lone surrogates of either half become
/// U+FFFD, repeated keys keep the last value everywhere (record key and headers included),
/// numbers beyond 64-bit integers are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_is_read_as_the_reference_decoders_read_it() {
    let server = Server::start().await;
    let bodies = [
        r#"{"messageId":"lone-low","anonymousId":"v","event":"E","properties":{"s":"a\udc00b","pair":"\ud83d\ude00"}}"#,
        r#"{"messageId":"dup-top","anonymousId":"first","anonymousId":"last","event":"E","event":"Last"}"#,
        r#"{"messageId":"dup-nested","anonymousId":"v","event":"E","context":{"page":{"url":"a","url":"b"}},"context":{"ip":"203.0.113.1"}}"#,
        r#"{"messageId":"big","anonymousId":"v","event":"E","properties":{"n":123456789012345678901234567890,"m":-99999999999999999999}}"#,
    ];
    for body in bodies {
        let (status, reply) = status_json(server.post_raw("/v1/track", body).await).await;
        assert_eq!(status, 200, "{body}: {reply}");
    }
    let records = consume(&server.topics.ingest, bodies.len(), WAIT).await;
    let by_id = |id: &str| records.iter().find(|r| r.event()["message_id"] == id).unwrap();
    let lone = by_id("lone-low").event();
    assert_eq!(lone["properties"]["s"], "a\u{FFFD}b");
    assert_eq!(lone["properties"]["pair"], "\u{1F600}");
    let dup = by_id("dup-top");
    assert_eq!(dup.key.as_deref(), Some("last"));
    assert_eq!(dup.event()["anonymous_id"], "last");
    assert_eq!(dup.event()["event"], "Last");
    // The last `context` wins whole, as Go and JSON.parse read it.
    let nested = by_id("dup-nested").event();
    assert_eq!(nested["context"], json!({"ip": "203.0.113.1"}));
    let big = String::from_utf8(by_id("big").value.clone()).unwrap();
    let big_value: serde_json::Value = serde_json::from_str(&big).unwrap();
    let n = &big_value["properties"]["n"];
    assert!(n.is_number(), "{big}");
    assert!(
        (n.as_f64().unwrap() - 1.2345678901234568e29).abs() < 1e15,
        "{big}"
    );
    assert!(big_value["properties"]["m"].as_f64().unwrap() < -9.9e19, "{big}");
    server.stop().await.unwrap();
}

/// One event's problem never costs another: a bad item goes to the DLQ alone with its own
/// messageId, and batch-level fields ingest cannot use are noted, not fatal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_level_oddities_cost_no_event() {
    let server = Server::start().await;
    let body = json!({
        "context": "not a map",
        "integrations": [],
        "sentAt": "yesterday",
        "batch": [
            {"type": "track", "event": "E", "anonymousId": "v", "messageId": "ok-1", "timestamp": "2024-05-01T12:00:00.123456+02:00"},
            {"type": "track", "anonymousId": "v", "messageId": "bad-1"},
            {"type": "identify", "userId": "u", "messageId": "ok-2", "properties": [], "timestamp": "2024-05-01 12:00:00"},
            "not an object",
        ]
    });
    let (status, reply) = status_json(server.post("/v1/batch", &body).await).await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["accepted"], 2);
    let rejected = rejected_items(&reply);
    assert_eq!(
        rejected[0],
        (1, "bad-1".into(), "missing_field".into(), "/event".into())
    );
    assert_eq!((rejected[1].0, rejected[1].2.as_str()), (3, "not_an_object"));

    let records = consume(&server.topics.ingest, 2, WAIT).await;
    assert_eq!(records.len(), 2);
    for record in &records {
        let value = record.event();
        let text = value.to_string();
        // The unusable batch context and sentAt are recorded in the event, not lost.
        assert!(text.contains("not a map") && text.contains("yesterday"), "{text}");
        assert!(value.get("sent_at").is_none(), "{text}");
    }
    let ok1 = records
        .iter()
        .find(|r| r.event()["message_id"] == "ok-1")
        .unwrap()
        .event();
    assert_eq!(ok1["original_timestamp"], "2024-05-01T10:00:00.123Z");
    let ok2 = records
        .iter()
        .find(|r| r.event()["message_id"] == "ok-2")
        .unwrap()
        .event();
    assert_eq!(ok2["original_timestamp"], "2024-05-01T12:00:00.000Z");
    let dlq = consume(&server.topics.dlq, 2, WAIT).await;
    let ids: Vec<String> = dlq
        .iter()
        .map(|r| r.json()["message_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "each bad item alone on the DLQ: {ids:?}");
    assert!(ids.contains(&"bad-1".to_string()), "{ids:?}");
    server.stop().await.unwrap();
}

/// A batch big enough to be decoded off the runtime workers (over 16 KiB) is answered as a
/// small one is: the valid events on the ingest topic in request order, the bad one alone on
/// the DLQ and named in the 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_batch_decoded_off_the_workers_is_answered_as_a_small_one() {
    let server = Server::start().await;
    let items: Vec<_> = (0..40)
        .map(|i| {
            let mut event = json!({"type": "track", "event": "E", "anonymousId": "big", "messageId": format!("big-{i}"), "properties": {"pad": "x".repeat(600)}});
            if i == 17 {
                event.as_object_mut().unwrap().remove("event");
            }
            event
        })
        .collect();
    let body = json!({ "batch": items });
    assert!(body.to_string().len() > 16 * 1024);
    let (status, reply) = status_json(server.post("/v1/batch", &body).await).await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["accepted"], 39, "{reply}");
    assert_eq!(
        rejected_items(&reply),
        vec![(17, "big-17".into(), "missing_field".into(), "/event".into())]
    );
    let records = consume(&server.topics.ingest, 39, WAIT).await;
    let ids: Vec<String> = records
        .iter()
        .map(|r| r.event()["message_id"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (0..40).filter(|i| *i != 17).map(|i| format!("big-{i}")).collect();
    assert_eq!(ids, expected, "one visitor's events, in request order");
    let dlq = consume(&server.topics.dlq, 1, WAIT).await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].json()["message_id"], "big-17");
    server.stop().await.unwrap();
}

/// Segment's and RudderStack's pixels: a GIF whatever happens; the event on the ingest topic,
/// or on the DLQ when invalid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pixels_answer_a_gif_and_deliver_or_dlq_their_event() {
    let server = Server::start().await;
    let data = b64(&format!(
        r#"{{"writeKey":"{WRITE_KEY}","userId":"px-user","event":"Email Opened","messageId":"px-1","properties":{{"subject":"Daily"}}}}"#
    ));
    let urls = [
        format!("/v1/pixel/track?data={data}"),
        format!("/pixel/v1/page?writeKey={WRITE_KEY}&anonymousId=px-anon&messageId=px-2&name=Home&context.page.url=https%3A%2F%2Fshop.example%2F&properties.path=%2F"),
        format!("/v1/pixel/identify?writeKey={WRITE_KEY}&userId=px-user&messageId=px-3&traits.plan=pro"),
        // Invalid (a track without `event`): to the DLQ.
        format!("/v1/pixel/track?writeKey={WRITE_KEY}&anonymousId=px-anon&messageId=px-bad"),
        // Unknown key and undecodable data: counted and logged, still a GIF.
        "/v1/pixel/track?writeKey=nope&anonymousId=a&event=E".to_string(),
        "/pixel/v1/track".to_string(),
    ];
    for url in &urls {
        let response = server.client.get(server.url(url)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        assert_eq!(response.headers()["content-type"], "image/gif", "{url}");
        assert!(response.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("no-store"));
        let bytes = response.bytes().await.unwrap();
        assert!(bytes.starts_with(b"GIF89a") && bytes.len() == 43, "{url}");
    }
    let records = consume(&server.topics.ingest, 3, WAIT).await;
    let by_id = |id: &str| records.iter().find(|r| r.event()["message_id"] == id).unwrap();
    let track = by_id("px-1");
    assert_eq!(track.key.as_deref(), Some("px-user"));
    assert_eq!(track.header("type"), Some("track"));
    assert_eq!(track.event()["properties"]["subject"], "Daily");
    let page = by_id("px-2").event();
    assert_eq!(page["type"], "page");
    assert_eq!(page["name"], "Home");
    assert_eq!(page["context"]["page"]["url"], "https://shop.example/");
    assert_eq!(page["properties"]["path"], "/");
    assert_eq!(by_id("px-3").event()["traits"]["plan"], "pro");
    let dlq = consume(&server.topics.dlq, 1, WAIT).await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].json()["message_id"], "px-bad");
    assert_eq!(dlq[0].json()["reason"], "missing_field");
    assert!(consume(&server.topics.ingest, 4, QUIET).await.len() == 3);
    server.stop().await.unwrap();
}

/// analytics.js's settings, pointed at this edge; unknown keys get 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_point_analytics_js_at_the_public_url() {
    let server = Server::start_with(
        &test_support::brokers(),
        test_support::fresh_topics(1).await,
        |c| {
            c.public_url = Some("https://ingest.example.com/".parse().unwrap());
        },
    )
    .await;
    let response = server
        .client
        .get(server.url(&format!("/v1/projects/{WRITE_KEY}/settings")))
        .header("origin", "https://shop.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    let (status, settings) = status_json(response).await;
    assert_eq!(status, 200);
    let segment = &settings["integrations"]["Segment.io"];
    assert_eq!(segment["apiKey"], WRITE_KEY);
    assert_eq!(segment["apiHost"], "ingest.example.com/v1");
    assert_eq!(segment["protocol"], "https");
    assert_eq!(settings["metrics"]["sampleRate"], 0);
    assert_eq!(settings["remotePlugins"], json!([]));
    for key in ["nope", DISABLED_WRITE_KEY] {
        let response = server
            .client
            .get(server.url(&format!("/v1/projects/{key}/settings")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{key}");
    }
    server.stop().await.unwrap();
}

/// Every error answer carries `code` and `message` (issue 26): the legacy `analytics-python`
/// and `rudder-sdk-python` read both from any non-200 JSON body, and a body without them made
/// them resend the whole batch. Each row: a request, its status, its `code`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_answer_names_its_code_and_message() {
    let server = Server::start().await;
    let track = json!({"anonymousId": "a", "event": "e"});
    let big = json!({"anonymousId": "a", "event": "e", "properties": {"blob": "x".repeat(40 * 1024)}});
    let batch = json!({"batch": [
        {"type": "track", "anonymousId": "a", "event": "e"},
        {"type": "track", "anonymousId": "a"},
    ]});
    let post = |path: &str, body: Vec<u8>| {
        server
            .client
            .post(server.url(path))
            .basic_auth(WRITE_KEY, Some(""))
            .body(body)
    };
    let cases = [
        (post("/v1/batch", batch.to_string().into()), 400, "invalid_events"),
        (post("/v1/track", b"{}".to_vec()), 400, "missing_identity"),
        (post("/v1/track", b"{not json".to_vec()), 400, "invalid_json"),
        (post("/v1/track", big.to_string().into()), 413, "too_large"),
        (post("/v1/batch", vec![b' '; 600 * 1024]), 413, "body_too_large"),
        (
            post("/v1/track", track.to_string().into()).header("content-encoding", "br"),
            415,
            "unsupported_encoding",
        ),
        (
            post("/v1/track", track.to_string().into()).header("x-padding", "p".repeat(20 * 1024)),
            431,
            "head_too_large",
        ),
        (
            server
                .client
                .post(server.url("/v1/track"))
                .basic_auth("nope", Some(""))
                .body("{}"),
            401,
            "unauthorized",
        ),
        (server.client.get(server.url("/v2/track")), 404, "not_found"),
        (
            server.client.get(server.url("/v1/track")),
            405,
            "method_not_allowed",
        ),
    ];
    for (request, status, code) in cases {
        let sent = request.send().await;
        let (got, reply) = status_json(sent.unwrap_or_else(|e| panic!("the {code} case: {e:?}"))).await;
        assert_eq!((got, reply["code"].as_str()), (status, Some(code)), "{reply}");
    }
    // Past twice the head limit, hyper's own 431 (no body) is all a client gets: the
    // libraries read a body that is not JSON as an unknown error and do not retry a 4xx.
    let huge = format!(
        "POST /v1/track HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n",
        "p".repeat(40 * 1024)
    );
    let response = super::raw_request(server.addr, huge.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    server.stop().await.unwrap();

    // Over the source's rate: 429, its code, and the wait.
    let limited = Server::start_with(
        &test_support::brokers(),
        test_support::fresh_topics(1).await,
        |c| {
            c.default_rate_limit = 1;
            c.default_rate_burst = 1;
        },
    )
    .await;
    assert_eq!(limited.post("/v1/track", &track).await.status(), 200);
    let response = limited.post("/v1/track", &track).await;
    assert!(response.headers().contains_key("retry-after"));
    let (status, reply) = status_json(response).await;
    assert_eq!(
        (status, reply["code"].as_str()),
        (429, Some("rate_limited")),
        "{reply}"
    );
    limited.stop().await.unwrap();
}
