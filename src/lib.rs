//! sessionlb: a session-aware HTTP reverse proxy and load balancer.
//!
//! `config` reads and validates the TOML file; `runtime` compiles it into
//! the snapshot the request path reads; `server` owns listeners, workers
//! and client connections; `proxy` forwards one request; `balance` holds
//! pools, policies and backend health; `health` runs the active checks
//! that feed it.

pub mod access_log;
pub mod admin;
pub mod balance;
pub mod clock;
pub mod config;
pub mod cookie;
pub mod demo;
/// Fuzz targets and their invariants, for the `fuzz/` crate and for
/// `tests/fuzz_corpus.rs`, which replays the kept corpus on stable: public
/// only so that those can call them.
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod histogram;
pub mod proxy;
pub mod reload;
pub mod resolve;
pub mod runtime;
pub mod server;
pub mod session;
pub mod upgrade;
