//! What operators see: health, readiness, metrics, CORS, routing errors, client disconnects
//! and graceful shutdown.

use std::time::Duration;

use serde_json::json;
use test_support::{consume, WRITE_KEY};
use tokio::io::AsyncWriteExt;

use super::{Server, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_routing_errors() {
    let server = Server::start().await;
    let get = |path: &str| server.client.get(server.url(path)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    assert_eq!(get("/nope").await.unwrap().status(), 404);
    assert_eq!(get("/v1/track").await.unwrap().status(), 405);
    assert_eq!(
        server
            .client
            .post(server.url("/v1/unknown"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_and_response_headers_let_browsers_post() {
    let server = Server::start().await;
    let response = server
        .client
        .request(reqwest::Method::OPTIONS, server.url("/v1/batch"))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type, authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let h = response.headers();
    assert_eq!(h["access-control-allow-origin"], "https://shop.example");
    assert_eq!(h["access-control-allow-methods"], "POST, GET, OPTIONS");
    assert_eq!(h["access-control-allow-headers"], "content-type, authorization");
    assert_eq!(h["access-control-max-age"], "86400");

    let response = server
        .client
        .post(server.url("/v1/track"))
        .header("origin", "https://shop.example")
        .basic_auth(WRITE_KEY, Some(""))
        .json(&json!({"anonymousId": "a", "event": "e"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    assert_eq!(response.headers()["vary"], "Origin");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_events_and_dlq_writes() {
    let handle = ::ops::install_metrics();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_url = format!("http://{}/metrics", listener.local_addr().unwrap());
    tokio::spawn(::ops::serve_metrics(
        listener,
        handle,
        "ingest",
        std::future::pending(),
    ));
    let server = Server::start().await;
    for _ in 0..3 {
        assert_eq!(
            server
                .post("/v1/track", &json!({"anonymousId": "a", "event": "e"}))
                .await
                .status(),
            200
        );
    }
    assert_eq!(
        server
            .post("/v1/track", &json!({"anonymousId": "a"}))
            .await
            .status(),
        400
    );
    assert_eq!(consume(&server.topics.ingest, 3, WAIT).await.len(), 3);

    let text = reqwest::get(&metrics_url).await.unwrap().text().await.unwrap();
    let value = |series: &str| test_support::metrics::expect(&text, series);
    // At least: other tests in this process (under plain `cargo test`) may add to them.
    assert!(value(r#"cdp_ingest_http_requests_total{route="track",status="200"}"#) >= 3.0);
    assert!(value(r#"cdp_ingest_http_requests_total{route="track",status="400"}"#) >= 1.0);
    assert!(value(r#"cdp_ingest_events_total{type="track",outcome="accepted"}"#) >= 3.0);
    assert!(value(r#"cdp_ingest_events_total{type="track",outcome="rejected"}"#) >= 1.0);
    assert!(value(r#"cdp_ingest_dlq_writes_total{reason="missing_field",result="ok"}"#) >= 1.0);
    assert!(value(r#"cdp_ingest_http_request_duration_seconds_bucket{route="track",le="+Inf"}"#) >= 4.0);
    let delivered = format!(
        r#"cdp_ingest_kafka_delivered_total{{topic="{}"}}"#,
        server.topics.ingest
    );
    assert!(value(&delivered) >= 3.0);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_right_after_sending_does_not_lose_its_event() {
    let server = Server::start().await;
    for i in 0..20 {
        let body = json!({"anonymousId": "gone", "event": "e", "messageId": format!("gone-{i}")}).to_string();
        let request = format!(
            "POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            super::basic(WRITE_KEY),
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        if i % 2 == 0 {
            stream.shutdown().await.unwrap(); // half-close, then go away
        }
        drop(stream);
    }
    // A client that resets the connection while its request waits for the DLQ write.
    for i in 20..30 {
        let body = json!({"batch": [
            {"type": "track", "anonymousId": "gone", "event": "e", "messageId": format!("gone-{i}")},
            {"type": "track", "anonymousId": "gone", "messageId": format!("bad-{i}")},
        ]})
        .to_string();
        let request = format!(
            "POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\nContent-Length: {}\r\n\r\n{body}",
            super::basic(WRITE_KEY),
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        stream.set_zero_linger().unwrap(); // close with RST
        stream.write_all(request.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        drop(stream);
    }
    let records = consume(&server.topics.ingest, 30, WAIT).await;
    let mut ids: Vec<_> = records
        .iter()
        .map(|r| r.event()["message_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort_by_key(|id| id[5..].parse::<u32>().unwrap());
    assert_eq!(ids, (0..30).map(|i| format!("gone-{i}")).collect::<Vec<_>>());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_closes_the_listener_and_flushes_what_was_accepted() {
    // A long linger keeps the records queued until the shutdown flush sends them.
    let server = Server::start_with(
        &test_support::brokers(),
        test_support::fresh_topics(3).await,
        |c| c.kafka_linger = Duration::from_secs(2),
    )
    .await;
    let mut accepted = 0;
    for i in 0..200 {
        let event =
            json!({"anonymousId": format!("v{}", i % 7), "event": "e", "messageId": format!("s-{i}")});
        if server.post("/v1/track", &event).await.status() == 200 {
            accepted += 1;
        }
    }
    let addr = server.addr;
    let topic = server.topics.ingest.clone();
    server.stop().await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener still open after shutdown"
    );
    assert_eq!(accepted, 200);
    let records = consume(&topic, 200, WAIT).await;
    assert_eq!(records.len(), 200);
}
