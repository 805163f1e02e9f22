//! Connection failures that librdkafka reports through a client's error callback (SASL
//! authentication, TLS, a security-protocol mismatch), translated into messages naming the
//! cause and the flag to check; the start-up ping that fails on them at once; and their count.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::Client;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;

use crate::settings::{KafkaSettings, SaslMechanism, SecurityProtocol};
use crate::Error;

/// How long a reported failure counts as current. librdkafka reports a repeated identical
/// failure at most every 30 s per broker, so a failure that persists is reported again within it.
const FAILURE_FRESH: Duration = Duration::from_secs(45);

/// Why a client could not connect, in words naming the cause and the flag to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The brokers refused the SASL credentials.
    Sasl {
        /// The configured mechanism.
        mechanism: Option<SaslMechanism>,
        /// The username (PLAIN, SCRAM) or OIDC client id.
        principal: Option<String>,
        /// librdkafka's message.
        reason: String,
    },
    /// The TLS handshake failed.
    Tls {
        /// The broker's certificate was not trusted (unknown CA, wrong host name, expired).
        verify: bool,
        /// The other end does not speak TLS (a plaintext listener).
        not_tls: bool,
        /// librdkafka's message.
        reason: String,
    },
    /// The broker hung up during the handshake: the listener expects another security protocol.
    Mismatch {
        /// The configured protocol.
        protocol: SecurityProtocol,
        /// librdkafka's message.
        reason: String,
    },
}

impl ConnectFailure {
    /// The failure `error` (with librdkafka's `reason`) reports, if it is one of these.
    pub fn classify(error: &KafkaError, reason: &str, settings: &KafkaSettings) -> Option<Self> {
        let reason = reason.to_string();
        match error.rdkafka_error_code()? {
            RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed => {
                Some(ConnectFailure::Sasl {
                    mechanism: settings.sasl_mechanism,
                    principal: settings.principal().map(str::to_string),
                    reason,
                })
            }
            RDKafkaErrorCode::SSL => {
                let lower = reason.to_ascii_lowercase();
                Some(ConnectFailure::Tls {
                    verify: lower.contains("certificate verify failed")
                        || lower.contains("could not be verified"),
                    not_tls: [
                        "wrong version number",
                        "packet length too long",
                        "record layer failure",
                        "http request",
                    ]
                    .iter()
                    .any(|s| lower.contains(s)),
                    reason,
                })
            }
            RDKafkaErrorCode::BrokerTransportFailure
                if reason.contains("security.protocol") || reason.contains("require SASL") =>
            {
                Some(ConnectFailure::Mismatch {
                    protocol: settings.protocol,
                    reason,
                })
            }
            _ => None,
        }
    }

    /// The metric label: `sasl` or `tls`; `None` for a mismatch, which is not counted.
    pub fn cause(&self) -> Option<&'static str> {
        match self {
            ConnectFailure::Sasl { .. } => Some("sasl"),
            ConnectFailure::Tls { .. } => Some("tls"),
            ConnectFailure::Mismatch { .. } => None,
        }
    }

    /// Certain enough to stop the start-up ping at once. A hang-up during the handshake may
    /// also be a broker restarting: the ping goes on and names it only if it times out.
    fn is_definite(&self) -> bool {
        !matches!(self, ConnectFailure::Mismatch { .. })
    }
}

impl fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectFailure::Sasl {
                mechanism: Some(SaslMechanism::OAuthBearer),
                principal,
                reason,
            } => write!(
                f,
                "SASL OAUTHBEARER authentication failed{}: {reason} (check the --kafka-sasl-oauthbearer-* flags and the client secret file)",
                principal.as_ref().map_or(String::new(), |p| format!(" for client id {p}"))
            ),
            ConnectFailure::Sasl {
                mechanism,
                principal,
                reason,
            } => write!(
                f,
                "SASL authentication failed for user {}{}: {reason} (check --kafka-sasl-username and the password file)",
                principal.as_deref().unwrap_or("(none)"),
                mechanism.map_or(String::new(), |m| format!(" ({m})"))
            ),
            ConnectFailure::Tls { verify: true, reason, .. } => write!(
                f,
                "TLS handshake failed: certificate verify failed (check --kafka-ssl-ca-location): {reason}"
            ),
            ConnectFailure::Tls { not_tls: true, reason, .. } => write!(
                f,
                "TLS handshake failed: the broker does not speak TLS on this port (check --kafka-security-protocol and --brokers): {reason}"
            ),
            ConnectFailure::Tls { reason, .. } => write!(
                f,
                "TLS handshake failed (check --kafka-security-protocol and the --kafka-ssl-* flags): {reason}"
            ),
            ConnectFailure::Mismatch { protocol, reason } => write!(
                f,
                "the broker closed the connection during the handshake: security protocol mismatch? (check --kafka-security-protocol, which is {protocol}): {reason}"
            ),
        }
    }
}

/// The connection failures a process's clients reported: the latest (for readiness and the
/// start-up ping) and their count, `<prefix>_kafka_authentication_failures_total{cause}`.
/// Clones share their state.
#[derive(Clone)]
pub struct ConnectionWatch {
    inner: Arc<Inner>,
}

struct Inner {
    settings: KafkaSettings,
    prefix: Option<String>,
    latest: Mutex<Option<(Instant, ConnectFailure)>>,
}

impl fmt::Debug for ConnectionWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionWatch")
            .field("prefix", &self.inner.prefix)
            .field("latest", &self.latest())
            .finish_non_exhaustive()
    }
}

impl ConnectionWatch {
    /// A watch for clients configured with `settings`, counting under `metric_prefix`
    /// (`cdp_<binary>`).
    pub fn new(metric_prefix: &str, settings: &KafkaSettings) -> Self {
        // Registered at start, so the series exists (at 0) before any failure.
        for cause in ["sasl", "tls"] {
            crate::metrics::authentication_failures(metric_prefix, cause).increment(0);
        }
        ConnectionWatch::with_prefix(Some(metric_prefix.to_string()), settings)
    }

    /// A watch that counts nothing: for one-off clients (a start-up ping, tools, tests).
    pub fn uncounted(settings: &KafkaSettings) -> Self {
        ConnectionWatch::with_prefix(None, settings)
    }

    fn with_prefix(prefix: Option<String>, settings: &KafkaSettings) -> Self {
        ConnectionWatch {
            inner: Arc::new(Inner {
                settings: settings.clone(),
                prefix,
                latest: Mutex::new(None),
            }),
        }
    }

    /// For a client's error callback: if `error` is a connection failure, records, counts and
    /// returns it. Logging is the caller's.
    pub fn observe(&self, error: &KafkaError, reason: &str) -> Option<ConnectFailure> {
        let failure = ConnectFailure::classify(error, reason, &self.inner.settings)?;
        if let (Some(cause), Some(prefix)) = (failure.cause(), &self.inner.prefix) {
            crate::metrics::authentication_failures(prefix, cause).increment(1);
        }
        *self.lock() = Some((Instant::now(), failure.clone()));
        Some(failure)
    }

    /// The latest failure reported, however old.
    pub fn latest(&self) -> Option<ConnectFailure> {
        self.lock().as_ref().map(|(_, f)| f.clone())
    }

    /// The authentication (SASL or TLS) failure reported in the last 45 s, unless every broker
    /// has connected since: what readiness shows.
    pub fn authentication_failure(&self) -> Option<ConnectFailure> {
        self.lock()
            .as_ref()
            .filter(|(at, f)| at.elapsed() < FAILURE_FRESH && f.cause().is_some())
            .map(|(_, f)| f.clone())
    }

    /// For a client's statistics callback: once every broker it knows is up, earlier failures
    /// are over.
    pub fn stats(&self, stats: &Statistics) {
        let mut brokers = stats.brokers.values().filter(|b| b.nodeid >= 0).peekable();
        if brokers.peek().is_some() && brokers.all(|b| b.state == "UP") {
            *self.lock() = None;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, ConnectFailure)>> {
        self.inner.latest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The start-up ping (S3): a metadata request until one is answered or `timeout` passes.
    /// An authentication or TLS failure reported meanwhile ends it at once with that cause;
    /// a timeout names the last failure seen, if any. Blocking. The client's events must be
    /// served meanwhile (a producer's polling thread does).
    pub fn ping<C: ClientContext>(&self, client: &Client<C>, timeout: Duration) -> Result<Metadata, Error> {
        let brokers = || self.inner.settings.brokers.clone();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let result = client.fetch_metadata(None, left.min(Duration::from_millis(500)));
            let failure = self.latest();
            match result {
                Ok(metadata) => return Ok(metadata),
                Err(_) if failure.as_ref().is_some_and(ConnectFailure::is_definite) => {
                    return Err(Error::Connect {
                        brokers: brokers(),
                        failure: failure.expect("checked"),
                    })
                }
                Err(source) if Instant::now() >= deadline => {
                    return Err(match failure {
                        Some(failure) => Error::Connect {
                            brokers: brokers(),
                            failure,
                        },
                        None => Error::Unreachable {
                            brokers: brokers(),
                            source,
                        },
                    })
                }
                Err(_) => {}
            }
        }
    }
}

/// A client context that only watches for connection failures (and logs librdkafka's
/// errors): for clients that need no other callback.
pub struct WatchedContext {
    watch: ConnectionWatch,
}

impl WatchedContext {
    /// A context feeding `watch`.
    pub fn new(watch: ConnectionWatch) -> Self {
        WatchedContext { watch }
    }

    /// Its watch.
    pub fn watch(&self) -> &ConnectionWatch {
        &self.watch
    }
}

/// The log line for a client error: translated when it is a connection failure.
pub fn log_client_error(watch: &ConnectionWatch, error: &KafkaError, reason: &str) {
    match watch.observe(error, reason) {
        Some(failure) => tracing::error!(%failure, "kafka connection failed"),
        None => tracing::error!(%error, reason, "kafka client error"),
    }
}

impl ClientContext for WatchedContext {
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(&self.watch, &error, reason);
    }

    fn stats(&self, stats: Statistics) {
        self.watch.stats(&stats);
    }
}

impl ConsumerContext for WatchedContext {}

impl ProducerContext for WatchedContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Secret;

    fn settings() -> KafkaSettings {
        KafkaSettings {
            brokers: "127.0.0.1:9093".into(),
            protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(SaslMechanism::ScramSha512),
            sasl_username: Some("alice".into()),
            sasl_password: Some(Secret::Value("pw".into())),
            ..KafkaSettings::default()
        }
    }

    fn global(code: RDKafkaErrorCode) -> KafkaError {
        KafkaError::Global(code)
    }

    #[test]
    fn sasl_failure_names_the_user_and_the_flags() {
        let failure = ConnectFailure::classify(
            &global(RDKafkaErrorCode::Authentication),
            "sasl_ssl://127.0.0.1:9093/bootstrap: SASL authentication error: invalid-proof",
            &settings(),
        )
        .unwrap();
        let text = failure.to_string();
        assert!(
            text.starts_with("SASL authentication failed for user alice (SCRAM-SHA-512)"),
            "{text}"
        );
        assert!(
            text.contains("check --kafka-sasl-username and the password file"),
            "{text}"
        );
        assert_eq!(failure.cause(), Some("sasl"));
    }

    #[test]
    fn tls_failures_name_the_cause() {
        let verify = ConnectFailure::classify(
            &global(RDKafkaErrorCode::SSL),
            "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified",
            &settings(),
        )
        .unwrap();
        assert!(verify
            .to_string()
            .starts_with("TLS handshake failed: certificate verify failed (check --kafka-ssl-ca-location)"));
        let plain = ConnectFailure::classify(
            &global(RDKafkaErrorCode::SSL),
            "SSL handshake failed: error:0A00010B:SSL routines::wrong version number",
            &settings(),
        )
        .unwrap();
        assert!(plain.to_string().contains("does not speak TLS"), "{plain}");
    }

    #[test]
    fn other_errors_are_not_connection_failures() {
        assert!(
            ConnectFailure::classify(&global(RDKafkaErrorCode::AllBrokersDown), "x", &settings()).is_none()
        );
        assert!(ConnectFailure::classify(
            &global(RDKafkaErrorCode::BrokerTransportFailure),
            "Connect to ipv4#127.0.0.1:1 failed: Connection refused",
            &settings()
        )
        .is_none());
        let mismatch = ConnectFailure::classify(
            &global(RDKafkaErrorCode::BrokerTransportFailure),
            "Disconnected while requesting ApiVersion: might be caused by incorrect security.protocol configuration (connecting to a SSL listener?)",
            &settings(),
        )
        .unwrap();
        assert_eq!(mismatch.cause(), None);
        assert!(mismatch.to_string().contains("which is sasl_ssl"), "{mismatch}");
    }

    #[test]
    fn watch_keeps_the_latest_failure() {
        let watch = ConnectionWatch::new("cdp_test", &settings());
        assert!(watch.authentication_failure().is_none());
        assert!(watch
            .observe(&global(RDKafkaErrorCode::AllBrokersDown), "down")
            .is_none());
        watch.observe(&global(RDKafkaErrorCode::Authentication), "invalid-proof");
        assert!(watch
            .authentication_failure()
            .is_some_and(|f| f.to_string().contains("invalid-proof")));
    }
}
