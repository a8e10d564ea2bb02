//! Connections to peers by URL, with names resolved by hickory rather than
//! getaddrinfo: a static binary in a FROM-scratch image has no NSS modules,
//! and names like docker compose service names must still resolve (through
//! the /etc/resolv.conf and /etc/hosts the container runtime provides).
//! Names are resolved at every connect, so a peer that comes back with a new
//! address is found again. https URLs get a TLS session (the peer TLS
//! config, re-read when its files change) with the URL's host as the name
//! the certificate must carry.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::tls::{DialTls, Transport};

#[derive(Clone, Default)]
pub struct Dialer {
    tls: Option<Arc<DialTls>>,
}

impl Dialer {
    pub fn new(tls: Option<Arc<DialTls>>) -> Dialer {
        Dialer { tls }
    }
}

/// A connection that could not be made: nothing was sent on it.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {uri}: {source}")]
pub struct DialError {
    uri: Uri,
    source: io::Error,
}

/// A peer that does not answer a connect within this is treated as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) fn resolver() -> Option<&'static Arc<TokioResolver>> {
    static RESOLVER: OnceLock<Option<Arc<TokioResolver>>> = OnceLock::new();
    RESOLVER
        .get_or_init(|| match TokioResolver::builder_tokio().and_then(|b| b.build()) {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                tracing::warn!(error = %e, "no DNS configuration; peer URLs must use IP addresses");
                None
            }
        })
        .as_ref()
}

pub(crate) async fn addresses(host: &str) -> io::Result<Vec<IpAddr>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    if host == "localhost" {
        return Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    }
    let resolver = resolver().ok_or_else(|| io::Error::other(format!("cannot resolve {host}: no DNS configuration")))?;
    let found = resolver.lookup_ip(host).await.map_err(|e| io::Error::other(format!("cannot resolve {host}: {e}")))?;
    Ok(found.iter().collect())
}

async fn connect(uri: &Uri) -> io::Result<TcpStream> {
    let host = uri.host().ok_or_else(|| io::Error::other("no host"))?;
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    let mut last = io::Error::other(format!("{host} has no address"));
    for ip in addresses(host).await? {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((ip, port))).await {
            Ok(Ok(stream)) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = io::Error::new(io::ErrorKind::TimedOut, format!("no answer from {ip}:{port}")),
        }
    }
    Err(last)
}

async fn secure(uri: &Uri, tcp: TcpStream, tls: Option<&DialTls>) -> io::Result<Transport> {
    if uri.scheme_str() != Some("https") {
        return Ok(Transport::plain(tcp));
    }
    let tls = tls.ok_or_else(|| io::Error::other("an https peer URL, but this member has no peer TLS configured"))?;
    let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string()).map_err(|e| io::Error::other(format!("{host}: {e}")))?;
    let stream = TlsConnector::from(tls.get()).connect(name, tcp).await?;
    Ok(Transport::tls(stream.into()))
}

async fn dial(uri: Uri, tls: Option<Arc<DialTls>>) -> Result<TokioIo<Transport>, DialError> {
    let connected = match connect(&uri).await {
        Ok(tcp) => tokio::time::timeout(CONNECT_TIMEOUT, secure(&uri, tcp, tls.as_deref()))
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "no TLS handshake"))),
        Err(e) => Err(e),
    };
    match connected {
        Ok(stream) => Ok(TokioIo::new(stream)),
        Err(source) => Err(DialError { uri, source }),
    }
}

impl tower::Service<Uri> for Dialer {
    type Response = TokioIo<Transport>;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, DialError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(dial(uri, self.tls.clone()))
    }
}
