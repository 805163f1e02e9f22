//! Project automation, run as `cargo xtask <command>`:
//!
//! - `up`: the local stack in the foreground (broker, the three binaries, Prometheus), with a
//!   write key and a curl example;
//! - `test`: the deploy checks, every test against a real broker, then the stack smoke test;
//! - `smoke`: the stack on free ports, checked end to end through Prometheus;
//! - `deploy`: the deploy checks alone;
//! - `broker`: only the broker, in the foreground.
//!
//! The broker is tansu (a Kafka-protocol broker) with in-memory storage, built once with
//! `cargo install` into a cache outside the repo. `KAFKA_BROKERS=host:port` skips it and uses
//! an existing cluster.

mod bench;
mod broker;
mod deploy;
mod stack;
mod tools;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use clap::Parser;
use tokio::process::Command;

use broker::Broker;
use stack::{Ports, Stack, TOPICS};

#[derive(Parser)]
#[command(name = "cargo xtask")]
enum Task {
    /// Start the broker, ingest, retry-forwarder, dlq-replayer and Prometheus in the
    /// foreground; Ctrl-C stops them.
    Up {
        /// Port for the event API.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Ports for the metrics of ingest, retry-forwarder and dlq-replayer.
        #[arg(long, num_args = 3, value_delimiter = ',', default_value = "9464,9465,9466")]
        metrics_ports: Vec<u16>,
        /// Port for Prometheus.
        #[arg(long, default_value_t = 9090)]
        prometheus_port: u16,
    },
    /// Run every test against a real broker (cargo-nextest when installed, else cargo test),
    /// after the deploy checks and before the stack smoke test.
    Test {
        /// Extra arguments for the test runner, e.g. a test-name filter.
        args: Vec<String>,
    },
    /// Start only the broker, create the default topics, and wait for Ctrl-C.
    Broker,
    /// Check deploy/: manifests, Prometheus configuration, rules and rule tests, dashboard.
    Deploy,
    /// Bring up the whole stack on free ports, send events, check them through Prometheus, stop.
    Smoke,
    /// Throughput, CPU, latency by outcome and memory of ingest against three baselines (bare
    /// HTTP, bare JSON, bare producer): the median and range of 3 runs.
    Bench {
        /// One run of each measurement instead of three: for iterating.
        #[arg(long)]
        quick: bool,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    let root = workspace_root();
    match Task::parse() {
        Task::Up {
            port,
            metrics_ports,
            prometheus_port,
        } => {
            let metrics = [metrics_ports[0], metrics_ports[1], metrics_ports[2]];
            let stack = Stack::start(
                &root,
                Ports {
                    events: port,
                    metrics,
                    prometheus: prometheus_port,
                },
                "up",
            )
            .await?;
            stack.print();
            stack.run_until_ctrl_c().await
        }
        Task::Test { args } => test(&root, &args).await,
        Task::Deploy => deploy::check(&root).await,
        Task::Smoke => smoke(&root).await,
        Task::Bench { quick } => bench::run(&root, bench::Options { quick }).await,
        Task::Broker => {
            let broker = Broker::start_or_existing(&root).await?;
            broker.create_topics(&TOPICS).await?;
            println!("broker ready at {} (Ctrl-C stops it)", broker.address());
            tokio::signal::ctrl_c().await?;
            Ok(())
        }
    }
}

async fn smoke(root: &Path) -> Result<()> {
    Stack::start(root, Ports::free()?, "smoke")
        .await?
        .smoke_test()
        .await
}

async fn test(root: &Path, args: &[String]) -> Result<()> {
    deploy::check(root).await?;
    let broker = Broker::start_or_existing(root).await?;
    broker.create_topics(&TOPICS).await?;
    // The broker-restart test runs a tansu of its own, even against an existing cluster.
    let tansu = broker::install().await?;
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
        .env("CDP_TANSU_BIN", &tansu)
        .spawn()
        .context("running the tests")?;
    let status = tokio::select! {
        status = tests.wait() => status?,
        _ = tokio::signal::ctrl_c() => tests.wait().await?,
    };
    if !status.success() {
        bail!("tests failed ({status})");
    }
    drop(broker);
    if args.is_empty() {
        smoke(root).await?;
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is in the workspace")
        .to_path_buf()
}
