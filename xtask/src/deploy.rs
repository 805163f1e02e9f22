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

    let bin = python_venv("venv-kubernetes-validate", "kubernetes-validate==1.37.0").await?;
    let mut manifests = 0;
    let k8s = deploy.join("k8s");
    let mut kustomizations = vec![k8s.join("base")];
    for entry in std::fs::read_dir(k8s.join("overlays")).context("reading deploy/k8s/overlays")? {
        kustomizations.push(entry?.path());
    }
    for dir in kustomizations {
        let files = kustomization_files(&dir)?;
        run(Command::new(bin.join("kubernetes-validate"))
            .args(["--strict", "--quiet"])
            .args(&files)
            .current_dir(&dir))
        .await?;
        manifests += files.len();
    }

    run(Command::new("python3")
        .args(["-m", "json.tool"])
        .arg(deploy.join("grafana").join("cdp-ingest.json"))
        .stdout(std::process::Stdio::null()))
    .await?;
    println!(
        "deploy checks passed: {manifests} manifests (base and overlays), Prometheus config and rules, dashboard"
    );
    Ok(())
}

/// The manifest files a `kustomization.yaml` lists under `resources:` and as `path:` of its
/// `patches:` (each a whole manifest, so each validates on its own); directories are skipped.
fn kustomization_files(dir: &Path) -> Result<Vec<String>> {
    let path = dir.join("kustomization.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut files = Vec::new();
    let mut in_resources = false;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.starts_with('-') {
            in_resources = line.starts_with("resources:");
        }
        let item = line.trim().trim_start_matches("- ");
        let file = match item.strip_prefix("path: ") {
            Some(patch) => patch,
            None if in_resources && line.trim().starts_with("- ") => item,
            None => continue,
        };
        if file.ends_with(".yaml") || file.ends_with(".yml") {
            files.push(file.to_string());
        }
    }
    anyhow::ensure!(!files.is_empty(), "{} lists no manifest", path.display());
    Ok(files)
}
