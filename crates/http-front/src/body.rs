//! Request bodies: size limits enforced while reading, a read timeout, and gzip decompression
//! that stops at the limit.
//!
//! The body is read as JSON whatever `Content-Type` says, as Segment's and RudderStack's
//! servers do: analytics.js and `sendBeacon` send `text/plain`, RudderStack's Node library
//! (axios) labels its gzip'd JSON `application/x-www-form-urlencoded`, some clients send none.
//! `Content-Encoding` is a list of codings (RFC 9110 §8.4): `gzip` (or its alias `x-gzip`,
//! §8.4.1.3) and `identity`, in any letter case; any other coding is a 415. A body that starts
//! with the gzip magic bytes is inflated even when unlabelled (JSON text cannot start so).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_ENCODING, CONTENT_LENGTH};
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

/// Most bytes of an oversized body read and discarded before its 413 is sent, and the time
/// allowed for it: a client still sending when the server closes a connection with unread
/// data gets a reset (TCP RST) instead of its answer. Past either, the 413 goes out and the
/// connection closes (a lingering close, as nginx's `lingering_close`).
const DRAIN_MAX_BYTES: usize = 4 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Reads a request body, decompressed. Refuses unsupported encodings before reading, and
/// anything over the limit without keeping (or inflating) past it; an oversized body is read
/// on and discarded (up to [`DRAIN_MAX_BYTES`], [`DRAIN_TIME`]) so that its client gets the 413.
pub(crate) async fn read(req: Request<Incoming>, limits: BodyLimits) -> Result<(Parts, Bytes), Error> {
    let (parts, mut body) = req.into_parts();
    let gzip_layers = gzip_layers(&parts)?;
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_bytes as u64) {
        drain(&mut body).await;
        return Err(Error::BodyTooLarge(limits.max_bytes));
    }
    let read = tokio::time::timeout(
        limits.timeout,
        Limited::new(&mut body, limits.max_bytes).collect(),
    )
    .await
    .map_err(|_| Error::BodyTimeout(limits.timeout))?
    .map_err(|e| match e.downcast_ref::<LengthLimitError>() {
        Some(_) => Error::BodyTooLarge(limits.max_bytes),
        None => Error::BodyRead(e.to_string()),
    });
    let collected = match read {
        Ok(collected) => collected.to_bytes(),
        Err(error @ Error::BodyTooLarge(_)) => {
            drain(&mut body).await;
            return Err(error);
        }
        Err(error) => return Err(error),
    };
    let mut body = collected;
    for _ in 0..gzip_layers {
        body = gunzip(&body, limits.max_bytes)?;
    }
    if body.starts_with(&GZIP_MAGIC) {
        body = gunzip(&body, limits.max_bytes)?;
    }
    Ok((parts, body))
}

/// Reads and discards what is left of `body`, up to [`DRAIN_MAX_BYTES`] and [`DRAIN_TIME`].
async fn drain(body: &mut Incoming) {
    let mut left = DRAIN_MAX_BYTES;
    let discard = async {
        while let Some(Ok(frame)) = body.frame().await {
            let read = frame.data_ref().map_or(0, Bytes::len);
            if read >= left {
                break;
            }
            left -= read;
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
}

/// The first two bytes of a gzip member (RFC 1952 §2.3.1).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// How many gzip codings `Content-Encoding` lists (every header line, comma-separated).
fn gzip_layers(parts: &Parts) -> Result<usize, Error> {
    let mut layers = 0;
    for value in parts.headers.get_all(CONTENT_ENCODING) {
        let text = value
            .to_str()
            .map_err(|_| Error::UnsupportedEncoding("(not ASCII)".into()))?;
        for coding in text.split(',').map(str::trim) {
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                layers += 1;
            } else if !(coding.is_empty() || coding.eq_ignore_ascii_case("identity")) {
                return Err(Error::UnsupportedEncoding(coding.to_string()));
            }
        }
    }
    // Each layer is inflated up to the limit; more than a few is an attack, not a client.
    if layers > 2 {
        return Err(Error::UnsupportedEncoding(format!("{layers} gzip layers")));
    }
    Ok(layers)
}

/// Inflates at most `max` bytes (the `gunzip` crate stops there).
fn gunzip(compressed: &[u8], max: usize) -> Result<Bytes, Error> {
    match gunzip::gunzip(compressed, max) {
        Ok(out) => Ok(Bytes::from(out)),
        Err(gunzip::GunzipError::TooLarge(max)) => Err(Error::BodyTooLarge(max)),
        Err(gunzip::GunzipError::Invalid(detail)) => Err(Error::BadGzip(detail)),
    }
}
