//! The embedded server's lifecycle and its defences: signals, graceful
//! shutdown, slow readers, connection limits.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gearframe::conn::Connection;
use gearframe::proto::{Packet, PacketType, Priority, SubmitKind};
use gearframe::server::ServerConfig;

use crate::support::{
    ChildGuard, Opts, Ours, closed_by_peer, eventually, free_port, wait_listening,
};

const T: Duration = Duration::from_secs(10);

fn connect(addr: SocketAddr) -> Connection {
    Connection::connect(&addr.to_string(), T).unwrap()
}

fn deadline() -> Option<Instant> {
    Some(Instant::now() + T)
}

fn echo(c: &mut Connection, data: &[u8]) {
    c.send(&Packet::EchoReq { data }).unwrap();
    let p = c.recv(deadline()).unwrap();
    assert_eq!(p.kind, PacketType::EchoRes);
    assert_eq!(p.body, data);
}

fn submit(c: &mut Connection, function: &[u8], data: &[u8], background: bool) -> Vec<u8> {
    c.send(&Packet::Submit {
        kind: SubmitKind { priority: Priority::Normal, background },
        function,
        unique: b"",
        data,
    })
    .unwrap();
    let p = c.recv(deadline()).unwrap();
    assert_eq!(p.kind, PacketType::JobCreated, "{p:?}");
    p.body
}

fn admin(addr: SocketAddr, line: &str) -> String {
    let mut c = connect(addr);
    c.queue_bytes(format!("{line}\n").as_bytes());
    c.flush().unwrap();
    c.recv_line(deadline()).unwrap()
}

#[test]
fn sigterm_stops_the_server_at_once_and_exits_zero() {
    let port = free_port();
    // A polling window far longer than the test: readers still polling
    // after the last request must not delay the stop either.
    let child = Command::new(env!("CARGO_BIN_EXE_gearframe"))
        .args(["server", "-L", &format!("127.0.0.1:{port}"), "--busy-poll", "60s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(addr, T);
    // Idle connections and a queued job must not delay the stop.
    let mut c = connect(addr);
    submit(&mut c, b"f", b"x", true);
    let _idle = connect(addr);
    let started = Instant::now();
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let code = eventually(T, "server exit", || child.0.try_wait().unwrap());
    assert!(code.success(), "exit status {code:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "stop took {:?}", started.elapsed());
    assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err());
}

#[test]
fn a_bad_busy_poll_value_is_refused_naming_the_option() {
    let out = Command::new(env!("CARGO_BIN_EXE_gearframe"))
        .args(["server", "-L", "127.0.0.1:0", "--busy-poll", "fast"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--busy-poll") && err.contains("invalid duration"), "{err}");
}

#[test]
fn shutdown_graceful_takes_no_new_jobs_and_exits_when_the_last_job_is_done() {
    let server = Ours::start(&Opts::default());
    let addr = server.addr();
    let mut client = connect(addr);
    submit(&mut client, b"g", b"payload", true);
    let mut worker = connect(addr);
    worker.send(&Packet::CanDo { function: b"g" }).unwrap();
    echo(&mut worker, b"registered");

    assert_eq!(admin(addr, "shutdown graceful"), "OK");
    // Existing connections keep being served, new ones are accepted (for
    // workers and admin), and no new job is taken.
    echo(&mut client, b"still served");
    let mut late = connect(addr);
    echo(&mut late, b"accepted while stopping");
    late.send(&Packet::Submit {
        kind: SubmitKind { priority: Priority::Normal, background: true },
        function: b"g",
        unique: b"",
        data: b"late",
    })
    .unwrap();
    let refused = late.recv(deadline()).unwrap();
    assert_eq!(refused.kind, PacketType::Error);
    assert!(refused.body.starts_with(b"SERVER_STOPPING\0"), "{:?}", refused.body);

    let handle = server.into_handle();
    let (tx, rx) = mpsc::channel();
    let joiner = std::thread::spawn(move || {
        handle.join();
        tx.send(()).unwrap();
    });
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "stopped while a job was queued");

    worker.send(&Packet::GrabJob).unwrap();
    let p = worker.recv(deadline()).unwrap();
    assert_eq!(p.kind, PacketType::JobAssign);
    let handle_bytes = p.body.split(|&b| b == 0).next().unwrap().to_vec();
    worker.send(&Packet::WorkComplete { handle: &handle_bytes, data: b"done" }).unwrap();
    rx.recv_timeout(T).expect("server did not stop after its last job");
    joiner.join().unwrap();
}

#[test]
fn shutdown_command_stops_the_server() {
    let server = Ours::start(&Opts::default());
    let addr = server.addr();
    let _idle = connect(addr);
    assert_eq!(admin(addr, "shutdown"), "OK");
    let handle = server.into_handle();
    let (tx, rx) = mpsc::channel();
    let joiner = std::thread::spawn(move || {
        handle.join();
        tx.send(()).unwrap();
    });
    rx.recv_timeout(T).expect("server did not stop");
    joiner.join().unwrap();
}

#[test]
fn stop_with_many_open_connections_joins_every_thread_quickly() {
    let server = Ours::start(&Opts::default());
    let addr = server.addr();
    let mut conns: Vec<Connection> = (0..100).map(|_| connect(addr)).collect();
    for c in &mut conns {
        echo(c, b"up");
    }
    conns[0].send(&Packet::CanDo { function: b"f" }).unwrap();
    conns[0].send(&Packet::PreSleep).unwrap();
    let started = Instant::now();
    server.stop();
    assert!(started.elapsed() < Duration::from_secs(3), "stop took {:?}", started.elapsed());
    for c in &mut conns {
        let e = c.recv(deadline()).unwrap_err();
        assert!(!e.is_timeout(), "{e}");
    }
}

#[test]
fn a_client_that_stops_reading_is_disconnected_and_stalls_no_one() {
    let server = Ours::with_config(ServerConfig { max_outbox: 1 << 20, ..ServerConfig::default() });
    let addr = server.addr();
    let mut slow = connect(addr);
    let handle = submit(&mut slow, b"stream", b"", false);

    let mut worker = connect(addr);
    worker.send(&Packet::CanDo { function: b"stream" }).unwrap();
    worker.send(&Packet::GrabJob).unwrap();
    let p = worker.recv(deadline()).unwrap();
    assert_eq!(p.kind, PacketType::JobAssign);

    // 64 MiB of WORK_DATA for a client that never reads: far more than the
    // socket buffers and the 1 MiB outbox hold.
    let chunk = vec![b'x'; 64 << 10];
    let mut healthy = connect(addr);
    let started = Instant::now();
    for i in 0..1024 {
        worker.send(&Packet::WorkData { handle: &handle, data: &chunk }).unwrap();
        if i % 128 == 0 {
            echo(&mut healthy, b"alive");
        }
    }
    echo(&mut worker, b"worker not blocked");
    assert!(started.elapsed() < Duration::from_secs(20));

    // The slow client was cut off; reading drains what was sent, then ends.
    let mut raw = slow.shutdown_handle().unwrap();
    let mut received = 0;
    assert!(closed_by_peer(&mut raw, &mut received));
    assert!(received < 32 << 20, "the slow client was sent {received} bytes");
    // Its job keeps running for the worker, whose result is still accepted.
    worker.send(&Packet::WorkComplete { handle: &handle, data: b"" }).unwrap();
    echo(&mut worker, b"after complete");
    let status = {
        let mut c = connect(addr);
        c.queue_bytes(b"status\n");
        c.flush().unwrap();
        let mut lines = Vec::new();
        loop {
            let l = c.recv_line(deadline()).unwrap();
            if l == "." {
                break;
            }
            lines.push(l);
        }
        lines
    };
    assert_eq!(status, ["stream\t0\t0\t1"]);
}

#[test]
fn connections_over_the_limit_are_closed_on_accept() {
    let server = Ours::with_config(ServerConfig { max_connections: 3, ..ServerConfig::default() });
    let addr = server.addr();
    let mut kept: Vec<Connection> = (0..3).map(|_| connect(addr)).collect();
    for c in &mut kept {
        echo(c, b"in");
    }
    let mut extra = TcpStream::connect(addr).unwrap();
    extra.write_all(b"version\n").unwrap();
    let mut received = 0;
    assert!(closed_by_peer(&mut extra, &mut received));
    assert_eq!(received, 0, "a connection over the limit was answered");
    // Once one leaves, a new one is served.
    kept.pop();
    eventually(T, "a free connection slot", || {
        let mut c = connect(addr);
        c.send(&Packet::EchoReq { data: b"x" }).ok()?;
        c.recv(Some(Instant::now() + Duration::from_millis(500))).ok()
    });
    for c in &mut kept {
        echo(c, b"still in");
    }
}

#[test]
fn a_connection_idle_longer_than_the_accept_tick_is_still_served() {
    // The listener wakes accept() every second; its accepted sockets must
    // not keep that as their read timeout.
    let server = Ours::start(&Opts::default());
    let mut c = connect(server.addr());
    echo(&mut c, b"before");
    std::thread::sleep(Duration::from_millis(2500));
    echo(&mut c, b"after an idle while");
}

/// The reply to a background submission: the job handle, or the ERROR code.
fn try_submit(c: &mut Connection, data: &[u8]) -> Result<String, String> {
    c.send(&Packet::Submit {
        kind: SubmitKind { priority: Priority::Normal, background: true },
        function: b"f",
        unique: b"",
        data,
    })
    .unwrap();
    let p = c.recv(deadline()).unwrap();
    let body = String::from_utf8_lossy(&p.body).into_owned();
    match p.kind {
        PacketType::JobCreated => Ok(body),
        PacketType::Error => Err(body.split('\0').next().unwrap_or_default().to_string()),
        other => panic!("{other:?}: {body}"),
    }
}

#[test]
fn server_options_override_their_config_key_and_the_rest_keeps_the_file_value() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "server:\n  job_handle_prefix: H:file\n  max_queue: 1\n").unwrap();
    let config = config.to_str().unwrap();
    let log = dir.path().join("server.log");
    // (options, the prefix of handles, whether a second queued job fits)
    let cases: [(&[&str], &str, bool); 3] = [
        (&[], "H:file:", false),
        (&["--job-handle-prefix", "H:flag"], "H:flag:", false),
        (&["--max-queue", "0"], "H:file:", true),
    ];
    for (options, prefix, second_fits) in cases {
        let args: Vec<&str> = ["-c", config].iter().chain(options).copied().collect();
        let server = crate::support::ServerProc::start(&args, &log);
        let mut c = connect(server.addr());
        let handle = try_submit(&mut c, b"one").unwrap();
        assert!(handle.starts_with(prefix), "{options:?}: {handle}");
        let second = try_submit(&mut c, b"two");
        if second_fits {
            assert!(second.is_ok(), "{options:?}: {second:?}");
        } else {
            assert_eq!(second, Err("QUEUE_ERROR".to_string()), "{options:?}");
        }
    }
}
