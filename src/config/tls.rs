//! The TLS files a configuration names, read and checked when it is
//! validated: each listener certificate (its chain in order, its key
//! matching it, its dates) and the CA bundles that verify HTTPS backends.
//! Reading them here makes `sessionlb check`, startup and a reload refuse
//! a bad file alike, with its TOML path, before anything serves with it;
//! the running proxy never reads a certificate file itself.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The one crypto provider of the process: the shared-store mode seals
/// sessions with aws-lc-rs too, so TLS adds no second implementation.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// A listener certificate, ready to serve.
#[derive(Clone)]
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// The DNS names it is for (subject alternative names, else the common
    /// name), lower case; `*.example.com` stays a wildcard.
    pub names: Vec<String>,
}

impl fmt::Debug for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loaded")
            .field("names", &self.names)
            .field("chain", &self.key.cert.len())
            .finish()
    }
}

/// Why a certificate or key file cannot be used, said of the field
/// (`cert` or `key`) that names it.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("no certificate (-----BEGIN CERTIFICATE-----) in {0}")]
    NoCertificate(String),
    #[error("{path}: certificate {index} cannot be parsed: {reason}")]
    BadCertificate {
        path: String,
        index: usize,
        reason: String,
    },
    #[error(
        "chain out of order in {path}: certificate {next} ({subject}) did not issue certificate {index} (issued by {issuer}); list the server's certificate first, then each issuer"
    )]
    OutOfOrder {
        path: String,
        index: usize,
        next: usize,
        issuer: String,
        subject: String,
    },
    #[error("no private key (PKCS#8, PKCS#1 or SEC1 PEM) in {path}: {reason}")]
    NoKey { path: String, reason: String },
    #[error("the key in {key} cannot be used: {reason}")]
    BadKey { key: String, reason: String },
    #[error("the key in {key} does not match the certificate in {cert}")]
    KeyMismatch { key: String, cert: String },
}

impl TlsFileError {
    /// Whether the problem is the key's (said of the `key` field) rather
    /// than the certificate's.
    pub fn is_key(&self) -> bool {
        matches!(
            self,
            TlsFileError::NoKey { .. }
                | TlsFileError::BadKey { .. }
                | TlsFileError::KeyMismatch { .. }
        )
    }
}

/// A listener certificate and its key, with the warning to give when the
/// certificate is outside its validity dates (it is served all the same,
/// as nginx does: a clock or a renewal gone wrong should not take the site
/// down, the operator should hear of it).
pub fn load_certificate(
    cert: &Path,
    key: &Path,
    now: SystemTime,
) -> Result<(Loaded, Option<String>), TlsFileError> {
    let chain = read_chain(cert)?;
    let parsed = parse_all(cert, &chain)?;
    for (index, pair) in parsed.windows(2).enumerate() {
        let (child, parent) = (&pair[0], &pair[1]);
        if child.issuer().as_raw() != parent.subject().as_raw() {
            return Err(TlsFileError::OutOfOrder {
                path: cert.display().to_string(),
                index: index + 1,
                next: index + 2,
                issuer: child.issuer().to_string(),
                subject: parent.subject().to_string(),
            });
        }
    }
    let leaf = &parsed[0];
    let names = names_of(leaf);
    let warning = validity_warning(leaf, now);
    drop(parsed);
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
        rustls::pki_types::pem::Error::Io(io) => TlsFileError::Read {
            path: key.display().to_string(),
            reason: io.to_string(),
        },
        other => TlsFileError::NoKey {
            path: key.display().to_string(),
            reason: other.to_string(),
        },
    })?;
    let certified = CertifiedKey::from_der(chain, private, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsFileError::KeyMismatch {
            key: key.display().to_string(),
            cert: cert.display().to_string(),
        },
        other => TlsFileError::BadKey {
            key: key.display().to_string(),
            reason: other.to_string(),
        },
    })?;
    Ok((
        Loaded {
            key: Arc::new(certified),
            names,
        },
        warning,
    ))
}

/// The certificates of a CA bundle (PEM), each checked to parse.
pub fn load_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let chain = read_chain(path)?;
    parse_all(path, &chain)?;
    Ok(chain)
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let unreadable = |reason: String| TlsFileError::Read {
        path: path.display().to_string(),
        reason,
    };
    // read first: the PEM reader would call an unreadable file empty
    let bytes = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsFileError::NoCertificate(path.display().to_string()));
    }
    Ok(chain)
}

fn parse_all<'a>(
    path: &Path,
    chain: &'a [CertificateDer<'static>],
) -> Result<Vec<X509Certificate<'a>>, TlsFileError> {
    chain
        .iter()
        .enumerate()
        .map(|(i, der)| {
            X509Certificate::from_der(der).map(|(_, c)| c).map_err(|e| {
                TlsFileError::BadCertificate {
                    path: path.display().to_string(),
                    index: i + 1,
                    reason: e.to_string(),
                }
            })
        })
        .collect()
}

fn names_of(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.to_ascii_lowercase());
            }
        }
    }
    names
}

fn validity_warning(cert: &X509Certificate<'_>, now: SystemTime) -> Option<String> {
    let validity = cert.validity();
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let at = |ts: i64| {
        let t = UNIX_EPOCH + Duration::from_secs(ts.max(0) as u64);
        humantime::format_rfc3339_seconds(t).to_string()
    };
    let (start, end) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    if now_s > end {
        Some(format!(
            "the certificate expired on {}; clients will refuse it",
            at(end)
        ))
    } else if now_s < start {
        Some(format!(
            "the certificate is not valid before {}; clients will refuse it until then",
            at(start)
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    fn pem(label: &str, der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    struct Files(tempfile::TempDir);

    impl Files {
        fn new() -> Files {
            Files(tempfile::tempdir().unwrap())
        }

        fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
            let path = self.0.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    /// A CA, and a leaf for `names` issued by it.
    fn issued(names: &[&str], key: &KeyPair) -> (String, String) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "test CA");
        let ca_cert = ca.clone().self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let leaf = CertificateParams::new(names)
            .unwrap()
            .signed_by(key, &issuer)
            .unwrap();
        (leaf.pem(), ca_cert.pem())
    }

    #[test]
    fn a_chain_in_order_with_its_key_loads_with_its_names() {
        let files = Files::new();
        let key = KeyPair::generate().unwrap();
        let (leaf, ca) = issued(&["Example.com", "*.example.net"], &key);
        let cert = files.write("chain.pem", &format!("{leaf}{ca}"));
        let key = files.write("key.pem", &key.serialize_pem());
        let (loaded, warning) = load_certificate(&cert, &key, SystemTime::now()).unwrap();
        assert_eq!(loaded.names, ["example.com", "*.example.net"]);
        assert_eq!(loaded.key.cert.len(), 2);
        assert_eq!(warning, None);
    }

    #[test]
    fn a_chain_out_of_order_is_refused() {
        let files = Files::new();
        let key = KeyPair::generate().unwrap();
        let (leaf, ca) = issued(&["example.com"], &key);
        let cert = files.write("chain.pem", &format!("{ca}{leaf}"));
        let key = files.write("key.pem", &key.serialize_pem());
        let error = load_certificate(&cert, &key, SystemTime::now()).unwrap_err();
        assert!(!error.is_key());
        assert!(error.to_string().contains("chain out of order"), "{error}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let files = Files::new();
        let (leaf, _) = issued(&["example.com"], &KeyPair::generate().unwrap());
        let cert = files.write("cert.pem", &leaf);
        let other = files.write("key.pem", &KeyPair::generate().unwrap().serialize_pem());
        let error = load_certificate(&cert, &other, SystemTime::now()).unwrap_err();
        assert!(error.is_key());
        assert!(error.to_string().contains("does not match"), "{error}");
    }

    #[test]
    fn pkcs8_pkcs1_and_sec1_keys_load() {
        let files = Files::new();
        // SEC1: the EC key as OpenSSL writes `BEGIN EC PRIVATE KEY`
        let ec = KeyPair::generate().unwrap();
        let (leaf, _) = issued(&["ec.example"], &ec);
        let pair = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &ec.serialize_der(),
        )
        .unwrap();
        let sec1 =
            aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::EcPrivateKeyRfc5915Der>::as_der(
                &pair.private_key(),
            )
            .unwrap();
        let cert = files.write("ec.pem", &leaf);
        let key = files.write("ec.key", &pem("EC PRIVATE KEY", sec1.as_ref()));
        load_certificate(&cert, &key, SystemTime::now()).unwrap();
        // PKCS#1: the RSA key as `BEGIN RSA PRIVATE KEY`, the PKCS#8
        // wrapper's octet string
        let rsa =
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
        let (leaf, _) = issued(&["rsa.example"], &rsa);
        let pkcs8 = rsa.serialize_der();
        let (_, info) = x509_parser::der_parser::parse_der(&pkcs8).unwrap();
        let pkcs1 = info.as_sequence().unwrap()[2].as_slice().unwrap();
        let cert = files.write("rsa.pem", &leaf);
        let key = files.write("rsa.key", &pem("RSA PRIVATE KEY", pkcs1));
        load_certificate(&cert, &key, SystemTime::now()).unwrap();
        // PKCS#8, as rcgen writes it
        let key = files.write("rsa8.key", &rsa.serialize_pem());
        load_certificate(&cert, &key, SystemTime::now()).unwrap();
    }

    #[test]
    fn a_certificate_out_of_its_dates_loads_with_a_warning_naming_the_date() {
        let files = Files::new();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["old.example".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        let cert = files.write("old.pem", &params.self_signed(&key).unwrap().pem());
        let key = files.write("old.key", &key.serialize_pem());
        let (_, warning) = load_certificate(&cert, &key, SystemTime::now()).unwrap();
        let warning = warning.unwrap();
        assert!(warning.contains("expired on 2020-01-01"), "{warning}");
        let early = UNIX_EPOCH + Duration::from_secs(1_500_000_000); // 2017
        let (_, warning) = load_certificate(&cert, &key, early).unwrap();
        let warning = warning.unwrap();
        assert!(warning.contains("not valid before 2019-01-01"), "{warning}");
    }

    #[test]
    fn files_that_are_not_pem_say_so() {
        let files = Files::new();
        let junk = files.write("junk.pem", "hello\n");
        let error = load_certificate(&junk, &junk, SystemTime::now()).unwrap_err();
        assert!(error.to_string().contains("no certificate"), "{error}");
        let missing = files.0.path().join("missing.pem");
        let error = load_ca(&missing).unwrap_err();
        assert!(error.to_string().contains("cannot read"), "{error}");
    }
}
