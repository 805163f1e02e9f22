//! [`KafkaSettings`]: where the cluster is and how to talk to it (TLS, SASL, any other
//! librdkafka property). Every Kafka client of the workspace is configured through
//! [`KafkaSettings::apply`], so a setting reaches producers, consumers and admin clients alike.

use std::path::PathBuf;

use rdkafka::config::ClientConfig;

use crate::Error;

mod security;
#[cfg(test)]
mod tests;

pub use security::{Oidc, SaslMechanism, Secret, SecurityProtocol};

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
