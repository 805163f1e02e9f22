//! Load from oha: closed-loop saturation (events/s and the server's CPU), and open-loop latency
//! of single events by outcome at a share of that saturation.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tokio::process::{Child, Command};

use super::corpus::Corpus;
use super::procs::process_cpu;
use crate::tools::{run, tools_dir};

const OHA_VERSION: &str = "1.16.0";
/// Connections for singles and for batches in the closed-loop runs (about their share of requests).
const CONNECTIONS: (u32, u32) = (42, 8);
/// The least rate of invalid singles in a latency run, per second, so that their p99 rests on a
/// few hundred requests: the corpus's 2% of a 50% load would be a few dozen a second. It is
/// taken from the valid singles' rate, which keeps the total the same.
const INVALID_MIN_RATE: f64 = 100.0;

/// A closed-loop run's results.
#[derive(Debug, Default, Clone, Copy)]
pub struct Saturation {
    /// Single-event requests served per second: answered 200, or 400 for the corpus's invalid
    /// events. A 503 (a full producer queue) is not throughput.
    pub singles_per_sec: f64,
    /// Batch requests served per second.
    pub batches_per_sec: f64,
    /// Share of the requests refused (any other status).
    pub refused_share: f64,
    /// Events served per second.
    pub events_per_sec: f64,
    /// The server's CPU seconds during the run.
    pub cpu_seconds: f64,
}

impl Saturation {
    /// Requests served per second, singles and batches.
    pub fn requests_per_sec(&self) -> f64 {
        self.singles_per_sec + self.batches_per_sec
    }
}

/// The request rates of a latency run.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    /// Valid single events per second.
    pub valid: f64,
    /// Invalid single events per second.
    pub invalid: f64,
    /// Batches per second.
    pub batches: f64,
}

impl Rates {
    /// `share` of a saturation run: singles and batches each at that share of their own
    /// saturation rate, so the load keeps the mix the server was measured at (a batch carries
    /// ~55 events: at the corpus's 85/15 request mix, "50%" of a singles-heavy saturation would
    /// be more events than saturation). Singles split as the corpus does, with at least
    /// [`INVALID_MIN_RATE`] invalid ones.
    pub fn share_of(saturation: &Saturation, share: f64, corpus: &Corpus) -> Rates {
        let singles = (saturation.singles_per_sec * share).max(2.0);
        let invalid = (singles * corpus.invalid_share)
            .max(INVALID_MIN_RATE.min(singles / 5.0))
            .max(1.0);
        Rates {
            valid: singles - invalid,
            invalid,
            batches: (saturation.batches_per_sec * share).max(1.0),
        }
    }

    /// Events per second at these rates.
    pub fn events_per_sec(&self, corpus: &Corpus) -> f64 {
        self.valid + self.invalid + self.batches * corpus.batch_events
    }
}

/// Latency of one kind of request in an open-loop run, coordinated-omission corrected.
#[derive(Debug, Default, Clone, Copy)]
pub struct Latency {
    /// Median, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, in milliseconds.
    pub p99_ms: f64,
    /// 99.9th percentile, in milliseconds.
    pub p999_ms: f64,
    /// Share of the requests answered with the status their outcome should have (200 for
    /// valid events, 400 for invalid ones; anything but a connection error for bare HTTP).
    pub expected_share: f64,
}

/// Latency of single events by outcome, at one load.
#[derive(Debug, Default, Clone, Copy)]
pub struct ByOutcome {
    /// Valid single events (answered 200).
    pub valid: Latency,
    /// Invalid single events (answered 400 once their DLQ write is acknowledged, S8).
    pub invalid: Latency,
}

/// oha, built with `cargo install` the first time.
pub async fn install_oha() -> Result<PathBuf> {
    let root = tools_dir()?.join("oha");
    let oha = root.join("bin").join("oha");
    if !oha.exists() {
        println!("installing oha {OHA_VERSION} with cargo install (a few minutes, once)");
        run(Command::new("cargo")
            .args(["install", "oha", "--locked", "--version", OHA_VERSION, "--root"])
            .arg(&root))
        .await?;
    }
    Ok(oha)
}

/// Closed-loop saturation for `secs` seconds: singles (as drawn, 2% invalid) and batches at once.
pub async fn saturate(
    oha: &Path,
    server: &Child,
    port: u16,
    corpus: &Corpus,
    auth: Option<&str>,
    secs: u64,
) -> Result<Saturation> {
    let cpu_before = process_cpu(server)?;
    let duration = format!("{secs}s");
    let (c_singles, c_batches) = (CONNECTIONS.0.to_string(), CONNECTIONS.1.to_string());
    let singles_args = ["-c", c_singles.as_str(), "-z", duration.as_str()];
    let batches_args = ["-c", c_batches.as_str(), "-z", duration.as_str()];
    let singles = oha_run(oha, port, "/v1/track", &corpus.singles, auth, &singles_args);
    let batches = oha_run(oha, port, "/v1/batch", &corpus.batches, auth, &batches_args);
    let (singles, batches) = tokio::try_join!(singles, batches)?;
    let cpu_seconds = process_cpu(server)? - cpu_before;
    let ((s_ok, s_total), (b_ok, b_total)) = (
        statuses(&singles, &["200", "400"]),
        statuses(&batches, &["200", "400"]),
    );
    let rps = |v: &Value, ok: f64, total: f64| {
        v["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0) * ok / total.max(1.0)
    };
    let (singles_per_sec, batches_per_sec) = (rps(&singles, s_ok, s_total), rps(&batches, b_ok, b_total));
    Ok(Saturation {
        singles_per_sec,
        batches_per_sec,
        events_per_sec: singles_per_sec + batches_per_sec * corpus.batch_events,
        refused_share: 1.0 - (s_ok + b_ok) / (s_total + b_total).max(1.0),
        cpu_seconds,
    })
}

/// Open-loop latency of valid and of invalid single events for `secs` seconds at `rates`, with
/// the batches running beside them (a kind at rate 0 is not sent: its latency is NaN). `bare`
/// (bare HTTP answers everything 200) counts any answer as expected.
pub async fn latency_by_outcome(
    oha: &Path,
    port: u16,
    corpus: &Corpus,
    rates: &Rates,
    auth: Option<&str>,
    secs: u64,
    bare: bool,
) -> Result<ByOutcome> {
    let duration = format!("{secs}s");
    // One open-loop oha run of `bodies` at `rate` per second; none (an empty summary) at 0.
    let kind = |path: &'static str, bodies, connections: &'static str, rate: f64| {
        let args = ["--latency-correction", "-z", &duration, "-c", connections, "-q"];
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.push(format!("{rate:.0}"));
        async move {
            if rate < 1.0 {
                return Ok(Value::Null);
            }
            oha_run(oha, port, path, bodies, auth, &str_refs(&args)).await
        }
    };
    let (valid, invalid, _) = tokio::try_join!(
        kind("/v1/track", &corpus.valid_singles, "64", rates.valid),
        kind("/v1/track", &corpus.invalid_singles, "16", rates.invalid),
        kind("/v1/batch", &corpus.batches, "64", rates.batches),
    )?;
    let latency = |v: &Value, expected: &str| {
        let p = |k: &str| v["latencyPercentiles"][k].as_f64().unwrap_or(f64::NAN) * 1000.0;
        let (ok, total) = statuses(v, &[expected]);
        let ok = if bare { total } else { ok };
        Latency {
            p50_ms: p("p50"),
            p99_ms: p("p99"),
            p999_ms: p("p99.9"),
            expected_share: ok / total.max(1.0),
        }
    };
    Ok(ByOutcome {
        valid: latency(&valid, "200"),
        invalid: latency(&invalid, "400"),
    })
}

fn str_refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Requests of an oha run answered with one of `codes`, and all requests answered.
fn statuses(v: &Value, codes: &[&str]) -> (f64, f64) {
    let counts = v["statusCodeDistribution"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let total: f64 = counts.values().filter_map(Value::as_f64).sum();
    let ok: f64 = codes.iter().filter_map(|s| counts.get(*s)?.as_f64()).sum();
    (ok, total)
}

/// One oha run posting lines of `bodies` (at random) to `path`; its JSON summary.
pub async fn oha_run(
    oha: &Path,
    port: u16,
    path: &str,
    bodies: &Path,
    auth: Option<&str>,
    extra: &[&str],
) -> Result<Value> {
    let mut command = Command::new(oha);
    command
        .args([
            "--no-tui",
            "--output-format",
            "json",
            "-m",
            "POST",
            "-T",
            "application/json",
            "-Z",
        ])
        .arg(bodies)
        .args(extra)
        .arg(format!("http://127.0.0.1:{port}{path}"));
    if let Some(auth) = auth {
        command.args(["-a", auth]);
    }
    let output = command.output().await.context("running oha")?;
    ensure!(
        output.status.success(),
        "oha: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).context("oha JSON output")
}
