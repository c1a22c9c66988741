//! A new TLS connection per request, for compare.py's `*_tls_handshake` and
//! `*_tls_resumed` rows (compare.py builds it: a manifest of its own under
//! target/bench-tls-connect, rustls with ring, offline, the versions of
//! the repository's Cargo.lock).
//!
//!   tls_connect full|resumed HOST:PORT SECONDS THREADS CAFILE
//!
//! Each of THREADS threads connects, handshakes TLS 1.3 (SNI localhost, the
//! certificate verified against CAFILE), sends `GET / HTTP/1.1` with
//! `Connection: close`, reads the response to the server's close, and
//! connects again, for SECONDS seconds.
//!
//!   full     no session is offered: every handshake is a full one
//!   resumed  every connection offers a ticket the thread's previous
//!            connection received (each thread its own rustls in-memory
//!            store), as a returning browser does; each thread's first
//!            connection is full. (One store shared by the threads holds
//!            8 tickets per server: with 50 threads and a server that
//!            sends one ticket per connection, half the connections found
//!            none.)
//!
//! wrk and h2load cannot be used for full handshakes: on a reconnect they
//! offer the previous connection's session, so `wrk -H "Connection: close"`
//! resumes (nginx logs $ssl_session_reused "r" for all but each wrk
//! connection's first). OpenSSL 3.0 as the client (openssl s_time, a C
//! client) costs more per full handshake than the nginx it measures
//! (about 1.1 ms of CPU against nginx's 0.75 ms), so on a 2-core machine
//! the client would set the rate.
//!
//! Prints, in the format of compare.py's wrk script, followed by the
//! handshakes the client saw and what was negotiated:
//!   RESULT <conn/s> <p50 us> <p99 us> <conns> <errors> <full> <resumed> <version> <suite> <group>
//! Latency is from connect to the response's end. Only connections whose
//! response began `HTTP/1.1 200` count; anything else is an error.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, RootCertStore, StreamOwned};

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

#[derive(Default)]
struct Counts {
    ok: u64,
    errors: u64,
    full: u64,
    resumed: u64,
    latency_us: Vec<u32>,
    negotiated: Option<String>,
}

fn one(config: &Arc<ClientConfig>, addr: &str, c: &mut Counts) -> std::io::Result<bool> {
    let sock = TcpStream::connect(addr)?;
    sock.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(config.clone(), name).map_err(std::io::Error::other)?;
    let mut tls = StreamOwned::new(conn, sock);
    tls.write_all(REQUEST)?;
    let mut response = Vec::with_capacity(2048);
    match tls.read_to_end(&mut response) {
        Ok(_) => {}
        // the server's FIN without a close_notify, after its response
        Err(e) if e.kind() == ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(e),
    }
    if !response.starts_with(b"HTTP/1.1 200") {
        return Ok(false);
    }
    match tls.conn.handshake_kind() {
        Some(HandshakeKind::Resumed) => c.resumed += 1,
        _ => c.full += 1,
    }
    if c.negotiated.is_none() {
        let group = tls.conn.negotiated_key_exchange_group();
        c.negotiated = Some(format!(
            "{:?} {:?} {}",
            tls.conn.protocol_version().unwrap(),
            tls.conn.negotiated_cipher_suite().unwrap().suite(),
            group.map_or("-".into(), |g| format!("{:?}", g.name())),
        ));
    }
    Ok(true)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 || !matches!(args[1].as_str(), "full" | "resumed") {
        eprintln!("usage: tls_connect full|resumed HOST:PORT SECONDS THREADS CAFILE");
        std::process::exit(2);
    }
    let seconds: f64 = args[3].parse().expect("SECONDS");
    let threads: usize = args[4].parse().expect("THREADS");
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&args[5]).expect("CAFILE") {
        roots.add(cert.expect("CAFILE")).expect("CAFILE");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let resume = args[1] == "resumed";
    if !resume {
        config.resumption = Resumption::disabled();
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let mut config = config.clone();
            if resume {
                config.resumption = Resumption::in_memory_sessions(8);
            }
            let (config, addr) = (Arc::new(config), args[2].clone());
            std::thread::spawn(move || {
                let mut c = Counts::default();
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    match one(&config, &addr, &mut c) {
                        Ok(true) => {
                            c.ok += 1;
                            c.latency_us.push(t0.elapsed().as_micros() as u32);
                        }
                        _ => {
                            c.errors += 1;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
                c
            })
        })
        .collect();
    let mut all = Counts::default();
    for w in workers {
        let c = w.join().unwrap();
        all.ok += c.ok;
        all.errors += c.errors;
        all.full += c.full;
        all.resumed += c.resumed;
        all.latency_us.extend(c.latency_us);
        all.negotiated = all.negotiated.or(c.negotiated);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let lat = &mut all.latency_us;
    lat.sort_unstable();
    let pct = |p: f64| if lat.is_empty() { 0 } else { lat[((lat.len() - 1) as f64 * p) as usize] };
    println!(
        "RESULT {:.1} {} {} {} {} {} {} {}",
        all.ok as f64 / elapsed,
        pct(0.5),
        pct(0.99),
        all.ok,
        all.errors,
        all.full,
        all.resumed,
        all.negotiated.as_deref().unwrap_or("- - -"),
    );
}
