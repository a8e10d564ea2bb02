//! URL lists as etcd takes them: comma-separated `http://host:port` or
//! `https://host:port`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use url::Url;

/// A URL to listen on, resolved to a socket address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenUrl {
    pub url: String,
    pub addr: SocketAddr,
    /// An https URL: the listener speaks TLS.
    pub tls: bool,
}

pub fn parse_list(list: &str) -> Result<Vec<String>, String> {
    let urls: Vec<String> = list.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect();
    if urls.is_empty() {
        return Err("needs at least one URL".into());
    }
    for u in &urls {
        let parsed = Url::parse(u).map_err(|e| format!("invalid URL {u:?}: {e}"))?;
        match parsed.scheme() {
            "http" | "https" => {}
            other => return Err(format!("{u}: URL scheme must be http or https, not {other}")),
        }
        if parsed.host_str().is_none_or(str::is_empty) || parsed.port().is_none() {
            return Err(format!("{u}: URL must have a host and a port"));
        }
    }
    Ok(urls)
}

/// The socket address a listen URL binds: an IP literal, or `localhost`
/// (bound as 127.0.0.1, as a local-only default should be).
pub fn listen_addr(u: &str) -> Result<SocketAddr, String> {
    let parsed = Url::parse(u).map_err(|e| format!("invalid URL {u:?}: {e}"))?;
    let port = parsed.port().ok_or_else(|| format!("{u}: URL must have a port"))?;
    let ip = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        Some(url::Host::Domain("localhost")) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        _ => return Err(format!("{u}: listen URLs must use an IP address (or localhost), not a host name")),
    };
    Ok(SocketAddr::new(ip, port))
}

impl ListenUrl {
    pub fn parse(u: &str) -> Result<ListenUrl, String> {
        Ok(ListenUrl { url: u.to_string(), addr: listen_addr(u)?, tls: u.starts_with("https://") })
    }
}

/// An advertised URL on this machine's loopback must be one we listen on,
/// or nobody could reach it.
pub fn check_advertised(advertised: &[String], listening: &[ListenUrl]) -> Result<(), String> {
    for u in advertised {
        let Ok(addr) = listen_addr(u) else { continue };
        if !addr.ip().is_loopback() {
            continue;
        }
        let served = listening
            .iter()
            .any(|l| l.addr.port() == addr.port() && (l.addr.ip().is_unspecified() || l.addr.ip().is_loopback()));
        if !served {
            return Err(format!("{u} is not served by any listen URL"));
        }
    }
    Ok(())
}
