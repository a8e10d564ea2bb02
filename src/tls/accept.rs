//! The connections one listener accepts. On a TLS listener every handshake
//! runs in its own task under a deadline, so a slow or hostile client holds
//! up nobody; a failed handshake is logged as etcd logs it ("rejected
//! connection", with the remote address, the server name asked for and the
//! reason) and costs nothing else.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::server::Acceptor;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{server, LazyConfigAcceptor};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::{ServerTls, Transport};

/// What a request on a connection knows of its other end.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote_addr: Option<SocketAddr>,
    /// The client's verified certificate chain, end entity first.
    pub peer_certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
}

impl Connected for Transport {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        let peer_certificates = self.peer_certificates().map(|c| Arc::new(c.to_vec()));
        ConnInfo { remote_addr: self.tcp().peer_addr().ok(), peer_certificates }
    }
}

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// Connections accepted on `listener`, TLS ones once their handshake has
/// succeeded. Accepting stops when the stream is dropped.
pub fn connections(listener: TcpListener, tls: Option<Arc<ServerTls>>) -> ReceiverStream<io::Result<Transport>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, tls, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(listener: TcpListener, tls: Option<Arc<ServerTls>>, tx: mpsc::Sender<io::Result<Transport>>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = tx.closed() => return,
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, most likely: let some connections end.
                tracing::warn!(%error, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Small gRPC frames must not wait for delayed ACKs.
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &tls else {
            if tx.send(Ok(Transport::plain(tcp))).await.is_err() {
                return;
            }
            continue;
        };
        let (tls, tx) = (tls.clone(), tx.clone());
        tokio::spawn(async move {
            let (server_name, error) = match tokio::time::timeout(HANDSHAKE_DEADLINE, handshake(tcp, &tls)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send(Ok(Transport::tls(stream.into()))).await;
                    return;
                }
                Ok(Err(refusal)) => refusal,
                Err(_) => (String::new(), format!("no TLS handshake within {HANDSHAKE_DEADLINE:?}")),
            };
            tracing::warn!(remote_addr = %remote, server_name, error, "rejected connection");
        });
    }
}

/// The handshake, with the config current when the client says hello.
async fn handshake(tcp: TcpStream, tls: &ServerTls) -> Result<server::TlsStream<TcpStream>, (String, String)> {
    let start = LazyConfigAcceptor::new(Acceptor::default(), tcp).await.map_err(|e| (String::new(), e.to_string()))?;
    let server_name = start.client_hello().server_name().unwrap_or_default().to_string();
    start.into_stream(tls.get()).await.map_err(|e| (server_name, e.to_string()))
}
