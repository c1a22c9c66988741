//! A small HTTP client for tests, over HTTP/1.1 or h2c (prior knowledge).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    /// Every `Set-Cookie` of the response, as sent.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    pub fn backend(&self) -> String {
        self.headers
            .get("x-backend")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
}

pub fn h1() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A client that opens a new connection for every request.
pub fn h1_fresh() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

pub async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Resp {
    let resp = tokio::time::timeout(super::DEADLINE, client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub async fn get(client: &HttpClient, url: &str) -> Resp {
    send(
        client,
        Request::get(url).body(Full::new(Bytes::new())).unwrap(),
    )
    .await
}

pub async fn get_with(client: &HttpClient, url: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(client, b.body(Full::new(Bytes::new())).unwrap()).await
}

/// Sends raw bytes on a new connection and reads until the server closes
/// or `timeout` passes.
pub async fn raw(addr: std::net::SocketAddr, data: &[u8], timeout: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(data).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// An HTTP/1.1 client whose connections come from `local` (any 127.0.0.0/8
/// address works on Linux loopback): a distinct client as the proxy sees it.
pub fn h1_from(local: std::net::IpAddr) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(local));
    Client::builder(TokioExecutor::new()).build(connector)
}

/// A client that keeps cookies, as a browser does (name=value only).
pub struct Browser {
    pub client: HttpClient,
    pub cookies: std::collections::BTreeMap<String, String>,
}

impl Browser {
    pub fn new(client: HttpClient) -> Browser {
        Browser {
            client,
            cookies: Default::default(),
        }
    }

    pub async fn get(&mut self, url: &str) -> Resp {
        let cookie: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut b = Request::get(url);
        if !cookie.is_empty() {
            b = b.header("cookie", cookie.join("; "));
        }
        let r = send(&self.client, b.body(Full::new(Bytes::new())).unwrap()).await;
        for v in r.headers.get_all("set-cookie") {
            let s = v.to_str().unwrap();
            let pair = s.split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            self.cookies
                .insert(k.trim().to_string(), v.trim().to_string());
        }
        r
    }
}
