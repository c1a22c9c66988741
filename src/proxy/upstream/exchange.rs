//! One request and its response on a backend connection, driven from the
//! client connection's own task: no task or channel per backend
//! connection. The request (head, then body) is written while the
//! response is read, so a backend that answers before it has read the
//! whole body, or echoes as it reads, never deadlocks against the proxy.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::Method;
use http_body::Body;
use hyper::body::Incoming;
use tokio::io::AsyncWrite;

use super::Conn;
use super::wire::{self, Decoded, Decoder, FinishedHead, Head, RequestHead, WireError};
use crate::config::Timeouts;

/// Bytes asked of the kernel per read; a buffer with less room than
/// `MIN_READ` grows by this much first.
const READ_SIZE: usize = 16 * 1024;
const MIN_READ: usize = 2 * 1024;

/// A request body an HTTP/1 client is still sending when its request is
/// over (see [`ClientBody`]) is read and dropped, up to this much: hyper closes a
/// connection with an unread body at once, and a client still writing would
/// then meet a reset instead of the answer (nginx's lingering close).
/// Beyond it the connection is closed all the same.
const LINGER_LIMIT: usize = 16 * 1024 * 1024;

/// Why an exchange with a backend failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("backend connection failed: {0}")]
    Io(#[source] io::Error),
    #[error("backend closed the connection before responding")]
    Closed,
    #[error("backend closed the connection before the end of the response body")]
    Truncated,
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("reading the request body from the client failed: {0}")]
    RequestBody(#[source] hyper::Error),
    #[error("the request body is larger than the pool's max_body")]
    BodyTooLarge,
    #[error("the client sent nothing of its request body for {0:?}")]
    ClientTimeout(Duration),
    #[error("the backend neither read nor wrote anything for {0:?}")]
    BackendTimeout(Duration),
}

impl ExchangeError {
    /// The client's doing, not the backend's: not counted against it, not
    /// retried elsewhere.
    pub fn is_client_fault(&self) -> bool {
        matches!(
            self,
            ExchangeError::RequestBody(_)
                | ExchangeError::BodyTooLarge
                | ExchangeError::ClientTimeout(_)
        )
    }
}

/// Whom a stalled exchange waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Backend,
    Client,
}

pin_project_lite::pin_project! {
    /// The timer of a stalled exchange, armed when it starts waiting and
    /// reset only when it waits again after some progress: an exchange
    /// that never stalls (a small response, read with its head) costs none.
    struct Stall {
        #[pin]
        timer: tokio::time::Sleep,
        wait: Wait,
    }
}

/// A request ready for any backend: its head written out once, its body
/// still to stream. It survives a failed attempt that may be replayed.
pub struct Outgoing {
    head: FinishedHead,
    /// A `HEAD` request: its response has no body.
    head_only: bool,
    idempotent: bool,
    /// Boxed: most requests have no body.
    body: Option<Box<Streaming>>,
}

/// A request body on its way: what the client sends, re-framed for the
/// backend.
struct Streaming {
    client: ClientBody,
    /// Unknown length (HTTP/2, or chunked from the client): sent chunked.
    chunked: bool,
    /// Bytes the body may still have (`max_body`); a known length over the
    /// limit was refused before.
    allowed: Option<u64>,
    /// Bytes waiting to be written: chunk size line, data, CRLF; once the
    /// client's body has ended, the last of it.
    queue: [Bytes; 3],
}

/// The client's request body. Dropped unfinished — the request is over
/// while an HTTP/1 client is still sending: the backend answered without
/// reading it all, or the proxy answered itself — it is read to its end
/// and dropped, up to [`LINGER_LIMIT`], in a small task.
pub struct ClientBody {
    /// Taken only when it is dropped unfinished.
    incoming: Option<Incoming>,
    /// It ended (or failed): nothing more will come.
    ended: bool,
    /// HTTP/1 (HTTP/2 resets just the stream).
    linger: bool,
}

impl ClientBody {
    pub fn new(incoming: Incoming, http1: bool) -> ClientBody {
        ClientBody {
            ended: incoming.is_end_stream(),
            incoming: Some(incoming),
            linger: http1,
        }
    }

    /// The body's length, when the client said it (`Content-Length`).
    pub fn length(&self) -> Option<u64> {
        self.incoming.as_ref()?.size_hint().exact()
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let Some(incoming) = self.incoming.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(incoming).poll_frame(cx));
        self.ended |= !matches!(frame, Some(Ok(_)));
        Poll::Ready(frame)
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        if self.linger
            && !self.ended
            && let Some(incoming) = self.incoming.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            // hyper feeds the body for as long as someone reads it
            runtime.spawn(linger(incoming));
        }
    }
}

/// A lingering body that pauses this long, or lingers this long in all, is
/// given up (nginx's `lingering_timeout` and `lingering_time`).
const LINGER_PAUSE: Duration = Duration::from_secs(5);
const LINGER_TIME: Duration = Duration::from_secs(30);

/// Reads and drops the rest of a request body (see [`LINGER_LIMIT`]); ends
/// with it, at the limits, or when the client goes away.
async fn linger(mut incoming: Incoming) {
    let mut dropped = 0usize;
    let give_up = tokio::time::Instant::now() + LINGER_TIME;
    while dropped <= LINGER_LIMIT {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut incoming).poll_frame(cx));
        let pause = tokio::time::Instant::now() + LINGER_PAUSE;
        match tokio::time::timeout_at(pause.min(give_up), frame).await {
            Ok(Some(Ok(frame))) => dropped += frame.data_ref().map_or(0, Bytes::len),
            Ok(Some(Err(_)) | None) | Err(_) => return,
        }
    }
}

impl Outgoing {
    /// A request whose head (without its end) is written, and its body.
    /// A body without a `Content-Length` (HTTP/2, or chunked from the
    /// client) is sent chunked; none may be longer than `max_body`.
    pub fn new(
        head: RequestHead,
        method: Method,
        client: ClientBody,
        max_body: Option<u64>,
    ) -> Outgoing {
        let body = (!client.ended).then(|| {
            Box::new(Streaming {
                chunked: client.length().is_none(),
                client,
                allowed: max_body,
                queue: Default::default(),
            })
        });
        let chunked = body.as_ref().is_some_and(|b| b.chunked);
        Outgoing {
            head: head.finish(chunked),
            head_only: method == Method::HEAD,
            idempotent: method.is_idempotent(),
            body,
        }
    }

    /// The request has a body still to send.
    pub fn has_body(&self) -> bool {
        self.body.is_some()
    }

    /// Readies the request for the backend at `addr` (an HTTP/1.0 request
    /// without `Host` gets the backend's address).
    pub fn to_backend(&mut self, addr: std::net::SocketAddr) {
        self.head.for_backend(addr);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Send {
    Writing,
    Done,
    /// The backend stopped taking the request; its response may still come.
    Failed,
}

/// A request in flight on a backend connection, then its response body.
pub struct Exchange {
    conn: Conn,
    out: Outgoing,
    /// Bytes of the head written so far.
    written: usize,
    send: Send,
    /// Whom the request's sending waits for when it is pending.
    send_wait: Wait,
    body_polled: bool,
    /// Some byte of a response arrived.
    received: bool,
    recv: Decoder,
    keep_alive: bool,
    /// Some byte moved either way since the stall timer was last armed.
    progressed: bool,
    /// Boxed: most exchanges never stall.
    stall: Option<Pin<Box<Stall>>>,
}

impl Exchange {
    pub fn new(conn: Conn, out: Outgoing) -> Exchange {
        Exchange {
            conn,
            out,
            written: 0,
            send: Send::Writing,
            send_wait: Wait::Backend,
            body_polled: false,
            received: false,
            recv: Decoder::Done,
            keep_alive: false,
            progressed: true,
            stall: None,
        }
    }

    /// Writes the request and reads the final response head (1xx interim
    /// responses are skipped). The head's `body` stays with the exchange.
    /// While the request is being written, a stall of either side is
    /// bounded by its I/O timeout; once it is written, the caller bounds
    /// the wait for the head (`timeouts.response_header`).
    pub fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        t: &Timeouts,
    ) -> Poll<Result<Head, ExchangeError>> {
        self.drive_send(cx)?;
        loop {
            if !self.conn.buf.is_empty()
                && let Some(mut head) =
                    wire::parse_response(&mut self.conn.buf, self.out.head_only)?
            {
                self.recv = std::mem::replace(&mut head.body, Decoder::Done);
                self.keep_alive = head.keep_alive;
                // the head is not needed again: no replay after a response
                self.out.head.bytes = Vec::new();
                // only a chunked body can be broken from its first bytes
                if let Decoder::Chunked(_) = self.recv {
                    self.recv.check(&self.conn.buf)?;
                }
                return Poll::Ready(Ok(head));
            }
            match self.poll_fill(cx) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(ExchangeError::Closed)),
                Poll::Ready(Ok(_)) => self.received = true,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(ExchangeError::Io(error))),
                Poll::Pending => {
                    if self.send == Send::Writing {
                        self.poll_stall(cx, t, self.send_wait)?;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// The request has been written to its end (or the backend stopped
    /// taking it): what is left is the wait for the response.
    pub fn is_sent(&self) -> bool {
        self.send != Send::Writing
    }

    /// The next piece of the response body; `None` at its end.
    pub fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
        t: &Timeouts,
    ) -> Poll<Option<Result<Bytes, ExchangeError>>> {
        if let Err(error) = self.drive_send(cx) {
            return Poll::Ready(Some(Err(error)));
        }
        loop {
            match self.recv.decode(&mut self.conn.buf) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(data))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::More) => {}
                Err(error) => return Poll::Ready(Some(Err(error.into()))),
            }
            match self.poll_fill(cx) {
                Poll::Ready(Ok(0)) if self.recv.eof() => return Poll::Ready(None),
                Poll::Ready(Ok(0)) => return Poll::Ready(Some(Err(ExchangeError::Truncated))),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(error)) => {
                    return Poll::Ready(Some(Err(ExchangeError::Io(error))));
                }
                Poll::Pending => {
                    if let Err(error) = self.poll_stall(cx, t, Wait::Backend) {
                        return Poll::Ready(Some(Err(error)));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Bounds a stall: armed when the exchange starts waiting on `wait`
    /// after moving some bytes, it fires when nothing moves for that
    /// side's timeout.
    fn poll_stall(
        &mut self,
        cx: &mut Context<'_>,
        t: &Timeouts,
        wait: Wait,
    ) -> Result<(), ExchangeError> {
        let limit = match wait {
            Wait::Backend => t.backend_io,
            Wait::Client => t.client_io,
        };
        if std::mem::take(&mut self.progressed)
            || self.stall.as_ref().is_some_and(|s| s.wait != wait)
        {
            let deadline = tokio::time::Instant::now() + limit;
            match &mut self.stall {
                Some(stall) => {
                    let stall = stall.as_mut().project();
                    *stall.wait = wait;
                    stall.timer.reset(deadline);
                }
                None => {
                    self.stall = Some(Box::pin(Stall {
                        timer: tokio::time::sleep_until(deadline),
                        wait,
                    }))
                }
            }
        }
        let Some(stall) = &mut self.stall else {
            return Ok(());
        };
        match stall.as_mut().project().timer.poll(cx) {
            Poll::Ready(()) => Err(match wait {
                Wait::Backend => ExchangeError::BackendTimeout(limit),
                Wait::Client => {
                    // a client that stalled is not waited for again
                    if let Some(body) = &mut self.out.body {
                        body.client.linger = false;
                    }
                    ExchangeError::ClientTimeout(limit)
                }
            }),
            Poll::Pending => Ok(()),
        }
    }

    /// The exchange is abandoned half-way (a timeout, an error, a client
    /// gone): its connection is reset when dropped rather than closed in
    /// order, so that neither side's kernel keeps sending what the other
    /// will never read, and a backend that stopped reading learns at once.
    pub fn abort(&self) {
        let _ = socket2::SockRef::from(self.conn.stream.socket()).set_linger(Some(Duration::ZERO));
    }

    /// Some byte of a response arrived.
    pub fn answered(&self) -> bool {
        self.received
    }

    pub fn is_end_stream(&self) -> bool {
        self.recv.is_done()
    }

    /// The response body's exact remaining length, when known.
    pub fn remaining(&self) -> Option<u64> {
        self.recv.remaining()
    }

    /// After a failure: the request back, when sending it again (to this
    /// backend or another) cannot repeat its effect — nothing of it was
    /// written, or it is idempotent without a body and no response came.
    pub fn into_retry(self) -> Option<Outgoing> {
        // the body is polled only once the head is written
        let unsent = self.written == 0;
        let replayable = !self.body_polled && self.out.idempotent;
        (!self.received && (unsent || replayable)).then_some(self.out)
    }

    /// The connection, when it can carry another request: the response
    /// was read to its end, the request written to its end, and the
    /// backend keeps the connection open.
    pub fn into_reusable(self) -> Option<Conn> {
        let clean = self.keep_alive
            && self.recv.is_done()
            && self.send == Send::Done
            && self.conn.buf.is_empty();
        clean.then_some(self.conn)
    }

    /// After `101 Switching Protocols`: the raw connection and what the
    /// backend sent after the response head.
    pub fn into_upgraded(self) -> (super::Stream, BytesMut) {
        (self.conn.stream, self.conn.buf)
    }

    fn drive_send(&mut self, cx: &mut Context<'_>) -> Result<(), ExchangeError> {
        if self.send != Send::Writing {
            return Ok(());
        }
        match self.poll_send(cx) {
            Poll::Ready(Ok(())) => self.send = Send::Done,
            Poll::Ready(Err(SendError::Client(error))) => {
                self.send = Send::Failed;
                return Err(ExchangeError::RequestBody(error));
            }
            Poll::Ready(Err(SendError::TooLarge)) => {
                self.send = Send::Failed;
                return Err(ExchangeError::BodyTooLarge);
            }
            Poll::Ready(Err(SendError::Backend(error))) => {
                // keep reading: a backend that refuses a body often says why
                tracing::debug!(%error, "backend stopped reading the request");
                self.send = Send::Failed;
            }
            Poll::Pending => {}
        }
        Ok(())
    }

    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        let stream = &mut self.conn.stream;
        let head = &self.out.head.bytes;
        self.send_wait = Wait::Backend;
        while self.written < head.len() {
            let n = ready!(Pin::new(&mut *stream).poll_write(cx, &head[self.written..]))
                .map_err(SendError::Backend)?;
            if n == 0 {
                return Poll::Ready(Err(SendError::Backend(io::ErrorKind::WriteZero.into())));
            }
            self.written += n;
            self.progressed = true;
        }
        let Some(body) = self.out.body.as_deref_mut() else {
            return Pin::new(&mut *stream)
                .poll_flush(cx)
                .map_err(SendError::Backend);
        };
        self.body_polled = true;
        loop {
            if body.queue.iter().any(|b| !b.is_empty()) {
                let slices = [
                    IoSlice::new(&body.queue[0]),
                    IoSlice::new(&body.queue[1]),
                    IoSlice::new(&body.queue[2]),
                ];
                self.send_wait = Wait::Backend;
                let mut n = ready!(Pin::new(&mut *stream).poll_write_vectored(cx, &slices))
                    .map_err(SendError::Backend)?;
                if n == 0 {
                    return Poll::Ready(Err(SendError::Backend(io::ErrorKind::WriteZero.into())));
                }
                self.progressed = true;
                for part in &mut body.queue {
                    let k = n.min(part.len());
                    part.advance(k);
                    n -= k;
                }
                continue;
            }
            // over TLS, what was written may wait in the record buffer
            // until flushed: out before waiting on the client
            self.send_wait = Wait::Backend;
            ready!(Pin::new(&mut *stream).poll_flush(cx)).map_err(SendError::Backend)?;
            if body.client.ended {
                self.out.body = None;
                return Poll::Ready(Ok(()));
            }
            self.send_wait = Wait::Client;
            let frame = ready!(body.client.poll_frame(cx));
            self.progressed = true;
            match frame {
                Some(Ok(frame)) => {
                    // trailers are dropped, as most proxies do
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    if let Some(allowed) = &mut body.allowed {
                        *allowed = allowed
                            .checked_sub(data.len() as u64)
                            .ok_or(SendError::TooLarge)?;
                    }
                    if body.chunked {
                        body.queue = [
                            Bytes::from(format!("{:x}\r\n", data.len())),
                            data,
                            Bytes::from_static(b"\r\n"),
                        ];
                    } else {
                        body.queue[1] = data;
                    }
                }
                Some(Err(error)) => return Poll::Ready(Err(SendError::Client(error))),
                None if body.chunked => body.queue[1] = Bytes::from_static(b"0\r\n\r\n"),
                None => {}
            }
        }
    }

    /// Reads what the backend sent into the connection's buffer. Through
    /// `AsyncRead`, which notes a short read as "drained": the next poll
    /// waits for the poller instead of asking the kernel in vain.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let buf = &mut self.conn.buf;
        if buf.capacity() - buf.len() < MIN_READ {
            buf.reserve(READ_SIZE);
        }
        let filled = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.conn.stream),
            cx,
            buf
        ));
        self.progressed = true;
        Poll::Ready(filled)
    }
}

enum SendError {
    /// The client's request body failed (client gone, bad framing).
    Client(hyper::Error),
    /// The client's request body went over `max_body`.
    TooLarge,
    /// Writing to the backend failed.
    Backend(io::Error),
}
