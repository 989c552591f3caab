//! A 12-byte header declaring a 4 GiB body costs `gearframe submit` and
//! `gearframe worker` no memory: the real binaries against a fake server
//! that answers with such a header and then trickles a few bytes, compared
//! with the same commands against a real server.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gearframe::proto::PacketType;

use crate::support::{ChildGuard, Ours, RawConn, eventually};

/// Bytes of the declared body sent after the header, in chunks.
const TRICKLE: usize = 4096;
const CHUNK: usize = 512;
/// Peak resident memory a command may reach: far below the 4 GiB declared.
const FLAT_RSS_KIB: u64 = 64 << 10;
/// Virtual memory a command may have beyond its baseline: a reservation of
/// the declared 4 GiB would show here even where no page of it is touched.
const FLAT_VIRTUAL_KIB: u64 = 1 << 20;

/// A `/proc/PID/status` field in KiB, such as `VmHWM`.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// Peak resident and peak virtual memory of a live process, in KiB.
fn peaks(pid: u32) -> Option<(u64, u64)> {
    Some((status_kib(pid, "VmHWM")?, status_kib(pid, "VmPeak")?))
}

/// What the fake server counts.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    /// Bogus headers written, each followed by its trickle.
    headers: AtomicUsize,
    /// Trickles written to the end.
    trickled: AtomicUsize,
}

/// A fake job server on a loopback port: it answers OPTION_REQ, and answers
/// a submission, a grab or a PRE_SLEEP with a response header declaring a
/// body of 4 GiB - 1, then [`TRICKLE`] bytes of it, then holds the
/// connection until the peer closes it. Stopped and joined on drop.
struct FakeServer {
    addr: SocketAddr,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeServer {
    fn start() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(&seen), Arc::clone(&stop));
        let acceptor = std::thread::spawn(move || {
            let mut conns: Vec<JoinHandle<()>> = Vec::new();
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        s.connections.fetch_add(1, Ordering::SeqCst);
                        let (s, st) = (Arc::clone(&s), Arc::clone(&st));
                        conns.push(std::thread::spawn(move || serve(stream, &s, &st)));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        FakeServer { addr, seen, stop, acceptor: Some(acceptor) }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

/// Reads whole request packets and answers them; returns when the peer
/// closes the connection or the server stops.
fn serve(mut s: TcpStream, seen: &Seen, stop: &AtomicBool) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
        while buf.len() >= 12 {
            let size = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
            if buf.len() < 12 + size {
                break;
            }
            let kind = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
            let body = buf[12..12 + size].to_vec();
            buf.drain(..12 + size);
            let answer = match PacketType::from_u32(kind) {
                Some(PacketType::OptionReq) => {
                    let reply = crate::support::raw_packet(b"\0RES", 27, &body);
                    if s.write_all(&reply).is_err() {
                        return;
                    }
                    continue;
                }
                Some(
                    PacketType::SubmitJob
                    | PacketType::SubmitJobBg
                    | PacketType::SubmitJobHigh
                    | PacketType::SubmitJobHighBg
                    | PacketType::SubmitJobLow
                    | PacketType::SubmitJobLowBg,
                ) => PacketType::JobCreated,
                Some(
                    PacketType::GrabJob
                    | PacketType::GrabJobUniq
                    | PacketType::GrabJobAll
                    | PacketType::PreSleep,
                ) => PacketType::JobAssign,
                _ => continue,
            };
            if bogus(&mut s, answer, seen, stop).is_err() {
                return;
            }
        }
    }
}

/// Writes a header of `kind` declaring 4 GiB - 1 bytes, then a few of them.
fn bogus(s: &mut TcpStream, kind: PacketType, seen: &Seen, stop: &AtomicBool) -> Result<(), ()> {
    let mut h = b"\0RES".to_vec();
    h.extend_from_slice(&(kind as u32).to_be_bytes());
    h.extend_from_slice(&u32::MAX.to_be_bytes());
    s.write_all(&h).map_err(drop)?;
    seen.headers.fetch_add(1, Ordering::SeqCst);
    for _ in 0..TRICKLE / CHUNK {
        if stop.load(Ordering::SeqCst) {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(5));
        s.write_all(&[b'x'; CHUNK]).map_err(drop)?;
    }
    seen.trickled.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// A config file with short client limits, so that a submission that gets
/// no answer ends within seconds.
fn config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(&path, "client:\n  retry_timeout: 3s\n  ack_timeout: 2s\n").unwrap();
    path
}

/// `gearframe -c CONFIG ARGS...` with stderr written to `log`.
fn gearframe(config: &Path, args: &[&str], log: &Path) -> ChildGuard {
    let child: Child = Command::new(env!("CARGO_BIN_EXE_gearframe"))
        .arg("-c")
        .arg(config)
        .args(args)
        .env_remove("GEARMAN_SERVERS")
        .env_remove("GEARFRAME_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("cannot start gearframe");
    ChildGuard(child)
}

/// Samples the peaks of `child` until it exits; returns its exit code
/// (`None`: a signal, such as an abort) and the highest peaks seen.
fn run_sampling(child: &mut ChildGuard, limit: Duration) -> (Option<i32>, (u64, u64)) {
    let deadline = Instant::now() + limit;
    let mut top = (0, 0);
    loop {
        if let Some((rss, virt)) = peaks(child.id()) {
            top = (top.0.max(rss), top.1.max(virt));
        }
        if let Some(status) = child.0.try_wait().unwrap() {
            return (status.code(), top);
        }
        assert!(Instant::now() < deadline, "the command did not end within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the server at `addr` has `n` jobs of `function` queued.
fn wait_queued(addr: SocketAddr, function: &str, n: usize) {
    let mut admin = RawConn::connect(addr, "admin");
    eventually(Duration::from_secs(30), "the job to be queued", || {
        admin.send_line("status");
        let rows = admin.recv_admin_list();
        rows.iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .any(|r| {
                let f: Vec<&str> = r.split('\t').collect();
                f.first() == Some(&function) && f.get(1).and_then(|q| q.parse().ok()) >= Some(n)
            })
            .then_some(())
    });
}

/// The peaks of `gearframe submit` waiting for a job no worker takes on a
/// real server: its memory with a connection, a job and nothing bogus.
fn submit_baseline(dir: &Path) -> (u64, u64) {
    let ours = Ours::with_config(gearframe::server::ServerConfig::default());
    let addr = ours.addr().to_string();
    let log = dir.join("baseline-submit.log");
    let args = ["submit", "-s", &addr, "--timeout", "60s", "-f", "nobody", "data"];
    let child = gearframe(&config(dir), &args, &log);
    wait_queued(ours.addr(), "nobody", 1);
    peaks(child.id()).expect("the baseline submit is alive")
}

#[test]
fn a_4_gib_header_to_submit_is_a_protocol_error_naming_the_server_and_costs_no_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (base_rss, base_virt) = submit_baseline(dir.path());
    let fake = FakeServer::start();
    let addr = fake.addr.to_string();
    let log = dir.path().join("submit.log");
    let args = ["submit", "-s", &addr, "--timeout", "20s", "-f", "f", "data"];
    let mut child = gearframe(&config(dir.path()), &args, &log);
    let (code, (rss, virt)) = run_sampling(&mut child, Duration::from_secs(60));
    let stderr = std::fs::read_to_string(&log).unwrap();
    println!("submit: VmHWM {rss} KiB VmPeak {virt} KiB; baseline {base_rss} KiB, {base_virt} KiB");
    // An exit status, not a signal (an abort on a failed allocation).
    assert_eq!(code, Some(2), "{stderr}");
    assert!(fake.seen.headers.load(Ordering::SeqCst) >= 1, "no bogus header was sent");
    let line = stderr.lines().find(|l| l.starts_with("gearframe: error:")).unwrap_or_default();
    assert!(line.contains("protocol error") && line.contains(&addr), "{stderr}");
    assert!(line.contains("over the maximum of 67108864"), "{stderr}");
    assert!(rss < FLAT_RSS_KIB && rss < base_rss + (32 << 10), "VmHWM {rss} KiB");
    assert!(virt < base_virt + FLAT_VIRTUAL_KIB, "VmPeak {virt} KiB, baseline {base_virt} KiB");
}

/// `gearframe worker -t 1 echo` on `addr`, with any extra arguments.
fn worker(dir: &Path, addr: &str, extra: &[&str], log: &Path) -> ChildGuard {
    let mut args = vec!["worker", "-s", addr, "-t", "1"];
    args.extend_from_slice(extra);
    args.push("echo");
    gearframe(&config(dir), &args, log)
}

/// The peaks of a worker that has registered and waits on a real server.
fn worker_baseline(dir: &Path) -> (u64, u64) {
    let ours = Ours::with_config(gearframe::server::ServerConfig::default());
    let log = dir.join("baseline-worker.log");
    let child = worker(dir, &ours.addr().to_string(), &[], &log);
    // A job it ran: the worker is connected, registered and past one job.
    let client =
        gearframe::client::Client::builder().servers([ours.addr().to_string()]).build().unwrap();
    let out = client.submit("echo", "ping").unwrap();
    assert_eq!(out.data(), Some(&b"ping"[..]));
    peaks(child.id()).expect("the baseline worker is alive")
}

#[test]
fn a_worker_logs_a_4_gib_header_as_a_protocol_error_reconnects_and_stays_flat() {
    let dir = tempfile::tempdir().unwrap();
    let (base_rss, base_virt) = worker_baseline(dir.path());
    let fake = FakeServer::start();
    let addr = fake.addr.to_string();
    let log = dir.path().join("worker.log");
    let mut child = worker(dir.path(), &addr, &[], &log);
    eventually(Duration::from_secs(60), "three bogus headers to the worker", || {
        (fake.seen.headers.load(Ordering::SeqCst) >= 3).then_some(())
    });
    eventually(Duration::from_secs(60), "the worker to connect again", || {
        (fake.seen.connections.load(Ordering::SeqCst) >= 3).then_some(())
    });
    let (rss, virt) = peaks(child.id()).expect("the worker is alive");
    println!("worker: VmHWM {rss} KiB VmPeak {virt} KiB; baseline {base_rss} KiB, {base_virt} KiB");
    assert!(child.0.try_wait().unwrap().is_none(), "the worker ended");
    assert!(rss < FLAT_RSS_KIB && rss < base_rss + (32 << 10), "VmHWM {rss} KiB");
    assert!(virt < base_virt + FLAT_VIRTUAL_KIB, "VmPeak {virt} KiB, baseline {base_virt} KiB");
    let stderr = eventually(Duration::from_secs(30), "the worker to log the error", || {
        let s = std::fs::read_to_string(&log).ok()?;
        s.contains("over the maximum").then_some(s)
    });
    let line = stderr.lines().find(|l| l.contains("over the maximum")).unwrap();
    assert!(line.contains(&format!("server={addr}")) && line.contains("reconnecting"), "{line}");
}

#[test]
fn under_a_raised_limit_a_4_gib_body_is_buffered_only_as_it_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let (base_rss, base_virt) = worker_baseline(dir.path());
    let fake = FakeServer::start();
    let addr = fake.addr.to_string();
    let log = dir.path().join("worker.log");
    let max = u32::MAX.to_string();
    let child = worker(dir.path(), &addr, &["--max-packet-size", &max], &log);
    // The header passes the limit: the worker waits for the rest of the body.
    eventually(Duration::from_secs(60), "a whole trickle to the worker", || {
        (fake.seen.trickled.load(Ordering::SeqCst) >= 1).then_some(())
    });
    let (rss, virt) = peaks(child.id()).expect("the worker is alive");
    println!("raised: VmHWM {rss} KiB VmPeak {virt} KiB; baseline {base_rss} KiB, {base_virt} KiB");
    assert_eq!(fake.seen.connections.load(Ordering::SeqCst), 1, "the worker reconnected");
    assert!(rss < FLAT_RSS_KIB && rss < base_rss + (32 << 10), "VmHWM {rss} KiB");
    assert!(virt < base_virt + FLAT_VIRTUAL_KIB, "VmPeak {virt} KiB, baseline {base_virt} KiB");
}

#[test]
fn the_client_limit_refuses_a_larger_job_before_sending_it() {
    let dir = tempfile::tempdir().unwrap();
    let ours = Ours::with_config(gearframe::server::ServerConfig::default());
    let addr = ours.addr().to_string();
    let payload = "x".repeat(2000);
    let keyed = dir.path().join("keyed.yaml");
    std::fs::write(&keyed, "client:\n  max_packet_size: 1000\n").unwrap();
    // The flag, then the config key: one setting.
    let runs: [(std::path::PathBuf, Vec<&str>); 2] =
        [(config(dir.path()), vec!["--max-packet-size", "1000"]), (keyed, vec![])];
    for (cfg, extra) in &runs {
        let log = dir.path().join("limit.log");
        let mut args = vec!["submit", "-s", &addr];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-f", "f", &payload]);
        let mut child = gearframe(cfg, &args, &log);
        let (code, _) = run_sampling(&mut child, Duration::from_secs(60));
        let stderr = std::fs::read_to_string(&log).unwrap();
        assert_eq!(code, Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains("ARGUMENT_TOO_LARGE") && stderr.contains("1000 bytes"), "{stderr}");
    }
    // Nothing reached the server: no job was ever queued for `f`.
    let mut admin = RawConn::connect(ours.addr(), "admin");
    admin.send_line("status");
    let rows = admin.recv_admin_list();
    assert!(!rows.iter().any(|r| r.starts_with(b"f\t")), "{rows:?}");
    // Under the limit the same job goes through to the server.
    let log = dir.path().join("small.log");
    let args = ["submit", "-s", &addr, "--max-packet-size", "1000", "-b", "-f", "f", "small"];
    let mut child = gearframe(&config(dir.path()), &args, &log);
    let (code, _) = run_sampling(&mut child, Duration::from_secs(60));
    assert_eq!(code, Some(0), "{}", std::fs::read_to_string(&log).unwrap());
    wait_queued(ours.addr(), "f", 1);
}
