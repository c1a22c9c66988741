//! What a client connection remembers of the session its last request
//! opened, so that the next request with the same ticket, finding the same
//! stored value, skips reading the ticket and opening the value again.
//!
//! A browser sends every request of a page (and every HTTP/2 stream) with
//! the same ticket over the same connection; opening a sealed session (an
//! AES-256-GCM key schedule and decryption) is the largest cost of the
//! shared-store path. Nothing is skipped that decides anything: the store
//! is read on every request as before (a revoked, expired or changed
//! session is seen at once), and a value opens to the same lines for the
//! same ticket every time. The connection keeps only what its own requests
//! carry anyway (the ticket, and the cookies it sends to the backend), and
//! only while it is open.
//!
//! A browser also sends the same `Cookie` field, byte for byte, on request
//! after request; the field the backend got for it is remembered too, and
//! given again for the same field, the same pool and the same stored
//! value, for as long as none of the session's cookies has expired: the
//! rewrite is a function of exactly those.

use std::sync::Mutex;

use bytes::Bytes;
use http::HeaderValue;

use super::record::{Binding, Opened};
use super::store::Held;
use super::ticket::{TICKET_CHARS, Ticket};

/// One per client connection; empty until a request of a pool in
/// shared-store mode opens a session.
#[derive(Debug, Default)]
pub struct Recall(Mutex<Option<Box<Recent>>>);

#[derive(Debug)]
struct Recent {
    /// The cookie value, as the client sends it.
    raw: [u8; TICKET_CHARS],
    raw_len: usize,
    ticket: Ticket,
    /// The pools the session was opened for: another scope's pool does
    /// not get it.
    binding: Binding,
    stored: Bytes,
    opened: Opened,
    /// The memory store's entry `stored` came from.
    held: Option<Held>,
    forwarded: Option<Forwarded>,
}

/// A `Cookie` field of the client's and what the backend got in its place.
#[derive(Debug)]
struct Forwarded {
    /// The pool's shared-store mode that rewrote it (`Mode::id`).
    mode: u64,
    /// The client's field, copied: the request's own bytes share a buffer
    /// with everything else it read.
    from: Bytes,
    to: HeaderValue,
    /// Unix seconds at which the first of the session's cookies expires.
    until: u64,
}

/// The ticket a request carries, with what the connection recalls of its
/// session when the request's `Cookie` field is the one it forwarded last.
#[derive(Debug)]
pub struct Claim {
    pub ticket: Ticket,
    pub recalled: Option<Recalled>,
}

/// A session as the connection opened and forwarded it: valid only while
/// the store still holds `stored`.
#[derive(Debug)]
pub struct Recalled {
    stored: Bytes,
    pub opened: Opened,
    pub forward: HeaderValue,
    pub held: Option<Held>,
}

impl Recalled {
    /// Whether the store's answer is the value this was opened from.
    pub fn holds_for(&self, stored: &Bytes) -> bool {
        same(&self.stored, stored)
    }
}

impl Recent {
    /// Whether this is `ticket`'s session with `stored` as its value.
    fn is(&self, ticket: &Ticket, stored: &Bytes) -> bool {
        same(&self.stored, stored) && self.ticket == *ticket
    }
}

fn same(a: &Bytes, b: &Bytes) -> bool {
    (a.as_ptr() == b.as_ptr() && a.len() == b.len()) || a == b
}

impl Recall {
    /// The ticket a cookie value reads as, when it is the one remembered
    /// for `binding`.
    pub fn ticket(&self, raw: &[u8], binding: &Binding) -> Option<Ticket> {
        let recent = self.0.lock().ok()?;
        let recent = recent.as_ref()?;
        (recent.raw[..recent.raw_len] == *raw && recent.binding == *binding)
            .then(|| recent.ticket.clone())
    }

    /// The claim of a request whose one `Cookie` field is, byte for byte,
    /// the one the connection forwarded last for `mode`.
    /// `now` (unix seconds) is read only when a cookie of the session
    /// expires.
    pub fn claim(&self, mode: u64, field: &[u8], now: impl FnOnce() -> u64) -> Option<Claim> {
        let recent = self.0.lock().ok()?;
        let recent = recent.as_ref()?;
        let f = recent.forwarded.as_ref()?;
        let fresh = f.until == u64::MAX || now() < f.until;
        (f.mode == mode && f.from == field && fresh).then(|| Claim {
            ticket: recent.ticket.clone(),
            recalled: Some(Recalled {
                stored: recent.stored.clone(),
                opened: recent.opened.clone(),
                forward: f.to.clone(),
                held: recent.held.clone(),
            }),
        })
    }

    /// Remembers what the backend got for the client's `Cookie` field, when
    /// `opened` is the session remembered (a concurrent stream of the
    /// connection may have opened another since).
    pub fn forwarded(&self, opened: &Opened, mode: u64, from: &[u8], to: HeaderValue, until: u64) {
        if let Ok(mut recent) = self.0.lock()
            && let Some(recent) = recent.as_mut()
            && recent.opened.is(opened)
        {
            recent.forwarded = Some(Forwarded {
                mode,
                from: Bytes::copy_from_slice(from),
                to,
                until,
            });
        }
    }

    /// What `stored` opens to for `ticket` in pools of `binding`, when
    /// that is what was opened last (its current version); `held`, the
    /// store's entry it was read from now, is kept.
    pub fn opened(
        &self,
        ticket: &Ticket,
        binding: &Binding,
        stored: &Bytes,
        held: Option<Held>,
    ) -> Option<Opened> {
        let mut recent = self.0.lock().ok()?;
        let recent = recent
            .as_mut()
            .filter(|r| r.is(ticket, stored) && r.binding == *binding)?;
        if held.is_some() {
            recent.held = held;
        }
        Some(recent.opened.clone())
    }

    /// Keeps `held`, the store's entry a lookup found `stored` in, when
    /// that is the session remembered: a value stored again unchanged is a
    /// new entry, and the old one, gone, would send every request of the
    /// connection to a lookup.
    pub fn hold(&self, ticket: &Ticket, stored: &Bytes, held: Held) {
        if let Ok(mut recent) = self.0.lock()
            && let Some(recent) = recent.as_mut().filter(|r| r.is(ticket, stored))
        {
            recent.held = Some(held);
        }
    }

    /// Remembers the current version `ticket` opened in `stored`.
    pub fn remember(
        &self,
        ticket: &Ticket,
        binding: &Binding,
        stored: Bytes,
        opened: &Opened,
        held: Option<Held>,
    ) {
        let value = ticket.value();
        let mut raw = [0u8; TICKET_CHARS];
        let raw_len = value.len().min(TICKET_CHARS);
        raw[..raw_len].copy_from_slice(&value.as_bytes()[..raw_len]);
        if let Ok(mut recent) = self.0.lock() {
            *recent = Some(Box::new(Recent {
                raw,
                raw_len,
                ticket: ticket.clone(),
                binding: *binding,
                stored,
                opened: opened.clone(),
                held,
                forwarded: None,
            }));
        }
    }

    /// The session ended or changed: nothing of it stays with the
    /// connection.
    pub fn forget(&self) {
        if let Ok(mut recent) = self.0.lock() {
            *recent = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::record::{Entry, Record};

    fn web() -> Binding {
        Binding::new("web", "slb_sid")
    }

    fn open(stored: Bytes, t: &Ticket) -> Opened {
        Opened::open(stored, t, &web(), 0).unwrap().0
    }

    fn sealed(ticket: &Ticket, value: &[u8]) -> Bytes {
        let record = Record {
            created: 1_764_600_000,
            entries: vec![Entry {
                name: "session".into(),
                value: value.to_vec(),
                expires: None,
            }],
        };
        Bytes::from(record.encode(ticket, &web()).unwrap())
    }

    #[test]
    fn only_the_same_ticket_and_value_are_recalled() {
        let recall = Recall::default();
        let t = Ticket::mint(true).unwrap();
        let stored = sealed(&t, b"alice");
        assert!(recall.ticket(t.value().as_bytes(), &web()).is_none());
        let opened = open(stored.clone(), &t);
        recall.remember(&t, &web(), stored.clone(), &opened, None);

        assert_eq!(recall.ticket(t.value().as_bytes(), &web()), Some(t.clone()));
        // the same value read again (Redis gives a new buffer each time)
        let again = Bytes::copy_from_slice(&stored);
        let recalled = recall.opened(&t, &web(), &again, None).unwrap();
        assert_eq!(recalled.entries().next().unwrap().value, b"alice");

        // another ticket, or the session changed in the store: open anew
        let other = Ticket::mint(true).unwrap();
        assert!(recall.ticket(other.value().as_bytes(), &web()).is_none());
        assert!(recall.opened(&other, &web(), &stored, None).is_none());
        assert!(
            recall
                .opened(&t, &web(), &sealed(&t, b"bob"), None)
                .is_none()
        );
        // another scope's pool does not get it
        let admin = Binding::new("admin", "slb_sid");
        assert!(recall.ticket(t.value().as_bytes(), &admin).is_none());
        assert!(recall.opened(&t, &admin, &again, None).is_none());
        // the same id with another secret is another ticket
        let mut forged = t.value().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        assert!(recall.ticket(&forged, &web()).is_none());

        recall.forget();
        assert!(recall.ticket(t.value().as_bytes(), &web()).is_none());
        assert!(recall.opened(&t, &web(), &stored, None).is_none());
    }

    #[test]
    fn a_forwarded_field_is_given_again_only_for_the_same_field_pool_and_time() {
        let recall = Recall::default();
        let t = Ticket::mint(true).unwrap();
        let stored = sealed(&t, b"alice");
        let opened = open(stored.clone(), &t);
        let field = format!("theme=dark; slb_sid={}", t.value());
        let to = HeaderValue::from_static("theme=dark; session=alice");
        // nothing remembered of the session: nothing to forward
        recall.forwarded(&opened, 1, field.as_bytes(), to.clone(), 2_000);
        assert!(recall.claim(1, field.as_bytes(), || 1_000).is_none());

        recall.remember(&t, &web(), stored.clone(), &opened, None);
        // what another opening of the session gave is not remembered for
        // the one the connection holds
        let other = open(Bytes::copy_from_slice(&stored), &t);
        recall.forwarded(&other, 1, field.as_bytes(), to.clone(), 2_000);
        assert!(recall.claim(1, field.as_bytes(), || 1_000).is_none());

        recall.forwarded(&opened, 1, field.as_bytes(), to.clone(), 2_000);
        let claim = recall.claim(1, field.as_bytes(), || 1_000).unwrap();
        assert_eq!(claim.ticket, t);
        let recalled = claim.recalled.unwrap();
        assert_eq!(recalled.forward, to);
        assert!(recalled.holds_for(&Bytes::copy_from_slice(&stored)));
        assert!(
            !recalled.holds_for(&sealed(&t, b"alice")),
            "sealed anew: another value"
        );
        // another cookie beside the ticket, another pool, or a cookie of
        // the session expired: rewritten anew
        let changed = format!("theme=light; slb_sid={}", t.value());
        assert!(recall.claim(1, changed.as_bytes(), || 1_000).is_none());
        assert!(recall.claim(2, field.as_bytes(), || 1_000).is_none());
        assert!(recall.claim(1, field.as_bytes(), || 2_000).is_none());

        // a new session opened on the connection forgets the field
        let t2 = Ticket::mint(true).unwrap();
        let stored2 = sealed(&t2, b"bob");
        recall.remember(&t2, &web(), stored2.clone(), &open(stored2, &t2), None);
        assert!(recall.claim(1, field.as_bytes(), || 1_000).is_none());
    }
}
