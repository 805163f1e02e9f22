//! The sources file: which write keys exist, and the workspace and source each belongs to.
//!
//! ```toml
//! [[source]]
//! workspace_id = "ws_1"
//! source_id = "web"
//! write_key = "dev-write-key"          # plain, for development
//!
//! [[source]]
//! workspace_id = "ws_1"
//! source_id = "ios"
//! write_key_sha256 = "5e884898da28..."  # hex SHA-256 of the key, for production
//! enabled = false
//! rate_limit = 500                      # events per second (default: --default-rate-limit)
//! rate_burst = 5000                     # events at once (default: --default-rate-burst)
//! ```

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// One source: where its events belong, and how fast it may send them.
#[derive(Debug)]
pub struct Source {
    /// SHA-256 of the write key.
    digest: [u8; 32],
    /// The workspace.
    pub workspace_id: String,
    /// The source within it.
    pub source_id: String,
    /// Disabled sources are refused (401).
    pub enabled: bool,
    /// The source's rate limit; `None`: unlimited.
    pub rate: Option<RateLimit>,
    limiter: Option<DefaultDirectRateLimiter>,
}

/// A token bucket: `per_second` events per second on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained events per second (0: unlimited).
    pub per_second: u32,
    /// Largest number of events taken at once.
    pub burst: u32,
}

impl Source {
    /// Takes `events` from the source's bucket, or says how long until they would fit.
    pub fn admit(&self, events: usize) -> Result<(), RateLimited> {
        let (Some(limiter), Ok(n)) = (&self.limiter, u32::try_from(events)) else {
            return Ok(());
        };
        let Some(n) = NonZeroU32::new(n) else {
            return Ok(());
        };
        match limiter.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let clock = governor::clock::DefaultClock::default();
                Err(RateLimited::Wait(
                    not_until.wait_time_from(governor::clock::Clock::now(&clock)),
                ))
            }
            Err(_) => Err(RateLimited::OverBurst),
        }
    }
}

/// Why events were not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimited {
    /// The bucket refills enough after this long.
    Wait(Duration),
    /// More events in one request than the source's burst: they never fit at once.
    OverBurst,
}

/// Why a sources file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    /// The file cannot be read.
    #[error("cannot read sources file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("invalid sources file {path}: {detail}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    source: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    workspace_id: String,
    source_id: String,
    #[serde(default = "yes")]
    enabled: bool,
    write_key: Option<String>,
    write_key_sha256: Option<String>,
    rate_limit: Option<u32>,
    rate_burst: Option<u32>,
}

fn yes() -> bool {
    true
}

/// Write-key lookup over the sources file.
#[derive(Debug, Default)]
pub struct Sources {
    by_digest: HashMap<[u8; 32], Arc<Source>>,
}

impl Sources {
    /// Reads and checks a sources file; sources without their own rate get `default_rate`.
    pub fn load(path: &Path, default_rate: RateLimit) -> Result<Self, SourcesError> {
        let text = std::fs::read_to_string(path).map_err(|source| SourcesError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Sources::parse_with(&text, default_rate).map_err(|detail| SourcesError::Invalid {
            path: path.display().to_string(),
            detail,
        })
    }

    /// Parses sources-file text, with no rate limit by default.
    pub fn parse(text: &str) -> Result<Self, String> {
        Sources::parse_with(
            text,
            RateLimit {
                per_second: 0,
                burst: 0,
            },
        )
    }

    /// Parses sources-file text; sources without their own rate get `default_rate`.
    pub fn parse_with(text: &str, default_rate: RateLimit) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut sources = Sources::default();
        for (i, entry) in file.source.into_iter().enumerate() {
            let at = format!(
                "[[source]] #{} ({}/{})",
                i + 1,
                entry.workspace_id,
                entry.source_id
            );
            for (name, id) in [
                ("workspace_id", &entry.workspace_id),
                ("source_id", &entry.source_id),
            ] {
                // Written into every record: the record limit's allowance counts on this bound.
                if id.len() > event_model::MAX_ID_BYTES {
                    return Err(format!(
                        "{at}: {name} is {} bytes, the longest allowed is {}",
                        id.len(),
                        event_model::MAX_ID_BYTES
                    ));
                }
            }
            let digest = match (&entry.write_key, &entry.write_key_sha256) {
                (Some(key), None) if !key.is_empty() => digest(key),
                (None, Some(hex_digest)) => {
                    let bytes =
                        hex::decode(hex_digest.trim()).map_err(|e| format!("{at}: write_key_sha256: {e}"))?;
                    bytes
                        .try_into()
                        .map_err(|_| format!("{at}: write_key_sha256 must be 64 hex digits"))?
                }
                _ => return Err(format!("{at}: set exactly one of write_key and write_key_sha256")),
            };
            let rate = RateLimit {
                per_second: entry.rate_limit.unwrap_or(default_rate.per_second),
                burst: entry.rate_burst.unwrap_or(default_rate.burst),
            };
            let limiter = match (NonZeroU32::new(rate.per_second), NonZeroU32::new(rate.burst)) {
                (None, _) => None,
                (Some(per_second), Some(burst)) => Some(RateLimiter::direct(
                    Quota::per_second(per_second).allow_burst(burst),
                )),
                (Some(_), None) => return Err(format!("{at}: rate_burst must be at least 1")),
            };
            let source = Arc::new(Source {
                digest,
                workspace_id: entry.workspace_id,
                source_id: entry.source_id,
                enabled: entry.enabled,
                rate: limiter.as_ref().map(|_| rate),
                limiter,
            });
            if sources.by_digest.insert(digest, source).is_some() {
                return Err(format!("{at}: the same write key is listed twice"));
            }
        }
        Ok(sources)
    }

    /// The source of a write key, enabled or not.
    pub fn lookup(&self, write_key: &str) -> Option<&Arc<Source>> {
        self.by_digest.get(&digest(write_key))
    }

    /// Keeps the rate-limit buckets of the sources `previous` lists with the same write key
    /// and settings, so a reload does not hand every source a full bucket.
    pub fn keep_buckets_of(&mut self, previous: &Sources) {
        for source in self.by_digest.values_mut() {
            if let Some(old) = previous.by_digest.get(&source.digest) {
                let same = old.workspace_id == source.workspace_id
                    && old.source_id == source.source_id
                    && old.enabled == source.enabled
                    && old.rate == source.rate;
                if same {
                    *source = old.clone();
                }
            }
        }
    }

    /// How many sources the file lists.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// True when the file lists no source.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_hashed_keys_map_to_their_source() {
        let hashed = hex::encode(digest("prod-key"));
        let sources = Sources::parse(&format!(
            r#"
            [[source]]
            workspace_id = "ws"
            source_id = "web"
            write_key = "dev-key"
            [[source]]
            workspace_id = "ws"
            source_id = "ios"
            write_key_sha256 = "{hashed}"
            enabled = false
            "#
        ))
        .unwrap();
        assert_eq!(sources.lookup("dev-key").unwrap().source_id, "web");
        let ios = sources.lookup("prod-key").unwrap();
        assert_eq!((ios.source_id.as_str(), ios.enabled), ("ios", false));
        assert!(sources.lookup("nope").is_none());
    }

    #[test]
    fn a_source_over_its_rate_waits_and_a_batch_over_its_burst_never_fits() {
        let default = RateLimit {
            per_second: 10,
            burst: 20,
        };
        let sources = Sources::parse_with(
            "[[source]]\nworkspace_id='w'\nsource_id='a'\nwrite_key='a'\n\
             [[source]]\nworkspace_id='w'\nsource_id='b'\nwrite_key='b'\nrate_limit=0\n",
            default,
        )
        .unwrap();
        let a = sources.lookup("a").unwrap();
        assert_eq!(a.rate, Some(default));
        assert_eq!(a.admit(20), Ok(()));
        assert!(
            matches!(a.admit(5), Err(RateLimited::Wait(d)) if d > Duration::ZERO && d <= Duration::from_secs(1))
        );
        assert_eq!(a.admit(21), Err(RateLimited::OverBurst));
        let b = sources.lookup("b").unwrap();
        assert_eq!(b.rate, None);
        assert_eq!(b.admit(1_000_000), Ok(()));
    }

    #[test]
    fn a_reload_keeps_the_bucket_of_an_unchanged_source_only() {
        let rate = RateLimit {
            per_second: 1,
            burst: 10,
        };
        let text = "[[source]]\nworkspace_id='w'\nsource_id='a'\nwrite_key='a'\n\
                    [[source]]\nworkspace_id='w'\nsource_id='b'\nwrite_key='b'\n";
        let old = Sources::parse_with(text, rate).unwrap();
        assert_eq!(old.lookup("a").unwrap().admit(10), Ok(()));
        assert_eq!(old.lookup("b").unwrap().admit(10), Ok(()));
        let changed = text.replace("source_id='b'", "source_id='b2'");
        let mut new = Sources::parse_with(&changed, rate).unwrap();
        new.keep_buckets_of(&old);
        assert!(Arc::ptr_eq(new.lookup("a").unwrap(), old.lookup("a").unwrap()));
        assert!(matches!(
            new.lookup("a").unwrap().admit(1),
            Err(RateLimited::Wait(_))
        ));
        assert_eq!(new.lookup("b").unwrap().source_id, "b2");
        assert_eq!(
            new.lookup("b").unwrap().admit(10),
            Ok(()),
            "a changed source starts afresh"
        );
    }

    #[test]
    fn the_example_in_deploy_is_valid() {
        let sources = Sources::parse(include_str!("../../../deploy/sources.example.toml")).unwrap();
        assert_eq!(sources.lookup("test").unwrap().source_id, "web");
        assert!(!sources.lookup("dev-ios-key").unwrap().enabled);
    }

    #[test]
    fn bad_files_are_refused_with_the_entry_named() {
        let both = "[[source]]\nworkspace_id='w'\nsource_id='s'\nwrite_key='k'\nwrite_key_sha256='00'";
        assert!(Sources::parse(both).unwrap_err().contains("#1 (w/s)"));
        let short = "[[source]]\nworkspace_id='w'\nsource_id='s'\nwrite_key_sha256='abcd'";
        assert!(Sources::parse(short).unwrap_err().contains("64 hex digits"));
        let long = format!(
            "[[source]]\nworkspace_id='{}'\nsource_id='s'\nwrite_key='k'",
            "w".repeat(257)
        );
        assert!(Sources::parse(&long)
            .unwrap_err()
            .contains("workspace_id is 257 bytes"));
        let dup = "[[source]]\nworkspace_id='w'\nsource_id='a'\nwrite_key='k'\n[[source]]\nworkspace_id='w'\nsource_id='b'\nwrite_key='k'";
        assert!(Sources::parse(dup).unwrap_err().contains("twice"));
        assert!(Sources::parse("[[source]]\nworkspace_id='w'").is_err());
    }
}
