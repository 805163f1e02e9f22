//! A tansu broker of the test's own, storing in SQLite, so that a test can kill the broker
//! process and start it again with its data, or freeze it (SIGSTOP) and thaw it (SIGCONT).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A tansu process on a fixed port of its own; killed when dropped.
pub struct OwnBroker {
    bin: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnBroker {
    /// Starts tansu from `CDP_TANSU_BIN` (which `cargo xtask test` sets) and waits until it
    /// accepts connections.
    pub async fn start() -> OwnBroker {
        let bin = std::env::var_os("CDP_TANSU_BIN").map(PathBuf::from).unwrap_or_else(|| {
            panic!("CDP_TANSU_BIN is not set: run the tests with `cargo xtask test`, which installs tansu and sets it")
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut broker = OwnBroker {
            bin,
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        broker.restart().await;
        broker
    }

    /// Its bootstrap address.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the broker process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the broker process (SIGSTOP): its connections stay open and take requests
    /// into their socket buffers, but nothing is answered: a hung broker, as a producer sees
    /// one. [`OwnBroker::resume`] thaws it; dropping or killing a paused broker is fine.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a broker frozen by [`OwnBroker::pause`] (SIGCONT): it answers what was queued.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the broker is running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("running kill {signal}: {e}"));
        assert!(status.success(), "kill {signal} {} failed: {status}", child.id());
    }

    /// Starts the broker process (again, after [`OwnBroker::kill`]) on the same port and data.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "the broker is running");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            // Relative to the working directory: tansu joins the path to it.
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(self.address()).await.is_err() {
            assert!(Instant::now() < deadline, "tansu did not start listening");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.kill();
    }
}
