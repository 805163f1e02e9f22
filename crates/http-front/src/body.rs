//! Request bodies: content type and encoding checks, size limits enforced while reading, a
//! read timeout, and gzip decompression that stops at the limit.

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use flate2::read::MultiGzDecoder;
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

/// Inflates at most `max` bytes; one byte more means the body is too large.
fn gunzip(compressed: &[u8], max: usize) -> Result<Bytes, Error> {
    let mut out = Vec::with_capacity(compressed.len().saturating_mul(4).min(max + 1));
    MultiGzDecoder::new(compressed)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::BadGzip(e.to_string()))?;
    if out.len() > max {
        return Err(Error::BodyTooLarge(max));
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    proptest::proptest! {
        #[test]
        fn gunzip_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048), max in 0usize..4096) {
            let _ = gunzip(&bytes, max);
        }

        #[test]
        fn gunzip_round_trips_within_the_limit_and_refuses_beyond(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096), max in 0usize..4096) {
            match gunzip(&gzip(&data), max) {
                Ok(out) => {
                    proptest::prop_assert!(data.len() <= max);
                    proptest::prop_assert_eq!(&out[..], &data[..]);
                }
                Err(Error::BodyTooLarge(limit)) => proptest::prop_assert!(data.len() > max && limit == max),
                Err(other) => proptest::prop_assert!(false, "{other}"),
            }
        }
    }

    #[test]
    fn gunzip_stops_at_the_limit() {
        let bomb = gzip(&vec![b'a'; 50 * 1024 * 1024]);
        assert!(bomb.len() < 100 * 1024);
        assert!(matches!(gunzip(&bomb, 1024), Err(Error::BodyTooLarge(1024))));
        assert_eq!(&gunzip(&gzip(b"{}"), 1024).unwrap()[..], b"{}");
        assert!(matches!(gunzip(b"not gzip", 1024), Err(Error::BadGzip(_))));
    }
}
