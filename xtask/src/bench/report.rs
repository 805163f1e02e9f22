//! What one run measured, the median and range of each figure over the runs, the targets, and
//! the report (Markdown and JSON).

use serde_json::{json, Map, Value};

use super::load::{ByOutcome, Latency, Rates, Saturation};
use super::topic::{Order, ORDER_EVENTS, ORDER_KEYS};

/// The CPU target: ingest's CPU per event at most this times the three baselines' sum.
pub const CPU_FACTOR: f64 = 1.3;
/// The latency targets' allowance over their baselines, in milliseconds.
pub const LATENCY_ALLOWANCE_MS: f64 = 1.0;
/// The memory target, MiB of peak RSS.
pub const RSS_LIMIT_MIB: f64 = 150.0;

/// Everything one run measured.
#[derive(Debug, Default, Clone)]
pub struct Run {
    /// The bare producer flat out: events/s and CPU µs per event.
    pub producer_eps: f64,
    /// See [`Run::producer_eps`].
    pub producer_cpu_us: f64,
    /// The bare producer's acknowledgement latency, enqueue to delivery report, paced at the
    /// events/s of ingest's 50% run: p50 and p99, ms.
    pub producer_ack_p50_ms: f64,
    /// See [`Run::producer_ack_p50_ms`].
    pub producer_ack_p99_ms: f64,
    /// Bare JSON: CPU µs per event to parse and write out the corpus's events.
    pub json_cpu_us: f64,
    /// Bare HTTP at saturation.
    pub http: Saturation,
    /// Bare HTTP's peak RSS, MiB.
    pub http_rss_mib: f64,
    /// ingest at saturation.
    pub ingest: Saturation,
    /// ingest's peak RSS over its saturation and latency runs, MiB.
    pub ingest_rss_mib: f64,
    /// The rates of the latency runs (ingest's 50%), and their events/s.
    pub rates: Option<Rates>,
    /// See [`Run::rates`].
    pub latency_eps: f64,
    /// ingest's single-event latency by outcome at 50% of its saturation.
    pub ingest_latency: ByOutcome,
    /// Bare HTTP's at the same load.
    pub http_latency: ByOutcome,
    /// ingest's valid singles at the same rate with nothing beside them (no batches, no
    /// invalid singles): what the batches cost the singles' latency (head-of-line blocking).
    pub ingest_valid_alone: Latency,
    /// Events ingest accepted, and the records found on its topic.
    pub accepted: f64,
    /// See [`Run::accepted`].
    pub on_topic: f64,
    /// The ordering check.
    pub order: Order,
}

impl Run {
    /// ingest's events per request served at saturation.
    pub fn ingest_events_per_request(&self) -> f64 {
        self.ingest.events_per_sec / self.ingest.requests_per_sec().max(1.0)
    }

    /// Bare HTTP's CPU µs per request at saturation.
    pub fn http_cpu_us_per_request(&self) -> f64 {
        self.http.cpu_seconds * 1e6 / (self.http.requests_per_sec() * self.secs()).max(1.0)
    }

    /// Bare HTTP's CPU µs per event, at *ingest's* events per request: closed loop, ingest
    /// answers batches more slowly than bare HTTP does, so it serves more singles per event and
    /// pays the per-request cost more often.
    pub fn http_cpu_us(&self) -> f64 {
        self.http_cpu_us_per_request() / self.ingest_events_per_request().max(0.001)
    }

    /// ingest's CPU µs per event at saturation (singles and batches at once).
    pub fn ingest_cpu_us(&self) -> f64 {
        self.ingest.cpu_seconds * 1e6 / (self.ingest.events_per_sec * self.secs()).max(1.0)
    }

    /// The limit: bare HTTP + bare JSON + bare producer, CPU µs per event.
    pub fn limit_us(&self) -> f64 {
        self.http_cpu_us() + self.json_cpu_us + self.producer_cpu_us
    }

    fn secs(&self) -> f64 {
        super::SATURATION_SECS as f64
    }

    /// Every figure of the run, by name.
    fn figures(&self) -> Vec<(&'static str, f64)> {
        let (g, h) = (&self.ingest_latency, &self.http_latency);
        vec![
            ("producer_events_per_sec", self.producer_eps),
            ("producer_cpu_us_per_event", self.producer_cpu_us),
            ("producer_ack_p50_ms", self.producer_ack_p50_ms),
            ("producer_ack_p99_ms", self.producer_ack_p99_ms),
            ("json_cpu_us_per_event", self.json_cpu_us),
            ("http_events_per_sec", self.http.events_per_sec),
            ("http_requests_per_sec", self.http.requests_per_sec()),
            ("http_refused_share", self.http.refused_share),
            ("http_cpu_us_per_request", self.http_cpu_us_per_request()),
            ("http_cpu_us_per_event", self.http_cpu_us()),
            ("http_rss_mib", self.http_rss_mib),
            ("limit_cpu_us_per_event", self.limit_us()),
            ("target_cpu_us_per_event", CPU_FACTOR * self.limit_us()),
            ("ingest_events_per_sec", self.ingest.events_per_sec),
            ("ingest_requests_per_sec", self.ingest.requests_per_sec()),
            ("ingest_events_per_request", self.ingest_events_per_request()),
            ("ingest_refused_share", self.ingest.refused_share),
            ("ingest_cpu_us_per_event", self.ingest_cpu_us()),
            ("ingest_cpu_over_limit", self.ingest_cpu_us() / self.limit_us()),
            ("ingest_rss_mib", self.ingest_rss_mib),
            ("latency_events_per_sec", self.latency_eps),
            ("ingest_valid_p50_ms", g.valid.p50_ms),
            ("ingest_valid_p99_ms", g.valid.p99_ms),
            ("ingest_valid_p99_9_ms", g.valid.p999_ms),
            ("ingest_valid_answered_200", g.valid.expected_share),
            ("ingest_valid_alone_p50_ms", self.ingest_valid_alone.p50_ms),
            ("ingest_valid_alone_p99_ms", self.ingest_valid_alone.p99_ms),
            ("ingest_valid_alone_p99_9_ms", self.ingest_valid_alone.p999_ms),
            ("ingest_invalid_p50_ms", g.invalid.p50_ms),
            ("ingest_invalid_p99_ms", g.invalid.p99_ms),
            ("ingest_invalid_p99_9_ms", g.invalid.p999_ms),
            ("ingest_invalid_answered_400", g.invalid.expected_share),
            ("http_valid_p50_ms", h.valid.p50_ms),
            ("http_valid_p99_ms", h.valid.p99_ms),
            ("http_valid_p99_9_ms", h.valid.p999_ms),
            ("valid_p99_target_ms", h.valid.p99_ms + LATENCY_ALLOWANCE_MS),
            (
                "invalid_p99_target_ms",
                self.producer_ack_p99_ms + LATENCY_ALLOWANCE_MS,
            ),
            ("accepted_events", self.accepted),
            ("records_on_topic", self.on_topic),
        ]
    }

    /// The run as JSON.
    pub fn to_json(&self) -> Value {
        let mut map: Map<String, Value> = self
            .figures()
            .into_iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        if let Some(r) = &self.rates {
            map.insert(
                "latency_rates_per_sec".into(),
                json!({"valid_singles": r.valid, "invalid_singles": r.invalid, "batches": r.batches}),
            );
        }
        map.insert("ordered_events".into(), json!({"sent": ORDER_KEYS * ORDER_EVENTS, "found": self.order.seen, "out_of_order": self.order.out_of_order}));
        Value::Object(map)
    }
}

/// A figure over the runs: median and range.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    /// The median (the mean of the middle two for an even count).
    pub median: f64,
    /// The least.
    pub min: f64,
    /// The greatest.
    pub max: f64,
}

impl Stat {
    /// The median and range of `values` (NaN for none).
    pub fn of(values: &[f64]) -> Stat {
        let mut v: Vec<f64> = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        let (min, max) = (v.first().copied(), v.last().copied());
        Stat {
            median,
            min: min.unwrap_or(f64::NAN),
            max: max.unwrap_or(f64::NAN),
        }
    }

    /// `median (min-max)` with `decimals`, or the value alone when the runs agree (one run).
    pub fn show(&self, decimals: usize) -> String {
        let one = |x: f64| format!("{x:.decimals$}");
        if one(self.min) == one(self.max) {
            one(self.median)
        } else {
            format!("{} ({}-{})", one(self.median), one(self.min), one(self.max))
        }
    }

    fn to_json(self) -> Value {
        json!({"median": self.median, "min": self.min, "max": self.max})
    }
}

/// The figures of every run, by name.
pub struct Summary {
    runs: Vec<Run>,
    names: Vec<&'static str>,
    stats: Vec<Stat>,
}

impl Summary {
    /// The median and range of every figure of `runs` (at least one).
    pub fn new(runs: Vec<Run>) -> Summary {
        let names: Vec<&'static str> = runs[0].figures().iter().map(|(k, _)| *k).collect();
        let stats = (0..names.len())
            .map(|i| Stat::of(&runs.iter().map(|r| r.figures()[i].1).collect::<Vec<_>>()))
            .collect();
        Summary { runs, names, stats }
    }

    /// The runs.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// One figure over the runs; panics on a name [`Run::figures`] does not have.
    pub fn get(&self, name: &str) -> Stat {
        let i = self.names.iter().position(|n| *n == name);
        self.stats[i.unwrap_or_else(|| panic!("no figure named {name}"))]
    }

    /// The medians and ranges as JSON, with each run's figures.
    pub fn to_json(&self) -> Value {
        let stats: Map<String, Value> = self
            .names
            .iter()
            .zip(&self.stats)
            .map(|(k, s)| (k.to_string(), s.to_json()))
            .collect();
        json!({"median_and_range": stats, "runs": self.runs.iter().map(Run::to_json).collect::<Vec<_>>()})
    }
}

/// A target: met on the medians or not, and in how many runs.
pub struct Check {
    /// What it asks.
    pub name: String,
    /// Met by the medians.
    pub passed: bool,
    /// The figures against it.
    pub detail: String,
}

impl Check {
    /// `figure <= target` on the medians, and per run.
    pub fn at_most(s: &Summary, name: String, figure: &str, target: &str, unit: &str) -> Check {
        let (f, t) = (s.get(figure), s.get(target));
        let runs = s.runs();
        let met = runs
            .iter()
            .filter(|r| {
                let by_name = |n: &str| {
                    r.figures()
                        .iter()
                        .find(|(k, _)| *k == n)
                        .map_or(f64::NAN, |(_, v)| *v)
                };
                by_name(figure) <= by_name(target)
            })
            .count();
        let runs_note = if runs.len() > 1 {
            format!(" (medians; met in {met} of {} runs)", runs.len())
        } else {
            String::new()
        };
        Check {
            name,
            passed: f.median <= t.median,
            detail: format!("{} <= {} {unit}{runs_note}", f.show(2), t.show(2)),
        }
    }

    /// The Markdown line: `- [x] name: detail`.
    pub fn line(&self) -> String {
        format!(
            "- [{}] {}: {}\n",
            if self.passed { "x" } else { " " },
            self.name,
            self.detail
        )
    }

    /// As JSON.
    pub fn to_json(&self) -> Value {
        json!({"check": self.name, "passed": self.passed, "detail": self.detail})
    }
}

/// What buffered mode lost to a SIGKILL at saturation.
#[derive(Debug, Default, Clone, Copy)]
pub struct Kill {
    /// Single events answered 200 before the kill.
    pub accepted: u64,
    /// Those found on the topic.
    pub on_topic: u64,
}

impl Kill {
    /// Accepted events not on the topic.
    pub fn lost(&self) -> u64 {
        self.accepted.saturating_sub(self.on_topic)
    }
}
