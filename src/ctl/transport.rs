//! How `cairn ctl` and `cairn healthcheck` reach a member: etcdctl's
//! endpoints (`host:port` or a URL) and its TLS flags `--cacert`, `--cert`,
//! `--key` and `--insecure-skip-tls-verify` (or their `ETCDCTL_*`
//! variables). https goes through the same dialer members use.

use std::io::{self, Read, Write};
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Channel;
use rustls::pki_types::ServerName;
use tonic::transport::Endpoint;

use super::env;
use crate::raft::dial::Dialer;
use crate::tls::{DialTls, PortTls};

#[derive(Default)]
pub(crate) struct ToolTls {
    cacert: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    skip_verify: bool,
}

fn is_true(v: &str) -> bool {
    !matches!(v, "false" | "0" | "f" | "F" | "FALSE" | "False")
}

impl ToolTls {
    pub fn from_env() -> ToolTls {
        ToolTls {
            cacert: env("CACERT").map(PathBuf::from),
            cert: env("CERT").map(PathBuf::from),
            key: env("KEY").map(PathBuf::from),
            skip_verify: env("INSECURE_SKIP_TLS_VERIFY").is_some_and(|v| is_true(&v)),
        }
    }

    /// Takes one of the TLS flags; false when `name` is another flag.
    pub fn take_flag(
        &mut self,
        name: &str,
        inline: Option<&str>,
        value: impl FnOnce() -> Result<String, String>,
    ) -> Result<bool, String> {
        match name {
            "cacert" => self.cacert = Some(value()?.into()),
            "cert" => self.cert = Some(value()?.into()),
            "key" => self.key = Some(value()?.into()),
            "insecure-skip-tls-verify" => self.skip_verify = inline.is_none_or(is_true),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn wanted(&self) -> bool {
        self.cacert.is_some() || self.cert.is_some() || self.key.is_some() || self.skip_verify
    }

    /// An endpoint as a URL: without a scheme, https when TLS flags are given.
    pub fn url(&self, endpoint: &str) -> String {
        if endpoint.contains("://") {
            endpoint.to_string()
        } else if self.wanted() {
            format!("https://{endpoint}")
        } else {
            format!("http://{endpoint}")
        }
    }

    fn dial_tls(&self, urls: &[String]) -> Result<Option<Arc<DialTls>>, String> {
        if !urls.iter().any(|u| u.starts_with("https://")) {
            return Ok(None);
        }
        let tls = PortTls::for_tool(self.cacert.clone(), self.cert.clone(), self.key.clone(), self.skip_verify)?;
        tls.into_dialer().map(Some)
    }

    /// A channel to the first of `endpoints` that answers.
    pub async fn channel(&self, endpoints: &[String], timeout: Duration) -> Result<Channel, String> {
        self.tonic_channel(endpoints, timeout).await.map(Channel::Tonic)
    }

    pub async fn tonic_channel(&self, endpoints: &[String], timeout: Duration) -> Result<tonic::transport::Channel, String> {
        let urls: Vec<String> = endpoints.iter().map(|e| self.url(e)).collect();
        let dialer = Dialer::new(self.dial_tls(&urls)?);
        let mut last = String::from("no endpoints");
        for url in &urls {
            let endpoint = Endpoint::from_shared(url.clone()).map_err(|e| format!("{url}: {e}"))?;
            let endpoint = endpoint.connect_timeout(timeout).timeout(timeout);
            match endpoint.connect_with_connector(dialer.clone()).await {
                Ok(channel) => return Ok(channel),
                Err(e) => last = format!("{url}: {}", error_chain(&e)),
            }
        }
        Err(last)
    }

    /// A minimal HTTP/1.1 GET: the body of the response, whatever its status.
    pub fn http_get(&self, endpoint: &str, path: &str) -> io::Result<String> {
        let url = self.url(endpoint);
        let parsed = url::Url::parse(&url).map_err(|e| io::Error::other(format!("{url}: {e}")))?;
        let host = parsed.host_str().unwrap_or_default().trim_matches(['[', ']']).to_string();
        let port = parsed.port_or_known_default().unwrap_or(2379);
        let addr =
            (host.as_str(), port).to_socket_addrs()?.next().ok_or_else(|| io::Error::other(format!("cannot resolve {host}")))?;
        let mut tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        tcp.set_read_timeout(Some(Duration::from_secs(3)))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
        let mut response = Vec::new();
        match self.dial_tls(std::slice::from_ref(&url)).map_err(io::Error::other)? {
            None => {
                tcp.write_all(request.as_bytes())?;
                tcp.read_to_end(&mut response)?;
            }
            Some(tls) => {
                let mut config = (*tls.get()).clone();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                let name = ServerName::try_from(host.clone()).map_err(|e| io::Error::other(format!("{host}: {e}")))?;
                let connection = rustls::ClientConnection::new(Arc::new(config), name).map_err(io::Error::other)?;
                let mut stream = rustls::StreamOwned::new(connection, tcp);
                stream.write_all(request.as_bytes())?;
                // A server that closes without close_notify still sent its answer.
                if let Err(e) = stream.read_to_end(&mut response) {
                    if e.kind() != io::ErrorKind::UnexpectedEof || response.is_empty() {
                        return Err(e);
                    }
                }
            }
        }
        let response = String::from_utf8_lossy(&response);
        Ok(response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default())
    }
}

/// An error with its causes, as the one line a tool prints.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}
