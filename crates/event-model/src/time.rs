//! Timestamps: ISO 8601 parsing, formatting and clock-skew correction.

use chrono::{DateTime, NaiveDate, NaiveTime, SecondsFormat, TimeDelta, Utc};

/// Parses the ISO 8601 timestamps that Segment's and RudderStack's SDK families send, to UTC.
///
/// Accepted shapes (ISO 8601 extended format, a superset of RFC 3339 section 5.6):
///
/// - `2024-01-01T12:00:00.000Z`: analytics.js, Kotlin, Swift's `ISO8601DateFormatter`;
/// - `2024-01-01T12:00:00.123456+00:00`: Python's `isoformat()`, Ruby's `iso8601(6)`;
/// - `+0000` and `+00` offsets (old analytics-ios/android `SSSZ` patterns), lowercase `t`/`z`,
///   a space instead of `T` (RFC 3339 section 5.6's note), a comma before the fraction;
/// - no fraction, or 1 to 9 fractional digits (.NET writes 7, Go 9); digits past the ninth are
///   truncated (chrono keeps nanoseconds);
/// - seconds omitted (`12:00Z`), a leap second (`:60`);
/// - no offset at all (Dart's `toIso8601String()` of a local time, Python's naive
///   `isoformat()`): read as UTC, as the server has no better guess;
/// - a date alone, `2024-01-01`: midnight UTC.
///
/// `None` for anything else (also out-of-range fields such as month 13). Every shape is read
/// byte by byte without allocating, the common `...sssZ` one included.
pub(crate) fn parse(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    let year = digits(b, 0, 4)?;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    if b.len() == 10 {
        return Some(date.and_time(NaiveTime::MIN).and_utc());
    }
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) || b.get(13) != Some(&b':') {
        return None;
    }
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let mut at = 16;
    let mut second = 0;
    let mut nanos = 0u32;
    if b.get(at) == Some(&b':') {
        second = digits(b, at + 1, 2)?;
        at += 3;
        if matches!(b.get(at), Some(b'.' | b',')) {
            at += 1;
            let start = at;
            while let Some(&c) = b.get(at).filter(|c| c.is_ascii_digit()) {
                if at - start < 9 {
                    nanos = nanos * 10 + u32::from(c - b'0');
                }
                at += 1;
            }
            let n = at - start;
            if n == 0 {
                return None;
            }
            if n < 9 {
                nanos *= 10u32.pow((9 - n) as u32);
            }
        }
    }
    // A leap second is kept as chrono represents it: second 59 with over 10^9 nanoseconds.
    let time = if second == 60 {
        NaiveTime::from_hms_nano_opt(hour, minute, 59, 1_000_000_000 + nanos)?
    } else {
        NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?
    };
    let offset_secs = match b.get(at..)? {
        [] | [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let (h, m) = match rest {
                [_, _] => (digits(rest, 0, 2)?, 0),
                [_, _, _, _] => (digits(rest, 0, 2)?, digits(rest, 2, 2)?),
                [_, _, b':', _, _] => (digits(rest, 0, 2)?, digits(rest, 3, 2)?),
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            let secs = i64::from(h * 3600 + m * 60);
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };
    date.and_time(time)
        .and_utc()
        .checked_sub_signed(TimeDelta::seconds(offset_secs))
}

/// `n` ASCII digits of `b` from `at`, as a number.
fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    b.get(at..at + n)?.iter().try_fold(0u32, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
    })
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

    #[test]
    fn every_sdk_timestamp_shape_is_read_as_the_right_utc_time() {
        let cases = [
            // analytics.js, Kotlin, Swift ISO8601DateFormatter
            ("2024-01-01T12:00:00.000Z", "2024-01-01T12:00:00Z"),
            // Python isoformat(), Ruby iso8601(6)
            ("2024-01-01T12:00:00.123456+00:00", "2024-01-01T12:00:00.123456Z"),
            ("2024-01-01T14:00:00.5+02:00", "2024-01-01T12:00:00.5Z"),
            // old analytics-ios/android SSSZ
            ("2024-01-01T12:00:00.000+0000", "2024-01-01T12:00:00Z"),
            ("2024-01-01T07:30:00.000-0430", "2024-01-01T12:00:00Z"),
            // hour-only offsets
            ("2024-01-01T13:00:00+01", "2024-01-01T12:00:00Z"),
            ("2024-01-01T11:00:00-01", "2024-01-01T12:00:00Z"),
            // lowercase, a space for T
            ("2024-01-01t12:00:00z", "2024-01-01T12:00:00Z"),
            ("2024-01-01 12:00:00Z", "2024-01-01T12:00:00Z"),
            ("2024-01-01 12:00:00.250+00:00", "2024-01-01T12:00:00.25Z"),
            // .NET's 7 digits, Go's 9, more truncated
            ("2024-01-01T12:00:00.1234567Z", "2024-01-01T12:00:00.1234567Z"),
            ("2024-01-01T12:00:00.123456789Z", "2024-01-01T12:00:00.123456789Z"),
            (
                "2024-01-01T12:00:00.1234567891234Z",
                "2024-01-01T12:00:00.123456789Z",
            ),
            ("2024-01-01T12:00:00,5Z", "2024-01-01T12:00:00.5Z"),
            // no fraction, no seconds
            ("2024-01-01T12:00:00Z", "2024-01-01T12:00:00Z"),
            ("2024-01-01T12:00Z", "2024-01-01T12:00:00Z"),
            // no offset: Dart's toIso8601String() of a local time, Python's naive isoformat()
            ("2024-01-01T12:00:00.123", "2024-01-01T12:00:00.123Z"),
            ("2024-01-01T12:00:00", "2024-01-01T12:00:00Z"),
            // a date alone
            ("2024-01-01", "2024-01-01T00:00:00Z"),
            // offsets crossing midnight and the year
            ("2023-12-31T23:30:00-01:00", "2024-01-01T00:30:00Z"),
        ];
        for (input, expected) in cases {
            let expected: chrono::DateTime<Utc> = expected.parse().unwrap();
            assert_eq!(super::parse(input), Some(expected), "{input}");
        }
        let leap = super::parse("2016-12-31T23:59:60Z").unwrap();
        assert_eq!(super::format(leap), "2016-12-31T23:59:60.000Z");
        for bad in [
            "",
            "yesterday",
            "2024-13-01",
            "2024-02-30T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T12:00:00.Z",
            "2024-01-01T12:00:00+2",
            "2024-01-01T12:00:00+24:00",
            "2024-01-01T12:00:00 Z",
            "2024-01-01T12",
            "2024-01-01X12:00:00Z",
            "1714564800",
            "2024-1-01",
            "2024-01-01T12:00:00ZZ",
            "\u{661}\u{662}34-01-01",
        ] {
            assert_eq!(super::parse(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn parse_reads_what_format_writes(secs in 0i64..253_402_300_799, millis in 0u32..1000) {
            let t = Utc.timestamp_opt(secs, millis * 1_000_000).unwrap();
            prop_assert_eq!(super::parse(&super::format(t)), Some(t));
        }

        #[test]
        fn parse_agrees_with_chrono_on_rfc_3339(
            s in "[0-9]{4}-[01][0-9]-[0-3][0-9][Tt ][0-2][0-9]:[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?([Zz]|[+-][01][0-9]:[0-5][0-9])"
        ) {
            let chrono = chrono::DateTime::parse_from_rfc3339(&s).ok().map(|t| t.with_timezone(&Utc));
            prop_assert_eq!(super::parse(&s), chrono);
        }

        #[test]
        fn format_matches_chrono(secs in -70_000_000_000i64..260_000_000_000, nanos in 0u32..2_000_000_000) {
            if let chrono::LocalResult::Single(t) = Utc.timestamp_opt(secs, nanos) {
                prop_assert_eq!(super::format(t), t.to_rfc3339_opts(SecondsFormat::Millis, true));
            }
        }
    }
}
