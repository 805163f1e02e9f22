//! Hostile input against the running binary: every case gets a clear status, the process keeps
//! serving, and its peak memory stays under [`RSS_BOUND`].

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::json;
use test_support::{consume, WRITE_KEY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Ingest, WAIT};

/// Peak resident memory allowed for ingest through all of this (a debug build).
const RSS_BOUND: u64 = 150 * 1024 * 1024;

fn basic(key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
}

/// Sends raw bytes and returns the response's status (0: the connection closed without one).
pub(super) async fn raw(port: u16, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

pub(super) fn post(path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Basic {}\r\n{headers}Content-Length: {}\r\n\r\n",
        basic(WRITE_KEY),
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

async fn assert_serving(ingest: &Ingest) {
    let status = reqwest::get(format!("{}/healthz", ingest.url))
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200, "ingest stopped serving");
}

fn gzip_zeros(bytes: usize) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..bytes / chunk.len() {
        encoder.write_all(&chunk).unwrap();
    }
    encoder.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_get_clear_statuses_and_memory_stays_bounded() {
    let ingest =
        Ingest::start_with(&[("CDP_BODY_READ_TIMEOUT", "2s"), ("CDP_HEADER_READ_TIMEOUT", "2s")]).await;
    let port = ingest.port;
    let track = |body: &[u8]| post("/v1/track", "Content-Type: application/json\r\n", body);

    // A gzip bomb: 1 GiB of zeros, about 1 MiB compressed: over the limit before inflating.
    let bomb = gzip_zeros(1 << 30);
    let (status, _) = raw(port, &post("/v1/batch", "Content-Encoding: gzip\r\n", &bomb)).await;
    assert_eq!(status, 413, "1 GiB gzip bomb");
    // The same bomb cut to fit the wire limit, sent chunked: inflating stops at the limit.
    let small_bomb = gzip_zeros(300 << 20);
    assert!(small_bomb.len() < 500 * 1024);
    let mut chunked = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Basic {}\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        basic(WRITE_KEY),
        small_bomb.len()
    )
    .into_bytes();
    chunked.extend_from_slice(&small_bomb);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_eq!(raw(port, &chunked).await.0, 413, "300 MiB gzip bomb, chunked");
    // A plain chunked body over the limit.
    let mut big = format!(
        "POST /v1/track HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Basic {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        basic(WRITE_KEY)
    )
    .into_bytes();
    for _ in 0..80 {
        big.extend_from_slice(format!("2000\r\n{}\r\n", " ".repeat(0x2000)).as_bytes());
    }
    big.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(raw(port, &big).await.0, 413, "chunked body over the limit");

    // Content-Length shorter than the body: the cut body is not JSON.
    let body = br#"{"anonymousId":"a","event":"e"}"#;
    let mut short = post("/v1/track", "", &body[..10]);
    short.extend_from_slice(&body[10..]);
    assert_eq!(
        raw(port, &short).await.0,
        400,
        "Content-Length shorter than the body"
    );
    // Content-Length longer than the body: the rest never comes.
    let mut long = post("/v1/track", "", body);
    let cl = format!("Content-Length: {}", body.len());
    let at = long.windows(cl.len()).position(|w| w == cl.as_bytes()).unwrap();
    long.splice(
        at..at + cl.len(),
        format!("Content-Length: {}", body.len() + 50).into_bytes(),
    );
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(&long).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut response)).await;
    assert!(
        String::from_utf8_lossy(&response).starts_with("HTTP/1.1 408"),
        "Content-Length longer than the body"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // JSON nested 100 000 deep, invalid UTF-8, NUL bytes, huge numbers, duplicate keys.
    let deep = format!(
        r#"{{"anonymousId":"a","event":"e","properties":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let (status, reply) = raw(port, &track(deep.as_bytes())).await;
    assert!(status == 400 && reply.contains("too_deep"), "deep: {status}");
    // Invalid UTF-8 is read as U+FFFD, as Go's decoder and browsers' TextDecoder do.
    let (status, _) = raw(port, &track(b"{\"anonymousId\":\"a\xff\xfe\",\"event\":\"e\"}")).await;
    assert_eq!(status, 200, "invalid UTF-8");
    assert!(raw(port, &track(b"{\"anonymousId\":\"a\",\0\"event\":\"e\"}"))
        .await
        .1
        .contains("invalid_json"));
    let huge = format!(
        r#"{{"anonymousId":"num","event":"e","properties":{{"n":{}}}}}"#,
        "9".repeat(10_000)
    );
    let (status, _) = raw(port, &track(huge.as_bytes())).await;
    assert!(status == 200 || status == 400, "10 000-digit number: {status}");
    let (status, _) = raw(
        port,
        &track(br#"{"anonymousId":"dup-1","anonymousId":"dup-2","event":"e"}"#),
    )
    .await;
    assert_eq!(status, 200, "duplicate keys");
    // Whatever was accepted is on the topic as valid, consistently keyed JSON.
    let records = consume(&ingest.topics.ingest, 3, Duration::from_secs(5)).await;
    for r in &records {
        let value = r.event();
        assert_eq!(r.key.as_deref(), value["anonymous_id"].as_str());
    }
    let keys: Vec<_> = records.iter().filter_map(|r| r.key.as_deref()).collect();
    assert!(
        keys.contains(&"a\u{FFFD}\u{FFFD}") && keys.contains(&"dup-2"),
        "{keys:?}"
    );

    // A request head over the limit: 431.
    let header = format!("X-Padding: {}\r\n", "p".repeat(32 * 1024));
    assert_eq!(
        raw(port, &post("/v1/track", &header, body)).await.0,
        431,
        "oversized head"
    );

    // Slowloris: a head that never ends is cut off after the header timeout.
    let started = Instant::now();
    let mut slow = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    slow.write_all(b"POST /v1/track HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if slow.write_all(b"X-Slow: 1\r\n").await.is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "slowloris connection kept for {:?}",
        started.elapsed()
    );

    assert_serving(&ingest).await;
    let (peak, now) = ingest.memory();
    eprintln!(
        "peak RSS through the hostile requests: {} MiB (now {} MiB)",
        peak >> 20,
        now >> 20
    );
    assert!(
        peak < RSS_BOUND,
        "peak RSS {} MiB (now {} MiB)",
        peak >> 20,
        now >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_do_not_starve_real_requests() {
    let ingest = Ingest::start().await;
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(("127.0.0.1", ingest.port)).await.unwrap());
    }
    let client = reqwest::Client::new();
    for i in 0..20 {
        let started = Instant::now();
        let response = client
            .post(format!("{}/v1/track", ingest.url))
            .basic_auth(WRITE_KEY, Some(""))
            .json(&json!({"anonymousId": format!("busy-{i}"), "event": "e"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "request {i} took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(consume(&ingest.topics.ingest, 20, WAIT).await.len(), 20);
    assert_serving(&ingest).await;
    let (peak, _) = ingest.memory();
    eprintln!("peak RSS with 1000 idle connections: {} MiB", peak >> 20);
    assert!(peak < RSS_BOUND, "peak RSS {} MiB", peak >> 20);
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_source_gets_429_while_another_is_unaffected_and_guessed_keys_are_counted() {
    let mut sources = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    write!(
        sources,
        "[[source]]\nworkspace_id = \"ws\"\nsource_id = \"flood\"\nwrite_key = \"flood-key\"\nrate_limit = 20\nrate_burst = 20\n\n\
         [[source]]\nworkspace_id = \"ws\"\nsource_id = \"calm\"\nwrite_key = \"calm-key\"\n"
    )
    .unwrap();
    let ingest = Ingest::start_custom(&[], sources).await;
    let client = reqwest::Client::new();
    let send = |key: &'static str, i: usize| {
        client
            .post(format!("{}/v1/track", ingest.url))
            .basic_auth(key, Some(""))
            .json(&json!({"anonymousId": format!("{key}-{i}"), "event": "e"}))
            .send()
    };
    let (mut accepted, mut limited) = (0, 0);
    for i in 0..60 {
        let response = send("flood-key", i).await.unwrap();
        match response.status().as_u16() {
            200 => accepted += 1,
            429 => {
                limited += 1;
                assert!(response.headers().contains_key("retry-after"));
            }
            other => panic!("flood got {other}"),
        }
        assert_eq!(
            send("calm-key", i).await.unwrap().status(),
            200,
            "the calm source was limited"
        );
    }
    assert!(
        limited > 0 && accepted >= 20,
        "{accepted} accepted, {limited} limited"
    );

    for i in 0..50 {
        let status = send("guess", i).await.unwrap().status();
        assert_eq!(status, 401);
    }
    let metrics = reqwest::get(&ingest.metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("cdp_ingest_auth_failures_total{reason=\"unknown\"} 50"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("cdp_ingest_rate_limited_events_total {limited}")),
        "{metrics}"
    );
    assert_serving(&ingest).await;
    let (peak, _) = ingest.memory();
    assert!(peak < RSS_BOUND, "peak RSS {} MiB", peak >> 20);
}

pub(super) use test_support::metrics::expect as metric;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brute_force_of_a_thousand_keys_writes_few_log_lines_and_counts_every_one() {
    let ingest = Ingest::start().await;
    let client = reqwest::Client::new();
    for i in 0..1000 {
        let response = client
            .post(format!("{}/v1/track", ingest.url))
            .basic_auth(format!("guess-{i}"), Some(""))
            .json(&json!({"anonymousId": "a", "event": "e"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    let text = ingest.metrics_text().await;
    assert_eq!(
        metric(&text, "cdp_ingest_auth_failures_total{reason=\"unknown\"}"),
        1000.0,
        "{text}"
    );
    ingest.terminate();
    let (ok, log) = ingest.wait();
    assert!(ok);
    let lines: Vec<serde_json::Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let message = |l: &serde_json::Value| l["fields"]["message"].as_str().unwrap_or_default().to_string();
    let written = lines.iter().filter(|l| message(l) == "request refused").count();
    let suppressed: u64 = lines
        .iter()
        .filter(|l| {
            message(l).starts_with("refusal log lines suppressed") && l["fields"]["reason"] == "unauthorized"
        })
        .map(|l| l["fields"]["suppressed"].as_u64().unwrap())
        .sum();
    eprintln!(
        "{written} refusal lines written, {suppressed} suppressed, {} log lines in all",
        log.lines().count()
    );
    // Every refusal is either written or summed up, and few are written.
    assert_eq!(
        written as u64 + suppressed,
        1000,
        "{written} written, {suppressed} suppressed"
    );
    assert!(written <= 200, "{written} refusal lines for 1000 refusals");
    assert!(log.lines().count() < 300, "{} log lines", log.lines().count());
}
