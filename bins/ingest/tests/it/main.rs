//! The `ingest` binary as operators run it: flags, start-up failure, SIGTERM during a steady
//! stream, hostile input, and real client libraries pointed at it: a Segment SDK
//! (segment-analytics-python), analytics.js 2.0 in Chromium, and the Node server SDKs.

mod browser;
mod connections;
mod drills;
mod hostile;
mod kafka_security;
mod lossless;
mod node_sdks;
mod process;
mod sdk;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use test_support::Topics;

/// How long tests wait for records.
const WAIT: Duration = Duration::from_secs(20);

/// A running `ingest` process.
struct Ingest {
    child: Child,
    url: String,
    metrics_url: String,
    port: u16,
    topics: Topics,
    /// Reads the log as it is written, so a full pipe never blocks the process; ends at EOF.
    log: Option<std::thread::JoinHandle<()>>,
    /// The log read so far.
    log_text: std::sync::Arc<std::sync::Mutex<String>>,
    _sources: tempfile::NamedTempFile,
    /// The spool directory (`CDP_SPOOL_DIR`), removed with the last handle.
    _spool: std::sync::Arc<tempfile::TempDir>,
}

impl Ingest {
    /// Starts `target/.../ingest` on fresh topics of the test broker, on free ports.
    async fn start() -> Ingest {
        Ingest::start_with(&[]).await
    }

    /// Its `/metrics` text.
    async fn metrics_text(&self) -> String {
        reqwest::get(&self.metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// [`Ingest::start`] with extra environment variables.
    async fn start_with(env: &[(&str, &str)]) -> Ingest {
        Ingest::start_custom(env, test_support::sources_file()).await
    }

    /// [`Ingest::start`] with extra environment variables and a sources file of its own.
    async fn start_custom(env: &[(&str, &str)], sources: tempfile::NamedTempFile) -> Ingest {
        let topics = test_support::fresh_topics(3).await;
        let spool = std::sync::Arc::new(tempfile::tempdir().unwrap());
        Ingest::start_on(&test_support::brokers(), topics, spool, env, sources).await
    }

    /// [`Ingest::start_with`] under an open-file limit of `nofile` (soft and hard, set with
    /// the shell's `ulimit -n` before `exec`).
    async fn start_limited(nofile: u64, env: &[(&str, &str)]) -> Ingest {
        let topics = test_support::fresh_topics(3).await;
        let spool = std::sync::Arc::new(tempfile::tempdir().unwrap());
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\""))
            .arg(env!("CARGO_BIN_EXE_ingest"));
        Ingest::spawn(
            command,
            &test_support::brokers(),
            topics,
            spool,
            env,
            test_support::sources_file(),
        )
        .await
    }

    /// `ingest` on `brokers` and `topics` with the spool in `spool` (shared with an earlier
    /// process, to restart one).
    async fn start_on(
        brokers: &str,
        topics: Topics,
        spool: std::sync::Arc<tempfile::TempDir>,
        env: &[(&str, &str)],
        sources: tempfile::NamedTempFile,
    ) -> Ingest {
        let command = Command::new(env!("CARGO_BIN_EXE_ingest"));
        Ingest::spawn(command, brokers, topics, spool, env, sources).await
    }

    /// Runs `command` (the binary, or a wrapper that `exec`s it) as [`Ingest::start_on`] does.
    async fn spawn(
        mut command: Command,
        brokers: &str,
        topics: Topics,
        spool: std::sync::Arc<tempfile::TempDir>,
        env: &[(&str, &str)],
        sources: tempfile::NamedTempFile,
    ) -> Ingest {
        let port = free_port();
        let metrics_port = free_port();
        let mut child = command
            .env("CDP_KAFKA_BROKERS", brokers)
            .env("CDP_TOPIC_INGEST", &topics.ingest)
            .env("CDP_TOPIC_DLQ", &topics.dlq)
            .env("CDP_TOPIC_RETRY", &topics.retry)
            .env("CDP_SOURCES_FILE", sources.path())
            .env("CDP_SPOOL_DIR", spool.path())
            .env("CDP_LISTEN", format!("127.0.0.1:{port}"))
            // What its settings endpoint tells analytics.js to send to.
            .env("CDP_PUBLIC_URL", format!("http://127.0.0.1:{port}"))
            .env("CDP_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"))
            .env("CDP_LOG_FORMAT", "json")
            // Stops at once unless a test sets it (the delay's own test does).
            .env("CDP_SHUTDOWN_DELAY", "0s")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log_text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log = {
            let log_text = log_text.clone();
            std::thread::spawn(move || {
                for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
                    let Ok(line) = line else { break };
                    let mut text = log_text.lock().unwrap();
                    text.push_str(&line);
                    text.push('\n');
                }
            })
        };
        let ingest = Ingest {
            child,
            log: Some(log),
            log_text,
            url: format!("http://127.0.0.1:{port}"),
            metrics_url: format!("http://127.0.0.1:{metrics_port}/metrics"),
            port,
            topics,
            _sources: sources,
            _spool: spool,
        };
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if client
                .get(format!("{}/readyz", ingest.url))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return ingest;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut ingest = ingest;
        let exited = ingest.child.try_wait().ok().flatten();
        panic!(
            "ingest did not become ready within 10 s (exited: {exited:?}); its log:\n{}",
            ingest.log_so_far()
        );
    }

    /// Peak and current resident memory of the process, in bytes (`VmHWM`, `VmRSS`).
    fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib = |field: &str| -> u64 {
            let line = status.lines().find(|l| l.starts_with(field)).unwrap();
            line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
        };
        (kib("VmHWM:"), kib("VmRSS:"))
    }

    /// Sends SIGTERM.
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// What the process has logged so far (stderr).
    fn log_so_far(&self) -> String {
        self.log_text.lock().unwrap().clone()
    }

    /// Waits for the process to exit; returns its success and its log (stderr).
    fn wait(mut self) -> (bool, String) {
        let status = self.child.wait().unwrap();
        self.log.take().unwrap().join().unwrap();
        let log = self.log_so_far();
        (status.success(), log)
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
