//! The HTTP/1.1 requests of the discovery protocol: one connection per
//! request, the host resolved as peers' are (hickory, so a FROM-scratch
//! image resolves compose service names), directly or through an HTTP proxy
//! (`--discovery-proxy`).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use url::Url;

use crate::raft::dial::addresses;

pub struct Response {
    pub status: u16,
    pub body: Bytes,
}

/// `method` on `url`; `form` is an `application/x-www-form-urlencoded` body.
pub async fn request(
    method: http::Method,
    url: &Url,
    form: Option<String>,
    proxy: Option<&Url>,
    within: Duration,
) -> Result<Response, String> {
    tokio::time::timeout(within, exchange(method, url, form, proxy))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {within:?}")))
}

async fn exchange(method: http::Method, url: &Url, form: Option<String>, proxy: Option<&Url>) -> Result<Response, String> {
    if url.scheme() != "http" {
        return Err(format!("{url}: only http discovery URLs are supported"));
    }
    let via = proxy.unwrap_or(url);
    let host = via.host_str().ok_or_else(|| format!("{via}: no host"))?;
    let port = via.port_or_known_default().unwrap_or(80);
    let mut last = format!("{host} has no address");
    let mut tcp = None;
    for ip in addresses(host).await.map_err(|e| e.to_string())? {
        match TcpStream::connect((ip, port)).await {
            Ok(stream) => {
                tcp = Some(stream);
                break;
            }
            Err(e) => last = format!("cannot connect to {ip}:{port}: {e}"),
        }
    }
    let tcp = tcp.ok_or(last)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    // Through a proxy the request names the whole URL, as HTTP/1.1 asks.
    let target = match proxy {
        Some(_) => url.as_str().to_string(),
        None => url[url::Position::BeforePath..].to_string(),
    };
    let authority = url[url::Position::BeforeHost..url::Position::AfterPort].to_string();
    let mut builder = http::Request::builder().method(method).uri(target).header(http::header::HOST, authority);
    if form.is_some() {
        builder = builder.header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    }
    let request = builder.body(Full::new(Bytes::from(form.unwrap_or_default()))).map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Response { status, body })
}
