//! TLS for tests, on both sides of the proxy:
//!
//! - [`Ca`] and [`Leaf`]: certificate authorities, intermediates and server
//!   certificates made at run time with rcgen (ECDSA P-256 unless a test
//!   brings an RSA key), written as PEM files where the proxy reads them;
//!   the key in PKCS#8, SEC1 or PKCS#1 form.
//! - rustls clients ([`client_config`]) that either verify against a test
//!   CA or take any certificate, so that a test can see which certificate,
//!   protocol version, ALPN protocol and handshake kind it got.
//! - [`TlsHttp`]: HTTP/1.1 or HTTP/2 (as ALPN chose) over one TLS stream.
//! - [`TlsBackend`]: an HTTPS backend, on its own thread and runtime, that
//!   counts the TCP connections it accepts and records the SNI it saw; it
//!   can echo, digest and answer early a request body, and echo WebSocket.
//!
//! Everything started here is stopped when its handle drops.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme, SupportedProtocolVersion};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::client::TlsStream;

use super::DEADLINE;
use super::client::Resp;

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn named(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// A certificate authority: a root, or an intermediate under another.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pub cert: rcgen::Certificate,
    /// PEM of the intermediates from this one up (empty for a root): what
    /// a server sends after its leaf.
    chain: String,
}

impl Ca {
    /// A self-signed root whose subject is `cn`.
    pub fn new(cn: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let params = Ca::params(cn);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            params,
            key,
            cert,
            chain: String::new(),
        }
    }

    fn params(cn: &str) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = named(cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, cn: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let params = Ca::params(cn);
        let cert = params.signed_by(&key, &self.issuer()).unwrap();
        let chain = format!("{}{}", cert.pem(), self.chain);
        Ca {
            params,
            key,
            cert,
            chain,
        }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// Writes this CA's certificate (PEM) to `dir/name`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.pem()).unwrap();
        path
    }

    /// A server certificate for `names` (DNS names or IP addresses; the
    /// first is also its common name), with a new P-256 key.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with(leaf_params(names), KeyPair::generate().unwrap())
    }

    /// A certificate from `params` for `key`, signed by this CA.
    pub fn leaf_with(&self, params: CertificateParams, key: KeyPair) -> Leaf {
        let cert = params.signed_by(&key, &self.issuer()).unwrap();
        Leaf {
            der: cert.der().clone(),
            pem: cert.pem(),
            chain: self.chain.clone(),
            key,
        }
    }
}

/// Parameters of a server certificate for `names` (DNS names or IP
/// addresses; the first is also its common name).
pub fn leaf_params(names: &[&str]) -> CertificateParams {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name = named(names.first().copied().unwrap_or("leaf"));
    params
}

/// A server certificate, its issuers' chain and its key.
pub struct Leaf {
    pub der: CertificateDer<'static>,
    /// The leaf alone.
    pub pem: String,
    /// The intermediates that follow it in a served chain (may be empty).
    pub chain: String,
    pub key: KeyPair,
}

impl Leaf {
    /// The PEM a server is configured with: the leaf, then its chain.
    pub fn cert_pem(&self) -> String {
        format!("{}{}", self.pem, self.chain)
    }

    /// The key as PKCS#8 (`BEGIN PRIVATE KEY`).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// An EC key as SEC1 (`BEGIN EC PRIVATE KEY`, as `openssl ecparam
    /// -genkey` writes it: with the curve and the public key).
    pub fn sec1_key_pem(&self) -> String {
        let pkcs8 = self.key.serialize_der();
        let inner = pkcs8_inner(&pkcs8);
        // ECPrivateKey ::= SEQUENCE { version, privateKey OCTET STRING, ... }
        let (_, fields, _) = der_read(inner);
        let (_, _version, rest) = der_read(fields);
        let (tag, scalar, _) = der_read(rest);
        assert_eq!(tag, 0x04, "not an EC private key");
        let p256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        let mut point = vec![0u8];
        point.extend_from_slice(self.key.public_key_raw());
        let sec1 = der(
            0x30,
            &[
                der(0x02, &[1]),
                der(0x04, scalar),
                der(0xa0, &p256),
                der(0xa1, &der(0x03, &point)),
            ]
            .concat(),
        );
        pem("EC PRIVATE KEY", &sec1)
    }

    /// An RSA key as PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    pub fn pkcs1_key_pem(&self) -> String {
        let pkcs8 = self.key.serialize_der();
        pem("RSA PRIVATE KEY", pkcs8_inner(&pkcs8))
    }

    /// Writes `dir/<stem>.pem` (leaf and chain) and `dir/<stem>.key`
    /// (PKCS#8); returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        self.write_key_as(dir, stem, &self.key_pem())
    }

    /// As [`Leaf::write`], with the key file holding `key_pem`.
    pub fn write_key_as(&self, dir: &Path, stem: &str, key_pem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, self.cert_pem()).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        (cert, key)
    }

    /// A rustls server configuration serving this certificate.
    pub fn server_config(&self, alpn: &[&str]) -> rustls::ServerConfig {
        let mut chain = vec![self.der.clone()];
        chain.extend(pem_certs(&self.chain));
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        config
    }
}

/// The certificates in a PEM text, in order.
pub fn pem_certs(text: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(text.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}

/// The private key inside a PKCS#8 `PrivateKeyInfo` (for EC, an
/// `ECPrivateKey`; for RSA, a PKCS#1 `RSAPrivateKey`).
fn pkcs8_inner(pkcs8: &[u8]) -> &[u8] {
    let (_, info, _) = der_read(pkcs8);
    let (_, _version, rest) = der_read(info);
    let (_, _algorithm, rest) = der_read(rest);
    let (tag, key, _) = der_read(rest);
    assert_eq!(tag, 0x04, "not a PKCS#8 key");
    key
}

/// One DER element: its tag, its contents, and what follows it.
fn der_read(b: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = b[0];
    let (len, head) = match b[1] {
        n if n < 0x80 => (n as usize, 2),
        n => {
            let k = (n & 0x7f) as usize;
            let len = b[2..2 + k].iter().fold(0usize, |a, &x| a << 8 | x as usize);
            (len, 2 + k)
        }
    };
    (tag, &b[head..head + len], &b[head + len..])
}

fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = contents.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(contents);
    out
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A verifier that takes any certificate (and checks the handshake's
/// signatures): for tests that look at which certificate came.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub const TLS12: &SupportedProtocolVersion = &rustls::version::TLS12;
pub const TLS13: &SupportedProtocolVersion = &rustls::version::TLS13;

/// A client configuration: verifying against `root` (or taking any
/// certificate when `None`), offering `alpn` (none when empty), speaking
/// `versions` (both TLS 1.2 and 1.3 when empty). It does not resume
/// sessions, so that every handshake shows the certificate the server
/// chooses now (a resumed one shows the first session's); a test of
/// resumption sets `resumption`.
pub fn client_config(
    root: Option<&Ca>,
    alpn: &[&str],
    versions: &[&'static SupportedProtocolVersion],
) -> ClientConfig {
    let versions = match versions {
        [] => &[TLS13, TLS12][..],
        v => v,
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap();
    let mut config = match root {
        Some(root) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(root.der()).unwrap();
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            .with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config.resumption = rustls::client::Resumption::disabled();
    config
}

/// A TLS connection to `addr` for the server name `name` (sent as SNI
/// unless it is an IP address or the configuration disables SNI).
pub async fn try_connect(
    addr: SocketAddr,
    name: &str,
    config: &Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(name.to_string()).unwrap();
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let handshake = async {
        let tcp = TcpStream::connect(addr).await?;
        connector.connect(name, tcp).await
    };
    tokio::time::timeout(DEADLINE, handshake)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("TLS handshake timed out")))
}

/// As [`try_connect`]; panics when the handshake fails.
pub async fn connect(
    addr: SocketAddr,
    name: &str,
    config: &Arc<ClientConfig>,
) -> TlsStream<TcpStream> {
    try_connect(addr, name, config)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake with {addr} as {name:?}: {e}"))
}

/// The certificate the server presented first (its leaf) in this
/// connection's handshake, which must have been a full one.
pub fn peer_leaf(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    let conn = s.get_ref().1;
    assert_ne!(
        conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "a resumed handshake presents no certificate"
    );
    conn.peer_certificates().expect("no certificate")[0].clone()
}

/// The leaf certificate served to a client connecting as `name` (any
/// certificate accepted; SNI sent only when `sni`).
pub async fn served_leaf(addr: SocketAddr, name: &str, sni: bool) -> CertificateDer<'static> {
    let mut config = client_config(None, &[], &[]);
    config.enable_sni = sni;
    let s = connect(addr, name, &Arc::new(config)).await;
    peer_leaf(&s)
}

/// A request body a [`TlsHttp`] sends: whole ([`full`]) or in pieces
/// ([`streamed`]).
pub type ReqBody = BoxBody<Bytes, Infallible>;

/// A body sent whole (with its length).
pub fn full(data: impl Into<Bytes>) -> ReqBody {
    Full::new(data.into()).boxed()
}

/// A body sent as `pieces`, of a length it does not tell: chunked over
/// HTTP/1.1.
pub fn streamed(pieces: Vec<Bytes>) -> ReqBody {
    let frames = futures_util::stream::iter(pieces.into_iter().map(|p| Ok(Frame::data(p))));
    BodyExt::boxed(StreamBody::new(frames))
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<ReqBody>),
    H2(hyper::client::conn::http2::SendRequest<ReqBody>),
}

/// HTTP over one TLS connection: HTTP/2 when ALPN chose `h2`, HTTP/1.1
/// otherwise.
pub struct TlsHttp {
    sender: Sender,
    authority: String,
}

impl TlsHttp {
    /// `authority` goes in `Host` (HTTP/1.1) or `:authority` (HTTP/2).
    pub async fn new(stream: TlsStream<TcpStream>, authority: &str) -> TlsHttp {
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(stream);
        let sender = if h2 {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("h2 handshake");
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("http1 handshake");
            tokio::spawn(conn.with_upgrades());
            Sender::H1(sender)
        };
        TlsHttp {
            sender,
            authority: authority.to_string(),
        }
    }

    pub fn is_h2(&self) -> bool {
        matches!(self.sender, Sender::H2(_))
    }

    pub async fn get(&mut self, path: &str) -> Resp {
        self.get_with(path, &[]).await
    }

    pub async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Resp {
        tokio::time::timeout(DEADLINE, self.try_get_with(path, headers))
            .await
            .expect("request timed out")
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// A GET that may fail (the connection closed).
    pub async fn try_get_with(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Resp, hyper::Error> {
        let mut b = self.request(hyper::Method::GET, path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.try_send(b.body(full(Bytes::new())).unwrap()).await
    }

    /// A request builder for `method path` on this connection: the
    /// authority in `Host` (HTTP/1.1) or in the URI (HTTP/2).
    pub fn request(&self, method: hyper::Method, path: &str) -> hyper::http::request::Builder {
        let b = Request::builder().method(method);
        if self.is_h2() {
            b.uri(format!("https://{}{path}", self.authority))
        } else {
            b.uri(path).header("host", &self.authority)
        }
    }

    /// Sends `req` and reads its whole response, within [`DEADLINE`].
    pub async fn send(&mut self, req: Request<ReqBody>) -> Resp {
        let what = format!("{} {}", req.method(), req.uri());
        tokio::time::timeout(DEADLINE, self.try_send(req))
            .await
            .unwrap_or_else(|_| panic!("{what}: no whole response within {DEADLINE:?}"))
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// Sends `req` and reads its whole response; fails when the
    /// connection does.
    pub async fn try_send(&mut self, req: Request<ReqBody>) -> Result<Resp, hyper::Error> {
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        let version = resp.version();
        let body = resp.into_body().collect().await?.to_bytes();
        let mut headers = headers;
        headers.insert("x-test-version", format!("{version:?}").parse().unwrap());
        Ok(Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// The HTTP version a [`TlsHttp`] response came in (`"HTTP/2.0"`,
/// `"HTTP/1.1"`).
pub fn version(r: &Resp) -> String {
    r.headers
        .get("x-test-version")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// An HTTPS backend: HTTP/1.1 over TLS (ALPN `http/1.1`), keep-alive.
/// Every response carries `x-backend: <name>`.
///
/// - `/headers`: the request's headers, one `name: value` a line
/// - `/echo`: streams the request body back as it reads it
/// - `/upload`: reads the body, then answers `<length> <digest>` (see
///   [`digest`]); `/upload?slow` pauses a millisecond after each piece it
///   reads (with [`TlsBackend::start_reading_small`], the proxy's writes
///   to it then keep meeting a full socket)
/// - `/first/<n>`: reads the body until it has `n` bytes of it (as
///   slowly as `/upload?slow` with `?slow`), then answers `200` with a chunked
///   body: the bytes past the first `n` it has read, then the rest of the
///   body as it arrives. `x-first: <n>` tells it read them.
/// - `/ws`: WebSocket echo
/// - anything else: its name
pub struct TlsBackend {
    pub addr: SocketAddr,
    pub name: String,
    accepted: Arc<AtomicU64>,
    handshakes: Arc<AtomicU64>,
    snis: Arc<Mutex<Vec<Option<String>>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsBackend {
    pub fn start(name: &str, leaf: &Leaf) -> TlsBackend {
        TlsBackend::start_with(name, leaf, None)
    }

    /// A backend that reads at most 8 KiB at a time (hyper's smallest
    /// read buffer): with `?slow`, a request body comes out of its socket
    /// at about 8 KiB a millisecond.
    pub fn start_reading_small(name: &str, leaf: &Leaf) -> TlsBackend {
        TlsBackend::start_with(name, leaf, Some(8192))
    }

    fn start_with(name: &str, leaf: &Leaf, max_buf: Option<usize>) -> TlsBackend {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        if max_buf.is_some() {
            // A small receive window, fixed (no autotuning), and small
            // segments, inherited by every accepted socket. The sender's
            // buffer is sized by its segments (about 20 of them): the
            // proxy's writes then find the socket full at any moment the
            // backend is behind, not only past megabytes of loopback
            // buffers.
            let sock = socket2::SockRef::from(&std_listener);
            sock.set_recv_buffer_size(16 * 1024).unwrap();
            sock.set_tcp_mss(1024).unwrap();
        }
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(leaf.server_config(&["http/1.1"])));
        let accepted = Arc::new(AtomicU64::new(0));
        let handshakes = Arc::new(AtomicU64::new(0));
        let snis = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = {
            let (name, accepted, handshakes, snis) = (
                name.to_string(),
                accepted.clone(),
                handshakes.clone(),
                snis.clone(),
            );
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                    let serve = async {
                        loop {
                            let Ok((tcp, _)) = listener.accept().await else {
                                continue;
                            };
                            accepted.fetch_add(1, Ordering::SeqCst);
                            let (acceptor, name, handshakes, snis) = (
                                acceptor.clone(),
                                name.clone(),
                                handshakes.clone(),
                                snis.clone(),
                            );
                            tokio::spawn(async move {
                                let Ok(tls) = acceptor.accept(tcp).await else {
                                    return;
                                };
                                handshakes.fetch_add(1, Ordering::SeqCst);
                                let sni = tls.get_ref().1.server_name().map(str::to_string);
                                snis.lock().unwrap().push(sni);
                                let service = service_fn(move |req| answer(req, name.clone()));
                                let mut http = hyper::server::conn::http1::Builder::new();
                                if let Some(max) = max_buf {
                                    http.max_buf_size(max);
                                }
                                let _ = http
                                    .serve_connection(TokioIo::new(tls), service)
                                    .with_upgrades()
                                    .await;
                            });
                        }
                    };
                    tokio::select! {
                        _ = stopped => {}
                        _ = serve => {}
                    }
                });
            })
        };
        TlsBackend {
            addr,
            name: name.to_string(),
            accepted,
            handshakes,
            snis,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// TLS handshakes completed so far.
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::SeqCst)
    }

    /// The SNI of each completed handshake, in order.
    pub fn snis(&self) -> Vec<Option<String>> {
        self.snis.lock().unwrap().clone()
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type RespBody = BoxBody<Bytes, hyper::Error>;

fn text(body: impl Into<Bytes>) -> RespBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A digest of a body (64-bit FNV-1a), to tell that it arrived intact
/// without sending it back.
pub fn digest(data: &[u8]) -> u64 {
    let mut d = Digest::default();
    d.update(data);
    d.value()
}

/// Incremental [`digest`].
#[derive(Clone, Copy)]
pub struct Digest(u64);

impl Default for Digest {
    fn default() -> Self {
        Digest(0xcbf29ce484222325)
    }
}

impl Digest {
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }

    pub fn value(&self) -> u64 {
        self.0
    }
}

/// `n` printable ASCII bytes that differ from one offset to the next (a
/// simple generator seeded by `seed`), so that a piece lost, repeated or
/// moved shows, and a body read as text compares whole.
pub fn pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b'!' + ((x >> 24) % 94) as u8
        })
        .collect()
}

async fn answer(
    mut req: Request<Incoming>,
    name: String,
) -> Result<Response<RespBody>, Infallible> {
    let slow = req.uri().query() == Some("slow");
    let path = req.uri().path().to_string();
    let body = if path == "/headers" {
        let mut text = String::new();
        for (k, v) in req.headers() {
            text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("<binary>")));
        }
        self::text(text)
    } else if path == "/echo" {
        req.into_body().boxed()
    } else if path == "/upload" {
        let mut body = req.into_body();
        let (mut n, mut d) = (0usize, Digest::default());
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return Ok(Response::new(text("body failed")));
            };
            if let Some(data) = frame.data_ref() {
                n += data.len();
                d.update(data);
            }
            if slow {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        text(format!("{n} {:016x}", d.value()))
    } else if let Some(first) = path.strip_prefix("/first/") {
        let first: usize = first.parse().unwrap_or(0);
        let mut body = req.into_body();
        let mut got = 0usize;
        let mut past = Bytes::new();
        while got < first {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        let take = data.len().min(first - got);
                        got += take;
                        past = data.split_off(take);
                    }
                }
                _ => break,
            }
            if slow {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        let head = futures_util::stream::iter((!past.is_empty()).then(|| Ok(Frame::data(past))));
        let rest = http_body_util::BodyStream::new(body);
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(head.chain(rest))));
        r.headers_mut()
            .insert("x-first", got.to_string().parse().unwrap());
        r.headers_mut().insert("x-backend", name.parse().unwrap());
        return Ok(r);
    } else if path == "/ws" {
        return Ok(websocket(&mut req, &name));
    } else {
        text(name.clone())
    };
    let mut r = Response::new(body);
    r.headers_mut().insert("x-backend", name.parse().unwrap());
    Ok(r)
}

fn websocket(req: &mut Request<Incoming>, name: &str) -> Response<RespBody> {
    let Some(headers) = super::backend::websocket_echo(req, name) else {
        return Response::new(text("not a websocket request"));
    };
    let mut r = Response::new(text(Bytes::new()));
    *r.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
    *r.headers_mut() = headers;
    r
}
