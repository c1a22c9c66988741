//! The client socket as hyper sees it, with a few additions: bytes already
//! read (by an earlier hyper connection on the same socket) are served
//! first; it notes when a new request head starts arriving (for the
//! slowloris guard); it does not shut the socket down when hyper is only
//! being detached from an idle connection (parking); and it gives hyper's
//! own bodiless 400/414/431 answers to malformed requests a short
//! plain-text body that says what was wrong.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::conn::Connection;

pub struct ClientIo<S> {
    inner: S,
    /// Bytes read from the socket earlier, served before it.
    prefix: Bytes,
    conn: Arc<Connection>,
    h2: bool,
    /// A replacement response being written, the bytes written so far, and
    /// the length to report to hyper once it is all out.
    rewrite: Option<(Vec<u8>, usize, usize)>,
}

impl<S> ClientIo<S> {
    pub fn new(inner: S, prefix: Bytes, conn: Arc<Connection>, h2: bool) -> Self {
        ClientIo {
            inner,
            prefix,
            conn,
            h2,
            rewrite: None,
        }
    }

    /// The socket back, with the bytes of the prefix hyper did not read.
    pub fn into_parts(self) -> (S, Bytes) {
        (self.inner, self.prefix)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
        } else {
            let before = buf.filled().len();
            ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
            if buf.filled().len() == before {
                return Poll::Ready(Ok(()));
            }
        }
        if !self.h2 {
            self.conn.bytes_arrived();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> ClientIo<S> {
    /// Looks at the start of a write. Hyper writes each response head at
    /// the start of a write; one written while no request of ours awaits
    /// its answer can only be hyper's own reply to a malformed request.
    fn inspect(&mut self, first: &[u8], total: usize) {
        if self.h2 || first.len() < 12 || !first.starts_with(b"HTTP/1.1 ") {
            return;
        }
        if first[9] == b'1' {
            return; // 100 Continue: not the final answer
        }
        if self.conn.take_pending_head() {
            return;
        }
        if let Some(replacement) = parse_error_response(first) {
            self.rewrite = Some((replacement, 0, total));
        }
    }

    /// Tells the connection whether the client takes what is written to it
    /// (`client_io`).
    fn note(&self, written: &Poll<io::Result<usize>>) {
        match written {
            Poll::Pending => self.conn.write_stalled(),
            Poll::Ready(_) => self.conn.write_flowed(),
        }
    }

    fn poll_rewrite(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some((data, pos, report)) = &mut self.rewrite else {
            return Poll::Ready(Ok(0));
        };
        while *pos < data.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &data[*pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *pos += n;
        }
        let report = *report;
        self.rewrite = None;
        Poll::Ready(Ok(report))
    }
}

/// The answer for hyper's status-only reply to a request it could not parse.
fn parse_error_response(head: &[u8]) -> Option<Vec<u8>> {
    if head.len() > 256 || !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    let (status, body) = match &head[9..12] {
        b"400" => (
            "400 Bad Request",
            "400 Bad Request: malformed request line or header\n",
        ),
        b"414" => (
            "414 URI Too Long",
            "414 URI Too Long: the request target is too long\n",
        ),
        b"431" => (
            "431 Request Header Fields Too Large",
            "431 Request Header Fields Too Large: the request head exceeds 64 KiB or 100 header fields\n",
        ),
        _ => return None,
    };
    Some(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.rewrite.is_none() {
            this.inspect(buf, buf.len());
        }
        if this.rewrite.is_some() {
            return this.poll_rewrite(cx);
        }
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.note(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.rewrite.is_none()
            && let Some(first) = bufs.iter().find(|b| !b.is_empty())
        {
            let total = bufs.iter().map(|b| b.len()).sum();
            this.inspect(first, total);
        }
        if this.rewrite.is_some() {
            return this.poll_rewrite(cx);
        }
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.note(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.conn.is_parking() {
            // hyper is being detached from an idle connection, not closing it
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_status_only_errors() {
        let r =
            parse_error_response(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").unwrap();
        let text = String::from_utf8(r).unwrap();
        assert!(text.ends_with("\r\n\r\n400 Bad Request: malformed request line or header\n"));
        assert!(parse_error_response(b"HTTP/1.1 404 Not Found\r\n\r\n").is_none());
        assert!(
            parse_error_response(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\n\r\nhello")
                .is_none()
        );
    }
}
