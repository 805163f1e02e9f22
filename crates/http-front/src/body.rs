//! Request bodies: content type and encoding checks, size limits enforced while reading, a
//! read timeout, and gzip decompression that stops at the limit.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::Request;

use crate::Error;

/// Body limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimits {
    /// Most bytes read from the wire, and most bytes after decompression.
    pub max_bytes: usize,
    /// Time allowed to receive the whole body.
    pub timeout: Duration,
}

/// Reads a request body as JSON text, decompressed. Refuses unsupported types and encodings
/// before reading, and anything over the limit without reading (or inflating) past it.
pub(crate) async fn read(req: Request<Incoming>, limits: BodyLimits) -> Result<(Parts, Bytes), Error> {
    let (parts, body) = req.into_parts();
    check_content_type(&parts)?;
    let gzip = match parts
        .headers
        .get(CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim())
    {
        None | Some("") | Some("identity") => false,
        Some(e) if e.eq_ignore_ascii_case("gzip") => true,
        Some(other) => return Err(Error::UnsupportedEncoding(other.to_string())),
    };
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_bytes as u64) {
        return Err(Error::BodyTooLarge(limits.max_bytes));
    }
    let collected = tokio::time::timeout(limits.timeout, Limited::new(body, limits.max_bytes).collect())
        .await
        .map_err(|_| Error::BodyTimeout(limits.timeout))?
        .map_err(|e| match e.downcast_ref::<LengthLimitError>() {
            Some(_) => Error::BodyTooLarge(limits.max_bytes),
            None => Error::BodyRead(e.to_string()),
        })?
        .to_bytes();
    let body = if gzip {
        gunzip(&collected, limits.max_bytes)?
    } else {
        collected
    };
    Ok((parts, body))
}

fn check_content_type(parts: &Parts) -> Result<(), Error> {
    let Some(value) = parts.headers.get(CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or("?");
    let media = text.split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case("application/json") || media.eq_ignore_ascii_case("text/plain") {
        Ok(())
    } else {
        Err(Error::UnsupportedContentType(text.to_string()))
    }
}

/// Inflates at most `max` bytes (the `gunzip` crate stops there).
fn gunzip(compressed: &[u8], max: usize) -> Result<Bytes, Error> {
    match gunzip::gunzip(compressed, max) {
        Ok(out) => Ok(Bytes::from(out)),
        Err(gunzip::GunzipError::TooLarge(max)) => Err(Error::BodyTooLarge(max)),
        Err(gunzip::GunzipError::Invalid(detail)) => Err(Error::BadGzip(detail)),
    }
}
