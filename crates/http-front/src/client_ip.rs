//! The client address recorded with each event: the peer, or behind trusted proxies
//! (`--trusted-proxies`) the last untrusted `X-Forwarded-For` hop.

use std::net::IpAddr;

use hyper::header::HeaderMap;
use ipnet::IpNet;

/// The client address: the peer, or behind trusted proxies the last untrusted
/// `X-Forwarded-For` address.
pub(crate) fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut ip = peer;
    for hop in forwarded.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(addr) if is_trusted(&addr) => ip = addr,
            Ok(addr) => return addr,
            Err(_) => break,
        }
    }
    ip
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn forwarded_for_is_trusted_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 203.0.113.9, 10.0.0.2"),
        );
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(
            client_ip(&headers, proxy, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(&headers, stranger, &trusted), stranger);
        assert_eq!(client_ip(&HeaderMap::new(), proxy, &trusted), proxy);
    }
}
