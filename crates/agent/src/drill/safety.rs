//! Where a drill may point: loopback and private ranges only, unless the
//! operator says `--allow-public`.
//!
//! A drill breaks things on purpose; a typo in a URL must not break
//! someone else's production. A host name counts by every address it
//! resolves to, so a name that resolves to one public address is refused.

use std::net::IpAddr;

use super::DrillError;

/// Whether `ip` is loopback or in a private range: 127/8, 10/8,
/// 172.16/12, 192.168/16, `::1`, fc00::/7 (and IPv4-mapped forms).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_private(IpAddr::V4(v4)),
            None => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
        },
    }
}

/// Refuses `host:port` (what: "probe", "Consul", ...) unless every address
/// it resolves to is private, or `allow_public`.
pub async fn check(
    what: &str,
    host: &str,
    port: u16,
    allow_public: bool,
) -> Result<(), DrillError> {
    if allow_public {
        return Ok(());
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| DrillError::Refused(format!("{what} target {host}: cannot resolve: {e}")))?
            .map(|a| a.ip())
            .collect(),
    };
    match addrs.iter().find(|ip| !is_private(**ip)) {
        Some(public) => {
            let named = if host == public.to_string() {
                String::new()
            } else {
                format!(" ({public})")
            };
            Err(DrillError::Refused(format!(
                "{what} target {host}{named} is outside loopback and private ranges; \
                 pass --allow-public to drill it anyway"
            )))
        }
        None if addrs.is_empty() => Err(DrillError::Refused(format!(
            "{what} target {host} resolves to no address"
        ))),
        None => Ok(()),
    }
}

/// Host and port of an `http://` or `https://` URL.
pub fn url_host_port(url: &reqwest::Url) -> Result<(String, u16), DrillError> {
    let host = url
        .host_str()
        .ok_or_else(|| DrillError::Usage(format!("{url}: no host")))?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| DrillError::Usage(format!("{url}: no port")))?;
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_private_ranges_only() {
        for ok in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(ok.parse().expect("ip")), "{ok}");
        }
        for public in [
            "8.8.8.8",
            "172.32.0.1",
            "2001:db8::1",
            "::ffff:1.1.1.1",
            "169.254.1.1",
        ] {
            assert!(!is_private(public.parse().expect("ip")), "{public}");
        }
    }

    #[tokio::test]
    async fn a_public_address_is_refused_unless_allowed() {
        let refused = check("probe", "203.0.113.7", 80, false).await;
        assert!(
            matches!(&refused, Err(DrillError::Refused(m)) if m.contains("--allow-public")),
            "{refused:?}"
        );
        assert!(check("probe", "203.0.113.7", 80, true).await.is_ok());
        assert!(check("probe", "localhost", 80, false).await.is_ok());
    }
}
