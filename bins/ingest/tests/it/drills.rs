//! Drills against a real broker process (a tansu of the test's own) and real file systems:
//! a hung broker (SIGSTOP) with a SIGKILL of ingest inside the hang, a hang longer than the
//! message timeout, a spool whose file system is full, a spool whose disk is frozen, and one
//! visitor's order across an outage. Each drill asserts what users observe: HTTP statuses and
//! bodies, records read back from the topics, the metrics text. Nothing waits on a sleep: an
//! observable condition is polled with a deadline (sleeps only pace a steady load or give a
//! phase its length).
//!
//! The file-system drills mount (tmpfs, an ext4 loop image, `fsfreeze`): they need root.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_support::{assert_nothing_lost, consume_from, landed, sources_file, OwnBroker, Topics, WRITE_KEY};

use super::{Ingest, WAIT};

/// Pause between two posts of the steady load.
const PACE: Duration = Duration::from_millis(20);

/// A tansu of the test's own with an ingest topic of 3 partitions, a DLQ and a retry topic.
async fn own_broker() -> (OwnBroker, Topics) {
    let broker = OwnBroker::start().await;
    let topics = Topics {
        ingest: "drill.ingest".into(),
        dlq: "drill.dlq".into(),
        retry: "drill.retry".into(),
    };
    kafka_producer::ensure_topics(
        broker.address(),
        &[(&topics.ingest, 3), (&topics.dlq, 1), (&topics.retry, 1)],
    )
    .await
    .unwrap();
    (broker, topics)
}

/// `ingest` on `broker` with the spool in `spool` and extra environment variables.
async fn ingest_on(
    broker: &OwnBroker,
    topics: &Topics,
    spool: &Arc<tempfile::TempDir>,
    env: &[(&str, &str)],
) -> Ingest {
    Ingest::start_on(
        &broker.address(),
        topics.clone(),
        spool.clone(),
        env,
        sources_file(),
    )
    .await
}

fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder().timeout(timeout).build().unwrap()
}

/// Posts one track event; its status, or the transport error (a timeout, say).
async fn post(client: &reqwest::Client, url: &str, visitor: &str, id: &str) -> reqwest::Result<u16> {
    let event = json!({"anonymousId": visitor, "event": "drill", "messageId": id});
    let response = client
        .post(format!("{url}/v1/track"))
        .basic_auth(WRITE_KEY, Some(""))
        .json(&event)
        .send()
        .await?;
    Ok(response.status().as_u16())
}

/// `/readyz`: status and body.
async fn readyz(client: &reqwest::Client, url: &str) -> reqwest::Result<(u16, Value)> {
    let response = client.get(format!("{url}/readyz")).send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

/// Polls `/readyz` until `check` holds, for up to `within`; returns the last answer.
async fn wait_readyz(
    url: &str,
    what: &str,
    within: Duration,
    check: impl Fn(u16, &Value) -> bool,
) -> (u16, Value) {
    let client = client(Duration::from_secs(2));
    let deadline = Instant::now() + within;
    let mut last = None;
    loop {
        match readyz(&client, url).await {
            Ok((status, body)) if check(status, &body) => return (status, body),
            Ok(answer) => last = Some(answer),
            Err(e) => eprintln!("/readyz: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never showed {what} within {within:?}; last: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Kills `broker` and waits until `url`'s `/readyz` says Kafka is unreachable while the spool
/// takes events (200): the start of every outage drill.
async fn kill_and_wait_spooling(broker: &mut OwnBroker, url: &str) {
    broker.kill();
    wait_readyz(
        url,
        "Kafka unreachable, spooling",
        Duration::from_secs(15),
        |s, b| s == 200 && b["kafka_state"] == "unreachable",
    )
    .await;
}

/// The sum of a metric's samples (every label set, or the one series named with its labels)
/// on `metrics_url`.
async fn metric(metrics_url: &str, name: &str) -> f64 {
    let text = test_support::metrics::scrape(metrics_url)
        .await
        .unwrap_or_else(|| panic!("{metrics_url} does not answer"));
    test_support::metrics::sum(&text, name)
}

/// One client posting single events of one visitor, one every [`PACE`], recording when each
/// 200 came; stops when told or when the server is gone.
struct Steady {
    accepted: Arc<Mutex<Vec<(String, Instant)>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<BTreeMap<u16, usize>>,
}

impl Steady {
    fn start(url: &str, visitor: &str) -> Steady {
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (url, visitor) = (url.to_string(), visitor.to_string());
            let (accepted, stop) = (accepted.clone(), stop.clone());
            tokio::spawn(async move {
                let client = client(Duration::from_secs(10));
                let mut statuses = BTreeMap::new();
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("{visitor}-{i:05}");
                    match post(&client, &url, &visitor, &id).await {
                        Ok(status) => {
                            *statuses.entry(status).or_default() += 1;
                            if status == 200 {
                                accepted.lock().unwrap().push((id, Instant::now()));
                            }
                        }
                        Err(_) => break, // the server is gone
                    }
                    tokio::time::sleep(PACE).await;
                }
                statuses
            })
        };
        Steady { accepted, stop, task }
    }

    /// Events accepted so far.
    fn count(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    /// Polls until `n` events were accepted since this call.
    async fn wait_more(&self, n: usize, within: Duration) {
        let (start, deadline) = (self.count(), Instant::now() + within);
        while self.count() < start + n {
            assert!(
                Instant::now() < deadline,
                "the load got only {} 200s in {within:?}",
                self.count() - start
            );
            tokio::time::sleep(PACE).await;
        }
    }

    /// Stops the client; the accepted events with the time of their 200, and how many
    /// answers of each status it got.
    async fn finish(self) -> (Vec<(String, Instant)>, BTreeMap<u16, usize>) {
        self.stop.store(true, Ordering::Relaxed);
        let statuses = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the load client did not stop")
            .unwrap();
        let accepted = self.accepted.lock().unwrap().clone();
        (accepted, statuses)
    }
}

/// `/readyz` polled every 100 ms with a client timeout, recording each answer (or the lack
/// of one).
struct Watch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(Instant, Result<u16, String>)>>,
}

impl Watch {
    fn start(url: &str, timeout: Duration) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (url, stop) = (url.to_string(), stop.clone());
            tokio::spawn(async move {
                let client = client(timeout);
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let asked = Instant::now();
                    let answer = readyz(&client, &url).await;
                    seen.push((asked, answer.map(|(s, _)| s).map_err(|e| e.to_string())));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                seen
            })
        };
        Watch { stop, task }
    }

    /// Stops polling; asserts every probe was answered; returns the statuses seen.
    async fn finish(self) -> Vec<u16> {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self.task.await.unwrap();
        let failed: Vec<_> = seen.iter().filter(|(_, a)| a.is_err()).collect();
        assert!(
            failed.is_empty(),
            "/readyz did not answer {} of {} probes: {failed:?}",
            failed.len(),
            seen.len()
        );
        seen.into_iter().filter_map(|(_, a)| a.ok()).collect()
    }
}

/// Runs a command (as root), asserting it succeeds.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A file system mounted on a directory; unmounted when dropped (also on panic), lazily if
/// it is still busy after a few seconds.
struct Mount {
    dir: PathBuf,
    /// The ext4 image of a loop mount, removed after the unmount.
    _image: Option<tempfile::TempDir>,
}

impl Mount {
    /// A tmpfs of `size` (`2m`) on `dir`.
    fn tmpfs(dir: &Path, size: &str) -> Mount {
        run(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", path(dir)],
        );
        Mount {
            dir: dir.to_path_buf(),
            _image: None,
        }
    }

    /// A fresh ext4 file system of `mib` MiB, on a loop device, on `dir`.
    fn ext4(dir: &Path, mib: u32) -> Mount {
        let image_dir = tempfile::tempdir().unwrap();
        let image = image_dir.path().join("spool.ext4");
        let file = std::fs::File::create(&image).unwrap();
        file.set_len(u64::from(mib) << 20).unwrap();
        drop(file);
        run("mkfs.ext4", &["-q", path(&image)]);
        run("mount", &["-o", "loop", path(&image), path(dir)]);
        Mount {
            dir: dir.to_path_buf(),
            _image: Some(image_dir),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let dir = path(&self.dir);
        // A killed ingest may still hold files open for a moment.
        for _ in 0..50 {
            if Command::new("umount")
                .arg(dir)
                .status()
                .is_ok_and(|s| s.success())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("umount").args(["-l", dir]).status();
    }
}

/// A file system frozen with `fsfreeze -f`; thawed when dropped (also on panic). A detached
/// watchdog thaws it after a minute in case the test process itself is killed.
struct Frozen {
    dir: PathBuf,
}

impl Frozen {
    fn freeze(dir: &Path) -> Frozen {
        let watchdog = format!("sleep 60; fsfreeze -u '{}' 2>/dev/null", path(dir));
        let _ = Command::new("setsid")
            .args(["sh", "-c", &watchdog])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        run("fsfreeze", &["-f", path(dir)]);
        Frozen {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").args(["-u", path(&self.dir)]).status();
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Writes `path` until the file system is full (ENOSPC).
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let block = [0xa5u8; 4096];
    let mut written = 0u64;
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    written
}

/// A hung broker (SIGSTOP) with a SIGKILL of ingest 6 s into the hang loses at most what
/// the last ack window (2 s here) took: what the producer held longer than the window was
/// moved to the spool, and events accepted after that went to the spool directly; the
/// restart on the same spool drains it. Also: `/readyz` answered throughout the hang, and
/// the spool took events once the window passed. Prints the measured loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_with_a_sigkill_inside_it_loses_at_most_the_ack_window() {
    hang_then_sigkill(Duration::from_secs(6)).await;
}

/// The worst case of the drill above: the SIGKILL comes 1.5 s into the hang, before the ack
/// window (2 s) has passed, so everything accepted since the hang began is only in memory.
/// What is lost is at most that; everything older is on the topic. Prints the measured loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_inside_the_ack_window_of_a_hang_loses_at_most_that_window() {
    hang_then_sigkill(Duration::from_millis(1500)).await;
}

/// Pauses the broker under a steady load, SIGKILLs ingest `kill_after` into the hang,
/// thaws the broker, restarts ingest on the same spool, and checks the loss bound.
async fn hang_then_sigkill(kill_after: Duration) {
    let window = Duration::from_secs(2);
    let (broker, topics) = own_broker().await;
    let spool = Arc::new(tempfile::tempdir().unwrap());
    let env = [("CDP_KAFKA_ACK_WINDOW", "2s")];
    let mut ingest = ingest_on(&broker, &topics, &spool, &env).await;
    let load = Steady::start(&ingest.url, "hang");
    load.wait_more(100, Duration::from_secs(10)).await;
    let watch = Watch::start(&ingest.url, Duration::from_secs(2));
    let appended = "cdp_ingest_spool_appended_total";
    let before = metric(&ingest.metrics_url, appended).await;

    let paused_at = Instant::now();
    broker.pause();
    // Once the window has passed, what the producer held and new events go to the spool.
    let deadline = paused_at + window + Duration::from_secs(5);
    while kill_after > window && metric(&ingest.metrics_url, appended).await <= before {
        assert!(
            Instant::now() < deadline,
            "nothing spooled {:?} into the hang",
            paused_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spooled_after = (kill_after > window).then(|| paused_at.elapsed());
    // The hang goes on, under load, to `kill_after`.
    tokio::time::sleep_until((paused_at + kill_after).into()).await;
    let statuses = watch.finish().await;
    let killed_at = Instant::now();
    ingest.child.kill().unwrap();
    let (_, log) = tokio::task::spawn_blocking(move || ingest.wait()).await.unwrap();
    let (accepted, answers) = load.finish().await;
    eprintln!(
        "spooling began {spooled_after:?} into the hang; /readyz answered {statuses:?}; load: {answers:?}"
    );
    assert!(
        answers.keys().all(|s| [200, 503].contains(s)),
        "{answers:?}\n{log}"
    );

    broker.resume();
    let again = ingest_on(&broker, &topics, &spool, &[]).await;
    wait_readyz(&again.url, "an empty spool", WAIT, |s, b| {
        s == 200 && b["spool"]["records"] == 0
    })
    .await;
    let bound = killed_at - (window + Duration::from_secs(1));
    let must: Vec<String> = accepted
        .iter()
        .filter(|(_, at)| *at < bound)
        .map(|(id, _)| id.clone())
        .collect();
    assert!(
        must.len() >= 20,
        "only {} events accepted before the bound",
        must.len()
    );
    assert_nothing_lost(&broker.address(), &topics, &must, WAIT).await;
    let ids: Vec<String> = accepted.iter().map(|(id, _)| id.clone()).collect();
    let all = landed(&broker.address(), &topics, &ids, Duration::from_secs(3)).await;
    let lost: HashSet<&String> = all.missing.iter().collect();
    let lost_at: Vec<Duration> = accepted
        .iter()
        .filter(|(id, _)| lost.contains(id))
        .map(|(_, at)| killed_at - *at)
        .collect();
    match (lost_at.iter().max(), lost_at.iter().min()) {
        (Some(oldest), Some(newest)) => eprintln!(
            "SIGKILL {kill_after:?} into a hang: {} of {} accepted events lost, accepted between {oldest:?} and {newest:?} before the SIGKILL ({} duplicates)",
            lost_at.len(),
            accepted.len(),
            all.duplicates()
        ),
        _ => eprintln!(
            "SIGKILL {kill_after:?} into a hang: 0 of {} accepted events lost ({} duplicates)",
            accepted.len(),
            all.duplicates()
        ),
    }
}

/// A broker hung (SIGSTOP) for 8 s, longer than the message timeout (3 s) and the ack window
/// (1 s): once it is thawed, delivery resumes without restarting ingest; every event that
/// got a 200 before, during and after the hang is on the topics, `/readyz` is back to 200, and
/// events posted after the thaw arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_longer_than_the_message_timeout_recovers_without_a_restart() {
    let (broker, topics) = own_broker().await;
    let spool = Arc::new(tempfile::tempdir().unwrap());
    let env = [
        ("CDP_KAFKA_MESSAGE_TIMEOUT", "3s"),
        ("CDP_KAFKA_ACK_WINDOW", "1s"),
    ];
    let ingest = ingest_on(&broker, &topics, &spool, &env).await;
    let load = Steady::start(&ingest.url, "long");
    load.wait_more(25, Duration::from_secs(10)).await;
    let watch = Watch::start(&ingest.url, Duration::from_secs(2));

    let paused_at = Instant::now();
    broker.pause();
    wait_readyz(
        &ingest.url,
        "Kafka not delivering",
        Duration::from_secs(10),
        |_, b| b["kafka_reachable"] == false,
    )
    .await;
    tokio::time::sleep_until((paused_at + Duration::from_secs(8)).into()).await;
    broker.resume();
    let resumed_at = Instant::now();
    let (_, body) = wait_readyz(&ingest.url, "ready, delivering, spool drained", WAIT, |s, b| {
        s == 200 && b["kafka_reachable"] == true && b["spool"]["records"] == 0
    })
    .await;
    eprintln!(
        "delivering again {:?} after the thaw: {body}",
        resumed_at.elapsed()
    );
    load.wait_more(50, Duration::from_secs(10)).await;
    let statuses = watch.finish().await;
    let (accepted, answers) = load.finish().await;
    eprintln!("/readyz answered {statuses:?}; load: {answers:?}");
    assert!(answers.keys().all(|s| [200, 503].contains(s)), "{answers:?}");
    let after: Vec<String> = accepted
        .iter()
        .filter(|(_, at)| *at > resumed_at)
        .map(|(id, _)| id.clone())
        .collect();
    assert!(after.len() >= 50, "only {} accepted after the thaw", after.len());
    let ids: Vec<String> = accepted.iter().map(|(id, _)| id.clone()).collect();
    let landed = assert_nothing_lost(&broker.address(), &topics, &ids, WAIT).await;
    let lost = metric(&ingest.metrics_url, "cdp_ingest_kafka_records_lost_total").await;
    assert_eq!(lost, 0.0, "records counted lost");
    eprintln!(
        "drill 2: {} accepted ({} after the thaw), all landed, {} duplicates",
        ids.len(),
        after.len(),
        landed.duplicates()
    );
}

/// With Kafka down, events go to the spool; when the spool's file system (a 2 MiB tmpfs) is
/// full, requests get 503 (not 500, not a hang) and `/readyz` turns 503 naming the spool
/// within a few seconds; once the space is freed, `/readyz` is 200 again by itself and
/// events are accepted; once the broker is back, every event that got a 200 is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_false_while_the_spool_cannot_be_written_and_true_again_after() {
    let spool = Arc::new(tempfile::tempdir().unwrap());
    let _mount = Mount::tmpfs(spool.path(), "2m");
    let (mut broker, topics) = own_broker().await;
    // A spool cap below the file system's size, so that "full" is the file system's.
    let env = [("CDP_SPOOL_MAX_BYTES", "1048576")];
    let ingest = ingest_on(&broker, &topics, &spool, &env).await;
    kill_and_wait_spooling(&mut broker, &ingest.url).await;
    let client = client(Duration::from_secs(5));
    assert_eq!(post(&client, &ingest.url, "fs", "fs-before").await.unwrap(), 200);
    wait_readyz(
        &ingest.url,
        "the event spooled",
        Duration::from_secs(5),
        |_, b| b["spool"]["records"] == 1,
    )
    .await;

    let filler = spool.path().join("filler");
    let filled = fill(&filler);
    let full_at = Instant::now();
    let (_, body) = wait_readyz(
        &ingest.url,
        "the spool not writable",
        Duration::from_secs(5),
        |s, b| {
            s == 503
                && b["error"].as_str().is_some_and(|e| {
                    e.starts_with("the local spool cannot be written") || e.contains("spool is full")
                })
        },
    )
    .await;
    eprintln!(
        "filled {filled} bytes; /readyz 503 after {:?}: {body}",
        full_at.elapsed()
    );
    // The active segment's last page may still take a few frames: 200s until it is full,
    // then every post is refused.
    let mut accepted = vec!["fs-before".to_string()];
    let mut answers = Vec::new();
    for i in 0..40 {
        let id = format!("fs-full-{i}");
        let asked = Instant::now();
        let status = post(&client, &ingest.url, "fs", &id).await.unwrap();
        answers.push(status);
        assert!(
            asked.elapsed() < Duration::from_secs(3),
            "answered after {:?}",
            asked.elapsed()
        );
        match status {
            200 if !answers.contains(&503) => accepted.push(id),
            503 if answers.iter().filter(|&&s| s == 503).count() == 5 => break,
            503 => {}
            other => panic!("a post while the spool's file system is full: {other}; {answers:?}"),
        }
    }
    eprintln!("posts while the file system is full: {answers:?}");
    assert!(answers.ends_with(&[503; 5]), "{answers:?}");
    let (status, body) = readyz(&client, &ingest.url).await.unwrap();
    assert_eq!(status, 503, "{body}");

    std::fs::remove_file(&filler).unwrap();
    let freed_at = Instant::now();
    let (_, body) = wait_readyz(&ingest.url, "ready again", Duration::from_secs(10), |s, _| {
        s == 200
    })
    .await;
    eprintln!(
        "/readyz 200 {:?} after the space was freed: {body}",
        freed_at.elapsed()
    );
    assert_eq!(post(&client, &ingest.url, "fs", "fs-after").await.unwrap(), 200);
    accepted.push("fs-after".into());
    // What the spool took, the full file system included, drains once Kafka is back.
    broker.restart().await;
    wait_readyz(&ingest.url, "an empty spool", WAIT, |s, b| {
        s == 200 && b["kafka_reachable"] == true && b["spool"]["records"] == 0
    })
    .await;
    assert_nothing_lost(&broker.address(), &topics, &accepted, WAIT).await;
}

/// With Kafka down and the spool's disk (an ext4 loop image) frozen with `fsfreeze`: the
/// request whose append the writer had started when the disk froze waits for it (a 503 would
/// be a 503 that took its event) and gets its 200 after the thaw; every later request gets 503
/// within about the spool timeout (1 s), its append cancelled, so none of those events is on
/// any topic afterwards; `/healthz`, `/readyz` (503, naming the stalled spool) and the metrics
/// endpoint keep answering within 1 s; once the disk is thawed, events are accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_spool_disk_never_stalls_the_process() {
    let spool = Arc::new(tempfile::tempdir().unwrap());
    let _mount = Mount::ext4(spool.path(), 16);
    let (mut broker, topics) = own_broker().await;
    let env = [("CDP_SPOOL_TIMEOUT", "1s"), ("CDP_SPOOL_MAX_BYTES", "8388608")];
    let ingest = ingest_on(&broker, &topics, &spool, &env).await;
    kill_and_wait_spooling(&mut broker, &ingest.url).await;
    let slow = client(Duration::from_secs(5));
    assert_eq!(post(&slow, &ingest.url, "ice", "ice-before").await.unwrap(), 200);

    let frozen = Frozen::freeze(spool.path());
    let prompt = client(Duration::from_secs(1));
    // The first append after the freeze blocks the writer: its request waits for it.
    let first = {
        let url = ingest.url.clone();
        tokio::spawn(
            async move { post(&client(Duration::from_secs(60)), &url, "ice", "ice-frozen-first").await },
        )
    };
    wait_readyz(
        &ingest.url,
        "the stalled spool",
        Duration::from_secs(5),
        |s, b| s == 503 && b["error"] == "the local spool's disk is not answering",
    )
    .await;
    let frozen_at = Instant::now();
    let mut posts = Vec::new();
    let mut i = 0;
    while frozen_at.elapsed() < Duration::from_secs(4) {
        let asked = Instant::now();
        let id = format!("ice-frozen-{i}");
        let status = post(&slow, &ingest.url, "ice", &id).await;
        posts.push((id, status.as_ref().ok().copied(), asked.elapsed()));
        i += 1;
        let health = prompt.get(format!("{}/healthz", ingest.url)).send().await;
        assert!(
            health.as_ref().is_ok_and(|r| r.status() == 200),
            "/healthz while the spool is frozen: {health:?}"
        );
        let (status, body) = readyz(&prompt, &ingest.url)
            .await
            .unwrap_or_else(|e| panic!("/readyz while the spool is frozen: {e}"));
        assert_eq!(status, 503, "/readyz while the spool is frozen: {body}");
        let metrics = prompt.get(&ingest.metrics_url).send().await;
        assert!(
            metrics.as_ref().is_ok_and(|r| r.status() == 200),
            "/metrics while the spool is frozen: {metrics:?}"
        );
    }
    eprintln!("posts while frozen (id, status, time): {posts:?}");
    assert!(posts.len() >= 2, "{posts:?}");
    for (_, status, took) in &posts {
        assert_eq!(*status, Some(503), "a post while the spool is frozen: {posts:?}");
        assert!(*took < Duration::from_millis(2500), "a 503 after {took:?}");
    }
    assert!(
        !first.is_finished(),
        "the request whose append froze was answered"
    );

    drop(frozen);
    let thawed_at = Instant::now();
    let first = first.await.unwrap();
    eprintln!(
        "the frozen append's request answered {first:?}, {:?} after the thaw",
        thawed_at.elapsed()
    );
    assert_eq!(first.ok(), Some(200), "the request whose append froze");
    let deadline = thawed_at + Duration::from_secs(10);
    loop {
        let status = post(&slow, &ingest.url, "ice", "ice-after").await.unwrap();
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 200 within 10 s of the thaw: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("a post accepted {:?} after the thaw", thawed_at.elapsed());
    wait_readyz(&ingest.url, "ready again", Duration::from_secs(10), |s, _| {
        s == 200
    })
    .await;
    // A 503 took nothing: once Kafka is back, the accepted events land and none of the
    // refused ones does.
    broker.restart().await;
    wait_readyz(&ingest.url, "an empty spool", WAIT, |s, b| {
        s == 200 && b["kafka_reachable"] == true && b["spool"]["records"] == 0
    })
    .await;
    let accepted = ["ice-before", "ice-frozen-first", "ice-after"].map(String::from);
    assert_nothing_lost(&broker.address(), &topics, &accepted, WAIT).await;
    let refused: Vec<String> = posts.into_iter().map(|(id, _, _)| id).collect();
    let found = landed(&broker.address(), &topics, &refused, Duration::from_secs(3)).await;
    let taken: Vec<&String> = found
        .counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(id, _)| id)
        .collect();
    assert!(taken.is_empty(), "events answered 503 are on a topic: {taken:?}");
}

/// One visitor's events, each posted after the previous one's 200, across a hung broker
/// (SIGSTOP: held in memory for the ack window, then moved to the spool, then spooled
/// directly) and its thaw mid-way (new events arrive while the spool drains): on the ingest
/// topic their first occurrences are in send order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_visitors_events_stay_in_order_across_an_outage() {
    order_across(Outage::Hang).await;
}

/// The same across a broker that is down (SIGKILL, then started again on its data): what the
/// producer held when the connections dropped is taken back and spooled ahead of the events
/// that follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_visitors_events_stay_in_order_across_a_broker_restart() {
    order_across(Outage::Down).await;
}

/// How the broker goes away.
#[derive(Clone, Copy)]
enum Outage {
    /// SIGSTOP, then SIGCONT.
    Hang,
    /// SIGKILL, then a restart on the same data.
    Down,
}

/// Posts one visitor's events across `outage` and checks their order on the topic.
async fn order_across(outage: Outage) {
    let (mut broker, topics) = own_broker().await;
    let spool = Arc::new(tempfile::tempdir().unwrap());
    let env = [("CDP_KAFKA_ACK_WINDOW", "1s")];
    let ingest = ingest_on(&broker, &topics, &spool, &env).await;
    let sent = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let visitor = {
        let (url, sent, stop) = (ingest.url.clone(), sent.clone(), stop.clone());
        tokio::spawn(async move {
            let client = client(Duration::from_secs(10));
            let mut refused = 0;
            for i in 0.. {
                let id = format!("ord-{i:05}");
                loop {
                    match post(&client, &url, "one-visitor", &id).await.unwrap() {
                        200 => break,
                        503 => refused += 1,
                        other => panic!("{id}: status {other}"),
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                sent.lock().unwrap().push(id);
                if stop.load(Ordering::Relaxed) {
                    return refused;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            unreachable!()
        })
    };
    let count = || sent.lock().unwrap().len();
    let wait_count = |n: usize| async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        while count() < n {
            assert!(Instant::now() < deadline, "only {} events sent", count());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    wait_count(50).await;
    match outage {
        Outage::Hang => broker.pause(),
        Outage::Down => broker.kill(),
    }
    let before = metric(&ingest.metrics_url, "cdp_ingest_spool_appended_total").await;
    // Through the window (held in memory), the producer's replacement (its records taken
    // back), to Kafka unreachable (events spooled).
    wait_readyz(
        &ingest.url,
        "Kafka unreachable",
        Duration::from_secs(10),
        |_, b| b["kafka_state"] == "unreachable",
    )
    .await;
    let at = count();
    wait_count(at + 50).await;
    assert!(metric(&ingest.metrics_url, "cdp_ingest_spool_appended_total").await > before);
    match outage {
        Outage::Hang => broker.resume(),
        Outage::Down => broker.restart().await,
    }
    let resumed = count();
    wait_readyz(&ingest.url, "delivering, spool drained", WAIT, |s, b| {
        s == 200 && b["kafka_reachable"] == true && b["spool"]["records"] == 0
    })
    .await;
    let drained = count();
    wait_count(drained + 30).await;
    stop.store(true, Ordering::Relaxed);
    let refused = visitor.await.unwrap();
    let sent = sent.lock().unwrap().clone();
    eprintln!(
        "{} events sent ({} refused and resent); thawed at #{resumed}, spool drained at #{drained}",
        sent.len(),
        refused
    );

    let landed = assert_nothing_lost(&broker.address(), &topics, &sent, WAIT).await;
    let total: usize = landed.counts.values().sum();
    let records = consume_from(&broker.address(), &topics.ingest, total, WAIT).await;
    ingest.terminate();
    let (_, log) = tokio::task::spawn_blocking(move || ingest.wait()).await.unwrap();
    let transitions: Vec<&str> = log
        .lines()
        .filter(|l| ["Kafka is", "replacing", "drained"].iter().any(|w| l.contains(w)))
        .collect();
    eprintln!("ingest's transitions:\n{}", transitions.join("\n"));
    let mut seen = HashSet::new();
    let firsts: Vec<u32> = records
        .iter()
        .map(|r| r.event()["message_id"].as_str().unwrap().to_string())
        .filter_map(|id| id.strip_prefix("ord-")?.parse().ok())
        .filter(|n| seen.insert(*n))
        .collect();
    assert_eq!(firsts.len(), sent.len(), "every event once at least");
    let runs = runs(&firsts);
    eprintln!(
        "first occurrences on the topic: {runs}; {} duplicates",
        landed.duplicates()
    );
    assert!(
        firsts.windows(2).all(|w| w[0] < w[1]),
        "first occurrences out of send order: {runs}"
    );
}

/// `0 1 2 7 8 3` as `0-2, 7-8, 3`: the runs of consecutive numbers.
fn runs(numbers: &[u32]) -> String {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for &n in numbers {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == n => *end = n,
            _ => runs.push((n, n)),
        }
    }
    let text: Vec<String> = runs
        .iter()
        .map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") })
        .collect();
    text.join(", ")
}

/// What one batch of the mixed load got.
struct BatchAnswer {
    /// When it was answered.
    at: Instant,
    status: u16,
    /// The body's `accepted` (0 when absent).
    accepted: u64,
    /// The ids of its valid events, and of its invalid one.
    valid: Vec<String>,
    invalid: String,
}

/// Posts batches of 19 valid events and one invalid one (no `event`) every 200 ms until
/// `stop`, recording every answer.
fn mixed_batches(url: &str, name: &str, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<BatchAnswer>> {
    let (url, name) = (url.to_string(), name.to_string());
    tokio::spawn(async move {
        let client = client(Duration::from_secs(20));
        let mut answers = Vec::new();
        for b in 0.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let valid: Vec<String> = (0..19).map(|i| format!("{name}-{b:04}-{i:02}")).collect();
            let invalid = format!("{name}-{b:04}-bad");
            let mut batch: Vec<Value> = valid
                .iter()
                .enumerate()
                .map(|(i, id)| json!({"type": "track", "anonymousId": format!("v{}", i % 24), "event": "e", "messageId": id}))
                .collect();
            batch.insert(
                7,
                json!({"type": "track", "anonymousId": "v0", "messageId": invalid}),
            );
            let response = client
                .post(format!("{url}/v1/batch"))
                .basic_auth(WRITE_KEY, Some(""))
                .json(&json!({ "batch": batch }))
                .send()
                .await;
            let Ok(response) = response else { break };
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or_default();
            answers.push(BatchAnswer {
                at: Instant::now(),
                status,
                accepted: body["accepted"].as_u64().unwrap_or(0),
                valid,
                invalid,
            });
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        answers
    })
}

/// A 40 s Kafka outage under batches that each carry one invalid event (ordinary traffic):
/// the rejected event's DLQ envelope lands in the spool, bound for the DLQ, so every batch is
/// answered as with Kafka up, 400 with its 19 valid events accepted; no DLQ record waits in
/// librdkafka into a producer rebuild; every accepted event reaches the ingest topic and
/// every rejected one the DLQ once Kafka is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_with_an_invalid_event_in_every_batch_answers_every_batch_400() {
    let (mut broker, topics) = own_broker().await;
    let spool = Arc::new(tempfile::tempdir().unwrap());
    let ingest = ingest_on(&broker, &topics, &spool, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<_> = (0..2)
        .map(|n| mixed_batches(&ingest.url, &format!("mix{n}"), stop.clone()))
        .collect();
    let rebuilds = "cdp_ingest_kafka_producer_rebuilds_total";
    wait_readyz(&ingest.url, "delivering", WAIT, |s, b| {
        s == 200 && b["kafka_state"] == "delivering"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // a phase of normal traffic
    let rebuilds_before = metric(&ingest.metrics_url, rebuilds).await;
    broker.kill();
    let down_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(40)).await; // the outage's length
    let up_at = Instant::now();
    broker.restart().await;
    wait_readyz(
        &ingest.url,
        "delivering, spool drained",
        Duration::from_secs(60),
        |s, b| s == 200 && b["kafka_state"] == "delivering" && b["spool"]["records"] == 0,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // normal traffic again
    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    for load in loads {
        answers.extend(load.await.unwrap());
    }
    let rebuilt = metric(&ingest.metrics_url, rebuilds).await - rebuilds_before;

    let during: Vec<&BatchAnswer> = answers
        .iter()
        .filter(|a| a.at > down_at && a.at < up_at)
        .collect();
    let as_usual = during
        .iter()
        .filter(|a| a.status == 400 && a.accepted == 19)
        .count();
    let mut statuses = BTreeMap::<u16, usize>::new();
    for a in &during {
        *statuses.entry(a.status).or_default() += 1;
    }
    eprintln!(
        "{} batches during the outage: {statuses:?}, {as_usual} answered 400 with 19 accepted; {rebuilt} rebuilds",
        during.len()
    );
    assert!(
        during.len() >= 100,
        "the load kept going: {} batches",
        during.len()
    );
    assert!(
        as_usual * 100 >= during.len() * 99,
        "only {as_usual} of {} batches answered 400 with 19 accepted: {statuses:?}",
        during.len()
    );
    assert!(rebuilt <= 1.0, "{rebuilt} producer rebuilds during the outage");

    let accepted: Vec<String> = answers
        .iter()
        .filter(|a| matches!(a.status, 200 | 400))
        .flat_map(|a| a.valid[..a.accepted as usize].iter().cloned())
        .collect();
    let rejected: Vec<String> = answers
        .iter()
        .filter(|a| a.status == 400)
        .map(|a| a.invalid.clone())
        .collect();
    let read_for = Duration::from_secs(60);
    let landed = assert_nothing_lost(&broker.address(), &topics, &accepted, read_for).await;
    eprintln!("{} accepted, {} duplicates", accepted.len(), landed.duplicates());
    let dlq = consume_from(&broker.address(), &topics.dlq, rejected.len(), read_for).await;
    let on_dlq: HashSet<String> = dlq
        .iter()
        .map(|r| r.json()["message_id"].as_str().unwrap_or_default().to_string())
        .collect();
    let missing: Vec<&String> = rejected.iter().filter(|id| !on_dlq.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} rejected events answered 400 are not on the DLQ: {:?}",
        missing.len(),
        rejected.len(),
        &missing[..missing.len().min(5)]
    );
    for record in &dlq {
        assert_eq!(record.header("reason"), Some("missing_field"), "{record:?}");
    }
    ingest.terminate();
}

/// A replica SIGTERMed during an outage (it spools what it holds and exits 0) and started
/// again on the same spool while the broker is still down, as a pod restarted mid-outage is:
/// it serves within 10 s (a degraded start, said in `/readyz` and the metric) instead of
/// crash-looping, takes events into the spool behind the previous process's, and drains
/// within 10 s of the broker's return; every event either process answered 200 reaches the
/// ingest topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarted_during_an_outage_serves_at_once_and_drains_when_kafka_returns() {
    let (mut broker, topics) = own_broker().await;
    let spool = Arc::new(tempfile::tempdir().unwrap());
    let mut accepted = spool_in_an_outage(&mut broker, &topics, &spool, "restart").await;

    let restarted_at = Instant::now();
    let second = ingest_on(&broker, &topics, &spool, &[]).await;
    let serving_after = restarted_at.elapsed();
    let (_, body) = readyz(&client(Duration::from_secs(2)), &second.url)
        .await
        .unwrap();
    eprintln!("second process ready after {serving_after:?}: {body}");
    assert!(
        serving_after < Duration::from_secs(10),
        "served after {serving_after:?}"
    );
    assert_eq!(body["degraded_start"], true, "{body}");
    assert_eq!(body["recovering"], true, "{body}");
    let degraded = "cdp_ingest_kafka_degraded_start";
    assert_eq!(metric(&second.metrics_url, degraded).await, 1.0);
    let load = Steady::start(&second.url, "restart2");
    load.wait_more(50, WAIT).await; // spooled behind the first process's records

    broker.restart().await;
    let returned_at = Instant::now();
    let (_, body) = wait_readyz(
        &second.url,
        "delivering, spool drained",
        Duration::from_secs(30),
        |s, b| s == 200 && b["kafka_state"] == "delivering" && b["spool"]["records"] == 0,
    )
    .await;
    let drained_after = returned_at.elapsed();
    eprintln!("drained {drained_after:?} after the broker's return: {body}");
    assert!(
        drained_after < Duration::from_secs(10),
        "drained after {drained_after:?}"
    );
    assert_eq!(body["degraded_start"], false, "{body}");
    assert_eq!(metric(&second.metrics_url, degraded).await, 0.0);
    let (more, statuses) = load.finish().await;
    eprintln!("second process: {statuses:?}");
    accepted.extend(more);
    let ids: Vec<String> = accepted.into_iter().map(|(id, _)| id).collect();
    let landed = assert_nothing_lost(&broker.address(), &topics, &ids, Duration::from_secs(60)).await;
    eprintln!("{} accepted, {} duplicates", ids.len(), landed.duplicates());
    second.terminate();
}

/// The spool segment files in `dir`, oldest first.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "spool"))
        .collect();
    paths.sort();
    paths
}

/// A spool segment that cannot be read (here a directory in its place: root reads any file)
/// during an outage: once Kafka is back it is set aside, counted, and every other segment
/// drains: the accepted events missing from the topics are exactly the ones counted lost. A
/// restart on a spool holding an unreadable segment serves, and counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_spool_segment_is_set_aside_and_the_rest_drains() {
    let (mut broker, topics) = own_broker().await;
    let spool = Arc::new(tempfile::tempdir().unwrap());
    // 64 KiB segments: a few seconds of the load fill several.
    let env = [("CDP_SPOOL_MAX_BYTES", "1048576")];
    let ingest = ingest_on(&broker, &topics, &spool, &env).await;
    let load = Steady::start(&ingest.url, "aside");
    kill_and_wait_spooling(&mut broker, &ingest.url).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while segment_files(spool.path()).len() < 4 {
        assert!(Instant::now() < deadline, "the spool never reached 4 segments");
        load.wait_more(20, WAIT).await;
    }
    let broken = segment_files(spool.path())[1].clone();
    std::fs::remove_file(&broken).unwrap();
    std::fs::create_dir(&broken).unwrap();
    broker.restart().await;
    wait_readyz(
        &ingest.url,
        "delivering, spool drained",
        Duration::from_secs(60),
        |s, b| s == 200 && b["kafka_state"] == "delivering" && b["spool"]["records"] == 0,
    )
    .await;
    let (accepted, statuses) = load.finish().await;
    eprintln!("{statuses:?}");
    let set_aside = "cdp_ingest_spool_segments_set_aside_total";
    assert_eq!(metric(&ingest.metrics_url, set_aside).await, 1.0);
    let lost = metric(&ingest.metrics_url, "cdp_ingest_kafka_records_lost_total").await;
    assert!(lost > 0.0, "the set-aside segment's records are not counted lost");
    let mut aside = broken.as_os_str().to_owned();
    aside.push(".unreadable");
    assert!(Path::new(&aside).exists(), "the segment was not moved aside");
    let ids: Vec<String> = accepted.into_iter().map(|(id, _)| id).collect();
    let found = landed(&broker.address(), &topics, &ids, Duration::from_secs(10)).await;
    eprintln!(
        "{} accepted, {} missing, {lost} counted lost",
        ids.len(),
        found.missing.len()
    );
    assert_eq!(
        found.missing.len() as f64,
        lost,
        "missing events are exactly the ones counted lost"
    );

    // A start on a spool with an unreadable segment serves, and counts it.
    ingest.terminate();
    let (ok, log) = tokio::task::spawn_blocking(move || ingest.wait()).await.unwrap();
    assert!(ok, "{log}");
    let unreadable = spool.path().join("00000000000000099999.spool");
    std::fs::create_dir(&unreadable).unwrap();
    let restarted = ingest_on(&broker, &topics, &spool, &env).await;
    assert_eq!(metric(&restarted.metrics_url, set_aside).await, 1.0);
    assert_eq!(
        post(&client(WAIT), &restarted.url, "aside", "aside-after")
            .await
            .unwrap(),
        200
    );
    assert_nothing_lost(&broker.address(), &topics, &["aside-after".to_string()], WAIT).await;
    restarted.terminate();
}

/// The log's JSON lines whose message starts with `message`.
fn log_lines(log: &str, message: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message))
        })
        .collect()
}

/// SIGTERM while the broker hangs (SIGSTOP) and the spool's disk is frozen (`fsfreeze`): the
/// shutdown completes within the pod's 45 s grace (its last log line says so, with what it
/// lost), and nothing is lost silently: once the disk is thawed and the broker resumed, a
/// restart on the same spool drains it, and every event answered 200 is on a topic, or named
/// lost in the log by its `message_id`, or among the records counted lost without one (an
/// append under way when the disk froze).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_frozen_spool_and_a_hung_broker_completes_and_names_what_it_lost() {
    let spool = Arc::new(tempfile::tempdir().unwrap());
    let _mount = Mount::ext4(spool.path(), 16);
    let (broker, topics) = own_broker().await;
    let env = [
        ("CDP_SPOOL_TIMEOUT", "1s"),
        ("CDP_SPOOL_MAX_BYTES", "8388608"),
        ("CDP_DRAIN_TIMEOUT", "2s"),
        ("CDP_FLUSH_GRACE", "3s"),
    ];
    let ingest = ingest_on(&broker, &topics, &spool, &env).await;
    let load = Steady::start(&ingest.url, "frost");
    load.wait_more(20, WAIT).await;
    broker.pause();
    load.wait_more(20, WAIT).await; // held in librdkafka, unacknowledged
    let frozen = Frozen::freeze(spool.path());
    // The ack window passes: what memory holds is handed to a spool writer that cannot write.
    wait_readyz(
        &ingest.url,
        "the stalled spool",
        Duration::from_secs(20),
        |s, b| s == 503 && b["error"] == "the local spool's disk is not answering",
    )
    .await;
    ingest.terminate();
    let signalled = Instant::now();
    let deadline = signalled + Duration::from_secs(45);
    let finished = loop {
        let log = ingest.log_so_far();
        let last = log_lines(&log, "shutdown");
        if let Some(line) = last.iter().find(|l| {
            l["fields"]["message"].as_str().is_some_and(|m| {
                m.starts_with("shutdown complete") || m.starts_with("shutdown: records lost")
            })
        }) {
            break line.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no end of shutdown within 45 s of SIGTERM:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let took = signalled.elapsed();
    eprintln!("shutdown finished {took:?} after SIGTERM: {finished}");
    let (accepted, statuses) = load.finish().await;
    eprintln!("load: {statuses:?}");
    // The process ends once its threads stuck on the frozen disk can.
    drop(frozen);
    broker.resume();
    let (_, log) = tokio::task::spawn_blocking(move || ingest.wait()).await.unwrap();
    let named: HashSet<String> = log_lines(&log, "record lost")
        .iter()
        .filter_map(|l| l["fields"]["message_id"].as_str().map(str::to_string))
        .collect();
    let unnamed: u64 = log_lines(&log, "records lost")
        .iter()
        .filter_map(|l| l["fields"]["records"].as_u64())
        .sum();

    let restarted = ingest_on(&broker, &topics, &spool, &[]).await;
    wait_readyz(
        &restarted.url,
        "the spool drained",
        Duration::from_secs(60),
        |s, b| s == 200 && b["kafka_state"] == "delivering" && b["spool"]["records"] == 0,
    )
    .await;
    let ids: Vec<String> = accepted.into_iter().map(|(id, _)| id).collect();
    let found = landed(&broker.address(), &topics, &ids, Duration::from_secs(20)).await;
    let silent: Vec<&String> = found.missing.iter().filter(|id| !named.contains(*id)).collect();
    eprintln!(
        "{} accepted, {} missing: {} named lost, {} unnamed but counted",
        ids.len(),
        found.missing.len(),
        found.missing.len() - silent.len(),
        unnamed
    );
    if !found.missing.is_empty() {
        assert!(
            finished["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .starts_with("shutdown: records lost"),
            "events are missing but the shutdown said: {finished}"
        );
    }
    assert!(
        silent.len() as u64 <= unnamed,
        "{} accepted events are missing and not named lost ({} counted without a name): {:?}",
        silent.len(),
        unnamed,
        &silent[..silent.len().min(5)]
    );
    restarted.terminate();
}

/// The spool directory deleted during an outage (an operator's `rm -rf`, a volume gone): the
/// next append notices, counts what the directory held as lost and spools on in a re-created
/// one, so that the events accepted after the delete all land once Kafka is back, and the
/// accepted events missing are exactly the ones counted lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_directory_deleted_in_an_outage_is_recreated_and_its_loss_counted() {
    let (mut broker, topics) = own_broker().await;
    let spool = Arc::new(tempfile::tempdir().unwrap());
    let ingest = ingest_on(&broker, &topics, &spool, &[]).await;
    let load = Steady::start(&ingest.url, "gone");
    kill_and_wait_spooling(&mut broker, &ingest.url).await;
    load.wait_more(50, WAIT).await; // spooled
    std::fs::remove_dir_all(spool.path()).unwrap();
    let deleted_at = Instant::now();
    load.wait_more(50, WAIT).await; // spooled in the re-created directory
    assert!(
        spool.path().join("lock").exists(),
        "the spool directory was not re-created"
    );
    broker.restart().await;
    wait_readyz(
        &ingest.url,
        "delivering, spool drained",
        Duration::from_secs(60),
        |s, b| s == 200 && b["kafka_state"] == "delivering" && b["spool"]["records"] == 0,
    )
    .await;
    let (accepted, statuses) = load.finish().await;
    eprintln!("{statuses:?}");
    let lost = metric(&ingest.metrics_url, "cdp_ingest_kafka_records_lost_total").await;
    let ids: Vec<String> = accepted.iter().map(|(id, _)| id.clone()).collect();
    let found = landed(&broker.address(), &topics, &ids, Duration::from_secs(10)).await;
    eprintln!(
        "{} accepted, {} missing, {lost} counted lost",
        ids.len(),
        found.missing.len()
    );
    assert!(lost > 0.0, "the deleted records are not counted");
    assert_eq!(
        found.missing.len() as f64,
        lost,
        "missing events are exactly the ones counted lost"
    );
    // The first append after the delete noticed it: nothing accepted a little later is lost.
    let after: Vec<&String> = accepted
        .iter()
        .filter(|(_, at)| *at > deleted_at + Duration::from_secs(1))
        .map(|(id, _)| id)
        .filter(|id| found.missing.contains(id))
        .collect();
    assert!(
        after.is_empty(),
        "events accepted after the delete are lost: {after:?}"
    );
    ingest.terminate();
}

/// The spool's file system full (a 2 MiB tmpfs filled) while Kafka delivers, then the broker
/// hangs (SIGSTOP): the records librdkafka held are taken back at the ack window, the spool
/// refuses them, and they wait in memory (`cdp_ingest_spool_held_records`) instead of being
/// destroyed; when the broker resumes they are sent, so every event answered 200 lands and
/// nothing is counted lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_the_spool_refuses_wait_in_memory_for_kafka() {
    let spool = Arc::new(tempfile::tempdir().unwrap());
    let _mount = Mount::tmpfs(spool.path(), "2m");
    let (broker, topics) = own_broker().await;
    let env = [("CDP_SPOOL_MAX_BYTES", "1048576")];
    let ingest = ingest_on(&broker, &topics, &spool, &env).await;
    let filler = spool.path().join("filler");
    fill(&filler);
    let load = Steady::start(&ingest.url, "held");
    load.wait_more(20, WAIT).await;
    broker.pause();
    let held = "cdp_ingest_spool_held_records";
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut most = 0.0;
    while most == 0.0 {
        assert!(
            Instant::now() < deadline,
            "no record held in memory within 30 s of the hang"
        );
        most = metric(&ingest.metrics_url, held).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("{most} records held in memory while the spool's file system is full");
    broker.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&ingest.metrics_url, held).await > 0.0 {
        assert!(
            Instant::now() < deadline,
            "the held records were not sent after the broker resumed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    load.wait_more(20, WAIT).await; // delivering again
    let (accepted, statuses) = load.finish().await;
    eprintln!("{statuses:?}");
    let ids: Vec<String> = accepted.into_iter().map(|(id, _)| id).collect();
    let landed = assert_nothing_lost(&broker.address(), &topics, &ids, Duration::from_secs(60)).await;
    eprintln!("{} accepted, {} duplicates", ids.len(), landed.duplicates());
    assert_eq!(
        metric(&ingest.metrics_url, "cdp_ingest_kafka_records_lost_total").await,
        0.0
    );
    ingest.terminate();
}

/// A degraded start skips the start-up topic check (the cluster did not answer): once Kafka
/// answers, the check runs, and a configured topic that does not exist is named in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_start_checks_the_topics_once_kafka_answers() {
    let (mut broker, topics) = own_broker().await;
    broker.kill();
    let topics = Topics {
        retry: "drill.no-such-retry".into(),
        ..topics
    };
    let spool = Arc::new(tempfile::tempdir().unwrap());
    let env = [("CDP_KAFKA_ALLOW_DEGRADED_START", "true")];
    let ingest = ingest_on(&broker, &topics, &spool, &env).await;
    broker.restart().await;
    wait_readyz(&ingest.url, "delivering", Duration::from_secs(30), |s, b| {
        s == 200 && b["kafka_state"] == "delivering"
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let named = log_lines(&ingest.log_so_far(), "a configured topic does not exist")
            .iter()
            .any(|l| l["fields"]["topic"] == "drill.no-such-retry");
        if named {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the missing topic was not named:\n{}",
            ingest.log_so_far()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let others = log_lines(&ingest.log_so_far(), "a configured topic does not exist").len();
    assert_eq!(others, 1, "only the missing topic is named");
    ingest.terminate();
}

/// Runs ingest on `broker` and `spool` with a steady load of `visitor`'s events, kills the
/// broker, lets the spool take events and SIGTERMs ingest (the broker stays down): the spool
/// then holds records a next start must drain. Returns the ids answered 200.
async fn spool_in_an_outage(
    broker: &mut OwnBroker,
    topics: &Topics,
    spool: &Arc<tempfile::TempDir>,
    visitor: &str,
) -> Vec<(String, Instant)> {
    let first = ingest_on(broker, topics, spool, &[]).await;
    let load = Steady::start(&first.url, visitor);
    load.wait_more(20, WAIT).await;
    kill_and_wait_spooling(broker, &first.url).await;
    load.wait_more(30, WAIT).await; // spooled
    first.terminate();
    let (exited_ok, log) = tokio::task::spawn_blocking(move || first.wait()).await.unwrap();
    assert!(exited_ok, "the SIGTERM during the outage:\n{log}");
    let (accepted, statuses) = load.finish().await;
    eprintln!("the process SIGTERMed in the outage: {statuses:?}");
    accepted
}

/// A replica restarted on a spool that holds records, with a configured topic missing (a DLQ
/// topic deleted meanwhile; here, one never created): it serves instead of exiting, names the
/// topic in `/readyz`, the log and `cdp_ingest_kafka_topic_missing`, drains its spool to the
/// topics that exist, and stops naming the topic once it is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_spool_and_a_topic_missing_serves_drains_and_names_the_topic() {
    let (mut broker, topics) = own_broker().await;
    let spool = Arc::new(tempfile::tempdir().unwrap());
    let accepted = spool_in_an_outage(&mut broker, &topics, &spool, "missing").await;
    broker.restart().await;

    let deleted = "drill.deleted-dlq";
    let without_dlq = Topics {
        dlq: deleted.into(),
        ..topics.clone()
    };
    let second = ingest_on(&broker, &without_dlq, &spool, &[]).await;
    let series = format!("cdp_ingest_kafka_topic_missing{{topic=\"{deleted}\"}}");
    assert_eq!(metric(&second.metrics_url, &series).await, 1.0);
    let (_, body) = wait_readyz(
        &second.url,
        "the spool drained",
        Duration::from_secs(30),
        |s, b| s == 200 && b["spool"]["records"] == 0 && b["kafka_state"] == "delivering",
    )
    .await;
    assert_eq!(body["kafka_missing_topics"], json!([deleted]), "{body}");
    let ids: Vec<String> = accepted.into_iter().map(|(id, _)| id).collect();
    let landed = assert_nothing_lost(&broker.address(), &topics, &ids, Duration::from_secs(60)).await;
    eprintln!(
        "{} accepted before the restart, {} duplicates",
        ids.len(),
        landed.duplicates()
    );

    kafka_producer::ensure_topics(broker.address(), &[(deleted, 1)])
        .await
        .unwrap();
    let (_, body) = wait_readyz(
        &second.url,
        "the topic no longer missing",
        Duration::from_secs(20),
        |s, b| s == 200 && b["kafka_missing_topics"] == json!([]),
    )
    .await;
    eprintln!("after the topic was created: {body}");
    assert_eq!(metric(&second.metrics_url, &series).await, 0.0);
    let back = log_lines(
        &second.log_so_far(),
        "a configured topic that was missing exists again",
    );
    assert_eq!(back.len(), 1, "{}", second.log_so_far());
    second.terminate();
}

/// The same with the ingest topic missing: Kafka answers, but nothing can take events. The
/// restart serves into the spool (no stall loop: at most one producer rebuild), names the
/// topic, and once the topic is created delivers everything, the previous process's records
/// first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_spool_and_the_ingest_topic_missing_spools_until_it_exists() {
    let (mut broker, topics) = own_broker().await;
    let spool = Arc::new(tempfile::tempdir().unwrap());
    let accepted = spool_in_an_outage(&mut broker, &topics, &spool, "no-ingest").await;
    broker.restart().await;

    let deleted = "drill.deleted-ingest";
    let without_ingest = Topics {
        ingest: deleted.into(),
        ..topics.clone()
    };
    let second = ingest_on(&broker, &without_ingest, &spool, &[]).await;
    let load = Steady::start(&second.url, "no-ingest-2");
    // Well past the ack window: a stall loop would rebuild the producer every few seconds.
    load.wait_more(600, Duration::from_secs(40)).await;
    let (status, body) = readyz(&client(Duration::from_secs(2)), &second.url)
        .await
        .unwrap();
    eprintln!("with the ingest topic missing: {body}");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kafka_missing_topics"], json!([deleted]), "{body}");
    assert_eq!(body["kafka_state"], "unreachable", "{body}");
    let rebuilds = metric(&second.metrics_url, "cdp_ingest_kafka_producer_rebuilds_total").await;
    assert!(rebuilds <= 1.0, "{rebuilds} rebuilds");

    kafka_producer::ensure_topics(broker.address(), &[(deleted, 3)])
        .await
        .unwrap();
    wait_readyz(
        &second.url,
        "delivering, the spool drained, no topic missing",
        Duration::from_secs(30),
        |s, b| {
            s == 200
                && b["kafka_state"] == "delivering"
                && b["spool"]["records"] == 0
                && b["kafka_missing_topics"] == json!([])
        },
    )
    .await;
    let (more, statuses) = load.finish().await;
    eprintln!("second process: {statuses:?}");
    // The first process delivered its first events to the old topic before the outage; the
    // rest, spooled, and all of the second's are on the new one.
    let first: Vec<String> = accepted.into_iter().map(|(id, _)| id).collect();
    let before = landed(&broker.address(), &topics, &first, Duration::from_secs(5)).await;
    assert!(
        before.counts.len() >= 20,
        "{} delivered before the outage",
        before.counts.len()
    );
    let mut ids = before.missing;
    ids.extend(more.into_iter().map(|(id, _)| id));
    let after = assert_nothing_lost(&broker.address(), &without_ingest, &ids, Duration::from_secs(60)).await;
    eprintln!(
        "{} accepted after the outage began, {} duplicates",
        ids.len(),
        after.duplicates()
    );
    second.terminate();
}
