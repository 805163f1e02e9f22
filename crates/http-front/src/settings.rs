//! `GET /v1/projects/<writeKey>/settings`: what analytics.js loads from Segment's CDN, served
//! by the edge so that a site sets only `cdnURL` (and, optionally, `apiHost`) and never calls
//! Segment.
//!
//! analytics.js 2.0 (`@segment/analytics-next`, `browser/settings.ts` and the `segmentio`
//! plugin) reads from it: `integrations["Segment.io"]` (`apiKey`, `apiHost` = host and path
//! without the scheme, `protocol`), `plan`, `metrics.sampleRate` (0: it sends no telemetry to
//! Segment), and empty `remotePlugins`, `middlewareSettings`, `enabledMiddleware`,
//! `edgeFunction` (nothing else to load).

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderValue, CACHE_CONTROL, HOST};
use hyper::{Response, StatusCode};
use serde::Serialize;

use crate::error::json_response;
use crate::Error;

/// Where clients reach this edge: `protocol` and `api_host` (host, port and path prefix,
/// without a trailing slash), from `--public-url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    /// `http` or `https`.
    pub protocol: String,
    /// Host, optional port and path prefix, e.g. `ingest.example.com` or `example.com/segment`.
    pub host: String,
}

impl std::str::FromStr for PublicUrl {
    type Err = String;

    /// Parses `http(s)://host[:port][/prefix]`.
    fn from_str(url: &str) -> Result<Self, String> {
        let (protocol, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{url:?} is not a URL: write it as https://host[:port][/prefix]"))?;
        let protocol = protocol.to_ascii_lowercase();
        if protocol != "http" && protocol != "https" {
            return Err(format!("{url:?}: the scheme must be http or https"));
        }
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains(['?', '#', ' ']) {
            return Err(format!("{url:?}: expected https://host[:port][/prefix]"));
        }
        Ok(PublicUrl {
            protocol,
            host: host.to_string(),
        })
    }
}

/// The settings response for `write_key` (already known and enabled): `public` when set,
/// else the request's `Host` over `http`. Unknown `Host`: 404, like an unknown key.
pub(crate) fn response(
    write_key: &str,
    public: Option<&PublicUrl>,
    headers: &HeaderMap,
) -> Result<Response<Full<Bytes>>, Error> {
    let (protocol, host) = match public {
        Some(p) => (p.protocol.clone(), p.host.clone()),
        None => {
            let host = headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| !h.is_empty())
                .ok_or_else(|| Error::NotFound("settings without --public-url need a Host header".into()))?;
            ("http".to_string(), host.to_string())
        }
    };
    let mut response = json_response(StatusCode::OK, &Settings::new(write_key, &protocol, &host));
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    Ok(response)
}

/// The settings document (Segment's `LegacySettings` shape).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Settings<'a> {
    integrations: Integrations<'a>,
    plan: Plan,
    edge_function: Empty,
    analytics_next_enabled: bool,
    middleware_settings: Empty,
    enabled_middleware: Empty,
    metrics: Metrics,
    legacy_video_plugins_enabled: bool,
    remote_plugins: [(); 0],
}

#[derive(Serialize)]
struct Integrations<'a> {
    #[serde(rename = "Segment.io")]
    segment_io: SegmentIo<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SegmentIo<'a> {
    api_key: &'a str,
    api_host: String,
    protocol: &'a str,
    unbundled_integrations: [(); 0],
    add_bundled_metadata: bool,
    maybe_bundled_config_ids: Empty,
}

#[derive(Serialize)]
struct Plan {
    track: Default,
    identify: Default,
    group: Default,
}

#[derive(Serialize)]
struct Default {
    #[serde(rename = "__default")]
    default: Enabled,
}

#[derive(Serialize)]
struct Enabled {
    enabled: bool,
    integrations: Empty,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Metrics {
    sample_rate: u8,
}

#[derive(Serialize)]
struct Empty {}

impl<'a> Settings<'a> {
    fn new(write_key: &'a str, protocol: &'a str, host: &str) -> Self {
        let enabled = || Default {
            default: Enabled {
                enabled: true,
                integrations: Empty {},
            },
        };
        Settings {
            integrations: Integrations {
                segment_io: SegmentIo {
                    api_key: write_key,
                    api_host: format!("{host}/v1"),
                    protocol,
                    unbundled_integrations: [],
                    add_bundled_metadata: false,
                    maybe_bundled_config_ids: Empty {},
                },
            },
            plan: Plan {
                track: enabled(),
                identify: enabled(),
                group: enabled(),
            },
            edge_function: Empty {},
            analytics_next_enabled: true,
            middleware_settings: Empty {},
            enabled_middleware: Empty {},
            metrics: Metrics { sample_rate: 0 },
            legacy_video_plugins_enabled: false,
            remote_plugins: [],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_urls() {
        let ok = |p: &str, h: &str| {
            Ok(PublicUrl {
                protocol: p.into(),
                host: h.into(),
            })
        };
        assert_eq!(
            "https://ingest.example.com".parse(),
            ok("https", "ingest.example.com")
        );
        assert_eq!("HTTP://127.0.0.1:8080/".parse(), ok("http", "127.0.0.1:8080"));
        assert_eq!("https://example.com/seg/".parse(), ok("https", "example.com/seg"));
        for bad in ["ingest.example.com", "ftp://x", "https://", "https://x?y"] {
            assert!(bad.parse::<PublicUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_point_analytics_js_at_the_edge() {
        let value = simd_json::to_string(&Settings::new("K", "https", "ingest.example.com")).unwrap();
        assert!(
            value.starts_with(
                r#"{"integrations":{"Segment.io":{"apiKey":"K","apiHost":"ingest.example.com/v1","protocol":"https","#
            ),
            "{value}"
        );
        assert!(value.contains(r#""metrics":{"sampleRate":0}"#), "{value}");
        assert!(value.ends_with(r#""remotePlugins":[]}"#), "{value}");
    }
}
