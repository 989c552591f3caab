//! Stopping `gearframe server` for real: signals in the middle of a
//! pipelined background load with the persistent queue, and the graceful
//! stop that waits for the jobs left.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gearframe::proto::{Decoder, Frame, Magic, PacketType};

use crate::support::{RawConn, ServerProc, bg, eventually};

const LIMIT: Duration = Duration::from_secs(60);

/// Submits background jobs on one connection, writing batches while the
/// replies of earlier ones are read (up to `WINDOW` unanswered), until the
/// server closes it; the unique ids it got a JOB_CREATED for go to `acked`.
fn load(addr: SocketAddr, conn: usize, acked: &Mutex<Vec<String>>, count: &AtomicUsize) {
    const BATCH: usize = 50;
    const WINDOW: usize = 1000;
    let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else { return };
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.set_write_timeout(Some(LIMIT)).unwrap();
    // Sent and not answered yet, in submission order.
    let pending = Arc::new(Mutex::new(std::collections::VecDeque::<String>::new()));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mut s, pending, done) =
            (s.try_clone().unwrap(), Arc::clone(&pending), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut next = 0usize;
            while !done.load(Ordering::SeqCst) {
                if pending.lock().unwrap().len() >= WINDOW {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                let uniques: Vec<String> =
                    (next..next + BATCH).map(|i| format!("c{conn}-{i}")).collect();
                next += BATCH;
                let mut bytes = Vec::new();
                for u in &uniques {
                    bytes.extend(bg(b"stops", u.as_bytes(), b"payload").to_vec(Magic::Req));
                }
                pending.lock().unwrap().extend(uniques);
                if s.write_all(&bytes).is_err() {
                    return;
                }
            }
        })
    };
    let mut dec = Decoder::new(u32::MAX);
    let mut buf = vec![0u8; 64 << 10];
    let mut s = s;
    loop {
        // Replies come in submission order, one per submission.
        while let Ok(Some(Frame::Binary { kind, .. })) = dec.next_frame() {
            let Some(u) = pending.lock().unwrap().pop_front() else { break };
            if kind == PacketType::JobCreated {
                acked.lock().unwrap().push(u);
                count.fetch_add(1, Ordering::SeqCst);
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => dec.push(&buf[..n]),
        }
    }
    done.store(true, Ordering::SeqCst);
    let _ = s.shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
}

/// The unique ids of the jobs a server holds (`show unique jobs`).
fn held_uniques(addr: SocketAddr) -> BTreeSet<String> {
    let mut c = RawConn::connect(addr, "admin");
    c.send_line("show unique jobs");
    c.recv_admin_list()
        .into_iter()
        .map(|l| String::from_utf8_lossy(&l).trim_end().to_string())
        .filter(|l| l != ".")
        .collect()
}

fn assert_no_panic(log: &Path, what: &str) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(!text.contains("panicked"), "{what}: the server panicked:\n{text}");
}

/// SIGINT and SIGTERM at varying moments of a pipelined background load
/// from several connections, with the persistent queue written per job and
/// at the stop only: no panic, a clean exit, and every acknowledged job is
/// in the queue after a restart.
#[test]
fn signals_during_a_background_load_neither_panic_nor_lose_acknowledged_jobs() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..10u64 {
        let db = dir.path().join(format!("q{round}.db"));
        let log = dir.path().join(format!("server{round}.log"));
        let queue = format!("sqlite:{}", db.display());
        let mut args = vec!["--queue", queue.as_str()];
        if round % 3 == 2 {
            args.push("--store-queue-on-shutdown");
        }
        let mut server = ServerProc::start(&args, &log);
        let addr = server.addr();
        let acked = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let loaders: Vec<_> = (0..6)
            .map(|conn| {
                let (acked, count) = (Arc::clone(&acked), Arc::clone(&count));
                std::thread::spawn(move || load(addr, conn, &acked, &count))
            })
            .collect();
        eventually(LIMIT, "the first acknowledged jobs", || {
            (count.load(Ordering::SeqCst) > 0).then_some(())
        });
        // A different moment of the load each round.
        std::thread::sleep(Duration::from_millis(37 * (round % 7)));
        let sig = if round % 2 == 0 { "INT" } else { "TERM" };
        let status = server.signal(sig, LIMIT);
        for l in loaders {
            l.join().unwrap();
        }
        assert_no_panic(&log, &format!("round {round}, SIG{sig}"));
        assert!(status.success(), "round {round}: SIG{sig} ended the server with {status}");
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(said.contains("signal received: stopping"), "round {round}: {said}");
        let acked = acked.lock().unwrap().clone();
        assert!(!acked.is_empty());
        server.restart();
        let held = held_uniques(addr);
        let lost: Vec<&String> = acked.iter().filter(|u| !held.contains(*u)).collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} of {} acknowledged jobs missing after restart, first {:?}",
            lost.len(),
            acked.len(),
            lost.first()
        );
        server.terminate();
        assert_no_panic(&log, &format!("round {round}, after the restart"));
    }
}

/// A graceful stop with a job nobody serves: it says what it waits for,
/// again every few seconds, at the default log level; `status` and
/// `stopping` answer on new connections; a new submission gets an ERROR
/// naming the stop; a worker that connects drains the job and the server
/// then exits cleanly.
#[test]
fn a_graceful_stop_says_what_it_waits_for_and_lets_workers_drain_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let mut server = ServerProc::start(&[], &log);
    let addr = server.addr();
    let mut client = RawConn::connect(addr, "client");
    client.send(bg(b"nobody", b"u1", b"x"));
    let created = client.recv_packet();
    assert_eq!(created.kind, PacketType::JobCreated);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gearframe"))
        .args(["admin", "-s", &server.addr_string(), "stop-server", "--graceful"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("stopping once its jobs are done (1 left"), "{said}");
    let waiting = "graceful stop: waiting for 1 jobs: nobody (0 running, 1 queued)";
    let logged = |n: usize| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        (text.matches(waiting).count() >= n).then_some(())
    };
    eventually(LIMIT, "the graceful stop's first report", || logged(1));
    // Still there, and watchable from a new connection.
    assert!(server.exited().is_none(), "the server stopped with a job left");
    let mut admin = RawConn::connect(addr, "admin");
    admin.send_line("status");
    assert_eq!(admin.recv_admin_list(), [b"nobody\t1\t0\t0\n".to_vec(), b".\n".to_vec()]);
    admin.send_line("stopping");
    assert_eq!(admin.recv_line(), b"OK graceful jobs=1\r\n");
    // No new job is taken, on an old or a new connection.
    for c in [&mut client, &mut RawConn::connect(addr, "late client")] {
        c.send(bg(b"nobody", b"u2", b"y"));
        let p = c.recv_packet();
        assert_eq!(p.kind, PacketType::Error, "{p:?}");
        assert_eq!(p.arg_str(0), "SERVER_STOPPING");
    }
    // Repeated while it waits.
    eventually(LIMIT, "a second report of the graceful stop", || logged(2));
    // A worker may connect and drain the queue; then the server stops.
    let mut worker = RawConn::connect(addr, "worker");
    worker.send(gearframe::proto::Packet::CanDo { function: b"nobody" });
    worker.send(gearframe::proto::Packet::GrabJob);
    let assigned = worker.recv_packet();
    assert_eq!(assigned.kind, PacketType::JobAssign, "{assigned:?}");
    let handle = assigned.arg(0).to_vec();
    worker.send(gearframe::proto::Packet::WorkComplete { handle: &handle, data: b"" });
    let status =
        eventually(LIMIT, "the server's exit once its last job is done", || server.exited());
    assert!(status.success(), "{status}");
    assert_no_panic(&log, "graceful stop");
}
