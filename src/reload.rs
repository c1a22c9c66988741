//! Configuration reload (SIGHUP, `POST /admin/reload`): parse and validate
//! first; on any problem keep serving the old configuration and say why; on
//! success swap the snapshot whole. Requests in flight finish on the
//! snapshot they started with.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::admin::AdminListener;
use crate::config::{Backend, Config, Problem};
use crate::resolve::Dns;
use crate::runtime::Shared;
use crate::server::Listeners;

/// What a reload reads and changes: the file, the snapshot, the listeners,
/// the names backends follow in DNS.
pub struct Reloader {
    pub path: PathBuf,
    pub shared: Arc<Shared>,
    pub listeners: Arc<Listeners>,
    pub dns: Arc<Dns>,
    /// One reload at a time (SIGHUP and `POST /admin/reload` may meet).
    serial: tokio::sync::Mutex<()>,
    /// The admin listener in use, which a reload moves.
    admin: Mutex<Option<AdminListener>>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        shared: Arc<Shared>,
        listeners: Arc<Listeners>,
        dns: Arc<Dns>,
    ) -> Self {
        Reloader {
            path,
            shared,
            listeners,
            dns,
            serial: tokio::sync::Mutex::new(()),
            admin: Mutex::new(None),
        }
    }

    /// Serves the admin listener bound at start, `socket` for `written`.
    pub fn start_admin(
        self: &Arc<Self>,
        written: SocketAddr,
        socket: StdListener,
    ) -> std::io::Result<()> {
        let admin = AdminListener::start(written, socket, self.shared.clone(), Some(self.clone()))?;
        *self.admin() = Some(admin);
        Ok(())
    }

    /// The admin listener's socket, named, for a new binary.
    pub fn admin_handover(&self) -> std::io::Result<Option<(String, StdListener)>> {
        match self.admin().as_ref() {
            None => Ok(None),
            Some(a) => Ok(Some((
                AdminListener::handover_name(a.written),
                a.socket.try_clone()?,
            ))),
        }
    }

    fn admin(&self) -> std::sync::MutexGuard<'_, Option<AdminListener>> {
        self.admin.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reloads the file; returns the new generation or every problem
    /// found, the old configuration still in effect then.
    pub async fn reload(self: &Arc<Self>) -> Result<u64, Vec<Problem>> {
        let _one = self.serial.lock().await;
        let shared = &self.shared;
        let result = Config::load(&self.path)
            .map_err(|e| e.problems())
            .and_then(|config| {
                let unsupported = config.unsupported();
                if unsupported.is_empty() {
                    Ok(config)
                } else {
                    Err(unsupported)
                }
            })
            // the new listeners' sockets, bound before anything changes
            .and_then(|config| {
                let admin = self.prepare_admin(&config)?;
                Ok((self.listeners.prepare(&config)?, admin, config))
            });
        match result {
            Ok((listeners, admin, config)) => {
                for w in &config.warnings {
                    tracing::warn!(problem = %w, "configuration warning");
                }
                let old = shared.load().config.clone();
                // the one setting a reload cannot apply: workers own their
                // threads and sockets
                if old.server.workers != config.server.workers {
                    tracing::warn!(
                        setting = "server.workers",
                        "this change takes effect at the next restart; the rest of the reload does now"
                    );
                }
                let changed = changes(&old, &config);
                // names it adds are looked up first, so their backends
                // serve from the first request
                let found = self.dns.new_names(&config, &shared.addresses()).await;
                shared.learn(found);
                let generation = shared.swap(config);
                if !listeners.is_empty() {
                    self.listeners.apply(listeners, &shared.load());
                }
                if let Some(admin) = admin {
                    self.move_admin(admin);
                }
                shared.reloads_ok.fetch_add(1, Ordering::Relaxed);
                shared.note_reload_success();
                tracing::info!(generation, changes = %changed, "configuration reloaded");
                Ok(generation)
            }
            Err(problems) => {
                shared.reloads_failed.fetch_add(1, Ordering::Relaxed);
                for p in &problems {
                    tracing::error!(problem = %p, "reload refused; still serving the previous configuration");
                }
                Err(problems)
            }
        }
    }
}

/// A move of the admin listener a reload asks for: where to, bound.
struct AdminMove(Option<(SocketAddr, StdListener)>);

impl Reloader {
    /// The admin listener `config` asks for when it is not the one in use,
    /// bound now: an address in use refuses the reload.
    fn prepare_admin(&self, config: &Config) -> Result<Option<AdminMove>, Vec<Problem>> {
        let wanted = config.server.admin_listen;
        let current = self.admin().as_ref().map(|a| a.written);
        if wanted == current {
            return Ok(None);
        }
        let Some(addr) = wanted else {
            return Ok(Some(AdminMove(None)));
        };
        match StdListener::bind(addr) {
            Ok(socket) => Ok(Some(AdminMove(Some((addr, socket))))),
            Err(error) => Err(vec![Problem {
                path: "server.admin_listen".into(),
                message: format!("cannot listen on {addr}: {error}"),
            }]),
        }
    }

    /// Closes the admin listener in use (its requests in progress finish)
    /// and serves the new one, if any.
    fn move_admin(self: &Arc<Self>, to: AdminMove) {
        if let Some(old) = self.admin().take() {
            tracing::info!(addr = %old.written, "admin listener closed by the reload");
        }
        if let Some((written, socket)) = to.0
            && let Err(error) = self.start_admin(written, socket)
        {
            tracing::error!(%error, "cannot serve the admin listener");
        }
    }
}

/// What a reload changes in the pools, in one line for the log: pools
/// added and removed, and per pool its policy, the backends added and
/// removed, those that start or stop draining, those whose weight changes
/// and its health checks turned on, off or changed. "no pool changes"
/// when none.
fn changes(old: &Config, new: &Config) -> String {
    let mut out = Vec::new();
    for pool in &new.pools {
        let Some(was) = old.pools.iter().find(|p| p.name == pool.name) else {
            out.push(format!("pool {} added", pool.name));
            continue;
        };
        // each backend as the previous file had it
        let before = |b: &Backend| was.backends.iter().find(|w| w.name == b.name);
        let names = |v: &[Backend], keep: &dyn Fn(&Backend) -> bool| {
            v.iter()
                .filter(|b| keep(b))
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = Vec::new();
        if was.policy != pool.policy {
            parts.push(format!(
                "policy {} -> {}",
                was.policy.name(),
                pool.policy.name()
            ));
        }
        match (&was.health.check, &pool.health.check) {
            (None, Some(_)) => parts.push("health checks on".to_string()),
            (Some(_), None) => parts.push("health checks off".to_string()),
            (Some(a), Some(b)) if a != b => parts.push("health checks changed".to_string()),
            _ => {}
        }
        let lists = [
            ("added", names(&pool.backends, &|b| before(b).is_none())),
            (
                "removed",
                names(&was.backends, &|w| {
                    !pool.backends.iter().any(|b| b.name == w.name)
                }),
            ),
            (
                "draining",
                names(&pool.backends, &|b| {
                    before(b).is_some_and(|w| b.drain && !w.drain)
                }),
            ),
            (
                "no longer draining",
                names(&pool.backends, &|b| {
                    before(b).is_some_and(|w| !b.drain && w.drain)
                }),
            ),
            (
                "weight changed",
                names(&pool.backends, &|b| {
                    before(b).is_some_and(|w| w.weight != b.weight)
                }),
            ),
        ];
        for (what, list) in lists {
            if !list.is_empty() {
                parts.push(format!("{what} {list}"));
            }
        }
        if !parts.is_empty() {
            out.push(format!("pool {}: {}", pool.name, parts.join("; ")));
        }
    }
    for pool in &old.pools {
        if !new.pools.iter().any(|p| p.name == pool.name) {
            out.push(format!("pool {} removed", pool.name));
        }
    }
    match out.is_empty() {
        true => "no pool changes".to_string(),
        false => out.join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pools: &str) -> Config {
        Config::parse(
            &format!(
                "[server]\nlisten = [\"127.0.0.1:0\"]\n\n{pools}\n[[routes]]\npool = \"web\"\n"
            ),
            std::path::Path::new("."),
        )
        .unwrap()
    }

    #[test]
    fn a_reload_says_what_it_changes_in_the_pools() {
        let old = parse(
            "[pools.web]\nbackends = [{ addr = \"127.0.0.1:9001\" }, { addr = \"127.0.0.1:9002\" }, { addr = \"127.0.0.1:9003\", drain = true }]\n\
             [pools.old]\nbackends = [{ addr = \"127.0.0.1:9010\" }]\n",
        );
        let new = parse(
            "[pools.web]\npolicy = \"least_conn\"\nbackends = [{ addr = \"127.0.0.1:9001\", weight = 3 }, { addr = \"127.0.0.1:9003\" }, { addr = \"127.0.0.1:9004\", drain = true }]\n\
             [pools.api]\nbackends = [{ addr = \"127.0.0.1:9020\" }]\n",
        );
        assert_eq!(
            changes(&old, &new),
            "pool api added; pool web: policy round_robin -> least_conn; added 127.0.0.1:9004; \
             removed 127.0.0.1:9002; no longer draining 127.0.0.1:9003; weight changed 127.0.0.1:9001; \
             pool old removed"
        );
        assert_eq!(changes(&new, &new), "no pool changes");
        let drained = parse(
            "[pools.web]\npolicy = \"least_conn\"\nbackends = [{ addr = \"127.0.0.1:9001\", weight = 3, drain = true }, { addr = \"127.0.0.1:9003\" }, { addr = \"127.0.0.1:9004\", drain = true }]\n[pools.api]\nbackends = [{ addr = \"127.0.0.1:9020\" }]\n",
        );
        assert_eq!(changes(&new, &drained), "pool web: draining 127.0.0.1:9001");
        let checked = parse(
            "[pools.web]\npolicy = \"least_conn\"\nbackends = [{ addr = \"127.0.0.1:9001\", weight = 3, drain = true }, { addr = \"127.0.0.1:9003\" }, { addr = \"127.0.0.1:9004\", drain = true }]\n[pools.web.health]\ncheck = { path = \"/healthz\" }\n[pools.api]\nbackends = [{ addr = \"127.0.0.1:9020\" }]\n",
        );
        assert_eq!(changes(&drained, &checked), "pool web: health checks on");
        assert_eq!(changes(&checked, &drained), "pool web: health checks off");
        let faster = parse(
            "[pools.web]\npolicy = \"least_conn\"\nbackends = [{ addr = \"127.0.0.1:9001\", weight = 3, drain = true }, { addr = \"127.0.0.1:9003\" }, { addr = \"127.0.0.1:9004\", drain = true }]\n[pools.web.health]\ncheck = { path = \"/healthz\", interval = \"1s\", timeout = \"500ms\" }\n[pools.api]\nbackends = [{ addr = \"127.0.0.1:9020\" }]\n",
        );
        assert_eq!(
            changes(&checked, &faster),
            "pool web: health checks changed"
        );
    }
}
