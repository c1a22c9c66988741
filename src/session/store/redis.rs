//! Redis: `{key_prefix}sessions:{id}`, one string per session, whose TTL is
//! the idle timeout (or what is left of the absolute one).
//!
//! Each worker thread has its own multiplexed connection (a
//! `ConnectionManager`, which reconnects by itself), so the request path
//! never crosses threads and every request of a worker shares one socket.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Put, StoreError, Ttl};
use crate::session::stats::Stats;
use crate::session::ticket::SessionId;

pub struct RedisStore {
    client: redis::Client,
    config: ConnectionManagerConfig,
    prefix: String,
    timeout: Duration,
    /// Tells this store's connections from an older one's in a worker's
    /// cache, after a reload changed the store.
    alive: Arc<u64>,
    pub(super) stats: Arc<Stats>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Compare-and-set: the new value (with its TTL) only while the key still
/// holds the value the change was made from. One key, so one slot.
const REPLACE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
return redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end return false";

/// [`REPLACE`]'s SHA-1, which `EVALSHA` names it by.
static REPLACE_SHA: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        REPLACE.as_bytes(),
    );
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
});

static NEXT_STORE: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's connection to each live Redis store.
    static CONNECTIONS: RefCell<Vec<(Weak<u64>, ConnectionManager)>> = const { RefCell::new(Vec::new()) };
}

impl RedisStore {
    pub fn new(
        config: &crate::config::RedisStore,
        stats: Arc<Stats>,
    ) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(config.url.as_str())?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            // one attempt per request while Redis is away: the request
            // that fails is answered at once (503, or forwarded without
            // its session), and the next one tries again
            .set_number_of_retries(0)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500));
        stats.set_up(false);
        Ok(RedisStore {
            client,
            config: manager,
            prefix: format!("{}sessions:", config.key_prefix),
            timeout: config.timeout,
            alive: Arc::new(NEXT_STORE.fetch_add(1, Ordering::Relaxed)),
            stats,
        })
    }

    /// This thread's connection, made on first use (lazily: it connects on
    /// its first command, and again after Redis went away).
    fn connection(&self) -> Result<ConnectionManager, StoreError> {
        CONNECTIONS.with(|cell| {
            let mut conns = cell.borrow_mut();
            if let Some((_, c)) = conns
                .iter()
                .find(|(w, _)| w.upgrade().is_some_and(|a| Arc::ptr_eq(&a, &self.alive)))
            {
                return Ok(c.clone());
            }
            conns.retain(|(w, _)| w.strong_count() > 0);
            let c =
                ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())?;
            conns.push((Arc::downgrade(&self.alive), c.clone()));
            Ok(c)
        })
    }

    /// A command on one session's key, its buffers sized once for what
    /// follows (`args` more arguments, `extra` more bytes), rather than
    /// grown argument by argument.
    fn on_key(&self, name: &str, id: &SessionId, args: usize, extra: usize) -> redis::Cmd {
        let (prefix, id) = (self.prefix.as_bytes(), id.as_str().as_bytes());
        let key_len = prefix.len() + id.len();
        let mut cmd = redis::Cmd::with_capacity(2 + args, name.len() + key_len + extra);
        cmd.arg(name);
        // the key is copied into the command: built on the stack when it
        // fits, as it does unless the prefix is long
        let mut stack = [0u8; 96];
        match stack.get_mut(..key_len) {
            Some(key) => {
                key[..prefix.len()].copy_from_slice(prefix);
                key[prefix.len()..].copy_from_slice(id);
                cmd.arg(&*key);
            }
            None => {
                cmd.arg([prefix, id].concat());
            }
        }
        cmd
    }

    /// Runs one command. Each attempt is bounded by the store's timeout
    /// (the connection's own: connecting, and waiting for an answer), so
    /// that a Redis that hangs costs a request that long and no more. A
    /// connection found dropped (Redis restarted, or failed over, since
    /// this worker last used it) is replaced and the command sent once
    /// more: every command here may be repeated, and the first request
    /// after a restart should not fail for the old socket.
    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut conn = self.connection()?;
        let error = match cmd.query_async::<T>(&mut conn).await {
            Ok(value) => return Ok(value),
            Err(error) if error.is_connection_dropped() => error,
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                // a Redis restarted (or new) since the script was loaded
                let load = redis::cmd("SCRIPT").arg("LOAD").arg(REPLACE).clone();
                let _: String = load
                    .query_async(&mut conn)
                    .await
                    .map_err(|error| self.failed(error))?;
                error
            }
            Err(error) => return Err(self.failed(error)),
        };
        tracing::debug!(%error, "Redis command sent again");
        cmd.query_async::<T>(&mut conn)
            .await
            .map_err(|error| self.failed(error))
    }

    /// A timeout says how long was waited, as the setting does.
    fn failed(&self, error: redis::RedisError) -> StoreError {
        match error.is_timeout() {
            true => StoreError::Timeout(self.timeout),
            false => StoreError::Redis(error),
        }
    }

    pub(super) async fn load(
        &self,
        id: &SessionId,
        idle: Duration,
    ) -> Result<Option<Bytes>, StoreError> {
        let mut cmd = self.on_key("GETEX", id, 2, 24);
        cmd.arg("EX").arg(idle.as_secs().max(1));
        let value: Option<Vec<u8>> = self.run(&cmd).await?;
        Ok(value.map(Bytes::from))
    }

    pub(super) async fn get(&self, id: &SessionId) -> Result<Option<Bytes>, StoreError> {
        let cmd = self.on_key("GET", id, 0, 0);
        let value: Option<Vec<u8>> = self.run(&cmd).await?;
        Ok(value.map(Bytes::from))
    }

    pub(super) async fn put(
        &self,
        id: &SessionId,
        value: Bytes,
        ttl: Ttl,
        put: Put,
    ) -> Result<bool, StoreError> {
        let now = crate::clock::unix_now();
        let cmd = match put {
            Put::New => {
                let mut cmd = self.on_key("SET", id, 4, value.len() + 32);
                cmd.arg(&value[..])
                    .arg("EX")
                    .arg(ttl.seconds(now, true))
                    .arg("NX");
                cmd
            }
            Put::Replace(expected) => {
                // EVALSHA of the compare-and-set script; loaded on the
                // connection's first NOSCRIPT answer (see `run`)
                let mut cmd = redis::Cmd::with_capacity(
                    6,
                    64 + self.prefix.len() + 64 + expected.len() + value.len(),
                );
                cmd.arg("EVALSHA").arg(REPLACE_SHA.as_str()).arg(1);
                cmd.arg([self.prefix.as_bytes(), id.as_str().as_bytes()].concat());
                cmd.arg(&expected[..])
                    .arg(&value[..])
                    .arg(ttl.seconds(now, false));
                cmd
            }
        };
        // SET answers OK, the script 1; nil when the condition did not hold
        let done: Option<redis::Value> = self.run(&cmd).await?;
        Ok(done.is_some_and(|v| !matches!(v, redis::Value::Nil)))
    }

    pub(super) async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        let cmd = self.on_key("DEL", id, 0, 0);
        let n: u64 = self.run(&cmd).await?;
        Ok(n > 0)
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.run(&redis::cmd("PING")).await?;
        Ok(())
    }
}
