//! A tansu broker that requires SASL SCRAM-SHA-512, reached over plaintext (SASL_PLAINTEXT) or
//! through a TLS-terminating proxy (SASL_SSL), with certificates made for the test.
//!
//! tansu 0.6.0 keeps users in its storage and authenticates only when started with
//! `--authentication`, so: start it on SQLite without authentication, create the user, stop it,
//! start it again on the same file with `--authentication`. It terminates no TLS itself: Debian's
//! `socat` (`OPENSSL-LISTEN`) does, in front of it, with the broker advertising the proxy's port.
//! `socat` and `openssl` are installed with apt-get on first use.
//!
//! [`SecureBroker::change_password`] changes the user's password on a running one the same way
//! (stop, create the user again on the same file from an unauthenticated broker, restart with
//! `--authentication` on the same port): credentials rotated away from a running client.
//!
//! The checks every binary passes against one: [`assert_refuses_a_wrong_password_and_an_untrusted_ca`]
//! and [`assert_checks_kafka_options`].

use std::fs::File;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kafka_producer::{KafkaSettings, SaslMechanism, Secret, SecurityProtocol};

use crate::browser::{apt_install, found};
use crate::{run_until_exit, without_inherited_security, Exited};

/// The SCRAM-SHA-512 user every [`SecureBroker`] has.
pub const USER: &str = "cdp-test";
/// Its password.
pub const PASSWORD: &str = "cdp-test-password";
/// The password in [`SecureBroker::wrong_password_file`], which no output may show.
const WRONG_PASSWORD: &str = "not-the-password";

/// Whether clients reach the broker through TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// SASL_PLAINTEXT.
    Off,
    /// SASL_SSL, through the proxy.
    On,
}

/// A tansu requiring SCRAM-SHA-512 (and its TLS proxy); both killed when dropped.
pub struct SecureBroker {
    dir: tempfile::TempDir,
    /// The tansu binary.
    bin: PathBuf,
    tls: Tls,
    /// The port clients use: the broker's, or the proxy's.
    port: u16,
    /// The port the broker listens on (the proxy's target, with TLS).
    broker_port: u16,
    broker: Child,
    proxy: Option<Child>,
}

impl SecureBroker {
    /// Starts one, with user [`USER`] / [`PASSWORD`], and waits until that user can read its
    /// metadata.
    pub async fn start(tls: Tls) -> SecureBroker {
        let broker = tokio::task::spawn_blocking(move || SecureBroker::start_blocking(tls))
            .await
            .expect("secure broker thread");
        let settings = broker.settings();
        tokio::task::spawn_blocking(move || kafka_producer::fetch_topics(settings, Duration::from_secs(20)))
            .await
            .expect("ping thread")
            .unwrap_or_else(|e| panic!("the secure broker does not answer its user: {e}"));
        broker
    }

    fn start_blocking(tls: Tls) -> SecureBroker {
        let bin = std::env::var_os("CDP_TANSU_BIN").map(PathBuf::from).unwrap_or_else(|| {
            panic!("CDP_TANSU_BIN is not set: run the tests with `cargo xtask test`, which installs tansu and sets it")
        });
        if tls == Tls::On && !(found("socat") && found("openssl")) {
            apt_install(&["socat", "openssl"]);
        }
        let dir = tempfile::tempdir().unwrap();
        let broker_port = free_port();
        let plain = format!("tcp://127.0.0.1:{broker_port}");
        // Without authentication, to create the user.
        create_user(&bin, dir.path(), broker_port, PASSWORD);

        std::fs::write(dir.path().join("password"), format!("{PASSWORD}\n")).unwrap();
        std::fs::write(dir.path().join("wrong-password"), format!("{WRONG_PASSWORD}\n")).unwrap();
        let (port, proxy) = match tls {
            Tls::Off => (broker_port, None),
            Tls::On => {
                make_certificates(dir.path());
                let proxy_port = free_port();
                let log = File::create(dir.path().join("socat.log")).unwrap();
                let proxy = Command::new("socat")
                    .arg(format!(
                        "OPENSSL-LISTEN:{proxy_port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
                        dir.path().join("server.pem").display(),
                        dir.path().join("server.key").display()
                    ))
                    .arg(format!("TCP:127.0.0.1:{broker_port}"))
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .expect("starting socat");
                (proxy_port, Some(proxy))
            }
        };
        let advertised = format!("tcp://127.0.0.1:{port}");
        let broker = tansu(&bin, dir.path(), &plain, &advertised, true);
        let mut secure = SecureBroker {
            dir,
            bin,
            tls,
            port,
            broker_port,
            broker,
            proxy,
        };
        let dir = secure.dir.path().to_path_buf();
        wait_listening(broker_port, &mut secure.broker, &dir);
        if let Some(proxy) = &mut secure.proxy {
            wait_listening(port, proxy, &dir);
        }
        secure
    }

    /// Changes [`USER`]'s password to `password`, as an operator rotating credentials does:
    /// stops the broker (its clients lose their connections), sets the password from an
    /// unauthenticated broker on another port and the same storage (so the clients' port stays
    /// closed meanwhile), restarts the broker with `--authentication` on its port, and waits
    /// until [`USER`] can read its metadata with the new password. The TLS proxy, if any, keeps
    /// running.
    ///
    /// [`SecureBroker::password_file`] then holds `password`, as a rotated Secret's mounted file
    /// does; a process that read the old one at start keeps it and is refused at its next
    /// connection.
    pub async fn change_password(&mut self, password: &str) {
        let _ = self.broker.kill();
        let _ = self.broker.wait();
        let (bin, dir, broker_port, advertised) = (
            self.bin.clone(),
            self.dir.path().to_path_buf(),
            self.broker_port,
            format!("tcp://127.0.0.1:{}", self.port),
        );
        let password_ = password.to_string();
        self.broker = tokio::task::spawn_blocking(move || {
            create_user(&bin, &dir, free_port(), &password_);
            let plain = format!("tcp://127.0.0.1:{broker_port}");
            let mut broker = tansu(&bin, &dir, &plain, &advertised, true);
            wait_listening(broker_port, &mut broker, &dir);
            broker
        })
        .await
        .expect("secure broker thread");
        std::fs::write(self.password_file(), format!("{password}\n")).unwrap();
        let settings = self.settings();
        tokio::task::spawn_blocking(move || kafka_producer::fetch_topics(settings, Duration::from_secs(20)))
            .await
            .expect("ping thread")
            .unwrap_or_else(|e| panic!("the restarted secure broker does not take the new password: {e}"));
    }

    /// The bootstrap address clients use (the proxy's, with TLS).
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `sasl_ssl` or `sasl_plaintext`.
    pub fn protocol(&self) -> SecurityProtocol {
        match self.tls {
            Tls::On => SecurityProtocol::SaslSsl,
            Tls::Off => SecurityProtocol::SaslPlaintext,
        }
    }

    /// A file with [`PASSWORD`] and a trailing newline, as a mounted Secret has.
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("password")
    }

    /// A file with another password.
    pub fn wrong_password_file(&self) -> PathBuf {
        self.dir.path().join("wrong-password")
    }

    /// The CA that signed the proxy's certificate (with TLS).
    pub fn ca(&self) -> Option<PathBuf> {
        (self.tls == Tls::On).then(|| self.dir.path().join("ca.pem"))
    }

    /// A CA that did not sign it (with TLS): clients that trust only this one must refuse it.
    pub fn untrusted_ca(&self) -> Option<PathBuf> {
        (self.tls == Tls::On).then(|| self.dir.path().join("other-ca.pem"))
    }

    /// Client settings for [`USER`].
    pub fn settings(&self) -> KafkaSettings {
        KafkaSettings {
            brokers: self.address(),
            protocol: self.protocol(),
            sasl_mechanism: Some(SaslMechanism::ScramSha512),
            sasl_username: Some(USER.into()),
            sasl_password: Some(Secret::File(self.password_file())),
            ssl_ca_location: self.ca(),
            ..KafkaSettings::default()
        }
    }

    /// The flags a binary connects with as [`USER`], with `password_file` and `ca` (the
    /// right ones: [`SecureBroker::args`]).
    pub fn args_with(&self, password_file: &Path, ca: Option<&Path>) -> Vec<String> {
        let mut args = vec![
            "--brokers".to_string(),
            self.address(),
            "--kafka-security-protocol".into(),
            self.protocol().as_str().into(),
            "--kafka-sasl-mechanism".into(),
            "SCRAM-SHA-512".into(),
            "--kafka-sasl-username".into(),
            USER.into(),
            "--kafka-sasl-password-file".into(),
            password_file.display().to_string(),
        ];
        if let Some(ca) = ca {
            args.extend(["--kafka-ssl-ca-location".into(), ca.display().to_string()]);
        }
        args
    }

    /// The flags a binary connects with as [`USER`].
    pub fn args(&self) -> Vec<String> {
        self.args_with(&self.password_file(), self.ca().as_deref())
    }

    /// The `CDP_KAFKA_*` variables a binary connects with as [`USER`], with `password_file` and
    /// `ca`: [`SecureBroker::args_with`] as variables.
    pub fn env_with(&self, password_file: &Path, ca: Option<&Path>) -> Vec<(String, String)> {
        let mut env = vec![
            ("CDP_KAFKA_BROKERS".to_string(), self.address()),
            (
                "CDP_KAFKA_SECURITY_PROTOCOL".into(),
                self.protocol().as_str().into(),
            ),
            ("CDP_KAFKA_SASL_MECHANISM".into(), "SCRAM-SHA-512".into()),
            ("CDP_KAFKA_SASL_USERNAME".into(), USER.into()),
            (
                "CDP_KAFKA_SASL_PASSWORD_FILE".into(),
                password_file.display().to_string(),
            ),
        ];
        if let Some(ca) = ca {
            env.push(("CDP_KAFKA_SSL_CA_LOCATION".into(), ca.display().to_string()));
        }
        env
    }
}

impl Drop for SecureBroker {
    fn drop(&mut self) {
        for child in std::iter::once(&mut self.broker).chain(self.proxy.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Environment variables a spawned binary must not inherit for a [`SecureBroker`] test: the
/// `CDP_KAFKA_*` security settings of the suite's own cluster.
pub const INHERITED_SECURITY_VARIABLES: [&str; 13] = [
    "CDP_KAFKA_SECURITY_PROTOCOL",
    "CDP_KAFKA_SASL_MECHANISM",
    "CDP_KAFKA_SASL_USERNAME",
    "CDP_KAFKA_SASL_PASSWORD_FILE",
    "CDP_KAFKA_SSL_CA_LOCATION",
    "CDP_KAFKA_SSL_CERTIFICATE_LOCATION",
    "CDP_KAFKA_SSL_KEY_LOCATION",
    "CDP_KAFKA_SSL_KEY_PASSWORD_FILE",
    "CDP_KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL",
    "CDP_KAFKA_SASL_OAUTHBEARER_CLIENT_ID",
    "CDP_KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET_FILE",
    "CDP_KAFKA_SASL_OAUTHBEARER_SCOPE",
    "CDP_KAFKA_OPTIONS",
];

/// How a binary under [`assert_refuses_a_wrong_password_and_an_untrusted_ca`] and
/// [`assert_checks_kafka_options`] is given the broker address and its security settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Flags: `--brokers`, `--kafka-security-protocol`, … ([`SecureBroker::args_with`]).
    Flags,
    /// The `CDP_KAFKA_*` variables ([`SecureBroker::env_with`]).
    Env,
}

impl Via {
    /// The flags and variables that connect to `broker` as [`USER`] with `password_file`,
    /// trusting `ca`.
    fn secure(self, broker: &SecureBroker, password_file: &Path, ca: Option<&Path>) -> Extra {
        match self {
            Via::Flags => (broker.args_with(password_file, ca), Vec::new()),
            Via::Env => (Vec::new(), broker.env_with(password_file, ca)),
        }
    }

    /// The flags and variables that name `address` as the bootstrap servers.
    fn brokers(self, address: &str) -> Extra {
        match self {
            Via::Flags => (vec!["--brokers".into(), address.into()], Vec::new()),
            Via::Env => (Vec::new(), vec![("CDP_KAFKA_BROKERS".into(), address.into())]),
        }
    }
}

/// Flags and variables added to a binary's command.
type Extra = (Vec<String>, Vec<(String, String)>);

/// Runs `binary()`, the security variables it would inherit removed, with `extra`, until it
/// exits; panics if that takes longer than `within`.
fn run_with(binary: &impl Fn() -> Command, (args, env): Extra, within: Duration) -> Exited {
    let mut command = binary();
    without_inherited_security(&mut command).args(args).envs(env);
    run_until_exit(&mut command, within)
}

/// Checks that a binary refuses to start against a [`SecureBroker`] with TLS, within `within`,
/// naming the cause: with a wrong password, a non-zero exit, stderr saying "SASL authentication
/// failed for user …" and never showing the password; trusting a CA that did not sign the
/// broker's certificate, a non-zero exit, stderr saying "TLS handshake failed: certificate
/// verify failed (check --kafka-ssl-ca-location)".
///
/// `binary` builds the binary's command with whatever else it needs to start (the broker
/// address and the security settings are given `via` flags or variables, and the `CDP_KAFKA_*`
/// variables of the test process are removed).
pub async fn assert_refuses_a_wrong_password_and_an_untrusted_ca(
    via: Via,
    within: Duration,
    binary: impl Fn() -> Command,
) {
    let broker = SecureBroker::start(Tls::On).await;

    let wrong_password = via.secure(&broker, &broker.wrong_password_file(), broker.ca().as_deref());
    let exited = run_with(&binary, wrong_password, within);
    eprintln!("wrong password: exited after {:?}", exited.after);
    assert!(!exited.status.success(), "{}", exited.stderr);
    assert!(
        exited.stderr.contains(&format!(
            "SASL authentication failed for user {USER} (SCRAM-SHA-512)"
        )),
        "{}",
        exited.stderr
    );
    assert!(!exited.stderr.contains(WRONG_PASSWORD), "{}", exited.stderr);

    let untrusted = via.secure(&broker, &broker.password_file(), broker.untrusted_ca().as_deref());
    let exited = run_with(&binary, untrusted, within);
    eprintln!("untrusted CA: exited after {:?}", exited.after);
    assert!(!exited.status.success(), "{}", exited.stderr);
    assert!(
        exited
            .stderr
            .contains("TLS handshake failed: certificate verify failed (check --kafka-ssl-ca-location)"),
        "{}",
        exited.stderr
    );
}

/// Checks that a binary passes `--kafka-option` properties to librdkafka and refuses the ones
/// cdp-ingest fixes, each within `within`: an unknown property stops it with librdkafka's "No
/// such configuration property"; `acks=0`, given with `--kafka-option` or in `CDP_KAFKA_OPTIONS`
/// (one per line, after an accepted one), stops it naming the property.
///
/// `binary` is as for [`assert_refuses_a_wrong_password_and_an_untrusted_ca`]; the bootstrap
/// servers (a closed port) are given `via` a flag or a variable.
pub fn assert_checks_kafka_options(via: Via, within: Duration, binary: impl Fn() -> Command) {
    let closed = "127.0.0.1:9";

    let (mut args, env) = via.brokers(closed);
    args.extend(["--kafka-option".into(), "no.such.property=1".into()]);
    let exited = run_with(&binary, (args, env), within);
    assert!(!exited.status.success(), "{}", exited.stderr);
    assert!(
        exited
            .stderr
            .contains("No such configuration property: \"no.such.property\""),
        "{}",
        exited.stderr
    );

    let acks_refused =
        "the librdkafka property acks cannot be set with --kafka-option: it is fixed by cdp-ingest";
    let (mut args, env) = via.brokers(closed);
    args.extend(["--kafka-option".into(), "acks=0".into()]);
    let exited = run_with(&binary, (args, env), within);
    assert!(!exited.status.success(), "{}", exited.stderr);
    assert!(exited.stderr.contains(acks_refused), "{}", exited.stderr);

    let (args, mut env) = via.brokers(closed);
    env.push(("CDP_KAFKA_OPTIONS".into(), "client.rack=r1\nacks=0".into()));
    let exited = run_with(&binary, (args, env), within);
    assert!(!exited.status.success(), "{}", exited.stderr);
    assert!(exited.stderr.contains(acks_refused), "{}", exited.stderr);
}

/// Creates [`USER`] with `password` (replacing its credentials if it exists) in the storage in
/// `dir`, through a broker without authentication started for it on `port` and then stopped.
fn create_user(bin: &Path, dir: &Path, port: u16, password: &str) {
    let plain = format!("tcp://127.0.0.1:{port}");
    let mut setup = tansu(bin, dir, &plain, &plain, false);
    wait_listening(port, &mut setup, dir);
    let created = Command::new(bin)
        .args([
            "user",
            "create",
            "--broker",
            &plain,
            USER,
            password,
            "--mechanism",
            "scram512",
        ])
        .output()
        .expect("running tansu user create");
    let _ = setup.kill();
    let _ = setup.wait();
    assert!(
        created.status.success(),
        "tansu user create failed: {}",
        String::from_utf8_lossy(&created.stderr)
    );
}

fn tansu(bin: &Path, dir: &Path, listener: &str, advertised: &str, authentication: bool) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("tansu.log"))
        .unwrap();
    let mut command = Command::new(bin);
    command
        .args([
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            advertised,
        ])
        // Relative to the working directory: tansu joins the path to it.
        .args(["--storage-engine", "sqlite://tansu.db"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    if authentication {
        command.arg("--authentication");
    }
    command
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()))
}

/// Waits until `port` accepts connections, failing early if `child` exits.
fn wait_listening(port: u16, child: &mut Child, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "a process of the secure broker exited ({status}); logs in {}:\n{}\n{}",
                dir.display(),
                std::fs::read_to_string(dir.join("tansu.log")).unwrap_or_default(),
                std::fs::read_to_string(dir.join("socat.log")).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens on port {port} after 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A CA, a server certificate for 127.0.0.1 signed by it, and an unrelated CA.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("running openssl");
        assert!(
            output.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (key, cert, name) in [
        ("ca.key", "ca.pem", "cdp-test-ca"),
        ("other-ca.key", "other-ca.pem", "untrusted-ca"),
    ] {
        let subject = format!("/CN={name}");
        let mut args = vec![
            "req", "-x509", "-days", "2", "-subj", &subject, "-keyout", key, "-out", cert,
        ];
        args.extend(ec);
        openssl(&args);
    }
    let mut args = vec![
        "req",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ];
    args.extend(ec);
    openssl(&args);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
}
