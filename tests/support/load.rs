//! Clients that send requests in a loop while a test changes the proxy
//! under them (reloads, upgrades, DNS), counting what succeeded and keeping
//! every failure.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use super::client::{self, HttpClient};
use super::{DEADLINE, eventually};

/// One `GET url`: the body of a 200 answer (a test backend's name), or
/// what went wrong.
pub async fn try_get(client: &HttpClient, url: &str) -> Result<String, String> {
    let req = hyper::Request::get(url)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(DEADLINE, client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e:?}"))?
        .to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    match status.as_u16() {
        200 => Ok(body),
        code => Err(format!("{code}: {body}")),
    }
}

/// New connections, keep-alive HTTP/1.1 and HTTP/2 clients, 10 in all.
pub fn mixed_clients() -> Vec<(&'static str, HttpClient)> {
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(("new connection per request", client::h1_fresh()));
    }
    for _ in 0..4 {
        clients.push(("keep-alive HTTP/1.1", client::h1()));
    }
    for _ in 0..2 {
        clients.push(("HTTP/2", client::h2()));
    }
    clients
}

pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    by_body: Arc<Mutex<HashMap<String, u64>>>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    pub fn start(url: &str, clients: Vec<(&'static str, HttpClient)>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let by_body: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let tasks = clients
            .into_iter()
            .map(|(kind, client)| {
                let (stop, ok, by_body) = (stop.clone(), ok.clone(), by_body.clone());
                let url = url.to_string();
                tokio::spawn(async move {
                    let mut failed = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        match try_get(&client, &url).await {
                            Ok(body) => {
                                *by_body.lock().unwrap().entry(body).or_default() += 1;
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failed.push(format!("{kind}: {e}")),
                        }
                    }
                    failed
                })
            })
            .collect();
        Load {
            stop,
            ok,
            by_body,
            tasks,
        }
    }

    /// Requests answered 200 so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Requests answered by each body (backend name) so far.
    pub fn answered_by(&self) -> HashMap<String, u64> {
        self.by_body.lock().unwrap().clone()
    }

    /// Waits until `n` more requests have succeeded.
    pub fn more(&self, n: u64) -> bool {
        let from = self.ok();
        eventually(DEADLINE, || self.ok() >= from + n)
    }

    /// Stops the clients; every failure they saw.
    pub async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut failed = Vec::new();
        for t in self.tasks {
            failed.extend(t.await.unwrap());
        }
        failed
    }
}
