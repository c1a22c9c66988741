//! A client never smuggles its own app cookie, or a ticket, past the
//! shared-store mode's strip, whatever cookie parser the backend runs.
//!
//! The real proxy, a session pool (`app_cookie = ["session",
//! "session.sig"]`, ticket `slb_sid`, memory store) in front of a raw
//! backend that records the `Cookie` lines it receives byte for byte; raw
//! clients send hostile `Cookie` fields (white space and control bytes
//! around names, other cases, quotes, `$Version`, commas, fields over
//! several lines, with and without a valid ticket). What reached the backend
//! is read by the real parsers of the frameworks (`tests/parsers/`, one
//! process each, installed by `scripts/test`): Werkzeug (what Flask's
//! `request.cookies` is; the last release that strips Unicode white space
//! and the newest), Django, Python's `http.cookies`, Node's `cookie`
//! (through Express's cookie-parser, and the newest of each major), and
//! with `scripts/test --slow` Go's net/http, Rack and Tomcat 9 and 10.
//! None may read a cookie named like an app cookie (any case) but the one
//! the proxy put there, nor one named like the ticket; the cookies that are
//! nobody's arrive byte for byte.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use support::raw::{self, RawBackend, RawRequest, Reply, Seen};
use support::{DEADLINE, Lines, Proxy, config};

const TICKET: &str = "slb_sid";
/// The app's cookies, as the app set them at `/login`: the proxy stores
/// them and puts them back in the ticket's place.
const APP: [(&str, &str); 2] = [
    ("session", "eyJ1c2VyIjoiYWxpY2UifQ.aGVsbG8.REAL"),
    ("session.sig", "SIGREAL"),
];

/// Set by `scripts/test --slow`, which installs Go, Rack and Tomcat.
const SLOW: &str = "SESSIONLB_TEST_SLOW_PARSERS";

/// One way a framework reads a request's `Cookie` fields.
#[derive(Debug)]
struct Reading {
    how: String,
    cookies: Vec<(String, Option<String>)>,
    error: Option<String>,
}

/// One of `tests/parsers/`, running: a line of `Cookie` fields in, a line
/// of readings out.
struct Parser {
    child: Child,
    stdin: ChildStdin,
    answers: mpsc::Receiver<String>,
    stderr: Arc<Lines>,
    what: String,
}

impl Parser {
    fn start(what: &str, mut cmd: Command) -> Parser {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run the {what} parser ({cmd:?}): {e}"));
        let stdin = child.stdin.take().unwrap();
        let (tx, answers) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Lines::default());
        support::collect(child.stderr.take().unwrap(), stderr.clone());
        Parser {
            child,
            stdin,
            answers,
            stderr,
            what: what.to_string(),
        }
    }

    fn send(&mut self, line: &str) {
        if let Err(e) = self.stdin.write_all(line.as_bytes()) {
            self.died(&format!("stdin: {e}"));
        }
    }

    fn answer(&mut self) -> Vec<Reading> {
        let line = match self.answers.recv_timeout(DEADLINE) {
            Ok(line) => line,
            Err(e) => self.died(&format!("no answer: {e}")),
        };
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| self.died(&format!("{e} in {line:?}")));
        let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
        v["readings"]
            .as_array()
            .unwrap_or_else(|| self.died(&format!("no readings in {line}")))
            .iter()
            .map(|r| Reading {
                how: text(&r["how"]).unwrap_or_default(),
                cookies: r["cookies"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| (text(&c[0]).unwrap_or_default(), text(&c[1])))
                    .collect(),
                error: text(&r["error"]),
            })
            .collect()
    }

    fn died(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!(
            "the {} parser failed: {why}; its stderr:\n{}",
            self.what,
            self.stderr.all().join("\n")
        );
    }
}

impl Drop for Parser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every parser this run promises: Python's and Node's always (a missing
/// one fails: run `scripts/test`), and with [`SLOW`] Go's, Rack's and
/// Tomcat's too.
struct Parsers(Vec<Parser>);

impl Parsers {
    fn start() -> Parsers {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = root.join("target/test-parsers");
        let scripts = root.join("tests/parsers");
        let slow = std::env::var_os(SLOW).is_some_and(|v| v == "1");
        let mut missing = Vec::new();
        let mut need = |p: PathBuf| {
            if !p.exists() {
                missing.push(p.display().to_string());
            }
            p
        };
        let python = support::apps::python();
        let mut wanted: Vec<(&str, Command)> = Vec::new();
        for (what, kind, path) in [
            ("werkzeug 3.1.8", "werkzeug", Some("werkzeug-3.1.8")),
            ("werkzeug newest", "werkzeug", Some("werkzeug-newest")),
            ("django", "django", Some("django")),
            ("http.cookies", "simplecookie", None),
        ] {
            let mut cmd = Command::new(&python);
            cmd.arg(scripts.join("py_cookies.py"))
                .arg(kind)
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .env("PYTHONNOUSERSITE", "1")
                .env_remove("PYTHONPATH");
            if let Some(path) = path {
                cmd.env("PYTHONPATH", need(dir.join(path)));
            }
            wanted.push((what, cmd));
        }
        let mut node = Command::new("node");
        node.arg(scripts.join("node_cookies.mjs"))
            .arg(need(dir.join("node/node_modules")).parent().unwrap());
        wanted.push(("node cookie", node));
        if slow {
            wanted.push(("go", Command::new(need(dir.join("go_cookies")))));
            let mut rack = Command::new("ruby");
            rack.arg(scripts.join("rack_cookies.rb"));
            wanted.push(("rack", rack));
            need(dir.join("java/TomcatCookies.class"));
            for tomcat in ["tomcat9", "tomcat10"] {
                let mut classpath = vec![dir.join("java")];
                for jar in ["coyote", "util", "juli", "catalina"] {
                    classpath.push(need(PathBuf::from(format!(
                        "/usr/share/java/{tomcat}-{jar}.jar"
                    ))));
                }
                let mut java = Command::new("java");
                java.arg("-cp")
                    .arg(std::env::join_paths(classpath).unwrap())
                    .arg("TomcatCookies");
                wanted.push((tomcat, java));
            }
        }
        assert!(
            missing.is_empty(),
            "cookie parsers not installed: {missing:?}; run scripts/test{}",
            if slow { " --slow" } else { "" }
        );
        Parsers(
            wanted
                .into_iter()
                .map(|(what, cmd)| Parser::start(what, cmd))
                .collect(),
        )
    }

    /// How every parser reads these `Cookie` fields (all asked at once).
    fn read(&mut self, fields: &[Vec<u8>]) -> Vec<Reading> {
        let mut line: String = fields
            .iter()
            .map(|f| {
                let hex: String = f.iter().map(|b| format!("{b:02x}")).collect();
                format!("x{hex}")
            })
            .collect::<Vec<_>>()
            .join(" ");
        line.push('\n');
        for p in &mut self.0 {
            p.send(&line);
        }
        self.0.iter_mut().flat_map(|p| p.answer()).collect()
    }
}

/// The proxy in front of the recording backend, with a session of the
/// app's (its ticket in [`Pool::ticket`]).
struct Pool {
    forwarded: Mutex<mpsc::Receiver<RawRequest>>,
    proxy: Proxy,
    ticket: Vec<u8>,
    _backend: RawBackend,
}

impl Pool {
    fn start() -> Pool {
        let (tx, forwarded) = mpsc::channel();
        let tx = Mutex::new(tx);
        let backend = RawBackend::with(move |req: &RawRequest| {
            let _ = tx.lock().unwrap().send(req.clone());
            if req.request_line().starts_with("GET /login ") {
                let mut head = String::from("HTTP/1.1 200 OK\r\n");
                for (name, value) in APP {
                    head.push_str(&format!("Set-Cookie: {name}={value}; Path=/\r\n"));
                }
                head.push_str("Content-Length: 2\r\n\r\nok");
                Reply::raw(head)
            } else {
                Reply::ok()
            }
        });
        let proxy = Proxy::start(&config(
            "round_robin",
            &[backend.entry()],
            "[pools.web.session]\napp_cookie = [\"session\", \"session.sig\"]\n",
        ));
        let mut pool = Pool {
            forwarded: Mutex::new(forwarded),
            proxy,
            ticket: Vec::new(),
            _backend: backend,
        };
        let (seen, received) = pool.send_raw(&request("/login", &[]));
        assert_eq!(seen, Seen::Status(200), "{}", raw::show(&received));
        let head = String::from_utf8_lossy(&received);
        let prefix = format!("set-cookie: {TICKET}=");
        let value = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .and_then(|l| l[prefix.len()..].split(';').next())
            .unwrap_or_else(|| panic!("no ticket in {head}"));
        pool.ticket = format!("{TICKET}={value}").into_bytes();
        pool.forwarded
            .lock()
            .unwrap()
            .recv_timeout(DEADLINE)
            .unwrap();
        pool
    }

    fn addr(&self) -> SocketAddr {
        self.proxy.addr()
    }

    fn send_raw(&self, bytes: &[u8]) -> (Seen, Vec<u8>) {
        let x = raw::exchange(self.addr(), bytes, false, b"", DEADLINE, Duration::ZERO);
        (x.seen, x.received)
    }

    /// Sends `fields` (one `Cookie` line each) and returns the `Cookie`
    /// fields the backend received, or `None` when the proxy answered
    /// without forwarding (a request it refused).
    fn forward(&self, fields: &[Vec<u8>]) -> Option<Vec<Vec<u8>>> {
        let forwarded = self.forwarded.lock().unwrap();
        let (seen, received) = self.send_raw(&request("/c", fields));
        if seen != Seen::Status(200) {
            assert!(
                forwarded.try_recv().is_err(),
                "refused but forwarded: {}",
                raw::show(&received)
            );
            return None;
        }
        let req = forwarded
            .recv_timeout(DEADLINE)
            .expect("the backend saw the request it answered");
        Some(cookie_fields(req.head()))
    }
}

fn request(path: &str, fields: &[Vec<u8>]) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n").into_bytes();
    for f in fields {
        r.extend_from_slice(b"Cookie: ");
        r.extend_from_slice(f);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"\r\n");
    r
}

/// The `Cookie` field values of a request head, as an HTTP server hands
/// them on: without the spaces and tabs around them.
fn cookie_fields(head: &[u8]) -> Vec<Vec<u8>> {
    head.split(|&b| b == b'\n')
        .skip(1)
        .filter_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|&b| b == b':')?;
            let value = ows(&line[colon + 1..]);
            line[..colon]
                .eq_ignore_ascii_case(b"cookie")
                .then(|| value.to_vec())
        })
        .collect()
}

fn ows(b: &[u8]) -> &[u8] {
    let blank = |c: &u8| *c == b' ' || *c == b'\t';
    let start = b.iter().position(|c| !blank(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !blank(c)).map_or(start, |e| e + 1);
    &b[start..end]
}

/// The crumbs of some fields: split at `;`, without the blanks around.
fn crumbs(fields: &[Vec<u8>]) -> Vec<Vec<u8>> {
    fields
        .iter()
        .flat_map(|f| f.split(|&b| b == b';'))
        .map(|c| ows(c).to_vec())
        .filter(|c| !c.is_empty())
        .collect()
}

/// A request's `Cookie` fields and what must come of them.
#[derive(Debug, Clone)]
struct Case {
    fields: Vec<Vec<u8>>,
    /// Crumbs that are nobody's: they reach the backend byte for byte, in
    /// this order, when the request is forwarded.
    benign: Vec<Vec<u8>>,
    /// The valid ticket is the one the proxy reads (see [`presents`]): the
    /// app's cookies must reach the backend.
    ticket: bool,
}

/// Whether the ticket the proxy reads in `fields` is `ticket`: the first
/// crumb that is `slb_sid=` after blanks (a forged one before it is read
/// instead, and opens no session).
fn presents(fields: &[Vec<u8>], ticket: &[u8]) -> bool {
    let name = format!("{TICKET}=");
    fields
        .iter()
        .flat_map(|f| f.split(|&b| b == b';'))
        .map(ows)
        .find(|c| c.starts_with(name.as_bytes()))
        .is_some_and(|c| c == ticket)
}

/// What is wrong with what reached the backend for `case`: each line one
/// parser reading a cookie it must not, or a cookie lost.
fn check(case: &Case, pool: &Pool, parsers: &mut Parsers) -> Vec<String> {
    let show_all = |fields: &[Vec<u8>]| -> String {
        let lines: Vec<String> = fields.iter().map(|f| raw::show(f)).collect();
        format!("{lines:?}")
    };
    let Some(got) = pool.forward(&case.fields) else {
        // only a request that is not HTTP may be refused
        let valid = case
            .fields
            .iter()
            .flatten()
            .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f));
        return match valid {
            true => vec![format!("refused: {}", show_all(&case.fields))],
            false => vec![],
        };
    };
    let mut wrong = Vec::new();
    let arrived = crumbs(&got);
    let mut rest = arrived.iter();
    for b in &case.benign {
        if !rest.any(|a| a == b) {
            wrong.push(format!("{} lost or changed", raw::show(b)));
        }
    }
    if case.ticket {
        for (name, value) in APP {
            if !arrived.contains(&format!("{name}={value}").into_bytes()) {
                wrong.push(format!("the app's {name} not put in"));
            }
        }
    }
    // a reading that fails is a request the app fails: nothing is read
    let readings = match got.is_empty() {
        true => Vec::new(),
        false => parsers.read(&got),
    };
    for r in readings.iter().filter(|r| r.error.is_none()) {
        for (name, value) in &r.cookies {
            let shown = format!("{name:?} = {value:?}");
            if name.eq_ignore_ascii_case(TICKET) {
                wrong.push(format!("{} reads the ticket {shown}", r.how));
            }
            let Some((app, real)) = APP.iter().find(|(a, _)| name.eq_ignore_ascii_case(a)) else {
                continue;
            };
            let inserted = case.ticket && name == app && value.as_deref() == Some(real);
            if !inserted {
                wrong.push(format!("{} reads {shown}", r.how));
            }
        }
    }
    wrong
        .into_iter()
        .map(|what| {
            format!(
                "sent {} -> backend got {}: {what}",
                show_all(&case.fields),
                show_all(&got)
            )
        })
        .collect()
}

/// Runs `cases`, panicking with every problem found.
fn run(cases: &[Case], pool: &Pool, parsers: &mut Parsers) {
    let problems: Vec<String> = cases.iter().flat_map(|c| check(c, pool, parsers)).collect();
    assert!(
        problems.is_empty(),
        "{} problems in {} cases:\n{}",
        problems.len(),
        cases.len(),
        problems
            .iter()
            .take(60)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The bytes and UTF-8 characters some parser trims from names, splits
/// cookies at, or both: every byte up to 0x20, DEL, latin-1's NEL and
/// NBSP, and Unicode's white space.
fn blanks() -> Vec<Vec<u8>> {
    let mut all: Vec<Vec<u8>> = (0u8..=0x20)
        .chain([0x7f, 0x85, 0xa0])
        .map(|b| vec![b])
        .collect();
    let chars = [
        '\u{85}', '\u{a0}', '\u{1680}', '\u{2028}', '\u{2029}', '\u{202f}',
    ]
    .into_iter()
    .chain(['\u{205f}', '\u{3000}', '\u{feff}', '\u{180e}'])
    .chain('\u{2000}'..='\u{200a}');
    all.extend(chars.map(|c| c.to_string().into_bytes()));
    all
}

/// The spellings of `name` a lenient parser may read as it.
fn disguises(name: &str) -> Vec<Vec<u8>> {
    let n = name.as_bytes();
    let mut all = vec![
        n.to_vec(),
        name.to_ascii_uppercase().into_bytes(),
        [&name[..1].to_ascii_uppercase(), &name[1..]]
            .concat()
            .into_bytes(),
        [b"\"", n, b"\""].concat(),
        [b"$", n].concat(),
    ];
    for b in blanks() {
        all.push([&b, n].concat());
        all.push([n, &b].concat());
        all.push([&b, n, &b].concat());
    }
    all
}

const BENIGN: [&[u8]; 10] = [
    b"theme=dark",
    b"a=b=c",
    b"q=\"quoted value\"",
    b"e=",
    b"p=%73ession",
    b"j=j:{\"a\":1}",
    b"sessionx=1",
    b"x_slb_sid=2",
    b"a2=session=x",
    b"list=1,2",
];

fn case(fields: &[&[u8]], benign: &[&[u8]], ticket: bool) -> Case {
    Case {
        fields: fields.iter().map(|f| f.to_vec()).collect(),
        benign: benign.iter().map(|b| b.to_vec()).collect(),
        ticket,
    }
}

/// The fixed cases: every disguise of every name, before and after the
/// ticket (first-wins and last-wins parsers) and alone; then each trick in
/// its contexts.
fn table(ticket: &[u8]) -> Vec<Case> {
    let mut cases = Vec::new();
    let (theme, abc) = (BENIGN[0], BENIGN[1]);
    for name in ["session", "session.sig", TICKET] {
        for d in disguises(name) {
            let v = |val: &[u8]| [&d[..], b"=", val].concat();
            let field = [
                theme,
                b"; ",
                &v(b"evil1"),
                b"; ",
                ticket,
                b"; ",
                &v(b"evil2"),
                b"; ",
                abc,
                b"; ",
                &d,
            ]
            .concat();
            let ticket = presents(std::slice::from_ref(&field), ticket);
            cases.push(case(&[&field], &[theme, abc], ticket));
            cases.push(case(&[&v(b"evil3"), theme], &[theme], false));
        }
    }
    let some = [
        &b"session"[..],
        b"\xa0session",
        b"session\x85",
        b"SESSION",
        b"Session.Sig",
        "\u{3000}session".as_bytes(),
        b"slb_sid",
        b"SLB_SID",
    ];
    for d in some {
        let v = [d, b"=evil"].concat();
        let fields: Vec<Vec<Vec<u8>>> = vec![
            vec![[b"a=1,", &v[..]].concat()],
            vec![[b"a=1, ", &v[..]].concat()],
            vec![[b"a=1 ", &v[..]].concat()],
            vec![[b"a=1\t", &v[..]].concat()],
            vec![[b"$Version=1; ", &v[..]].concat()],
            vec![[b"$Version=1, ", &v[..]].concat()],
            vec![[b"$Version=1,", &v[..]].concat()],
            vec![[b"$Version=\"1\", ", &v[..], b"; ", ticket].concat()],
            vec![[&v[..], b", ", ticket].concat()],
            vec![[ticket, b", ", &v[..]].concat()],
            vec![[ticket, b" ", &v[..]].concat()],
            vec![[b"a=\"x; ", &v[..], b"\""].concat()],
            vec![[b"a=\"x, ", &v[..], b"\""].concat()],
            vec![[b"=", &v[..]].concat()],
            vec![[d, b"==evil"].concat()],
            vec![[d, b" = evil"].concat()],
            vec![[d, b"=\"evil\""].concat()],
            vec![d.to_vec()],
            vec![[d, b"; x=1"].concat()],
            vec![b"a=1".to_vec(), v.clone()],
            vec![v.clone(), ticket.to_vec()],
            vec![ticket.to_vec(), v.clone()],
            vec![b"a=1;".to_vec(), v.clone(), b"b=2".to_vec()],
        ];
        for f in fields {
            cases.push(Case {
                ticket: presents(&f, ticket),
                fields: f,
                benign: vec![],
            });
        }
    }
    // a ticket spelt the way a browser would not
    for t in [
        [b"slb_sid =", &ticket[8..]].concat(),
        [b"slb_sid= ", &ticket[8..]].concat(),
        [b"\xa0", ticket].concat(),
        [b"SLB_SID=", &ticket[8..]].concat(),
        [b"\"", ticket, b"\""].concat(),
    ] {
        cases.push(Case {
            fields: vec![[theme, b"; ", &t[..]].concat()],
            benign: vec![theme.to_vec()],
            ticket: false,
        });
    }
    // nobody's cookies, with the ticket and without
    cases.push(case(&[&BENIGN.join(&b"; "[..])], &BENIGN, false));
    let all = [&BENIGN.join(&b"; "[..])[..], b"; ", ticket].concat();
    cases.push(case(&[&all], &BENIGN, true));
    cases.push(case(&BENIGN, &BENIGN, false));
    cases
}

#[test]
fn no_parser_reads_a_client_app_cookie_or_ticket() {
    let pool = Pool::start();
    let mut parsers = Parsers::start();
    let cases = table(&pool.ticket);
    run(&cases, &pool, &mut parsers);
}

/// Pieces the randomised cases are made of.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    let blank = prop::sample::select(blanks());
    let name = prop::sample::select(vec![
        "session",
        "session.sig",
        TICKET,
        "Session",
        "SLB_SID",
        "$Version",
        "a",
        "theme",
    ]);
    let around = prop::option::of(prop_oneof![
        blank,
        Just(b"\"".to_vec()),
        Just(b"$".to_vec())
    ]);
    let value = prop::sample::select(vec![
        &b"=evil"[..],
        b"",
        b"=",
        b"==evil",
        b"=\"evil\"",
        b"=\"a;b\"",
        b" = evil",
        b"=1",
    ]);
    (around.clone(), name, around, value).prop_map(|(before, name, after, value)| {
        [
            before.unwrap_or_default(),
            name.as_bytes().to_vec(),
            after.unwrap_or_default(),
            value.to_vec(),
        ]
        .concat()
    })
}

#[derive(Debug, Clone)]
enum Crumb {
    Benign(&'static [u8]),
    Ticket,
    /// Pieces joined by a `,` or blank.
    Tricky(Vec<Vec<u8>>, &'static [u8]),
}

fn random_case() -> impl Strategy<Value = (Vec<Crumb>, Vec<bool>, Vec<&'static [u8]>)> {
    let crumb = prop_oneof![
        prop::sample::select(BENIGN.to_vec()).prop_map(Crumb::Benign),
        Just(Crumb::Ticket),
        (
            prop::collection::vec(piece(), 1..4),
            prop::sample::select(vec![&b","[..], b", ", b" ", b"\t", b""]),
        )
            .prop_map(|(p, j)| Crumb::Tricky(p, j)),
    ];
    (
        prop::collection::vec(crumb, 1..8),
        prop::collection::vec(any::<bool>(), 8),
        prop::collection::vec(prop::sample::select(vec![&b"; "[..], b";", b" ; "]), 8),
    )
}

/// The fixed cases' tricks combined at random: a few hundred requests of
/// crumbs spread over one to three fields.
#[test]
fn no_parser_reads_a_client_app_cookie_or_ticket_in_random_fields() {
    let pool = Pool::start();
    let parsers = Mutex::new(Parsers::start());
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&random_case(), |(crumbs, cuts, joins)| {
        let mut fields: Vec<Vec<u8>> = vec![Vec::new()];
        let mut benign = Vec::new();
        for (i, c) in crumbs.iter().enumerate() {
            if cuts[i] && fields.len() < 3 && !fields.last().unwrap().is_empty() {
                fields.push(Vec::new());
            }
            let field = fields.last_mut().unwrap();
            if !field.is_empty() {
                field.extend_from_slice(joins[i]);
            }
            match c {
                Crumb::Benign(b) => {
                    benign.push(*b);
                    field.extend_from_slice(b);
                }
                Crumb::Ticket => field.extend_from_slice(&pool.ticket),
                Crumb::Tricky(pieces, join) => field.extend_from_slice(&pieces.join(*join)),
            }
        }
        fields.retain(|f| !f.is_empty());
        let case = Case {
            ticket: presents(&fields, &pool.ticket),
            fields,
            benign: benign.iter().map(|b| b.to_vec()).collect(),
        };
        let problems = check(&case, &pool, &mut parsers.lock().unwrap());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(TestCaseError::fail(problems.join("\n")))
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The harness reads what the rule was made against: without it, a
/// parser that was not installed as it should be would pass everything.
#[test]
fn the_parsers_read_the_smuggled_cookies() {
    let mut parsers = Parsers::start();
    let reads = |parsers: &mut Parsers, field: &[u8], how: &str| {
        parsers.read(&[field.to_vec()]).iter().any(|r| {
            r.how.starts_with(how)
                && r.cookies
                    .iter()
                    .any(|(n, v)| n == "session" && v.as_deref() == Some("evil"))
        })
    };
    assert!(reads(&mut parsers, b"\xa0session=evil", "werkzeug 3.1.8"));
    assert!(reads(&mut parsers, b"\x85session=evil", "django"));
    assert!(reads(&mut parsers, b"a=1 session=evil", "http.cookies"));
    assert!(reads(&mut parsers, b"session=evil", "cookie-parser"));
    if std::env::var_os(SLOW).is_some_and(|v| v == "1") {
        assert!(reads(&mut parsers, b"$Version=1, session=evil", "tomcat 9"));
        assert!(reads(&mut parsers, b"session=evil", "go"));
        assert!(reads(&mut parsers, b"session=evil", "rack"));
        assert!(reads(&mut parsers, b"session=evil", "tomcat 10"));
    }
}
