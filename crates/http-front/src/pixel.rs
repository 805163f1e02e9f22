//! Tracking pixels: the event a `GET` carries in its query string, and the GIF every pixel
//! request is answered with.
//!
//! - Segment's Tracking Pixel API (`GET /v1/pixel/<type>?data=...`): `data` is the event's
//!   JSON, base64-encoded (standard or URL-safe alphabet, padded or not) or as plain
//!   percent-encoded JSON ("the base64 encoding is optional", Segment's docs).
//! - RudderStack's pixel API (`GET /pixel/v1/{track,page}?writeKey=...&anonymousId=...`) and
//!   Segment's pixel without `data`: every query parameter is a field, with dotted names as
//!   paths (`context.page.url=...` is `{"context":{"page":{"url":...}}}`), values as strings.
//!
//! Both document that a pixel is answered `200` with a 1×1 GIF whatever happens: the handler
//! answers [`gif`] in every case and counts and logs the outcome like any other event's.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use simd_json::prelude::ValueBuilder;
use simd_json::OwnedValue;

use crate::auth::{decode_base64, query_param};

/// A 1×1 transparent GIF (GIF89a, one transparent pixel), 43 bytes.
const GIF: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff,
    0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00,
    0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// Most path segments of a dotted query parameter name; the rest stays in the last key.
const MAX_PATH_SEGMENTS: usize = 16;

/// The pixel response: `200`, `image/gif`, `Cache-Control: no-store` (each view is an event).
pub(crate) fn gif() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(GIF)));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("image/gif"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store, max-age=0"));
    response
}

/// The event JSON a pixel's query string carries: `data` decoded, else the fields from the
/// parameters. `writeKey` is left to authentication; a `data` that is neither base64 nor JSON
/// is passed on as it is, for the validator to reject as `invalid_json` (and file on the DLQ).
pub(crate) fn event_body(query: Option<&str>) -> Vec<u8> {
    let query = query.unwrap_or("");
    if let Some(data) = query_param(query, "data") {
        let trimmed = data.trim();
        if trimmed.starts_with('{') {
            return trimmed.as_bytes().to_vec();
        }
        // `+` in unencoded base64 arrives as a space after form decoding.
        return decode_base64(&trimmed.replace(' ', "+")).unwrap_or_else(|| trimmed.as_bytes().to_vec());
    }
    let mut event = OwnedValue::object();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if name == "writeKey" || name.is_empty() {
            continue;
        }
        let path: Vec<&str> = name.splitn(MAX_PATH_SEGMENTS, '.').collect();
        set_path(&mut event, &path, value.into_owned());
    }
    simd_json::to_vec(&event).unwrap_or_else(|_| b"{}".to_vec())
}

/// Sets `path` in `value` to `leaf`, making objects on the way (a later parameter wins).
fn set_path(value: &mut OwnedValue, path: &[&str], leaf: String) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if !matches!(value, OwnedValue::Object(_)) {
        *value = OwnedValue::object();
    }
    let OwnedValue::Object(map) = value else {
        return;
    };
    if rest.is_empty() {
        map.insert((*first).to_string(), OwnedValue::from(leaf));
        return;
    }
    let child = map.entry((*first).to_string()).or_insert_with(OwnedValue::object);
    set_path(child, rest, leaf);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(query: &str) -> String {
        String::from_utf8(event_body(Some(query))).unwrap()
    }

    #[test]
    fn data_is_base64_or_plain_json() {
        // {"userId":"u","event":"E+"} in the four base64 flavours.
        let json = r#"{"userId":"u","event":"E>?"}"#;
        use base64::Engine;
        let std = base64::engine::general_purpose::STANDARD.encode(json);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        for query in [
            format!("data={std}"),
            format!("data={}", std.replace('+', "%2B").replace('=', "%3D")),
            format!("data={url}"),
            format!("data={}", json.replace('"', "%22")),
        ] {
            assert_eq!(body(&query), json, "{query}");
        }
        assert_eq!(body("data=!!!"), "!!!");
    }

    #[test]
    fn fields_are_dotted_query_parameters() {
        let got: OwnedValue = simd_json::to_owned_value(
            &mut body("writeKey=K&anonymousId=a&event=Opened&context.page.url=https%3A%2F%2Fx&properties.n=1&context.page.title=T")
                .into_bytes(),
        )
        .unwrap();
        let want: OwnedValue = simd_json::to_owned_value(
            &mut br#"{"anonymousId":"a","event":"Opened","context":{"page":{"url":"https://x","title":"T"}},"properties":{"n":"1"}}"#.to_vec(),
        )
        .unwrap();
        assert_eq!(got, want);
        // A deeper name keeps its tail as one key; a later parameter replaces a scalar.
        let deep = format!("a{}", ".b".repeat(40));
        let got = body(&format!("{deep}=1&x=1&x.y=2"));
        assert!(got.contains(r#""x":{"y":"2"}"#), "{got}");
        assert!(got.matches('{').count() <= MAX_PATH_SEGMENTS + 2, "{got}");
    }
}
