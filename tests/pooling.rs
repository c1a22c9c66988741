//! Pooled backend connections never carry bytes from one exchange into
//! another: a backend that writes after its response (an unsolicited
//! second response, a body on a 204 or on an answer to HEAD) a little
//! later must not hand one client's answer to the next.
//!
//! The backend here writes its late bytes `delay` after each response,
//! while no request is in flight (a gate that clients hold for the
//! duration of each request and the late writer takes alone): the bytes
//! always land on a connection that sits idle in the proxy's pool, which is
//! where they did harm. The late writer then keeps the gate until the
//! proxy has closed that connection, which it must do the moment the bytes
//! arrive: loopback delivery may lag behind the write, so without this a
//! client's next request could overtake them. Late bytes racing a request
//! that is already on the connection cannot be told from its answer by
//! any proxy.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use support::client::{self, HttpClient};
use support::{Proxy, config, entry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, RwLock, oneshot};

/// What the backend answers and what it writes `delay` later.
#[derive(Clone, Copy)]
enum Misbehaviour {
    /// `200` with the request's id, then a whole second response.
    UnsolicitedResponse,
    /// `204` with the id in a header, then a body.
    BodyAfter204,
    /// An answer to HEAD announcing 5 bytes, then those 5 bytes.
    BodyAfterHead,
}

/// How long the proxy may take to close a connection that became
/// readable while idle.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Counts {
    /// Late writes done so far.
    late: std::sync::atomic::AtomicU64,
    /// Connections the proxy kept open with late bytes unread.
    kept: std::sync::atomic::AtomicU64,
}

struct LateBackend {
    addr: SocketAddr,
    counts: Arc<Counts>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LateBackend {
    fn start(how: Misbehaviour, delay: Duration, gate: Arc<RwLock<()>>) -> LateBackend {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let (stop, stopped) = oneshot::channel();
        let counter = counts.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                let serve = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        tokio::spawn(serve(stream, how, delay, gate.clone(), counter.clone()));
                    }
                };
                tokio::select! {
                    _ = stopped => {}
                    () = serve => {}
                }
            });
        });
        LateBackend {
            addr,
            counts,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for LateBackend {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One backend connection: answers each request head at once and, `delay`
/// after each answer, writes late bytes while no request is in flight,
/// then waits for the proxy to close the connection.
async fn serve(
    stream: tokio::net::TcpStream,
    how: Misbehaviour,
    delay: Duration,
    gate: Arc<RwLock<()>>,
    counts: Arc<Counts>,
) {
    let (mut rd, wr) = stream.into_split();
    let wr = Arc::new(Mutex::new(wr));
    let (closed_tx, closed) = tokio::sync::watch::channel(false);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    let _ = closed_tx.send(true);
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        // `GET /r/<id> HTTP/1.1`
        let id = head
            .split_whitespace()
            .nth(1)
            .and_then(|t| t.strip_prefix("/r/"))
            .unwrap_or("?")
            .to_string();
        let (answer, extra) = match how {
            Misbehaviour::UnsolicitedResponse => (
                format!(
                    "HTTP/1.1 200 OK\r\nX-Id: {id}\r\nContent-Length: {}\r\n\r\n{id}",
                    id.len()
                ),
                "HTTP/1.1 200 OK\r\nX-Id: injected\r\nContent-Length: 8\r\n\r\ninjected"
                    .to_string(),
            ),
            Misbehaviour::BodyAfter204 => (
                format!("HTTP/1.1 204 No Content\r\nX-Id: {id}\r\n\r\n"),
                format!("late body of {id}"),
            ),
            Misbehaviour::BodyAfterHead => (
                format!("HTTP/1.1 200 OK\r\nX-Id: {id}\r\nContent-Length: 5\r\n\r\n"),
                "hello".to_string(),
            ),
        };
        if wr.lock().await.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        let (wr, gate, counts) = (wr.clone(), gate.clone(), counts.clone());
        let mut closed = closed.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _alone = gate.write().await;
            if *closed.borrow() {
                return;
            }
            if wr.lock().await.write_all(extra.as_bytes()).await.is_err() {
                return; // the proxy closed it meanwhile
            }
            counts
                .late
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let close = closed.wait_for(|closed| *closed);
            if tokio::time::timeout(CLOSE_WITHIN, close).await.is_err() {
                counts
                    .kept
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
    }
}

/// Late writes each run waits for: the misbehaviour must really happen,
/// on connections the pool holds, however fast the requests go.
const LATE_WRITES: u64 = 20;

/// `clients` clients send at least `each` requests apiece, concurrently,
/// and go on until the backend has written late bytes `LATE_WRITES` times,
/// each client holding the gate while its request is in flight; every
/// answer must be the client's own.
async fn every_client_gets_its_own_answer(how: Misbehaviour, delay: Duration, each: usize) {
    let gate = Arc::new(RwLock::new(()));
    let backend = LateBackend::start(how, delay, gate.clone());
    let proxy = Proxy::start_with_env(
        &config(
            "round_robin",
            &[entry(backend.addr)],
            "[pools.web.health]\nmax_fails = 0\n[log]\naccess_log = true\n",
        ),
        &[("RUST_LOG", "sessionlb=debug")],
    );
    let clients = 4;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let gate = gate.clone();
        let counts = backend.counts.clone();
        let base = proxy.url("/r/");
        tasks.push(tokio::spawn(async move {
            let http: HttpClient = client::h1();
            let mut wrong = Vec::new();
            let mut n = 0;
            while n < each || counts.late.load(std::sync::atomic::Ordering::SeqCst) < LATE_WRITES {
                n += 1;
                let id = format!("c{c}-{n}");
                let method = match how {
                    Misbehaviour::BodyAfterHead => hyper::Method::HEAD,
                    _ => hyper::Method::GET,
                };
                let req = Request::builder()
                    .method(method)
                    .uri(format!("{base}{id}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let _in_flight = gate.read().await;
                let r = client::send(&http, req).await;
                let got = r
                    .headers
                    .get("x-id")
                    .map(|v| v.to_str().unwrap().to_string());
                let body_ok = match how {
                    Misbehaviour::UnsolicitedResponse => r.body == id,
                    _ => r.body.is_empty(),
                };
                let status_ok = match how {
                    Misbehaviour::BodyAfter204 => r.status == 204,
                    _ => r.status == 200,
                };
                if got.as_deref() != Some(id.as_str()) || !body_ok || !status_ok {
                    wrong.push(format!("{id} got {} {:?} {:?}", r.status, got, r.body));
                }
            }
            (wrong, n)
        }));
    }
    let (mut wrong, mut sent) = (Vec::new(), 0);
    for t in tasks {
        let (w, n) = t.await.unwrap();
        wrong.extend(w);
        sent += n;
    }
    if !wrong.is_empty() {
        for l in proxy.stderr.all() {
            eprintln!("{l}");
        }
        for l in proxy.stdout.all() {
            eprintln!("{l}");
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {sent} answers went to the wrong client: {wrong:#?}",
        wrong.len()
    );
    let kept = backend
        .counts
        .kept
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        kept, 0,
        "the proxy kept {kept} idle connections open for {CLOSE_WITHIN:?} after late bytes arrived"
    );
}

#[tokio::test]
async fn an_unsolicited_response_10ms_late_reaches_no_client() {
    every_client_gets_its_own_answer(
        Misbehaviour::UnsolicitedResponse,
        Duration::from_millis(10),
        75,
    )
    .await;
}

#[tokio::test]
async fn an_unsolicited_response_150ms_late_reaches_no_client() {
    every_client_gets_its_own_answer(
        Misbehaviour::UnsolicitedResponse,
        Duration::from_millis(150),
        75,
    )
    .await;
}

#[tokio::test]
async fn an_unsolicited_response_900ms_late_reaches_no_client() {
    every_client_gets_its_own_answer(
        Misbehaviour::UnsolicitedResponse,
        Duration::from_millis(900),
        50,
    )
    .await;
}

#[tokio::test]
async fn a_late_body_after_204_breaks_no_other_request() {
    for ms in [10, 150] {
        every_client_gets_its_own_answer(Misbehaviour::BodyAfter204, Duration::from_millis(ms), 50)
            .await;
    }
}

#[tokio::test]
async fn a_late_body_after_an_answer_to_head_breaks_no_other_request() {
    for ms in [10, 150] {
        every_client_gets_its_own_answer(
            Misbehaviour::BodyAfterHead,
            Duration::from_millis(ms),
            50,
        )
        .await;
    }
}
