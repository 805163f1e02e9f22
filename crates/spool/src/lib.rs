//! The local on-disk spool: where `ingest` keeps records that Kafka could not take, until the
//! cluster is back.
//!
//! The spool is a directory of append-only segment files, `<sequence>.spool`, written in order.
//! Each record is one frame:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | body length, little-endian |
//! | 4 | CRC-32 of the body, little-endian |
//! | n | body: message id, key, headers, value (each length-prefixed), then the topic label if not empty (length-prefixed) |
//!
//! Appends go straight to the file (so a SIGKILL loses nothing that was appended: the page
//! cache keeps it); a background thread calls `fdatasync` in groups, every `fsync_interval`
//! (so a power loss loses at most that much). The drainer takes whole segments, oldest first:
//! [`Spool::take_segment`] seals the active segment when no sealed one is left, and
//! [`Spool::remove`] deletes a segment once every record of it is delivered. A crash between
//! delivery and removal re-sends the segment: duplicates, never a loss.
//!
//! On [`Spool::open`], existing segments are scanned: a torn last frame (a crash mid-write) or
//! a frame whose checksum fails is cut off with an error log, and the rest is kept for draining.
//!
//! The spool does no Kafka I/O; a record's topic is a label its writer chooses and reads back
//! ([`Record::topic`]), nothing more. A frame without one (every frame written before the
//! label existed) reads back with an empty label.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// Everything that can go wrong with the spool.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spool holds `cap` bytes already: the caller should shed load (HTTP 503).
    #[error("the local spool is full ({cap} bytes)")]
    Full {
        /// The configured cap, in bytes.
        cap: u64,
    },
    /// A record larger than a segment can hold.
    #[error("a record of {0} bytes does not fit in a spool segment")]
    TooLarge(usize),
    /// Another process holds the spool directory.
    #[error(
        "the spool directory {0} is in use by another process: give each ingest process its own --spool-dir"
    )]
    Locked(PathBuf),
    /// A file system error.
    #[error("spool I/O on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// One spooled record: an ingest record as it would go to Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The event's `message_id`, for logs.
    pub message_id: String,
    /// The Kafka key.
    pub key: Vec<u8>,
    /// The Kafka headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The Kafka value.
    pub value: Vec<u8>,
    /// Where the record is bound, as its writer names it; empty: the writer's default
    /// (`kafka-producer`: the ingest topic; `"dlq"`: the DLQ).
    pub topic: String,
}

/// How to open a spool.
#[derive(Debug, Clone)]
pub struct Options {
    /// Most bytes on disk; appends beyond it fail with [`Error::Full`].
    pub max_bytes: u64,
    /// Size at which the active segment is sealed and a new one started.
    pub segment_bytes: u64,
    /// How often appended records are synced to disk.
    pub fsync_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_bytes: 1 << 30,
            segment_bytes: 8 << 20,
            fsync_interval: Duration::from_millis(50),
        }
    }
}

/// A sealed segment, taken by the drainer: read it, deliver it, then [`Spool::remove`] it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    sequence: u64,
    path: PathBuf,
    bytes: u64,
    records: u64,
}

impl Segment {
    /// The segment file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records in the segment.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Reads the records of the segment, in append order. Frames were checked when the spool
    /// was opened or written by this process; if one fails now (a disk error), the records
    /// before it are returned, fewer than [`Segment::records`], and a copy of the file is kept
    /// as `.spool.corrupt`.
    pub fn read(&self) -> Result<Vec<Record>, Error> {
        let data = std::fs::read(&self.path).map_err(|source| self.io(source))?;
        let data = &data[..data.len().min(self.bytes as usize)];
        let (records, valid) = decode_all(data);
        if valid != data.len() || (records.len() as u64) < self.records {
            let copy = self.path.with_extension("spool.corrupt");
            if let Err(error) = std::fs::copy(&self.path, &copy) {
                tracing::error!(file = %copy.display(), %error, "cannot keep a copy of a corrupt spool segment");
            }
            tracing::error!(file = %self.path.display(), at_byte = valid, "corrupt frame in a spool segment");
        }
        Ok(records)
    }

    fn io(&self, source: io::Error) -> Error {
        Error::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// The spool of one `ingest` process. Share it as `Arc<Spool>`; every method takes `&self`.
pub struct Spool {
    dir: PathBuf,
    /// Held (with an exclusive lock) for the spool's lifetime: one process per directory;
    /// replaced with the directory ([`Spool::check_dir`]).
    lock: Mutex<File>,
    /// The directory's identity (device, inode) when it was opened or last re-created.
    identity: Mutex<Option<(u64, u64)>>,
    options: Options,
    state: Mutex<State>,
    bytes: AtomicU64,
    records: AtomicU64,
    /// Records appended since the last sync.
    dirty: AtomicBool,
    /// A segment file was created since the last sync.
    new_file: AtomicBool,
    /// Segments [`Spool::open`] could not read and moved aside.
    set_aside_at_open: Vec<SetAside>,
}

/// A segment that could not be read, moved out of the spool ([`Spool::set_aside`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    /// Where the file is now: `<sequence>.spool.unreadable` beside the others (the spool never
    /// reads it again; rename it back to `.spool` while no process holds the directory to
    /// drain it at the next start), or its old path if it could not be moved (a vanished file).
    pub path: PathBuf,
    /// Why it could not be read.
    pub error: String,
}

/// Creates `dir` if needed and takes its lock file (exclusively: one process per directory).
/// A holder that is going away (a process exiting, or in this process the fsync thread
/// finishing its last sync of a dropped spool) releases the lock within moments: it is waited
/// for up to `wait` before the directory counts as taken ([`Error::Locked`]).
fn take_dir(dir: &Path, wait: Duration) -> Result<File, Error> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let lock_path = dir.join("lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    let deadline = std::time::Instant::now() + wait;
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(lock),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Err(Error::Locked(dir.to_path_buf())),
            Err(std::fs::TryLockError::Error(source)) => return Err(io(&lock_path)(source)),
        }
    }
}

/// The directory's (device, inode), `None` when it does not exist.
fn dir_identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}

/// Renames an unreadable segment to `<name>.unreadable`; the new path, or `None` when that
/// failed too (the file vanished, say).
fn move_aside(path: &Path) -> Option<PathBuf> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".unreadable");
    let aside = PathBuf::from(aside);
    std::fs::rename(path, &aside).ok().map(|()| aside)
}

struct State {
    /// The segment appends go to: sequence, file, bytes, records.
    active: Option<(u64, File, u64, u64)>,
    sealed: VecDeque<Segment>,
    next_sequence: u64,
}

impl Spool {
    /// Opens (creating it if needed) the spool in `dir`, recovers the segments a previous
    /// process left, and starts the group-fsync thread.
    pub fn open(dir: impl Into<PathBuf>, options: Options) -> Result<Arc<Spool>, Error> {
        let dir = dir.into();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        let lock = take_dir(&dir, LOCK_WAIT)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let path = entry.map_err(io(&dir))?.path();
            let sequence = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".spool"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(sequence) = sequence {
                found.push((sequence, path));
            }
        }
        found.sort();
        let mut sealed = VecDeque::new();
        let mut set_aside = Vec::new();
        for (sequence, path) in found {
            let data = match std::fs::read(&path) {
                Ok(data) => data,
                Err(source) => {
                    // One unreadable segment (permissions, an I/O error, a directory in its
                    // place) must not keep the rest from draining, nor the process from
                    // starting: it is moved aside for an operator, its records unknown.
                    let error = io(&path)(source);
                    let aside = move_aside(&path);
                    tracing::error!(%error, moved_to = ?aside, "unreadable spool segment set aside at start; its records are not drained");
                    set_aside.push(SetAside {
                        path: aside.unwrap_or(path),
                        error: error.to_string(),
                    });
                    continue;
                }
            };
            let (records, valid) = decode_all(&data);
            if valid != data.len() {
                // A torn last frame (a crash mid-write) is expected; anything else is kept in a
                // copy for inspection before it is cut off.
                let copy = path.with_extension("spool.corrupt");
                std::fs::copy(&path, &copy).map_err(io(&copy))?;
                tracing::error!(
                    file = %path.display(),
                    copy = %copy.display(),
                    kept = records.len(),
                    cut_bytes = data.len() - valid,
                    "spool segment ends in a torn or corrupt frame: cutting it off"
                );
                let file = OpenOptions::new().write(true).open(&path).map_err(io(&path))?;
                file.set_len(valid as u64).map_err(io(&path))?;
                file.sync_all().map_err(io(&path))?;
            }
            if records.is_empty() {
                std::fs::remove_file(&path).map_err(io(&path))?;
                continue;
            }
            sealed.push_back(Segment {
                sequence,
                path,
                bytes: valid as u64,
                records: records.len() as u64,
            });
        }
        let next_sequence = sealed.back().map_or(0, |s| s.sequence + 1);
        let identity = dir_identity(&dir);
        let spool = Arc::new(Spool {
            bytes: AtomicU64::new(sealed.iter().map(|s| s.bytes).sum()),
            records: AtomicU64::new(sealed.iter().map(|s| s.records).sum()),
            dir,
            identity: Mutex::new(identity),
            lock: Mutex::new(lock),
            options,
            state: Mutex::new(State {
                active: None,
                sealed,
                next_sequence,
            }),
            dirty: AtomicBool::new(false),
            new_file: AtomicBool::new(false),
            set_aside_at_open: set_aside,
        });
        let weak = Arc::downgrade(&spool);
        let interval = spool.options.fsync_interval;
        std::thread::Builder::new()
            .name("spool-fsync".into())
            .spawn(move || fsync_loop(weak, interval))
            .map_err(io(&spool.dir))?;
        Ok(spool)
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The configured cap, in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.options.max_bytes
    }

    /// Records waiting to be drained.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// True when no record waits.
    pub fn is_empty(&self) -> bool {
        self.records() == 0
    }

    /// Appends a record. It survives a crash of the process at once, and a power loss after the
    /// next group fsync. Fails with [`Error::Full`] above the cap.
    pub fn append(&self, record: &Record) -> Result<(), Error> {
        let frame = encode(record);
        let len = frame.len() as u64;
        if len > self.options.segment_bytes.max(1 << 20) {
            return Err(Error::TooLarge(frame.len()));
        }
        let mut sealed = None;
        let result = self.append_locked(&frame, &mut sealed);
        // The fsync of a full segment happens outside the lock: appends go on meanwhile.
        sync_sealed(sealed);
        result
    }

    fn append_locked(&self, frame: &[u8], sealed: &mut Option<(PathBuf, File)>) -> Result<(), Error> {
        let len = frame.len() as u64;
        let mut state = self.lock();
        if self.bytes() + len > self.options.max_bytes {
            return Err(Error::Full {
                cap: self.options.max_bytes,
            });
        }
        let roll = match &state.active {
            Some((_, _, bytes, _)) => bytes + len > self.options.segment_bytes,
            None => true,
        };
        if roll {
            *sealed = self.seal(&mut state);
            let sequence = state.next_sequence;
            let path = self.segment_path(sequence);
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })?;
            state.next_sequence += 1;
            state.active = Some((sequence, file, 0, 0));
            self.new_file.store(true, Ordering::Release);
        }
        let Some((sequence, file, bytes, records)) = state.active.as_mut() else {
            unreachable!("a segment was just opened");
        };
        if let Err(source) = file.write_all(frame) {
            // Cut the partial frame (the next open would too) and seal what the segment holds,
            // so its records still drain; the next append starts a fresh segment.
            let path = self.segment_path(*sequence);
            let _ = file.set_len(*bytes);
            let other = self.seal(&mut state);
            drop(state);
            sync_sealed(other);
            return Err(Error::Io { path, source });
        }
        *bytes += len;
        *records += 1;
        self.bytes.fetch_add(len, Ordering::Relaxed);
        self.records.fetch_add(1, Ordering::Relaxed);
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether an append could be written now, without appending: the spool's file system is
    /// mounted read-only, or has less free space than one segment (`segment_bytes`, at least
    /// 1 MiB), is an [`Error::Io`] naming the directory (`EROFS`, `ENOSPC`). With `probe`, a
    /// 4 KiB file is also written to the directory and removed, which finds I/O errors and
    /// write permissions that `statvfs(2)` does not show. Never touches the segments.
    pub fn check_writable(&self, probe: bool) -> Result<(), Error> {
        let io = |source: io::Error| Error::Io {
            path: self.dir.clone(),
            source,
        };
        let stat = rustix::fs::statvfs(&self.dir).map_err(|e| io(e.into()))?;
        if stat.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
            return Err(io(io::Error::from_raw_os_error(
                rustix::io::Errno::ROFS.raw_os_error(),
            )));
        }
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        if free < self.options.segment_bytes.max(1 << 20) {
            return Err(io(io::Error::from_raw_os_error(
                rustix::io::Errno::NOSPC.raw_os_error(),
            )));
        }
        if probe {
            let path = self.dir.join(".write-probe");
            let written =
                File::create(&path).and_then(|mut f| f.write_all(&[0; 4096]).and_then(|()| f.sync_data()));
            let _ = std::fs::remove_file(&path);
            written.map_err(|source| Error::Io { path, source })?;
        }
        Ok(())
    }

    /// Syncs appended records to disk now (the group fsync does it every interval). The sync
    /// itself runs outside the lock.
    pub fn sync(&self) -> Result<(), Error> {
        if self.new_file.swap(false, Ordering::AcqRel) {
            // New segment files must survive a power loss too: sync the directory entry.
            if let Err(source) = File::open(&self.dir).and_then(|dir| dir.sync_all()) {
                self.new_file.store(true, Ordering::Release);
                return Err(Error::Io {
                    path: self.dir.clone(),
                    source,
                });
            }
        }
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let active = {
            let state = self.lock();
            state
                .active
                .as_ref()
                .map(|(sequence, file, ..)| (self.segment_path(*sequence), file.try_clone()))
        };
        if let Some((path, file)) = active {
            if let Err(source) = file.and_then(|f| f.sync_data()) {
                // Tried again at the next interval.
                self.dirty.store(true, Ordering::Release);
                return Err(Error::Io { path, source });
            }
        }
        Ok(())
    }

    /// Every segment, oldest first, sealing the active one: all the spool holds now. Like
    /// [`Spool::take_segment`], the segments stay on disk until [`Spool::remove`].
    pub fn take_all(&self) -> Vec<Segment> {
        let (segments, sealed) = {
            let mut state = self.lock();
            let sealed = self.seal(&mut state);
            (state.sealed.iter().cloned().collect(), sealed)
        };
        sync_sealed(sealed);
        segments
    }

    /// The oldest segment to drain, sealing the active one when no sealed segment is left;
    /// `None` when the spool is empty. The segment stays on disk (and is returned again) until
    /// [`Spool::remove`].
    pub fn take_segment(&self) -> Result<Option<Segment>, Error> {
        let (segment, sealed) = {
            let mut state = self.lock();
            let sealed = if state.sealed.is_empty() {
                self.seal(&mut state)
            } else {
                None
            };
            (state.sealed.front().cloned(), sealed)
        };
        sync_sealed(sealed);
        Ok(segment)
    }

    /// Checks that the spool directory is still the one opened: not deleted, not replaced by
    /// another (a volume remounted, an operator's `rm -rf`). If it is gone or replaced, what it
    /// held is gone with it: the spool starts afresh in a re-created directory (a new lock, a
    /// new segment at the next append) and returns the records that were in it, for the caller
    /// to count as lost. `Ok(None)` when the directory is the one opened. Cheap (one `stat`):
    /// call it before each batch of appends.
    pub fn check_dir(&self) -> Result<Option<u64>, Error> {
        let now = dir_identity(&self.dir);
        let mut identity = self.identity.lock().unwrap_or_else(|e| e.into_inner());
        if now.is_some() && now == *identity {
            return Ok(None);
        }
        // Whatever happens next, no append goes to the old directory's unlinked file.
        self.lock().active = None;
        let lock = take_dir(&self.dir, Duration::ZERO)?;
        *self.lock.lock().unwrap_or_else(|e| e.into_inner()) = lock;
        *identity = dir_identity(&self.dir);
        let mut state = self.lock();
        state.active = None;
        state.sealed.clear();
        let lost = self.records.swap(0, Ordering::Relaxed);
        self.bytes.store(0, Ordering::Relaxed);
        self.new_file.store(true, Ordering::Release);
        tracing::error!(dir = %self.dir.display(), lost, "the spool directory was deleted or replaced: its records are gone; spooling on in a new one");
        Ok(Some(lost))
    }

    /// The segments [`Spool::open`] found unreadable and moved aside (their records unknown).
    pub fn set_aside_at_open(&self) -> &[SetAside] {
        &self.set_aside_at_open
    }

    /// Takes a segment that cannot be read out of the spool (its file moved to
    /// `.spool.unreadable`, see [`SetAside`]), so that the segments after it drain; its records
    /// leave the spool's accounting, for the caller to count as lost. `error`: why it could
    /// not be read.
    ///
    /// `None` when the segment is no longer in the spool (its directory was replaced,
    /// [`Spool::check_dir`], which counted its records already).
    pub fn set_aside(&self, segment: &Segment, error: &Error) -> Option<SetAside> {
        let mut state = self.lock();
        let at = state.sealed.iter().position(|s| s == segment)?;
        state.sealed.remove(at);
        self.bytes.fetch_sub(segment.bytes, Ordering::Relaxed);
        self.records.fetch_sub(segment.records, Ordering::Relaxed);
        drop(state);
        let aside = move_aside(&segment.path);
        tracing::error!(%error, file = %segment.path.display(), moved_to = ?aside, records = segment.records, "unreadable spool segment set aside");
        Some(SetAside {
            path: aside.unwrap_or_else(|| segment.path.clone()),
            error: error.to_string(),
        })
    }

    /// Deletes a drained segment. It leaves the spool's accounting even when the file cannot
    /// be deleted (the error says so): its records were delivered, and a file left behind is
    /// only drained again, as duplicates, by the next process.
    pub fn remove(&self, segment: &Segment) -> Result<(), Error> {
        let mut state = self.lock();
        let Some(at) = state.sealed.iter().position(|s| s == segment) else {
            return Ok(());
        };
        state.sealed.remove(at);
        self.bytes.fetch_sub(segment.bytes, Ordering::Relaxed);
        self.records.fetch_sub(segment.records, Ordering::Relaxed);
        drop(state);
        std::fs::remove_file(&segment.path).map_err(|source| Error::Io {
            path: segment.path.clone(),
            source,
        })
    }

    /// Seals the active segment if it holds records (removes it if it is empty). Returns its
    /// file, for the caller to sync once the lock is released.
    fn seal(&self, state: &mut MutexGuard<'_, State>) -> Option<(PathBuf, File)> {
        let (sequence, file, bytes, records) = state.active.take()?;
        let path = self.segment_path(sequence);
        if records == 0 {
            let _ = std::fs::remove_file(&path);
            return None;
        }
        state.sealed.push_back(Segment {
            sequence,
            path: path.clone(),
            bytes,
            records,
        });
        Some((path, file))
    }

    fn segment_path(&self, sequence: u64) -> PathBuf {
        self.dir.join(format!("{sequence:020}.spool"))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state consistent enough to go on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Syncs a sealed segment's file; a failure is logged (the records stay readable from the page
/// cache, and drain as usual unless the machine loses power).
fn sync_sealed(sealed: Option<(PathBuf, File)>) {
    if let Some((path, file)) = sealed {
        if let Err(error) = file.sync_data() {
            tracing::error!(file = %path.display(), %error, "spool segment fsync failed");
        }
    }
}

/// How long `open` waits for a spool directory's lock to be released.
const LOCK_WAIT: Duration = Duration::from_secs(2);

fn fsync_loop(spool: Weak<Spool>, interval: Duration) {
    loop {
        std::thread::sleep(interval);
        let Some(spool) = spool.upgrade() else { return };
        if let Err(error) = spool.sync() {
            tracing::error!(%error, "spool fsync failed");
        }
    }
}

const HEADER: usize = 8;

/// The frame of a record: length, CRC-32, body.
fn encode(record: &Record) -> Vec<u8> {
    let mut body = Vec::with_capacity(record.message_id.len() + record.key.len() + record.value.len() + 64);
    put(&mut body, record.message_id.as_bytes());
    put(&mut body, &record.key);
    body.extend_from_slice(&(record.headers.len() as u32).to_le_bytes());
    for (name, value) in &record.headers {
        put(&mut body, name.as_bytes());
        put(&mut body, value);
    }
    put(&mut body, &record.value);
    if !record.topic.is_empty() {
        put(&mut body, record.topic.as_bytes());
    }
    let mut frame = Vec::with_capacity(HEADER + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    frame.extend_from_slice(&body);
    frame
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Decodes frames from the start of `data`; returns the records and the length of the valid
/// prefix (shorter than `data` after a torn or corrupt frame).
fn decode_all(data: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some((record, len)) = decode(&data[at..]) {
        records.push(record);
        at += len;
    }
    (records, at)
}

fn decode(data: &[u8]) -> Option<(Record, usize)> {
    let mut header = Cursor(data);
    let len = header.u32()? as usize;
    let crc = header.u32()?;
    let body = data.get(HEADER..HEADER.checked_add(len)?)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let mut body = Cursor(body);
    let message_id = String::from_utf8(body.bytes()?.to_vec()).ok()?;
    let key = body.bytes()?.to_vec();
    let count = body.u32()?;
    let mut headers = Vec::new();
    for _ in 0..count {
        let name = String::from_utf8(body.bytes()?.to_vec()).ok()?;
        headers.push((name, body.bytes()?.to_vec()));
    }
    let value = body.bytes()?.to_vec();
    let topic = match body.0.is_empty() {
        true => String::new(),
        false => String::from_utf8(body.bytes()?.to_vec()).ok()?,
    };
    let record = Record {
        message_id,
        key,
        headers,
        value,
        topic,
    };
    body.0.is_empty().then_some((record, HEADER + len))
}

/// Reads length-prefixed fields off the front of a slice.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn u32(&mut self) -> Option<u32> {
        let bytes = self.0.get(..4)?;
        self.0 = &self.0[4..];
        Some(u32::from_le_bytes(bytes.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        let bytes = self.0.get(..n)?;
        self.0 = &self.0[n..];
        Some(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_and_any_cut_or_flip_is_refused() {
        let record = Record {
            message_id: "m-1".into(),
            key: b"visitor".to_vec(),
            headers: vec![
                ("workspace_id".into(), b"ws".to_vec()),
                ("type".into(), b"track".to_vec()),
            ],
            value: br#"{"event":"e"}"#.to_vec(),
            topic: String::new(),
        };
        let labelled = Record {
            topic: "dlq".into(),
            ..record.clone()
        };
        for record in [record, labelled] {
            let frame = encode(&record);
            assert_eq!(decode(&frame), Some((record, frame.len())));
            for cut in 0..frame.len() {
                assert_eq!(decode(&frame[..cut]), None, "cut at {cut}");
            }
            for at in 0..frame.len() {
                let mut flipped = frame.clone();
                flipped[at] ^= 0x40;
                assert_eq!(decode(&flipped), None, "flip at {at}");
            }
        }
    }

    /// A frame written before records had a topic label (this very frame, from the format's
    /// first version) reads back with an empty one, and is written back the same bytes.
    #[test]
    fn a_frame_without_a_topic_reads_as_the_default() {
        let mut body = Vec::new();
        for field in [&b"m-1"[..], b"k"] {
            put(&mut body, field);
        }
        body.extend_from_slice(&0u32.to_le_bytes());
        put(&mut body, b"{}");
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        frame.extend_from_slice(&body);
        let (record, len) = decode(&frame).unwrap();
        assert_eq!(len, frame.len());
        assert_eq!(record.topic, "");
        assert_eq!(encode(&record), frame);
    }
}
