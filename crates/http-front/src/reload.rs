//! The sources in force, re-read from the sources file without a restart.
//!
//! The file is re-read every `--sources-reload-interval` and on SIGHUP; it is parsed again
//! only when its bytes changed. Polling the path (not watching the inode) follows the way
//! Kubernetes updates a mounted Secret or ConfigMap: it swaps a `..data` symlink to a new
//! directory, so the path names new content while the old file never changes. A file that
//! cannot be read or parsed (bad TOML, a duplicate key) keeps the sources in force; the reason
//! is logged and counted, and readiness is unaffected. A removed or disabled source gets 401
//! from the next request on. A source whose entry did not change keeps its rate-limit bucket.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::metrics;
use crate::sources::{RateLimit, Sources, SourcesError};

/// The sources in force and the file they come from. Requests read [`LiveSources::current`];
/// [`LiveSources::reload`] swaps in a new set atomically.
#[derive(Debug)]
pub(crate) struct LiveSources {
    path: PathBuf,
    default_rate: RateLimit,
    current: ArcSwap<Sources>,
    /// What the file held at the last look: unchanged bytes are not parsed (or reported) again.
    last_seen: Mutex<Seen>,
}

/// The file at the last look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Its bytes' SHA-256 (loaded, or refused).
    Bytes([u8; 32]),
    /// It could not be read (reported once, until it can be read again).
    Unreadable,
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reloaded {
    /// The file's bytes are those last seen: nothing to do.
    Unchanged,
    /// A new set of sources is in force.
    Loaded {
        /// How many sources it lists.
        sources: usize,
    },
}

impl LiveSources {
    /// Loads the file for the first time; an error here stops start-up.
    pub(crate) fn load(path: &Path, default_rate: RateLimit) -> Result<Self, SourcesError> {
        let bytes = read(path)?;
        let sources = parse(path, &bytes, default_rate, None)?;
        metrics::sources_loaded(sources.len());
        metrics::sources_reloaded_none();
        Ok(LiveSources {
            path: path.to_path_buf(),
            default_rate,
            current: ArcSwap::from_pointee(sources),
            last_seen: Mutex::new(Seen::Bytes(Sha256::digest(&bytes).into())),
        })
    }

    /// The sources in force.
    pub(crate) fn current(&self) -> arc_swap::Guard<Arc<Sources>> {
        self.current.load()
    }

    /// Re-reads the file; on success the new sources are in force from the next request on.
    /// On an error the sources in force stay; the same bytes are not parsed (or reported) again.
    pub(crate) fn reload(&self) -> Result<Reloaded, SourcesError> {
        let mut last_seen = self.last_seen.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = match read(&self.path) {
            Ok(bytes) => bytes,
            Err(_) if *last_seen == Seen::Unreadable => return Ok(Reloaded::Unchanged),
            Err(error) => {
                *last_seen = Seen::Unreadable;
                return Err(error);
            }
        };
        let seen = Seen::Bytes(Sha256::digest(&bytes).into());
        if *last_seen == seen {
            return Ok(Reloaded::Unchanged);
        }
        *last_seen = seen;
        let old = self.current.load_full();
        let sources = parse(&self.path, &bytes, self.default_rate, Some(&old))?;
        let count = sources.len();
        self.current.store(Arc::new(sources));
        Ok(Reloaded::Loaded { sources: count })
    }

    /// Reloads, then logs and counts the outcome (one log line per change of the file, not
    /// per poll).
    pub(crate) fn reload_and_report(&self, trigger: &'static str) {
        match self.reload() {
            Ok(Reloaded::Unchanged) => {}
            Ok(Reloaded::Loaded { sources }) => {
                metrics::sources_reloaded(true);
                metrics::sources_loaded(sources);
                tracing::info!(file = %self.path.display(), sources, trigger, "sources file reloaded");
            }
            Err(error) => {
                metrics::sources_reloaded(false);
                tracing::error!(file = %self.path.display(), trigger, %error, "sources file not reloaded: the sources in force stay");
            }
        }
    }
}

/// Re-reads the sources every `interval` and on SIGHUP, until `shutdown` resolves.
pub(crate) async fn watch(sources: Arc<LiveSources>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .inspect_err(|error| tracing::warn!(%error, "cannot listen for SIGHUP: the sources file is re-read on its interval only"))
        .ok();
    loop {
        let trigger = tokio::select! {
            _ = ticks.tick() => "interval",
            Some(()) = async { match &mut hangups { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
        };
        let sources = sources.clone();
        // File I/O off the request workers.
        let _ = tokio::task::spawn_blocking(move || sources.reload_and_report(trigger)).await;
    }
}

fn read(path: &Path) -> Result<Vec<u8>, SourcesError> {
    std::fs::read(path).map_err(|source| SourcesError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn parse(
    path: &Path,
    bytes: &[u8],
    default_rate: RateLimit,
    previous: Option<&Sources>,
) -> Result<Sources, SourcesError> {
    let invalid = |detail: String| SourcesError::Invalid {
        path: path.display().to_string(),
        detail,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| invalid(format!("not UTF-8: {e}")))?;
    let mut sources = Sources::parse_with(text, default_rate).map_err(invalid)?;
    if let Some(previous) = previous {
        sources.keep_buckets_of(previous);
    }
    Ok(sources)
}
