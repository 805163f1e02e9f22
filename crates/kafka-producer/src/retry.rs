//! Retry records: the headers that turn an ingest record into a retry-topic record, and back.
//!
//! A retry record is the original record (same key, value and headers) plus:
//!
//! | header | value |
//! |---|---|
//! | `retry_attempt` | attempts so far, from 1 |
//! | `retry_target` | the topic to forward to |
//! | `retry_not_before` | Unix time in milliseconds before which it must not be forwarded |
//! | `retry_last_error` | the delivery error that sent it here |

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::message::{Header, Headers, OwnedHeaders};

/// Header names of retry records.
pub const ATTEMPT: &str = "retry_attempt";
/// See [`ATTEMPT`].
pub const TARGET: &str = "retry_target";
/// See [`ATTEMPT`].
pub const NOT_BEFORE: &str = "retry_not_before";
/// See [`ATTEMPT`].
pub const LAST_ERROR: &str = "retry_last_error";

const RETRY_HEADERS: [&str; 4] = [ATTEMPT, TARGET, NOT_BEFORE, LAST_ERROR];

/// The retry state carried in a record's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryInfo {
    /// Attempts so far (1 for a record's first trip through the retry topic).
    pub attempt: u32,
    /// The topic to forward to.
    pub target: String,
    /// Unix time in milliseconds before which the record must not be forwarded.
    pub not_before_ms: i64,
    /// The error of the last failed delivery.
    pub last_error: String,
}

impl RetryInfo {
    /// Reads the retry headers; `None` when one is missing or malformed.
    pub fn from_headers(headers: Option<&impl Headers>) -> Option<RetryInfo> {
        let headers = headers?;
        let get = |name: &str| -> Option<String> {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_string)
        };
        let info = RetryInfo {
            attempt: get(ATTEMPT)?.parse().ok()?,
            target: get(TARGET)?,
            not_before_ms: get(NOT_BEFORE)?.parse().ok()?,
            last_error: get(LAST_ERROR).unwrap_or_default(),
        };
        (info.attempt > 0 && !info.target.is_empty()).then_some(info)
    }

    /// `original` without any retry header, plus this retry state.
    pub fn to_headers(&self, original: Option<&impl Headers>) -> OwnedHeaders {
        let attempt = self.attempt.to_string();
        let not_before = self.not_before_ms.to_string();
        without_retry_headers(original)
            .insert(Header {
                key: ATTEMPT,
                value: Some(attempt.as_str()),
            })
            .insert(Header {
                key: TARGET,
                value: Some(self.target.as_str()),
            })
            .insert(Header {
                key: NOT_BEFORE,
                value: Some(not_before.as_str()),
            })
            .insert(Header {
                key: LAST_ERROR,
                value: Some(self.last_error.as_str()),
            })
    }
}

/// The headers of `original` except the retry headers: what a forwarded record carries.
pub fn without_retry_headers(original: Option<&impl Headers>) -> OwnedHeaders {
    let mut out = OwnedHeaders::new();
    if let Some(original) = original {
        for h in original.iter().filter(|h| !RETRY_HEADERS.contains(&h.key)) {
            out = out.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    out
}

/// The value of a header, as text.
pub fn header_text(headers: Option<&impl Headers>, name: &str) -> Option<String> {
    headers?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Unix time in milliseconds, `delay` from now.
pub fn unix_ms_after(delay: Duration) -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from((now + delay).as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use rdkafka::message::BorrowedHeaders;

    use super::*;

    #[test]
    fn retry_headers_round_trip_and_replace_earlier_ones() {
        let original = OwnedHeaders::new()
            .insert(Header {
                key: "workspace_id",
                value: Some("ws"),
            })
            .insert(Header {
                key: ATTEMPT,
                value: Some("1"),
            });
        let info = RetryInfo {
            attempt: 2,
            target: "cdp.ingest".into(),
            not_before_ms: 1_700_000_000_000,
            last_error: "timed out".into(),
        };
        let headers = info.to_headers(Some(&original));
        assert_eq!(RetryInfo::from_headers(Some(&headers)), Some(info));
        assert_eq!(headers.iter().filter(|h| h.key == ATTEMPT).count(), 1);
        assert_eq!(header_text(Some(&headers), "workspace_id").as_deref(), Some("ws"));
        let forwarded = without_retry_headers(Some(&headers));
        assert_eq!(forwarded.count(), 1);
        assert_eq!(RetryInfo::from_headers(None::<&BorrowedHeaders>), None);
        let bad = OwnedHeaders::new().insert(Header {
            key: ATTEMPT,
            value: Some("x"),
        });
        assert_eq!(RetryInfo::from_headers(Some(&bad)), None);
    }
}
