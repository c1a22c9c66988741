//! TLS termination with rustls: each `[[server.tls]]` listener's server
//! configuration, the certificate chosen by SNI, HTTP/2 chosen by ALPN,
//! and resumption that works whichever worker accepts the connection.
//!
//! The certificates were read and checked when the configuration was
//! validated; a listener builds its rustls configuration from the snapshot
//! in effect, again after each reload, so new handshakes use reloaded
//! certificates while established connections keep the ones they agreed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use rustls::server::{ClientHello, ResolvesServerCert, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls::{HandshakeKind, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::conn::ClientStream;
use super::listen::Key;
use crate::config::{self, TlsListener};
use crate::runtime::Runtime;

/// ALPN protocols offered, in the server's order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Sessions the process keeps for TLS 1.2 clients that resume by session
/// id rather than by ticket (oldest dropped first): a few megabytes.
const SESSION_CACHE: usize = 20_000;

/// What resumes a session: one ticket key (rotated every 6 hours, the
/// previous one still accepted) and one session cache for the process,
/// shared by every worker's and every reload's configuration, so a client
/// resumes whichever worker accepts it and across reloads.
struct Resumption {
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    cache: Arc<dyn StoresServerSessions>,
}

fn resumption() -> Option<&'static Resumption> {
    static RESUMPTION: OnceLock<Option<Resumption>> = OnceLock::new();
    RESUMPTION
        .get_or_init(|| match rustls::crypto::aws_lc_rs::Ticketer::new() {
            Ok(ticketer) => Some(Resumption {
                ticketer,
                cache: rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE),
            }),
            Err(error) => {
                tracing::error!(%error, "cannot make TLS ticket keys: sessions will not resume");
                None
            }
        })
        .as_ref()
}

/// TLS handshakes of the process, by how they ended.
#[derive(Debug, Default)]
pub struct Handshakes {
    pub full: AtomicU64,
    pub resumed: AtomicU64,
    /// Failed or abandoned before the handshake completed (including a
    /// client that sent nothing within `timeouts.request_header`).
    pub failed: AtomicU64,
}

pub static HANDSHAKES: Handshakes = Handshakes {
    full: AtomicU64::new(0),
    resumed: AtomicU64::new(0),
    failed: AtomicU64::new(0),
};

impl Handshakes {
    pub(super) fn completed(&self, kind: Option<HandshakeKind>) {
        match kind {
            Some(HandshakeKind::Resumed) => &self.resumed,
            _ => &self.full,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}

/// Picks the certificate by the client's SNI: a name listed by one of the
/// listener's certificates (exactly, or under a `*.` wildcard, one label
/// deep), in the order the file lists them; else the first certificate.
#[derive(Debug)]
struct BySni {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by what follows `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl BySni {
    fn new(certificates: &[config::Certificate]) -> Option<BySni> {
        let default = certificates.first()?.loaded.key.clone();
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        for c in certificates {
            for name in &c.loaded.names {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut wildcard, parent),
                    None => (&mut exact, name.as_str()),
                };
                map.entry(key.to_string())
                    .or_insert_with(|| c.loaded.key.clone());
            }
        }
        Some(BySni {
            exact,
            wildcard,
            default,
        })
    }

    fn find(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            &lower
        } else {
            name
        };
        self.exact.get(name).or_else(|| {
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent)
        })
    }
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello.server_name().and_then(|name| self.find(name));
        Some(chosen.unwrap_or(&self.default).clone())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{listen}: a TLS listener needs at least one certificate")]
    NoCertificate { listen: SocketAddr },
    #[error("{listen}: {source}")]
    Rustls {
        listen: SocketAddr,
        source: rustls::Error,
    },
}

/// The rustls configuration of one listener.
fn server_config(listener: &TlsListener) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let listen = listener.listen;
    let resolver =
        BySni::new(&listener.certificates).ok_or(TlsSetupError::NoCertificate { listen })?;
    let mut config = ServerConfig::builder_with_provider(config::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsSetupError::Rustls { listen, source })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    if let Some(r) = resumption() {
        config.ticketer = r.ticketer.clone();
        config.session_storage = r.cache.clone();
    }
    Ok(Arc::new(config))
}

/// A TLS listener's configuration as of the snapshot it was built from;
/// rebuilt when a reload brings a new one.
#[derive(Clone)]
pub(super) struct Terminator {
    /// What names this `[[server.tls]]` listener across reloads.
    key: Key,
    generation: u64,
    config: Arc<ServerConfig>,
}

impl Terminator {
    /// For the TLS listener `key` of the snapshot `rt`; `None` when it
    /// has none such.
    pub(super) fn new(key: Key, rt: &Runtime) -> Result<Option<Terminator>, TlsSetupError> {
        let Some(listener) = entry(key, rt) else {
            return Ok(None);
        };
        Ok(Some(Terminator {
            key,
            generation: rt.generation,
            config: server_config(listener)?,
        }))
    }

    /// The configuration for a handshake starting now. A reload that
    /// removed this listener leaves it with its last certificates until
    /// the listener stops.
    pub(super) fn current(&mut self, rt: &Runtime) -> Arc<ServerConfig> {
        if rt.generation != self.generation {
            self.generation = rt.generation;
            if let Some(listener) = entry(self.key, rt) {
                match server_config(listener) {
                    Ok(config) => self.config = config,
                    Err(error) => {
                        tracing::error!(%error, "cannot use the reloaded certificates; keeping the previous ones")
                    }
                }
            }
        }
        self.config.clone()
    }
}

/// The `[[server.tls]]` entry of `rt` that `key` names.
fn entry(key: Key, rt: &Runtime) -> Option<&TlsListener> {
    let mut alike = rt.config.server.tls.iter().filter(|t| t.listen == key.addr);
    alike.nth(key.nth)
}

impl ClientStream for TlsStream<TcpStream> {
    fn socket(&self) -> &TcpStream {
        self.get_ref().0
    }

    /// rustls holds decrypted bytes the connection has not read yet, or
    /// the peer's close: either way there is something to act on without
    /// waiting for the socket.
    fn holds_input(&self) -> bool {
        !self.get_ref().1.wants_read()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tls::Loaded;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    fn certificate(names: &[&str]) -> config::Certificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names.clone())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let key = CertifiedKey::from_der(vec![cert.der().clone()], der, &config::tls::provider())
            .unwrap();
        config::Certificate {
            cert: "cert.pem".into(),
            key: "key.pem".into(),
            loaded: Loaded {
                key: Arc::new(key),
                names: names.iter().map(|n| n.to_ascii_lowercase()).collect(),
            },
        }
    }

    #[test]
    fn sni_picks_the_first_certificate_naming_the_host_else_the_first() {
        let certs = [
            certificate(&["a.example"]),
            certificate(&["b.example", "*.b.example"]),
            certificate(&["b.example", "c.example"]),
        ];
        let by = BySni::new(&certs).unwrap();
        let is = |name: &str, i: usize| {
            let got = by.find(name).unwrap_or(&by.default);
            Arc::ptr_eq(got, &certs[i].loaded.key)
        };
        assert!(is("a.example", 0));
        assert!(is("B.Example", 1), "names compare without case");
        assert!(is("www.b.example", 1), "a wildcard covers one label");
        assert!(is("x.www.b.example", 0), "and no more than one");
        assert!(is("c.example", 2));
        assert!(is("unknown.example", 0), "an unknown name gets the first");
        assert!(BySni::new(&[]).is_none());
    }
}
