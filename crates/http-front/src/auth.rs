//! Where a request's write key is found, and which place wins.
//!
//! The libraries put the write key in different places:
//!
//! 1. the `Authorization` header: `Basic base64(key:)` (Segment's HTTP API, analytics.js 2.0,
//!    the mobile and server libraries, RudderStack's), also `base64(key)` without the colon,
//!    and the same base64 credential under another scheme name (`Bearer`, `Token`, none) as
//!    community libraries send it; under a scheme other than Basic, a credential that is not
//!    base64 text is taken as the key itself;
//! 2. the `writeKey` query parameter (`navigator.sendBeacon` and pixels cannot set headers);
//! 3. `writeKey` at the top of the body (analytics.js sends it there too);
//! 4. `writeKey` in a batch's items (the first item that has one).
//!
//! **The first place in that order that holds a key decides**; later places are not
//! consulted, so a batch whose items name other keys is still filed under the header's
//! source. A header without a usable credential (`Basic !!!`) is skipped when a later place
//! holds a key, and is a 401 ("malformed") when none does.

use base64::Engine;
use hyper::header::{self, HeaderMap};

/// A write key found before the body is read, or why the header could not give one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EarlyKey {
    /// A key from the header or the query string.
    Found(String),
    /// An `Authorization` header without a usable credential, and no `writeKey` parameter.
    Malformed,
    /// Neither place has one: the body may.
    Absent,
}

/// The write key from the `Authorization` header, else from the `writeKey` query parameter.
pub(crate) fn early_key(headers: &HeaderMap, query: Option<&str>) -> EarlyKey {
    let mut malformed = false;
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        match value.to_str().ok().and_then(authorization_key) {
            Some(key) => return EarlyKey::Found(key),
            None => malformed = true,
        }
    }
    if let Some(key) = query
        .and_then(|q| query_param(q, "writeKey"))
        .filter(|k| !k.is_empty())
    {
        return EarlyKey::Found(key);
    }
    if malformed {
        EarlyKey::Malformed
    } else {
        EarlyKey::Absent
    }
}

/// The write key an `Authorization` value carries, if any.
fn authorization_key(value: &str) -> Option<String> {
    let value = value.trim();
    let (scheme, credential) = match value.split_once(' ') {
        Some((scheme, credential)) => (Some(scheme), credential.trim()),
        None => (None, value),
    };
    if credential.is_empty() {
        return None;
    }
    let decoded = decode_base64(credential).and_then(|bytes| String::from_utf8(bytes).ok());
    let key = match (decoded, scheme) {
        (Some(text), _) => text
            .split_once(':')
            .map_or(text.clone(), |(user, _)| user.to_string()),
        // `Bearer KEY`: under a named scheme other than Basic, a credential that is not
        // base64 text is the key itself.
        (None, Some(scheme)) if !scheme.eq_ignore_ascii_case("basic") => credential.to_string(),
        (None, _) => return None,
    };
    (!key.is_empty() && !key.contains(char::is_control)).then_some(key)
}

/// Base64 with or without padding, standard or URL-safe alphabet.
pub(crate) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let text = text.trim();
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
}

/// The first value of `name` in a query string, percent-decoded (`+` as a space).
pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn key(authorization: Option<&'static str>, query: Option<&str>) -> EarlyKey {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
        }
        early_key(&headers, query)
    }

    #[test]
    fn write_key_places_as_a_table() {
        let found = |k: &str| EarlyKey::Found(k.to_string());
        let cases = [
            // Basic base64("K:"), base64("K"), base64("K:secret"), unpadded, any case.
            (Some("Basic Szo="), None, found("K")),
            (Some("Basic Sw=="), None, found("K")),
            (Some("Basic SzpzZWNyZXQ="), None, found("K")),
            (Some("Basic Szo"), None, found("K")),
            (Some("basic  Szo=  "), None, found("K")),
            (Some("BASIC Szo="), None, found("K")),
            // The same credential under other schemes, or none.
            (Some("Bearer Szo="), None, found("K")),
            (Some("Token Szo="), None, found("K")),
            (Some("Szo="), None, found("K")),
            // A raw key under a non-Basic scheme.
            (Some("Bearer raw-key_1"), None, found("raw-key_1")),
            // Unusable headers.
            (Some("Basic !!!"), None, EarlyKey::Malformed),
            (Some("Basic Og=="), None, EarlyKey::Malformed), // ":" : empty user
            (Some("Basic "), None, EarlyKey::Malformed),
            (Some("Bearer"), None, EarlyKey::Malformed),
            (Some("Bearer  "), None, EarlyKey::Malformed),
            // The query string: after the header, before the body.
            (None, Some("writeKey=Q"), found("Q")),
            (None, Some("a=1&writeKey=Q%2B1+x"), found("Q+1 x")),
            (None, Some("writeKey="), EarlyKey::Absent),
            (Some("Basic Szo="), Some("writeKey=Q"), found("K")),
            (Some("Basic !!!"), Some("writeKey=Q"), found("Q")),
            (None, None, EarlyKey::Absent),
            (None, Some("data=eyJ9"), EarlyKey::Absent),
        ];
        for (authorization, query, expected) in cases {
            assert_eq!(key(authorization, query), expected, "{authorization:?} {query:?}");
        }
    }
}
