//! Why a request could not be forwarded, and the response the client gets.

use http::StatusCode;

use super::upstream::{ConnectError, ExchangeError};
use crate::session::SessionError;

/// A request the proxy answers itself.
#[derive(Debug, thiserror::Error)]
pub enum Reject {
    #[error("HTTP/1.1 request without a Host header")]
    MissingHost,
    #[error("more than one Host header, or one that is not host[:port]")]
    Host,
    #[error("the Host header and :authority name different hosts")]
    AuthorityMismatch,
    #[error("more than one Content-Length header")]
    ContentLength,
    #[error("request target longer than the proxy passes on")]
    TargetTooLong,
    #[error("a transfer coding other than chunked")]
    TransferCoding,
    #[error("request body larger than the pool's max_body")]
    BodyTooLarge,
    #[error("no route for this host and path")]
    NoRoute,
    #[error("CONNECT is not proxied")]
    Connect,
    #[error("no backend is up")]
    NoBackend,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Session(#[from] SessionError),
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
    #[error("backend switched to a protocol the client did not ask for")]
    UnsolicitedUpgrade,
}

impl Reject {
    /// A client that gets the framing or the host of a request wrong does
    /// not keep its connection.
    pub fn closes(&self) -> bool {
        matches!(
            self,
            Reject::MissingHost
                | Reject::Host
                | Reject::AuthorityMismatch
                | Reject::ContentLength
                | Reject::TransferCoding
                | Reject::BodyTooLarge
                | Reject::Upstream(UpstreamError::Exchange(
                    ExchangeError::BodyTooLarge | ExchangeError::ClientTimeout(_)
                ))
        )
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Reject::MissingHost
            | Reject::Host
            | Reject::AuthorityMismatch
            | Reject::ContentLength => StatusCode::BAD_REQUEST,
            Reject::TransferCoding => StatusCode::NOT_IMPLEMENTED,
            Reject::TargetTooLong => StatusCode::URI_TOO_LONG,
            Reject::BodyTooLarge
            | Reject::Upstream(UpstreamError::Exchange(ExchangeError::BodyTooLarge)) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Reject::NoRoute => StatusCode::NOT_FOUND,
            Reject::Connect => StatusCode::METHOD_NOT_ALLOWED,
            Reject::NoBackend => StatusCode::SERVICE_UNAVAILABLE,
            Reject::Upstream(UpstreamError::Connect(ConnectError::Timeout { .. }))
            | Reject::Upstream(UpstreamError::ResponseTimeout(_))
            | Reject::Upstream(UpstreamError::Exchange(ExchangeError::BackendTimeout(_))) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Reject::Upstream(UpstreamError::Exchange(ExchangeError::RequestBody(_))) => {
                StatusCode::BAD_REQUEST
            }
            Reject::Upstream(UpstreamError::Exchange(ExchangeError::ClientTimeout(_))) => {
                StatusCode::REQUEST_TIMEOUT
            }
            Reject::Upstream(_) | Reject::Session(SessionError::TooLarge { .. }) => {
                StatusCode::BAD_GATEWAY
            }
            Reject::Session(SessionError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Reject::Session(SessionError::Random(_) | SessionError::Encode(_)) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The body the client reads: the status and its cause, without
    /// internal addresses.
    pub fn body(&self) -> &'static str {
        match self {
            Reject::MissingHost => "400 Bad Request: HTTP/1.1 request without a Host header\n",
            Reject::Host => {
                "400 Bad Request: more than one Host header, or one that is not host[:port]\n"
            }
            Reject::AuthorityMismatch => {
                "400 Bad Request: the Host header and :authority name different hosts\n"
            }
            Reject::ContentLength => "400 Bad Request: more than one Content-Length header\n",
            Reject::TargetTooLong => "414 URI Too Long: the request target is too long\n",
            Reject::TransferCoding => {
                "501 Not Implemented: only the chunked transfer coding is supported\n"
            }
            Reject::BodyTooLarge
            | Reject::Upstream(UpstreamError::Exchange(ExchangeError::BodyTooLarge)) => {
                "413 Content Too Large: the request body exceeds this server's limit\n"
            }
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
            Reject::Upstream(UpstreamError::Exchange(ExchangeError::BackendTimeout(_))) => {
                "504 Gateway Timeout: the backend stopped reading the request\n"
            }
            Reject::Upstream(UpstreamError::Exchange(ExchangeError::RequestBody(_))) => {
                "400 Bad Request: the request body could not be read\n"
            }
            Reject::Upstream(UpstreamError::Exchange(ExchangeError::ClientTimeout(_))) => {
                "408 Request Timeout: the request body stopped arriving\n"
            }
            Reject::Upstream(UpstreamError::Connect(_)) => {
                "502 Bad Gateway: could not connect to a backend\n"
            }
            Reject::Upstream(UpstreamError::Exchange(_) | UpstreamError::UnsolicitedUpgrade) => {
                "502 Bad Gateway: the backend closed the connection or sent an invalid response\n"
            }
            Reject::Session(SessionError::Unavailable(_)) => {
                "503 Service Unavailable: the session store is unavailable\n"
            }
            Reject::Session(SessionError::TooLarge { .. }) => {
                "502 Bad Gateway: the application's session is larger than the proxy stores (max_blob_bytes)\n"
            }
            Reject::Session(SessionError::Random(_) | SessionError::Encode(_)) => {
                "500 Internal Server Error: no session could be created\n"
            }
        }
    }
}
