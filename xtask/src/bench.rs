//! `cargo xtask bench`: ingest against what the machine allows.
//!
//! Each run measures, against a fresh broker per phase and one seeded corpus ([`corpus`]):
//!
//! 1. `bare-producer` (rdkafka with ingest's settings) pushing the corpus's events flat out: CPU
//!    per event;
//! 2. `bare-json`: the corpus's events parsed with simd-json and written back out, in process:
//!    CPU per event;
//! 3. `bare-http` (hyper, reads each body, answers 200) saturated by oha: CPU per request;
//! 4. `ingest` (release) saturated the same way: events/s, CPU per event, peak RSS; then every
//!    accepted event is looked for on the topic;
//! 5. at 50% of ingest's saturation: `bare-producer` paced at that many events/s (its
//!    acknowledgement latency), then ingest's latency of valid and of invalid single events
//!    (after a warm-up at the same load), then of the valid singles alone at their rate
//!    (what batches beside them cost: head-of-line blocking), then bare HTTP's at the same
//!    rates; then the per-visitor order check.
//!
//! Three runs (one with `--quick`); each figure is printed as the median and range. Then once:
//! ingest SIGKILLed after 2 s of saturating single events, to count what buffered mode loses.
//!
//! Saturation is closed-loop; latencies are open-loop with oha's coordinated-omission
//! correction. CPU comes from `/proc/<pid>/stat`, peak RSS from `VmHWM`. Results: a Markdown
//! report on stdout and in `target/bench/report.md`, JSON in `report.json`.

mod corpus;
mod load;
mod markdown;
mod procs;
mod report;
mod topic;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::stack::cargo;
use corpus::Corpus;
use load::{install_oha, latency_by_outcome, oha_run, saturate, Rates};
use procs::{accepted_events, free_port, peak_rss_mib, wait_port, wait_producer_drained};
use report::{Kill, Run, Summary};
use topic::{send_ordered, Phase};

/// Runs of each measurement (medians and ranges), and with `--quick`.
const RUNS: usize = 3;
const QUICK_RUNS: usize = 1;
/// Seconds of each saturation run, and of each latency run.
const SATURATION_SECS: u64 = 8;
const LATENCY_SECS: u64 = 8;
/// Seconds of load at the latency runs' rates before they are measured, on a fresh ingest.
const WARMUP_SECS: u64 = 2;
/// The latency runs' load, as a share of ingest's saturation.
const LATENCY_SHARE: f64 = 0.5;
/// Records the bare producer sends flat out.
const PRODUCER_RECORDS: &str = "200000";
/// How long bare JSON goes over the corpus.
const JSON_DURATION: &str = "2s";
/// ingest's credentials in the sources file the bench writes.
const AUTH: Option<&str> = Some("bench-key:");

/// How the benchmark runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// One run of each measurement instead of three: for iterating.
    pub quick: bool,
}

/// Runs the whole benchmark with `options`.
pub async fn run(root: &Path, options: Options) -> Result<()> {
    let started = Instant::now();
    let out = root.join("target").join("bench");
    std::fs::create_dir_all(&out)?;
    let oha = install_oha().await?;
    let build = ["build", "--release", "--quiet", "-p", "ingest", "-p", "bench"];
    cargo(root, &build).await?;
    let sources = out.join("sources.toml");
    std::fs::write(&sources, "[[source]]\nworkspace_id = \"ws_bench\"\nsource_id = \"src_bench\"\nwrite_key = \"bench-key\"\nrate_limit = 0\n")?;
    let bench = Bench {
        root: root.to_path_buf(),
        release: root.join("target").join("release"),
        oha,
        corpus: corpus::corpus(&out)?,
        sources,
        spool: out.join("spool"),
    };
    let n = if options.quick { QUICK_RUNS } else { RUNS };
    let mut runs = Vec::new();
    for i in 1..=n {
        runs.push(bench.run(i, n).await?);
    }
    println!("bench: SIGKILL during saturation (buffered mode)");
    let kill = bench.kill().await?;
    let summary = Summary::new(runs);
    let (md, checks) = markdown::render(&summary, &kill, &bench.corpus, started.elapsed());
    println!("\n{md}");
    std::fs::write(out.join("report.md"), &md)?;
    let report = json!({
        "runs": n,
        "figures": summary.to_json(),
        "sigkill": {"accepted": kill.accepted, "on_topic": kill.on_topic, "lost": kill.lost()},
        "checks": checks.iter().map(report::Check::to_json).collect::<Vec<_>>(),
    });
    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    println!(
        "written: {}, {}",
        out.join("report.md").display(),
        out.join("report.json").display()
    );
    Ok(())
}

/// The built binaries, the corpus and ingest's configuration.
struct Bench {
    root: PathBuf,
    release: PathBuf,
    oha: PathBuf,
    corpus: Corpus,
    sources: PathBuf,
    spool: PathBuf,
}

impl Bench {
    /// One run of every measurement.
    async fn run(&self, i: usize, n: usize) -> Result<Run> {
        let step = |what: &str| println!("bench: run {i} of {n}: {what}");
        let (oha, corpus) = (&self.oha, &self.corpus);
        let mut run = Run::default();

        step("bare producer");
        let phase = Phase::start(&self.root, &format!("bare-{i}")).await?;
        let flat_out = self.bare_producer(&phase, &["--count", PRODUCER_RECORDS]).await?;
        drop(phase);
        let (events, seconds) = (number(&flat_out, "events"), number(&flat_out, "seconds"));
        run.producer_eps = events / seconds.max(1e-9);
        run.producer_cpu_us = number(&flat_out, "cpu_seconds") * 1e6 / events.max(1.0);

        step("bare JSON");
        let json = self
            .output(
                Command::new(self.release.join("bare-json"))
                    .arg("--payloads")
                    .arg(&corpus.payloads)
                    .args(["--duration", JSON_DURATION]),
            )
            .await?;
        run.json_cpu_us = number(&json, "cpu_seconds") * 1e6 / number(&json, "events").max(1.0);

        step("bare HTTP");
        let http_port = free_port()?;
        // Kept running: it is measured once more at ingest's latency load, after ingest.
        let server = Command::new(self.release.join("bare-http"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{http_port}"))
            .kill_on_drop(true)
            .spawn()?;
        wait_port(http_port).await?;
        run.http = saturate(oha, &server, http_port, corpus, None, SATURATION_SECS).await?;
        run.http_rss_mib = peak_rss_mib(&server)?;

        step("ingest, saturation");
        let phase = Phase::start(&self.root, &format!("saturation-{i}")).await?;
        let (ingest, port, metrics_port) = self.start_ingest(&phase).await?;
        run.ingest = saturate(oha, &ingest, port, corpus, AUTH, SATURATION_SECS).await?;
        run.ingest_rss_mib = peak_rss_mib(&ingest)?;
        run.accepted = accepted_events(metrics_port).await?;
        run.on_topic = phase
            .read(run.accepted as usize, Duration::from_secs(60))
            .await?
            .0 as f64;
        drop((ingest, phase));

        step("latency at 50% of ingest's saturation");
        let phase = Phase::start(&self.root, &format!("latency-{i}")).await?;
        let rates = Rates::share_of(&run.ingest, LATENCY_SHARE, corpus);
        run.rates = Some(rates);
        run.latency_eps = rates.events_per_sec(corpus);
        // The bare producer first, on the fresh broker, at the events/s ingest's run will produce.
        let (rate, duration) = (format!("{:.0}", run.latency_eps), format!("{LATENCY_SECS}s"));
        let paced = self
            .bare_producer(&phase, &["--rate", &rate, "--duration", &duration])
            .await?;
        run.producer_ack_p50_ms = number(&paced, "ack_p50_ms");
        run.producer_ack_p99_ms = number(&paced, "ack_p99_ms");
        let (ingest, port, metrics_port) = self.start_ingest(&phase).await?;
        wait_producer_drained(metrics_port).await?;
        // A fresh process: its first seconds fault in memory and open connections.
        latency_by_outcome(oha, port, corpus, &rates, AUTH, WARMUP_SECS, false).await?;
        run.ingest_latency = latency_by_outcome(oha, port, corpus, &rates, AUTH, LATENCY_SECS, false).await?;
        let alone = Rates {
            invalid: 0.0,
            batches: 0.0,
            ..rates
        };
        run.ingest_valid_alone = latency_by_outcome(oha, port, corpus, &alone, AUTH, LATENCY_SECS, false)
            .await?
            .valid;
        run.http_latency =
            latency_by_outcome(oha, http_port, corpus, &rates, None, LATENCY_SECS, true).await?;
        drop(server);
        // Visitors whose events are sent one after another: their order on the topic is checked.
        send_ordered(port).await?;
        run.ingest_rss_mib = run.ingest_rss_mib.max(peak_rss_mib(&ingest)?);
        let accepted = accepted_events(metrics_port).await?;
        let (found, order) = phase.read(accepted as usize, Duration::from_secs(60)).await?;
        run.accepted += accepted;
        run.on_topic += found as f64;
        run.order = order;
        Ok(run)
    }

    /// ingest SIGKILLed after 2 s of saturating single events: what buffered mode loses.
    async fn kill(&self) -> Result<Kill> {
        let phase = Phase::start(&self.root, "kill").await?;
        let (mut ingest, port, _) = self.start_ingest(&phase).await?;
        let load = oha_run(
            &self.oha,
            port,
            "/v1/track",
            &self.corpus.singles,
            AUTH,
            &["-c", "50", "-z", "4s"],
        );
        let kill = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            ingest.start_kill()
        };
        let (load, killed) = tokio::join!(load, kill);
        killed?;
        // Singles only: each 200 is exactly one event on the ingest topic.
        let accepted = load?["statusCodeDistribution"]["200"].as_u64().unwrap_or(0);
        let on_topic = phase.read(accepted as usize, Duration::from_secs(10)).await?.0 as u64;
        Ok(Kill { accepted, on_topic })
    }

    /// A fresh ingest on `phase`'s topics, with a fresh spool and free ports, listening: the
    /// process, its port and its metrics port.
    async fn start_ingest(&self, phase: &Phase) -> Result<(Child, u16, u16)> {
        let _ = std::fs::remove_dir_all(&self.spool);
        let (port, metrics_port) = (free_port()?, free_port()?);
        let child = Command::new(self.release.join("ingest"))
            .env("CDP_KAFKA_BROKERS", phase.broker.address())
            .env("CDP_TOPIC_INGEST", &phase.ingest)
            .env("CDP_TOPIC_DLQ", &phase.dlq)
            .env("CDP_TOPIC_RETRY", &phase.retry)
            .env("CDP_SOURCES_FILE", &self.sources)
            .env("CDP_SPOOL_DIR", &self.spool)
            .env("CDP_LISTEN", format!("127.0.0.1:{port}"))
            .env("CDP_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"))
            .env("RUST_LOG", "error")
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        wait_port(port).await?;
        Ok((child, port, metrics_port))
    }

    /// `bare-producer` with `args` to `phase`'s bare topic; its JSON line.
    async fn bare_producer(&self, phase: &Phase, args: &[&str]) -> Result<Value> {
        let mut command = Command::new(self.release.join("bare-producer"));
        command
            .args([
                "--brokers",
                phase.broker.address(),
                "--topic",
                &phase.bare,
                "--payloads",
            ])
            .arg(&self.corpus.payloads)
            .args(args);
        self.output(&mut command).await
    }

    /// Runs a baseline to its end; its JSON line.
    async fn output(&self, command: &mut Command) -> Result<Value> {
        let output = command.output().await?;
        ensure!(
            output.status.success(),
            "{:?}: {}",
            command.as_std().get_program(),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    }
}

/// A number from a baseline's JSON line (NaN when missing).
fn number(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}
