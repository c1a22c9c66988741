//! The response body sessionlb sends: a backend's body streamed through, or
//! a short message of the proxy's own. Its end (or its drop, if the client
//! goes away) closes the books on the request: the backend connection goes
//! back to the pool (at the end) or is closed (at a drop), in-flight counts
//! drop, the access-log line is written.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Method, Uri};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use super::headers::RequestId;
use super::upstream::{self, Exchange, ExchangeError};
use crate::access_log;
use crate::config::AccessFormat;
use crate::runtime::Runtime;
use crate::server::Connection;

pub struct ProxyBody {
    inner: Inner,
    finish: Finish,
}

enum Inner {
    Full(Option<Bytes>),
    Upstream(Exchange),
    /// The backend's body ended or failed; its connection is pooled or
    /// closed.
    Ended,
}

impl ProxyBody {
    pub(super) fn upstream(exchange: Exchange, finish: Finish) -> ProxyBody {
        let mut body = ProxyBody {
            inner: Inner::Upstream(exchange),
            finish,
        };
        body.release_if_done();
        body
    }

    pub(super) fn full(data: Bytes, finish: Finish) -> ProxyBody {
        let inner = Inner::Full((!data.is_empty()).then_some(data));
        ProxyBody { inner, finish }
    }

    /// Pools the backend connection as soon as the response is complete,
    /// before the client asks for more.
    fn release_if_done(&mut self) {
        if let Inner::Upstream(exchange) = &self.inner
            && exchange.is_end_stream()
            && let Inner::Upstream(exchange) = std::mem::replace(&mut self.inner, Inner::Ended)
            && let Some(conn) = exchange.into_reusable()
        {
            upstream::checkin(conn, self.finish.start_ms);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        let this = self.get_mut();
        match &mut this.inner {
            Inner::Full(data) => Poll::Ready(data.take().map(|d| {
                this.finish.bytes += d.len() as u64;
                Ok(Frame::data(d))
            })),
            Inner::Upstream(exchange) => {
                match ready!(exchange.poll_data(cx, &this.finish.rt.timeouts)) {
                    Some(Ok(data)) => {
                        this.finish.bytes += data.len() as u64;
                        this.release_if_done();
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    None => {
                        this.release_if_done();
                        Poll::Ready(None)
                    }
                    Some(Err(error)) => {
                        tracing::debug!(%error, "backend response body failed");
                        this.inner = Inner::Ended;
                        Poll::Ready(Some(Err(error)))
                    }
                }
            }
            Inner::Ended => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(data) => data.is_none(),
            Inner::Upstream(exchange) => exchange.is_end_stream(),
            Inner::Ended => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Inner::Upstream(exchange) => match exchange.remaining() {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
            Inner::Ended => SizeHint::with_exact(0),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // the client went away before the end of the response
        if let Inner::Upstream(exchange) = &self.inner {
            exchange.abort();
        }
    }
}

/// What the access log needs to remember about a request.
pub(super) struct LogInfo {
    pub format: AccessFormat,
    /// The client when it is not the peer (behind a trusted proxy).
    pub client: Option<IpAddr>,
    pub method: Method,
    pub uri: Uri,
    pub request_id: RequestId,
}

/// The end of a request's life, run when its response body ends or drops.
pub(super) struct Finish {
    pub conn: Arc<Connection>,
    pub rt: Arc<Runtime>,
    pub start: Instant,
    /// `start` on the process clock (`clock::now_ms`).
    pub start_ms: u64,
    pub pool: Option<usize>,
    /// A backend whose in-flight count this request holds.
    pub backend: Option<usize>,
    pub status: u16,
    pub bytes: u64,
    /// Boxed: only requests that are logged pay for it.
    pub log: Option<Box<LogInfo>>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let backend = match (self.pool, self.backend) {
            (Some(p), Some(b)) => {
                let backend = &self.rt.pools[p].backends[b];
                backend.state.end_request();
                backend.state.count_response(self.status);
                Some(backend)
            }
            (Some(p), None) => {
                self.rt.pools[p].stats.count_response(self.status);
                None
            }
            _ => {
                self.rt.unrouted.count_response(self.status);
                None
            }
        };
        let end = Instant::now();
        self.conn.request_finished(crate::clock::ms_of(end));
        let elapsed = end.saturating_duration_since(self.start);
        if let Some(p) = self.pool {
            self.rt.pools[p].stats.observe_duration(elapsed);
        }
        if let Some(log) = &self.log {
            let pool = self.pool.map_or("", |p| &*self.rt.pools[p].name);
            let forwarded_client = log.client.map(|ip| ip.to_string());
            access_log::record(
                log.format,
                &access_log::Entry {
                    client: forwarded_client
                        .as_deref()
                        .unwrap_or_else(|| self.conn.peer_ip.to_str().unwrap_or("-")),
                    method: log.method.as_str(),
                    path: log.uri.path_and_query().map_or("/", |pq| pq.as_str()),
                    status: self.status,
                    bytes: self.bytes,
                    duration: elapsed,
                    pool,
                    backend: backend.map_or("", |b| &*b.state.name),
                    request_id: log.request_id.as_str(),
                },
            );
        }
    }
}
