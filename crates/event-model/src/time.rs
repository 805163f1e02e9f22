//! Timestamps: ISO 8601 parsing, formatting and clock-skew correction.

use chrono::{DateTime, SecondsFormat, Utc};

/// Parses an ISO 8601 timestamp with a UTC offset (RFC 3339, or `+0000` without a colon).
pub(crate) fn parse(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Formats as RFC 3339 in UTC with milliseconds, e.g. `2024-05-01T12:00:00.000Z`.
///
/// Every event formats up to four timestamps: years 0-9999 are written digit by digit (chrono's
/// formatter was a visible share of the benchmark's profile); other years and leap seconds take
/// chrono's path, with the same output.
pub(crate) fn format(t: DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    let naive = t.naive_utc(); // each accessor of `DateTime` converts again
    let year = naive.year();
    if !(0..=9999).contains(&year) || naive.nanosecond() >= 1_000_000_000 {
        return t.to_rfc3339_opts(SecondsFormat::Millis, true);
    }
    let mut out = [0u8; 24];
    let mut put = |at: usize, value: u32, digits: usize| {
        let mut v = value;
        for i in (0..digits).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year as u32, 4);
    put(5, naive.month(), 2);
    put(8, naive.day(), 2);
    put(11, naive.hour(), 2);
    put(14, naive.minute(), 2);
    put(17, naive.second(), 2);
    put(20, naive.nanosecond() / 1_000_000, 3);
    for (at, c) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
    ] {
        out[at] = c;
    }
    // ASCII digits and separators only.
    std::str::from_utf8(&out).map(str::to_owned).unwrap_or_default()
}

/// The event time corrected for the client's clock skew:
/// `received_at - (sent_at - original_timestamp)`; without `sent_at` the client's own time;
/// without either, `received_at`. `None` when the correction leaves chrono's range.
pub(crate) fn corrected(
    received_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
    original: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    match (sent_at, original) {
        (Some(sent), Some(original)) => received_at.checked_sub_signed(sent.signed_duration_since(original)),
        (None, Some(original)) => Some(original),
        (_, None) => Some(received_at),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{SecondsFormat, TimeZone, Utc};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn format_matches_chrono(secs in -70_000_000_000i64..260_000_000_000, nanos in 0u32..2_000_000_000) {
            if let chrono::LocalResult::Single(t) = Utc.timestamp_opt(secs, nanos) {
                prop_assert_eq!(super::format(t), t.to_rfc3339_opts(SecondsFormat::Millis, true));
            }
        }
    }
}
