//! File descriptors: `gearframe server` under `prlimit` serves as many
//! connections as its limit allows, refuses the rest at once, logs the
//! refusals at most once a second, and serves again once descriptors free up.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gearframe::proto::{Magic, Packet};

use crate::support::{ChildGuard, eventually, missing, peer};

const T: Duration = Duration::from_secs(10);

/// `gearframe server` on an ephemeral port, optionally under `prlimit
/// --nofile=N:N`, with its stderr (the log) in a file.
struct LimitedServer {
    child: ChildGuard,
    addr: SocketAddr,
    /// The start-up line.
    listening: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl LimitedServer {
    fn start(nofile: Option<(&Path, u32)>, args: &[&str]) -> LimitedServer {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let gearframe = env!("CARGO_BIN_EXE_gearframe");
        let mut cmd = match nofile {
            Some((prlimit, n)) => {
                let mut c = Command::new(prlimit);
                c.arg(format!("--nofile={n}:{n}")).arg(gearframe);
                c
            }
            None => Command::new(gearframe),
        };
        let child = cmd
            .args(["server", "-L", "127.0.0.1:0"])
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let child = ChildGuard(child);
        let listening = eventually(T, "the start-up line", || {
            let text = std::fs::read_to_string(&log).ok()?;
            text.lines().find(|l| l.starts_with("gearframe server listening on ")).map(String::from)
        });
        let addr = listening
            .trim_start_matches("gearframe server listening on ")
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        LimitedServer { child, addr, listening, log, _dir: dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// Sum of the counts of the log lines about refusals that contain `reason`,
    /// and how many such lines there are.
    fn refusals(&self, reason: &str) -> (u64, usize) {
        let text = self.log();
        let lines: Vec<&str> =
            text.lines().filter(|l| l.contains("closed at once") && l.contains(reason)).collect();
        let sum = lines
            .iter()
            .map(|l| {
                let after = l.split("] ").nth(1).unwrap_or(l);
                after.split(' ').next().unwrap().parse::<u64>().unwrap()
            })
            .sum();
        (sum, lines.len())
    }

    /// SIGTERM; the server must exit 0.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = eventually(T, "server exit", || self.child.0.try_wait().unwrap());
        assert!(status.success(), "exit status {status:?}; log:\n{}", self.log());
    }
}

/// The test process needs descriptors of its own for the client side.
fn test_process_has(fds: u64) -> bool {
    let soft = gearframe::server::raise_fd_limit().unwrap();
    soft >= fds
        || missing::<()>(&format!("a file descriptor limit of {fds} for the test")).is_some()
}

fn echo_req(data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    Packet::EchoReq { data }.encode(Magic::Req, &mut v).unwrap();
    v
}

fn echo_res(data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    Packet::EchoRes { data }.encode(Magic::Res, &mut v).unwrap();
    v
}

/// What became of one ECHO_REQ on a fresh connection.
#[derive(Debug)]
enum Outcome {
    Served(TcpStream),
    /// The server closed it (end of stream or reset) without a byte.
    Closed,
}

/// Connects, sends an ECHO_REQ and waits up to `T` for the answer or the
/// close; a connection left hanging fails the test.
fn try_echo(addr: SocketAddr, data: &[u8]) -> Outcome {
    let mut s = TcpStream::connect_timeout(&addr, T).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    if s.write_all(&echo_req(data)).is_err() {
        return Outcome::Closed;
    }
    let want = echo_res(data);
    let mut got = vec![0u8; want.len()];
    let mut n = 0;
    while n < got.len() {
        match s.read(&mut got[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("connection neither answered nor closed within {T:?}")
            }
            Err(_) => break,
        }
    }
    match n {
        0 => Outcome::Closed,
        _ => {
            assert_eq!(got, want, "a partial or wrong answer");
            Outcome::Served(s)
        }
    }
}

/// Another ECHO_REQ on a connection that was served.
fn echo_again(s: &mut TcpStream, data: &[u8]) {
    s.write_all(&echo_req(data)).unwrap();
    let want = echo_res(data);
    let mut got = vec![0u8; want.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, want);
}

#[test]
fn six_hundred_connections_are_served_at_once_under_a_limit_of_1024() {
    let Some(prlimit) = peer("prlimit") else { return };
    if !test_process_has(700) {
        return;
    }
    let server = LimitedServer::start(Some((&prlimit, 1024)), &[]);
    assert!(
        server.listening.ends_with("(file descriptor limit 1024, at most 992 connections)"),
        "{}",
        server.listening
    );
    let mut open: Vec<TcpStream> = (0..600)
        .map(|i| match try_echo(server.addr, format!("first {i}").as_bytes()) {
            Outcome::Served(s) => s,
            Outcome::Closed => panic!("connection {i} was refused; log:\n{}", server.log()),
        })
        .collect();
    // All 600 are open at once and each is answered again.
    for (i, s) in open.iter_mut().enumerate() {
        echo_again(s, format!("again {i}").as_bytes());
    }
    assert_eq!(server.refusals("").1, 0, "{}", server.log());
    drop(open);
    server.stop();
}

#[test]
fn out_of_descriptors_new_connections_are_closed_at_once_and_served_again_later() {
    let Some(prlimit) = peer("prlimit") else { return };
    if !test_process_has(400) {
        return;
    }
    let started = Instant::now();
    // max_connections far above what 64 descriptors hold: the descriptors
    // run out first.
    let server = LimitedServer::start(Some((&prlimit, 64)), &["--max-connections", "1000"]);
    assert!(
        server.listening.ends_with("(file descriptor limit 64, at most 1000 connections)"),
        "{}",
        server.listening
    );
    assert!(server.log().contains("max_connections 1000 is more than"), "{}", server.log());
    let mut served = Vec::new();
    let mut refused = 0u64;
    for i in 0..300 {
        match try_echo(server.addr, format!("{i}").as_bytes()) {
            Outcome::Served(s) => {
                assert_eq!(refused, 0, "connection {i} served after a refusal");
                served.push(s);
            }
            Outcome::Closed => refused += 1,
        }
    }
    assert!(served.len() >= 40, "only {} connections served under 64", served.len());
    assert!(refused >= 200, "only {refused} of 300 refused");
    // The open ones are still served.
    for (i, s) in served.iter_mut().enumerate() {
        echo_again(s, format!("still {i}").as_bytes());
    }
    // Every refusal is counted in the log, on at most one line a second.
    let (counted, lines) = eventually(T, "every refusal in the log", || {
        let (sum, lines) = server.refusals("no file descriptor left (limit 64)");
        (sum == refused).then_some((sum, lines))
    });
    let seconds = started.elapsed().as_secs();
    assert!(
        lines as u64 <= seconds + 1,
        "{lines} refusal lines for {counted} refusals in {seconds}s:\n{}",
        server.log()
    );
    // Once descriptors are free, new connections are served again.
    served.truncate(served.len() - 10);
    let mut back =
        eventually(T, "a new connection served", || match try_echo(server.addr, b"back") {
            Outcome::Served(s) => Some(s),
            Outcome::Closed => None,
        });
    echo_again(&mut back, b"back again");
    for s in &mut served {
        echo_again(s, b"last");
    }
    server.stop();
}

#[test]
fn refusals_over_max_connections_are_logged_once_a_second_with_their_count() {
    let started = Instant::now();
    let server = LimitedServer::start(None, &["--max-connections", "2"]);
    assert!(server.listening.ends_with("at most 2 connections)"), "{}", server.listening);
    let mut kept: Vec<TcpStream> = (0..2)
        .map(|i| match try_echo(server.addr, b"in") {
            Outcome::Served(s) => s,
            Outcome::Closed => panic!("connection {i} refused under max_connections 2"),
        })
        .collect();
    for _ in 0..200 {
        let outcome = try_echo(server.addr, b"over");
        assert!(
            matches!(outcome, Outcome::Closed),
            "a connection over max_connections: {outcome:?}"
        );
    }
    let (_, lines) = eventually(T, "every refusal in the log", || {
        let (sum, lines) = server.refusals("2 connections already open");
        (sum == 200).then_some((sum, lines))
    });
    let seconds = started.elapsed().as_secs();
    assert!(lines as u64 <= seconds + 1, "{lines} lines in {seconds}s:\n{}", server.log());
    for s in &mut kept {
        echo_again(s, b"still in");
    }
    server.stop();
}
