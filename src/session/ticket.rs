//! The ticket the browser holds instead of the app's session: `<id>.<secret>`
//! (or `<id>` when blobs are stored plain), both from the OS CSPRNG.
//!
//! The id names the session in the store, so an operator can revoke it; the
//! secret is the key that seals the session, and the proxy keeps it
//! nowhere: a store dump, with or without the configuration, opens nothing.

use std::fmt;
use std::ops::Range;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// 128 bits: what the issue of an id must be, never guessable.
pub const ID_BYTES: usize = 16;
/// 256 bits, the AES-256 key itself: uniformly random and used for one
/// session only, it needs no derivation.
pub const SECRET_BYTES: usize = 32;
const ID_CHARS: usize = 22;
const SECRET_CHARS: usize = 43;
/// The longest cookie value: `<id>.<secret>`.
pub const TICKET_CHARS: usize = ID_CHARS + 1 + SECRET_CHARS;

/// A session's name in the store: 22 base64url characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId([u8; ID_CHARS]);

impl SessionId {
    /// Accepts exactly what [`Ticket::mint`] makes: anything else a client
    /// sends is no session, whatever it looks like.
    pub fn parse(text: &[u8]) -> Option<SessionId> {
        if text.len() != ID_CHARS || !canonical(text, ID_BYTES) {
            return None;
        }
        let mut id = [0; ID_CHARS];
        id.copy_from_slice(text);
        Some(SessionId(id))
    }

    pub fn as_str(&self) -> &str {
        // base64url characters only, checked when made
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    /// What a log line may show of an id: enough to tell sessions apart,
    /// too little to use one.
    pub fn redacted(&self) -> Redacted<'_> {
        Redacted(self)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.redacted(), f)
    }
}

pub struct Redacted<'a>(&'a SessionId);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}…", &self.0.as_str()[..6])
    }
}

/// Whether `text` is the unpadded base64url of exactly `bytes` bytes, with
/// the unused low bits of the last character zero, so that one id has one
/// spelling.
fn canonical(text: &[u8], bytes: usize) -> bool {
    let mut out = [0u8; SECRET_BYTES + 2];
    matches!(URL_SAFE_NO_PAD.decode_slice(text, &mut out), Ok(n) if n == bytes)
}

/// What the browser's cookie holds.
#[derive(Clone, PartialEq, Eq)]
pub struct Ticket {
    pub id: SessionId,
    /// `None` when blobs are stored plain.
    secret: Option<[u8; SECRET_BYTES]>,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ticket({})", self.id.redacted())
    }
}

/// The OS CSPRNG is not there: nothing can be minted or sealed.
#[derive(Debug, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct RandomError;

/// Seeds the CSPRNG now rather than at the first ticket: its first use
/// gathers entropy for some 100 ms, which would stall a worker's
/// connections in the middle of serving.
pub fn warm_up() {
    let _ = random::<1>();
}

fn random<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut bytes = [0u8; N];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| RandomError)?;
    Ok(bytes)
}

impl Ticket {
    pub fn mint(sealed: bool) -> Result<Ticket, RandomError> {
        let raw: [u8; ID_BYTES] = random()?;
        let mut id = [0u8; ID_CHARS];
        URL_SAFE_NO_PAD
            .encode_slice(raw, &mut id)
            .map_err(|_| RandomError)?;
        let secret = match sealed {
            true => Some(random()?),
            false => None,
        };
        Ok(Ticket {
            id: SessionId(id),
            secret,
        })
    }

    /// The ticket of an unsealed session: its id is all there is to it.
    pub fn unsealed(id: SessionId) -> Ticket {
        Ticket { id, secret: None }
    }

    /// Reads a cookie value: `<id>.<secret>` when `sealed`, `<id>`
    /// otherwise. Malformed is `None`, never an error a client can learn
    /// from.
    pub fn parse(value: &[u8], sealed: bool) -> Option<Ticket> {
        if !sealed {
            return Some(Ticket {
                id: SessionId::parse(value)?,
                secret: None,
            });
        }
        if value.len() != TICKET_CHARS || value[ID_CHARS] != b'.' {
            return None;
        }
        let id = SessionId::parse(&value[..ID_CHARS])?;
        let mut out = [0u8; SECRET_BYTES + 2];
        match URL_SAFE_NO_PAD.decode_slice(&value[ID_CHARS + 1..], &mut out) {
            Ok(SECRET_BYTES) => {}
            _ => return None,
        }
        let mut secret = [0u8; SECRET_BYTES];
        secret.copy_from_slice(&out[..SECRET_BYTES]);
        Some(Ticket {
            id,
            secret: Some(secret),
        })
    }

    /// The cookie value.
    pub fn value(&self) -> String {
        let mut s = String::with_capacity(TICKET_CHARS);
        s.push_str(self.id.as_str());
        if let Some(secret) = &self.secret {
            s.push('.');
            URL_SAFE_NO_PAD.encode_string(secret, &mut s);
        }
        s
    }

    pub fn is_sealed(&self) -> bool {
        self.secret.is_some()
    }

    /// Seals `plain` for this session: a fresh 96-bit nonce, then the
    /// ciphertext and tag. `aad` binds what is stored beside it (the id and
    /// the creation time), so a sealed blob cannot be moved to another
    /// session or made younger.
    pub fn seal(&self, aad: &[u8], plain: &[u8], out: &mut Vec<u8>) -> Result<(), RandomError> {
        let Some(key) = self.key() else {
            out.extend_from_slice(plain);
            return Ok(());
        };
        let nonce: [u8; NONCE_LEN] = random()?;
        let start = out.len();
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let mut body = out.split_off(start + NONCE_LEN);
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut body,
        )
        .map_err(|_| RandomError)?;
        out.extend_from_slice(&body);
        Ok(())
    }

    /// Opens what [`Ticket::seal`] made, in place: where the plain text now
    /// is in `sealed`, or `None` for a wrong secret or a blob that was
    /// changed.
    pub fn open(&self, aad: &[u8], sealed: &mut [u8]) -> Option<Range<usize>> {
        let Some(key) = self.key() else {
            return Some(0..sealed.len());
        };
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = sealed.split_at_mut(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let plain = key.open_in_place(nonce, Aad::from(aad), body).ok()?;
        Some(NONCE_LEN..NONCE_LEN + plain.len())
    }

    fn key(&self) -> Option<LessSafeKey> {
        let secret = self.secret.as_ref()?;
        UnboundKey::new(&AES_256_GCM, secret)
            .ok()
            .map(LessSafeKey::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tickets_read_back_and_differ() {
        let a = Ticket::mint(true).unwrap();
        let b = Ticket::mint(true).unwrap();
        assert_ne!(a.value(), b.value());
        assert_eq!(a.value().len(), 66);
        let back = Ticket::parse(a.value().as_bytes(), true).unwrap();
        assert_eq!(back.value(), a.value());
        let plain = Ticket::mint(false).unwrap();
        assert_eq!(plain.value().len(), 22);
        assert!(Ticket::parse(plain.value().as_bytes(), false).is_some());
        // a sealed pool does not take a bare id, nor a plain one a pair
        assert!(Ticket::parse(plain.value().as_bytes(), true).is_none());
        assert!(Ticket::parse(a.value().as_bytes(), false).is_none());
    }

    #[test]
    fn malformed_tickets_are_no_session() {
        for bad in [
            "",
            "abc",
            "AAAAAAAAAAAAAAAAAAAAAA.",
            "AAAAAAAAAAAAAAAAAAAAA=.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            // unused low bits set: a second spelling of an id
            "AAAAAAAAAAAAAAAAAAAAAB.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA+",
            "AAAAAAAAAAAAAAAAAAAAAA AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(Ticket::parse(bad.as_bytes(), true).is_none(), "{bad:?}");
        }
        assert!(
            Ticket::parse(
                b"AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                true
            )
            .is_some()
        );
    }

    #[test]
    fn sealed_blobs_open_only_with_their_secret_and_place() {
        let t = Ticket::mint(true).unwrap();
        let mut sealed = Vec::new();
        t.seal(b"aad", b"session=hello", &mut sealed).unwrap();
        assert!(!sealed.windows(5).any(|w| w == b"hello"));
        let mut opened = sealed.clone();
        let plain = t.open(b"aad", &mut opened).unwrap();
        assert_eq!(&opened[plain], b"session=hello");
        assert!(t.open(b"other", &mut sealed.clone()).is_none());
        let other = Ticket::mint(true).unwrap();
        assert!(other.open(b"aad", &mut sealed.clone()).is_none());
        let mut flipped = sealed.clone();
        flipped[14] ^= 1;
        assert!(t.open(b"aad", &mut flipped).is_none());
    }

    #[test]
    fn ids_are_redacted_in_logs() {
        let t = Ticket::mint(true).unwrap();
        let shown = format!("{:?} {}", t, t.id.redacted());
        assert!(!shown.contains(t.id.as_str()));
    }
}
