//! `ingest` served in-process on port 0, against the real broker (`cargo xtask test`), and
//! against librdkafka's mock cluster for the faults a real broker cannot produce on cue.

mod attacks;
mod auth;
mod body;
mod compat;
mod endpoints;
mod faults;
mod lossless;
mod operations;
mod ordering;
mod reload;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use http_front::Config;
use kafka_producer::Topics;
use test_support::{brokers, fresh_topics, sources_file, WRITE_KEY};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long tests wait for records to arrive.
const WAIT: Duration = Duration::from_secs(20);

/// A running in-process `ingest`.
struct Server {
    addr: SocketAddr,
    topics: Topics,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), http_front::Error>>,
    _sources: tempfile::NamedTempFile,
    spool: tempfile::TempDir,
}

impl Server {
    /// `ingest` on fresh topics of the real broker (ingest topic with 3 partitions).
    async fn start() -> Server {
        Server::start_with(&brokers(), fresh_topics(3).await, |_| {}).await
    }

    /// `ingest` with `brokers`, `topics`, and the default flags changed by `adjust`.
    async fn start_with(brokers: &str, topics: Topics, adjust: impl FnOnce(&mut Config)) -> Server {
        let sources = sources_file();
        let spool = tempfile::tempdir().unwrap();
        let mut config = Config::parse_from([
            "ingest",
            "--brokers",
            brokers,
            "--topic-ingest",
            &topics.ingest,
            "--topic-dlq",
            &topics.dlq,
            "--topic-retry",
            &topics.retry,
            "--sources",
            sources.path().to_str().unwrap(),
            "--spool-dir",
            spool.path().to_str().unwrap(),
            // Stops at once; the delay itself is tested with the binary.
            "--shutdown-delay",
            "0s",
        ]);
        adjust(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(http_front::run(config, listener, async {
            let _ = stopped.await;
        }));
        let server = Server {
            addr,
            topics,
            // A request never waits forever, even on a connection the server dropped.
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            stop: Some(stop),
            task,
            _sources: sources,
            spool,
        };
        server.wait_listening().await;
        server
    }

    async fn wait_listening(&self) {
        for _ in 0..200 {
            if self.client.get(self.url("/healthz")).send().await.is_ok() {
                return;
            }
            assert!(!self.task.is_finished(), "ingest stopped during start-up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("ingest did not start listening");
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs JSON with the test write key as Basic auth.
    async fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .basic_auth(WRITE_KEY, Some(""))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// POSTs `body` as it is (no content type) with the test write key as Basic auth.
    async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .basic_auth(WRITE_KEY, Some(""))
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Stops the server (as SIGTERM would) and returns what `run` returned.
    async fn stop(mut self) -> Result<(), http_front::Error> {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.task).await.unwrap()
    }
}

/// The Basic auth credentials for a write key (`key:` in base64).
fn basic(key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
}

/// Sends raw bytes on a new connection and returns what the server answers until it closes
/// the connection or 10 s pass.
async fn raw_request(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer (and close) before it has read everything.
    let _ = stream.write_all(request).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

/// The rejected items a 400 names: index, message id, reason, field.
fn rejected_items(reply: &serde_json::Value) -> Vec<(u64, String, String, String)> {
    let text = |v: &serde_json::Value| v.as_str().unwrap().to_string();
    reply["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                text(&r["message_id"]),
                text(&r["reason"]),
                text(&r["field"]),
            )
        })
        .collect()
}

/// Response status and JSON body. Every error body, in every test, must carry `code` and
/// `message` (strings): the Python libraries read both from any non-2xx JSON answer and
/// resend the whole batch when either is missing (issue 26).
async fn status_json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("response body is not JSON: {text}"));
    if status >= 400 {
        assert_error_body(&json);
    }
    (status, json)
}

/// Asserts the error-body contract: `success: false`, a non-empty `code` made of lower-case
/// letters and underscores, and a non-empty `message`, equal to `error`.
fn assert_error_body(json: &serde_json::Value) {
    let code = json["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code in {json}"));
    assert!(
        !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
        "{json}"
    );
    let message = json["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message in {json}"));
    assert!(!message.is_empty(), "{json}");
    assert_eq!(json["error"], json["message"], "{json}");
    assert_eq!(json["success"], false, "{json}");
}
