//! Shared-store mode: the app's session leaves the browser and the backends
//! for the store, behind an opaque ticket, so that any backend serves any
//! request.
//!
//! A request's ticket is read and its session loaded (one store round trip)
//! before the request head is written; the app's cookies (or blob header)
//! take the ticket's place. The response's new session is taken out of it
//! and stored before its head goes to the client, so that the client's next
//! request finds it. Only the proxy mints tickets: one it did not make, or
//! whose session is gone, is no session.

pub mod cookies;
pub mod recall;
pub mod record;
pub mod stats;
pub mod store;
pub mod ticket;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};

use crate::config::{self, Carrier, OnStoreError};
pub use recall::{Claim, Recall};
use record::{Entry, Opened, Record};
pub use stats::Stats;
use store::{Found, Put, Ttl};
pub use store::{Store, StoreError};
pub use ticket::{RandomError, SessionId, Ticket};

/// Why a request with a session is answered by the proxy.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the session store is unavailable: {0}")]
    Unavailable(#[source] StoreError),
    #[error("the app's session is {size} bytes, over max_blob_bytes ({limit})")]
    TooLarge { size: usize, limit: usize },
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// The process's sessions: the store (kept across reloads that leave
/// `[store]` as it was, so the embedded store keeps its sessions) and the
/// counters (kept across every reload).
#[derive(Debug, Default)]
pub struct Sessions {
    pub stats: Arc<Stats>,
    current: Mutex<Option<(config::Store, Arc<Store>)>>,
}

impl Sessions {
    /// The store for `config`: the one in use when it is unchanged.
    pub fn store_for(&self, config: &config::Store) -> Arc<Store> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((c, store)) = &*current
            && c == config
        {
            return store.clone();
        }
        let store = match Store::build(config, self.stats.clone()) {
            Ok(store) => store,
            Err(error) => {
                // the URL was checked when the file was validated
                tracing::error!(%error, "session store cannot be built; using the memory store");
                Store::build(
                    &config::Store::Memory(config::MemoryStore {
                        max_size: 256 << 20,
                        secret: None,
                    }),
                    self.stats.clone(),
                )
                .unwrap_or_else(|_| unreachable!("the memory store builds"))
            }
        };
        let store = Arc::new(store);
        *current = Some((config.clone(), store.clone()));
        store
    }

    pub fn current(&self) -> Option<Arc<Store>> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(_, s)| s.clone())
    }

    /// `DELETE /admin/sessions/{id}`: `Ok(false)` for an id that names no
    /// session (or is not one the proxy could have made).
    pub async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let (Some(store), Some(id)) = (self.current(), SessionId::parse(id.as_bytes())) else {
            return Ok(false);
        };
        let found = store.delete(&id).await?;
        if found {
            self.stats.count_deleted();
            tracing::info!(session = %id.redacted(), "session revoked");
        }
        Ok(found)
    }
}

/// What `GET /admin/sessions/{id}` shows of a stored session: its age and
/// size, and its cookies only when it is unsealed (a sealed one opens with
/// the browser's secret alone).
#[derive(Debug, serde::Serialize)]
pub struct Inspected {
    pub created: u64,
    pub age_seconds: u64,
    pub sealed: bool,
    pub bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookies: Option<Vec<InspectedEntry>>,
}

#[derive(Debug, serde::Serialize)]
pub struct InspectedEntry {
    pub name: String,
    pub value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
}

impl Sessions {
    /// Reads a session for an operator, without sliding its timeout.
    pub async fn inspect(&self, id: &str) -> Result<Option<Inspected>, StoreError> {
        let (Some(store), Some(id)) = (self.current(), SessionId::parse(id.as_bytes())) else {
            return Ok(None);
        };
        let Some(stored) = store.get(&id).await? else {
            return Ok(None);
        };
        let Some((sealed, created)) = record::Record::head(&stored) else {
            return Ok(None);
        };
        let cookies = match sealed {
            true => None,
            false => Opened::open(stored.clone(), &Ticket::unsealed(id))
                .ok()
                .map(|o| {
                    o.entries()
                        .map(|e| InspectedEntry {
                            name: e.name.to_string(),
                            value: String::from_utf8_lossy(e.value).into_owned(),
                            expires: e.expires,
                        })
                        .collect()
                }),
        };
        Ok(Some(Inspected {
            created,
            age_seconds: crate::clock::unix_now().saturating_sub(created),
            sealed,
            bytes: stored.len(),
            cookies,
        }))
    }
}

/// One pool's shared-store mode, compiled.
#[derive(Debug)]
pub struct Mode {
    /// Unique in the process, so that a connection's [`Recall`] gives what
    /// one pool's settings wrote to that pool only, and nothing across a
    /// reload.
    id: u64,
    pub pool: Arc<str>,
    pub settings: config::Session,
    pub store: Arc<Store>,
}

/// The ticket cookie of a request, read.
#[derive(Debug)]
pub enum Presented {
    None,
    /// Not a ticket the proxy makes: no session, cleared in the response.
    Malformed,
    Ticket(Claim),
}

/// A session loaded at once, or the ticket to load it with, waiting.
#[derive(Debug)]
pub enum Load {
    Done(Result<Loaded, SessionError>),
    Wait(Claim),
}

/// What a request brought and found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The client's ticket, when it names a live session.
    ticket: Option<Ticket>,
    record: Option<Opened>,
    /// When `record` was read (unix seconds): what its cookies' expiries
    /// are measured against on the way to the backend.
    read_at: u64,
    /// A ticket that is no session: cleared in the response.
    stale: bool,
    /// The store failed and the pool is `fail_open`: the request goes on
    /// without its session and nothing of it is stored.
    unavailable: bool,
    /// The `Cookie` field the backend gets, as the connection recalls it.
    forward: Option<HeaderValue>,
}

/// What writing the session into a request did to its head.
#[derive(Debug, Clone, Copy)]
pub struct Rewritten {
    /// Bytes the head may have grown by.
    pub added: usize,
    /// `Cookie` fields it now has.
    pub cookies: usize,
}

impl Loaded {
    /// A ticket that is no session.
    fn stale() -> Loaded {
        Loaded {
            stale: true,
            ..Loaded::default()
        }
    }
}

impl Mode {
    pub fn new(pool: Arc<str>, settings: config::Session, store: Arc<Store>) -> Mode {
        static IDS: AtomicU64 = AtomicU64::new(0);
        Mode {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            pool,
            settings,
            store,
        }
    }

    fn stats(&self) -> &Stats {
        self.store.stats()
    }

    /// The ticket a request carries, read before the request is set aside
    /// to wait for the store (or recalled, when the connection's last
    /// request carried the same).
    pub fn presented(&self, headers: &HeaderMap, recall: &Recall) -> Presented {
        if let Carrier::Cookie { .. } = self.settings.carrier
            && let Some(field) = single(headers, &COOKIE)
            && let Some(claim) = recall.claim(self.id, field.as_bytes(), crate::clock::unix_now)
        {
            return Presented::Ticket(claim);
        }
        let Some(raw) = cookies::find(headers, &self.settings.cookie) else {
            return Presented::None;
        };
        let ticket = recall
            .ticket(raw)
            .filter(|t| t.is_sealed() == self.settings.encrypt)
            .or_else(|| Ticket::parse(raw, self.settings.encrypt));
        match ticket {
            Some(ticket) => Presented::Ticket(Claim {
                ticket,
                recalled: None,
            }),
            None => Presented::Malformed,
        }
    }

    /// Loads the session a ticket names, when the store answers at once
    /// (the memory store): the request then needs no waiting step. A
    /// store that answers over the network gives the ticket back, for
    /// [`Mode::load`].
    pub fn load_now(&self, presented: Presented, recall: &Recall) -> Load {
        let claim = match presented {
            Presented::None => return Load::Done(Ok(Loaded::default())),
            Presented::Malformed => {
                tracing::debug!(pool = &*self.pool, "malformed session ticket: no session");
                return Load::Done(Ok(Loaded::stale()));
            }
            Presented::Ticket(claim) => claim,
        };
        let held = claim.recalled.as_ref().and_then(|r| r.held.as_ref());
        match self.store.load_now(&claim.ticket.id, held) {
            Some(found) => Load::Done(self.loaded(claim, found, recall)),
            None => Load::Wait(claim),
        }
    }

    /// Loads the session a ticket names: one store round trip, which also
    /// restarts its idle timeout.
    pub async fn load(&self, claim: Claim, recall: &Recall) -> Result<Loaded, SessionError> {
        let found = self
            .store
            .load(&claim.ticket.id, self.settings.idle_timeout)
            .await;
        self.loaded(claim, found.map(|v| v.map(|v| (v, None))), recall)
    }

    /// What the store's answer for a ticket is. The value is opened again
    /// only when it is not what the connection opened last.
    fn loaded(
        &self,
        claim: Claim,
        found: Result<Option<Found>, StoreError>,
        recall: &Recall,
    ) -> Result<Loaded, SessionError> {
        let Claim { ticket, recalled } = claim;
        let (stored, held) = match found {
            Ok(Some(found)) => found,
            Ok(None) => {
                recall.forget();
                tracing::debug!(pool = &*self.pool, session = %ticket.id.redacted(), "unknown or expired session");
                return Ok(Loaded::stale());
            }
            Err(error) => {
                return self.store_failed(error, "load").map(|()| Loaded {
                    unavailable: true,
                    ..Loaded::default()
                });
            }
        };
        let now = crate::clock::unix_now();
        let (opened, forward) = match recalled {
            Some(r) if r.holds_for(&stored) => {
                if let Some(held) = held {
                    // a lookup found it: keep that entry from now on
                    recall.hold(&ticket, &stored, held);
                }
                (Ok(r.opened), Some(r.forward))
            }
            _ => match recall.opened(&ticket, &stored, held.clone()) {
                Some(opened) => (Ok(opened), None),
                None => {
                    let opened = Opened::open(stored.clone(), &ticket);
                    if let Ok(opened) = &opened {
                        recall.remember(&ticket, stored, opened, held);
                    }
                    (opened, None)
                }
            },
        };
        match opened {
            Ok(record) if record.created + self.settings.absolute_timeout.as_secs() > now => {
                Ok(Loaded {
                    ticket: Some(ticket),
                    record: Some(record),
                    read_at: now,
                    forward,
                    ..Loaded::default()
                })
            }
            Ok(_) => {
                tracing::debug!(pool = &*self.pool, session = %ticket.id.redacted(), "session reached absolute_timeout");
                let store = self.store.clone();
                let id = ticket.id;
                tokio::spawn(async move {
                    if let Ok(true) = store.delete(&id).await {
                        store.stats().count_deleted();
                    }
                });
                Ok(Loaded::stale())
            }
            Err(why) => {
                tracing::debug!(pool = &*self.pool, session = %ticket.id.redacted(), ?why, "session ticket does not open its session");
                Ok(Loaded::stale())
            }
        }
    }

    /// `fail_closed`: the request is answered 503; `fail_open`: it goes on
    /// without its session.
    fn store_failed(&self, error: StoreError, during: &str) -> Result<(), SessionError> {
        match self.settings.on_store_error {
            OnStoreError::FailClosed => {
                tracing::warn!(pool = &*self.pool, during, %error, "session store unavailable: answering 503 (fail_closed)");
                Err(SessionError::Unavailable(error))
            }
            OnStoreError::FailOpen => {
                self.stats().count_failed_open();
                tracing::warn!(pool = &*self.pool, during, %error, "session store unavailable: forwarding without the session (fail_open)");
                Ok(())
            }
        }
    }

    /// Writes the session into the request for the backend: the app's
    /// cookies where the ticket was (or the blob header), and nothing of
    /// the session a client sent itself.
    pub fn to_backend(
        &self,
        headers: &mut HeaderMap,
        loaded: &Loaded,
        recall: &Recall,
    ) -> Rewritten {
        // the one field the connection recalled the forward for
        if let Some(forward) = &loaded.forward
            && let Some(field) = headers.get_mut(COOKIE)
        {
            *field = forward.clone();
            return Rewritten {
                added: forward.len(),
                cookies: 1,
            };
        }
        let live = loaded.record.iter().flat_map(|r| r.live(loaded.read_at));
        let added = match &self.settings.carrier {
            Carrier::Cookie { app_cookies } => {
                let mut replacement =
                    Vec::with_capacity(loaded.record.as_ref().map_or(0, Opened::len));
                for e in live {
                    if !replacement.is_empty() {
                        replacement.extend_from_slice(b"; ");
                    }
                    replacement.extend_from_slice(e.name.as_bytes());
                    replacement.push(b'=');
                    replacement.extend_from_slice(e.value);
                }
                let from = single(headers, &COOKIE).cloned();
                cookies::rewrite(headers, &self.settings.cookie, app_cookies, &replacement);
                if let (Some(record), Some(from), Some(to)) =
                    (&loaded.record, from, single(headers, &COOKIE))
                {
                    // the next request of the connection, sending the same
                    // field for the same stored value, gets the same
                    let until = record
                        .entries()
                        .filter_map(|e| e.expires)
                        .filter(|&t| t > loaded.read_at)
                        .min()
                        .unwrap_or(u64::MAX);
                    recall.forwarded(record, self.id, from.as_bytes(), to.clone(), until);
                }
                replacement.len()
            }
            Carrier::Header {
                header,
                update_header,
            } => {
                headers.remove(header);
                headers.remove(update_header);
                cookies::rewrite(headers, &self.settings.cookie, &[], b"");
                match live.last().map(|e| http::HeaderValue::from_bytes(e.value)) {
                    Some(Ok(v)) => {
                        let added = v.len();
                        headers.insert(header.clone(), v);
                        added
                    }
                    _ => 0,
                }
            }
        };
        Rewritten {
            added,
            cookies: headers.get_all(COOKIE).iter().count(),
        }
    }

    /// Takes the app's session out of a response, stores what changed, and
    /// gives the browser its ticket (or clears it).
    pub async fn from_backend(
        &self,
        headers: &mut HeaderMap,
        loaded: Loaded,
        tls: bool,
        recall: &Recall,
    ) -> Result<(), SessionError> {
        let now = crate::clock::unix_now();
        let changes = self.changes(headers, now);
        if changes.is_empty() {
            if loaded.stale
                && let Some(v) =
                    cookies::clear_cookie(&self.settings.cookie, &cookies::Attrs::default(), tls)
            {
                headers.append(SET_COOKIE, v);
            }
            return Ok(());
        }
        // the next request opens what this one stores
        recall.forget();
        // boxed: most responses change nothing, and the future of a write
        // (a read, then a write or a delete) would make every request's
        // future larger
        Box::pin(self.store_changes(headers, loaded, changes, now, tls)).await
    }

    /// Applies a response's changes to the session as it is stored now.
    async fn store_changes(
        &self,
        headers: &mut HeaderMap,
        loaded: Loaded,
        changes: Vec<cookies::SetCookie>,
        now: u64,
        tls: bool,
    ) -> Result<(), SessionError> {
        let clear = |headers: &mut HeaderMap, attrs: &cookies::Attrs| {
            if let Some(v) = cookies::clear_cookie(&self.settings.cookie, attrs, tls) {
                headers.append(SET_COOKIE, v);
            }
        };
        if loaded.unavailable {
            tracing::warn!(
                pool = &*self.pool,
                "session change not stored: the store was unavailable when the request came (fail_open)"
            );
            return Ok(());
        }
        // the ticket takes the attributes of a cookie the app sets (a
        // deletion's would end the ticket at once)
        let attrs = changes
            .iter()
            .find(|c| !c.deletes(now))
            .unwrap_or(&changes[0])
            .attrs
            .clone();
        let (ticket, put, mut record) = match loaded.ticket {
            Some(ticket) => {
                // the changes land on the session as it is now, not as this
                // request saw it: each app cookie is last-write-wins
                let current = match self.store.get(&ticket.id).await {
                    Ok(current) => current,
                    Err(error) => return self.store_failed(error, "update"),
                };
                match current.and_then(|b| Some((Opened::open(b.clone(), &ticket).ok()?, b))) {
                    Some((opened, was)) => (ticket, Put::Replace(was), opened.to_record()),
                    None => {
                        // revoked, or logged out, while this request ran
                        tracing::info!(pool = &*self.pool, session = %ticket.id.redacted(), "session ended during the request: change not stored");
                        clear(headers, &attrs);
                        return Ok(());
                    }
                }
            }
            None => (
                Ticket::mint(self.settings.encrypt)?,
                Put::New,
                Record::new(now),
            ),
        };
        for c in changes {
            record.entries.retain(|e| e.name != c.name);
            if !c.deletes(now) {
                record.entries.push(Entry {
                    name: c.name,
                    value: c.value,
                    expires: c.attrs.expires,
                });
            }
        }
        record.entries.retain(|e| e.expires.is_none_or(|t| t > now));
        if record.entries.is_empty() {
            if put != Put::New {
                match self.store.delete(&ticket.id).await {
                    Ok(true) => {
                        self.stats().count_deleted();
                        tracing::debug!(pool = &*self.pool, session = %ticket.id.redacted(), "session ended by the app");
                    }
                    Ok(false) => {}
                    Err(error) => self.store_failed(error, "delete")?,
                }
            }
            clear(headers, &attrs);
            return Ok(());
        }
        let size = record.plain_len();
        if size > self.settings.max_blob_bytes {
            self.stats().count_too_large();
            tracing::warn!(
                pool = &*self.pool,
                size,
                limit = self.settings.max_blob_bytes,
                "the app's session is over max_blob_bytes: answering 502, the previous session kept"
            );
            return Err(SessionError::TooLarge {
                size,
                limit: self.settings.max_blob_bytes,
            });
        }
        let until = record.created + self.settings.absolute_timeout.as_secs();
        let value = record.encode(&ticket)?;
        let ttl = Ttl {
            idle: self.settings.idle_timeout,
            first_idle: self.settings.first_idle_timeout,
            until,
        };
        let new = put == Put::New;
        match self.store.put(&ticket.id, value.into(), ttl, put).await {
            Ok(true) => {}
            Ok(false) => {
                // Existing: gone between the read and the write
                tracing::info!(pool = &*self.pool, session = %ticket.id.redacted(), "session ended during the request: change not stored");
                clear(headers, &attrs);
                return Ok(());
            }
            Err(error) => return self.store_failed(error, "store"),
        }
        if new {
            self.stats().count_created();
            tracing::debug!(pool = &*self.pool, session = %ticket.id.redacted(), "session created");
        }
        // a new ticket, or the app renewed its cookie's lifetime
        if (new || attrs.expires.is_some())
            && let Some(v) = cookies::ticket_cookie(
                &self.settings.cookie,
                &ticket.value(),
                &attrs,
                until,
                now,
                tls,
            )
        {
            headers.append(SET_COOKIE, v);
        }
        Ok(())
    }

    /// The session changes a response makes, taken out of it: the app's
    /// `Set-Cookie` fields, or the update header. The blob headers never
    /// reach the client.
    fn changes(&self, headers: &mut HeaderMap, now: u64) -> Vec<cookies::SetCookie> {
        match &self.settings.carrier {
            Carrier::Cookie { app_cookies } => cookies::take_set_cookies(headers, app_cookies, now),
            Carrier::Header {
                header,
                update_header,
            } => {
                headers.remove(header);
                let updates: Vec<_> = headers.get_all(update_header).iter().cloned().collect();
                headers.remove(update_header);
                match updates.last() {
                    Some(v) => vec![cookies::SetCookie {
                        name: header.as_str().to_string(),
                        value: v.as_bytes().to_vec(),
                        attrs: cookies::Attrs::default(),
                    }],
                    None => Vec::new(),
                }
            }
        }
    }
}

/// The one field called `name`, when there is exactly one.
fn single<'a>(headers: &'a HeaderMap, name: &http::header::HeaderName) -> Option<&'a HeaderValue> {
    let mut all = headers.get_all(name).iter();
    match (all.next(), all.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
}
