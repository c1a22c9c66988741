//! The ticket the browser holds instead of the app's session:
//! `<id>.<secret>`, both from the OS CSPRNG.
//!
//! The id names the session in the store for all of its life, so that an
//! operator can revoke it and one deletion ends it. The secret is one
//! version's: every change of the session stores it under a new secret and
//! gives the client that made the change a new ticket, so a ticket held
//! before the change (planted by an attacker, say) never reads what the
//! change wrote. Sealed (`encrypt = true`), the secret is the AES-256-GCM
//! key of that version; plain, the store keeps a MAC under it. Either way
//! the proxy keeps the secret nowhere: a store dump, with or without the
//! configuration, signs no one in.

use std::fmt;
use std::ops::Range;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// 128 bits: what the issue of an id must be, never guessable.
pub const ID_BYTES: usize = 16;
/// 256 bits, the AES-256 key itself: uniformly random and used for one
/// session only, it needs no derivation.
pub const SECRET_BYTES: usize = 32;
const ID_CHARS: usize = 22;
const SECRET_CHARS: usize = 43;
/// The cookie value: `<id>.<secret>`.
pub const TICKET_CHARS: usize = ID_CHARS + 1 + SECRET_CHARS;
/// A plain version's check: 128 bits of an HMAC-SHA256, base64url.
pub const CHECK_CHARS: usize = 22;

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

    /// The id spelling `raw`: how a store key derived from an id is
    /// written, in the ids' own alphabet and length.
    pub fn from_bytes(raw: &[u8; ID_BYTES]) -> SessionId {
        let mut id = [0u8; ID_CHARS];
        // 16 bytes are 22 characters: the slice always fits
        let _ = URL_SAFE_NO_PAD.encode_slice(raw, &mut id);
        SessionId(id)
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
    secret: [u8; SECRET_BYTES],
    /// The version is sealed under the secret, not only checked with it.
    sealed: bool,
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

pub(super) fn random<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut bytes = [0u8; N];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| RandomError)?;
    Ok(bytes)
}

impl Ticket {
    /// A new session's ticket.
    pub fn mint(sealed: bool) -> Result<Ticket, RandomError> {
        let raw: [u8; ID_BYTES] = random()?;
        Ok(Ticket {
            id: SessionId::from_bytes(&raw),
            secret: random()?,
            sealed,
        })
    }

    /// The ticket of the session's next version: the same session, a new
    /// secret.
    pub fn rotate(&self) -> Result<Ticket, RandomError> {
        Ok(Ticket {
            id: self.id,
            secret: random()?,
            sealed: self.sealed,
        })
    }

    /// Reads a cookie value, `<id>.<secret>`. Malformed is `None`, never an
    /// error a client can learn from.
    pub fn parse(value: &[u8], sealed: bool) -> Option<Ticket> {
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
        Some(Ticket { id, secret, sealed })
    }

    /// The cookie value.
    pub fn value(&self) -> String {
        let mut s = String::with_capacity(TICKET_CHARS);
        s.push_str(self.id.as_str());
        s.push('.');
        URL_SAFE_NO_PAD.encode_string(self.secret, &mut s);
        s
    }

    pub fn is_sealed(&self) -> bool {
        self.sealed
    }

    /// A plain version's check: a MAC of what it is bound to (`aad`) and
    /// its lines, under the secret. The store holds the check, never the
    /// secret, so a reader of the store can read a plain session but not
    /// sign in with it.
    pub fn check(&self, aad: &[u8], payload: &[u8]) -> [u8; CHECK_CHARS] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.secret);
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(aad);
        ctx.update(payload);
        let tag = ctx.sign();
        let mut out = [0u8; CHECK_CHARS];
        // 16 bytes are 22 characters: the slice always fits
        let _ = URL_SAFE_NO_PAD.encode_slice(&tag.as_ref()[..16], &mut out);
        out
    }

    /// Seals `plain` under the secret: a fresh 96-bit nonce, then the
    /// ciphertext and tag. `aad` binds what is stored beside it (the id,
    /// the creation time, the pools that may read it), so a sealed blob
    /// cannot be moved to another session or pool, or made younger.
    pub fn seal(&self, aad: &[u8], plain: &[u8], out: &mut Vec<u8>) -> Result<(), RandomError> {
        let Some(key) = self.key() else {
            return Err(RandomError);
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
        let key = self.key()?;
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = sealed.split_at_mut(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let plain = key.open_in_place(nonce, Aad::from(aad), body).ok()?;
        Some(NONCE_LEN..NONCE_LEN + plain.len())
    }

    /// The AES key under the secret (`None` never happens for 32 bytes).
    fn key(&self) -> Option<LessSafeKey> {
        UnboundKey::new(&AES_256_GCM, &self.secret)
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
        assert_eq!(
            plain.value().len(),
            66,
            "a plain session's ticket has a secret too"
        );
        assert!(
            !Ticket::parse(plain.value().as_bytes(), false)
                .unwrap()
                .is_sealed()
        );
        // a bare id is no ticket
        assert!(Ticket::parse(plain.id.as_str().as_bytes(), false).is_none());
    }

    #[test]
    fn a_rotated_ticket_is_the_same_session_under_a_new_secret() {
        let a = Ticket::mint(true).unwrap();
        let b = a.rotate().unwrap();
        assert_eq!(a.id, b.id);
        assert_ne!(a.value(), b.value());
        assert_ne!(a, b);
        let mut sealed = Vec::new();
        a.seal(b"aad", b"x=1", &mut sealed).unwrap();
        assert!(b.open(b"aad", &mut sealed.clone()).is_none());
        let plain = Ticket::mint(false).unwrap();
        let next = plain.rotate().unwrap();
        assert!(!next.is_sealed());
        assert_ne!(plain.check(b"aad", b"x=1"), next.check(b"aad", b"x=1"));
        assert_eq!(plain.check(b"aad", b"x=1"), plain.check(b"aad", b"x=1"));
        assert_ne!(plain.check(b"aad", b"x=1"), plain.check(b"aae", b"x=1"));
        assert_ne!(plain.check(b"aad", b"x=1"), plain.check(b"aad", b"x=2"));
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
