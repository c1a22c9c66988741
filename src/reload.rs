//! Configuration reload (SIGHUP, `POST /admin/reload`): parse and validate
//! first; on any problem keep serving the old configuration and say why; on
//! success swap the snapshot whole. Requests in flight finish on the
//! snapshot they started with.

use std::path::Path;
use std::sync::atomic::Ordering;

use crate::config::{Config, Problem};
use crate::runtime::Shared;

/// Reloads `path`; returns the new generation or every problem found.
pub fn reload(shared: &Shared, path: &Path) -> Result<u64, Vec<Problem>> {
    let result = Config::load(path)
        .map_err(|e| e.problems())
        .and_then(|config| {
            let unsupported = config.unsupported();
            if unsupported.is_empty() {
                Ok(config)
            } else {
                Err(unsupported)
            }
        });
    match result {
        Ok(config) => {
            for w in &config.warnings {
                tracing::warn!(problem = %w, "configuration warning");
            }
            let old = shared.load().config.clone();
            let tls_listen = |c: &Config| c.server.tls.iter().map(|t| t.listen).collect::<Vec<_>>();
            if old.server.listen != config.server.listen
                || tls_listen(&old) != tls_listen(&config)
                || old.server.workers != config.server.workers
                || old.server.admin_listen != config.server.admin_listen
            {
                tracing::warn!(
                    "changes to server.listen, the server.tls listen addresses, server.workers and server.admin_listen take effect at the next restart; certificates are reloaded"
                );
            }
            let generation = shared.swap(config);
            shared.reloads_ok.fetch_add(1, Ordering::Relaxed);
            tracing::info!(generation, "configuration reloaded");
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
