//! The printed report: baselines and the CPU limit, throughput and memory, latency by outcome,
//! the targets ticked or not, and the SIGKILL loss.

use std::fmt::Write;
use std::time::Duration;

use super::corpus::{Corpus, CORPUS_BATCHES, CORPUS_REQUESTS};
use super::report::{Check, Kill, Summary, CPU_FACTOR, LATENCY_ALLOWANCE_MS, RSS_LIMIT_MIB};
use super::topic::{ORDER_EVENTS, ORDER_KEYS};

/// The Markdown report, and the targets checked.
pub fn render(s: &Summary, kill: &Kill, corpus: &Corpus, took: Duration) -> (String, Vec<Check>) {
    let runs = s.runs().len();
    let f = |name: &str, decimals: usize| s.get(name).show(decimals);
    let mut md = String::new();
    let w = &mut md;
    let of = if runs > 1 {
        format!("median (min-max) of {runs} runs")
    } else {
        "one run (--quick)".to_string()
    };
    let _ = writeln!(w, "Each figure: {of}.\n");

    let _ = writeln!(w, "| CPU µs per event | |\n|---|---:|");
    let per_request = f("ingest_events_per_request", 1);
    let rows = [
        (
            format!(
                "bare HTTP (hyper, {} µs per request, at ingest's {per_request} events per request)",
                f("http_cpu_us_per_request", 1)
            ),
            "http_cpu_us_per_event",
        ),
        (
            "bare JSON (simd-json parse + write of each event, in process)".to_string(),
            "json_cpu_us_per_event",
        ),
        (
            "bare producer (rdkafka with ingest's settings, flat out)".to_string(),
            "producer_cpu_us_per_event",
        ),
        (
            "**limit**: bare HTTP + bare JSON + bare producer".to_string(),
            "limit_cpu_us_per_event",
        ),
        (format!("target: {CPU_FACTOR} × limit"), "target_cpu_us_per_event"),
        (
            "**ingest** (singles and batches at saturation)".to_string(),
            "ingest_cpu_us_per_event",
        ),
    ];
    for (label, name) in &rows {
        let _ = writeln!(w, "| {label} | {} |", f(name, 2));
    }
    let _ = writeln!(
        w,
        "| ingest / limit (target ≤ {CPU_FACTOR}) | {} |",
        f("ingest_cpu_over_limit", 2)
    );

    let _ = writeln!(
        w,
        "\n| | bare producer | bare HTTP | ingest |\n|---|---:|---:|---:|"
    );
    let _ = writeln!(
        w,
        "| events/s at saturation | {} | {} | {} |",
        f("producer_events_per_sec", 0),
        f("http_events_per_sec", 0),
        f("ingest_events_per_sec", 0)
    );
    let _ = writeln!(
        w,
        "| requests/s at saturation | | {} | {} |",
        f("http_requests_per_sec", 0),
        f("ingest_requests_per_sec", 0)
    );
    let _ = writeln!(
        w,
        "| requests refused (503) at saturation, % | | {} | {} |",
        pct(s, "http_refused_share"),
        pct(s, "ingest_refused_share")
    );
    let _ = writeln!(
        w,
        "| peak RSS MiB | | {} | {} |",
        f("http_rss_mib", 0),
        f("ingest_rss_mib", 0)
    );

    let _ = writeln!(
        w,
        "\n| latency at 50% of ingest's saturation ({} events/s), ms | p50 | p99 | p99.9 |\n|---|---:|---:|---:|",
        f("latency_events_per_sec", 0)
    );
    let lat = [
        ("ingest, valid singles (200)", "ingest_valid"),
        (
            "ingest, valid singles alone (same rate, no batches or invalid singles beside)",
            "ingest_valid_alone",
        ),
        ("bare HTTP, valid singles, same load", "http_valid"),
        (
            "ingest, invalid singles (400 after the DLQ write)",
            "ingest_invalid",
        ),
    ];
    for (label, key) in lat {
        let p = |q: &str| f(&format!("{key}_{q}_ms"), 2);
        let _ = writeln!(w, "| {label} | {} | {} | {} |", p("p50"), p("p99"), p("p99_9"));
    }
    let _ = writeln!(
        w,
        "| bare producer acknowledgement, same events/s | {} | {} | |",
        f("producer_ack_p50_ms", 2),
        f("producer_ack_p99_ms", 2)
    );

    let _ = writeln!(
        w,
        "\nLost to a SIGKILL at saturation (events that got a 200, not on the topic): {} of {} ({:.3}%).\n",
        kill.lost(),
        kill.accepted,
        kill.lost() as f64 * 100.0 / kill.accepted.max(1) as f64
    );

    let checks = checks(s);
    for check in &checks {
        w.push_str(&check.line());
    }
    for (name, code) in [
        ("ingest_valid_answered_200", "200"),
        ("ingest_invalid_answered_400", "400"),
    ] {
        if s.get(name).min < 0.99 {
            let _ = writeln!(
                w,
                "\nNote: only {}% of those single events were answered {code} in some run.",
                pct(s, name)
            );
        }
    }
    let _ = writeln!(
        w,
        "\nCorpus: {CORPUS_REQUESTS} single events ({:.1}% invalid), {CORPUS_BATCHES} batches of {:.0} events on average. Took {:.0} s.",
        corpus.invalid_share * 100.0,
        corpus.batch_events,
        took.as_secs_f64()
    );
    (md, checks)
}

/// The targets, on the medians.
fn checks(s: &Summary) -> Vec<Check> {
    let ms = LATENCY_ALLOWANCE_MS;
    let mut checks = vec![
        Check::at_most(
            s,
            format!("ingest CPU per event <= {CPU_FACTOR} × (bare HTTP + bare JSON + bare producer per event)"),
            "ingest_cpu_us_per_event",
            "target_cpu_us_per_event",
            "µs/event",
        ),
        Check::at_most(
            s,
            format!("valid singles: p99 at 50% of saturation <= bare HTTP's p99 at the same load + {ms} ms"),
            "ingest_valid_p99_ms",
            "valid_p99_target_ms",
            "ms",
        ),
        Check::at_most(
            s,
            format!("invalid singles: p99 at 50% of saturation <= the bare producer's acknowledgement p99 at that load + {ms} ms"),
            "ingest_invalid_p99_ms",
            "invalid_p99_target_ms",
            "ms",
        ),
    ];
    let rss = s.get("ingest_rss_mib");
    checks.push(Check {
        name: format!("peak RSS under load <= {RSS_LIMIT_MIB} MiB"),
        passed: rss.max <= RSS_LIMIT_MIB,
        detail: format!("{} MiB", rss.show(0)),
    });
    let (accepted, on_topic): (f64, f64) = s
        .runs()
        .iter()
        .fold((0.0, 0.0), |(a, t), r| (a + r.accepted, t + r.on_topic));
    let (seen, out_of_order) = s
        .runs()
        .iter()
        .fold((0, 0), |(n, o), r| (n + r.order.seen, o + r.order.out_of_order));
    checks.push(Check {
        name: "every accepted event is on the topic, and per-key order holds".to_string(),
        passed: on_topic >= accepted && s.runs().iter().all(|r| r.order.holds()),
        detail: format!(
            "{on_topic:.0} records for {accepted:.0} accepted events; {seen} of {} events of {ORDER_KEYS} visitors sent one after another, {out_of_order} out of order",
            s.runs().len() * ORDER_KEYS * ORDER_EVENTS
        ),
    });
    checks
}

/// A share as a percentage with one decimal, median and range.
fn pct(s: &Summary, name: &str) -> String {
    let stat = s.get(name);
    super::report::Stat {
        median: stat.median * 100.0,
        min: stat.min * 100.0,
        max: stat.max * 100.0,
    }
    .show(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::load::{ByOutcome, Latency, Saturation};
    use crate::bench::report::Run;

    fn run(scale: f64) -> Run {
        let latency = |p99_ms| Latency {
            p50_ms: 0.5,
            p99_ms,
            p999_ms: p99_ms * 2.0,
            expected_share: 1.0,
        };
        let saturation = |events_per_sec: f64| Saturation {
            singles_per_sec: events_per_sec / 4.0,
            batches_per_sec: events_per_sec / 200.0,
            refused_share: 0.0,
            events_per_sec,
            cpu_seconds: 8.0 * 0.9,
        };
        Run {
            producer_eps: 150_000.0,
            producer_cpu_us: 5.0 * scale,
            producer_ack_p50_ms: 5.5,
            producer_ack_p99_ms: 8.0,
            json_cpu_us: 3.0,
            http: saturation(300_000.0),
            http_rss_mib: 10.0,
            ingest: saturation(40_000.0 * scale),
            ingest_rss_mib: 80.0,
            latency_eps: 20_000.0,
            ingest_latency: ByOutcome {
                valid: latency(2.0),
                invalid: latency(12.0),
            },
            http_latency: ByOutcome {
                valid: latency(1.5),
                invalid: latency(1.5),
            },
            ingest_valid_alone: latency(1.8),
            order: Order {
                seen: ORDER_KEYS * ORDER_EVENTS,
                out_of_order: 0,
            },
            ..Run::default()
        }
    }

    use crate::bench::topic::Order;

    #[test]
    fn renders_every_figure_and_target() {
        let corpus = Corpus {
            singles: "s".into(),
            valid_singles: "v".into(),
            invalid_singles: "i".into(),
            batches: "b".into(),
            payloads: "p".into(),
            batch_events: 55.0,
            invalid_share: 0.02,
        };
        let summary = Summary::new(vec![run(1.0), run(1.2), run(0.9)]);
        let kill = Kill {
            accepted: 1000,
            on_topic: 990,
        };
        let (md, checks) = render(&summary, &kill, &corpus, Duration::from_secs(200));
        assert!(md.contains("median (min-max) of 3 runs"), "{md}");
        assert!(md.contains("10 of 1000 (1.000%)"), "{md}");
        assert_eq!(checks.len(), 5);
        // 2.0 <= 1.5 + 1 ms; 12.0 > 8.0 + 1 ms.
        assert!(checks[1].passed && !checks[2].passed, "{md}");
        assert!(checks[0].detail.contains("met in"), "{md}");
        assert!(!md.contains("NaN"), "{md}");
    }
}
