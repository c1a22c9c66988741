//! A response's session: the app's changes taken out of it and stored
//! before its head goes to the client.
//!
//! Every change of what the app reads gives the client that made it a new
//! ticket: the session's next version is stored under a new secret, and
//! the version before it stays readable by the old ticket for
//! `rotation_grace` only, so that requests already in flight with it are
//! not logged out, while a ticket planted before a login never reads what
//! the login wrote (session fixation). A change made with a ticket that a
//! change replaced meanwhile is its own client's, as it would be with the
//! app's own cookie (the browser keeps the last `Set-Cookie`): it starts a
//! new session from what that ticket read, never merging into state the
//! ticket could not read. A logout, with any version, ends every version.
//!
//! A change lands only on the value it was made from (compare-and-set), so
//! that two requests changing one session at once never both think they
//! won, and a session revoked while a request was in flight stays gone.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use http::header::SET_COOKIE;

use super::cookies::{self, Attrs, SetCookie};
use super::record::{Binding, Entry, Opened, Record, Unreadable, Version};
use super::store::{Put, Store, Ttl};
use super::ticket::{SessionId, Ticket};
use super::{Carrier, Loaded, Mode, Recall, SessionError};

/// Reads and writes of one change before it is taken as its client's own:
/// each failed write means another request changed the session meanwhile.
const ATTEMPTS: usize = 3;

/// What one response changes, and how its ticket cookie is written.
struct Changes {
    cookies: Vec<SetCookie>,
    /// The attributes the ticket's cookie copies: a cookie the app sets
    /// (a deletion's would end the ticket at once).
    attrs: Attrs,
    /// The app deletes every cookie it sets: a logout.
    deletes_all: bool,
    now: u64,
    /// The ticket's cookie is `Secure`.
    https: bool,
}

impl Mode {
    /// Takes the app's session out of a response, stores what changed, and
    /// gives the browser its ticket (or clears it).
    pub async fn from_backend(
        &self,
        headers: &mut HeaderMap,
        loaded: Loaded,
        recall: &Recall,
    ) -> Result<(), SessionError> {
        let now = crate::clock::unix_now();
        let cookies = self.changes(headers, &loaded, now);
        if cookies.is_empty() {
            if loaded.stale {
                self.clear(headers, &Attrs::default(), loaded.origin.https);
            }
            return Ok(());
        }
        // the next request opens what this one stores
        recall.forget();
        let changes = Changes {
            attrs: cookies
                .iter()
                .find(|c| !c.deletes(now))
                .unwrap_or(&cookies[0])
                .attrs
                .clone(),
            deletes_all: cookies.iter().all(|c| c.deletes(now)),
            cookies,
            now,
            https: loaded.origin.https,
        };
        // boxed: most responses change nothing, and the future of a write
        // (a read, then a write or a delete) would make every request's
        // future larger
        Box::pin(self.store_changes(headers, loaded, changes)).await
    }

    async fn store_changes(
        &self,
        headers: &mut HeaderMap,
        loaded: Loaded,
        changes: Changes,
    ) -> Result<(), SessionError> {
        if loaded.unavailable {
            if !changes.deletes_all {
                tracing::warn!(
                    pool = &*self.pool,
                    "session change not stored: the store was unavailable when the request came (fail_open)"
                );
                return Ok(());
            }
            // a logout: the browser forgets its ticket now, and the store
            // the session as soon as it answers
            if let Some(ticket) = &loaded.ticket {
                self.delete_later(ticket.clone());
            }
            self.clear(headers, &changes.attrs, changes.https);
            return Ok(());
        }
        match &loaded.ticket {
            None => {
                let mut record = Record::new(changes.now);
                apply(&mut record, &changes);
                if record.entries.is_empty() {
                    // deletions of a session there is none of
                    if loaded.stale {
                        self.clear(headers, &changes.attrs, changes.https);
                    }
                    return Ok(());
                }
                self.store_new(headers, &loaded, record, &changes).await
            }
            // a replaced ticket too: the store says first whether the
            // session still is (a logout meanwhile ends every version)
            Some(ticket) => self.change(headers, &loaded, ticket, &changes).await,
        }
    }

    /// Stores a change made with a ticket that named a session when its
    /// request came: still its current version, a new version under a new
    /// ticket (or, when only expiries changed, the same version again), in
    /// place of the value it was made from; replaced since, a session of
    /// the client's own ([`Mode::fork`]); ended since, nothing.
    async fn change(
        &self,
        headers: &mut HeaderMap,
        loaded: &Loaded,
        ticket: &Ticket,
        changes: &Changes,
    ) -> Result<(), SessionError> {
        let key = self.key(&ticket.id);
        for _ in 0..ATTEMPTS {
            let current = match self.store.get(&key).await {
                Ok(Some(current)) => current,
                Ok(None) => {
                    // revoked, or logged out, while this request ran
                    tracing::info!(pool = &*self.pool, session = %ticket.id.redacted(), "session ended during the request: change not stored");
                    self.clear(headers, &changes.attrs, changes.https);
                    return Ok(());
                }
                Err(error) => return self.write_failed(headers, ticket, changes, error),
            };
            let before = match Opened::open(current.clone(), ticket, &self.binding, changes.now) {
                Ok((opened, Version::Current)) => opened.to_record(),
                Ok((_, Version::Previous)) | Err(Unreadable::Secret) => {
                    // another request changed the session since this one
                    // read it: this change is its own client's
                    return self.fork(headers, loaded, ticket, changes).await;
                }
                Err(Unreadable::Format) => {
                    tracing::warn!(pool = &*self.pool, session = %ticket.id.redacted(), "stored session unreadable: change not stored");
                    self.clear(headers, &changes.attrs, changes.https);
                    return Ok(());
                }
            };
            let mut record = before.clone();
            apply(&mut record, changes);
            if record.entries.is_empty() {
                return self.end(headers, &key, ticket, changes).await;
            }
            if record == before {
                return Ok(());
            }
            self.check_size(&record)?;
            let until = self.until(&record);
            let (next, value) = match record.same_values(&before) {
                true => (
                    ticket.clone(),
                    record.encode_again(ticket, &self.binding, &current)?,
                ),
                false => {
                    let next = ticket.rotate()?;
                    let grace = changes.now + self.settings.rotation_grace.as_secs();
                    let value = record.encode_after(&next, &self.binding, &current, grace)?;
                    (next, value)
                }
            };
            let put = Put::Replace(current);
            match self
                .store
                .put(&key, value.into(), self.ttl(until), put)
                .await
            {
                Ok(true) => {
                    let rotated = next != *ticket;
                    if rotated {
                        self.stats().count_rotated();
                        tracing::debug!(pool = &*self.pool, session = %ticket.id.redacted(), "session changed: new ticket");
                    }
                    if rotated || changes.attrs.expires.is_some() {
                        // a new ticket, or the app renewed its cookie's lifetime
                        self.set_ticket(headers, &next, changes, until);
                    }
                    return Ok(());
                }
                // changed, or ended, since it was read: read it again
                Ok(false) => continue,
                Err(error) => return self.write_failed(headers, ticket, changes, error),
            }
        }
        // the session kept changing under this request
        self.fork(headers, loaded, ticket, changes).await
    }

    /// A change made with a ticket another change replaced: a new session
    /// for the client that made it, from what its ticket read, as the
    /// app's own cookie would have carried it; or, for a logout, the end
    /// of the session.
    async fn fork(
        &self,
        headers: &mut HeaderMap,
        loaded: &Loaded,
        ticket: &Ticket,
        changes: &Changes,
    ) -> Result<(), SessionError> {
        let Some(read) = &loaded.record else {
            return Ok(());
        };
        let mut record = read.to_record();
        apply(&mut record, changes);
        if record.entries.is_empty() {
            return self
                .end(headers, &self.key(&ticket.id), ticket, changes)
                .await;
        }
        self.stats().count_forked();
        tracing::debug!(pool = &*self.pool, session = %ticket.id.redacted(), "change made with a replaced ticket: a session of its own");
        self.store_new(headers, loaded, record, changes).await
    }

    /// Stores `record` as a new session, within the client's budget of new
    /// sessions, and gives the client its ticket.
    async fn store_new(
        &self,
        headers: &mut HeaderMap,
        loaded: &Loaded,
        record: Record,
        changes: &Changes,
    ) -> Result<(), SessionError> {
        self.check_size(&record)?;
        if let Some(budget) = &self.new_sessions
            && !budget.admit(loaded.origin.client, changes.now)
        {
            self.stats().count_limited();
            tracing::debug!(pool = &*self.pool, client = %loaded.origin.client, "over max_new_sessions_per_client: session not stored");
            if loaded.stale {
                self.clear(headers, &changes.attrs, changes.https);
            }
            return Ok(());
        }
        let ticket = Ticket::mint(self.settings.encrypt)?;
        let value = record.encode(&ticket, &self.binding)?;
        let until = self.until(&record);
        let key = self.key(&ticket.id);
        match self
            .store
            .put(&key, value.into(), self.ttl(until), Put::New)
            .await
        {
            Ok(true) => {
                self.stats().count_created();
                tracing::debug!(pool = &*self.pool, session = %ticket.id.redacted(), "session created");
                self.set_ticket(headers, &ticket, changes, until);
                Ok(())
            }
            // an id drawn twice (128 random bits): no session, as for a
            // store that refused it
            Ok(false) => Ok(()),
            Err(error) => self.store_failed(error, "store"),
        }
    }

    /// The app ended the session: every version goes, and the browser's
    /// ticket with it, even when the store cannot say so yet.
    async fn end(
        &self,
        headers: &mut HeaderMap,
        key: &SessionId,
        ticket: &Ticket,
        changes: &Changes,
    ) -> Result<(), SessionError> {
        match self.store.delete(key).await {
            Ok(true) => {
                self.stats().count_deleted();
                tracing::debug!(pool = &*self.pool, session = %ticket.id.redacted(), "session ended by the app");
            }
            Ok(false) => {}
            Err(_) => self.delete_later(ticket.clone()),
        }
        self.clear(headers, &changes.attrs, changes.https);
        Ok(())
    }

    /// The store failed while a change was being stored: a logout still
    /// clears the browser's ticket (and the session goes when the store is
    /// back); any other change follows `on_store_error`.
    fn write_failed(
        &self,
        headers: &mut HeaderMap,
        ticket: &Ticket,
        changes: &Changes,
        error: super::StoreError,
    ) -> Result<(), SessionError> {
        if changes.deletes_all {
            self.delete_later(ticket.clone());
            self.clear(headers, &changes.attrs, changes.https);
            return Ok(());
        }
        self.store_failed(error, "update")
    }

    /// Deletes the session `ticket` names once the store answers again,
    /// if the ticket opens a version of it (it was not checked when the
    /// store failed), retrying until the session's idle timeout, by which
    /// the store has expired it anyway. Counted and logged, so an operator
    /// knows which logouts were not done at once.
    fn delete_later(&self, ticket: Ticket) {
        self.stats().count_delete_deferred();
        tracing::warn!(
            pool = &*self.pool,
            session = %ticket.id.redacted(),
            "logout while the session store is unavailable: the ticket is cleared, the session is deleted when the store is back"
        );
        let deferred = Deferred {
            store: self.store.clone(),
            binding: self.binding,
            key: self.key(&ticket.id),
            ticket,
            pool: self.pool.clone(),
            give_up: tokio::time::Instant::now() + self.settings.idle_timeout,
        };
        tokio::spawn(deferred.run());
    }

    /// Clears the browser's ticket (the session is gone).
    pub(super) fn clear(&self, headers: &mut HeaderMap, attrs: &Attrs, https: bool) {
        if let Some(v) = cookies::clear_cookie(&self.settings.cookie, attrs, https) {
            headers.append(SET_COOKIE, v);
        }
    }

    fn set_ticket(&self, headers: &mut HeaderMap, ticket: &Ticket, changes: &Changes, until: u64) {
        if let Some(v) = cookies::ticket_cookie(
            &self.settings.cookie,
            &ticket.value(),
            &changes.attrs,
            until,
            changes.now,
            changes.https,
        ) {
            headers.append(SET_COOKIE, v);
        }
    }

    fn check_size(&self, record: &Record) -> Result<(), SessionError> {
        let size = record.plain_len();
        if size <= self.settings.max_blob_bytes {
            return Ok(());
        }
        self.stats().count_too_large();
        tracing::warn!(
            pool = &*self.pool,
            size,
            limit = self.settings.max_blob_bytes,
            "the app's session is over max_blob_bytes: answering 502, the previous session kept"
        );
        Err(SessionError::TooLarge {
            size,
            limit: self.settings.max_blob_bytes,
        })
    }

    /// The end of a session's absolute timeout (unix seconds).
    fn until(&self, record: &Record) -> u64 {
        record.created + self.settings.absolute_timeout.as_secs()
    }

    fn ttl(&self, until: u64) -> Ttl {
        Ttl {
            idle: self.settings.idle_timeout,
            first_idle: self.settings.first_idle_timeout,
            until,
        }
    }

    /// The session changes a response makes, taken out of it: the app's
    /// `Set-Cookie` fields for the session's path, or the update header.
    /// The blob headers never reach the client.
    fn changes(&self, headers: &mut HeaderMap, loaded: &Loaded, now: u64) -> Vec<SetCookie> {
        match &self.settings.carrier {
            Carrier::Cookie { app_cookies } => cookies::take_set_cookies(
                headers,
                app_cookies,
                &self.settings.path,
                loaded.origin.default_path_is_session,
                now,
            ),
            Carrier::Header {
                header,
                update_header,
            } => {
                headers.remove(header);
                let updates: Vec<_> = headers.get_all(update_header).iter().cloned().collect();
                headers.remove(update_header);
                match updates.last() {
                    Some(v) => vec![SetCookie {
                        name: header.as_str().to_string(),
                        value: v.as_bytes().to_vec(),
                        attrs: Attrs::default(),
                    }],
                    None => Vec::new(),
                }
            }
        }
    }
}

/// Applies a response's cookies to a session: each app cookie is
/// last-write-wins, in its place (so that setting a cookie again as it was
/// changes nothing), an emptied or expired one goes.
fn apply(record: &mut Record, changes: &Changes) {
    for c in &changes.cookies {
        if c.deletes(changes.now) {
            record.entries.retain(|e| e.name != c.name);
            continue;
        }
        let entry = Entry {
            name: c.name.clone(),
            value: c.value.clone(),
            expires: c.attrs.expires,
        };
        match record.entries.iter_mut().find(|e| e.name == c.name) {
            Some(e) => *e = entry,
            None => record.entries.push(entry),
        }
    }
    record
        .entries
        .retain(|e| e.expires.is_none_or(|t| t > changes.now));
}

/// A logout the store could not do when it was asked.
struct Deferred {
    store: Arc<Store>,
    binding: Binding,
    key: SessionId,
    ticket: Ticket,
    pool: Arc<str>,
    give_up: tokio::time::Instant,
}

impl Deferred {
    async fn run(self) {
        let stats = self.store.stats();
        stats.pending_delete_began();
        let mut wait = Duration::from_millis(100);
        loop {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
            if tokio::time::Instant::now() >= self.give_up {
                tracing::info!(pool = &*self.pool, session = %self.ticket.id.redacted(), "logged-out session not deleted: the store was unavailable until its idle timeout, which has ended it");
                break;
            }
            let stored = match self.store.get(&self.key).await {
                Ok(Some(stored)) => stored,
                // gone already
                Ok(None) => break,
                Err(_) => continue,
            };
            // any version the ticket ever read, grace or not: the client
            // held it, and logged out
            if Opened::open(stored, &self.ticket, &self.binding, 0).is_err() {
                break;
            }
            match self.store.delete(&self.key).await {
                Ok(found) => {
                    if found {
                        stats.count_deleted();
                    }
                    tracing::info!(pool = &*self.pool, session = %self.ticket.id.redacted(), "logged-out session deleted now that the store is back");
                    break;
                }
                Err(_) => continue,
            }
        }
        stats.pending_delete_ended();
    }
}
