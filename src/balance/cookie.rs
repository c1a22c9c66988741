//! `cookie`: sticky sessions by a route cookie, as HAProxy's `cookie ...
//! insert` (or `prefix`), with failover.
//!
//! A backend's token is an HMAC-SHA256 of its identity (its `id`, or its
//! address as written) under `sticky.secret`: opaque, never the address,
//! the same across restarts and across instances with the same
//! configuration, and it names its backend rather than a position, so
//! adding or removing other backends never moves a pinned client. A token
//! that matches no backend is treated as no cookie at all.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;

use super::round_robin::RoundRobin;
use super::{Candidates, Outcome, Pick, Policy, Target};
use crate::config;

/// The key when `sticky.secret` is not set: tokens are still opaque and
/// stable, but anyone who knows a backend's identity can compute its token.
const DEFAULT_KEY: &[u8] = b"sessionlb route token v1";

/// Tokens and cookies of one pool's backends.
#[derive(Debug)]
pub struct StickyRoutes {
    /// The route cookie (insert mode).
    pub cookie: String,
    /// Prefix mode: the app's session cookie that carries `<token>~`.
    pub prefix: Option<String>,
    tokens: Box<[Box<str>]>,
    by_token: HashMap<Box<str>, usize>,
    set_cookie: Box<[HeaderValue]>,
    set_cookie_secure: Box<[HeaderValue]>,
}

/// 96 bits of HMAC-SHA256 over the backend identity, base64url.
pub fn route_token(secret: Option<&str>, identity: &str) -> String {
    let key = secret.map_or(DEFAULT_KEY, str::as_bytes);
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    let digest = aws_lc_rs::hmac::sign(&key, identity.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12])
}

impl StickyRoutes {
    pub fn new(cfg: config::Sticky, ids: &[&str]) -> Self {
        let tokens: Box<[Box<str>]> = ids
            .iter()
            .map(|id| route_token(cfg.secret.as_deref(), id).into_boxed_str())
            .collect();
        let by_token = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i))
            .collect();
        let cookie_for = |token: &str, secure: bool| {
            let mut v = format!("{}={token}; Path={}", cfg.cookie, cfg.path);
            if let Some(domain) = &cfg.domain {
                v.push_str(&format!("; Domain={domain}"));
            }
            if let Some(age) = cfg.max_age {
                v.push_str(&format!("; Max-Age={}", age.as_secs()));
            }
            v.push_str("; HttpOnly; SameSite=Lax");
            if secure {
                v.push_str("; Secure");
            }
            HeaderValue::try_from(v).unwrap_or_else(|_| HeaderValue::from_static(""))
        };
        StickyRoutes {
            set_cookie: tokens.iter().map(|t| cookie_for(t, false)).collect(),
            set_cookie_secure: tokens.iter().map(|t| cookie_for(t, true)).collect(),
            tokens,
            by_token,
            cookie: cfg.cookie,
            prefix: cfg.prefix,
        }
    }

    pub fn token(&self, i: usize) -> &str {
        &self.tokens[i]
    }

    /// The backend a route token names. Takes the cookie's bytes as they
    /// came: tokens are ASCII, so no UTF-8 check is needed to compare them.
    pub fn backend_for(&self, token: &[u8]) -> Option<usize> {
        if self.tokens.len() <= 16 {
            // a few 16-byte compares beat hashing the token
            return self.tokens.iter().position(|t| t.as_bytes() == token);
        }
        let token = std::str::from_utf8(token).ok()?;
        self.by_token.get(token).copied()
    }

    /// The `Set-Cookie` value that pins a client to backend `i`.
    pub fn set_cookie(&self, i: usize, secure: bool) -> &HeaderValue {
        if secure {
            &self.set_cookie_secure[i]
        } else {
            &self.set_cookie[i]
        }
    }
}

/// The request path resolves the client's token to a backend
/// (`StickyRoutes::backend_for`) before asking; the policy follows the pin
/// when it can and places anew by round robin when it cannot.
#[derive(Debug)]
pub struct CookiePolicy {
    rr: RoundRobin,
}

impl CookiePolicy {
    pub fn new(weights: &[u32]) -> Self {
        CookiePolicy {
            rr: RoundRobin::new(weights),
        }
    }
}

impl Policy for CookiePolicy {
    fn pick(&self, target: &Target, c: &Candidates<'_>) -> Option<Pick> {
        let pinned = target.pinned;
        if let Some(i) = pinned
            && c.pinnable(i)
        {
            return Some(Pick {
                index: i,
                outcome: Outcome::Hit,
            });
        }
        let outcome = if pinned.is_some() {
            Outcome::Redispatch
        } else {
            Outcome::New
        };
        self.rr.next(c).map(|index| Pick { index, outcome })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::Tried;
    use crate::balance::test_util::pool_with_ids;
    use crate::config::PolicyKind;
    use std::net::IpAddr;

    #[test]
    fn tokens_are_opaque_stable_and_keyed() {
        let t = route_token(None, "10.0.0.1:8080");
        assert_eq!(t.len(), 16);
        assert!(!t.contains("10.0.0.1"));
        assert_eq!(t, route_token(None, "10.0.0.1:8080"));
        assert_ne!(t, route_token(None, "10.0.0.2:8080"));
        assert_ne!(t, route_token(Some("s3cret"), "10.0.0.1:8080"));
        // pinned so that tokens never change between versions
        assert_eq!(
            route_token(Some("peers-bench-secret"), "127.0.0.1:18081"),
            GOLDEN_TOKEN
        );
    }

    const GOLDEN_TOKEN: &str = "5Qd1UluksAyZleyx";

    #[test]
    fn set_cookie_bytes() {
        let cfg = config::Sticky {
            max_age: Some(std::time::Duration::from_secs(3600)),
            domain: Some("example.com".into()),
            ..config::Sticky::default()
        };
        let r = StickyRoutes::new(cfg, &["a"]);
        let t = r.token(0).to_string();
        assert_eq!(
            r.set_cookie(0, false),
            &format!(
                "slb_route={t}; Path=/; Domain=example.com; Max-Age=3600; HttpOnly; SameSite=Lax"
            )
        );
        assert!(
            r.set_cookie(0, true)
                .to_str()
                .unwrap()
                .ends_with("; HttpOnly; SameSite=Lax; Secure")
        );
    }

    #[test]
    fn follows_pins_places_new_and_redispatches() {
        let p = pool_with_ids(PolicyKind::Cookie, &["a", "b", "c"]);
        let routes = p.sticky.clone().unwrap();
        let client = IpAddr::from([192, 0, 2, 1]);
        let pinned = Target {
            client,
            pinned: routes.backend_for(routes.token(1).as_bytes()),
        };
        for _ in 0..10 {
            assert_eq!(
                p.select(&pinned, &Tried::default()),
                Some(Pick {
                    index: 1,
                    outcome: Outcome::Hit
                })
            );
        }
        let forged = Target {
            client,
            pinned: routes.backend_for(b"forged-token"),
        };
        let picks: Vec<Pick> = (0..3)
            .map(|_| p.select(&forged, &Tried::default()).unwrap())
            .collect();
        assert!(picks.iter().all(|p| p.outcome == Outcome::New));
        let mut seen: Vec<usize> = picks.iter().map(|p| p.index).collect();
        seen.sort();
        assert_eq!(seen, [0, 1, 2]);
        let mut tried = Tried::default();
        tried.insert(1);
        let pick = p.select(&pinned, &tried).unwrap();
        assert_ne!(pick.index, 1);
        assert_eq!(pick.outcome, Outcome::Redispatch);
    }
}
