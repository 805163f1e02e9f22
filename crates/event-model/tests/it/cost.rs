//! The work done on a body before authentication ([`parse_body`]: the pre-parse scan and
//! simd-json) for hostile shapes at the default body limit. Measures, never asserts time:
//!
//! ```sh
//! cargo test --release -p event-model --test it cost -- --ignored --nocapture
//! ```

use std::time::Instant;

use event_model::{parse_body, Endpoint, EventType, Limits};

/// The default `--max-request-bytes`.
const BODY: usize = 500 * 1024;

/// `{"anonymousId":"a","event":"e","properties":<filler repeated to about BODY bytes>}`.
fn shaped(open: &str, unit: &str, close: &str) -> Vec<u8> {
    let head = format!(r#"{{"anonymousId":"a","event":"e","properties":{open}"#);
    let n = (BODY - head.len() - close.len() - 1) / (unit.len() + 1);
    let mut body = head.into_bytes();
    body.extend_from_slice(vec![unit; n].join(",").as_bytes());
    body.extend_from_slice(close.as_bytes());
    body.push(b'}');
    body
}

#[test]
#[ignore = "a measurement: run it in release mode with --nocapture"]
fn worst_case_cost_per_byte_before_authentication() {
    let limits = Limits::default();
    let keys_1000 = format!("{{{}}}", vec![r#""":0"#; 1000].join(","));
    let distinct_1000 = format!(
        "{{{}}}",
        (0..1000)
            .map(|i| format!(r#""{i}":0"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    let shapes: Vec<(&str, Vec<u8>)> = vec![
        (
            "102 388 x \"\":0 in one object (refused by the scan)",
            shaped("{", r#""":0"#, "}"),
        ),
        ("objects of 1 000 repeated keys", shaped("[", &keys_1000, "]")),
        ("objects of 1 000 distinct keys", shaped("[", &distinct_1000, "]")),
        ("empty objects", shaped("[", "{}", "]")),
        ("one-key objects", shaped("[", r#"{"":0}"#, "]")),
        ("zeros", shaped("[", "0", "]")),
        ("empty strings", shaped("[", r#""""#, "]")),
        ("escaped strings", shaped("[", r#""\u00e9\n\ud800""#, "]")),
        ("long floats", shaped("[", "0.12345678901234567890123", "]")),
        (
            "nested 64 deep",
            shaped("[", &format!("{}{}", "[".repeat(60), "]".repeat(60)), "]"),
        ),
    ];
    let mut worst = 0f64;
    for (name, body) in shapes {
        let rounds = 20;
        let started = Instant::now();
        let mut outcome = String::new();
        for _ in 0..rounds {
            let mut scratch = body.clone();
            outcome = match parse_body(&mut scratch, Endpoint::Single(EventType::Track), &limits) {
                Ok(parsed) => format!("parsed, {} item", parsed.items.len()),
                Err(rejection) => format!("{} at {:?}", rejection.reason, rejection.field),
            };
        }
        let per_byte = started.elapsed().as_nanos() as f64 / rounds as f64 / body.len() as f64;
        worst = worst.max(per_byte);
        eprintln!(
            "{per_byte:7.2} ns/byte  {:>7} bytes  {name}: {outcome}",
            body.len()
        );
    }
    eprintln!(
        "worst case: {worst:.2} ns/byte, {:.2} ms per {BODY}-byte body",
        worst * BODY as f64 / 1e6
    );
}
