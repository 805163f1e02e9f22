//! Connection admission against the running binary: connections that hold a socket without a
//! request in progress (never a request, a slowloris, a keep-alive flood) are evicted at the
//! cap and timed out under pressure, while a canary sending 50 valid events a second gets 200
//! for every one, fast; the open-file budget keeps `accept` from failing.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use test_support::{consume, WRITE_KEY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::hostile::metric;
use super::{Ingest, WAIT};

/// The canary's p99 bound, request to response (retries included), on this machine.
const CANARY_P99: Duration = Duration::from_millis(100);

/// A client sending one valid event every 20 ms on a keep-alive connection, as an SDK would:
/// a request that fails on a connection ingest closed is sent again (counted).
struct Canary {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<CanaryReport>,
}

#[derive(Debug, Default)]
struct CanaryReport {
    latencies: Vec<Duration>,
    /// Events that got anything but 200 (status 0: no answer after the retries).
    not_200: Vec<(usize, u16)>,
    /// Sends repeated after a connection error.
    resent: usize,
}

impl Canary {
    fn start(ingest: &Ingest) -> Canary {
        let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let url = format!("{}/v1/track", ingest.url);
        let task = tokio::spawn({
            let (stop, sent) = (stop.clone(), sent.clone());
            async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                let mut report = CanaryReport::default();
                let mut every = tokio::time::interval(Duration::from_millis(20));
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    every.tick().await;
                    let event =
                        json!({"anonymousId": "canary", "event": "e", "messageId": format!("canary-{i}")});
                    let started = Instant::now();
                    let mut status = 0;
                    for _ in 0..3 {
                        match client
                            .post(&url)
                            .basic_auth(WRITE_KEY, Some(""))
                            .json(&event)
                            .send()
                            .await
                        {
                            Ok(response) => {
                                status = response.status().as_u16();
                                break;
                            }
                            Err(_) => report.resent += 1,
                        }
                    }
                    report.latencies.push(started.elapsed());
                    if status != 200 {
                        report.not_200.push((i, status));
                    }
                    i += 1;
                    sent.store(i, Ordering::Relaxed);
                }
                report
            }
        });
        Canary { stop, sent, task }
    }

    /// Waits until the canary has sent `n` events in all.
    async fn until_sent(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.sent.load(Ordering::Relaxed) < n {
            assert!(
                Instant::now() < deadline,
                "the canary is stuck at {:?}",
                self.sent
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Lets it send `more` events, then stops it; asserts every event got 200 within
    /// [`CANARY_P99`] (p99). Returns how many it sent.
    async fn finish(self, more: usize) -> usize {
        self.until_sent(self.sent.load(Ordering::Relaxed) + more).await;
        self.stop.store(true, Ordering::Relaxed);
        let mut report = self.task.await.unwrap();
        report.latencies.sort();
        let n = report.latencies.len();
        let p99 = report.latencies[(n * 99 / 100).min(n - 1)];
        eprintln!(
            "canary: {n} events, p50 {:?}, p99 {p99:?}, max {:?}, {} resent",
            report.latencies[n / 2],
            report.latencies[n - 1],
            report.resent
        );
        assert!(
            report.not_200.is_empty(),
            "canary events not answered 200: {:?}",
            report.not_200
        );
        assert!(p99 < CANARY_P99, "canary p99 {p99:?}");
        n
    }
}

/// Asserts that the ingest topic holds `expected` events in all, each once, and returns how
/// many of them have a `messageId` starting with `prefix`.
async fn landed(ingest: &Ingest, expected: usize, prefix: &str) -> usize {
    let records = consume(&ingest.topics.ingest, expected, WAIT).await;
    let ids: std::collections::HashSet<String> = records
        .iter()
        .map(|r| r.event()["message_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        (records.len(), ids.len()),
        (expected, expected),
        "events on the ingest topic, distinct"
    );
    ids.iter().filter(|id| id.starts_with(prefix)).count()
}

/// Opens `n` connections that send nothing.
async fn open_idle(port: u16, n: usize) -> Vec<TcpStream> {
    let mut idle = Vec::with_capacity(n);
    for _ in 0..n {
        idle.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    idle
}

/// Waits (up to `within`) for ingest to close each connection; returns how many it closed.
async fn closed_by_ingest(streams: Vec<TcpStream>, within: Duration) -> usize {
    let mut waiting = JoinSet::new();
    for mut stream in streams {
        waiting.spawn(async move {
            let mut byte = [0u8; 1];
            // EOF or a reset: closed by ingest; a byte would be an answer nobody asked for.
            matches!(
                tokio::time::timeout(within, stream.read(&mut byte)).await,
                Ok(Ok(0) | Err(_))
            )
        });
    }
    let mut closed = 0;
    while let Some(result) = waiting.join_next().await {
        closed += usize::from(result.unwrap());
    }
    closed
}

/// `cdp_ingest_connections_closed_total{cause}`.
fn closed(text: &str, cause: &str) -> f64 {
    metric(
        text,
        &format!("cdp_ingest_connections_closed_total{{cause=\"{cause}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_times_the_cap_of_idle_connections_are_evicted_and_the_canary_gets_200_fast() {
    let ingest = Ingest::start_with(&[("CDP_MAX_CONNECTIONS", "100")]).await;
    let canary = Canary::start(&ingest);
    canary.until_sent(10).await;
    let idle = open_idle(ingest.port, 500).await;
    assert_eq!(
        closed_by_ingest(idle, WAIT).await,
        500,
        "idle connections ingest closed"
    );
    let sent = canary.finish(50).await;
    assert_eq!(landed(&ingest, sent, "canary-").await, sent);

    // The metrics listener holds 64: five times that idle, and a scrape still gets through.
    let metrics_port: u16 = ingest
        .metrics_url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches("/metrics")
        .parse()
        .unwrap();
    let idle_on_metrics = open_idle(metrics_port, 5 * 64).await;
    let scrape = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let text = scrape
        .get(&ingest.metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let evicted_on_metrics = metric(
        &text,
        "cdp_ingest_metrics_connections_closed_total{cause=\"evicted_idle\"}",
    );
    assert!(
        evicted_on_metrics >= 5.0 * 64.0 - 64.0,
        "{evicted_on_metrics} evicted on the metrics listener"
    );
    drop(idle_on_metrics);

    let (evicted, timed_out) = (closed(&text, "evicted_idle"), closed(&text, "idle_timeout"));
    eprintln!("evicted {evicted}, timed out {timed_out}");
    // 500 opened over a cap of 100 (the canary holds one): evicted while they were opened,
    // or closed after the 1 s floor (more than half the cap idle) if opening them took longer.
    assert!(evicted >= 100.0, "{evicted} evicted");
    assert!(
        evicted + timed_out >= 500.0,
        "{evicted} evicted, {timed_out} timed out"
    );
    assert_eq!(closed(&text, "refused_busy"), 0.0);
    assert_eq!(metric(&text, "cdp_ingest_accept_errors_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_an_open_file_limit_of_1024_twelve_hundred_idle_connections_never_fail_accept() {
    // This process holds the 1 200 client sockets.
    rlimit::increase_nofile_limit(4096).unwrap();
    let ingest = Ingest::start_limited(1024, &[]).await;
    let text = ingest.metrics_text().await;
    let cap = metric(&text, "cdp_ingest_max_connections");
    let reserved = metric(&text, "cdp_ingest_open_files_reserved");
    assert_eq!(
        metric(&text, "cdp_ingest_open_files_limit{kind=\"soft\"}"),
        1024.0
    );
    assert_eq!(
        cap + reserved,
        1024.0,
        "the cap is what the limit leaves beside the reserve"
    );
    assert!(cap >= 500.0, "cap {cap}, reserved {reserved}");

    let canary = Canary::start(&ingest);
    canary.until_sent(10).await;
    let idle = open_idle(ingest.port, 1200).await;
    assert_eq!(
        closed_by_ingest(idle, WAIT).await,
        1200,
        "idle connections ingest closed"
    );
    let sent = canary.finish(50).await;
    assert_eq!(landed(&ingest, sent, "canary-").await, sent);

    let text = ingest.metrics_text().await;
    assert_eq!(metric(&text, "cdp_ingest_accept_errors_total"), 0.0, "{text}");
    assert!(closed(&text, "evicted_idle") >= 1200.0 - cap, "{text}");
    ingest.terminate();
    let (ok, log) = ingest.wait();
    assert!(ok, "{log}");
    assert!(!log.contains("accept failed"), "{log}");
    assert!(log.contains("lowering the connection cap"), "{log}");
}

/// Sends a request head one byte a second until ingest closes the connection; returns whether
/// it did (within [`WAIT`]) before the head was complete.
async fn slowloris(port: u16) -> bool {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = b"POST /v1/track HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let deadline = Instant::now() + WAIT;
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    for byte in head {
        every_second.tick().await;
        if Instant::now() > deadline || stream.write_all(&[*byte]).await.is_err() {
            return Instant::now() <= deadline;
        }
        let mut answer = [0u8; 1];
        if let Ok(read) = tokio::time::timeout(Duration::from_millis(1), stream.read(&mut answer)).await {
            return matches!(read, Ok(0) | Err(_));
        }
    }
    false
}

/// Sends one valid event on a keep-alive connection, reads the answer (its status returned)
/// and keeps the connection open without a further request.
async fn one_request_then_idle(port: u16, i: usize) -> (u16, TcpStream) {
    use base64::Engine;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let body = json!({"anonymousId": format!("kept-{i}"), "event": "e", "messageId": format!("kept-{i}")})
        .to_string();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{WRITE_KEY}:"));
    let request = format!(
        "POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    // The answer is small: the head and a Content-Length body.
    let status = loop {
        let read = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(read > 0, "closed before the answer");
        answer.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&answer);
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let length: usize = text[..end]
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        if answer.len() >= end + 4 + length {
            break text[9..12].parse().unwrap();
        }
    };
    (status, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_and_a_keep_alive_flood_are_evicted_and_the_canary_is_untouched() {
    let ingest = Ingest::start_with(&[("CDP_MAX_CONNECTIONS", "100")]).await;
    let canary = Canary::start(&ingest);
    canary.until_sent(10).await;

    let mut slow = JoinSet::new();
    for _ in 0..150 {
        slow.spawn(slowloris(ingest.port));
    }
    let mut kept = Vec::new();
    for i in 0..150 {
        let (status, stream) = one_request_then_idle(ingest.port, i).await;
        assert_eq!(status, 200, "keep-alive flood request {i}");
        kept.push(stream);
    }
    // Under pressure (more than half the cap idle) every idle one is closed after 1 s, until
    // at most a quarter of the cap is idle: those keep their 75 s keep-alive timeout.
    let kept_closed = closed_by_ingest(kept, Duration::from_secs(5)).await;
    assert!(
        kept_closed >= 150 - 100 / 4,
        "{kept_closed} keep-alive connections ingest closed"
    );
    let mut slow_closed = 0;
    while let Some(closed) = slow.join_next().await {
        slow_closed += usize::from(closed.unwrap());
    }
    assert_eq!(
        slow_closed, 150,
        "slowloris connections ingest closed before their head was complete"
    );
    let sent = canary.finish(50).await;
    // The keep-alive flood's events were taken like any other.
    assert_eq!(landed(&ingest, sent + 150, "canary-").await, sent);

    let text = ingest.metrics_text().await;
    let (evicted, timed_out) = (closed(&text, "evicted_idle"), closed(&text, "idle_timeout"));
    eprintln!("evicted {evicted}, timed out {timed_out}");
    assert!(
        evicted > 0.0 && evicted + timed_out >= 300.0 - 100.0 / 4.0,
        "{evicted} evicted, {timed_out} timed out"
    );
    assert_eq!(closed(&text, "refused_busy"), 0.0);
}

/// Sends a request head announcing a 100-byte body and the body's first byte: the request is in
/// progress (its connection busy) until [`finish_body`].
async fn start_slow_body(port: u16, i: usize) -> TcpStream {
    use base64::Engine;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{WRITE_KEY}:"));
    let head = format!(
        "POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\nX-Busy: {i}\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Sends the rest of [`start_slow_body`]'s body (a valid event padded to 100 bytes) and
/// returns the answer's status.
async fn finish_body(mut stream: TcpStream, i: usize) -> u16 {
    let event = format!("\"anonymousId\":\"busy-{i}\",\"event\":\"e\",\"messageId\":\"busy-{i}\"}}");
    let rest = format!("{event:<99}");
    stream.write_all(rest.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer)
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_with_every_connection_busy_a_new_one_is_refused_and_no_busy_one_is_evicted() {
    let ingest = Ingest::start_with(&[("CDP_MAX_CONNECTIONS", "10"), ("CDP_BODY_READ_TIMEOUT", "60s")]).await;
    let mut busy = Vec::new();
    for i in 0..10 {
        busy.push(start_slow_body(ingest.port, i).await);
    }
    // Wait until ingest counts all ten busy (the gauges are refreshed every second).
    let deadline = Instant::now() + WAIT;
    loop {
        let text = ingest.metrics_text().await;
        let (open, idle) = (
            metric(&text, "cdp_ingest_open_connections"),
            metric(&text, "cdp_ingest_connections_idle"),
        );
        if open == 10.0 && idle == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "open {open}, idle {idle}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every held connection has a request in progress: a new one is refused, answered one
    // request (probes as usual, events 503).
    let (status, _) = super::hostile::raw(ingest.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 200, "a probe over the cap");
    let event = br#"{"anonymousId":"over","event":"e"}"#;
    let (status, body) =
        super::hostile::raw(ingest.port, &super::hostile::post("/v1/track", "", event)).await;
    assert_eq!(status, 503, "an event over the cap: {body}");
    assert!(body.contains("too_many_connections"), "{body}");
    let text = ingest.metrics_text().await;
    assert!(closed(&text, "refused_busy") >= 2.0, "{text}");
    assert_eq!(
        closed(&text, "evicted_idle"),
        0.0,
        "a busy connection was evicted"
    );

    // The busy requests were never evicted: each finishes and is taken.
    for (i, stream) in busy.into_iter().enumerate() {
        assert_eq!(finish_body(stream, i).await, 200, "busy request {i}");
    }
    assert_eq!(landed(&ingest, 10, "busy-").await, 10);
}

/// hyper's own header-read timeout (30 s by default, also between keep-alive requests) is off:
/// a keep-alive connection idle for 31 s, under `--keep-alive-timeout`, still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_idle_for_31_s_is_still_served() {
    let ingest = Ingest::start().await;
    let (status, mut stream) = one_request_then_idle(ingest.port, 0).await;
    assert_eq!(status, 200);
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(31), stream.read(&mut byte)).await;
    assert!(
        read.is_err(),
        "ingest closed the keep-alive connection within 31 s: {read:?}"
    );
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{answer:?}"
    );
    let text = ingest.metrics_text().await;
    assert_eq!(closed(&text, "idle_timeout"), 0.0, "{text}");
}
