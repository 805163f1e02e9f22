//! What every cdp-ingest binary shares: the Kafka and logging flags of the brief's interface
//! table, log set-up, the Prometheus metrics listener and the shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::path::PathBuf;

use clap::builder::TypedValueParser as _;

pub mod connections;

use kafka_producer::{KafkaSettings, Oidc, SaslMechanism, Secret, SecurityProtocol, Topics};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// Kafka flags shared by all binaries.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated `host:port` (use IPv4 addresses, not `localhost`).
    #[arg(long, env = "CDP_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Topic for valid events, keyed by anonymous_id (else user_id).
    #[arg(long, env = "CDP_TOPIC_INGEST", default_value = "cdp.ingest")]
    pub topic_ingest: String,
    /// Topic for rejected events (the DLQ envelope).
    #[arg(long, env = "CDP_TOPIC_DLQ", default_value = "cdp.dlq")]
    pub topic_dlq: String,
    /// Topic for records whose delivery failed transiently.
    #[arg(long, env = "CDP_TOPIC_RETRY", default_value = "cdp.retry")]
    pub topic_retry: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub security: KafkaSecurityArgs,
}

impl KafkaArgs {
    /// The three topics.
    pub fn topics(&self) -> Topics {
        Topics {
            ingest: self.topic_ingest.clone(),
            dlq: self.topic_dlq.clone(),
            retry: self.topic_retry.clone(),
        }
    }

    /// The settings every Kafka client of the process is created with. Secret files are read,
    /// and the settings checked, when a client is created ([`KafkaSettings::validate`]).
    pub fn settings(&self) -> KafkaSettings {
        self.security.settings(&self.brokers)
    }
}

/// How to connect to the cluster: TLS, SASL, and any other librdkafka property. Part of
/// [`KafkaArgs`]; tools and tests that take the brokers from elsewhere read these from the
/// environment with [`KafkaSecurityArgs::from_env`].
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Kafka connection")]
pub struct KafkaSecurityArgs {
    /// How to talk to the brokers (librdkafka's `security.protocol`).
    #[arg(
        long,
        env = "CDP_KAFKA_SECURITY_PROTOCOL",
        default_value = "plaintext",
        ignore_case = true,
        value_parser = clap::builder::PossibleValuesParser::new(SecurityProtocol::NAMES)
            .map(|s| s.parse::<SecurityProtocol>().expect("one of the names"))
    )]
    pub kafka_security_protocol: SecurityProtocol,
    /// SASL mechanism, with sasl_plaintext or sasl_ssl. GSSAPI (Kerberos) is not supported.
    #[arg(
        long,
        env = "CDP_KAFKA_SASL_MECHANISM",
        ignore_case = true,
        value_parser = clap::builder::PossibleValuesParser::new(SaslMechanism::NAMES)
            .map(|s| s.parse::<SaslMechanism>().expect("one of the names"))
    )]
    pub kafka_sasl_mechanism: Option<SaslMechanism>,
    /// SASL username (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512).
    #[arg(long, env = "CDP_KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,
    /// File holding the SASL password (a mounted Secret); a trailing newline is ignored. Read
    /// at start (and when the producer is rebuilt).
    #[arg(long, env = "CDP_KAFKA_SASL_PASSWORD_FILE", value_name = "FILE")]
    pub kafka_sasl_password_file: Option<PathBuf>,
    /// CA certificate(s) (PEM file or directory) to verify the brokers with; default: the
    /// system's CA certificates.
    #[arg(long, env = "CDP_KAFKA_SSL_CA_LOCATION", value_name = "PATH")]
    pub kafka_ssl_ca_location: Option<PathBuf>,
    /// Client certificate (PEM), for mutual TLS.
    #[arg(long, env = "CDP_KAFKA_SSL_CERTIFICATE_LOCATION", value_name = "FILE")]
    pub kafka_ssl_certificate_location: Option<PathBuf>,
    /// The client certificate's private key (PEM), for mutual TLS.
    #[arg(long, env = "CDP_KAFKA_SSL_KEY_LOCATION", value_name = "FILE")]
    pub kafka_ssl_key_location: Option<PathBuf>,
    /// File holding the private key's passphrase, if the key is encrypted.
    #[arg(long, env = "CDP_KAFKA_SSL_KEY_PASSWORD_FILE", value_name = "FILE")]
    pub kafka_ssl_key_password_file: Option<PathBuf>,
    /// OAUTHBEARER through OIDC client credentials: the identity provider's token endpoint.
    #[arg(
        long,
        env = "CDP_KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL",
        value_name = "URL"
    )]
    pub kafka_sasl_oauthbearer_token_endpoint_url: Option<String>,
    /// OAUTHBEARER OIDC: the client id.
    #[arg(long, env = "CDP_KAFKA_SASL_OAUTHBEARER_CLIENT_ID")]
    pub kafka_sasl_oauthbearer_client_id: Option<String>,
    /// OAUTHBEARER OIDC: file holding the client secret; a trailing newline is ignored.
    #[arg(
        long,
        env = "CDP_KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET_FILE",
        value_name = "FILE"
    )]
    pub kafka_sasl_oauthbearer_client_secret_file: Option<PathBuf>,
    /// OAUTHBEARER OIDC: the scope to request, if the provider wants one.
    #[arg(long, env = "CDP_KAFKA_SASL_OAUTHBEARER_SCOPE")]
    pub kafka_sasl_oauthbearer_scope: Option<String>,
    /// Any other librdkafka property, `KEY=VALUE`; repeat the flag for more. The variable
    /// holds one per line (values may contain commas). Properties with a flag of their own,
    /// and the ones cdp-ingest fixes (acks, enable.idempotence, compression.type, client.id),
    /// are refused.
    #[arg(
        long = "kafka-option",
        env = "CDP_KAFKA_OPTIONS",
        value_name = "KEY=VALUE",
        hide_env_values = true
    )]
    pub kafka_options: Vec<String>,
}

impl KafkaSecurityArgs {
    /// The `CDP_KAFKA_*` security variables (as the binaries read them), for tools and tests
    /// that have no command line of their own. Unset variables mean plaintext.
    pub fn from_env() -> Result<Self, clap::Error> {
        #[derive(clap::Parser)]
        struct EnvOnly {
            #[command(flatten)]
            security: KafkaSecurityArgs,
        }
        <EnvOnly as clap::Parser>::try_parse_from(["cdp-kafka-env"]).map(|e| e.security)
    }

    /// The settings for `brokers`.
    pub fn settings(&self, brokers: &str) -> KafkaSettings {
        let oidc_used = self.kafka_sasl_oauthbearer_token_endpoint_url.is_some()
            || self.kafka_sasl_oauthbearer_client_id.is_some()
            || self.kafka_sasl_oauthbearer_client_secret_file.is_some()
            || self.kafka_sasl_oauthbearer_scope.is_some();
        let oidc = oidc_used.then(|| Oidc {
            token_endpoint_url: self
                .kafka_sasl_oauthbearer_token_endpoint_url
                .clone()
                .unwrap_or_default(),
            client_id: self.kafka_sasl_oauthbearer_client_id.clone().unwrap_or_default(),
            client_secret: Secret::File(
                self.kafka_sasl_oauthbearer_client_secret_file
                    .clone()
                    .unwrap_or_default(),
            ),
            scope: self.kafka_sasl_oauthbearer_scope.clone(),
        });
        KafkaSettings {
            brokers: brokers.to_string(),
            protocol: self.kafka_security_protocol,
            sasl_mechanism: self.kafka_sasl_mechanism,
            sasl_username: self.kafka_sasl_username.clone(),
            sasl_password: self.kafka_sasl_password_file.clone().map(Secret::File),
            oidc,
            ssl_ca_location: self.kafka_ssl_ca_location.clone(),
            ssl_certificate_location: self.kafka_ssl_certificate_location.clone(),
            ssl_key_location: self.kafka_ssl_key_location.clone(),
            ssl_key_password: self.kafka_ssl_key_password_file.clone().map(Secret::File),
            options: self.kafka_options.clone(),
        }
    }
}

/// Validation limits shared by ingest and dlq-replayer, so a replay validates as ingest does.
/// The defaults are [`event_model::Limits::DEFAULT`]'s.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Largest event, in bytes, as normalised.
    #[arg(long, env = "CDP_MAX_EVENT_BYTES", default_value_t = event_model::Limits::DEFAULT.max_event_bytes)]
    pub max_event_bytes: usize,
    /// Most events in one batch.
    #[arg(long, env = "CDP_MAX_BATCH_EVENTS", default_value_t = event_model::Limits::DEFAULT.max_batch_events)]
    pub max_batch_events: usize,
}

impl LimitArgs {
    /// The event-model limits.
    pub fn limits(&self) -> event_model::Limits {
        event_model::Limits {
            max_event_bytes: self.max_event_bytes,
            max_batch_events: self.max_batch_events,
            ..event_model::Limits::default()
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log pipelines.
    Json,
    /// Human-readable lines.
    Text,
}

/// Logging flag shared by all binaries.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format. The level is set with `RUST_LOG` (default `info`).
    #[arg(long, env = "CDP_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

/// Parses a duration flag such as `10s` or `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Installs the global tracing subscriber. Call once, first thing in `main`.
pub fn init_logging(args: &LogArgs) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

/// Installs the global Prometheus recorder (once per process; later calls return the same
/// handle) and returns the handle that renders the metrics text. Call it before serving:
/// http-front caches metric handles per thread, so the recorder must be in place first and
/// must keep idle series (do not add an `idle_timeout`).
pub fn install_metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .expect("static, non-empty bucket list")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then metrics go there.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; Prometheus output may be empty");
            }
            handle
        })
        .clone()
}

/// Sets `cdp_<binary>_build_info{version}` to 1 (`binary` with underscores, e.g. `retry_forwarder`).
pub fn build_info(binary: &str) {
    metrics::gauge!(format!("cdp_{binary}_build_info"), "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Most connections the metrics listener holds: a few Prometheus servers and probes. At the
/// cap a new connection evicts the oldest idle one ([`connections`]), so a scrape always gets
/// through unless this many scrapes are being answered at once.
pub const METRICS_MAX_CONNECTIONS: usize = 64;

/// The metrics listener's idle timeouts: a scraper keeps its connection between scrapes
/// (Prometheus' default interval is 1 min); under pressure 1 s.
pub const METRICS_TIMEOUTS: connections::Timeouts = connections::Timeouts {
    header_read: Duration::from_secs(10),
    keep_alive: Duration::from_secs(90),
    under_pressure: Duration::from_secs(1),
};

/// Serves `GET /metrics` (Prometheus text format) on `listener` until `shutdown` resolves,
/// holding at most [`METRICS_MAX_CONNECTIONS`]. `binary` (with underscores, as for
/// [`build_info`]) names its counters: `cdp_<binary>_metrics_connections_closed_total{cause}`
/// (what the listener closed itself, [`connections::Cause`]) and
/// `cdp_<binary>_metrics_accept_errors_total`.
pub async fn serve_metrics(
    listener: TcpListener,
    handle: PrometheusHandle,
    binary: &'static str,
    shutdown: impl Future<Output = ()>,
) {
    let closed_name = format!("cdp_{binary}_metrics_connections_closed_total");
    for cause in connections::Cause::ALL {
        metrics::counter!(closed_name.clone(), "cause" => cause.as_str()).increment(0);
    }
    let accept_errors = metrics::counter!(format!("cdp_{binary}_metrics_accept_errors_total"));
    accept_errors.increment(0);
    let connections = connections::Connections::new(
        "metrics",
        METRICS_MAX_CONNECTIONS,
        METRICS_TIMEOUTS,
        move |cause| {
            metrics::counter!(closed_name.clone(), "cause" => cause.as_str()).increment(1);
        },
    );
    let mut acceptor = connections::Acceptor::new(listener, "metrics", move || accept_errors.increment(1));
    let accept = async {
        loop {
            let (stream, _) = acceptor.accept().await;
            // Refused (every held connection answering a scrape): dropped, counted.
            let Ok(mut conn) = connections.admit().await else {
                continue;
            };
            let handle = handle.clone();
            let tracker = conn.tracker();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let busy = tracker.request();
                    let response = match (req.method(), req.uri().path()) {
                        (&Method::GET, "/metrics") => Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(handle.render()))),
                        _ => Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"not found; try /metrics\n"))),
                    };
                    std::future::ready(response.map(|r| connections::track(r, busy)))
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    // Off (hyper's default is 30 s, also between requests): the idle
                    // timeouts are `connections`'.
                    .header_read_timeout(None)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(connection);
                let ended = tokio::select! {
                    biased;
                    _ = &mut connection => true,
                    () = conn.closing() => false,
                };
                // A scrape whose head raced the close is answered (`Connection: close`) first.
                if !ended && conn.finishing() {
                    let _ = tokio::time::timeout(connections::FINISH_PATIENCE, connection).await;
                }
            });
        }
    };
    tokio::select! {
        () = accept => {}
        () = shutdown => {}
    }
}

/// Binds `addr`, with the address in the error message.
pub async fn bind(addr: SocketAddr, what: &str) -> std::io::Result<TcpListener> {
    bind_with_backlog(addr, what, DEFAULT_BACKLOG)
}

/// The listen backlog of [`bind`]: room for a burst of connections the accept loop has not
/// taken yet (tokio's own default, 128, dropped some of 256 clients connecting at once).
pub const DEFAULT_BACKLOG: u32 = 1024;

/// Binds `addr` (with `SO_REUSEADDR`) and listens with a queue of `backlog` pending
/// connections. Linux caps the queue at `net.core.somaxconn`: a warning says so when
/// `backlog` is above it. Errors name `what` and the address.
pub fn bind_with_backlog(addr: SocketAddr, what: &str, backlog: u32) -> std::io::Result<TcpListener> {
    let named =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("cannot listen on {addr} for {what}: {e}"));
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(named)?;
    socket.set_reuseaddr(true).map_err(named)?;
    socket.bind(addr).map_err(named)?;
    if let Some(max) = somaxconn().filter(|max| *max < backlog) {
        tracing::warn!(what, backlog, somaxconn = max, "the kernel caps the listen backlog at net.core.somaxconn: raise it (sysctl) for larger connection bursts");
    }
    socket.listen(backlog).map_err(named)
}

/// `net.core.somaxconn`, where the kernel says (Linux).
fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::LimitArgs;

    /// The limit flags alone, as a binary flattens them.
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        limits: LimitArgs,
    }

    #[test]
    fn the_limit_flags_default_to_the_event_models_defaults() {
        let flags = Flags::try_parse_from(["test"]).unwrap();
        assert_eq!(flags.limits.limits(), event_model::Limits::default());
        assert_eq!(flags.limits.max_event_bytes, 32 * 1024);
        assert_eq!(flags.limits.max_batch_events, 2_500);
    }

    /// The kernel's view of a listener (`ss`'s Send-Q column is a listening socket's backlog).
    #[tokio::test]
    async fn the_listener_queues_the_requested_backlog() {
        let listener = super::bind_with_backlog("127.0.0.1:0".parse().unwrap(), "test", 700).unwrap();
        let port = listener.local_addr().unwrap().port();
        let out = std::process::Command::new("ss")
            .args(["-ltnH", &format!("sport = :{port}")])
            .output()
            .expect("ss (iproute2)");
        let text = String::from_utf8_lossy(&out.stdout);
        let send_q: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(send_q.get(2), Some(&"700"), "ss -ltn: {text}");
    }
}
