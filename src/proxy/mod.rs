//! Forwarding one request: route, pick a backend, rewrite headers, send,
//! retry where that is safe, and stream the response back.

mod body;
mod error;
pub mod headers;
mod route;
pub mod sticky;
mod tunnel;
pub mod upstream;

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::Poll;

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
use crate::session::{Load, Loaded, Origin};
use body::{Finish, LogInfo};
use headers::{Forwarded, RequestId, Seen};
use upstream::{ClientBody, Exchange, Head, Outgoing, RequestHead};

/// Serves one request from a client connection. Never fails: every problem
/// becomes a response with a status and a short plain-text cause.
///
/// Everything up to sending is synchronous, except loading a session from
/// a store on the network (Redis); the future that waits holds the request
/// once (it is moved several times by hyper and tokio, so its size is paid
/// per request).
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
    let step = match admit(req, &seen, &mut finish) {
        Err(reject) => Err(reject),
        Ok(mut admitted) => match &finish.rt.sessions[admitted.pool] {
            None => {
                if !finish.rt.ticket_cookies.is_empty() {
                    crate::session::cookies::strip(
                        &mut admitted.parts.headers,
                        &finish.rt.ticket_cookies,
                    );
                }
                Ok(Step::Ready(compose(
                    admitted,
                    &seen,
                    &finish,
                    client,
                    &request_id,
                )))
            }
            Some(mode) => {
                let recall = &finish.conn.recall;
                match mode.load_now(mode.presented(&admitted.parts.headers, recall), recall) {
                    // the memory store answers at once: nothing to wait for
                    Load::Done(Ok(mut loaded)) => Ok(Step::Loaded(
                        with_session_cookies(
                            mode,
                            &mut loaded,
                            admitted,
                            seen,
                            &finish,
                            client,
                            &request_id,
                        ),
                        loaded,
                    )),
                    Load::Done(Err(error)) => Err(error.into()),
                    Load::Wait(claim) => Ok(Step::Session(Box::new(Waiting {
                        admitted,
                        seen,
                        client,
                        claim,
                    }))),
                }
            }
        },
    };
    async move {
        // The session's steps are in this future rather than a future of
        // their own: they wait where no exchange is in flight, so they
        // share its room and leave it hardly larger, where a boxed future
        // around the whole exchange would cost each such request a large
        // allocation and copy.
        let mut loaded = None;
        let prepared = match step {
            Ok(Step::Ready(prepared)) => Ok(prepared),
            Ok(Step::Loaded(prepared, found)) => {
                loaded = Some(found);
                Ok(prepared)
            }
            Ok(Step::Session(waiting)) => {
                match load_session(waiting, &mut finish, &request_id).await {
                    Ok((prepared, found)) => {
                        loaded = Some(found);
                        Ok(prepared)
                    }
                    Err(reject) => Err(reject),
                }
            }
            Err(reject) => Err(reject),
        };
        let mut result = match prepared {
            Ok(mut prepared) => exchange(&mut prepared, &mut finish).await,
            Err(reject) => Err(reject),
        };
        if !finish.rt.ticket_cookies.is_empty()
            && let Ok(answer) = &mut result
        {
            drop_tickets(answer, &finish);
        }
        if let Some(loaded) = loaded
            && let Ok(answer) = &mut result
            && let Err(reject) = store_session(answer, loaded, &finish).await
        {
            result = Err(reject);
        }
        Ok(respond(result, finish, &request_id))
    }
}

/// A routed request: ready to send (with its session, when the store
/// answered at once), or waiting for its session.
enum Step {
    Ready(Prepared),
    Loaded(Prepared, Loaded),
    /// Boxed: the request as it came, which only requests whose store
    /// answers over the network keep this long.
    Session(Box<Waiting>),
}

/// A request of a pool in shared-store mode, set aside while its session
/// is loaded: its head is written for the backend only then.
struct Waiting {
    admitted: Admitted,
    seen: Seen,
    client: IpAddr,
    claim: crate::session::Claim,
}

/// Loads a request's session (one store round trip) and writes the
/// request for the backend with it.
async fn load_session(
    waiting: Box<Waiting>,
    finish: &mut Finish,
    request_id: &RequestId,
) -> Result<(Prepared, Loaded), Reject> {
    let rt = finish.rt.clone();
    let Some(mode) = rt.sessions[waiting.admitted.pool].as_ref() else {
        return Err(Reject::NoRoute);
    };
    let mut loaded = mode.load(waiting.claim, &finish.conn.recall).await?;
    let Waiting {
        admitted,
        seen,
        client,
        ..
    } = *waiting;
    Ok((
        with_session_cookies(
            mode,
            &mut loaded,
            admitted,
            seen,
            finish,
            client,
            request_id,
        ),
        loaded,
    ))
}

/// Writes a request of a pool in shared-store mode for the backend, with
/// its session in place of its ticket.
#[inline]
fn with_session_cookies(
    mode: &crate::session::Mode,
    loaded: &mut Loaded,
    mut admitted: Admitted,
    mut seen: Seen,
    finish: &Finish,
    client: IpAddr,
    request_id: &RequestId,
) -> Prepared {
    let conn = &finish.conn;
    let headers = &admitted.parts.headers;
    loaded.came_from(Origin {
        client,
        https: conn.tls
            || seen.forwarded_https(
                headers,
                headers::is_trusted(conn.peer.ip(), &finish.rt.trusted_proxies),
            ),
        default_path_is_session: crate::session::cookies::default_path(admitted.parts.uri.path())
            == mode.settings.path,
    });
    let rewritten = mode.to_backend(&mut admitted.parts.headers, loaded, &conn.recall);
    seen.session_rewrote(rewritten.cookies, rewritten.added);
    compose(admitted, &seen, finish, client, request_id)
}

/// Drops a backend's `Set-Cookie` fields for a ticket cookie: only the
/// proxy issues tickets (see `session::cookies::drop_tickets`).
fn drop_tickets(answer: &mut Answer, finish: &Finish) {
    let rt = &finish.rt;
    let dropped =
        crate::session::cookies::drop_tickets(&mut answer.head.headers, &rt.ticket_cookies);
    if dropped == 0 {
        return;
    }
    let pool = finish.pool.and_then(|p| rt.pools.get(p));
    let backend = pool
        .zip(finish.backend)
        .and_then(|(p, b)| p.backends.get(b));
    tracing::warn!(
        pool = pool.map_or("", |p| &*p.name),
        backend = backend.map_or("", |b| &*b.state.name),
        dropped,
        "a backend set a session ticket cookie: dropped (only the proxy issues tickets)"
    );
    finish
        .conn
        .shared
        .sessions
        .stats
        .count_ticket_cookies_dropped(dropped as u64);
}

/// Takes the session's changes out of the response and stores them before
/// its head goes to the client.
async fn store_session(answer: &mut Answer, loaded: Loaded, finish: &Finish) -> Result<(), Reject> {
    let rt = &finish.rt;
    let Some(mode) = finish.pool.and_then(|p| rt.sessions.get(p)?.as_ref()) else {
        return Ok(());
    };
    let stored = mode
        .from_backend(&mut answer.head.headers, loaded, &finish.conn.recall)
        .await;
    if let Err(error) = stored {
        if let Some(exchange) = answer.body.take() {
            exchange.abort();
        }
        return Err(error.into());
    }
    Ok(())
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
            if reject.closes() {
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
    /// The client's side of a WebSocket (or other) upgrade, and the
    /// protocols asked of the backend. Boxed: upgrades are rare, and this
    /// is part of every request's future.
    client_upgrade: Option<Box<(hyper::upgrade::OnUpgrade, Vec<u8>)>>,
}

/// The longest request target passed on (nginx's and Apache's default);
/// longer gets `414`.
pub const MAX_TARGET: usize = 8 * 1024;

/// A request checked and routed, its head not yet written for the backend.
struct Admitted {
    parts: http::request::Parts,
    body: ClientBody,
    pool: usize,
    /// The target's authority, when it wins over `Host` (see
    /// [`target_host`]).
    target_host: Option<HeaderValue>,
}

/// Checks the request and routes it.
fn admit(req: Request<Incoming>, seen: &Seen, finish: &mut Finish) -> Result<Admitted, Reject> {
    let rt = &*finish.rt;
    let (parts, body) = req.into_parts();
    let h1 = parts.version != Version::HTTP_2;
    // from here on, a request refused with its body unread still lets the
    // client read the answer (see ClientBody)
    let body = ClientBody::new(body, h1);
    if parts.method == Method::CONNECT {
        // a tunnel to anywhere is a forward proxy's job
        return Err(Reject::Connect);
    }
    if seen.unknown_coding {
        return Err(Reject::TransferCoding);
    }
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    if target.len() > MAX_TARGET {
        return Err(Reject::TargetTooLong);
    }
    if seen.content_lengths > 1 {
        return Err(Reject::ContentLength);
    }
    let target_host = target_host(&parts, seen)?;
    let host = target_host.as_ref().or(seen.host.as_ref());
    let pool_index = rt
        .router
        .route(host.map(HeaderValue::as_bytes), parts.uri.path())
        .ok_or(Reject::NoRoute)?;
    finish.pool = Some(pool_index);
    let pool = &rt.pools[pool_index];
    if let (Some(limit), Some(length)) = (pool.max_body, body.length())
        && length > limit
    {
        return Err(Reject::BodyTooLarge);
    }
    Ok(Admitted {
        parts,
        body,
        pool: pool_index,
        target_host,
    })
}

/// Writes a routed request for the backend (hop-by-hop headers, forwarding
/// headers, origin-form target, route cookie).
fn compose(
    admitted: Admitted,
    seen: &Seen,
    finish: &Finish,
    client: IpAddr,
    request_id: &RequestId,
) -> Prepared {
    let rt = &*finish.rt;
    let Admitted {
        mut parts,
        body,
        pool: pool_index,
        target_host,
    } = admitted;
    let h1 = parts.version != Version::HTTP_2;
    let pool = &rt.pools[pool_index];
    let host = target_host.as_ref().or(seen.host.as_ref());
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());

    let pinned = pool.sticky.as_deref().and_then(|r| match &r.prefix {
        Some(app_cookie) => sticky::take_prefixed_token(&mut parts.headers, app_cookie)
            .and_then(|token| r.backend_for(token.as_bytes())),
        None => {
            sticky::find_cookie(&parts.headers, &r.cookie).and_then(|token| r.backend_for(token))
        }
    });

    let upgrade = match h1 && seen.may_upgrade() {
        true => seen.upgrade(&parts.headers, &rt.config.server.upgrade_protocols),
        false => None,
    };
    let client_upgrade = match upgrade {
        Some(protocols) => parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .map(|on| Box::new((on, protocols))),
        None => None,
    };
    let mut head = RequestHead::with_room(&parts.method, target, parts.headers.len(), seen.added);
    let conn = &finish.conn;
    let formatted;
    let client_ip = if client == conn.peer.ip() {
        &conn.peer_ip
    } else {
        formatted = HeaderValue::try_from(client.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("-"));
        &formatted
    };
    headers::write_request_fields(
        &mut head,
        &parts.headers,
        seen,
        &Forwarded {
            peer: &conn.peer_ip,
            client: client_ip,
            peer_trusted: headers::is_trusted(conn.peer.ip(), &rt.trusted_proxies),
            proto: if conn.tls { "https" } else { "http" },
            host,
            host_in_place: target_host.is_none(),
            request_id,
        },
        client_upgrade.as_ref().map(|upgrade| &upgrade.1[..]),
    );
    Prepared {
        pool: pool_index,
        target: Target { client, pinned },
        out: Some(Outgoing::new(head, parts.method, body, pool.max_body)),
        client_upgrade,
    }
}

/// Checks the request's host, and returns the target's authority when
/// there is one, since it wins over `Host`: HTTP/2's `:authority` (a `Host`
/// that disagrees is refused, RFC 9113 §8.3.1) or an absolute-form target
/// (whose authority replaces `Host`, RFC 9112 §3.2.2). `Ok(None)`: the
/// host is the request's own `Host` field, or an HTTP/1.0 request names
/// none.
fn target_host(parts: &http::request::Parts, seen: &Seen) -> Result<Option<HeaderValue>, Reject> {
    if seen.hosts > 1 {
        return Err(Reject::Host);
    }
    let target = match (parts.uri.authority(), &seen.host) {
        (Some(authority), given) => {
            let given_differs = given.as_ref().is_some_and(|h| {
                !h.as_bytes()
                    .eq_ignore_ascii_case(authority.as_str().as_bytes())
            });
            if given_differs && parts.version == Version::HTTP_2 {
                return Err(Reject::AuthorityMismatch);
            }
            Some(HeaderValue::from_str(authority.as_str()).map_err(|_| Reject::Host)?)
        }
        (None, Some(_)) => None,
        (None, None) if parts.version == Version::HTTP_11 => return Err(Reject::MissingHost),
        (None, None) => return Ok(None),
    };
    let host = target.as_ref().or(seen.host.as_ref());
    match host.is_some_and(|h| headers::valid_host(h.as_bytes())) {
        true => Ok(target),
        false => Err(Reject::Host),
    }
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
        let id = backend.slot.id;
        let tls = rt.upstream_tls[prepared.pool]
            .as_ref()
            .and_then(|t| t.target(b));
        let conn = match upstream::checkout(id, finish.start_ms) {
            Some(conn) => conn,
            // boxed: a new connection is rare, and its large future would
            // otherwise make every request's future larger
            None => {
                match Box::pin(upstream::connect(
                    &backend.slot,
                    backend.addr,
                    rt.timeouts.connect,
                    tls,
                ))
                .await
                {
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
        let Some(mut unsent) = prepared.out.take() else {
            return Err(last_error.map_or(Reject::NoBackend, Reject::Upstream));
        };
        backend.state.begin_request();
        finish.backend = Some(b);
        unsent.to_backend(backend.addr);
        let has_body = unsent.has_body();
        let mut ex = Exchange::new(conn, unsent);
        // The request goes out, bounded by the I/O timeouts of whichever
        // side stalls; a backend may answer before it has read it all.
        let early = std::future::poll_fn(|cx| match ex.poll_head(cx, &rt.timeouts) {
            Poll::Pending if ex.is_sent() => Poll::Ready(None),
            polled => polled.map(Some),
        })
        .await;
        let head = match early {
            Some(head) => Some(head),
            None => {
                // the backend's time to answer counts from the request
                // written to its end: an upload takes what it takes
                let sent_ms = match has_body {
                    true => crate::clock::now_ms(),
                    false => finish.start_ms,
                };
                let due = sent_ms + crate::clock::millis(rt.timeouts.response_header);
                // the exchange was polled a moment ago, in this same task
                // poll, and is registered for what it waits on: looking
                // again at once would only find the same
                let mut polled = true;
                let head = std::future::poll_fn(|cx| match std::mem::take(&mut polled) {
                    true => Poll::Pending,
                    false => ex.poll_head(cx, &rt.timeouts),
                });
                finish.conn.response_within(due, head).await
            }
        };
        match head {
            Some(Ok(mut head)) => {
                note_placement(pool, b, pick.outcome, &mut head.headers, finish.conn.tls);
                let body = if head.status == StatusCode::SWITCHING_PROTOCOLS {
                    let Some(upgrade) = prepared.client_upgrade.take() else {
                        return Err(UpstreamError::UnsolicitedUpgrade.into());
                    };
                    let (client_upgrade, asked) = *upgrade;
                    if !headers::upgrade_answers(&asked, &head.headers) {
                        return Err(UpstreamError::UnsolicitedUpgrade.into());
                    }
                    tunnel(
                        client_upgrade,
                        ex,
                        finish.conn.clone(),
                        rt.timeouts.tunnel_idle,
                    );
                    None
                } else {
                    Some(ex)
                };
                return Ok(Answer { head, body });
            }
            Some(Err(error)) => {
                ex.abort();
                backend.state.end_request();
                finish.backend = None;
                if error.is_client_fault() {
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
                ex.abort();
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
            reason = "passive",
            %error,
            down_for = ?pool.health.fail_timeout,
            "backend marked down"
        );
    } else {
        tracing::debug!(pool = &*pool.name, backend = &*backend.state.name, %error, "backend attempt failed");
    }
}

/// Splices an upgraded client connection to the backend connection that
/// switched protocols, until either side closes or the tunnel is idle for
/// `idle`.
fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    backend: Exchange,
    conn: Arc<Connection>,
    idle: std::time::Duration,
) {
    let guard = conn.tunnel_guard();
    let (backend, early) = backend.into_upgraded();
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
        if let Err(error) = tunnel::splice(client, backend, idle).await {
            tracing::debug!(%error, "tunnel closed");
        }
    });
}
