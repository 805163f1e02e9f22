//! The test and local-stack broker: tansu 0.6.0, in memory, on 127.0.0.1 and a free port.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use kafka_producer::KafkaSettings;

use crate::tools::tools_dir;
use tokio::process::{Child, Command};

/// tansu's version, and the features that give the in-memory engine without the heavy ones.
const TANSU_VERSION: &str = "0.6.0";
const TANSU_FEATURES: &str = "dynostore,libsql";

/// A running broker: ours (stopped on drop) or an existing cluster from `KAFKA_BROKERS`.
pub struct Broker {
    address: String,
    /// How xtask's own clients connect: `address` with the `CDP_KAFKA_*` security variables,
    /// which the binaries and tests it starts inherit too.
    settings: KafkaSettings,
    child: Option<Child>,
}

/// `address` with the security settings of the `CDP_KAFKA_*` variables (TLS, SASL,
/// `CDP_KAFKA_OPTIONS`), read as the binaries read them.
fn settings_from_env(address: &str) -> Result<KafkaSettings> {
    let security = ops::KafkaSecurityArgs::from_env()
        .map_err(|e| anyhow::anyhow!("reading the CDP_KAFKA_* variables: {e}"))?;
    Ok(security.settings(address))
}

impl Broker {
    /// Uses `KAFKA_BROKERS` when set; otherwise installs tansu if needed and starts it.
    pub async fn start_or_existing(root: &Path) -> Result<Broker> {
        if let Ok(address) = std::env::var("KAFKA_BROKERS") {
            println!("using the existing Kafka cluster at {address} (KAFKA_BROKERS)");
            let settings = settings_from_env(&address)?;
            let broker = Broker {
                address,
                settings,
                child: None,
            };
            broker.wait_ready(Duration::from_secs(30)).await?;
            return Ok(broker);
        }
        let tansu = install().await?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log_dir = root.join("target").join("xtask");
        std::fs::create_dir_all(&log_dir)?;
        let log_path = log_dir.join("tansu.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(&tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: Ctrl-C reaches ingest first, and xtask stops the broker
            // only after ingest has flushed.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", tansu.display()))?;
        let address = format!("127.0.0.1:{port}");
        let broker = Broker {
            settings: settings_from_env(&address)?,
            address,
            child: Some(child),
        };
        broker
            .wait_ready(Duration::from_secs(30))
            .await
            .with_context(|| format!("tansu did not start; its log is {}", log_path.display()))?;
        println!(
            "tansu {TANSU_VERSION} broker at {} (log: {})",
            broker.address,
            log_path.display()
        );
        Ok(broker)
    }

    /// The bootstrap address, `host:port`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// How to connect to it (the address and the `CDP_KAFKA_*` security settings).
    pub fn settings(&self) -> &KafkaSettings {
        &self.settings
    }

    /// Creates the topics that do not exist yet.
    pub async fn create_topics(&self, topics: &[(&str, i32)]) -> Result<()> {
        kafka_producer::ensure_topics(&self.settings, topics).await?;
        Ok(())
    }

    async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let settings = self.settings.clone();
            let answer = tokio::task::spawn_blocking(move || {
                kafka_producer::fetch_topics(settings, Duration::from_secs(2))
            })
            .await?;
            match answer {
                Ok(_) => return Ok(()),
                // Wrong credentials or certificates do not get better by waiting.
                Err(e @ (kafka_producer::Error::Connect { .. } | kafka_producer::Error::Settings(_))) => {
                    bail!("{e}")
                }
                Err(e) if Instant::now() > deadline => {
                    bail!("broker at {} does not answer metadata: {e}", self.address)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
    }
}

/// The tansu binary, built with `cargo install` the first time.
pub async fn install() -> Result<PathBuf> {
    let root = tools_dir()?.join(format!("tansu-{TANSU_VERSION}"));
    let binary = root.join("bin").join("tansu");
    if binary.exists() {
        return Ok(binary);
    }
    println!(
        "tansu {TANSU_VERSION} is not cached at {}: building it with cargo install.\n\
         This takes 15-20 minutes on 2 cores, once; later runs reuse it.",
        binary.display()
    );
    let status = Command::new("cargo")
        .args([
            "install",
            "tansu",
            "--version",
            TANSU_VERSION,
            "--locked",
            "--no-default-features",
        ])
        .args(["--features", TANSU_FEATURES, "--root"])
        .arg(&root)
        .status()
        .await
        .context("running cargo install tansu")?;
    if !status.success() || !binary.exists() {
        bail!("building tansu failed ({status})");
    }
    Ok(binary)
}
