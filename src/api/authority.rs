//! etcdctl 3.4, like other clients built on the grpc-go of its time, sends the
//! whole endpoint URL (`http://127.0.0.1:2379`) as the HTTP/2 `:authority`
//! when it is given one. etcd's Go server lets that pass; h2, under tonic,
//! resets every such request with PROTOCOL_ERROR. This wrapper sits between a
//! client connection and h2: when a connection's first request carries an
//! authority that is not one, every header block the client sends on it is
//! decoded and written again with the URL cut down to its host and port.
//! Any other connection is looked at only until its first request, then
//! passed through untouched.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame h2 accepts: tonic leaves SETTINGS_MAX_FRAME_SIZE at the
/// protocol's default.
const MAX_FRAME: usize = 16_384;
const READ_CHUNK: usize = 16_384;

enum Mode {
    /// Until the connection preface and the first header block are seen.
    Inspecting { preface_seen: bool },
    Rewriting,
    Passing,
}

/// A header block being received: HEADERS, then CONTINUATION frames until
/// one ends it.
struct PendingBlock {
    stream: u32,
    /// END_STREAM and PRIORITY of the HEADERS frame.
    flags: u8,
    /// The stream dependency and weight, when PRIORITY is set.
    priority: Vec<u8>,
    fragment: Vec<u8>,
    /// The frames as received, to pass on unchanged.
    raw: Vec<u8>,
}

pub struct AuthorityRepair<IO> {
    inner: IO,
    mode: Mode,
    /// Bytes read from the client, not yet handled.
    input: BytesMut,
    /// Bytes handled, for h2 to read.
    output: BytesMut,
    /// Follows the client's HPACK dynamic table while it is inspected or rewritten.
    decoder: loona_hpack::Decoder<'static>,
    pending: Option<PendingBlock>,
}

impl<IO> AuthorityRepair<IO> {
    pub fn new(inner: IO) -> Self {
        AuthorityRepair {
            inner,
            mode: Mode::Inspecting { preface_seen: false },
            input: BytesMut::new(),
            output: BytesMut::new(),
            decoder: hpack_decoder(),
            pending: None,
        }
    }

    /// Moves what can be handled from `input` to `output`.
    fn process(&mut self) -> io::Result<()> {
        loop {
            match self.mode {
                Mode::Passing => {
                    self.output.extend_from_slice(&self.input.split());
                    return Ok(());
                }
                Mode::Inspecting { preface_seen: false } => {
                    let seen = self.input.len().min(PREFACE.len());
                    if self.input[..seen] != PREFACE[..seen] {
                        self.mode = Mode::Passing;
                    } else if seen < PREFACE.len() {
                        return Ok(());
                    } else {
                        self.output.extend_from_slice(&self.input.split_to(PREFACE.len()));
                        self.mode = Mode::Inspecting { preface_seen: true };
                    }
                }
                _ => {
                    let Some(frame) = self.next_frame() else { return Ok(()) };
                    self.handle_frame(frame)?;
                }
            }
        }
    }

    fn next_frame(&mut self) -> Option<BytesMut> {
        let header = self.input.get(..FRAME_HEADER)?;
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        (self.input.len() >= FRAME_HEADER + length).then(|| self.input.split_to(FRAME_HEADER + length))
    }

    fn handle_frame(&mut self, frame: BytesMut) -> io::Result<()> {
        let (kind, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER..];
        match (kind, self.pending.as_mut()) {
            (HEADERS, None) => {
                let Some((priority, fragment)) = split_headers_payload(flags, payload) else {
                    // Malformed: h2 will say so.
                    return self.give_up(&frame);
                };
                self.pending = Some(PendingBlock {
                    stream,
                    flags: flags & (END_STREAM | PRIORITY),
                    priority: priority.to_vec(),
                    fragment: fragment.to_vec(),
                    raw: frame.to_vec(),
                });
            }
            (CONTINUATION, Some(block)) if block.stream == stream => {
                block.fragment.extend_from_slice(payload);
                block.raw.extend_from_slice(&frame);
            }
            (_, Some(_)) => {
                let pending = self.pending.take().map(|b| b.raw).unwrap_or_default();
                self.give_up(&pending)?;
                return self.give_up(&frame);
            }
            (_, None) => {
                self.output.extend_from_slice(&frame);
                return Ok(());
            }
        }
        if flags & END_HEADERS != 0 {
            let block = self.pending.take().expect("a header block was just received");
            self.finish_block(block)?;
        }
        Ok(())
    }

    /// Passes `bytes` and the rest of the connection on as they are, for h2
    /// to judge, if that is still possible.
    fn give_up(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.mode {
            Mode::Rewriting => Err(io::Error::new(io::ErrorKind::InvalidData, "malformed HTTP/2 header frames")),
            _ => {
                self.output.extend_from_slice(bytes);
                self.mode = Mode::Passing;
                Ok(())
            }
        }
    }

    fn finish_block(&mut self, block: PendingBlock) -> io::Result<()> {
        let mut fields = Vec::new();
        let decoded = self.decoder.decode_with_cb(&block.fragment, |name, value| {
            fields.push((name.into_owned(), value.into_owned()));
        });
        if decoded.is_err() {
            return self.give_up(&block.raw);
        }
        if let Mode::Inspecting { .. } = self.mode {
            let sound = fields.iter().all(|(name, value)| name != b":authority" || is_authority(value));
            if sound {
                self.output.extend_from_slice(&block.raw);
                self.mode = Mode::Passing;
                return Ok(());
            }
            self.mode = Mode::Rewriting;
        }
        let mut encoded = Vec::with_capacity(block.fragment.len() + 64);
        for (name, value) in &fields {
            if name == b":authority" && !is_authority(value) {
                let Some(host_port) = host_and_port(value) else { continue };
                tracing::debug!(sent = %String::from_utf8_lossy(value), used = %String::from_utf8_lossy(host_port), "client sent a URL as :authority");
                encode_literal(&mut encoded, name, host_port);
            } else {
                encode_literal(&mut encoded, name, value);
            }
        }
        self.write_header_frames(&block, &encoded);
        Ok(())
    }

    /// A HEADERS frame, and CONTINUATION frames when the block is too large for one.
    fn write_header_frames(&mut self, block: &PendingBlock, encoded: &[u8]) {
        let mut rest = encoded;
        let mut first = true;
        loop {
            let room = MAX_FRAME - if first { block.priority.len() } else { 0 };
            let (chunk, after) = rest.split_at(rest.len().min(room));
            let (kind, mut flags, prefix) =
                if first { (HEADERS, block.flags, block.priority.as_slice()) } else { (CONTINUATION, 0, &[][..]) };
            if after.is_empty() {
                flags |= END_HEADERS;
            }
            let length = (prefix.len() + chunk.len()) as u32;
            self.output.put_slice(&length.to_be_bytes()[1..]);
            self.output.put_u8(kind);
            self.output.put_u8(flags);
            self.output.put_u32(block.stream);
            self.output.put_slice(prefix);
            self.output.put_slice(chunk);
            if after.is_empty() {
                return;
            }
            rest = after;
            first = false;
        }
    }
}

/// A decoder that allows the client no larger table than h2 advertises.
fn hpack_decoder() -> loona_hpack::Decoder<'static> {
    let mut decoder = loona_hpack::Decoder::new();
    decoder.set_max_allowed_table_size(4096);
    decoder
}

/// The priority fields and the header block fragment of a HEADERS frame's
/// payload, without padding.
fn split_headers_payload(flags: u8, payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let (padding, rest) = match flags & PADDED {
        0 => (0, payload),
        _ => (*payload.first()? as usize, &payload[1..]),
    };
    let rest = rest.get(..rest.len().checked_sub(padding)?)?;
    let priority_len = if flags & PRIORITY != 0 { 5 } else { 0 };
    Some((rest.get(..priority_len)?, &rest[priority_len..]))
}

/// What h2 accepts as an authority.
fn is_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// `scheme://host:port/path` → `host:port`, when that is an authority.
fn host_and_port(url: &[u8]) -> Option<&[u8]> {
    let after_scheme = url.windows(3).position(|w| w == b"://").map_or(url, |i| &url[i + 3..]);
    let host_port = after_scheme.split(|&b| b == b'/').next()?;
    is_authority(host_port).then_some(host_port)
}

/// A header field as a literal without indexing (RFC 7541, 6.2.2), so that
/// h2's dynamic table stays as the client's encoder left it.
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    for text in [name, value] {
        encode_length(out, text.len());
        out.extend_from_slice(text);
    }
}

/// A string length with a 7-bit prefix and no Huffman coding (RFC 7541, 5.1).
fn encode_length(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

impl<IO: AsyncRead + Unpin> AsyncRead for AuthorityRepair<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            if matches!(this.mode, Mode::Passing) && this.input.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // The client is gone: h2 gets what is left, a cut frame included.
                let rest = this.pending.take().map(|b| b.raw).unwrap_or_default();
                this.output.extend_from_slice(&rest);
                this.mode = Mode::Passing;
                this.process()?;
                if this.output.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.input.extend_from_slice(read.filled());
            this.process()?;
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AuthorityRepair<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for AuthorityRepair<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    fn header_frame(fields: &[(&[u8], &[u8])], flags: u8) -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in fields {
            encode_literal(&mut block, name, value);
        }
        let mut frame = (block.len() as u32).to_be_bytes()[1..].to_vec();
        frame.extend_from_slice(&[HEADERS, flags | END_HEADERS, 0, 0, 0, 1]);
        frame.extend_from_slice(&block);
        frame
    }

    const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

    fn connection(first_request: &[u8], then: &[u8]) -> Vec<u8> {
        [PREFACE, &SETTINGS, first_request, then].concat()
    }

    async fn through_repair(sent: &[u8]) -> Vec<u8> {
        let mut received = Vec::new();
        AuthorityRepair::new(sent).read_to_end(&mut received).await.unwrap();
        received
    }

    /// The flags and header fields of the header blocks in `bytes` (a
    /// connection after its preface and SETTINGS frame), one block a frame.
    fn decoded_blocks(bytes: &[u8]) -> Vec<(u8, Vec<(Vec<u8>, Vec<u8>)>)> {
        let mut decoder = loona_hpack::Decoder::new();
        let mut rest = &bytes[PREFACE.len() + SETTINGS.len()..];
        let mut blocks = Vec::new();
        while !rest.is_empty() {
            let length = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let mut fields = Vec::new();
            decoder
                .decode_with_cb(&rest[FRAME_HEADER..FRAME_HEADER + length], |n, v| {
                    fields.push((n.into_owned(), v.into_owned()))
                })
                .unwrap();
            blocks.push((rest[4], fields));
            rest = &rest[FRAME_HEADER + length..];
        }
        blocks
    }

    #[tokio::test]
    async fn a_url_authority_becomes_host_and_port_on_every_request() {
        let url = header_frame(&[(b":method", b"POST"), (b":authority", b"http://127.0.0.1:2379")], 0);
        let second = header_frame(&[(b":authority", b"https://[::1]:2379/x"), (b"te", b"trailers")], END_STREAM);
        let blocks = decoded_blocks(&through_repair(&connection(&url, &second)).await);
        let field = |name: &[u8], value: &[u8]| (name.to_vec(), value.to_vec());
        assert_eq!(blocks[0], (END_HEADERS, vec![field(b":method", b"POST"), field(b":authority", b"127.0.0.1:2379")]));
        assert_eq!(
            blocks[1],
            (END_STREAM | END_HEADERS, vec![field(b":authority", b"[::1]:2379"), field(b"te", b"trailers")])
        );
    }

    #[tokio::test]
    async fn fields_the_client_indexed_are_followed() {
        // As grpc-go does: the first request adds :authority to the dynamic
        // table, later ones name it by index (62, the first dynamic entry).
        let mut indexed = vec![0x40];
        for text in [&b":authority"[..], b"http://127.0.0.1:2379"] {
            encode_length(&mut indexed, text.len());
            indexed.extend_from_slice(text);
        }
        let frame = |block: &[u8]| [&(block.len() as u32).to_be_bytes()[1..], &[HEADERS, END_HEADERS, 0, 0, 0, 3], block].concat();
        let blocks = decoded_blocks(&through_repair(&connection(&frame(&indexed), &frame(&[0x80 | 62]))).await);
        for (_, fields) in blocks {
            assert_eq!(fields, vec![(b":authority".to_vec(), b"127.0.0.1:2379".to_vec())]);
        }
    }

    #[tokio::test]
    async fn a_sound_connection_passes_unchanged() {
        let sound = header_frame(&[(b":authority", b"127.0.0.1:2379")], 0);
        // After a sound first request nothing is looked at, even a URL.
        let later = header_frame(&[(b":authority", b"http://127.0.0.1:2379")], 0);
        let sent = connection(&sound, &later);
        assert_eq!(through_repair(&sent).await, sent);
        let http1 = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(through_repair(&http1).await, http1);
    }

    #[tokio::test]
    async fn a_large_block_is_split_into_continuation_frames() {
        let big = vec![b'v'; 40_000];
        let sent = connection(&header_frame(&[(b":authority", b"http://h:1"), (b"x-big", &big)], 0), &[]);
        let received = through_repair(&sent).await;
        let mut rest = &received[PREFACE.len() + SETTINGS.len()..];
        let mut kinds = Vec::new();
        let mut block = Vec::new();
        while !rest.is_empty() {
            let length = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            assert!(length <= MAX_FRAME);
            kinds.push((rest[3], rest[4] & END_HEADERS != 0));
            block.extend_from_slice(&rest[FRAME_HEADER..FRAME_HEADER + length]);
            rest = &rest[FRAME_HEADER + length..];
        }
        assert_eq!(kinds, [(HEADERS, false), (CONTINUATION, false), (CONTINUATION, true)]);
        let mut fields = Vec::new();
        loona_hpack::Decoder::new().decode_with_cb(&block, |n, v| fields.push((n.into_owned(), v.into_owned()))).unwrap();
        assert_eq!(fields[0].1, b"h:1");
        assert_eq!(fields[1].1, big);
    }
}
