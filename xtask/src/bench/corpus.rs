//! The seeded corpus: 85% single events, 15% batches of 10-100, 2% invalid, 300 B - 4 KB with a
//! few near 32 KiB. The same seed every time, so every run sends the same bodies.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::{json, Value};

/// Single-event requests in the corpus files (oha picks lines at random).
pub const CORPUS_REQUESTS: usize = 4_000;
/// Batch requests. Batches average 124 KB: oha reads its whole file at start-up, and 4 000 of
/// them (500 MB) took a core for half a second at the start of every run.
pub const CORPUS_BATCHES: usize = 400;

/// The corpus's files, one body or event per line.
pub struct Corpus {
    /// Single-event bodies, valid and invalid as drawn (saturation, SIGKILL).
    pub singles: PathBuf,
    /// The valid single-event bodies alone (latency of valid singles).
    pub valid_singles: PathBuf,
    /// The invalid single-event bodies alone (latency of invalid singles).
    pub invalid_singles: PathBuf,
    /// Batch bodies.
    pub batches: PathBuf,
    /// Every event of the corpus, singles' and batches' (bare producer, bare JSON).
    pub payloads: PathBuf,
    /// Mean events per batch request.
    pub batch_events: f64,
    /// Share of the single events that are invalid.
    pub invalid_share: f64,
}

/// Writes the corpus under `out`.
pub fn corpus(out: &Path) -> Result<Corpus> {
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let (mut singles, mut valid, mut invalid) = (String::new(), String::new(), String::new());
    let (mut batches, mut payloads) = (String::new(), String::new());
    let (mut batch_events, mut n, mut invalid_count) = (0usize, 0usize, 0usize);
    for i in 0..CORPUS_REQUESTS {
        let (e, is_invalid) = event(&mut rng, i * 1000, Some("track"));
        let line = format!("{e}\n");
        payloads.push_str(&line);
        singles.push_str(&line);
        if is_invalid {
            invalid_count += 1;
            invalid.push_str(&line);
        } else {
            valid.push_str(&line);
        }
        if i % (CORPUS_REQUESTS / CORPUS_BATCHES) != 0 {
            continue;
        }
        let size = 10 + rng.below(91) as usize;
        let items: Vec<Value> = (0..size)
            .map(|j| event(&mut rng, i * 1000 + j + 1, None).0)
            .collect();
        for item in &items {
            payloads.push_str(&format!("{item}\n"));
        }
        batch_events += size;
        n += 1;
        batches.push_str(&json!({ "batch": items }).to_string());
        batches.push('\n');
    }
    let corpus = Corpus {
        singles: out.join("corpus-singles.jsonl"),
        valid_singles: out.join("corpus-singles-valid.jsonl"),
        invalid_singles: out.join("corpus-singles-invalid.jsonl"),
        batches: out.join("corpus-batches.jsonl"),
        payloads: out.join("corpus-payloads.jsonl"),
        batch_events: batch_events as f64 / n as f64,
        invalid_share: invalid_count as f64 / CORPUS_REQUESTS as f64,
    };
    std::fs::write(&corpus.singles, singles)?;
    std::fs::write(&corpus.valid_singles, valid)?;
    std::fs::write(&corpus.invalid_singles, invalid)?;
    std::fs::write(&corpus.batches, batches)?;
    std::fs::write(&corpus.payloads, payloads)?;
    Ok(corpus)
}

/// One event: 300 B - 4 KB (0.5% near 32 KiB), 2% invalid (`properties` not an object); whether
/// it is invalid.
fn event(rng: &mut Rng, id: usize, fixed_type: Option<&str>) -> (Value, bool) {
    const TYPES: [&str; 9] = [
        "track", "track", "track", "track", "identify", "page", "screen", "group", "alias",
    ];
    let kind = fixed_type.unwrap_or(TYPES[rng.below(TYPES.len() as u64) as usize]);
    let size = if rng.below(200) == 0 {
        31_000
    } else {
        300 + rng.below(3_700) as usize
    };
    let mut e = json!({
        "type": kind, "anonymousId": format!("visitor-{}", rng.below(10_000)), "userId": format!("user-{}", rng.below(5_000)),
        "messageId": format!("bench-{id}"), "event": "Product Viewed", "name": "Home", "groupId": "g-1", "previousId": "p-1",
        "timestamp": "2026-11-26T12:00:00.000Z", "context": {"library": {"name": "bench", "version": "1"}, "locale": "en-US"},
    });
    let base = e.to_string().len();
    e["properties"] =
        json!({"sku": format!("sku-{}", rng.below(1000)), "pad": "x".repeat(size.saturating_sub(base + 40))});
    let invalid = rng.below(50) == 0;
    if invalid {
        e["properties"] = json!("not an object");
    }
    if fixed_type.is_some() {
        e.as_object_mut().expect("object").remove("type");
    }
    (e, invalid)
}

/// xorshift64*: a seeded, reproducible corpus without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}
