//! The client library against the embedded server and gearmand, with a
//! small raw worker written on `gearframe::conn::Connection`.

use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, unbounded};
use gearframe::client::{Client, Error, Job, JobEvent, JobOutcome};
use gearframe::conn::{self, Connection};
use gearframe::proto::{Packet, PacketType, Priority};

use crate::support::{self, ChildGuard, Gearmand, Opts, Ours, eventually};

/// What the test worker reports and waits on.
#[derive(Clone)]
pub struct Ctl {
    /// Each job's payload as the worker takes it.
    pub seen: Sender<Vec<u8>>,
    /// A `hold` job waits for one message here.
    pub gate: Receiver<()>,
}

pub fn ctl() -> (Ctl, Receiver<Vec<u8>>, Sender<()>) {
    let (seen_tx, seen_rx) = unbounded();
    let (gate_tx, gate_rx) = unbounded();
    (Ctl { seen: seen_tx, gate: gate_rx }, seen_rx, gate_tx)
}

/// A worker thread on one connection: CAN_DO each function, then
/// GRAB_JOB_UNIQ / PRE_SLEEP / NOOP. It grabs again every 100 ms while
/// asleep, because gearmand sends no NOOP when an epoch job becomes due.
/// The behaviour comes from the function name:
/// `echo`, `reverse`, `fail`, `exception`, `events`, `record`, `hold`.
pub struct RawWorker {
    stop: Arc<AtomicBool>,
    socket: Option<TcpStream>,
    thread: Option<JoinHandle<()>>,
}

impl RawWorker {
    pub fn start(addr: &str, functions: &[&str], ctl: Ctl) -> RawWorker {
        let mut conn = Connection::connect(addr, Duration::from_secs(5)).expect("worker connects");
        for f in functions {
            conn.queue(&Packet::CanDo { function: f.as_bytes() }).unwrap();
        }
        conn.flush().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let socket = conn.shutdown_handle().ok();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let _ = work(conn, &flag, &ctl);
        });
        RawWorker { stop, socket, thread: Some(thread) }
    }
}

impl Drop for RawWorker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(s) = &self.socket {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn work(mut conn: Connection, stop: &AtomicBool, ctl: &Ctl) -> Result<(), conn::Error> {
    let tick = Duration::from_millis(100);
    while !stop.load(Ordering::SeqCst) {
        conn.send(&Packet::GrabJobUniq)?;
        let p = loop {
            let p = conn.recv(Some(Instant::now() + Duration::from_secs(10)))?;
            if p.kind != PacketType::Noop {
                break p;
            }
        };
        match p.kind {
            PacketType::NoJob => {
                conn.send(&Packet::PreSleep)?;
                match conn.recv(Some(Instant::now() + tick)) {
                    Ok(_) => {}
                    Err(e) if e.is_timeout() => {}
                    Err(e) => return Err(e),
                }
            }
            PacketType::JobAssignUniq => {
                let Ok(Packet::JobAssignUniq { handle, function, data, .. }) = p.packet() else {
                    panic!("bad JOB_ASSIGN_UNIQ");
                };
                run_job(&mut conn, handle, function, data, ctl)?;
            }
            other => panic!("worker got {other}"),
        }
    }
    Ok(())
}

fn run_job(
    conn: &mut Connection,
    handle: &[u8],
    function: &[u8],
    data: &[u8],
    ctl: &Ctl,
) -> Result<(), conn::Error> {
    let complete =
        |conn: &mut Connection, d: &[u8]| conn.send(&Packet::WorkComplete { handle, data: d });
    match function {
        b"echo" => complete(conn, data),
        b"reverse" => {
            let r: Vec<u8> = data.iter().rev().copied().collect();
            complete(conn, &r)
        }
        b"fail" => conn.send(&Packet::WorkFail { handle }),
        b"exception" => {
            let text = [b"boom: ".as_slice(), data].concat();
            conn.send(&Packet::WorkException { handle, data: &text })
        }
        b"events" => {
            conn.queue(&Packet::WorkData { handle, data: b"a" }).unwrap();
            conn.queue(&Packet::WorkWarning { handle, data: b"w" }).unwrap();
            conn.queue(&Packet::WorkStatus { handle, numerator: b"1", denominator: b"2" }).unwrap();
            conn.queue(&Packet::WorkData { handle, data: b"b" }).unwrap();
            conn.queue(&Packet::WorkComplete { handle, data: b"done" }).unwrap();
            conn.flush()
        }
        b"record" => {
            let _ = ctl.seen.send(data.to_vec());
            complete(conn, data)
        }
        b"hold" => {
            let _ = ctl.seen.send(data.to_vec());
            conn.send(&Packet::WorkStatus { handle, numerator: b"1", denominator: b"2" })?;
            let _ = ctl.gate.recv_timeout(Duration::from_secs(20));
            let r = [b"held:".as_slice(), data].concat();
            complete(conn, &r)
        }
        other => panic!("no behaviour for {}", String::from_utf8_lossy(other)),
    }
}

/// Runs `f` against the embedded server, then against gearmand when it is
/// installed.
fn on_both(f: impl Fn(&str, &str)) {
    let ours = Ours::start(&Opts::default());
    f("ours", &ours.addr().to_string());
    drop(ours);
    if let Some(g) = Gearmand::start(&Opts::default()) {
        f("gearmand", &g.addr().to_string());
    }
}

fn client(addr: &str) -> Client {
    Client::builder()
        .servers([addr])
        .connect_timeout(Duration::from_secs(2))
        .ack_timeout(Duration::from_secs(5))
        .job_timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn data_of(r: &gearframe::client::Result<JobOutcome>) -> Vec<u8> {
    match r {
        Ok(JobOutcome::Complete { data, .. }) => data.clone(),
        other => panic!("expected complete, got {other:?}"),
    }
}

#[test]
fn foreground_background_and_echo() {
    on_both(|name, addr| {
        let (c, _seen, _gate) = ctl();
        let _w = RawWorker::start(addr, &["reverse", "fail"], c);
        let cl = client(addr);
        assert_eq!(cl.echo(b"ping\0pong").unwrap(), b"ping\0pong", "{name}");
        assert_eq!(data_of(&cl.submit("reverse", "hello")), b"olleh", "{name}");
        let out = cl.submit("fail", "x").unwrap();
        assert!(matches!(out, JobOutcome::Failed { .. }), "{name}: {out:?}");
        let h = cl.submit_background("reverse", "bg").unwrap();
        assert!(!h.as_str().is_empty(), "{name}");
        assert_eq!(h.server(), addr);
    });
}

#[test]
fn priorities_are_served_in_order() {
    on_both(|name, addr| {
        let cl = client(addr);
        let order = [
            ("l1", Priority::Low),
            ("n1", Priority::Normal),
            ("h1", Priority::High),
            ("l2", Priority::Low),
            ("h2", Priority::High),
            ("n2", Priority::Normal),
        ];
        let expect: Vec<&[u8]> = vec![b"h1", b"h2", b"n1", b"n2", b"l1", b"l2"];
        // Background: queue everything, then start the worker.
        for (d, p) in order {
            cl.submit_background_job(&Job::new("record", d).priority(p)).unwrap();
        }
        let (c, seen, _gate) = ctl();
        let w = RawWorker::start(addr, &["record"], c);
        let got: Vec<Vec<u8>> =
            (0..6).map(|_| seen.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
        assert_eq!(got, expect, "{name} background");
        // The worker reports a job before completing it: wait for the last
        // completion, or the server requeues that job when the worker goes.
        eventually(Duration::from_secs(10), "background jobs completed", || {
            let mut a =
                gearframe::admin::AdminClient::connect(addr, Duration::from_secs(5)).ok()?;
            (a.function_status("record").ok()??.total == 0).then_some(())
        });
        drop(w);
        // Foreground, as one batch that waits while the worker is absent.
        let jobs: Vec<Job> = order
            .iter()
            .map(|(d, p)| Job::new("record", *d).priority(*p).unique(format!("fg-{d}")))
            .collect();
        std::thread::scope(|s| {
            let t = s.spawn(|| cl.batch(&jobs).run());
            for (d, _) in order {
                eventually(Duration::from_secs(10), "fg jobs queued", || {
                    cl.status_unique(&format!("fg-{d}")).unwrap().known.then_some(())
                });
            }
            let (c, seen, _gate) = ctl();
            let _w = RawWorker::start(addr, &["record"], c);
            let got: Vec<Vec<u8>> =
                (0..6).map(|_| seen.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
            assert_eq!(got, expect, "{name} foreground");
            let outs = t.join().unwrap();
            for (o, (d, _)) in outs.iter().zip(order) {
                assert_eq!(data_of(o), d.as_bytes(), "{name}");
            }
        });
    });
}

#[test]
fn unique_coalescing_runs_once_and_both_get_the_result() {
    on_both(|name, addr| {
        let (c, seen, gate) = ctl();
        let _w = RawWorker::start(addr, &["hold"], c);
        let cl = client(addr);
        let job = Job::new("hold", "x").unique("co-1");
        std::thread::scope(|s| {
            let a = s.spawn(|| cl.submit_job(&job));
            let b = s.spawn(|| cl.submit_job(&job));
            eventually(Duration::from_secs(10), "two clients attached", || {
                (cl.status_unique("co-1").unwrap().clients == Some(2)).then_some(())
            });
            gate.send(()).unwrap();
            assert_eq!(data_of(&a.join().unwrap()), b"held:x", "{name}");
            assert_eq!(data_of(&b.join().unwrap()), b"held:x", "{name}");
        });
        assert_eq!(seen.try_iter().count(), 1, "{name}: executions");
    });
}

#[test]
fn epoch_job_runs_at_its_time() {
    on_both(|name, addr| {
        let (c, seen, _gate) = ctl();
        let _w = RawWorker::start(addr, &["record"], c);
        let cl = client(addr);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let at = now + 2;
        let h = cl.submit_background_job(&Job::new("record", "later").at_unix(at)).unwrap();
        assert!(cl.status(&h).unwrap().known, "{name}");
        let got = seen.recv_timeout(Duration::from_secs(10)).unwrap();
        let ran = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(got, b"later");
        assert!(ran >= at, "{name}: ran at {ran}, due at {at}");
    });
}

#[test]
fn events_arrive_in_order() {
    on_both(|name, addr| {
        let (c, _seen, _gate) = ctl();
        let _w = RawWorker::start(addr, &["events"], c);
        let cl = client(addr);
        let mut events = Vec::new();
        let out = cl.submit_job_with(&Job::new("events", ""), |e| events.push(e.clone())).unwrap();
        assert_eq!(out.data(), Some(b"done".as_slice()), "{name}");
        assert!(matches!(events[0], JobEvent::Created(_)), "{name}: {events:?}");
        assert_eq!(
            events[1..],
            [
                JobEvent::Data(b"a".to_vec()),
                JobEvent::Warning(b"w".to_vec()),
                JobEvent::Status { numerator: 1, denominator: 2 },
                JobEvent::Data(b"b".to_vec()),
            ],
            "{name}"
        );
    });
}

#[test]
fn exceptions_on_and_off() {
    on_both(|name, addr| {
        let (c, _seen, _gate) = ctl();
        let _w = RawWorker::start(addr, &["exception"], c);
        let off = Client::builder().servers([addr]).exceptions(false).build().unwrap();
        let out = off.submit("exception", "x").unwrap();
        assert!(matches!(out, JobOutcome::Failed { .. }), "{name}: {out:?}");
        // The default asks for exceptions.
        let on = client(addr);
        let out = on.submit("exception", "x").unwrap();
        assert!(
            matches!(&out, JobOutcome::Exception { data, .. } if data == b"boom: x"),
            "{name}: {out:?}"
        );
        // A pooled connection keeps its option.
        let out = on.submit("exception", "y").unwrap();
        assert_eq!(out.name(), "exception", "{name}");
    });
}

#[test]
fn status_of_running_and_finished_jobs() {
    on_both(|name, addr| {
        let (c, seen, gate) = ctl();
        let _w = RawWorker::start(addr, &["hold"], c);
        let cl = client(addr);
        let h = cl.submit_background_job(&Job::new("hold", "s").unique("st-1")).unwrap();
        seen.recv_timeout(Duration::from_secs(10)).unwrap();
        let st = eventually(Duration::from_secs(10), "status 1/2", || {
            let st = cl.status(&h).unwrap();
            (st.numerator == 1).then_some(st)
        });
        assert!(st.known && st.running && st.denominator == 2, "{name}: {st:?}");
        let su = cl.status_unique("st-1").unwrap();
        assert!(su.known && su.running, "{name}: {su:?}");
        gate.send(()).unwrap();
        eventually(Duration::from_secs(10), "job finished", || {
            (!cl.status(&h).unwrap().known).then_some(())
        });
        assert!(!cl.status_unique("st-1").unwrap().known, "{name}");
    });
}

#[test]
fn pipelined_batch_of_10000() {
    on_both(|name, addr| {
        let (c, _seen, _gate) = ctl();
        let _w1 = RawWorker::start(addr, &["reverse"], c.clone());
        let _w2 = RawWorker::start(addr, &["reverse"], c);
        let cl = client(addr);
        let jobs: Vec<Job> = (0..10_000).map(|i| Job::new("reverse", format!("job-{i}"))).collect();
        let mut done = 0;
        let outs = cl.batch(&jobs).on_done(|_, _| done += 1).run();
        assert_eq!(done, 10_000, "{name}");
        for (i, o) in outs.iter().enumerate() {
            let want: Vec<u8> = format!("job-{i}").bytes().rev().collect();
            assert_eq!(data_of(o), want, "{name}: job {i}");
        }
        // Background batch: every job accepted.
        let bg: Vec<Job> =
            (0..10_000).map(|i| Job::new("nobody", format!("{i}")).background(true)).collect();
        let outs = cl.batch(&bg).run();
        assert!(outs.iter().all(|o| matches!(o, Ok(JobOutcome::Accepted { .. }))), "{name}");
    });
}

#[test]
fn duplicates_in_one_batch_coalesce_and_each_gets_the_result() {
    on_both(|name, addr| {
        let (c, seen, gate) = ctl();
        let _w = RawWorker::start(addr, &["hold"], c);
        let cl = client(addr);
        let jobs: Vec<Job> = (0..3).map(|_| Job::new("hold", "d").unique("dup-1")).collect();
        let mut events = 0;
        std::thread::scope(|s| {
            let t = s.spawn(|| {
                cl.batch(&jobs)
                    .on_event(|_, e| {
                        if matches!(e, JobEvent::Status { .. }) {
                            events += 1
                        }
                    })
                    .run()
            });
            seen.recv_timeout(Duration::from_secs(10)).unwrap();
            eventually(Duration::from_secs(10), "three attachments", || {
                (cl.status_unique("dup-1").unwrap().clients == Some(3)).then_some(())
            });
            gate.send(()).unwrap();
            for o in t.join().unwrap() {
                assert_eq!(data_of(&o), b"held:d", "{name}");
            }
        });
        assert!(events <= 3, "{name}: each job sees a status at most once: {events}");
        assert_eq!(seen.try_iter().count(), 0, "{name}: executed once");
    });
}

#[test]
fn no_server_fails_within_its_timeout_naming_the_servers() {
    let a = format!("127.0.0.1:{}", support::free_port());
    let b = format!("127.0.0.1:{}", support::free_port());
    let cl = Client::builder()
        .servers([&a, &b])
        .connect_timeout(Duration::from_millis(500))
        .retry_timeout(Duration::from_millis(300))
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .build()
        .unwrap();
    for bg in [false, true] {
        let t = Instant::now();
        let e = cl.submit_job(&Job::new("f", "x").background(bg)).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
        assert!(matches!(e, Error::Unreachable { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(&a) && msg.contains(&b) && msg.contains("function f"), "{msg}");
    }
    let e = cl.echo(b"x").unwrap_err();
    assert!(e.to_string().contains("connect"), "{e}");
}

#[test]
fn ack_timeout_names_the_phase() {
    // A listener that accepts and never answers.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let cl = Client::builder()
        .servers([&addr])
        .ack_timeout(Duration::from_millis(200))
        .retry_timeout(Duration::ZERO)
        .build()
        .unwrap();
    let t = Instant::now();
    let e = cl.submit("f", "x").unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5));
    let msg = e.to_string();
    assert!(msg.contains("phase ack") && msg.contains(&addr), "{msg}");
    let e = cl.submit_job(&Job::new("f", "x").timeout(Duration::from_millis(300))).unwrap_err();
    assert!(e.to_string().contains("ack"), "{e}");
    drop(l);
}

#[test]
fn result_timeout_names_function() {
    let ours = Ours::start(&Opts::default());
    let cl = client(&ours.addr().to_string());
    let t = Instant::now();
    let e =
        cl.submit_job(&Job::new("noworker", "x").timeout(Duration::from_millis(300))).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(3));
    let msg = e.to_string();
    assert!(
        msg.contains("phase result") && msg.contains("noworker") && msg.contains("H:"),
        "{msg}"
    );
}

/// Our server as a child process, so that it can be SIGKILLed.
fn our_child() -> (ChildGuard, String) {
    let port = support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_gearframe"))
        .args(["server", "-L", &addr])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    support::wait_listening(addr.parse().unwrap(), Duration::from_secs(10));
    (ChildGuard(child), addr)
}

fn failover(kill_first: impl FnOnce(), a: &str, b: &str) {
    let (c, _seen, _gate) = ctl();
    let workers: Vec<RawWorker> =
        [a, a, b, b].iter().map(|addr| RawWorker::start(addr, &["echo"], c.clone())).collect();
    let cl = crate::support::failover_client(&[a, b]);
    let n = 10_000;
    let jobs: Vec<Job> = (0..n).map(|i| Job::new("echo", format!("f-{i}"))).collect();
    let completed = AtomicUsize::new(0);
    let resubmitted = AtomicUsize::new(0);
    let mut kill = Some(kill_first);
    let outs = cl
        .batch(&jobs)
        .on_event(|_, e| {
            if matches!(e, JobEvent::Resubmitted { .. }) {
                resubmitted.fetch_add(1, Ordering::Relaxed);
            }
        })
        .on_done(|_, r| {
            if r.is_ok() && completed.fetch_add(1, Ordering::Relaxed) == 2_000 {
                if let Some(k) = kill.take() {
                    k();
                }
            }
        })
        .run();
    assert!(kill.is_none(), "the server was killed mid-batch");
    let mut ok = 0;
    for (i, o) in outs.iter().enumerate() {
        assert_eq!(data_of(o), format!("f-{i}").as_bytes(), "job {i}");
        ok += 1;
    }
    assert_eq!(ok, n);
    assert!(
        resubmitted.load(Ordering::Relaxed) > 0,
        "some jobs were in flight on the killed server"
    );
    drop(workers);
}

#[test]
fn failover_when_our_server_is_killed_mid_batch() {
    let (mut first, a) = our_child();
    let (_second, b) = our_child();
    failover(
        || {
            let _ = first.0.kill();
            let _ = first.0.wait();
        },
        &a,
        &b,
    );
}

#[test]
fn failover_when_gearmand_is_killed_mid_batch() {
    let Some(first) = Gearmand::start(&Opts::default()) else { return };
    let Some(second) = Gearmand::start(&Opts::default()) else { return };
    let (a, b) = (first.addr().to_string(), second.addr().to_string());
    failover(
        || {
            let pid = first.pid().to_string();
            let _ = std::process::Command::new("kill").args(["-9", &pid]).status();
        },
        &a,
        &b,
    );
}
