//! Bodies: size limits, gzip (round trip and bombs), encodings.

use std::io::Write;

use serde_json::json;
use test_support::{consume, WRITE_KEY};

use super::{status_json, Server, WAIT};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_body_gets_413() {
    let server = Server::start().await;
    let big = json!({"batch": [{"type":"track","anonymousId":"a","event":"e","properties":{"x":"y".repeat(600 * 1024)}}]});
    let (status, reply) = status_json(server.post("/v1/batch", &big).await).await;
    assert_eq!(status, 413, "{reply}");
    assert_eq!(reply["error"], "request body over the limit of 512000 bytes");

    // Without a Content-Length the limit holds while reading.
    let mut request = format!(
        "POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        super::basic(WRITE_KEY)
    )
    .into_bytes();
    for _ in 0..100 {
        request.extend_from_slice(format!("{:x}\r\n{}\r\n", 8192, " ".repeat(8192)).as_bytes());
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let response = super::raw_request(server.addr, &request).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");

    // Too many events in one batch.
    let events: Vec<_> = (0..2501)
        .map(|i| json!({"type":"track","anonymousId":format!("a{i}"),"event":"e"}))
        .collect();
    let (status, reply) = status_json(server.post("/v1/batch", &json!({ "batch": events })).await).await;
    assert_eq!(status, 413);
    assert_eq!(reply["rejected"][0]["reason"], "too_large");
    assert_eq!(reply["rejected"][0]["field"], "/batch");
    assert!(
        consume(&server.topics.ingest, 1, std::time::Duration::from_secs(2))
            .await
            .is_empty()
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_body_round_trips() {
    let server = Server::start().await;
    let body = json!({"batch": (0..50).map(|i| json!({"type":"track","anonymousId":"gz","event":"e","messageId":format!("gz-{i}")})).collect::<Vec<_>>()});
    let response = server
        .client
        .post(server.url("/v1/batch"))
        .basic_auth(WRITE_KEY, Some(""))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gzip(body.to_string().as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let records = consume(&server.topics.ingest, 50, WAIT).await;
    let ids: Vec<_> = records
        .iter()
        .map(|r| r.event()["message_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, (0..50).map(|i| format!("gz-{i}")).collect::<Vec<_>>());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_is_refused_and_broken_gzip_is_a_400() {
    let server = Server::start().await;
    // 1 GiB of zeros compresses to about 1 MiB; keep the wire size under the limit with 200 MiB.
    let inflated = 200 * 1024 * 1024;
    let bomb = gzip(&vec![b'0'; inflated]);
    assert!(bomb.len() < 500 * 1024, "bomb is {} bytes", bomb.len());
    let response = server
        .client
        .post(server.url("/v1/batch"))
        .basic_auth(WRITE_KEY, Some(""))
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    let (status, reply) = status_json(response).await;
    assert_eq!(status, 413, "{reply}");

    let response = server
        .client
        .post(server.url("/v1/track"))
        .basic_auth(WRITE_KEY, Some(""))
        .header("content-encoding", "gzip")
        .body("plain text, not gzip")
        .send()
        .await
        .unwrap();
    let (status, reply) = status_json(response).await;
    assert_eq!(status, 400);
    assert!(reply["error"]
        .as_str()
        .unwrap()
        .starts_with("request body is not valid gzip"));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_encodings_ingest_cannot_decode_get_415() {
    let server = Server::start().await;
    for value in ["br", "deflate", "gzip, br", "compress"] {
        let response = server
            .client
            .post(server.url("/v1/track"))
            .basic_auth(WRITE_KEY, Some(""))
            .header("content-encoding", value)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 415, "content-encoding: {value}");
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_by_the_header_and_body_timeouts() {
    let server = Server::start_with(
        &test_support::brokers(),
        test_support::fresh_topics(1).await,
        |c| {
            c.header_read_timeout = std::time::Duration::from_secs(1);
            c.body_read_timeout = std::time::Duration::from_secs(1);
        },
    )
    .await;
    let started = std::time::Instant::now();
    // Headers never finished: the connection is closed.
    let response = super::raw_request(server.addr, b"POST /v1/track HTTP/1.1\r\nHost: x\r\n").await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "header timeout not applied"
    );
    assert!(
        response.is_empty() || response.starts_with("HTTP/1.1 408"),
        "{response}"
    );

    // A body that stops half-way: 408.
    let request = format!(
        "POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\nContent-Length: 100\r\n\r\n{{\"anonymousId\"",
        super::basic(WRITE_KEY)
    );
    let response = super::raw_request(server.addr, request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    server.stop().await.unwrap();
}
