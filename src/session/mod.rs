//! Shared-store mode: the app's session leaves the browser and the backends
//! for the store, behind an opaque ticket, so that any backend serves any
//! request.
//!
//! A request's ticket is read and its session loaded (one store round trip)
//! before the request head is written; the app's cookies (or blob header)
//! take the ticket's place. The response's new session is taken out of it
//! and stored before its head goes to the client, so that the client's next
//! request finds it ([`change`]). Only the proxy mints tickets: one it did
//! not make, or whose session is gone, is no session; and every change of
//! a session gives the client that made it a new ticket.

mod change;
pub mod cookies;
mod limit;
pub mod recall;
pub mod record;
pub mod stats;
pub mod store;
pub mod ticket;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};

use crate::config::{self, Carrier, OnStoreError};
use limit::NewSessions;
pub use recall::{Claim, Recall};
use record::{Binding, EncodeError, Opened, Version};
pub use stats::Stats;
use store::Found;
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
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// The process's sessions: the store (kept across reloads that leave
/// `[store]` as it was, so the embedded store keeps its sessions), the
/// counters (kept across every reload), and each pool's budget of new
/// sessions per client (kept across reloads that keep the pool's limit).
#[derive(Debug, Default)]
pub struct Sessions {
    pub stats: Arc<Stats>,
    current: Mutex<Option<(config::Store, Arc<Store>)>>,
    limits: Mutex<HashMap<(String, u32), Arc<NewSessions>>>,
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
                let memory = config::MemoryStore {
                    max_size: config::MemoryStore::DEFAULT_SIZE,
                    secret: None,
                };
                Store::memory(&memory, self.stats.clone())
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

    /// The budget of new sessions per client of `pool`, when it has one.
    fn limit_for(&self, pool: &str, per_minute: Option<u32>) -> Option<Arc<NewSessions>> {
        let per_minute = per_minute?;
        let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        limits.retain(|(p, _), l| p != pool || Arc::strong_count(l) > 1);
        Some(
            limits
                .entry((pool.to_string(), per_minute))
                .or_insert_with(|| Arc::new(NewSessions::new(per_minute)))
                .clone(),
        )
    }

    /// The keys a session named by `id` (or by a whole ticket) may be
    /// stored under: its id when sealed, a keyed hash of it when plain.
    fn keys(&self, id: &str) -> Option<(Arc<Store>, [SessionId; 2])> {
        let id = id.split_once('.').map_or(id, |(id, _)| id);
        let (store, id) = (self.current()?, SessionId::parse(id.as_bytes())?);
        let plain = store.plain_key(&id);
        Some((store, [id, plain]))
    }

    /// `DELETE /admin/sessions/{id}`: `Ok(false)` for an id that names no
    /// session (or is not one the proxy could have made). Every version of
    /// the session ends at once.
    pub async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let Some((store, keys)) = self.keys(id) else {
            return Ok(false);
        };
        let mut found = false;
        for key in &keys {
            found |= store.delete(key).await?;
        }
        if found {
            self.stats.count_deleted();
            tracing::info!(session = %keys[0].redacted(), "session revoked");
        }
        Ok(found)
    }
}

/// What `GET /admin/sessions/{id}` shows of a stored session: its age and
/// size, whether a previous version is still readable, and its cookies
/// only when it is stored plain (a sealed one opens with the browser's
/// secret alone).
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
        let Some((store, keys)) = self.keys(id) else {
            return Ok(None);
        };
        let mut stored = None;
        for key in &keys {
            stored = store.get(key).await?;
            if stored.is_some() {
                break;
            }
        }
        let Some(stored) = stored else {
            return Ok(None);
        };
        let Some((sealed, created)) = record::Record::head(&stored) else {
            return Ok(None);
        };
        let cookies = Opened::inspect_plain(&stored).map(|o| {
            o.entries()
                .map(|e| InspectedEntry {
                    name: e.name.to_string(),
                    value: String::from_utf8_lossy(e.value).into_owned(),
                    expires: e.expires,
                })
                .collect()
        });
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
    /// What this pool's sessions are bound to: its scope and its ticket's
    /// cookie name.
    binding: Binding,
    /// Cookies no request reaches this pool's backends with, but for what
    /// the proxy puts there: the app's (a client does not set the app's
    /// session) and every ticket cookie of the configuration.
    strip: Vec<String>,
    new_sessions: Option<Arc<NewSessions>>,
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
    /// The client's ticket, when it names a live session (or the store
    /// was `unavailable`).
    ticket: Option<Ticket>,
    record: Option<Opened>,
    /// When `record` was read (unix seconds): what its cookies' expiries
    /// are measured against on the way to the backend.
    read_at: u64,
    /// A ticket that is no session: cleared in the response.
    stale: bool,
    /// The store failed and the pool is `fail_open`: the request goes on
    /// without its session and nothing of it is stored; `ticket` is then
    /// the one it brought, unchecked, for a logout to end later.
    unavailable: bool,
    /// The `Cookie` field the backend gets, as the connection recalls it.
    forward: Option<HeaderValue>,
    /// Where the request came from, for its response's session.
    origin: Origin,
}

/// What a response's session depends on of its request.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    /// The client's address (as `trusted_proxies` tell it): the budget
    /// of new sessions is per address.
    pub client: IpAddr,
    /// The client asked over HTTPS (here, or at a trusted proxy in front):
    /// the ticket cookie is `Secure`.
    pub https: bool,
    /// The request's default cookie path (RFC 6265 5.1.4) is the
    /// session's `path`: an app cookie set with no `Path` is the session's.
    pub default_path_is_session: bool,
}

impl Default for Origin {
    fn default() -> Self {
        Origin {
            client: IpAddr::from([0, 0, 0, 0]),
            https: false,
            default_path_is_session: true,
        }
    }
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
    /// Where the request came from: set before its response is read.
    pub fn came_from(&mut self, origin: Origin) {
        self.origin = origin;
    }

    /// A ticket that is no session.
    fn stale() -> Loaded {
        Loaded {
            stale: true,
            ..Loaded::default()
        }
    }
}

impl Mode {
    /// `tickets`: every ticket cookie name of the configuration.
    pub fn new(
        pool: Arc<str>,
        settings: config::Session,
        store: Arc<Store>,
        sessions: &Sessions,
        tickets: &[String],
    ) -> Mode {
        static IDS: AtomicU64 = AtomicU64::new(0);
        let mut strip: Vec<String> = match &settings.carrier {
            Carrier::Cookie { app_cookies } => app_cookies.clone(),
            Carrier::Header { .. } => Vec::new(),
        };
        strip.extend(tickets.iter().filter(|t| **t != settings.cookie).cloned());
        Mode {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            binding: Binding::new(&settings.scope, &settings.cookie),
            strip,
            new_sessions: sessions.limit_for(&pool, settings.max_new_sessions_per_client),
            pool,
            settings,
            store,
        }
    }

    fn stats(&self) -> &Stats {
        self.store.stats()
    }

    /// Where a session is kept: see [`Store::plain_key`].
    fn key(&self, id: &SessionId) -> SessionId {
        match self.settings.encrypt {
            true => *id,
            false => self.store.plain_key(id),
        }
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
            .ticket(raw, &self.binding)
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
        match self.store.load_now(&self.key(&claim.ticket.id), held) {
            Some(found) => Load::Done(self.loaded(claim, found, recall)),
            None => Load::Wait(claim),
        }
    }

    /// Loads the session a ticket names: one store round trip, which also
    /// restarts its idle timeout.
    pub async fn load(&self, claim: Claim, recall: &Recall) -> Result<Loaded, SessionError> {
        let found = self
            .store
            .load(&self.key(&claim.ticket.id), self.settings.idle_timeout)
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
                    ticket: Some(ticket),
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
                (Ok((r.opened, Version::Current)), Some(r.forward))
            }
            _ => match recall.opened(&ticket, &self.binding, &stored, held.clone()) {
                Some(opened) => (Ok((opened, Version::Current)), None),
                None => {
                    let opened = Opened::open(stored.clone(), &ticket, &self.binding, now);
                    if let Ok((opened, Version::Current)) = &opened {
                        // a previous version's grace runs out: not kept
                        recall.remember(&ticket, &self.binding, stored, opened, held);
                    }
                    (opened, None)
                }
            },
        };
        match opened {
            Ok((record, _)) if record.created + self.settings.absolute_timeout.as_secs() > now => {
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
                let key = self.key(&ticket.id);
                tokio::spawn(async move {
                    if let Ok(true) = store.delete(&key).await {
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
            Carrier::Cookie { .. } => {
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
                cookies::rewrite(headers, &self.settings.cookie, &self.strip, &replacement);
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
                remove_spellings(headers, &[header, update_header]);
                cookies::rewrite(headers, &self.settings.cookie, &self.strip, b"");
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
}

/// Removes the fields whose names read as one of `names` once `_` is read
/// as `-`: CGI and WSGI servers (and the apps behind them) map both to one
/// name, so `X_Session` from a client would be the blob header there.
fn remove_spellings(headers: &mut HeaderMap, names: &[&http::header::HeaderName]) {
    let alike = |name: &str| {
        name.contains('_')
            && names.iter().any(|n| {
                n.as_str().len() == name.len()
                    && n.as_str().bytes().zip(name.bytes()).all(|(a, b)| {
                        a == b || (a == b'-' && b == b'_') || (a == b'_' && b == b'-')
                    })
            })
    };
    let found: Vec<http::header::HeaderName> = headers
        .keys()
        .filter(|n| alike(n.as_str()))
        .cloned()
        .collect();
    for name in found {
        headers.remove(name);
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
