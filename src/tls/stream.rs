//! A connection that is TLS or not, on either end: what the listeners hand
//! to the servers and what the peer dialer hands to its channels.
//!
//! Its writes are gathered until a flush, and a flush lets the tasks that are
//! ready run first. hyper's HTTP/2 writes a stream's frames as soon as that
//! stream is done, so with 64 clients on 8 connections a member made about two
//! `writev` calls a request (grpc-go: one per five or six requests), each a
//! syscall here and a wake-up of the client. Responses that finish together
//! now leave in one send. The transport says it takes no vectored writes, so
//! that h2 copies payloads under 1 KiB into its own buffer, as it otherwise
//! sends every payload of 256 bytes or more with a write of its own.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Gathered bytes beyond this are sent before more are taken.
const MAX_UNSENT: usize = 64 * 1024;
/// A connection keeps a buffer this large between sends; a larger one (after
/// a large response) is given back.
const KEPT_CAPACITY: usize = 16 * 1024;

pub struct Transport {
    link: Link,
    /// Written, not yet sent: `unsent[sent..]`.
    unsent: Vec<u8>,
    sent: usize,
    /// Whether a flush of what `unsent` holds has yielded already.
    yielded: bool,
}

enum Link {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl Transport {
    pub fn plain(tcp: TcpStream) -> Transport {
        Transport::over(Link::Plain(tcp))
    }

    pub fn tls(stream: tokio_rustls::TlsStream<TcpStream>) -> Transport {
        Transport::over(Link::Tls(Box::new(stream)))
    }

    fn over(link: Link) -> Transport {
        Transport { link, unsent: Vec::new(), sent: 0, yielded: false }
    }

    pub fn tcp(&self) -> &TcpStream {
        match &self.link {
            Link::Plain(s) => s,
            Link::Tls(s) => s.get_ref().0,
        }
    }

    /// The other end's certificate chain, if it is TLS and sent one.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        match &self.link {
            Link::Plain(_) => None,
            Link::Tls(s) => s.get_ref().1.peer_certificates(),
        }
    }

    /// Sends everything gathered.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.unsent.len() {
            let n = ready!(self.link.io().poll_write(cx, &self.unsent[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.unsent.clear();
        self.unsent.shrink_to(KEPT_CAPACITY);
        self.sent = 0;
        self.yielded = false;
        Poll::Ready(Ok(()))
    }

    /// Takes what fits of `bufs`, sending what was gathered first if it is full.
    fn gather(&mut self, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        if self.unsent.len() >= MAX_UNSENT {
            ready!(self.poll_send(cx))?;
        }
        let mut room = MAX_UNSENT - self.unsent.len();
        let mut taken = 0;
        for buf in bufs {
            let take = buf.len().min(room);
            self.unsent.extend_from_slice(&buf[..take]);
            taken += take;
            room -= take;
            if room == 0 {
                break;
            }
        }
        Poll::Ready(Ok(taken))
    }
}

/// Either kind of link, read and written alike.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

impl Link {
    fn io(&mut self) -> Pin<&mut dyn Io> {
        match self {
            Link::Plain(s) => Pin::new(s),
            Link::Tls(s) => Pin::new(s.as_mut()),
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.get_mut().link.io().poll_read(cx, buf)
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().gather(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.get_mut().gather(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }

    /// Yields once before sending, so that the tasks woken meanwhile (other
    /// streams' handlers, most often) add their frames to this send.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.unsent.is_empty() && !this.yielded {
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_send(cx))?;
        this.link.io().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        this.link.io().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::{Transport, MAX_UNSENT};

    /// A transport and the other end of its loopback connection.
    async fn connected() -> (Transport, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sending = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (receiving, _) = listener.accept().await.unwrap();
        (Transport::plain(sending), receiving)
    }

    #[tokio::test]
    async fn writes_leave_together_at_the_flush() {
        let (mut transport, mut other_end) = connected().await;
        transport.write_all(b"one ").await.unwrap();
        transport.write_all(b"two").await.unwrap();
        let mut received = [0u8; 7];
        let early = tokio::time::timeout(Duration::from_millis(100), other_end.read(&mut received)).await;
        assert!(early.is_err(), "nothing may leave before the flush");
        transport.flush().await.unwrap();
        other_end.read_exact(&mut received).await.unwrap();
        assert_eq!(&received, b"one two");
    }

    #[tokio::test]
    async fn what_exceeds_the_limit_and_the_socket_arrives_whole_and_in_order() {
        let (mut transport, mut other_end) = connected().await;
        // Far beyond both the gathering limit and the kernel's socket buffers,
        // read late: sends must wait for room and resume where they stopped.
        let sent: Vec<u8> = (0..128 * MAX_UNSENT + 7).map(|i| (i % 251) as u8).collect();
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut received = Vec::new();
            other_end.read_to_end(&mut received).await.unwrap();
            received
        });
        transport.write_all(&sent).await.unwrap();
        transport.shutdown().await.unwrap();
        assert!(reader.await.unwrap() == sent, "the bytes arrived changed");
    }
}
