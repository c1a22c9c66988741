//! HTTPS to backends: a pool's backends reached over TLS, verified against
//! the system roots or the pool's `ca`, with SNI from the host name the
//! file gives. The HTTP spoken over it is still sessionlb's own HTTP/1.1
//! ([`super::exchange`]); only the byte stream changes.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::config::{self, tls::provider};

/// How one pool reaches its HTTPS backends.
#[derive(Debug)]
pub struct PoolTls {
    /// An error only if the crypto provider cannot do TLS 1.2 and 1.3,
    /// which aws-lc-rs's can: the pool's HTTPS backends then fail closed.
    config: Result<Arc<ClientConfig>, rustls::Error>,
    /// By the pool's backend index: the name each is verified as, `None`
    /// for a backend spoken to in plain HTTP.
    names: Box<[Option<ServerName<'static>>]>,
}

/// What a connection to one backend needs for its handshake.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    config: &'a Result<Arc<ClientConfig>, rustls::Error>,
    name: &'a ServerName<'static>,
}

impl PoolTls {
    /// For `pool`'s backends as `placed` in a snapshot; `None` for a pool
    /// with no backend over TLS.
    pub fn build(pool: &config::Pool, placed: &[config::Placed]) -> Option<PoolTls> {
        if pool.backends.iter().all(|b| b.tls.is_none()) {
            return None;
        }
        let names = placed.iter().map(|b| b.tls.clone()).collect();
        let config = client_config(&pool.tls);
        if let Err(error) = &config {
            tracing::error!(pool = %pool.name, %error, "cannot set up TLS to the backends");
        }
        Some(PoolTls { config, names })
    }

    pub fn target(&self, backend: usize) -> Option<Target<'_>> {
        let name = self.names.get(backend)?.as_ref()?;
        Some(Target {
            config: &self.config,
            name,
        })
    }
}

/// The system's trusted roots (`SSL_CERT_FILE`/`SSL_CERT_DIR` when set),
/// read once: a pool without `ca` uses them.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "cannot read some of the system's trusted certificates");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            if ignored > 0 {
                tracing::warn!(
                    added,
                    ignored,
                    "some system certificates cannot be used as roots"
                );
            }
            Arc::new(roots)
        })
        .clone()
}

fn client_config(tls: &config::BackendTls) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let mut config = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    } else {
        let roots = match &tls.ca {
            Some((_, certs)) => {
                let mut roots = RootCertStore::empty();
                roots.add_parsable_certificates(certs.iter().cloned());
                Arc::new(roots)
            }
            None => system_roots(),
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    // A backend that also speaks HTTP/2 must not choose it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts any certificate (`insecure_skip_verify`), but still checks that
/// the handshake is signed by the certificate's key.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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

/// The TLS handshake over a connected socket.
pub async fn handshake(target: Target<'_>, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
    let config = match target.config {
        Ok(config) => config.clone(),
        Err(error) => return Err(io::Error::other(error.clone())),
    };
    tokio_rustls::TlsConnector::from(config)
        .connect(target.name.clone(), tcp)
        .await
}

impl Target<'_> {
    pub fn name(&self) -> &ServerName<'static> {
        self.name
    }
}

/// A backend connection's byte stream: the socket, or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    pub fn socket(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(_) => Poll::Ready(Ok(())),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
