//! Malformed input against the embedded server. Each test keeps a healthy
//! client and worker connected alongside the bad one, and checks that they
//! keep working while the bad input is handled and afterwards: ECHO round
//! trips and a full submit, grab, complete cycle.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use gearframe::proto::{HEADER_LEN, Magic, Packet, PacketType, Priority, SubmitKind};
use gearframe::server::ServerConfig;

use crate::peers::{Conn, IO_LIMIT, Reply, ServerGuard};
use crate::support::{Rng, spray_streams};

/// How soon a connection must be closed once the server has seen the bad
/// input.
const CLOSE_LIMIT: Duration = Duration::from_secs(2);

/// A client and a worker that use the server normally.
struct Healthy {
    client: Conn,
    worker: Conn,
    function: Vec<u8>,
    round: u32,
}

impl Healthy {
    fn connect(addr: SocketAddr) -> Healthy {
        let function = b"healthy-reverse".to_vec();
        let client = Conn::connect(addr);
        let mut worker = Conn::connect(addr);
        worker.send(Packet::CanDo { function: &function });
        let mut h = Healthy { client, worker, function, round: 0 };
        h.check();
        h
    }

    /// ECHO on both connections, then one job from submission to result.
    fn check(&mut self) {
        self.round += 1;
        let data = format!("job-{}", self.round).into_bytes();
        let result = format!("done-{}", self.round).into_bytes();
        self.client.echo(&data);
        self.worker.echo(&data);

        self.client.send(Packet::Submit {
            kind: SubmitKind { priority: Priority::Normal, background: false },
            function: &self.function,
            unique: b"",
            data: &data,
        });
        let created = self.client.expect_reply().args(PacketType::JobCreated);
        let handle = created[0].clone();

        self.worker.send(Packet::GrabJobUniq);
        let assign = self.worker.expect_reply().args(PacketType::JobAssignUniq);
        assert_eq!(assign, vec![handle.clone(), self.function.clone(), Vec::new(), data]);
        self.worker.send(Packet::WorkComplete { handle: &handle, data: &result });

        let done = self.client.expect_reply().args(PacketType::WorkComplete);
        assert_eq!(done, vec![handle, result]);
    }
}

fn header(magic: &[u8; 4], kind: u32, size: u32) -> Vec<u8> {
    let mut h = magic.to_vec();
    h.extend_from_slice(&kind.to_be_bytes());
    h.extend_from_slice(&size.to_be_bytes());
    h
}

/// The code and text of an ERROR reply; fails the test for anything else.
fn error_of(reply: &Reply) -> (String, String) {
    let args = reply.args(PacketType::Error);
    let code = String::from_utf8_lossy(&args[0]).into_owned();
    let text = String::from_utf8_lossy(&args[1]).into_owned();
    assert!(!code.is_empty() && !text.is_empty(), "ERROR without code or text: {reply:?}");
    (code, text)
}

/// Sends `bad` on its own connection and expects an ERROR (with `code`, when
/// given) and then the connection closed, while a healthy client and worker
/// keep working. Returns the error's code and text.
fn refused_then_closed(config: ServerConfig, bad: &[u8], code: Option<&str>) -> (String, String) {
    let server = ServerGuard::with_config(config);
    let mut healthy = Healthy::connect(server.addr());
    let mut conn = Conn::connect(server.addr());
    conn.send_raw(bad).expect("sending the bad input");
    healthy.check();
    let reply = conn.expect_reply();
    let (got, text) = error_of(&reply);
    if let Some(code) = code {
        assert_eq!(got, code, "error text {text:?}");
    }
    conn.expect_closed(CLOSE_LIMIT);
    healthy.check();
    Conn::connect(server.addr()).echo(b"new connection");
    (got, text)
}

#[test]
fn bad_magic_gets_an_error_and_is_closed() {
    let bad = header(b"\0XYZ", PacketType::EchoReq as u32, 0);
    refused_then_closed(ServerConfig::default(), &bad, None);
}

#[test]
fn unknown_packet_types_get_an_error_and_are_closed() {
    for kind in [0u32, 43] {
        let bad = header(b"\0REQ", kind, 0);
        refused_then_closed(ServerConfig::default(), &bad, None);
    }
}

#[test]
fn oversize_body_is_refused_from_its_header() {
    let config = || ServerConfig { max_packet_size: 1024, ..ServerConfig::default() };
    // Only the header is sent: the server must answer without waiting for
    // the 2048 bytes it announces.
    let bad = header(b"\0REQ", PacketType::SubmitJob as u32, 2048);
    assert_eq!(bad.len(), HEADER_LEN);
    refused_then_closed(config(), &bad, Some("ARGUMENT_TOO_LARGE"));

    // A body of exactly the maximum is served.
    let server = ServerGuard::with_config(config());
    Conn::connect(server.addr()).echo(&[b'e'; 1024]);
}

#[test]
fn too_few_arguments_get_an_error_and_are_closed() {
    let mut bad = header(b"\0REQ", PacketType::SubmitJob as u32, 6);
    bad.extend_from_slice(b"f\0data");
    let server = ServerGuard::start();
    let mut healthy = Healthy::connect(server.addr());
    let mut conn = Conn::connect(server.addr());
    conn.send_raw(&bad).expect("sending the bad input");
    healthy.check();
    error_of(&conn.expect_reply());
    conn.expect_closed(CLOSE_LIMIT);
    healthy.check();
    // The malformed submission created neither a job nor a function.
    let mut admin = Conn::connect(server.addr());
    assert_eq!(admin.admin("status"), "healthy-reverse\t0\t0\t1\n.\n");
    assert_eq!(admin.admin("show jobs"), ".\n");
}

#[test]
fn text_line_over_64_kib_is_closed() {
    let server = ServerGuard::start();
    let mut healthy = Healthy::connect(server.addr());
    let mut conn = Conn::connect(server.addr());
    // The server may close before all of it is written; a failed write is
    // part of the expected outcome.
    let _ = conn.send_raw(&vec![b'a'; (64 << 10) + 1024]);
    healthy.check();
    conn.expect_closed(CLOSE_LIMIT);
    healthy.check();

    // A long line under the limit is an ordinary (unknown) command.
    let mut ok = Conn::connect(server.addr());
    let word = "w".repeat(60 << 10);
    assert_eq!(ok.admin(&word), format!("ERR UNKNOWN_COMMAND Unknown+server+command{word}\n"));
}

#[test]
fn response_magic_gets_invalid_magic_and_stays_open() {
    let server = ServerGuard::start();
    let mut healthy = Healthy::connect(server.addr());
    let mut conn = Conn::connect(server.addr());
    let bad = Packet::EchoReq { data: b"ping" }.to_vec(Magic::Res);
    conn.send_raw(&bad).expect("sending the bad input");
    healthy.check();
    let (code, text) = error_of(&conn.expect_reply());
    assert_eq!((code.as_str(), text.as_str()), ("INVALID_MAGIC", "Request magic expected"));
    // The packet was consumed whole: the connection goes on in sync.
    conn.echo(b"still here");
    assert_eq!(conn.admin("status"), "healthy-reverse\t0\t0\t1\n.\n");
    healthy.check();
}

/// One connection's worth of garbage: random bytes, headers with random
/// types and sizes and bodies that may not match them, and admin lines with
/// random arguments.
fn garbage(rng: &mut Rng) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "status",
        "workers",
        "show jobs",
        "show unique jobs",
        "prioritystatus",
        "cancel job",
        "create function",
        "drop function",
        "maxqueue",
        "getpid",
        "verbose",
        "version",
    ];
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(4) {
        match rng.below(4) {
            0 => {
                let n = rng.below(256);
                out.extend(rng.bytes(n));
            }
            1 | 2 => {
                let magic = if rng.below(8) == 0 { b"\0RES" } else { b"\0REQ" };
                let kind = rng.below(46) as u32;
                let body_len = rng.below(48);
                let size = if rng.below(4) == 0 { rng.below(96) } else { body_len };
                out.extend(header(magic, kind, size as u32));
                let mut body = rng.bytes(body_len);
                for b in &mut body {
                    if rng.below(6) == 0 {
                        *b = 0;
                    }
                }
                out.extend(body);
            }
            _ => {
                out.extend(WORDS[rng.below(WORDS.len())].as_bytes());
                for _ in 0..rng.below(5) {
                    out.push(b' ');
                    let n = rng.below(12);
                    out.extend(rng.bytes(n).into_iter().map(|b| b'!' + b % 90));
                }
                out.extend(if rng.below(2) == 0 { &b"\r\n"[..] } else { b"\n" });
            }
        }
    }
    out
}

/// Sends garbage on `count` connections, one after another. Half of them are
/// half-closed and read until the server closes them; the others are
/// dropped at once. Returns how many were not closed in time.
fn spray(addr: SocketAddr, seed: u64, count: usize) -> usize {
    spray_streams(addr, &mut Rng(seed), 0, count, IO_LIMIT, |rng, _| garbage(rng))
}

#[test]
fn a_thousand_garbage_connections_never_stop_the_server() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 250;
    let server = ServerGuard::start();
    let addr = server.addr();
    let mut healthy = Healthy::connect(addr);
    let (tx, rx) = mpsc::channel();
    for t in 0..THREADS {
        let tx = tx.clone();
        thread::spawn(move || {
            let _ = tx.send(spray(addr, 0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1), PER_THREAD));
        });
    }
    drop(tx);
    let mut done = 0;
    let mut not_closed = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while done < THREADS {
        assert!(Instant::now() < deadline, "the garbage connections took over a minute");
        // The healthy pair keeps working while the garbage arrives.
        healthy.check();
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(n) => {
                done += 1;
                not_closed += n;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("a garbage thread panicked"),
        }
    }
    assert_eq!(not_closed, 0, "half-closed garbage connections the server left open");
    healthy.check();
    let mut fresh = Conn::connect(addr);
    fresh.echo(b"after the garbage");
    // Garbage may have registered functions whose names hold line breaks, so
    // `status` is not readable line by line any more; `version` is.
    let version = fresh.admin("version");
    assert_eq!(version, format!("OK gearframe-{}\n", env!("CARGO_PKG_VERSION")));
}
