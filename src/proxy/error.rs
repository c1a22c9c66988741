//! Why a request could not be forwarded, and the response the client gets.

use http::StatusCode;

use super::upstream::{ConnectError, ExchangeError};

/// A request the proxy answers itself.
#[derive(Debug, thiserror::Error)]
pub enum Reject {
    #[error("HTTP/1.1 request without a Host header")]
    MissingHost,
    #[error("no route for this host and path")]
    NoRoute,
    #[error("CONNECT is not proxied")]
    Connect,
    #[error("no backend is up")]
    NoBackend,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// A failed attempt at a backend.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("backend sent no response header within {0:?}")]
    ResponseTimeout(std::time::Duration),
    #[error("{0}")]
    Exchange(#[source] ExchangeError),
    #[error("backend switched protocols though the client did not ask to")]
    UnsolicitedUpgrade,
}

impl Reject {
    pub fn status(&self) -> StatusCode {
        match self {
            Reject::MissingHost => StatusCode::BAD_REQUEST,
            Reject::NoRoute => StatusCode::NOT_FOUND,
            Reject::Connect => StatusCode::METHOD_NOT_ALLOWED,
            Reject::NoBackend => StatusCode::SERVICE_UNAVAILABLE,
            Reject::Upstream(UpstreamError::Connect(ConnectError::Timeout { .. }))
            | Reject::Upstream(UpstreamError::ResponseTimeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            Reject::Upstream(UpstreamError::Exchange(ExchangeError::RequestBody(_))) => {
                StatusCode::BAD_REQUEST
            }
            Reject::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The body the client reads: the status and its cause, without
    /// internal addresses.
    pub fn body(&self) -> &'static str {
        match self {
            Reject::MissingHost => "400 Bad Request: HTTP/1.1 request without a Host header\n",
            Reject::NoRoute => "404 Not Found: no route for this host and path\n",
            Reject::Connect => {
                "405 Method Not Allowed: CONNECT is not proxied (sessionlb is a reverse proxy)\n"
            }
            Reject::NoBackend => {
                "503 Service Unavailable: no backend is up to serve this request\n"
            }
            Reject::Upstream(UpstreamError::Connect(ConnectError::Timeout { .. })) => {
                "504 Gateway Timeout: the backend did not accept the connection in time\n"
            }
            Reject::Upstream(UpstreamError::ResponseTimeout(_)) => {
                "504 Gateway Timeout: the backend did not answer in time\n"
            }
            Reject::Upstream(UpstreamError::Exchange(ExchangeError::RequestBody(_))) => {
                "400 Bad Request: the request body could not be read\n"
            }
            Reject::Upstream(UpstreamError::Connect(_)) => {
                "502 Bad Gateway: could not connect to a backend\n"
            }
            Reject::Upstream(UpstreamError::Exchange(_) | UpstreamError::UnsolicitedUpgrade) => {
                "502 Bad Gateway: the backend closed the connection or sent an invalid response\n"
            }
        }
    }
}
