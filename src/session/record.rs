//! A session as the store keeps it, one value per session, holding its
//! current version and, for a short grace after a change, the one before:
//!
//! ```text
//! slb2 plain 1764600000\n             <- format, sealing, creation time (unix seconds)
//! c 58 3q2-7wAAAAAAAAAAAAAAAA\n        <- the current version: its length, its check
//! session=eyJ1c2VyIjoiYWxpY2UifQ…\n   <- one line per app cookie (or the header blob)
//! @1767192000 remember=1\n            <- a cookie the app gave an expiry: "@<unix> " first
//! p 1764600030 40 AAAAAAAAAAAAAAAAAAAAAA\n  <- the version before, readable until 1764600030
//! session=eyJ1c2VyIjpudWxsfQ…\n
//! ```
//!
//! With `encrypt = true` the first line says `sealed`, a version's header
//! has no check, and its lines are sealed (AES-256-GCM: a 12-byte nonce,
//! the ciphertext, a 16-byte tag) under that version's secret. Plain, the
//! check is a MAC of the lines under the secret. Either way a version is
//! bound to the session's id, the first line, and the pools that may read
//! it ([`Binding`]): it cannot be moved to another session or pool, made
//! younger, or (plain) changed, and the store never holds what signs a
//! client in. The first line stays readable so that an operator sees a
//! session's age with `redis-cli`.
//!
//! A change writes a new current version under a new secret and keeps the
//! old current version, byte for byte, as the previous one: requests in
//! flight with the old ticket read the session as it was before the change
//! until the grace ends, never what the change wrote; deleting the key
//! ends both at once.

use std::ops::Range;

use bytes::Bytes;

use super::ticket::{CHECK_CHARS, RandomError, Ticket};

const MAGIC: &[u8] = b"slb2 ";

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
    /// The ticket's secret opens no version of it (or it was changed).
    Secret,
}

/// Why a session's new value cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The value a change is made from is not one this version writes.
    #[error("the stored session is not in a format this version reads")]
    Format,
}

/// Which version of a session a ticket opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Current,
    /// Replaced by a change; readable until its grace ends.
    Previous,
}

/// What a session's versions are bound to besides the session itself: the
/// pools that may read it (their `scope`) and the cookie that carries its
/// ticket. A digest, so that the bytes bound stay few and fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding([u8; 32]);

impl Binding {
    pub fn new(scope: &str, cookie: &str) -> Binding {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(b"sessionlb session binding v1\0");
        ctx.update(scope.as_bytes());
        ctx.update(b"\0");
        ctx.update(cookie.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Binding(out)
    }
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

    /// Whether `other` holds the same cookies with the same values (their
    /// expiries aside): a change that is no change of what the app reads.
    pub fn same_values(&self, other: &Record) -> bool {
        self.entries.len() == other.entries.len()
            && self.entries.iter().all(|e| {
                other
                    .entries
                    .iter()
                    .any(|o| o.name == e.name && o.value == e.value)
            })
    }

    /// A new session's value: this record as its only version.
    pub fn encode(&self, ticket: &Ticket, binding: &Binding) -> Result<Vec<u8>, EncodeError> {
        let head = head(ticket.is_sealed(), self.created);
        let mut out = Vec::with_capacity(head.len() + self.plain_len() + 64);
        out.extend_from_slice(&head);
        self.push_version(&mut out, ticket, binding, &head)?;
        Ok(out)
    }

    /// The value after a change: this record as the current version under
    /// `ticket` (a new secret), and `before`'s current version, as it is,
    /// readable until `grace_until` by the ticket that wrote it. `before`
    /// is a value of the same session.
    pub fn encode_after(
        &self,
        ticket: &Ticket,
        binding: &Binding,
        before: &[u8],
        grace_until: u64,
    ) -> Result<Vec<u8>, EncodeError> {
        let layout = Layout::read(before).ok_or(EncodeError::Format)?;
        let mut out = self.encode(ticket, binding)?;
        layout
            .current
            .push_as_previous(before, grace_until, &mut out);
        Ok(out)
    }

    /// The value after a change of expiries only: this record as the
    /// current version under the same ticket, the previous version kept
    /// as it is.
    pub fn encode_again(
        &self,
        ticket: &Ticket,
        binding: &Binding,
        before: &[u8],
    ) -> Result<Vec<u8>, EncodeError> {
        let layout = Layout::read(before).ok_or(EncodeError::Format)?;
        let mut out = self.encode(ticket, binding)?;
        if let Some(previous) = &layout.previous {
            out.extend_from_slice(&before[previous.whole.clone()]);
        }
        Ok(out)
    }

    /// The lines of the record: `[@<expires> ]<name>=<value>\n`.
    fn lines(&self) -> Vec<u8> {
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
        plain
    }

    /// Appends the current version: `c <len>[ <check>]\n` and its bytes.
    fn push_version(
        &self,
        out: &mut Vec<u8>,
        ticket: &Ticket,
        binding: &Binding,
        head: &[u8],
    ) -> Result<(), RandomError> {
        let plain = self.lines();
        let aad = BoundTo::new(ticket, head, binding);
        let mut len = itoa::Buffer::new();
        out.extend_from_slice(b"c ");
        if ticket.is_sealed() {
            let mut sealed = Vec::with_capacity(plain.len() + 28);
            ticket.seal(aad.as_slice(), &plain, &mut sealed)?;
            out.extend_from_slice(len.format(sealed.len()).as_bytes());
            out.push(b'\n');
            out.extend_from_slice(&sealed);
        } else {
            out.extend_from_slice(len.format(plain.len()).as_bytes());
            out.push(b' ');
            out.extend_from_slice(&ticket.check(aad.as_slice(), &plain));
            out.push(b'\n');
            out.extend_from_slice(&plain);
        }
        Ok(())
    }

    /// The readable first line: whether the rest is sealed, and when the
    /// session was created.
    pub fn head(stored: &[u8]) -> Option<(bool, u64)> {
        split_head(stored).map(|(sealed, created, _)| (sealed, created))
    }

    /// The version `ticket` opens, as a record; for tests and tools.
    pub fn decode(
        stored: &[u8],
        ticket: &Ticket,
        binding: &Binding,
        now: u64,
    ) -> Result<(Record, Version), Unreadable> {
        Opened::open(Bytes::copy_from_slice(stored), ticket, binding, now)
            .map(|(o, v)| (o.to_record(), v))
    }
}

fn head(sealed: bool, created: u64) -> Vec<u8> {
    let mut head = Vec::with_capacity(32);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(match sealed {
        true => b"sealed ",
        false => b"plain ",
    });
    head.extend_from_slice(itoa::Buffer::new().format(created).as_bytes());
    head.push(b'\n');
    head
}

/// Where a stored value's parts are.
#[derive(Debug)]
struct Layout {
    sealed: bool,
    created: u64,
    head: Range<usize>,
    current: Block,
    previous: Option<Block>,
}

/// One version in a stored value.
#[derive(Debug)]
struct Block {
    /// Its header and bytes.
    whole: Range<usize>,
    /// Its bytes: sealed, or the lines.
    payload: Range<usize>,
    check: Option<[u8; CHECK_CHARS]>,
    /// Unix seconds up to which a previous version is read; 0 for the
    /// current one.
    until: u64,
}

impl Block {
    /// Appends this (current) version of `stored` as a previous one.
    fn push_as_previous(&self, stored: &[u8], until: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(b"p ");
        out.extend_from_slice(itoa::Buffer::new().format(until).as_bytes());
        out.push(b' ');
        out.extend_from_slice(itoa::Buffer::new().format(self.payload.len()).as_bytes());
        if let Some(check) = &self.check {
            out.push(b' ');
            out.extend_from_slice(check);
        }
        out.push(b'\n');
        out.extend_from_slice(&stored[self.payload.clone()]);
    }
}

impl Layout {
    /// Reads the framing of a stored value: a first line, a current
    /// version, at most one previous version, nothing else.
    fn read(stored: &[u8]) -> Option<Layout> {
        let (sealed, created, head_len) = split_head(stored)?;
        let mut at = head_len;
        let current = block(stored, &mut at, b'c', sealed)?;
        let previous = match at < stored.len() {
            true => Some(block(stored, &mut at, b'p', sealed)?),
            false => None,
        };
        (at == stored.len()).then_some(Layout {
            sealed,
            created,
            head: 0..head_len,
            current,
            previous,
        })
    }
}

/// The version at `*at`, of kind `kind` (`c` or `p`); moves `*at` past it.
fn block(stored: &[u8], at: &mut usize, kind: u8, sealed: bool) -> Option<Block> {
    let start = *at;
    let rest = &stored[start..];
    let nl = memchr::memchr(b'\n', rest)?;
    let mut fields = rest[..nl].split(|&b| b == b' ');
    if fields.next()? != [kind] {
        return None;
    }
    let until = match kind {
        b'p' => number(fields.next()?)?,
        _ => 0,
    };
    let len = usize::try_from(number(fields.next()?)?).ok()?;
    let check = match sealed {
        true => None,
        false => {
            let text = fields.next()?;
            let mut check = [0u8; CHECK_CHARS];
            (text.len() == CHECK_CHARS).then(|| check.copy_from_slice(text))?;
            Some(check)
        }
    };
    if fields.next().is_some() {
        return None;
    }
    let payload_start = start + nl + 1;
    let end = payload_start
        .checked_add(len)
        .filter(|&e| e <= stored.len())?;
    *at = end;
    Some(Block {
        whole: start..end,
        payload: payload_start..end,
        check,
        until,
    })
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
    /// The version of `stored` that `ticket` opens at `now`: the current
    /// one, or the previous one while its grace lasts.
    pub fn open(
        stored: Bytes,
        ticket: &Ticket,
        binding: &Binding,
        now: u64,
    ) -> Result<(Opened, Version), Unreadable> {
        let layout = Layout::read(&stored).ok_or(Unreadable::Format)?;
        if layout.sealed != ticket.is_sealed() {
            // a pool switched `encrypt`: its old tickets are no sessions
            return Err(Unreadable::Secret);
        }
        let aad = BoundTo::new(ticket, &stored[layout.head.clone()], binding);
        let versions = std::iter::once((&layout.current, Version::Current)).chain(
            layout
                .previous
                .as_ref()
                .filter(|p| now < p.until)
                .map(|p| (p, Version::Previous)),
        );
        for (block, version) in versions {
            let lines = match &block.check {
                Some(check) => {
                    let payload = &stored[block.payload.clone()];
                    if !constant_time_eq(&ticket.check(aad.as_slice(), payload), check) {
                        continue;
                    }
                    stored.slice(block.payload.clone())
                }
                None => {
                    let mut body = stored[block.payload.clone()].to_vec();
                    let Some(plain) = ticket.open(aad.as_slice(), &mut body) else {
                        continue;
                    };
                    Bytes::from(body).slice(plain)
                }
            };
            for line in non_empty_lines(&lines) {
                entry(line).ok_or(Unreadable::Format)?;
            }
            let opened = Opened {
                created: layout.created,
                lines,
            };
            return Ok((opened, version));
        }
        Err(Unreadable::Secret)
    }

    /// The current version's lines of a plain value, unchecked: what an
    /// operator may read of a session stored plain.
    pub fn inspect_plain(stored: &Bytes) -> Option<Opened> {
        let layout = Layout::read(stored).filter(|l| !l.sealed)?;
        let lines = stored.slice(layout.current.payload.clone());
        let readable = non_empty_lines(&lines).all(|l| entry(l).is_some());
        readable.then_some(Opened {
            created: layout.created,
            lines,
        })
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

/// Compares without an early exit, so the time taken tells nothing of how
/// much of a check matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

/// What a version is bound to: the session it belongs to, the readable
/// first line beside it, and the [`Binding`]. On the stack: the first line
/// is at most `slb2 sealed ` and twenty digits.
struct BoundTo {
    bytes: [u8; 96],
    len: usize,
}

impl BoundTo {
    fn new(ticket: &Ticket, head: &[u8], binding: &Binding) -> BoundTo {
        let mut bytes = [0u8; 96];
        let mut len = 0;
        for part in [ticket.id.as_str().as_bytes(), head, &binding.0] {
            let n = part.len().min(bytes.len() - len);
            bytes[len..len + n].copy_from_slice(&part[..n]);
            len += n;
        }
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

    const NOW: u64 = 1_764_600_100;

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

    fn with_user(user: &str) -> Record {
        let mut r = sample();
        r.entries[0].value = user.as_bytes().to_vec();
        r
    }

    fn web() -> Binding {
        Binding::new("web", "slb_sid")
    }

    #[test]
    fn plain_records_are_readable_text() {
        let t = Ticket::mint(false).unwrap();
        let bytes = sample().encode(&t, &web()).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        let lines = "session=eyJ1c2VyIjoiYWxpY2UifQ.Z2x\n@1767192000 session.sig=a=b==\n";
        assert!(text.starts_with("slb2 plain 1764600000\nc 65 "), "{text}");
        assert!(text.ends_with(&format!("\n{lines}")), "{text}");
        assert_eq!(
            text.len(),
            "slb2 plain 1764600000\nc 65 \n".len() + 22 + lines.len()
        );
        assert!(!text.contains(&t.value()[23..]), "the secret is not stored");
        assert_eq!(
            Record::decode(&bytes, &t, &web(), NOW),
            Ok((sample(), Version::Current))
        );
    }

    #[test]
    fn sealed_records_hide_everything_but_their_age() {
        let t = Ticket::mint(true).unwrap();
        let bytes = sample().encode(&t, &web()).unwrap();
        assert!(bytes.starts_with(b"slb2 sealed 1764600000\nc "));
        assert!(!bytes.windows(7).any(|w| w == b"session"));
        assert_eq!(
            Record::decode(&bytes, &t, &web(), NOW),
            Ok((sample(), Version::Current))
        );
        let other = Ticket::mint(true).unwrap();
        assert_eq!(
            Record::decode(&bytes, &other, &web(), NOW),
            Err(Unreadable::Secret)
        );
        // made younger: the first line is bound to the blob
        let mut younger = bytes.clone();
        younger[12] = b'2';
        assert_eq!(
            Record::decode(&younger, &t, &web(), NOW),
            Err(Unreadable::Secret)
        );
        assert_eq!(
            Record::decode(b"junk", &t, &web(), NOW),
            Err(Unreadable::Format)
        );
    }

    #[test]
    fn a_version_opens_only_in_its_scope_and_under_its_cookie_name() {
        for sealed in [true, false] {
            let t = Ticket::mint(sealed).unwrap();
            let bytes = sample().encode(&t, &web()).unwrap();
            for other in [
                Binding::new("admin", "slb_sid"),
                Binding::new("web", "other_sid"),
                Binding::new("we", "bslb_sid"),
            ] {
                assert_eq!(
                    Record::decode(&bytes, &t, &other, NOW),
                    Err(Unreadable::Secret),
                    "sealed {sealed}"
                );
            }
        }
    }

    #[test]
    fn a_plain_version_changed_in_the_store_is_no_session() {
        let t = Ticket::mint(false).unwrap();
        let bytes = sample().encode(&t, &web()).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        let forged = text.replace("eyJ1c2VyIjoiYWxpY2UifQ", "eyJ1c2VyIjoiYm9iYm9ifQ");
        assert_eq!(
            Record::decode(forged.as_bytes(), &t, &web(), NOW),
            Err(Unreadable::Secret)
        );
    }

    #[test]
    fn after_a_change_the_old_ticket_reads_only_the_old_state_and_only_in_grace() {
        for sealed in [true, false] {
            let old = Ticket::mint(sealed).unwrap();
            let before = with_user("anonymous").encode(&old, &web()).unwrap();
            let new = old.rotate().unwrap();
            let after = with_user("alice")
                .encode_after(&new, &web(), &before, NOW + 30)
                .unwrap();
            assert_eq!(
                Record::decode(&after, &new, &web(), NOW),
                Ok((with_user("alice"), Version::Current))
            );
            assert_eq!(
                Record::decode(&after, &old, &web(), NOW + 29),
                Ok((with_user("anonymous"), Version::Previous)),
                "sealed {sealed}"
            );
            assert_eq!(
                Record::decode(&after, &old, &web(), NOW + 30),
                Err(Unreadable::Secret),
                "grace over"
            );
            // another change: the first ticket reads nothing at all
            let third = new.rotate().unwrap();
            let later = with_user("alice2")
                .encode_after(&third, &web(), &after, NOW + 60)
                .unwrap();
            assert_eq!(
                Record::decode(&later, &old, &web(), NOW),
                Err(Unreadable::Secret)
            );
            assert_eq!(
                Record::decode(&later, &new, &web(), NOW),
                Ok((with_user("alice"), Version::Previous))
            );
            // an expiry refreshed: the same ticket, the previous kept
            let again = with_user("alice2")
                .encode_again(&third, &web(), &later)
                .unwrap();
            assert_eq!(
                Record::decode(&again, &new, &web(), NOW),
                Ok((with_user("alice"), Version::Previous))
            );
            assert_eq!(
                Record::decode(&again, &third, &web(), NOW),
                Ok((with_user("alice2"), Version::Current))
            );
        }
    }

    #[test]
    fn framing_that_is_not_exactly_one_or_two_versions_is_refused() {
        let t = Ticket::mint(false).unwrap();
        let one = sample().encode(&t, &web()).unwrap();
        let two = sample()
            .encode_after(&t.rotate().unwrap(), &web(), &one, NOW + 30)
            .unwrap();
        let three = sample()
            .encode_after(&t.rotate().unwrap(), &web(), &two, NOW + 30)
            .unwrap();
        assert!(Layout::read(&three).is_some(), "the oldest is dropped");
        for bad in [
            [&one[..], b"x"].concat(),
            one[..one.len() - 1].to_vec(),
            [&two[..], &two[22..]].concat(),
            String::from_utf8(one.clone())
                .unwrap()
                .replacen("c 65", "c 99", 1)
                .into_bytes(),
            String::from_utf8(one.clone())
                .unwrap()
                .replacen("c 65", "p 65", 1)
                .into_bytes(),
        ] {
            assert!(
                Layout::read(&bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(&bad)
            );
        }
    }

    #[test]
    fn same_values_ignores_expiries_and_order() {
        let a = sample();
        let mut b = sample();
        b.entries.reverse();
        b.entries[0].expires = Some(1);
        assert!(a.same_values(&b));
        b.entries[0].value.push(b'x');
        assert!(!a.same_values(&b));
        assert!(!a.same_values(&Record::new(0)));
    }

    #[test]
    fn expired_entries_are_not_live() {
        let r = sample();
        assert_eq!(r.live(1_767_191_999).count(), 2);
        assert_eq!(r.live(1_767_192_000).count(), 1);
    }
}
