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

use std::sync::Mutex;

use bytes::Bytes;

use super::record::Opened;
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
    stored: Bytes,
    opened: Opened,
}

impl Recall {
    /// The ticket a cookie value reads as, when it is the one remembered.
    pub fn ticket(&self, raw: &[u8]) -> Option<Ticket> {
        let recent = self.0.lock().ok()?;
        let recent = recent.as_ref()?;
        (recent.raw[..recent.raw_len] == *raw).then(|| recent.ticket.clone())
    }

    /// What `stored` opens to for `ticket`, when that is what was opened
    /// last.
    pub fn opened(&self, ticket: &Ticket, stored: &Bytes) -> Option<Opened> {
        let recent = self.0.lock().ok()?;
        let recent = recent.as_ref()?;
        let same_value = (recent.stored.as_ptr() == stored.as_ptr()
            && recent.stored.len() == stored.len())
            || recent.stored == *stored;
        (same_value && recent.ticket == *ticket).then(|| recent.opened.clone())
    }

    pub fn remember(&self, ticket: &Ticket, stored: Bytes, opened: &Opened) {
        let value = ticket.value();
        let mut raw = [0u8; TICKET_CHARS];
        let raw_len = value.len().min(TICKET_CHARS);
        raw[..raw_len].copy_from_slice(&value.as_bytes()[..raw_len]);
        if let Ok(mut recent) = self.0.lock() {
            *recent = Some(Box::new(Recent {
                raw,
                raw_len,
                ticket: ticket.clone(),
                stored,
                opened: opened.clone(),
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

    fn sealed(ticket: &Ticket, value: &[u8]) -> Bytes {
        let record = Record {
            created: 1_764_600_000,
            entries: vec![Entry {
                name: "session".into(),
                value: value.to_vec(),
                expires: None,
            }],
        };
        Bytes::from(record.encode(ticket).unwrap())
    }

    #[test]
    fn only_the_same_ticket_and_value_are_recalled() {
        let recall = Recall::default();
        let t = Ticket::mint(true).unwrap();
        let stored = sealed(&t, b"alice");
        assert!(recall.ticket(t.value().as_bytes()).is_none());
        let opened = Opened::open(stored.clone(), &t).unwrap();
        recall.remember(&t, stored.clone(), &opened);

        assert_eq!(recall.ticket(t.value().as_bytes()), Some(t.clone()));
        // the same value read again (Redis gives a new buffer each time)
        let again = Bytes::copy_from_slice(&stored);
        let recalled = recall.opened(&t, &again).unwrap();
        assert_eq!(recalled.entries().next().unwrap().value, b"alice");

        // another ticket, or the session changed in the store: open anew
        let other = Ticket::mint(true).unwrap();
        assert!(recall.ticket(other.value().as_bytes()).is_none());
        assert!(recall.opened(&other, &stored).is_none());
        assert!(recall.opened(&t, &sealed(&t, b"bob")).is_none());
        // the same id with another secret is another ticket
        let mut forged = t.value().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        assert!(recall.ticket(&forged).is_none());

        recall.forget();
        assert!(recall.ticket(t.value().as_bytes()).is_none());
        assert!(recall.opened(&t, &stored).is_none());
    }
}
