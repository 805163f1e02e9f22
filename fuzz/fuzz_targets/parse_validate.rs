//! Any bytes, as any endpoint's body: parsing and validation give events or rejections,
//! never a panic, and every accepted event serialises to JSON.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use event_model::{normalize, parse_body, Endpoint, EventType, Limits, Received};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let endpoint = match selector as usize % 7 {
        6 => Endpoint::Batch,
        i => Endpoint::Single(EventType::ALL[i]),
    };
    let fixed = match endpoint {
        Endpoint::Single(t) => Some(t),
        Endpoint::Batch => None,
    };
    let limits = Limits::default();
    let received = Received {
        at: chrono::DateTime::UNIX_EPOCH,
        workspace_id: "w".into(),
        source_id: "s".into(),
        client_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    };
    let mut body = body.to_vec();
    if let Ok(parsed) = parse_body(&mut body, endpoint, &limits) {
        for item in &parsed.items {
            if let Ok(event) = normalize(item, fixed, &parsed.shared, &received, &limits) {
                let mut value = event.value.clone();
                assert!(simd_json::to_owned_value(&mut value).is_ok(), "an accepted event is not JSON");
            }
        }
    };
});
