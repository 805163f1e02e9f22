//! The local stack: broker, ingest, retry-forwarder, dlq-replayer and Prometheus, and the smoke
//! test that checks it end to end through Prometheus's HTTP API.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tokio::process::{Child, Command};

use crate::broker::Broker;
use crate::tools::ensure_prometheus;

/// The topics the stack uses, with their partition counts.
pub const TOPICS: [(&str, i32); 3] = [("cdp.ingest", 3), ("cdp.dlq", 1), ("cdp.retry", 1)];
/// The development write key written to the stack's sources file.
pub const DEV_WRITE_KEY: &str = "dev-write-key";

/// Ports of the stack's listeners.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// ingest's event API.
    pub events: u16,
    /// Metrics of ingest, retry-forwarder and dlq-replayer.
    pub metrics: [u16; 3],
    /// Prometheus.
    pub prometheus: u16,
}

impl Ports {
    /// Free ports, for a stack beside another one.
    pub fn free() -> Result<Ports> {
        let free = || -> Result<u16> { Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()) };
        Ok(Ports {
            events: free()?,
            metrics: [free()?, free()?, free()?],
            prometheus: free()?,
        })
    }
}

/// A running stack; dropping it stops the broker.
pub struct Stack {
    broker: Broker,
    services: Vec<(&'static str, Child)>,
    ports: Ports,
    dir: PathBuf,
}

impl Stack {
    /// Builds the binaries and starts everything; returns once ingest is ready.
    pub async fn start(root: &Path, ports: Ports, name: &str) -> Result<Stack> {
        ensure_prometheus().await?;
        cargo(
            root,
            &[
                "build",
                "--quiet",
                "-p",
                "ingest",
                "-p",
                "retry-forwarder",
                "-p",
                "dlq-replayer",
            ],
        )
        .await?;
        let broker = Broker::start_or_existing(root).await?;
        broker.create_topics(&TOPICS).await?;
        let dir = root.join("target").join("xtask").join(name);
        std::fs::create_dir_all(&dir)?;
        let sources = dir.join("sources.toml");
        std::fs::write(
            &sources,
            format!("[[source]]\nworkspace_id = \"ws_dev\"\nsource_id = \"src_dev\"\nwrite_key = \"{DEV_WRITE_KEY}\"\n"),
        )?;
        let mut stack = Stack {
            broker,
            services: Vec::new(),
            ports,
            dir,
        };
        let bin = |name: &str| root.join("target").join("debug").join(name);
        let ingest = stack
            .command(&bin("ingest"), ports.metrics[0])
            .env("CDP_LISTEN", format!("127.0.0.1:{}", ports.events))
            .env("CDP_SOURCES_FILE", &sources)
            // Survives restarts of the stack: what a killed ingest spooled is drained next time.
            .env("CDP_SPOOL_DIR", stack.dir.join("spool"))
            .spawn()
            .context("starting ingest")?;
        stack.services.push(("ingest", ingest));
        stack.wait_ingest_ready().await?;
        let forwarder = stack
            .command(&bin("retry-forwarder"), ports.metrics[1])
            .spawn()
            .context("starting retry-forwarder")?;
        stack.services.push(("retry-forwarder", forwarder));
        let replayer = stack
            .command(&bin("dlq-replayer"), ports.metrics[2])
            .env("CDP_GROUP_ID", format!("cdp-dlq-replayer-{name}"))
            .spawn()
            .context("starting dlq-replayer")?;
        stack.services.push(("dlq-replayer", replayer));
        let prometheus = stack.prometheus(root)?;
        stack.services.push(("prometheus", prometheus));
        Ok(stack)
    }

    fn command(&self, binary: &Path, metrics_port: u16) -> Command {
        let mut command = Command::new(binary);
        command
            .env("CDP_KAFKA_BROKERS", self.broker.address())
            .env("CDP_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"))
            .env("CDP_LOG_FORMAT", "text")
            .kill_on_drop(true);
        command
    }

    /// Prometheus with deploy/prometheus/prometheus.local.yml and the rules, scraping the stack.
    fn prometheus(&self, root: &Path) -> Result<Child> {
        let dir = self.dir.join("prometheus");
        // A fresh TSDB: series of an earlier run must not add to this one's sums.
        let _ = std::fs::remove_dir_all(dir.join("data"));
        let rules = dir.join("rules");
        std::fs::create_dir_all(&rules)?;
        let source = root.join("deploy").join("prometheus");
        std::fs::copy(source.join("prometheus.local.yml"), dir.join("prometheus.yml"))?;
        std::fs::copy(
            source.join("rules").join("cdp-ingest.rules.yml"),
            rules.join("cdp-ingest.rules.yml"),
        )?;
        let [ingest, forwarder, replayer] = self.ports.metrics;
        let targets = serde_json::json!([
            {"targets": [format!("127.0.0.1:{ingest}")], "labels": {"job": "ingest"}},
            {"targets": [format!("127.0.0.1:{forwarder}")], "labels": {"job": "retry-forwarder"}},
            {"targets": [format!("127.0.0.1:{replayer}")], "labels": {"job": "dlq-replayer"}},
        ]);
        std::fs::write(dir.join("targets.json"), targets.to_string())?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!(
                "--web.listen-address=127.0.0.1:{}",
                self.ports.prometheus
            ))
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting prometheus")
    }

    async fn wait_ingest_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok((200, _)) = http(self.ports.events, "GET", "/readyz", &[], "").await {
                return Ok(());
            }
            if let Some(status) = self.services[0].1.try_wait()? {
                bail!("ingest exited during start-up: {status}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("ingest did not become ready within 60 s")
    }

    /// Prints the addresses, the write key and a curl example that works as printed.
    pub fn print(&self) {
        let Ports {
            events,
            metrics: [ingest, forwarder, replayer],
            prometheus,
        } = self.ports;
        println!(
            "\ncdp-ingest stack is up (Ctrl-C stops it)\n\
             \n  events:      http://127.0.0.1:{events}/v1/track  (and /v1/identify, page, screen, group, alias, batch, import)\
             \n  metrics:     http://127.0.0.1:{{{ingest},{forwarder},{replayer}}}/metrics  (ingest, retry-forwarder, dlq-replayer)\
             \n  prometheus:  http://127.0.0.1:{prometheus}  (scraping all three)\
             \n  broker:      {}  (topics {})\
             \n  write key:   {DEV_WRITE_KEY}  (workspace ws_dev, source src_dev)\
             \n\n  curl -u {DEV_WRITE_KEY}: -H 'content-type: application/json' \\\
             \n    -d '{{\"anonymousId\":\"visitor-1\",\"event\":\"Signed Up\",\"properties\":{{\"plan\":\"pro\"}}}}' \\\
             \n    http://127.0.0.1:{events}/v1/track\n",
            self.broker.address(),
            TOPICS.map(|(t, _)| t).join(", "),
        );
    }

    /// Runs until Ctrl-C or until a service exits.
    pub async fn run_until_ctrl_c(mut self) -> Result<()> {
        let exited = async {
            loop {
                for (name, child) in &mut self.services {
                    if let Some(status) = child.try_wait()? {
                        bail!("{name} exited: {status}");
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        tokio::select! {
            result = exited => result,
            _ = tokio::signal::ctrl_c() => {
                // The terminal sent SIGINT to the services too: let them drain, flush and commit.
                for (name, child) in &mut self.services {
                    let status = child.wait().await?;
                    println!("{name} stopped ({status})");
                }
                Ok(())
            }
        }
    }

    /// Sends events and checks through Prometheus's HTTP API that every target is up and that
    /// ingest's accepted-events counter rose by the number sent. Then stops the stack.
    pub async fn smoke_test(mut self) -> Result<()> {
        let prometheus = self.ports.prometheus;
        wait_for("Prometheus to be ready", Duration::from_secs(60), || async {
            Ok(matches!(
                http(prometheus, "GET", "/-/ready", &[], "").await,
                Ok((200, _))
            ))
        })
        .await?;
        wait_for("all three targets to be up", Duration::from_secs(60), || async {
            let up = query(prometheus, "up").await?;
            Ok(up.len() == 3 && up.iter().all(|(_, v)| *v == 1.0))
        })
        .await?;
        let accepted = format!(
            "sum(cdp_ingest_events_total{{outcome=\"accepted\",instance=\"127.0.0.1:{}\"}})",
            self.ports.metrics[0]
        );
        let accepted = accepted.as_str();
        let before = query(prometheus, accepted)
            .await?
            .first()
            .map_or(0.0, |(_, v)| *v);
        use base64::Engine;
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{DEV_WRITE_KEY}:"))
        );
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        for i in 0..20 {
            let body = format!(r#"{{"anonymousId":"smoke-{i}","event":"Smoke Test"}}"#);
            let (status, reply) = http(self.ports.events, "POST", "/v1/track", &headers, &body).await?;
            ensure!(status == 200, "POST /v1/track: {status} {reply}");
        }
        let batch: Vec<String> = (0..10)
            .map(|i| format!(r#"{{"type":"identify","userId":"smoke-user-{i}"}}"#))
            .collect();
        let body = format!(r#"{{"batch":[{}]}}"#, batch.join(","));
        let (status, reply) = http(self.ports.events, "POST", "/v1/batch", &headers, &body).await?;
        ensure!(status == 200, "POST /v1/batch: {status} {reply}");
        let expected = before + 30.0;
        wait_for(
            "Prometheus to see 30 more accepted events",
            Duration::from_secs(60),
            || async {
                Ok(query(prometheus, accepted)
                    .await?
                    .first()
                    .is_some_and(|(_, v)| *v == expected))
            },
        )
        .await?;
        println!(
            "stack smoke test passed: 3 targets up, accepted events {before} -> {expected} in Prometheus"
        );
        for (_, child) in &mut self.services {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
        }
        for (name, child) in &mut self.services {
            let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
            ensure!(
                matches!(status, Ok(Ok(s)) if s.success() || *name == "prometheus"),
                "{name} did not stop cleanly: {status:?}"
            );
        }
        Ok(())
    }
}

/// Polls `check` every 500 ms until it is true or `timeout` passes.
async fn wait_for<F, Fut>(what: &str, timeout: Duration, check: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            result if Instant::now() > deadline => bail!("timed out waiting for {what} (last: {result:?})"),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// An instant query: the result vector as (metric labels, value).
async fn query(port: u16, promql: &str) -> Result<Vec<(serde_json::Value, f64)>> {
    let query: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
    let path = format!("/api/v1/query?query={query}");
    let (status, body) = http(port, "GET", &path, &[], "").await?;
    ensure!(status == 200, "Prometheus query {promql}: {status} {body}");
    let json: serde_json::Value = serde_json::from_str(&body)?;
    let result = json["data"]["result"].as_array().context("no result vector")?;
    Ok(result
        .iter()
        .map(|r| {
            (
                r["metric"].clone(),
                r["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN),
            )
        })
        .collect())
}

/// One HTTP request to `127.0.0.1:port` (`path` with its query string); returns the status
/// and the body (decoded: Prometheus answers chunked past about 2 KiB).
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let method = reqwest::Method::from_bytes(method.as_bytes())?;
    let mut request = client
        .request(method, format!("http://127.0.0.1:{port}{path}"))
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

/// Runs cargo in the workspace.
pub async fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new("cargo")
        .args(args)
        .current_dir(root)
        .stdout(Stdio::inherit())
        .status()
        .await?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
