//! Memory and connection time under abuse: partial packets, slow senders,
//! bogus headers from a server.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gearframe::proto::{Packet, PacketType};
use gearframe::server::ServerConfig;

use crate::support::{ChildGuard, Ours, RawConn, eventually, free_port, wait_listening};

/// A `/proc/PID/status` field in KiB, such as `VmRSS`.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()
}

fn header(magic: &[u8; 4], kind: PacketType, size: u32) -> Vec<u8> {
    let mut h = magic.to_vec();
    h.extend_from_slice(&(kind as u32).to_be_bytes());
    h.extend_from_slice(&size.to_be_bytes());
    h
}

/// Starts `gearframe server` as a child process on a free loopback port.
fn server_child(args: &[&str]) -> (ChildGuard, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_gearframe"))
        .arg("server")
        .arg("-L")
        .arg(addr.to_string())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start gearframe server");
    let child = ChildGuard(child);
    wait_listening(addr, Duration::from_secs(20));
    (child, addr)
}

/// One slow uploader of a large declared body.
struct Uploader {
    stream: TcpStream,
    received: Vec<u8>,
    open: bool,
}

impl Uploader {
    /// Reads what the server sent without blocking; notes a close.
    fn poll(&mut self) {
        self.stream.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.open = false;
                    break;
                }
                Ok(n) => self.received.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.open = false;
                    break;
                }
            }
        }
        self.stream.set_nonblocking(false).unwrap();
    }
}

#[test]
fn partial_packets_past_max_buffered_bytes_get_server_busy_and_memory_stays_bounded() {
    const CAP: u64 = 8 << 20;
    const CONNS: usize = 60;
    const PER_CONN: usize = 1 << 20;
    const CHUNK: usize = 16 << 10;
    let cap = CAP.to_string();
    let (server, addr) =
        server_child(&["--max-buffered-bytes", &cap, "--read-timeout", "5m", "--busy-poll", "0"]);
    let pid = server.id();
    let baseline = eventually(Duration::from_secs(10), "server RSS", || status_kib(pid, "VmRSS"));
    let mut ups: Vec<Uploader> = (0..CONNS)
        .map(|_| {
            let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
            stream.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
            Uploader { stream, received: Vec::new(), open: true }
        })
        .collect();
    let chunk = vec![b'x'; CHUNK];
    let mut peak = baseline;
    for up in &mut ups {
        if up.stream.write_all(&header(b"\0REQ", PacketType::SubmitJob, 60 << 20)).is_err() {
            up.open = false;
        }
    }
    for _round in 0..PER_CONN / CHUNK {
        for up in ups.iter_mut().filter(|u| u.open) {
            if up.stream.write_all(&chunk).is_err() {
                up.open = false;
            }
        }
        for up in &mut ups {
            up.poll();
        }
        peak = peak.max(status_kib(pid, "VmRSS").unwrap_or(0));
        // Slowly: a pause between rounds.
        std::thread::sleep(Duration::from_millis(5));
    }
    for up in &mut ups {
        up.poll();
    }
    let busy = ups.iter().filter(|u| !u.open).count();
    assert!(busy > 0, "no connection was closed although {CONNS} x {PER_CONN} bytes pass {CAP}");
    for up in ups.iter().filter(|u| !u.open && !u.received.is_empty()) {
        let text = String::from_utf8_lossy(&up.received);
        assert!(text.contains("SERVER_BUSY"), "a closed uploader got {text:?}");
    }
    assert!(
        ups.iter().any(|u| u.received.windows(11).any(|w| w == b"SERVER_BUSY")),
        "no closed uploader received ERROR SERVER_BUSY"
    );
    let margin = 24 << 10; // KiB: threads, read buffers, allocator slack
    assert!(
        peak <= baseline + CAP / 1024 + margin,
        "server RSS peaked at {peak} KiB from {baseline} KiB with a cap of {} KiB",
        CAP / 1024
    );
    // The server still serves a new client while the rest hold their share.
    let mut c = RawConn::connect(addr, "client");
    c.send(Packet::EchoReq { data: b"still here" });
    let p = c.recv_packet();
    assert_eq!(p.kind, PacketType::EchoRes, "got {p}");
    assert_eq!(p.arg(0), b"still here");
}

#[test]
fn read_timeout_closes_stalled_frames_but_keeps_sleeping_workers() {
    let server = Ours::with_config(ServerConfig {
        read_timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    });
    let addr = server.addr();
    let mut worker = RawConn::connect(addr, "worker");
    worker.send(Packet::CanDo { function: b"slow" });
    worker.send(Packet::PreSleep);
    let mut partial = RawConn::connect(addr, "partial header");
    partial.send_bytes(b"\0RE");
    let mut line = RawConn::connect(addr, "partial line");
    line.send_bytes(b"stat");
    let started = Instant::now();
    let got = partial.expect_closed(Duration::from_secs(30));
    assert!(String::from_utf8_lossy(&got).contains("READ_TIMEOUT"), "got {got:?}");
    line.expect_closed(Duration::from_secs(30));
    // A trickle does not extend the deadline: it is per frame, not per read.
    let mut trickle = TcpStream::connect(addr).unwrap();
    trickle.write_all(&header(b"\0REQ", PacketType::EchoReq, 1000)).unwrap();
    let closed = eventually(Duration::from_secs(30), "the trickle to be closed", || {
        std::thread::sleep(Duration::from_millis(100));
        trickle.write_all(b"x").err()
    });
    drop(closed);
    // The worker has been silent for longer than the timeout and stays.
    while started.elapsed() < Duration::from_millis(2500) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut client = RawConn::connect(addr, "client");
    client.send(crate::support::fg(b"slow", b"", b"job"));
    assert_eq!(client.recv_packet().kind, PacketType::JobCreated);
    assert_eq!(worker.recv_packet().kind, PacketType::Noop);
    worker.send(Packet::GrabJob);
    let p = worker.recv_packet();
    assert_eq!(p.kind, PacketType::JobAssign, "got {p}");
}

/// A fake server answering every connection with a header that declares a
/// body of 4 GiB - 1 and a few bytes of it, then holding the connection.
/// Returns the listener's address and a count of connections seen.
fn bogus_server() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&seen);
    // Ends with the test process; holds the connections it accepted.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
            let mut bogus = header(b"\0RES", PacketType::JobAssign, u32::MAX);
            bogus.extend_from_slice(&[b'x'; 4096]);
            let _ = s.write_all(&bogus);
            held.push(s);
        }
    });
    (addr, seen)
}

#[test]
fn a_4_gib_header_from_a_server_leaves_client_and_worker_memory_flat() {
    use std::sync::atomic::Ordering;
    let (addr, seen) = bogus_server();
    // A client errors out with one line.
    let out = Command::new(env!("CARGO_BIN_EXE_gearframe"))
        .args(["submit", "-s", &addr.to_string(), "--timeout", "30s", "-f", "f", "data"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // An exit status, not a signal (an abort on a failed allocation).
    assert!(
        out.status.code().is_some_and(|c| c != 0),
        "submit ended with {:?}: {stderr}",
        out.status
    );
    assert!(stderr.contains("over the maximum"), "stderr: {stderr}");
    // A worker drops the connection and connects again, its memory flat.
    let worker = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_gearframe"))
            .args(["worker", "-s", &addr.to_string(), "-t", "1", "echo"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let before = seen.load(Ordering::SeqCst);
    eventually(Duration::from_secs(60), "the worker to connect again", || {
        (seen.load(Ordering::SeqCst) >= before + 3).then_some(())
    });
    let rss = status_kib(worker.id(), "VmHWM").expect("worker status");
    assert!(rss < 64 << 10, "the worker's peak RSS is {rss} KiB after 4 GiB headers");
}

/// Reads one packet with a 12-byte header from `s`.
fn read_packet(s: &mut TcpStream) -> (u32, Vec<u8>) {
    let mut h = [0u8; 12];
    s.read_exact(&mut h).unwrap();
    let kind = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let size = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
    let mut body = vec![0u8; size];
    s.read_exact(&mut body).unwrap();
    (kind, body)
}

#[test]
fn a_50_mb_job_peaks_under_three_times_its_size_and_its_memory_is_returned() {
    const SIZE: usize = 50_000_000;
    let (server, addr) = server_child(&[]);
    let pid = server.id();
    let baseline = eventually(Duration::from_secs(10), "server RSS", || status_kib(pid, "VmRSS"));
    let connect = || {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        s
    };
    let mut worker = connect();
    worker
        .write_all(&Packet::CanDo { function: b"big" }.to_vec(gearframe::proto::Magic::Req))
        .unwrap();
    let mut client = connect();
    let data = vec![b'x'; SIZE];
    let submit = crate::support::fg(b"big", b"", &data).to_vec(gearframe::proto::Magic::Req);
    client.write_all(&submit).unwrap();
    drop(submit);
    let (kind, _) = read_packet(&mut client);
    assert_eq!(kind, PacketType::JobCreated as u32);
    worker.write_all(&Packet::GrabJob.to_vec(gearframe::proto::Magic::Req)).unwrap();
    let (kind, body) = read_packet(&mut worker);
    assert_eq!(kind, PacketType::JobAssign as u32);
    let handle = body.split(|&b| b == 0).next().unwrap().to_vec();
    assert_eq!(body.len(), handle.len() + 1 + 3 + 1 + SIZE);
    drop(body);
    let done = Packet::WorkComplete { handle: &handle, data: &data };
    worker.write_all(&done.to_vec(gearframe::proto::Magic::Req)).unwrap();
    let (kind, body) = read_packet(&mut client);
    assert_eq!(kind, PacketType::WorkComplete as u32);
    assert_eq!(body.len(), handle.len() + 1 + SIZE);
    let peak = status_kib(pid, "VmHWM").unwrap();
    let grown = peak.saturating_sub(baseline);
    assert!(grown < 3 * SIZE as u64 / 1024, "peak {peak} KiB from {baseline} KiB for {SIZE} bytes");
    // The connections stay open and idle: their buffers are given back.
    eventually(Duration::from_secs(30), "the server's memory to be returned", || {
        let rss = status_kib(pid, "VmRSS")?;
        (rss < baseline + (SIZE as u64 / 1024) / 2).then_some(())
    });
}
