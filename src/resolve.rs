//! Backends that follow DNS (`resolve = true`, nginx's `server ...
//! resolve`): each name is looked up every `resolve_interval`, and every
//! address it has is a backend, named `name/ip:port`. This is how `docker
//! compose up --scale app=N` or a headless Kubernetes service scale the
//! app with no change to the file.
//!
//! A change of addresses rebuilds the snapshot as a reload does: requests
//! in flight finish where they are, an address that goes has its idle
//! connections closed, and one that stays keeps its state, sticky tokens
//! and `ip_hash` placement (its name does not change). An answer is
//! believed, even an empty one (the name is gone, NXDOMAIN): its backends
//! go. A failed lookup (no answer, a server error) changes nothing.
//!
//! The lookups run on the main thread's event loop, once per process.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::time::Instant;

use crate::config::{self, Addresses, Config, DnsName};
use crate::runtime::Shared;

/// The longest a round of lookups may take before its answers are used
/// (those that did not come are tried again next time).
const LOOKUP_WITHIN: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("cannot set up the resolver: {0}")]
    Setup(NetError),
    #[error("{0}")]
    Failed(NetError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// The resolver, made for the `[resolver]` settings in effect.
pub struct Dns {
    current: Mutex<Option<(config::Resolver, Arc<TokioResolver>)>>,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            current: Mutex::new(None),
        }
    }
}

impl Dns {
    /// The resolver for `settings`: the one made before, or a new one when
    /// a reload changed them.
    fn resolver(&self, settings: &config::Resolver) -> Result<Arc<TokioResolver>, LookupError> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((made_for, resolver)) = current.as_ref()
            && made_for == settings
        {
            return Ok(resolver.clone());
        }
        let resolver = Arc::new(build(settings).map_err(LookupError::Setup)?);
        *current = Some((settings.clone(), resolver.clone()));
        Ok(resolver)
    }

    /// Looks up each of `names` at once, for at most [`LOOKUP_WITHIN`];
    /// the answers, and what failed.
    pub async fn lookup_all(
        &self,
        settings: &config::Resolver,
        names: &[DnsName],
    ) -> Result<(Addresses, Vec<(DnsName, LookupError)>), LookupError> {
        let mut answers = Addresses::new();
        let mut failed = Vec::new();
        let resolver = self.resolver(settings)?;
        let mut lookups = tokio::task::JoinSet::new();
        for name in names {
            let (resolver, name) = (resolver.clone(), name.clone());
            lookups.spawn(async move {
                let found = tokio::time::timeout(LOOKUP_WITHIN, lookup(&resolver, &name)).await;
                (
                    name,
                    found.unwrap_or(Err(LookupError::Timeout(LOOKUP_WITHIN))),
                )
            });
        }
        while let Some(done) = lookups.join_next().await {
            match done {
                Ok((name, Ok(addrs))) => {
                    answers.insert(name, addrs);
                }
                Ok((name, Err(error))) => failed.push((name, error)),
                Err(error) => tracing::error!(%error, "a backend name lookup stopped"),
            }
        }
        Ok((answers, failed))
    }

    /// Looks up the names of `config`'s backends that `known` has no
    /// addresses for yet: before start, and before a reload that adds
    /// some is applied, so that their first requests find them.
    pub async fn new_names(&self, config: &Config, known: &Addresses) -> Addresses {
        let names: Vec<DnsName> = names_of(config)
            .into_keys()
            .filter(|n| !known.contains_key(n))
            .collect();
        if names.is_empty() {
            return Addresses::new();
        }
        let (found, failed) = match self.lookup_all(&config.resolver, &names).await {
            Ok(done) => done,
            Err(error) => {
                tracing::error!(%error, "cannot look up backend names");
                return Addresses::new();
            }
        };
        for (name, error) in failed {
            tracing::warn!(name = %name, %error, "cannot look up a backend name yet; its backends come when it answers");
        }
        for (name, addrs) in &found {
            tracing::info!(name = %name, addresses = %list(addrs.iter()), "backend name looked up");
        }
        found
    }
}

/// The addresses `name` has now, sorted; none when DNS says it has none.
async fn lookup(
    resolver: &TokioResolver,
    name: &DnsName,
) -> Result<Arc<[SocketAddr]>, LookupError> {
    let mut answer: Vec<SocketAddr> = match resolver.lookup_ip(name.host.as_str()).await {
        Ok(found) => found
            .iter()
            .map(|ip| SocketAddr::new(ip, name.port))
            .collect(),
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => Vec::new(),
        Err(e) => return Err(LookupError::Failed(e)),
    };
    answer.sort();
    answer.dedup();
    Ok(answer.into())
}

/// Each name backends follow, with the shortest `resolve_interval` of the
/// pools that follow it.
fn names_of(config: &Config) -> HashMap<DnsName, Duration> {
    let mut every: HashMap<DnsName, Duration> = HashMap::new();
    for pool in &config.pools {
        for name in pool.dns_names() {
            every
                .entry(name.clone())
                .and_modify(|d| *d = (*d).min(pool.resolve_interval))
                .or_insert(pool.resolve_interval);
        }
    }
    every
}

fn build(settings: &config::Resolver) -> Result<TokioResolver, NetError> {
    let mut builder = match settings.nameservers.is_empty() {
        true => TokioResolver::builder_tokio()?,
        false => {
            let servers = settings
                .nameservers
                .iter()
                .map(|ns| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = ns.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = ns.port();
                    NameServerConfig::new(ns.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        }
    };
    let options = builder.options_mut();
    // every address, and fresh at every look: `resolve_interval` says how
    // often (as nginx's `resolver ... valid=`)
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.cache_size = 0;
    options.timeout = Duration::from_secs(2);
    builder.build()
}

/// Follows the names backends have for the life of the process: each is
/// looked up every `resolve_interval`, and the snapshot is rebuilt when
/// one's addresses change. Reloads add and remove names.
pub async fn run(dns: Arc<Dns>, shared: Arc<Shared>) {
    let mut swaps = shared.swaps();
    let mut due: HashMap<DnsName, Instant> = HashMap::new();
    let mut failing: HashSet<DnsName> = HashSet::new();
    let mut capped = Capped::new();
    loop {
        let config = shared.load().config.clone();
        let every = names_of(&config);
        due.retain(|name, _| every.contains_key(name));
        failing.retain(|name| every.contains_key(name));
        shared.forget_names(&config);
        // after a reload or a change of addresses, which both come here
        report_capped(&config, &shared.addresses(), &mut capped);
        let now = Instant::now();
        let ready: Vec<DnsName> = every
            .keys()
            .filter(|n| due.get(*n).is_none_or(|&at| at <= now))
            .cloned()
            .collect();
        if !ready.is_empty() {
            let (found, failed) = match dns.lookup_all(&config.resolver, &ready).await {
                Ok(done) => done,
                Err(error) => {
                    tracing::error!(%error, "cannot look up backend names");
                    (Addresses::new(), Vec::new())
                }
            };
            let looked = Instant::now();
            for name in &ready {
                due.insert(name.clone(), looked + every[name]);
            }
            for (name, error) in failed {
                if failing.insert(name.clone()) {
                    tracing::warn!(name = %name, %error, "cannot look up a backend name; its backends stay as they were");
                }
            }
            let known = shared.addresses();
            let mut changed = Addresses::new();
            for (name, addrs) in found {
                if failing.remove(&name) {
                    tracing::info!(name = %name, "backend name answers again");
                }
                let before = known.get(&name).map_or(&[][..], |a| a);
                if *before != *addrs {
                    changed.insert(name, addrs);
                }
            }
            if !changed.is_empty() {
                shared.follow_dns(changed.clone());
                // said once the snapshot has them
                for (name, addrs) in &changed {
                    let before = known.get(name).map_or(&[][..], |a| a);
                    let added = addrs.iter().filter(|a| !before.contains(a));
                    let removed = before.iter().filter(|a| !addrs.contains(a));
                    tracing::info!(
                        name = %name,
                        added = %list(added),
                        removed = %list(removed),
                        now = %list(addrs.iter()),
                        "backends follow DNS"
                    );
                }
            }
        }
        let next = due.values().min().copied();
        tokio::select! {
            // a reload: names may have come or gone
            changed = swaps.changed() => if changed.is_err() { return },
            () = sleep_until(next) => {}
        }
    }
}

/// What was said of each pool and name whose addresses are over the
/// pool's `max_addresses`: how many there were and how many were left out.
type Capped = HashMap<(String, DnsName), (usize, usize)>;

/// Warns once for each pool and name that has more addresses than the
/// pool's `max_addresses`, and again only when that changes (the count of
/// addresses or of those left out): the snapshot places the first ones,
/// sorted, and leaves the others out without a word.
fn report_capped(config: &Config, known: &Addresses, said: &mut Capped) {
    let mut now = Capped::new();
    for pool in &config.pools {
        for name in pool.dns_names() {
            let found = known.get(name).map_or(0, |a| a.len());
            if found > pool.max_addresses {
                let dropped = found - pool.max_addresses;
                let key = (pool.name.clone(), name.clone());
                if said.get(&key) != Some(&(found, dropped)) {
                    tracing::warn!(
                        pool = %pool.name,
                        name = %name,
                        found,
                        dropped,
                        max_addresses = pool.max_addresses,
                        "a backend name has more addresses than max_addresses: the first ones (sorted) are backends, the rest get no traffic"
                    );
                }
                now.insert(key, (found, dropped));
            }
        }
    }
    *said = now;
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Addresses for the log: `a, b`, or `none`.
fn list<'a>(addrs: impl IntoIterator<Item = &'a SocketAddr>) -> String {
    let all: Vec<String> = addrs.into_iter().map(|a| a.to_string()).collect();
    match all.is_empty() {
        true => "none".into(),
        false => all.join(", "),
    }
}
