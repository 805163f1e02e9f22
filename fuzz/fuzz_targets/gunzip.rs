//! Any bytes as a gzip body: decoded within the limit, refused, or reported invalid; never a
//! panic, never more than the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(out) = gunzip::gunzip(data, 64 * 1024) {
        assert!(out.len() <= 64 * 1024);
    }
});
