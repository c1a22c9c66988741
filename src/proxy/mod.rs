//! Forwarding one request: route, pick a backend, rewrite headers, send,
//! retry where that is safe, and stream the response back.

mod body;
mod error;
pub mod headers;
mod route;
pub mod sticky;
pub mod upstream;

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

pub use body::ProxyBody;
pub use error::{Reject, UpstreamError};
pub use route::Router;

use crate::balance::{Outcome, Pool, Target, Tried};
use crate::server::Connection;
use body::{Finish, LogInfo};
use headers::{Forwarded, RequestId, Seen};
use upstream::{ClientBody, Exchange, ExchangeError, Head, Outgoing, RequestHead};

/// Serves one request from a client connection. Never fails: every problem
/// becomes a response with a status and a short plain-text cause.
///
/// Everything up to sending is synchronous; the future that waits for the
/// backend holds the request once (it is moved several times by hyper and
/// tokio, so its size is paid per request).
pub fn handle(
    req: Request<Incoming>,
    conn: Arc<Connection>,
) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static {
    let start = Instant::now();
    let start_ms = crate::clock::ms_of(start);
    conn.request_started();
    let rt = conn.shared.load();
    let client = headers::client_addr(conn.peer.ip(), req.headers(), &rt.trusted_proxies);
    let seen = Seen::scan(req.headers());
    let request_id = headers::request_id(&seen);
    let log = rt.access_log.map(|format| {
        Box::new(LogInfo {
            format,
            client: (client != conn.peer.ip()).then_some(client),
            method: req.method().clone(),
            uri: req.uri().clone(),
            request_id: request_id.clone(),
        })
    });
    let mut finish = Finish {
        conn,
        rt,
        start,
        start_ms,
        pool: None,
        backend: None,
        status: 0,
        bytes: 0,
        log,
    };
    let prepared = prepare(req, &seen, &mut finish, client, &request_id);
    async move {
        let result = match prepared {
            Ok(mut prepared) => exchange(&mut prepared, &mut finish).await,
            Err(reject) => Err(reject),
        };
        Ok(respond(result, finish, &request_id))
    }
}

/// The response to send for what the exchange with the backend gave.
fn respond(
    result: Result<Answer, Reject>,
    mut finish: Finish,
    request_id: &RequestId,
) -> Response<ProxyBody> {
    match result {
        Ok(Answer {
            head:
                Head {
                    status,
                    mut headers,
                    hop,
                    ..
                },
            body,
        }) => {
            finish.status = status.as_u16();
            headers::finish_response_fields(&mut headers, hop, body.is_none());
            let body = match body {
                Some(exchange) => ProxyBody::upstream(exchange, finish),
                None => ProxyBody::full(Bytes::new(), finish),
            };
            let mut resp = Response::new(body);
            *resp.status_mut() = status;
            *resp.headers_mut() = headers;
            resp
        }
        Err(reject) => {
            let status = reject.status();
            match &reject {
                Reject::Upstream(error) => tracing::warn!(
                    request_id = request_id.as_str(),
                    status = status.as_u16(),
                    %error,
                    "request failed"
                ),
                other => {
                    tracing::debug!(status = status.as_u16(), reason = %other, "request refused")
                }
            }
            finish.status = status.as_u16();
            let mut resp = local_response(status, reject.body(), finish);
            if matches!(reject, Reject::MissingHost) {
                // a client that gets framing wrong does not keep its connection
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
    }
}

fn local_response(status: StatusCode, body: &'static str, finish: Finish) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(Bytes::from_static(body.as_bytes()), finish));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A request ready to be sent: where it goes and what it asked for.
struct Prepared {
    pool: usize,
    target: Target,
    /// The request as the backend gets it; taken while an attempt has it.
    out: Option<Outgoing>,
    /// The client's side of a WebSocket (or other) upgrade.
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// Routes the request and writes it for the backend (hop-by-hop headers,
/// forwarding headers, origin-form target, route cookie).
fn prepare(
    req: Request<Incoming>,
    seen: &Seen,
    finish: &mut Finish,
    client: IpAddr,
    request_id: &RequestId,
) -> Result<Prepared, Reject> {
    let rt = &*finish.rt;
    let (mut parts, body) = req.into_parts();
    let h1 = parts.version != Version::HTTP_2;
    // from here on, a request refused with its body unread still lets the
    // client read the answer (see ClientBody)
    let body = ClientBody::new(body, h1);
    if parts.method == Method::CONNECT {
        // a tunnel to anywhere is a forward proxy's job
        return Err(Reject::Connect);
    }
    let from_target;
    let host = match &seen.host {
        Some(h) => Some(h),
        None => {
            from_target = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
            from_target.as_ref()
        }
    };
    if host.is_none() && parts.version == Version::HTTP_11 {
        return Err(Reject::MissingHost);
    }
    let host_name = host.and_then(|h| h.to_str().ok());
    let pool_index = rt
        .router
        .route(host_name, parts.uri.path())
        .ok_or(Reject::NoRoute)?;
    finish.pool = Some(pool_index);
    let pool = &rt.pools[pool_index];

    let pinned = pool.sticky.as_deref().and_then(|r| match &r.prefix {
        Some(app_cookie) => sticky::take_prefixed_token(&mut parts.headers, app_cookie)
            .and_then(|token| r.backend_for(token.as_bytes())),
        None => {
            sticky::find_cookie(&parts.headers, &r.cookie).and_then(|token| r.backend_for(token))
        }
    });

    let upgrade = h1 && seen.upgrade(&parts.headers);
    let client_upgrade = upgrade
        .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
        .flatten();
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut head = RequestHead::new(&parts.method, target, parts.headers.len());
    headers::write_request_fields(
        &mut head,
        &parts.headers,
        seen,
        &Forwarded {
            peer: &finish.conn.peer_ip,
            peer_trusted: headers::is_trusted(finish.conn.peer.ip(), &rt.trusted_proxies),
            proto: if finish.conn.tls { "https" } else { "http" },
            host,
            request_id,
        },
        upgrade,
    );
    Ok(Prepared {
        pool: pool_index,
        target: Target { client, pinned },
        out: Some(Outgoing::new(head, parts.method, body, seen.content_length)),
        client_upgrade,
    })
}

/// A backend's response head, with the exchange that reads its body
/// (`None` after `101 Switching Protocols`: the connection is a tunnel).
struct Answer {
    head: Head,
    body: Option<Exchange>,
}

/// Picks a backend, sends, and retries elsewhere while that cannot repeat
/// the request's effect. The request is taken when sent and put back when
/// it may be sent again.
async fn exchange(prepared: &mut Prepared, finish: &mut Finish) -> Result<Answer, Reject> {
    let rt = finish.rt.clone();
    let pool = &rt.pools[prepared.pool];
    let mut tried = Tried::default();
    let mut last_error: Option<UpstreamError> = None;
    loop {
        let Some(pick) = pool.select(&prepared.target, &tried) else {
            return Err(last_error.map_or(Reject::NoBackend, Reject::Upstream));
        };
        let b = pick.index;
        let backend = &pool.backends[b];
        let id = backend.state.id;
        let conn = match upstream::checkout(id, finish.start_ms) {
            Some(conn) => conn,
            // boxed: a new connection is rare, and its large future would
            // otherwise make every request's future larger
            None => {
                match Box::pin(upstream::connect(id, backend.addr, rt.timeouts.connect)).await {
                    Ok(conn) => conn,
                    Err(error) => {
                        mark_failed(pool, b, &error);
                        tried.insert(b);
                        last_error = Some(error.into());
                        continue;
                    }
                }
            }
        };
        let reused = conn.reused();
        let Some(unsent) = prepared.out.take() else {
            return Err(last_error.map_or(Reject::NoBackend, Reject::Upstream));
        };
        backend.state.begin_request();
        finish.backend = Some(b);
        let mut ex = Exchange::new(conn, unsent);
        let head = finish
            .conn
            .response_within(
                finish.start_ms + crate::clock::millis(rt.timeouts.response_header),
                std::future::poll_fn(|cx| ex.poll_head(cx)),
            )
            .await;
        match head {
            Some(Ok(mut head)) => {
                note_placement(pool, b, pick.outcome, &mut head.headers, finish.conn.tls);
                let body = if head.status == StatusCode::SWITCHING_PROTOCOLS {
                    let Some(client_upgrade) = prepared.client_upgrade.take() else {
                        return Err(UpstreamError::UnsolicitedUpgrade.into());
                    };
                    tunnel(client_upgrade, ex, finish.conn.clone());
                    None
                } else {
                    Some(ex)
                };
                return Ok(Answer { head, body });
            }
            Some(Err(error)) => {
                backend.state.end_request();
                finish.backend = None;
                if let ExchangeError::RequestBody(_) = error {
                    // the client's fault, not the backend's
                    return Err(UpstreamError::Exchange(error).into());
                }
                let error = UpstreamError::Exchange(error);
                if reused && !ex.answered() {
                    // A pooled connection the backend had closed (it
                    // restarted, or its idle timeout was shorter): not the
                    // backend failing, but its other idle ones are suspect.
                    upstream::discard(id);
                } else {
                    mark_failed(pool, b, &error);
                    tried.insert(b);
                }
                match ex.into_retry() {
                    Some(again) => {
                        prepared.out = Some(again);
                        last_error = Some(error);
                    }
                    None => return Err(error.into()),
                }
            }
            None => {
                let error = UpstreamError::ResponseTimeout(rt.timeouts.response_header);
                mark_failed(pool, b, &error);
                return Err(error.into());
            }
        }
    }
}

/// Counts how a request was placed and, for sticky pools, pins the client:
/// a new route cookie when it was placed anew, or the app's session cookie
/// prefixed with the backend's token.
fn note_placement(
    pool: &Pool,
    b: usize,
    outcome: Outcome,
    headers: &mut http::HeaderMap,
    tls: bool,
) {
    if !outcome.is_sticky() {
        return;
    }
    pool.stats.count_sticky(outcome);
    let backend = &pool.backends[b];
    if outcome == Outcome::Hit && backend.drain {
        backend.state.count_drain_pinned();
    }
    if let Some(routes) = &pool.sticky {
        match &routes.prefix {
            Some(app_cookie) => sticky::prefix_set_cookies(headers, app_cookie, routes.token(b)),
            None if outcome != Outcome::Hit => {
                headers.append(header::SET_COOKIE, routes.set_cookie(b, tls).clone());
            }
            None => {}
        }
    }
}

fn mark_failed(pool: &Pool, b: usize, error: &dyn std::fmt::Display) {
    let backend = &pool.backends[b];
    if pool.record_failure(b) {
        tracing::warn!(
            pool = &*pool.name,
            backend = &*backend.state.name,
            %error,
            down_for = ?pool.health.fail_timeout,
            "backend marked down"
        );
    } else {
        tracing::debug!(pool = &*pool.name, backend = &*backend.state.name, %error, "backend attempt failed");
    }
}

/// Splices an upgraded client connection to the backend connection that
/// switched protocols, until either side closes.
fn tunnel(client: hyper::upgrade::OnUpgrade, backend: Exchange, conn: Arc<Connection>) {
    let guard = conn.tunnel_guard();
    let (mut backend, early) = backend.into_upgraded();
    tokio::spawn(async move {
        let _guard = guard;
        let client = match client.await {
            Ok(c) => c,
            Err(error) => {
                tracing::debug!(%error, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        // what the backend sent right after its 101 belongs to the client
        if !early.is_empty()
            && let Err(error) = client.write_all(&early).await
        {
            tracing::debug!(%error, "tunnel closed with an error");
            return;
        }
        if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            tracing::debug!(%error, "tunnel closed with an error");
        }
    });
}
