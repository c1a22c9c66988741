//! A tiny DNS server on loopback whose answers a test sets: `A` records
//! for the names it knows (TTL 0), NXDOMAIN for the others, and no
//! records for any other type. Enough for a resolver to follow a name as
//! a test scales it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct DnsServer {
    pub addr: SocketAddr,
    names: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>,
    queries: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DnsServer {
    pub fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let names: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>> = Arc::default();
        let queries = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (names, queries, stop) = (names.clone(), queries.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    queries.fetch_add(1, Ordering::Relaxed);
                    let known = names.lock().unwrap().clone();
                    if let Some(reply) = answer(&buf[..n], &known) {
                        let _ = socket.send_to(&reply, from);
                    }
                }
            })
        };
        DnsServer {
            addr,
            names,
            queries,
            stop,
            thread: Some(thread),
        }
    }

    /// From now on `name` has these addresses (none: no records).
    pub fn set(&self, name: &str, ips: &[Ipv4Addr]) {
        self.names
            .lock()
            .unwrap()
            .insert(name.to_ascii_lowercase(), ips.to_vec());
    }

    /// From now on `name` does not exist (NXDOMAIN).
    pub fn remove(&self, name: &str) {
        self.names
            .lock()
            .unwrap()
            .remove(&name.to_ascii_lowercase());
    }

    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The reply to one query, or `None` for what is not a query.
fn answer(q: &[u8], names: &HashMap<String, Vec<Ipv4Addr>>) -> Option<Vec<u8>> {
    if q.len() < 12 || q[2] & 0x80 != 0 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    // the question: labels, then type and class
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(q.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*q.get(at)?, *q.get(at + 1)?]);
    let question = q.get(12..at + 4)?;
    let name = labels.join(".");
    let (rcode, ips) = match names.get(&name) {
        None => (3u8, &[][..]),
        Some(ips) if qtype == 1 => (0, &ips[..]),
        Some(_) => (0, &[][..]),
    };
    let mut r = Vec::with_capacity(512);
    r.extend_from_slice(&q[0..2]);
    // a response, recursion desired (as asked) and available
    r.push(0x80 | (q[2] & 0x01));
    r.push(0x80 | rcode);
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&(ips.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(question);
    for ip in ips {
        // the name, as a pointer to the question's
        r.extend_from_slice(&[0xc0, 12]);
        r.extend_from_slice(&1u16.to_be_bytes()); // A
        r.extend_from_slice(&1u16.to_be_bytes()); // IN
        r.extend_from_slice(&0u32.to_be_bytes()); // TTL
        r.extend_from_slice(&4u16.to_be_bytes());
        r.extend_from_slice(&ip.octets());
    }
    Some(r)
}
