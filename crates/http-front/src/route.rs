//! Routing: which endpoint a method and path name, as a pure function tested as a table.
//!
//! The paths are those the Segment and RudderStack libraries and HTTP APIs use:
//!
//! - Segment HTTP Tracking API: `/v1/{track,identify,page,screen,group,alias}`, `/v1/batch`,
//!   `/v1/import`;
//! - analytics.js 2.0 (`@segment/analytics-next`, `segmentio` plugin) and the mobile libraries:
//!   the one-letter aliases `/v1/{t,i,p,s,g,a}` and `/v1/b`;
//! - RudderStack: the same `/v1/...` paths, and `/beacon/v1/batch` (`navigator.sendBeacon`);
//! - tracking pixels: Segment's `GET /v1/pixel/<type>`, RudderStack's `GET /pixel/v1/{track,page}`;
//! - analytics.js settings: `GET /v1/projects/<writeKey>/settings`.
//!
//! Harmless variants are the same endpoint: a trailing slash, and repeated slashes (an
//! `apiHost` configured with a trailing slash). Anything else is 404.

use event_model::{Endpoint, EventType};
use hyper::Method;

use crate::Error;

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `POST` of events; the label names the endpoint in metrics.
    Events(Endpoint, &'static str),
    /// `GET` of a tracking pixel carrying one event of this type.
    Pixel(EventType, &'static str),
    /// `GET /v1/projects/<writeKey>/settings`.
    Settings(String),
    /// CORS preflight (`OPTIONS`) of an event or settings path.
    Preflight,
    /// `GET /healthz`.
    Healthz,
    /// `GET /readyz`.
    Readyz,
}

/// What a path names, whatever the method.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Events(Endpoint, &'static str),
    Pixel(EventType, &'static str),
    Settings(String),
    Healthz,
    Readyz,
}

impl Route {
    /// The route of `method` and `path`: [`Error::NotFound`] for an unknown path,
    /// [`Error::MethodNotAllowed`] for a known path with another method.
    pub(crate) fn of(method: &Method, path: &str) -> Result<Route, Error> {
        let Some(target) = target(path) else {
            return Err(Error::NotFound(path.to_string()));
        };
        let get = method == Method::GET || method == Method::HEAD;
        match target {
            Target::Events(endpoint, label) if method == Method::POST => Ok(Route::Events(endpoint, label)),
            Target::Events(..) | Target::Pixel(..) | Target::Settings(_) if method == Method::OPTIONS => {
                Ok(Route::Preflight)
            }
            Target::Pixel(event_type, label) if get => Ok(Route::Pixel(event_type, label)),
            Target::Settings(key) if get => Ok(Route::Settings(key)),
            Target::Healthz if get => Ok(Route::Healthz),
            Target::Readyz if get => Ok(Route::Readyz),
            _ => Err(Error::MethodNotAllowed(method.to_string())),
        }
    }

    /// The route's label in metrics (a closed set).
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Route::Events(_, label) | Route::Pixel(_, label) => label,
            Route::Settings(_) => "settings",
            Route::Preflight => "preflight",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
        }
    }

    /// Whether the route takes events (its refusals are counted as refused events).
    pub(crate) fn takes_events(&self) -> bool {
        matches!(self, Route::Events(..) | Route::Pixel(..))
    }
}

/// The endpoint a path names, after dropping empty segments (trailing and repeated slashes).
fn target(path: &str) -> Option<Target> {
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let first = segments.next()?;
    let second = segments.next();
    let third = segments.next();
    let fourth = segments.next();
    if segments.next().is_some() {
        return None;
    }
    let target = match (first, second, third, fourth) {
        ("v1", Some(name), None, None) => events(name)?,
        ("v1", Some("pixel"), Some(name), None) => {
            let event_type = EventType::from_name(name)?;
            Target::Pixel(event_type, "pixel")
        }
        ("v1", Some("projects"), Some(key), Some("settings")) => Target::Settings(key.to_string()),
        ("beacon", Some("v1"), Some("batch"), None) => Target::Events(Endpoint::Batch, "beacon"),
        ("pixel", Some("v1"), Some(name @ ("track" | "page")), None) => {
            Target::Pixel(EventType::from_name(name)?, "pixel")
        }
        ("healthz", None, None, None) => Target::Healthz,
        ("readyz", None, None, None) => Target::Readyz,
        _ => return None,
    };
    Some(target)
}

/// `/v1/<name>`: the full names, analytics.js 2.0's one-letter aliases, batch and import.
fn events(name: &str) -> Option<Target> {
    let single = |t: EventType| Some(Target::Events(Endpoint::Single(t), t.as_str()));
    match name {
        "track" | "t" => single(EventType::Track),
        "identify" | "i" => single(EventType::Identify),
        "page" | "p" => single(EventType::Page),
        "screen" | "s" => single(EventType::Screen),
        "group" | "g" => single(EventType::Group),
        "alias" | "a" => single(EventType::Alias),
        "batch" | "b" => Some(Target::Events(Endpoint::Batch, "batch")),
        "import" => Some(Target::Events(Endpoint::Batch, "import")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_as_a_table() {
        use EventType::*;
        let track = Route::Events(Endpoint::Single(Track), "track");
        let batch = Route::Events(Endpoint::Batch, "batch");
        let ok = |r: Route| Ok::<_, ()>(r);
        let cases: Vec<(Method, &str, Result<Route, ()>)> = vec![
            (Method::POST, "/v1/track", ok(track.clone())),
            (Method::POST, "/v1/t", ok(track.clone())),
            (Method::POST, "/v1/t/", ok(track.clone())),
            (Method::POST, "//v1/t", ok(track.clone())),
            (Method::POST, "/v1//track//", ok(track.clone())),
            (
                Method::POST,
                "/v1/i",
                ok(Route::Events(Endpoint::Single(Identify), "identify")),
            ),
            (
                Method::POST,
                "/v1/p",
                ok(Route::Events(Endpoint::Single(Page), "page")),
            ),
            (
                Method::POST,
                "/v1/s",
                ok(Route::Events(Endpoint::Single(Screen), "screen")),
            ),
            (
                Method::POST,
                "/v1/g",
                ok(Route::Events(Endpoint::Single(Group), "group")),
            ),
            (
                Method::POST,
                "/v1/a",
                ok(Route::Events(Endpoint::Single(Alias), "alias")),
            ),
            (
                Method::POST,
                "/v1/alias",
                ok(Route::Events(Endpoint::Single(Alias), "alias")),
            ),
            (Method::POST, "/v1/batch", ok(batch.clone())),
            (Method::POST, "/v1/b", ok(batch.clone())),
            (Method::POST, "/v1/b/", ok(batch.clone())),
            (
                Method::POST,
                "/v1/import",
                ok(Route::Events(Endpoint::Batch, "import")),
            ),
            (
                Method::POST,
                "/beacon/v1/batch",
                ok(Route::Events(Endpoint::Batch, "beacon")),
            ),
            (
                Method::POST,
                "/beacon/v1/batch/",
                ok(Route::Events(Endpoint::Batch, "beacon")),
            ),
            (Method::OPTIONS, "/v1/b", ok(Route::Preflight)),
            (Method::OPTIONS, "/v1/t/", ok(Route::Preflight)),
            (Method::OPTIONS, "/beacon/v1/batch", ok(Route::Preflight)),
            (Method::OPTIONS, "/v1/projects/k/settings", ok(Route::Preflight)),
            (Method::GET, "/v1/pixel/track", ok(Route::Pixel(Track, "pixel"))),
            (Method::GET, "/v1/pixel/screen", ok(Route::Pixel(Screen, "pixel"))),
            (Method::HEAD, "/v1/pixel/page/", ok(Route::Pixel(Page, "pixel"))),
            (Method::GET, "/pixel/v1/track", ok(Route::Pixel(Track, "pixel"))),
            (Method::GET, "/pixel/v1/page", ok(Route::Pixel(Page, "pixel"))),
            (
                Method::GET,
                "/v1/projects/key-1/settings",
                ok(Route::Settings("key-1".into())),
            ),
            (Method::GET, "/healthz", ok(Route::Healthz)),
            (Method::HEAD, "/readyz/", ok(Route::Readyz)),
            (Method::GET, "/v1/track", Err(())),
            (Method::POST, "/healthz", Err(())),
            (Method::POST, "/v1/pixel/track", Err(())),
        ];
        for (method, path, expected) in cases {
            let got = Route::of(&method, path).map_err(|e| assert!(matches!(e, Error::MethodNotAllowed(_))));
            assert_eq!(got, expected, "{method} {path}");
        }
        for path in [
            "/",
            "",
            "/v1",
            "/v1/",
            "/v1/x",
            "/v1/purchase",
            "/v1/track/extra",
            "/v2/track",
            "/V1/track",
            "/pixel/v1/identify",
            "/v1/pixel/purchase",
            "/v1/projects/k",
            "/beacon/v1/track",
            "/metrics",
        ] {
            assert!(
                matches!(Route::of(&Method::POST, path), Err(Error::NotFound(_))),
                "{path} must be 404"
            );
        }
    }
}
