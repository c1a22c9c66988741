//! Which pool serves a request: exact host (case-insensitive, port
//! ignored), then the longest `path_prefix`. A host with routes of its own
//! whose prefixes all miss falls back to the routes without a host.

use crate::config;

#[derive(Debug, Default)]
pub struct Router {
    /// Lower-case host name and its prefixes.
    hosts: Vec<(Box<str>, Prefixes)>,
    any_host: Prefixes,
}

/// Prefixes sorted longest first, each with its pool index.
#[derive(Debug, Default)]
struct Prefixes(Vec<(Box<str>, usize)>);

impl Prefixes {
    fn add(&mut self, prefix: &str, pool: usize) {
        self.0.push((prefix.into(), pool));
        self.0
            .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
    }

    fn find(&self, path: &str) -> Option<usize> {
        self.0
            .iter()
            .find(|(p, _)| path.starts_with(&**p))
            .map(|&(_, pool)| pool)
    }
}

impl Router {
    /// `pool_index` maps a pool name to its index in the snapshot.
    pub fn build(cfg: &config::Config, pool_index: impl Fn(&str) -> usize) -> Router {
        let mut r = Router::default();
        if cfg.routes.is_empty() {
            r.any_host.add("/", 0);
        }
        for route in &cfg.routes {
            let pool = pool_index(&route.pool);
            let table = match &route.host {
                None => &mut r.any_host,
                Some(h) => match r.hosts.iter().position(|(name, _)| **name == **h) {
                    Some(i) => &mut r.hosts[i].1,
                    None => {
                        r.hosts.push((h.as_str().into(), Prefixes::default()));
                        &mut r.hosts.last_mut().expect("just pushed").1
                    }
                },
            };
            table.add(&route.path_prefix, pool);
        }
        r
    }

    /// The pool for a request to `host` (as sent, maybe with a port) and
    /// `path`. A configuration without host routes does not look at the
    /// host at all.
    pub fn route(&self, host: Option<&[u8]>, path: &str) -> Option<usize> {
        if !self.hosts.is_empty()
            && let Some(host) = host.map(strip_port)
            && let Some((_, table)) = self
                .hosts
                .iter()
                .find(|(h, _)| h.as_bytes().eq_ignore_ascii_case(host))
            && let Some(pool) = table.find(path)
        {
            return Some(pool);
        }
        self.any_host.find(path)
    }
}

/// `example.com:8080` -> `example.com`, `[::1]:8080` -> `[::1]`.
fn strip_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return match memchr::memchr(b']', host) {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match memchr::memrchr(b':', host) {
        Some(colon) if host[colon + 1..].iter().all(u8::is_ascii_digit) => &host[..colon],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn router(routes: &str) -> Router {
        let text = format!(
            r#"
            [server]
            listen = ["127.0.0.1:0"]
            [pools.a]
            backends = [{{ addr = "127.0.0.1:1" }}]
            [pools.b]
            backends = [{{ addr = "127.0.0.1:2" }}]
            [pools.c]
            backends = [{{ addr = "127.0.0.1:3" }}]
            {routes}
            "#
        );
        let cfg = config::Config::parse(&text, Path::new(".")).unwrap();
        Router::build(&cfg, |name| {
            cfg.pools.iter().position(|p| p.name == name).unwrap()
        })
    }

    #[test]
    fn host_then_longest_prefix() {
        let r = router(
            r#"
            [[routes]]
            path_prefix = "/"
            pool = "a"
            [[routes]]
            path_prefix = "/api"
            pool = "b"
            [[routes]]
            host = "Shop.Example.com"
            path_prefix = "/"
            pool = "c"
            [[routes]]
            host = "shop.example.com"
            path_prefix = "/api/v2"
            pool = "b"
            "#,
        );
        assert_eq!(r.route(Some(b"other"), "/"), Some(0));
        assert_eq!(r.route(None, "/api/x"), Some(1));
        assert_eq!(r.route(Some(b"SHOP.example.COM:8443"), "/x"), Some(2));
        assert_eq!(r.route(Some(b"shop.example.com"), "/api/v2/y"), Some(1));
        assert_eq!(r.route(Some(b"shop.example.com"), "/api/v1"), Some(2));
    }

    #[test]
    fn unmatched_host_prefix_falls_back_then_misses() {
        let r = router(
            r#"
            [[routes]]
            host = "a.test"
            path_prefix = "/a"
            pool = "a"
            [[routes]]
            path_prefix = "/b"
            pool = "b"
            "#,
        );
        assert_eq!(r.route(Some(b"a.test"), "/b"), Some(1));
        assert_eq!(r.route(Some(b"a.test"), "/c"), None);
        assert_eq!(r.route(Some(b"[::1]:80"), "/b"), Some(1));
    }

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port(b"example.com:8080"), b"example.com");
        assert_eq!(strip_port(b"example.com"), b"example.com");
        assert_eq!(strip_port(b"[::1]:8080"), b"[::1]");
    }
}
