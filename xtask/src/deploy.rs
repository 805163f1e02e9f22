//! Checks of `deploy/`: Kubernetes manifests against the API schemas, Prometheus
//! configuration and rules (with their unit tests), the Grafana dashboard's JSON.

use std::path::Path;

use anyhow::{Context, Result};
use tokio::process::Command;

use crate::tools::{ensure_prometheus, python_venv, run};

/// Runs every deploy check; fails on the first problem.
pub async fn check(root: &Path) -> Result<()> {
    ensure_prometheus().await?;
    let deploy = root.join("deploy");
    let prometheus = deploy.join("prometheus");
    for config in ["prometheus.yml", "prometheus.local.yml"] {
        run(Command::new("promtool")
            .args(["check", "config", "--syntax-only"])
            .arg(prometheus.join(config)))
        .await?;
    }
    let rules = prometheus.join("rules");
    run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(rules.join("cdp-ingest.rules.yml")))
    .await?;
    run(Command::new("promtool")
        .args(["test", "rules", "cdp-ingest.rules.test.yml"])
        .current_dir(&rules))
    .await?;

    let base = deploy.join("k8s").join("base");
    let kustomization =
        std::fs::read_to_string(base.join("kustomization.yaml")).context("reading kustomization.yaml")?;
    let resources: Vec<&str> = kustomization
        .lines()
        .skip_while(|l| !l.starts_with("resources:"))
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- "))
        .collect();
    anyhow::ensure!(!resources.is_empty(), "kustomization.yaml lists no resources");
    let bin = python_venv("venv-kubernetes-validate", "kubernetes-validate==1.37.0").await?;
    run(Command::new(bin.join("kubernetes-validate"))
        .args(["--strict", "--quiet"])
        .args(&resources)
        .current_dir(&base))
    .await?;

    run(Command::new("python3")
        .args(["-m", "json.tool"])
        .arg(deploy.join("grafana").join("cdp-ingest.json"))
        .stdout(std::process::Stdio::null()))
    .await?;
    println!(
        "deploy checks passed: {} manifests, Prometheus config and rules, dashboard",
        resources.len()
    );
    Ok(())
}
