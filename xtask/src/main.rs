//! Project automation, run as `cargo xtask <command>`:
//!
//! - `up`: the local stack in the foreground (broker and `ingest`), with a write key and a curl example;
//! - `test`: the whole test suite against a real broker;
//! - `broker`: only the broker, in the foreground.
//!
//! The broker is tansu (a Kafka-protocol broker) with in-memory storage, built once with
//! `cargo install` into a cache outside the repo. `KAFKA_BROKERS=host:port` skips it and uses
//! an existing cluster.

mod broker;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use tokio::process::Command;

use broker::Broker;

#[derive(Parser)]
#[command(name = "cargo xtask")]
enum Task {
    /// Start the broker, `ingest` and `retry-forwarder` in the foreground; Ctrl-C stops them.
    Up {
        /// Port for the event API.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Port for ingest's metrics listener (retry-forwarder's is the next one).
        #[arg(long, default_value_t = 9464)]
        metrics_port: u16,
    },
    /// Run every test (cargo-nextest when installed, else cargo test) against a real broker.
    Test {
        /// Extra arguments for the test runner, e.g. a test-name filter.
        args: Vec<String>,
    },
    /// Start only the broker, create the default topics, and wait for Ctrl-C.
    Broker,
}

/// The topics the stack uses, with their partition counts.
const TOPICS: [(&str, i32); 3] = [("cdp.ingest", 3), ("cdp.dlq", 1), ("cdp.retry", 1)];
/// The development write key written to the stack's sources file.
const DEV_WRITE_KEY: &str = "dev-write-key";

#[tokio::main]
async fn main() -> Result<()> {
    let root = workspace_root();
    match Task::parse() {
        Task::Up { port, metrics_port } => up(&root, port, metrics_port).await,
        Task::Test { args } => test(&root, &args).await,
        Task::Broker => {
            let broker = Broker::start_or_existing(&root).await?;
            broker.create_topics(&TOPICS).await?;
            println!("broker ready at {} (Ctrl-C stops it)", broker.address());
            tokio::signal::ctrl_c().await?;
            Ok(())
        }
    }
}

async fn up(root: &Path, port: u16, metrics_port: u16) -> Result<()> {
    cargo(
        root,
        &["build", "--quiet", "-p", "ingest", "-p", "retry-forwarder"],
    )
    .await?;
    let broker = Broker::start_or_existing(root).await?;
    broker.create_topics(&TOPICS).await?;
    let dir = root.join("target").join("xtask");
    std::fs::create_dir_all(&dir)?;
    let sources = dir.join("sources.toml");
    std::fs::write(
        &sources,
        format!("[[source]]\nworkspace_id = \"ws_dev\"\nsource_id = \"src_dev\"\nwrite_key = \"{DEV_WRITE_KEY}\"\n"),
    )?;
    let mut ingest = Command::new(root.join("target/debug/ingest"))
        .env("CDP_KAFKA_BROKERS", broker.address())
        .env("CDP_LISTEN", format!("127.0.0.1:{port}"))
        .env("CDP_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"))
        .env("CDP_SOURCES_FILE", &sources)
        .env("CDP_LOG_FORMAT", "text")
        .spawn()
        .context("starting ingest")?;
    tokio::select! {
        ready = wait_ready(port) => ready?,
        status = ingest.wait() => bail!("ingest exited during start-up: {}", status?),
    }
    let forwarder_metrics = metrics_port + 1;
    let mut forwarder = Command::new(root.join("target/debug/retry-forwarder"))
        .env("CDP_KAFKA_BROKERS", broker.address())
        .env("CDP_METRICS_LISTEN", format!("127.0.0.1:{forwarder_metrics}"))
        .env("CDP_LOG_FORMAT", "text")
        .spawn()
        .context("starting retry-forwarder")?;
    println!(
        "\ncdp-ingest stack is up (Ctrl-C stops it)\n\
         \n  events:     http://127.0.0.1:{port}/v1/track  (and /v1/identify, page, screen, group, alias, batch, import)\
         \n  metrics:    http://127.0.0.1:{metrics_port}/metrics (ingest), http://127.0.0.1:{forwarder_metrics}/metrics (retry-forwarder)\
         \n  broker:     {broker}  (topics {topics})\
         \n  write key:  {DEV_WRITE_KEY}  (workspace ws_dev, source src_dev; sources file {sources})\
         \n\n  curl -u {DEV_WRITE_KEY}: -H 'content-type: application/json' \\\
         \n    -d '{{\"anonymousId\":\"visitor-1\",\"event\":\"Signed Up\",\"properties\":{{\"plan\":\"pro\"}}}}' \\\
         \n    http://127.0.0.1:{port}/v1/track\n",
        broker = broker.address(),
        topics = TOPICS.map(|(t, _)| t).join(", "),
        sources = sources.display(),
    );
    tokio::select! {
        status = ingest.wait() => bail!("ingest exited: {}", status?),
        status = forwarder.wait() => bail!("retry-forwarder exited: {}", status?),
        _ = tokio::signal::ctrl_c() => {
            // The terminal sent SIGINT to both too; let them drain, flush and commit.
            let (ingest, forwarder) = (ingest.wait().await?, forwarder.wait().await?);
            println!("ingest stopped ({ingest}), retry-forwarder stopped ({forwarder}); stopping the broker");
        }
    }
    Ok(())
}

/// Waits until `GET /readyz` on the local port answers 200.
async fn wait_ready(port: u16) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for _ in 0..600 {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let request = "GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
            let mut response = String::new();
            if stream.write_all(request.as_bytes()).await.is_ok()
                && stream.read_to_string(&mut response).await.is_ok()
                && response.starts_with("HTTP/1.1 200")
            {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("ingest did not become ready on port {port} within 60 s")
}

async fn test(root: &Path, args: &[String]) -> Result<()> {
    let broker = Broker::start_or_existing(root).await?;
    broker.create_topics(&TOPICS).await?;
    let nextest = Command::new("cargo")
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    let mut command = Command::new("cargo");
    if nextest {
        command.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        println!("cargo-nextest not found; running cargo test");
        command.args(["test", "--workspace", "--no-fail-fast"]);
    }
    let mut tests = command
        .args(args)
        .current_dir(root)
        .env("KAFKA_BROKERS", broker.address())
        .spawn()
        .context("running the tests")?;
    let status = tokio::select! {
        status = tests.wait() => status?,
        _ = tokio::signal::ctrl_c() => tests.wait().await?,
    };
    if !status.success() {
        bail!("tests failed ({status})");
    }
    Ok(())
}

async fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new("cargo")
        .args(args)
        .current_dir(root)
        .status()
        .await?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is in the workspace")
        .to_path_buf()
}
