//! The response body sessionlb sends: a backend's body streamed through, or
//! a short message of the proxy's own. Its end (or its drop, if the client
//! goes away) closes the books on the request: the backend connection goes
//! back to the pool, in-flight counts drop, the access-log line is written.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderValue, Method, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::upstream::{self, Sender};
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
    Upstream(Incoming),
}

impl ProxyBody {
    pub(super) fn upstream(body: Incoming, mut finish: Finish) -> ProxyBody {
        if body.is_end_stream() {
            finish.release_upstream();
        }
        ProxyBody {
            inner: Inner::Upstream(body),
            finish,
        }
    }

    pub(super) fn full(data: Bytes, finish: Finish) -> ProxyBody {
        let inner = Inner::Full((!data.is_empty()).then_some(data));
        ProxyBody { inner, finish }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match &mut this.inner {
            Inner::Full(data) => Poll::Ready(data.take().map(|d| {
                this.finish.bytes += d.len() as u64;
                Ok(Frame::data(d))
            })),
            Inner::Upstream(body) => {
                let frame = ready!(Pin::new(&mut *body).poll_frame(cx));
                match &frame {
                    Some(Ok(f)) => {
                        if let Some(d) = f.data_ref() {
                            this.finish.bytes += d.len() as u64;
                        }
                        if body.is_end_stream() {
                            this.finish.release_upstream();
                        }
                    }
                    None => this.finish.release_upstream(),
                    Some(Err(error)) => {
                        tracing::debug!(%error, "backend response body failed");
                        this.finish.lease = None;
                    }
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(data) => data.is_none(),
            Inner::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Inner::Upstream(body) => body.size_hint(),
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
    pub request_id: HeaderValue,
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
    /// The backend connection, with the backend's registry id.
    pub lease: Option<(usize, Sender)>,
    pub status: u16,
    pub bytes: u64,
    /// Boxed: only requests that are logged pay for it.
    pub log: Option<Box<LogInfo>>,
}

impl Finish {
    fn release_upstream(&mut self) {
        if let Some((id, sender)) = self.lease.take() {
            upstream::checkin(id, sender, self.start_ms);
        }
    }
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
                    request_id: log.request_id.to_str().unwrap_or("-"),
                },
            );
        }
    }
}
