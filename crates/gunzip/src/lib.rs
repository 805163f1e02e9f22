//! Gzip decoding with a hard output limit: decoding stops one byte past the limit, so a gzip
//! bomb costs at most the limit in memory and time. Multi-member streams are accepted.

use std::io::Read;

use flate2::read::MultiGzDecoder;

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GunzipError {
    /// The decoded data is over the limit (decoding stopped there).
    #[error("decoded body over the limit of {0} bytes")]
    TooLarge(usize),
    /// Not gzip, or corrupt.
    #[error("not valid gzip: {0}")]
    Invalid(String),
}

/// Decodes `compressed`, producing at most `max` bytes.
pub fn gunzip(compressed: &[u8], max: usize) -> Result<Vec<u8>, GunzipError> {
    let mut out = Vec::with_capacity(compressed.len().saturating_mul(4).min(max.saturating_add(1)));
    MultiGzDecoder::new(compressed)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| GunzipError::Invalid(e.to_string()))?;
    if out.len() > max {
        return Err(GunzipError::TooLarge(max));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use proptest::prelude::*;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let bomb = gzip(&vec![b'a'; 50 * 1024 * 1024]);
        assert!(bomb.len() < 100 * 1024);
        assert_eq!(gunzip(&bomb, 1024), Err(GunzipError::TooLarge(1024)));
        assert_eq!(gunzip(&gzip(b"{}"), 1024).unwrap(), b"{}");
        assert!(matches!(gunzip(b"not gzip", 1024), Err(GunzipError::Invalid(_))));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), max in 0usize..4096) {
            let _ = gunzip(&bytes, max);
        }

        #[test]
        fn round_trips_within_the_limit_and_refuses_beyond(data in proptest::collection::vec(any::<u8>(), 0..4096), max in 0usize..4096) {
            match gunzip(&gzip(&data), max) {
                Ok(out) => {
                    prop_assert!(data.len() <= max);
                    prop_assert_eq!(out, data);
                }
                Err(GunzipError::TooLarge(limit)) => prop_assert!(data.len() > max && limit == max),
                Err(other) => prop_assert!(false, "{other}"),
            }
        }
    }
}
