//! Unit tests of the Kafka settings.
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
