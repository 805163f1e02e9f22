//! The security vocabulary of [`super::KafkaSettings`]: protocols, SASL mechanisms, secrets
//! read from files, the OIDC client-credentials flow.

use std::fmt;
use std::path::PathBuf;

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
