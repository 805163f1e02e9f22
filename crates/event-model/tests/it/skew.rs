//! Clock-skew correction: `timestamp = received_at - (sent_at - original_timestamp)`.

use event_model::EventType::Track;

use super::accept;

/// `received_at` of the test context is 2024-05-01T12:00:00Z.
fn times(extra: &str) -> (String, Option<String>, Option<String>) {
    let (_, v) = accept(Track, &format!(r#"{{"anonymousId":"a","event":"e"{extra}}}"#));
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    (s("timestamp").unwrap(), s("original_timestamp"), s("sent_at"))
}

#[test]
fn a_client_clock_ahead_by_an_hour_is_corrected() {
    let (ts, orig, sent) = times(r#","timestamp":"2024-05-01T13:00:00Z","sentAt":"2024-05-01T13:00:05Z""#);
    assert_eq!(ts, "2024-05-01T11:59:55.000Z");
    assert_eq!(orig.as_deref(), Some("2024-05-01T13:00:00.000Z"));
    assert_eq!(sent.as_deref(), Some("2024-05-01T13:00:05.000Z"));
}

#[test]
fn a_client_clock_behind_with_offsets_and_millis_is_corrected() {
    let (ts, _, _) =
        times(r#","timestamp":"2024-05-01T09:00:00.250+02:00","sentAt":"2024-05-01T07:00:01.000Z""#);
    // Sent 0.75 s after the event; received at 12:00:00.
    assert_eq!(ts, "2024-05-01T11:59:59.250Z");
}

#[test]
fn without_sent_at_the_client_timestamp_is_used_as_is() {
    let (ts, orig, sent) = times(r#","timestamp":"2024-04-30T08:00:00+0000""#);
    assert_eq!(ts, "2024-04-30T08:00:00.000Z");
    assert_eq!(orig.as_deref(), Some("2024-04-30T08:00:00.000Z"));
    assert_eq!(sent, None);
}

#[test]
fn original_timestamp_is_used_when_timestamp_is_absent() {
    let (ts, orig, _) =
        times(r#","originalTimestamp":"2024-05-01T11:00:00Z","sentAt":"2024-05-01T11:00:30Z""#);
    assert_eq!(ts, "2024-05-01T11:59:30.000Z");
    assert_eq!(orig.as_deref(), Some("2024-05-01T11:00:00.000Z"));
}

#[test]
fn without_any_client_time_the_receipt_time_is_used() {
    let (ts, orig, _) = times(r#","sentAt":"2024-05-01T11:00:30Z""#);
    assert_eq!(ts, "2024-05-01T12:00:00.000Z");
    assert_eq!(orig, None);
}
