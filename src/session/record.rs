//! A session as the store keeps it, one value per session:
//!
//! ```text
//! slb1 plain 1764600000\n          <- format, sealing, creation time (unix seconds)
//! session=eyJ1c2VyIjoiYWxpY2UifQ…\n <- one line per app cookie (or the header blob)
//! @1767192000 remember=1\n          <- a cookie the app gave an expiry: "@<unix> " first
//! ```
//!
//! With `encrypt = true` the first line says `sealed` and the lines that
//! follow are sealed (AES-256-GCM: a 12-byte nonce, the ciphertext, a
//! 16-byte tag), bound to the session's id and that first line. The first
//! line stays readable so that an operator sees a session's age with
//! `redis-cli`; it reveals nothing else.

use bytes::Bytes;

use super::ticket::{RandomError, Ticket};

const MAGIC: &[u8] = b"slb1 ";

/// One app cookie (or the header carrier's blob, named by its header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub value: Vec<u8>,
    /// Unix seconds after which the app's cookie is gone, as a browser
    /// would drop it.
    pub expires: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Unix seconds: the start of `absolute_timeout`.
    pub created: u64,
    pub entries: Vec<Entry>,
}

/// Why a stored value is not a session for this ticket. Either way the
/// client has no session; the difference only goes to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    /// Not a value this version writes.
    Format,
    /// The ticket's secret does not open it (or it was changed).
    Secret,
}

impl Record {
    pub fn new(created: u64) -> Record {
        Record {
            created,
            entries: Vec::new(),
        }
    }

    /// Entries the app has not let expire by `now`.
    pub fn live(&self, now: u64) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(move |e| e.expires.is_none_or(|t| t > now))
    }

    /// The size the store is asked to keep, before sealing.
    pub fn plain_len(&self) -> usize {
        self.entries
            .iter()
            .map(|e| e.name.len() + e.value.len() + 2 + if e.expires.is_some() { 12 } else { 0 })
            .sum()
    }

    pub fn encode(&self, ticket: &Ticket) -> Result<Vec<u8>, RandomError> {
        let mut head = Vec::with_capacity(32);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(match ticket.is_sealed() {
            true => b"sealed ",
            false => b"plain ",
        });
        head.extend_from_slice(itoa::Buffer::new().format(self.created).as_bytes());
        head.push(b'\n');
        let mut plain = Vec::with_capacity(self.plain_len());
        for e in &self.entries {
            if let Some(t) = e.expires {
                plain.push(b'@');
                plain.extend_from_slice(itoa::Buffer::new().format(t).as_bytes());
                plain.push(b' ');
            }
            plain.extend_from_slice(e.name.as_bytes());
            plain.push(b'=');
            plain.extend_from_slice(&e.value);
            plain.push(b'\n');
        }
        let mut out = Vec::with_capacity(head.len() + plain.len() + 28);
        out.extend_from_slice(&head);
        ticket.seal(BoundTo::new(ticket, &head).as_slice(), &plain, &mut out)?;
        Ok(out)
    }

    /// The readable first line: whether the rest is sealed, and when the
    /// session was created.
    pub fn head(stored: &[u8]) -> Option<(bool, u64)> {
        split_head(stored).map(|(sealed, created, _)| (sealed, created))
    }

    pub fn decode(stored: &[u8], ticket: &Ticket) -> Result<Record, Unreadable> {
        Opened::open(Bytes::copy_from_slice(stored), ticket).map(|o| o.to_record())
    }
}

/// A stored session opened for one request: its lines in one buffer (the
/// stored value itself when it is plain), read in place. The read path
/// takes no copy of each cookie; [`Record`] is for changing a session.
#[derive(Debug, Clone)]
pub struct Opened {
    pub created: u64,
    /// `name=value\n` lines, checked when opened.
    lines: Bytes,
}

/// One line of an [`Opened`] session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    pub name: &'a str,
    pub value: &'a [u8],
    pub expires: Option<u64>,
}

impl Opened {
    pub fn open(stored: Bytes, ticket: &Ticket) -> Result<Opened, Unreadable> {
        let (sealed, created, head_len) = split_head(&stored).ok_or(Unreadable::Format)?;
        if sealed != ticket.is_sealed() {
            // a pool switched `encrypt`: its old tickets are no sessions
            return Err(Unreadable::Secret);
        }
        let lines = match sealed {
            false => stored.slice(head_len..),
            true => {
                let (head, rest) = stored.split_at(head_len);
                let mut body = rest.to_vec();
                let plain = ticket
                    .open(BoundTo::new(ticket, head).as_slice(), &mut body)
                    .ok_or(Unreadable::Secret)?;
                Bytes::from(body).slice(plain)
            }
        };
        for line in non_empty_lines(&lines) {
            entry(line).ok_or(Unreadable::Format)?;
        }
        Ok(Opened { created, lines })
    }

    /// Whether both are the same opening of a value (clones of one
    /// another), not merely equal.
    pub fn is(&self, other: &Opened) -> bool {
        self.lines.as_ptr() == other.lines.as_ptr() && self.lines.len() == other.lines.len()
    }

    /// Every entry, in the order stored (expired ones too: see
    /// [`Opened::live`]).
    pub fn entries(&self) -> impl Iterator<Item = EntryRef<'_>> {
        // every line was read once when opened
        non_empty_lines(&self.lines).filter_map(entry)
    }

    /// Entries the app has not let expire by `now`.
    pub fn live(&self, now: u64) -> impl Iterator<Item = EntryRef<'_>> {
        self.entries()
            .filter(move |e| e.expires.is_none_or(|t| t > now))
    }

    /// The session as a [`Record`], to change it.
    pub fn to_record(&self) -> Record {
        Record {
            created: self.created,
            entries: self
                .entries()
                .map(|e| Entry {
                    name: e.name.to_string(),
                    value: e.value.to_vec(),
                    expires: e.expires,
                })
                .collect(),
        }
    }

    /// The size of the lines: room for the app's cookies in a request.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// The lines of `text` that are not empty, without their newlines.
fn non_empty_lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = text;
    std::iter::from_fn(move || {
        while !rest.is_empty() {
            let (line, after) = match memchr::memchr(b'\n', rest) {
                Some(nl) => (&rest[..nl], &rest[nl + 1..]),
                None => (rest, &[][..]),
            };
            rest = after;
            if !line.is_empty() {
                return Some(line);
            }
        }
        None
    })
}

/// One line read: `[@<expires> ]<name>=<value>`; `None` when it is not one
/// (an empty line is not one).
fn entry(line: &[u8]) -> Option<EntryRef<'_>> {
    let (expires, line) = match line.strip_prefix(b"@") {
        Some(l) => {
            let sp = memchr::memchr(b' ', l)?;
            (Some(number(&l[..sp])?), &l[sp + 1..])
        }
        None => (None, line),
    };
    let eq = memchr::memchr(b'=', line)?;
    Some(EntryRef {
        name: std::str::from_utf8(&line[..eq]).ok()?,
        value: &line[eq + 1..],
        expires,
    })
}

/// The first line, read: sealed or not, the creation time, and the line's
/// length with its newline.
fn split_head(stored: &[u8]) -> Option<(bool, u64, usize)> {
    let rest = stored.strip_prefix(MAGIC)?;
    let (sealed, rest) = match rest.strip_prefix(b"sealed ") {
        Some(r) => (true, r),
        None => (false, rest.strip_prefix(b"plain ")?),
    };
    let nl = memchr::memchr(b'\n', rest)?;
    let created = number(&rest[..nl])?;
    Some((sealed, created, stored.len() - rest.len() + nl + 1))
}

/// What a sealed blob is bound to: the session it belongs to and the
/// readable first line beside it. On the stack: the first line is at most
/// `slb1 sealed ` and twenty digits.
struct BoundTo {
    bytes: [u8; 64],
    len: usize,
}

impl BoundTo {
    fn new(ticket: &Ticket, head: &[u8]) -> BoundTo {
        let id = ticket.id.as_str().as_bytes();
        let mut bytes = [0u8; 64];
        let len = (id.len() + head.len()).min(bytes.len());
        bytes[..id.len()].copy_from_slice(id);
        bytes[id.len()..len].copy_from_slice(&head[..len - id.len()]);
        BoundTo { bytes, len }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            created: 1_764_600_000,
            entries: vec![
                Entry {
                    name: "session".into(),
                    value: b"eyJ1c2VyIjoiYWxpY2UifQ.Z2x".to_vec(),
                    expires: None,
                },
                Entry {
                    name: "session.sig".into(),
                    value: b"a=b==".to_vec(),
                    expires: Some(1_767_192_000),
                },
            ],
        }
    }

    #[test]
    fn plain_records_are_readable_text() {
        let t = Ticket::mint(false).unwrap();
        let bytes = sample().encode(&t).unwrap();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            "slb1 plain 1764600000\nsession=eyJ1c2VyIjoiYWxpY2UifQ.Z2x\n@1767192000 session.sig=a=b==\n"
        );
        assert_eq!(Record::decode(&bytes, &t).unwrap(), sample());
    }

    #[test]
    fn sealed_records_hide_everything_but_their_age() {
        let t = Ticket::mint(true).unwrap();
        let bytes = sample().encode(&t).unwrap();
        assert!(bytes.starts_with(b"slb1 sealed 1764600000\n"));
        assert!(!bytes.windows(7).any(|w| w == b"session"));
        assert_eq!(Record::decode(&bytes, &t).unwrap(), sample());
        let other = Ticket::mint(true).unwrap();
        assert_eq!(Record::decode(&bytes, &other), Err(Unreadable::Secret));
        // made younger: the first line is bound to the blob
        let mut younger = bytes.clone();
        younger[12] = b'2';
        assert_eq!(Record::decode(&younger, &t), Err(Unreadable::Secret));
        assert_eq!(Record::decode(b"junk", &t), Err(Unreadable::Format));
    }

    #[test]
    fn expired_entries_are_not_live() {
        let r = sample();
        assert_eq!(r.live(1_767_191_999).count(), 2);
        assert_eq!(r.live(1_767_192_000).count(), 1);
    }
}
