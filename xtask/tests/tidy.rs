//! Tidy checks: the documents that describe the code name things the code still has. A file,
//! type or function named in `ARCHITECTURE.md`, or a metric listed in `docs/metrics.md`, that
//! disappears from the code fails here, so the map is fixed in the change that moves them.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every `.rs` file under `dir`, recursively (not `target`).
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if path.is_dir() && name != "target" && !name.starts_with('.') {
            rust_files(&path, out);
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// All Rust source of the workspace, concatenated.
fn all_source() -> String {
    let mut files = Vec::new();
    for dir in ["crates", "bins", "xtask"] {
        rust_files(&root().join(dir), &mut files);
    }
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `backticked` spans of `text`.
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `word` occurs in `text` as a whole identifier.
fn has_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(is_word_char) && !after.is_some_and(is_word_char)
    })
}

#[test]
fn architecture_names_only_what_the_code_has() {
    let map = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let source = all_source();
    let mut missing = Vec::new();
    for span in code_spans(&map) {
        let span = span.trim();
        // Source files named by their file name: `producer.rs`, `settings/`.
        if span.ends_with(".rs") && !span.contains(' ') {
            let name = span.rsplit('/').next().unwrap();
            let mut files = Vec::new();
            rust_files(&root(), &mut files);
            if !files
                .iter()
                .any(|f| f.ends_with(span) || f.file_name().is_some_and(|n| n == name))
            {
                missing.push(format!("file {span}"));
            }
            continue;
        }
        // Paths of the code map: `crates/x`, `bins/x`, `docs/metrics.md`, ...
        let top = ["crates/", "bins/", "docs/", "deploy", "xtask", "fuzz"];
        if top.iter().any(|t| span.starts_with(t)) && !span.contains(' ') {
            if !root().join(span.trim_end_matches('/')).exists() {
                missing.push(format!("path {span}"));
            }
            continue;
        }
        // Types (`EventProducer`), paths to items (`Status::not_ready`), functions (`run(...)`).
        let item = span.split(['(', ' ', '<']).next().unwrap_or_default();
        for part in item.split("::") {
            let is_ident = !part.is_empty() && part.chars().all(is_word_char);
            let named = part.chars().next().is_some_and(|c| c.is_ascii_uppercase()) || part.contains('_');
            if is_ident && named && part.chars().any(|c| c.is_ascii_lowercase()) && !has_word(&source, part) {
                missing.push(format!("item {part} (in `{span}`)"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names what the code does not have:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_documented_metric_is_defined_in_the_code() {
    let doc = std::fs::read_to_string(root().join("docs/metrics.md")).unwrap();
    let source = all_source();
    let mut missing = Vec::new();
    for line in doc.lines().filter(|l| l.starts_with("| `cdp_")) {
        let name = code_spans(line)[0];
        // The producer's metrics are named `{prefix}_<what>`, the prefix `cdp_<binary>`.
        let what = ["cdp_ingest_", "cdp_retry_forwarder_", "cdp_dlq_replayer_"]
            .iter()
            .find_map(|p| name.strip_prefix(p))
            .unwrap_or(name);
        if !source.contains(name) && !source.contains(&format!("}}_{what}\"")) {
            missing.push(name.to_string());
        }
    }
    assert!(
        !missing.is_empty() || doc.contains("cdp_ingest_"),
        "no metric found in docs/metrics.md"
    );
    assert!(
        missing.is_empty(),
        "docs/metrics.md lists metrics the code does not define: {missing:?}"
    );
}
