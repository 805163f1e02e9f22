//! Tools the automation installs on first use: Debian packages, Python venvs.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tokio::process::Command;

/// Where downloaded tools are cached: `$CDP_TOOLS_DIR`, else `$XDG_CACHE_HOME/cdp-ingest` or
/// `~/.cache/cdp-ingest`.
pub fn tools_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CDP_TOOLS_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("neither CDP_TOOLS_DIR, XDG_CACHE_HOME nor HOME is set")?;
    Ok(cache.join("cdp-ingest"))
}

/// Installs Debian's `prometheus` package (prometheus and promtool) when promtool is missing.
pub async fn ensure_prometheus() -> Result<()> {
    if found("promtool").await {
        return Ok(());
    }
    println!("installing Debian's prometheus package (prometheus, promtool)");
    let sudo = if is_root().await { None } else { Some("sudo") };
    for args in [
        &["apt-get", "update", "-q"][..],
        &["apt-get", "install", "-y", "-q", "prometheus"][..],
    ] {
        let mut command = match sudo {
            Some(sudo) => {
                let mut c = Command::new(sudo);
                c.args(args);
                c
            }
            None => {
                let mut c = Command::new(args[0]);
                c.args(&args[1..]);
                c
            }
        };
        let status = command.env("DEBIAN_FRONTEND", "noninteractive").status().await?;
        if !status.success() {
            bail!("{} failed ({status})", args.join(" "));
        }
    }
    Ok(())
}

/// A venv under the tools cache with `package` installed; returns its `bin` directory.
pub async fn python_venv(name: &str, package: &str) -> Result<PathBuf> {
    let venv = tools_dir()?.join(name);
    let bin = venv.join("bin");
    let marker = venv.join(".installed");
    if marker.exists() {
        return Ok(bin);
    }
    println!("creating the Python venv {} with {package}", venv.display());
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv)).await?;
    run(Command::new(bin.join("pip")).args(["install", "--quiet", package])).await?;
    std::fs::write(&marker, package)?;
    Ok(bin)
}

/// Runs a command, failing on a non-zero exit.
pub async fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .await
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

async fn found(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .await
        .is_ok_and(|o| o.status.success())
}

async fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .await
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}
