//! The sources file re-read without a restart, updated the way Kubernetes updates a mounted
//! ConfigMap or Secret: a `..data` symlink swapped to a new directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use test_support::WRITE_KEY;

use super::Server;

/// A Kubernetes-style mounted volume: `sources.toml -> ..data/sources.toml`,
/// `..data -> <version dir>`; [`Mount::publish`] swaps `..data` atomically.
struct Mount {
    dir: tempfile::TempDir,
    version: usize,
}

impl Mount {
    fn new(text: &str) -> Mount {
        let mut mount = Mount {
            dir: tempfile::tempdir().unwrap(),
            version: 0,
        };
        mount.publish(text);
        std::os::unix::fs::symlink("..data/sources.toml", mount.path()).unwrap();
        mount
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("sources.toml")
    }

    /// Writes `text` into a new version directory and points `..data` at it with a rename.
    fn publish(&mut self, text: &str) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        std::fs::create_dir(self.dir.path().join(&version)).unwrap();
        std::fs::write(self.dir.path().join(&version).join("sources.toml"), text).unwrap();
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
    }
}

fn source(key: &str, source_id: &str, enabled: bool) -> String {
    format!("[[source]]\nworkspace_id = \"ws_test\"\nsource_id = \"{source_id}\"\nwrite_key = \"{key}\"\nenabled = {enabled}\n")
}

/// Posts an event with `key` until the status is `want` or 10 s pass; returns the last status.
async fn status_becomes(server: &Server, key: &str, want: u16) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = server
            .client
            .post(server.url("/v1/track"))
            .basic_auth(key, Some(""))
            .json(&json!({"anonymousId": "a", "event": "e"}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if status == want || Instant::now() > deadline {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Renders the metrics with `render` until `line` is in them or 10 s pass.
async fn metric_appears(render: impl Fn() -> String, line: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = render();
        if text.contains(line) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start(path: &Path) -> Server {
    let path = path.to_path_buf();
    Server::start_with(
        &test_support::brokers(),
        test_support::fresh_topics(1).await,
        |c| {
            c.sources_file = path;
            c.sources_reload_interval = Duration::from_millis(200);
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_are_added_disabled_and_kept_through_a_broken_file_without_a_restart() {
    let metrics = ::ops::install_metrics();
    let mut mount = Mount::new(&source(WRITE_KEY, "src_test", true));
    let server = start(&mount.path()).await;
    assert_eq!(status_becomes(&server, "new-key", 401).await, 401);

    // A source added to the file is taken within a few seconds.
    mount.publish(&(source(WRITE_KEY, "src_test", true) + &source("new-key", "src_new", true)));
    assert_eq!(status_becomes(&server, "new-key", 200).await, 200);
    let text = metric_appears(
        || metrics.render(),
        r#"cdp_ingest_sources_reloads_total{outcome="ok"} 1"#,
    )
    .await;
    assert!(text.contains("cdp_ingest_sources 2"), "{text}");

    // A disabled one gets 401 from then on.
    mount.publish(&(source(WRITE_KEY, "src_test", false) + &source("new-key", "src_new", true)));
    assert_eq!(status_becomes(&server, WRITE_KEY, 401).await, 401);

    // A broken file (a duplicate key) keeps the sources in force and is counted.
    mount.publish(&(source("new-key", "a", true) + &source("new-key", "b", true)));
    let text = metric_appears(
        || metrics.render(),
        r#"cdp_ingest_sources_reloads_total{outcome="failed"} 1"#,
    )
    .await;
    assert!(
        text.contains(r#"cdp_ingest_sources_reloads_total{outcome="failed"} 1"#),
        "{text}"
    );
    assert_eq!(status_becomes(&server, "new-key", 200).await, 200);
    assert_eq!(status_becomes(&server, WRITE_KEY, 401).await, 401);
    let ready = server.client.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "a failed reload does not touch readiness");
    assert!(
        text.contains("cdp_ingest_sources_last_load_timestamp_seconds"),
        "{text}"
    );
    server.stop().await.unwrap();
}
