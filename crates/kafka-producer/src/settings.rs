//! [`KafkaSettings`]: where the cluster is and how to talk to it (TLS, SASL, any other
//! librdkafka property). Every Kafka client of the workspace is configured through
//! [`KafkaSettings::apply`], so a setting reaches producers, consumers and admin clients alike.

use std::fmt;
use std::path::PathBuf;

use rdkafka::config::ClientConfig;

use crate::Error;

/// `security.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SecurityProtocol {
    /// No TLS, no SASL.
    #[default]
    Plaintext,
    /// TLS (optionally with a client certificate), no SASL.
    Ssl,
    /// SASL without TLS.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// The names accepted by [`str::parse`], as librdkafka spells them.
    pub const NAMES: [&'static str; 4] = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];

    /// librdkafka's name.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    /// True for `sasl_plaintext` and `sasl_ssl`.
    pub fn uses_sasl(self) -> bool {
        matches!(self, SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl)
    }

    /// True for `ssl` and `sasl_ssl`.
    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SecurityProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "plaintext" => Ok(SecurityProtocol::Plaintext),
            "ssl" => Ok(SecurityProtocol::Ssl),
            "sasl_plaintext" => Ok(SecurityProtocol::SaslPlaintext),
            "sasl_ssl" => Ok(SecurityProtocol::SaslSsl),
            _ => Err(format!(
                "unknown security protocol {s:?}: one of {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// `sasl.mechanism`. GSSAPI (Kerberos) is not built in (see the workspace manifest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// PLAIN: username and password, in the clear (use it over TLS).
    Plain,
    /// SCRAM-SHA-256.
    ScramSha256,
    /// SCRAM-SHA-512.
    ScramSha512,
    /// OAUTHBEARER, with librdkafka's OIDC client-credentials flow when a token endpoint is set.
    OAuthBearer,
}

impl SaslMechanism {
    /// The names accepted by [`str::parse`], as librdkafka spells them.
    pub const NAMES: [&'static str; 4] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"];

    /// librdkafka's name.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::OAuthBearer => "OAUTHBEARER",
        }
    }
}

impl fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SaslMechanism {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "PLAIN" => Ok(SaslMechanism::Plain),
            "SCRAM-SHA-256" => Ok(SaslMechanism::ScramSha256),
            "SCRAM-SHA-512" => Ok(SaslMechanism::ScramSha512),
            "OAUTHBEARER" => Ok(SaslMechanism::OAuthBearer),
            _ => Err(format!(
                "unknown SASL mechanism {s:?}: one of {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// A secret (password, key passphrase, client secret): a value, or a file that holds it (a
/// mounted Kubernetes Secret), read each time a client is created. Its `Debug` never shows the
/// value, and errors name the file, never its contents.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// The value itself (tests, tools).
    Value(String),
    /// A file holding the value; one trailing newline (`\n` or `\r\n`) is not part of it.
    File(PathBuf),
}

impl Secret {
    /// The secret's value, reading the file if it is one.
    pub fn reveal(&self, what: &'static str) -> Result<String, Error> {
        match self {
            Secret::Value(value) => Ok(value.clone()),
            Secret::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| Error::SecretFile {
                    what,
                    path: path.clone(),
                    reason: source.to_string(),
                })?;
                let value = text
                    .strip_suffix('\n')
                    .map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
                if value.is_empty() {
                    return Err(Error::SecretFile {
                        what,
                        path: path.clone(),
                        reason: "the file is empty".into(),
                    });
                }
                Ok(value.to_string())
            }
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Value(_) => f.write_str("Secret(<redacted>)"),
            Secret::File(path) => write!(f, "Secret(file {})", path.display()),
        }
    }
}

/// OAUTHBEARER through librdkafka's OIDC client-credentials flow (`sasl.oauthbearer.method=oidc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oidc {
    /// `sasl.oauthbearer.token.endpoint.url`.
    pub token_endpoint_url: String,
    /// `sasl.oauthbearer.client.id`.
    pub client_id: String,
    /// `sasl.oauthbearer.client.secret`.
    pub client_secret: Secret,
    /// `sasl.oauthbearer.scope`, if the provider wants one.
    pub scope: Option<String>,
}

/// How every Kafka client of a process connects: bootstrap servers, TLS, SASL and any other
/// librdkafka property. `Debug` shows no secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `bootstrap.servers`, `host:port[,host:port]`.
    pub brokers: String,
    /// `security.protocol`.
    pub protocol: SecurityProtocol,
    /// `sasl.mechanism` (required with a SASL protocol).
    pub sasl_mechanism: Option<SaslMechanism>,
    /// `sasl.username` (PLAIN, SCRAM).
    pub sasl_username: Option<String>,
    /// `sasl.password` (PLAIN, SCRAM).
    pub sasl_password: Option<Secret>,
    /// OAUTHBEARER's OIDC client credentials; without them OAUTHBEARER uses librdkafka's
    /// default (unsecured JWT) login, configurable with `sasl.oauthbearer.config`.
    pub oidc: Option<Oidc>,
    /// `ssl.ca.location`: CA certificate(s) to verify the brokers with. Unset: the system's
    /// (librdkafka probes the usual locations, as OpenSSL is linked statically).
    pub ssl_ca_location: Option<PathBuf>,
    /// `ssl.certificate.location`: the client certificate (mutual TLS).
    pub ssl_certificate_location: Option<PathBuf>,
    /// `ssl.key.location`: the client certificate's key.
    pub ssl_key_location: Option<PathBuf>,
    /// `ssl.key.password`: the key's passphrase, if it is encrypted.
    pub ssl_key_password: Option<Secret>,
    /// Any other librdkafka property, as `KEY=VALUE` items, applied last. Properties that
    /// cdp-ingest fixes, or that have a flag of their own, are refused (see [`owned_property`]).
    pub options: Vec<String>,
}

/// Why a property cannot be set with `--kafka-option`: who owns it. `None`: it may be set.
pub fn owned_property(key: &str) -> Option<&'static str> {
    Some(match key {
        "acks" | "request.required.acks" => "fixed by cdp-ingest (acks=all, brief S2)",
        "enable.idempotence" => "fixed by cdp-ingest (an idempotent producer, brief S2)",
        "compression.type" | "compression.codec" => "fixed by cdp-ingest (zstd, brief S2)",
        "client.id" => "fixed by cdp-ingest (each binary names itself, brief S2)",
        "enable.auto.offset.store" => {
            "fixed by cdp-ingest (an offset is stored only after its record was handled: at least once)"
        }
        "group.id" => "set with --group-id",
        "bootstrap.servers" | "metadata.broker.list" => "set with --brokers",
        "security.protocol" => "set with --kafka-security-protocol",
        "sasl.mechanism" | "sasl.mechanisms" => "set with --kafka-sasl-mechanism",
        "sasl.username" => "set with --kafka-sasl-username",
        "sasl.password" => "set with --kafka-sasl-password-file",
        "ssl.ca.location" => "set with --kafka-ssl-ca-location",
        "ssl.certificate.location" => "set with --kafka-ssl-certificate-location",
        "ssl.key.location" => "set with --kafka-ssl-key-location",
        "ssl.key.password" => "set with --kafka-ssl-key-password-file",
        "sasl.oauthbearer.method" => "set by --kafka-sasl-oauthbearer-token-endpoint-url (oidc)",
        "sasl.oauthbearer.token.endpoint.url" => "set with --kafka-sasl-oauthbearer-token-endpoint-url",
        "sasl.oauthbearer.client.id" => "set with --kafka-sasl-oauthbearer-client-id",
        "sasl.oauthbearer.client.secret" => "set with --kafka-sasl-oauthbearer-client-secret-file",
        "sasl.oauthbearer.scope" => "set with --kafka-sasl-oauthbearer-scope",
        _ => return None,
    })
}

/// True for properties whose value must not be shown (passwords, keys, secrets, tokens).
pub(crate) fn is_sensitive(key: &str) -> bool {
    [
        "password",
        "secret",
        "pem",
        "sasl.oauthbearer.config",
        "ssl_key",
        "token",
    ]
    .iter()
    .any(|s| key.contains(s))
}

impl KafkaSettings {
    /// Plaintext, no SASL, no other property: the local stack and tests.
    pub fn plaintext(brokers: impl Into<String>) -> Self {
        KafkaSettings {
            brokers: brokers.into(),
            ..KafkaSettings::default()
        }
    }

    /// The `--kafka-option` items as `(key, value)` pairs, checked: each is `KEY=VALUE` and
    /// sets no property that cdp-ingest fixes or a flag owns. An item may hold several,
    /// one per line (the `CDP_KAFKA_OPTIONS` variable). Errors name the key, never the value.
    pub fn option_pairs(&self) -> Result<Vec<(String, String)>, Error> {
        let mut pairs = Vec::new();
        for (n, line) in self
            .options
            .iter()
            .flat_map(|item| item.lines())
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .enumerate()
        {
            let Some((key, value)) = line.split_once('=') else {
                return Err(Error::Settings(format!(
                    "--kafka-option number {} is not KEY=VALUE",
                    n + 1
                )));
            };
            let key = key.trim();
            if key.is_empty() {
                return Err(Error::Settings(format!(
                    "--kafka-option number {} has no property name before '='",
                    n + 1
                )));
            }
            if let Some(owner) = owned_property(key) {
                return Err(Error::Settings(format!(
                    "the librdkafka property {key} cannot be set with --kafka-option: it is {owner}"
                )));
            }
            pairs.push((key.to_string(), value.trim().to_string()));
        }
        Ok(pairs)
    }

    /// Checks that the settings fit together (a SASL protocol has a mechanism, PLAIN and SCRAM
    /// have a username and password, a key goes with a certificate, options are allowed) and
    /// that the secret files can be read. Clients check this when they are created; binaries
    /// call it first to fail before anything else.
    pub fn validate(&self) -> Result<(), Error> {
        let mut config = ClientConfig::new();
        self.apply(&mut config).map(drop)
    }

    /// Sets `bootstrap.servers`, the security properties and the `--kafka-option` properties
    /// on `config`. Call it after the client's own settings: options override those (except
    /// the ones cdp-ingest fixes, which they cannot name).
    pub fn apply<'c>(&self, config: &'c mut ClientConfig) -> Result<&'c mut ClientConfig, Error> {
        let invalid = |message: String| Err(Error::Settings(message));
        let options = self.option_pairs()?;
        config
            .set("bootstrap.servers", &self.brokers)
            .set("security.protocol", self.protocol.as_str());
        let sasl_flags_used = self.sasl_mechanism.is_some()
            || self.sasl_username.is_some()
            || self.sasl_password.is_some()
            || self.oidc.is_some();
        if self.protocol.uses_sasl() {
            let Some(mechanism) = self.sasl_mechanism else {
                return invalid(format!(
                    "--kafka-security-protocol {} needs --kafka-sasl-mechanism ({})",
                    self.protocol,
                    SaslMechanism::NAMES.join(", ")
                ));
            };
            config.set("sasl.mechanism", mechanism.as_str());
            match mechanism {
                SaslMechanism::Plain | SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512 => {
                    let (Some(username), Some(password)) = (&self.sasl_username, &self.sasl_password) else {
                        return invalid(format!(
                            "--kafka-sasl-mechanism {mechanism} needs --kafka-sasl-username and --kafka-sasl-password-file"
                        ));
                    };
                    if self.oidc.is_some() {
                        return invalid(format!(
                            "the --kafka-sasl-oauthbearer-* flags are for --kafka-sasl-mechanism OAUTHBEARER, not {mechanism}"
                        ));
                    }
                    config
                        .set("sasl.username", username)
                        .set("sasl.password", password.reveal("--kafka-sasl-password-file")?);
                }
                SaslMechanism::OAuthBearer => {
                    if self.sasl_username.is_some() || self.sasl_password.is_some() {
                        return invalid(
                            "--kafka-sasl-username and --kafka-sasl-password-file are for PLAIN and SCRAM, not OAUTHBEARER (use the --kafka-sasl-oauthbearer-* flags)".into(),
                        );
                    }
                    if let Some(oidc) = &self.oidc {
                        let no_secret =
                            matches!(&oidc.client_secret, Secret::File(p) if p.as_os_str().is_empty());
                        for (missing, flag) in [
                            (
                                oidc.token_endpoint_url.is_empty(),
                                "--kafka-sasl-oauthbearer-token-endpoint-url",
                            ),
                            (oidc.client_id.is_empty(), "--kafka-sasl-oauthbearer-client-id"),
                            (no_secret, "--kafka-sasl-oauthbearer-client-secret-file"),
                        ] {
                            if missing {
                                return invalid(format!("OAUTHBEARER with OIDC needs {flag}"));
                            }
                        }
                        config
                            .set("sasl.oauthbearer.method", "oidc")
                            .set("sasl.oauthbearer.token.endpoint.url", &oidc.token_endpoint_url)
                            .set("sasl.oauthbearer.client.id", &oidc.client_id)
                            .set(
                                "sasl.oauthbearer.client.secret",
                                oidc.client_secret
                                    .reveal("--kafka-sasl-oauthbearer-client-secret-file")?,
                            );
                        if let Some(scope) = &oidc.scope {
                            config.set("sasl.oauthbearer.scope", scope);
                        }
                    }
                }
            }
        } else if sasl_flags_used {
            return invalid(format!(
                "the --kafka-sasl-* flags need --kafka-security-protocol sasl_ssl or sasl_plaintext (it is {})",
                self.protocol
            ));
        }
        let tls_flags_used = self.ssl_ca_location.is_some()
            || self.ssl_certificate_location.is_some()
            || self.ssl_key_location.is_some()
            || self.ssl_key_password.is_some();
        if self.protocol.uses_tls() {
            // With OpenSSL linked statically its built-in CA path is not the system's: probe
            // the usual locations (Debian's ca-certificates among them) unless told.
            let ca = self
                .ssl_ca_location
                .as_ref()
                .map_or_else(|| "probe".to_string(), |p| p.display().to_string());
            config.set("ssl.ca.location", ca);
            match (&self.ssl_certificate_location, &self.ssl_key_location) {
                (Some(cert), Some(key)) => {
                    config
                        .set("ssl.certificate.location", cert.display().to_string())
                        .set("ssl.key.location", key.display().to_string());
                }
                (None, None) => {}
                _ => {
                    return invalid(
                        "mutual TLS needs both --kafka-ssl-certificate-location and --kafka-ssl-key-location"
                            .into(),
                    )
                }
            }
            if let Some(password) = &self.ssl_key_password {
                if self.ssl_key_location.is_none() {
                    return invalid("--kafka-ssl-key-password-file needs --kafka-ssl-key-location".into());
                }
                config.set(
                    "ssl.key.password",
                    password.reveal("--kafka-ssl-key-password-file")?,
                );
            }
        } else if tls_flags_used {
            return invalid(format!(
                "the --kafka-ssl-* flags need --kafka-security-protocol ssl or sasl_ssl (it is {})",
                self.protocol
            ));
        }
        for (key, value) in options {
            config.set(key, value);
        }
        Ok(config)
    }

    /// A client configuration with these settings and nothing else.
    pub fn client_config(&self) -> Result<ClientConfig, Error> {
        let mut config = ClientConfig::new();
        self.apply(&mut config)?;
        Ok(config)
    }

    /// Who the clients authenticate as, for messages: the SASL username, or the OIDC client id.
    pub(crate) fn principal(&self) -> Option<&str> {
        self.sasl_username
            .as_deref()
            .or(self.oidc.as_ref().map(|o| o.client_id.as_str()))
    }
}

impl From<&str> for KafkaSettings {
    fn from(brokers: &str) -> Self {
        KafkaSettings::plaintext(brokers)
    }
}

impl From<&String> for KafkaSettings {
    fn from(brokers: &String) -> Self {
        KafkaSettings::plaintext(brokers.as_str())
    }
}

impl From<String> for KafkaSettings {
    fn from(brokers: String) -> Self {
        KafkaSettings::plaintext(brokers)
    }
}

impl From<&KafkaSettings> for KafkaSettings {
    fn from(settings: &KafkaSettings) -> Self {
        settings.clone()
    }
}

/// librdkafka's refusal of a configuration, without the value when the property is secret
/// (rdkafka's message repeats the value it was given).
pub(crate) fn create_error(error: rdkafka::error::KafkaError) -> Error {
    use rdkafka::error::KafkaError;
    match error {
        KafkaError::ClientConfig(_, description, key, value) => {
            let description = if is_sensitive(&key) && !value.is_empty() {
                description.replace(&value, "<redacted>")
            } else {
                description
            };
            let hint = if owned_property(&key).is_none() {
                " (check --kafka-option)"
            } else {
                ""
            };
            Error::Settings(format!("librdkafka refused {key}: {description}{hint}"))
        }
        other => Error::Create(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sasl() -> KafkaSettings {
        KafkaSettings {
            brokers: "127.0.0.1:9092".into(),
            protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(SaslMechanism::ScramSha512),
            sasl_username: Some("alice".into()),
            sasl_password: Some(Secret::Value("s3cret-value".into())),
            ..KafkaSettings::default()
        }
    }

    fn get(config: &ClientConfig, key: &str) -> Option<String> {
        config.get(key).map(str::to_string)
    }

    #[test]
    fn sasl_ssl_sets_librdkafka_properties() {
        let config = sasl().client_config().unwrap();
        assert_eq!(get(&config, "security.protocol").as_deref(), Some("sasl_ssl"));
        assert_eq!(get(&config, "sasl.mechanism").as_deref(), Some("SCRAM-SHA-512"));
        assert_eq!(get(&config, "sasl.username").as_deref(), Some("alice"));
        assert_eq!(get(&config, "sasl.password").as_deref(), Some("s3cret-value"));
        assert_eq!(get(&config, "ssl.ca.location").as_deref(), Some("probe"));
    }

    #[test]
    fn debug_shows_no_secret() {
        let shown = format!("{:?}", sasl());
        assert!(!shown.contains("s3cret-value"), "{shown}");
        assert!(shown.contains("alice"), "{shown}");
    }

    #[test]
    fn password_file_loses_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        std::fs::write(&path, "p@ss word\r\n").unwrap();
        assert_eq!(Secret::File(path.clone()).reveal("x").unwrap(), "p@ss word");
        std::fs::write(&path, "two\n\n").unwrap();
        assert_eq!(Secret::File(path.clone()).reveal("x").unwrap(), "two\n");
        std::fs::write(&path, "\n").unwrap();
        let error = Secret::File(path)
            .reveal("--kafka-sasl-password-file")
            .unwrap_err();
        assert!(error.to_string().contains("is empty"), "{error}");
    }

    #[test]
    fn missing_password_file_is_named_without_contents() {
        let mut settings = sasl();
        settings.sasl_password = Some(Secret::File("/nonexistent/password".into()));
        let error = settings.validate().unwrap_err().to_string();
        assert!(error.contains("--kafka-sasl-password-file"), "{error}");
        assert!(error.contains("/nonexistent/password"), "{error}");
    }

    #[test]
    fn options_are_applied_last_one_per_line() {
        let mut settings = KafkaSettings::plaintext("127.0.0.1:9092");
        settings.options = vec![
            "client.rack=rack-1".into(),
            "socket.keepalive.enable=true\n\n  reconnect.backoff.ms = 250 \n".into(),
            "ssl.cipher.suites=A,B".into(),
        ];
        let mut config = ClientConfig::new();
        config.set("reconnect.backoff.ms", "100");
        settings.apply(&mut config).unwrap();
        assert_eq!(get(&config, "client.rack").as_deref(), Some("rack-1"));
        assert_eq!(get(&config, "socket.keepalive.enable").as_deref(), Some("true"));
        assert_eq!(get(&config, "reconnect.backoff.ms").as_deref(), Some("250"));
        assert_eq!(get(&config, "ssl.cipher.suites").as_deref(), Some("A,B"));
    }

    #[test]
    fn fixed_properties_are_refused_by_name() {
        for (option, flag) in [
            ("acks=value-one", "brief S2"),
            ("enable.idempotence=value-false", "brief S2"),
            ("compression.type=value-gzip", "brief S2"),
            ("compression.codec=value-none", "brief S2"),
            ("client.id=value-x", "brief S2"),
            ("bootstrap.servers=10.0.0.1:9092", "--brokers"),
            ("sasl.password=hunter2", "--kafka-sasl-password-file"),
            ("ssl.ca.location=/value/x", "--kafka-ssl-ca-location"),
        ] {
            let mut settings = KafkaSettings::plaintext("127.0.0.1:9092");
            settings.options = vec![option.into()];
            let error = settings.validate().unwrap_err().to_string();
            let key = option.split('=').next().unwrap();
            assert!(error.contains(key) && error.contains(flag), "{option}: {error}");
            let value = option.split('=').nth(1).unwrap();
            assert!(!error.contains(value), "{option}: the value is shown: {error}");
        }
    }

    #[test]
    fn malformed_option_does_not_echo_it() {
        let mut settings = KafkaSettings::plaintext("127.0.0.1:9092");
        settings.options = vec!["client.rack=a".into(), "hunter2".into()];
        let error = settings.validate().unwrap_err().to_string();
        assert!(error.contains("number 2 is not KEY=VALUE"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn inconsistent_flags_are_refused() {
        let mut no_mechanism = sasl();
        no_mechanism.sasl_mechanism = None;
        assert!(no_mechanism
            .validate()
            .unwrap_err()
            .to_string()
            .contains("needs --kafka-sasl-mechanism"));

        let mut no_user = sasl();
        no_user.sasl_username = None;
        assert!(no_user
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--kafka-sasl-username"));

        let mut sasl_on_plaintext = sasl();
        sasl_on_plaintext.protocol = SecurityProtocol::Plaintext;
        assert!(sasl_on_plaintext
            .validate()
            .unwrap_err()
            .to_string()
            .contains("sasl_ssl or sasl_plaintext"));

        let mut ca_without_tls = KafkaSettings::plaintext("x:1");
        ca_without_tls.ssl_ca_location = Some("/ca.pem".into());
        assert!(ca_without_tls
            .validate()
            .unwrap_err()
            .to_string()
            .contains("ssl or sasl_ssl"));

        let mut cert_without_key = KafkaSettings::plaintext("x:1");
        cert_without_key.protocol = SecurityProtocol::Ssl;
        cert_without_key.ssl_certificate_location = Some("/c.pem".into());
        assert!(cert_without_key
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--kafka-ssl-key-location"));
    }

    #[test]
    fn oidc_sets_the_client_credentials_flow() {
        let settings = KafkaSettings {
            brokers: "127.0.0.1:9092".into(),
            protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(SaslMechanism::OAuthBearer),
            oidc: Some(Oidc {
                token_endpoint_url: "https://idp.example.com/token".into(),
                client_id: "cdp".into(),
                client_secret: Secret::Value("client-secret-value".into()),
                scope: Some("kafka".into()),
            }),
            ..KafkaSettings::default()
        };
        let config = settings.client_config().unwrap();
        assert_eq!(get(&config, "sasl.oauthbearer.method").as_deref(), Some("oidc"));
        assert_eq!(get(&config, "sasl.oauthbearer.scope").as_deref(), Some("kafka"));
        assert!(!format!("{settings:?}").contains("client-secret-value"));
    }

    /// librdkafka is built with TLS, SASL (PLAIN, SCRAM, OAUTHBEARER) and its HTTP client
    /// (OIDC); not GSSAPI.
    #[test]
    fn librdkafka_has_tls_sasl_and_oidc() {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", "127.0.0.1:1");
        let native = config.create_native_config().unwrap();
        let features = native.get("builtin.features").unwrap();
        for feature in [
            "ssl",
            "sasl_plain",
            "sasl_scram",
            "sasl_oauthbearer",
            "http",
            "oidc",
            "zstd",
        ] {
            assert!(
                features.split(',').any(|f| f == feature),
                "librdkafka lacks {feature}: {features}"
            );
        }
        assert!(!features.split(',').any(|f| f == "sasl_gssapi"), "{features}");
        // And an OIDC configuration is accepted by a client.
        let settings = KafkaSettings {
            brokers: "127.0.0.1:1".into(),
            protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(SaslMechanism::OAuthBearer),
            oidc: Some(Oidc {
                token_endpoint_url: "https://127.0.0.1:1/token".into(),
                client_id: "cdp".into(),
                client_secret: Secret::Value("x".into()),
                scope: None,
            }),
            ..KafkaSettings::default()
        };
        let _client: rdkafka::producer::BaseProducer = settings
            .client_config()
            .unwrap()
            .create()
            .expect("librdkafka accepts an OIDC configuration");
    }
}
