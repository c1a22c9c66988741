//! The TOML file exactly as written, before any meaning is given to it.
//!
//! Every field that needs interpretation (durations, addresses, enums, names)
//! is kept as the raw TOML value here, so that validation can report every
//! problem at once with its path instead of stopping at the first.
//! Structure errors (unknown keys, a string where a table belongs) are
//! reported by serde, also with their path.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub server: ServerSection,
    pub timeouts: TimeoutsSection,
    pub pools: BTreeMap<String, PoolSection>,
    pub store: Option<StoreSection>,
    pub routes: Vec<RouteSection>,
    pub log: LogSection,
    pub resolver: Option<ResolverSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResolverSection {
    pub nameservers: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub listen: Vec<String>,
    pub admin_listen: Option<String>,
    pub admin_token: Option<String>,
    pub admin_hosts: Vec<String>,
    pub trusted_proxies: Vec<String>,
    pub shutdown_timeout: Option<String>,
    pub workers: Option<i64>,
    pub max_connections: Option<i64>,
    pub upgrade_protocols: Option<Vec<String>>,
    pub tls: Vec<TlsSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub listen: String,
    #[serde(default)]
    pub certificates: Vec<CertificateSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSection {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsSection {
    pub connect: Option<String>,
    pub request_header: Option<String>,
    pub response_header: Option<String>,
    pub backend_io: Option<String>,
    pub client_io: Option<String>,
    pub tunnel_idle: Option<String>,
    pub idle: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    pub policy: Option<String>,
    #[serde(default)]
    pub backends: Vec<BackendSection>,
    pub max_body: Option<String>,
    pub tls: Option<bool>,
    pub ca: Option<String>,
    pub insecure_skip_verify: Option<bool>,
    pub resolve_interval: Option<String>,
    pub max_addresses: Option<i64>,
    pub health: Option<HealthSection>,
    pub sticky: Option<StickySection>,
    pub session: Option<SessionSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSection {
    pub addr: String,
    pub id: Option<String>,
    pub weight: Option<i64>,
    #[serde(default)]
    pub drain: bool,
    #[serde(default)]
    pub resolve: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSection {
    pub max_fails: Option<i64>,
    pub fail_timeout: Option<String>,
    pub check: Option<CheckSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckSection {
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<i64>,
    pub fall: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StickySection {
    pub cookie: Option<String>,
    pub secret: Option<String>,
    pub prefix: Option<String>,
    pub max_age: Option<String>,
    pub domain: Option<String>,
    pub path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionSection {
    pub carrier: Option<String>,
    pub app_cookie: Option<OneOrMany>,
    pub cookie: Option<String>,
    pub header: Option<String>,
    pub update_header: Option<String>,
    pub path: Option<String>,
    pub idle_timeout: Option<String>,
    pub first_idle_timeout: Option<String>,
    pub rotation_grace: Option<String>,
    pub max_new_sessions_per_client: Option<i64>,
    pub scope: Option<String>,
    pub absolute_timeout: Option<String>,
    pub on_store_error: Option<String>,
    pub encrypt: Option<bool>,
    pub max_blob_bytes: Option<i64>,
}

/// `app_cookie = "session"` or `app_cookie = ["session", "session.sig"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    pub kind: Option<String>,
    pub url: Option<String>,
    pub key_prefix: Option<String>,
    pub timeout: Option<String>,
    pub max_size: Option<String>,
    pub secret: Option<String>,
    pub sentinel: Option<SentinelSection>,
    pub cluster: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelSection {
    pub master: String,
    #[serde(default)]
    pub nodes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub pool: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub level: Option<String>,
    pub access_log: Option<bool>,
    pub access_format: Option<String>,
}
