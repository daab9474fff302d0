//! Fetching a client's URL safely: http(s) only, public addresses only (checked before fetching and
//! again by the resolver each connection uses, so a redirect or a changed DNS answer cannot reach a
//! private address), a size limit and a timeout.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Not a URL we fetch (scheme, syntax): 400.
    #[error("url `{url}`: {detail}")]
    Invalid { url: String, detail: String },
    /// A private, loopback or otherwise non-public address: 403.
    #[error("url `{url}`: refused: {detail}")]
    Refused { url: String, detail: String },
    /// Over the size limit: 413.
    #[error("url `{url}`: larger than the upload limit of {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    /// The remote side failed: 502.
    #[error("url `{url}`: fetching failed: {detail}")]
    Upstream { url: String, detail: String },
}

/// Whether `ip` is an ordinary public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            let nat64 = s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0];
            if nat64 {
                let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
                return is_public_v4(v4);
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
                || (s[0] & 0xffc0) == 0xfec0 // site local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || v6 == Ipv6Addr::from([0u16, 0, 0, 0, 0, 0, 0, 1]))
        }
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    !(v4.is_private()
        || v4.is_loopback()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
        || o[0] >= 240)
}

/// The public addresses `host:port` resolves to; an error naming the first non-public one otherwise.
fn resolve_public(netloc: &str) -> std::io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = netloc.to_socket_addrs()?.collect();
    if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
        return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, format!("`{netloc}` resolves to {}, not a public address", bad.ip())));
    }
    if addrs.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("`{netloc}` resolves to no address")));
    }
    Ok(addrs)
}

/// Checks `url` (scheme, host, the addresses it resolves to) without fetching it.
pub fn check_url(url: &str) -> Result<url::Url, FetchError> {
    let invalid = |detail: &str| FetchError::Invalid { url: url.to_string(), detail: detail.to_string() };
    let parsed = url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("only http:// and https:// URLs are fetched"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid("URLs with credentials are not fetched"));
    }
    let host = parsed.host().ok_or_else(|| invalid("no host"))?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    let netloc = match host {
        url::Host::Domain(d) => format!("{d}:{port}"),
        url::Host::Ipv4(ip) => format!("{ip}:{port}"),
        url::Host::Ipv6(ip) => format!("[{ip}]:{port}"),
    };
    resolve_public(&netloc).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => FetchError::Refused { url: url.to_string(), detail: e.to_string() },
        _ => FetchError::Upstream { url: url.to_string(), detail: e.to_string() },
    })?;
    Ok(parsed)
}

/// Fetches `url` into `dest` (at most `limit` bytes), blocking.
pub fn fetch(url: &str, dest: &Path, limit: u64, timeout: Duration) -> Result<(), FetchError> {
    let parsed = check_url(url)?;
    let agent = ureq::AgentBuilder::new().timeout(timeout).redirects(5).resolver(|netloc: &str| resolve_public(netloc)).build();
    let upstream = |detail: String| FetchError::Upstream { url: url.to_string(), detail };
    let response = agent.request_url("GET", &parsed).call().map_err(|e| match e {
        ureq::Error::Transport(t) if t.to_string().contains("not a public address") => FetchError::Refused { url: url.to_string(), detail: t.to_string() },
        other => upstream(other.to_string()),
    })?;
    if let Some(n) = response.header("content-length").and_then(|v| v.parse::<u64>().ok())
        && n > limit
    {
        return Err(FetchError::TooLarge { url: url.to_string(), limit });
    }
    let mut body = response.into_reader().take(limit + 1);
    let mut file = std::fs::File::create(dest).map_err(|e| upstream(format!("writing the download: {e}")))?;
    let n = std::io::copy(&mut body, &mut file).map_err(|e| upstream(e.to_string()))?;
    if n > limit {
        return Err(FetchError::TooLarge { url: url.to_string(), limit });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_fetched() {
        for ip in ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0", "100.64.0.1", "::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1", "64:ff9b::a00:1", "255.255.255.255", "224.0.0.1"] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "151.101.1.1", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        for url in ["http://127.0.0.1:8080/x.mp4", "http://localhost/x.mp4", "http://[::1]/x", "http://169.254.169.254/latest/meta-data", "http://10.0.0.1/a.mp4"] {
            assert!(matches!(check_url(url), Err(FetchError::Refused { .. })), "{url}: {:?}", check_url(url));
        }
        for url in ["file:///etc/passwd", "ftp://example.com/a.mp4", "not a url", "http://user:pw@example.com/a.mp4"] {
            assert!(matches!(check_url(url), Err(FetchError::Invalid { .. })), "{url}");
        }
    }
}
