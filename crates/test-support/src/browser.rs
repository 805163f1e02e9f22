//! Real JavaScript clients for tests: Chromium, an npm install, esbuild bundles, a page server.
//!
//! - [`chromium`]: Debian's `chromium`, installed with apt-get on first use;
//! - [`NodeTools::install`]: `npm ci` of a test's `package.json` + `package-lock.json` into the
//!   tools cache (outside the repo), keyed by a hash of the two files, so a version change
//!   installs afresh; [`NodeTools::bundle`] bundles an entry file for a page with esbuild,
//!   cached the same way; [`NodeTools::node`] runs a script that `require`s the packages;
//! - [`PageServer`]: serves a few in-memory files over HTTP on a port of its own (another origin
//!   than the server under test, so the browser applies CORS).
//!
//! Installs are idempotent and serialised by lock files in the cache, so tests in several
//! processes (nextest) can ask for them at once.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// Where downloaded tools are cached: `$CDP_TOOLS_DIR`, else `$XDG_CACHE_HOME/cdp-ingest` or
/// `~/.cache/cdp-ingest` (as `cargo xtask` does).
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CDP_TOOLS_DIR") {
        return PathBuf::from(dir);
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("neither CDP_TOOLS_DIR, XDG_CACHE_HOME nor HOME is set")
        .join("cdp-ingest")
}

/// Runs `f` holding an exclusive lock on `<tools dir>/<name>.lock` (released on return, or by
/// the OS if the process dies).
fn locked<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let dir = tools_dir();
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let path = dir.join(format!("{name}.lock"));
    let file = File::create(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("locking {}: {e}", path.display()));
    let result = f();
    drop(file);
    result
}

/// Runs a command to completion, panicking with its output when it fails.
fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Whether `program` is on the `PATH`.
pub(crate) fn found(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs Debian packages with apt-get (through sudo unless root), under the tools cache's
/// `apt.lock` (one install at a time across test processes); nothing when every package's
/// program is already there once the lock is held.
pub(crate) fn apt_install(packages: &[&str]) {
    locked("apt", || {
        if packages.iter().all(|p| found(p)) {
            return;
        }
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        let apt = |args: &[&str]| {
            let mut command = if root {
                Command::new("apt-get")
            } else {
                let mut c = Command::new("sudo");
                c.arg("apt-get");
                c
            };
            command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
            run(&mut command);
        };
        apt(&["update", "-q"]);
        let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
        install.extend_from_slice(packages);
        apt(&install);
    });
}

/// The Chromium the browser tests drive: `$CDP_CHROMIUM`, else Debian's `/usr/bin/chromium`,
/// installed with apt-get when missing.
pub fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CDP_CHROMIUM") {
        return PathBuf::from(path);
    }
    let path = PathBuf::from("/usr/bin/chromium");
    if !path.exists() {
        apt_install(&["chromium"]);
        assert!(
            path.exists(),
            "apt-get installed chromium but {} is missing",
            path.display()
        );
    }
    path
}

/// An `npm ci` of one `package.json` + `package-lock.json` in the tools cache.
#[derive(Debug, Clone)]
pub struct NodeTools {
    /// `<tools dir>/node-<hash>`: the copied package files, `node_modules/` and `bundles/`.
    pub dir: PathBuf,
}

impl NodeTools {
    /// Installs the packages of `package_dir` (its `package.json` and `package-lock.json`,
    /// exactly as locked, without install scripts: no browser download) into
    /// `<tools dir>/node-<hash of the two files>`, unless already there. Installs Debian's
    /// `nodejs` and `npm` first if `node` is missing.
    pub fn install(package_dir: &Path) -> NodeTools {
        let files = ["package.json", "package-lock.json"];
        let mut hash = Sha256::new();
        for name in files {
            let path = package_dir.join(name);
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            hash.update(name.as_bytes());
            hash.update((bytes.len() as u64).to_le_bytes());
            hash.update(&bytes);
        }
        let key = &hex::encode(hash.finalize())[..16];
        let tools = NodeTools {
            dir: tools_dir().join(format!("node-{key}")),
        };
        let marker = tools.dir.join(".installed");
        if marker.exists() {
            return tools;
        }
        if !found("node") || !found("npm") {
            apt_install(&["nodejs", "npm"]);
        }
        locked(&format!("node-{key}"), || {
            if marker.exists() {
                return;
            }
            // A half-done install (a killed test) is started over.
            let _ = std::fs::remove_dir_all(&tools.dir);
            std::fs::create_dir_all(&tools.dir).expect("creating the npm install directory");
            for name in files {
                std::fs::copy(package_dir.join(name), tools.dir.join(name)).expect("copying package files");
            }
            run(Command::new("npm")
                .args([
                    "ci",
                    "--ignore-scripts",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                ])
                .env("PUPPETEER_SKIP_DOWNLOAD", "1")
                .current_dir(&tools.dir));
            std::fs::write(&marker, key).expect("writing the install marker");
        });
        tools
    }

    /// The installed `node_modules` directory.
    pub fn node_modules(&self) -> PathBuf {
        self.dir.join("node_modules")
    }

    /// Bundles `entry` (which imports installed packages) for a browser page: one IIFE script,
    /// `process.env.NODE_ENV` set to `production`, dynamic imports inlined (nothing loaded
    /// later from elsewhere). Cached in `bundles/` by the entry's content; returns the file.
    pub fn bundle(&self, entry: &Path) -> PathBuf {
        let source = std::fs::read(entry).unwrap_or_else(|e| panic!("reading {}: {e}", entry.display()));
        let stem = entry
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("bundle")
            .to_string();
        let key = &hex::encode(Sha256::digest(&source))[..16];
        let out = self.dir.join("bundles").join(format!("{stem}-{key}.js"));
        if out.exists() {
            return out;
        }
        let lock = format!("{}-bundles", self.dir.file_name().unwrap().to_string_lossy());
        locked(&lock, || {
            if out.exists() {
                return;
            }
            let partial = out.with_extension("js.partial");
            run(Command::new(self.node_modules().join(".bin").join("esbuild"))
                .arg(entry)
                .args([
                    "--bundle",
                    "--format=iife",
                    "--platform=browser",
                    "--target=es2020",
                    "--define:process.env.NODE_ENV=\"production\"",
                    "--log-level=warning",
                ])
                .arg(format!("--outfile={}", partial.display()))
                .env("NODE_PATH", self.node_modules()));
            std::fs::rename(&partial, &out).expect("moving the bundle into place");
        });
        out
    }

    /// `node <script>`, with the installed packages on `NODE_PATH` (for `require`).
    pub fn node(&self, script: &Path) -> Command {
        let mut command = Command::new("node");
        command.arg(script).env("NODE_PATH", self.node_modules());
        command
    }
}

/// A tiny HTTP/1.1 server of in-memory files on `127.0.0.1`, a thread per connection; stops
/// when dropped. Unknown paths get 404.
#[derive(Debug)]
pub struct PageServer {
    url: String,
    stop: Arc<AtomicBool>,
}

impl PageServer {
    /// Serves `files`: path (query ignored) → (content type, body).
    pub fn start(files: HashMap<String, (String, Vec<u8>)>) -> PageServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the page server");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let files = Arc::new(files);
        let stopping = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let files = files.clone();
                std::thread::spawn(move || serve(stream, &files));
            }
        });
        PageServer { url, stop }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

/// Answers the requests of one connection (keep-alive) until the client closes it.
fn serve(stream: TcpStream, files: &HashMap<String, (String, Vec<u8>)>) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        // Skip the headers; requests for files have no body.
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
        }
        let target = request_line.split_whitespace().nth(1).unwrap_or("/");
        let path = target.split('?').next().unwrap_or("/");
        let (status, content_type, body) = match files.get(path) {
            Some((content_type, body)) => ("200 OK", content_type.as_str(), body.as_slice()),
            None => ("404 Not Found", "text/plain", &b"not found"[..]),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\ncache-control: no-store\r\n\r\n",
            body.len()
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(body).is_err() {
            return;
        }
    }
}
