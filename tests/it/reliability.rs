//! Faults injected for real, with every job counted end to end: worker
//! processes and servers killed with SIGKILL, a failover between two
//! servers on the persistent queue, thousands of idle connections, a peer
//! that never reads, every limit, the persistent queue across restarts, and
//! a fuzz loop over the server's connection handling.
//!
//! Servers run as `gearframe server` child processes (so that they can be
//! killed and their memory measured), on ephemeral loopback ports.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gearframe::client::{Client, Job, JobOutcome};
use gearframe::conn::Connection;
use gearframe::proto::{Packet, PacketType, Priority, SubmitKind};
use gearframe::server::ServerConfig;
use gearframe::worker::{Job as WorkJob, JobContext, Worker};

use crate::support::{Ours, ServerProc, bg, closed_by_peer, eventually, fg};

const T: Duration = Duration::from_secs(10);

fn deadline() -> Option<Instant> {
    Some(Instant::now() + T)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A child process killed and reaped on drop.
struct Proc(Option<Child>);

impl Proc {
    fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ----- protocol helpers -------------------------------------------------

fn connect(addr: &str) -> Connection {
    Connection::connect(addr, T).unwrap()
}

/// Submits and returns the JOB_CREATED handle; panics on anything else.
fn submit_ok(c: &mut Connection, p: &Packet<'_>) -> Vec<u8> {
    c.send(p).unwrap();
    let r = c.recv(deadline()).unwrap();
    assert_eq!(r.kind, PacketType::JobCreated, "{r:?}");
    r.body
}

/// Submits and returns the ERROR code and text; panics on anything else.
fn submit_err(c: &mut Connection, p: &Packet<'_>) -> (String, String) {
    c.send(p).unwrap();
    let r = c.recv(deadline()).unwrap();
    assert_eq!(r.kind, PacketType::Error, "{r:?}");
    let Ok(Packet::Error { code, text }) = r.packet() else { panic!("bad ERROR {r:?}") };
    (String::from_utf8_lossy(code).into(), String::from_utf8_lossy(text).into())
}

fn echo(c: &mut Connection, data: &[u8]) {
    c.send(&Packet::EchoReq { data }).unwrap();
    let p = c.recv(deadline()).unwrap();
    assert_eq!((p.kind, p.body.as_slice()), (PacketType::EchoRes, data));
}

/// One admin command; its reply lines (a list up to its `.` line).
fn admin(addr: &str, line: &str, list: bool) -> Vec<String> {
    let mut c = connect(addr);
    admin_on(&mut c, line, list)
}

fn admin_on(c: &mut Connection, line: &str, list: bool) -> Vec<String> {
    crate::support::admin_on(c, line, list, T)
}

/// `status` as function → (total, running, workers).
fn status(addr: &str) -> BTreeMap<String, (u64, u64, u64)> {
    admin(addr, "status", true)
        .iter()
        .filter(|l| *l != ".")
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (
                f[0].to_string(),
                (f[1].parse().unwrap(), f[2].parse().unwrap(), f[3].parse().unwrap()),
            )
        })
        .collect()
}

/// Jobs queued or running for `function` (0 when the server does not know it).
fn total(addr: &str, function: &str) -> u64 {
    status(addr).get(function).map_or(0, |s| s.0)
}

/// A worker on one connection that takes one job when woken.
fn grab(c: &mut Connection) -> Option<(Vec<u8>, Vec<u8>)> {
    c.send(&Packet::GrabJob).unwrap();
    loop {
        let p = c.recv(deadline()).unwrap();
        match p.kind {
            PacketType::Noop => continue,
            PacketType::NoJob => return None,
            PacketType::JobAssign => {
                let Ok(Packet::JobAssign { handle, data, .. }) = p.packet() else { panic!() };
                return Some((handle.to_vec(), data.to_vec()));
            }
            other => panic!("worker got {other}"),
        }
    }
}

/// Counts executions per payload.
#[derive(Clone, Default)]
struct Counter(Arc<Mutex<HashMap<Vec<u8>, u32>>>);

impl Counter {
    fn add(&self, payload: &[u8]) {
        *self.0.lock().unwrap().entry(payload.to_vec()).or_insert(0) += 1;
    }

    fn snapshot(&self) -> HashMap<Vec<u8>, u32> {
        self.0.lock().unwrap().clone()
    }

    fn runs(&self) -> usize {
        self.0.lock().unwrap().values().map(|&n| n as usize).sum()
    }
}

/// A library worker counting every execution of `function` (result: the
/// payload), reconnecting quickly after its server went away.
fn counting_worker(
    servers: &[String],
    function: &str,
    threads: usize,
    counter: &Counter,
) -> Worker {
    let c = counter.clone();
    Worker::builder()
        .servers(servers)
        .threads(threads)
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .sleep_timeout(Duration::from_secs(1))
        .register(function, move |job: &WorkJob, _: &mut JobContext<'_>| {
            c.add(job.payload());
            Ok(job.payload().to_vec())
        })
        .build()
        .unwrap()
}

// ----- worker processes killed mid-job ----------------------------------

/// Process groups of hung shell commands, killed on drop if still there.
struct Groups(Vec<u32>);

impl Drop for Groups {
    fn drop(&mut self) {
        for pg in &self.0 {
            let comm = std::fs::read_to_string(format!("/proc/{pg}/comm")).unwrap_or_default();
            if comm.trim() == "sh" && !gone(*pg) {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pg}")])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// True when process `pid` has exited (it may be a zombie not yet reaped).
fn gone(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the parenthesised command name.
    stat.rsplit_once(") ").is_none_or(|(_, rest)| rest.starts_with('Z'))
}

/// Reads the `PAYLOAD PGID` lines the hanging commands wrote.
fn hung_lines(path: &Path) -> Vec<(String, u32)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (p, g) = l.split_once(' ')?;
            Some((p.to_string(), g.parse().ok()?))
        })
        .collect()
}

#[test]
fn sigkilled_worker_processes_lose_none_of_1000_jobs() {
    const JOBS: usize = 1000;
    const VICTIMS: usize = 5;
    const SLOTS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&[], &dir.path().join("server.log"));
    let addr = server.addr_string();
    let hung = dir.path().join("hung");
    let done = dir.path().join("done");
    // Every 8th job hangs in a victim (it writes a line to stdout every
    // 50 ms, so it dies of SIGPIPE once its worker is gone); the others
    // complete, each appended to `done`.
    let script = format!(
        "p=$(cat); n=${{p#job-}}; \
         if [ $((n % 8)) -eq 0 ]; then echo \"$p $$\" >> {h}; \
         while :; do echo .; sleep 0.05; done; fi; \
         echo \"$p\" >> {d}; printf 'done:%s' \"$p\"",
        h = hung.display(),
        d = done.display()
    );
    let mut groups = Groups(Vec::new());
    let client =
        Client::builder().servers([&addr]).job_timeout(Duration::from_secs(60)).build().unwrap();
    let jobs: Vec<Job> = (0..JOBS).map(|i| Job::new("rel", format!("job-{i}"))).collect();
    let survivor_runs = Counter::default();
    let mut killed_mid_job: Vec<String> = Vec::new();
    let outs = std::thread::scope(|s| {
        let batch = s.spawn(|| client.batch(&jobs).run());
        // Each victim takes jobs until all its slots hang, then is killed.
        for round in 0..VICTIMS {
            let before = hung_lines(&hung).len();
            let mut victim = Proc(Some(
                Command::new(env!("CARGO_BIN_EXE_gearframe"))
                    .args(["worker", "-s", &addr, "-t", &SLOTS.to_string(), "-f", "rel"])
                    .args(["--", "sh", "-c", &script])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            ));
            let mine = eventually(Duration::from_secs(30), "every slot of a victim hung", || {
                let all = hung_lines(&hung);
                (all.len() >= before + SLOTS).then(|| all[before..].to_vec())
            });
            victim.kill9();
            eprintln!("victim {round}: killed while running {mine:?}");
            groups.0.extend(mine.iter().map(|(_, g)| *g));
            killed_mid_job.extend(mine.into_iter().map(|(p, _)| p));
        }
        // The survivor: a library worker in this process.
        let _survivor = counting_worker(std::slice::from_ref(&addr), "rel", 2, &survivor_runs);
        batch.join().unwrap()
    });
    let mut lost = Vec::new();
    for (i, o) in outs.iter().enumerate() {
        let want = format!("job-{i}");
        match o {
            Ok(JobOutcome::Complete { data, .. }) if *data == want.as_bytes() => {}
            Ok(JobOutcome::Complete { data, .. }) if *data == format!("done:{want}").as_bytes() => {
            }
            other => lost.push(format!("{want}: {other:?}")),
        }
    }
    assert!(lost.is_empty(), "{} jobs lost: {lost:?}", lost.len());
    // Runs: the victims' completed runs plus the survivor's.
    let mut runs: HashMap<String, u32> = HashMap::new();
    for l in std::fs::read_to_string(&done).unwrap_or_default().lines() {
        *runs.entry(l.to_string()).or_insert(0) += 1;
    }
    let by_victims = runs.values().sum::<u32>();
    for (p, n) in survivor_runs.snapshot() {
        *runs.entry(String::from_utf8(p).unwrap()).or_insert(0) += n;
    }
    let dups: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "{JOBS} jobs: {} killed mid-run in {VICTIMS} victims, {by_victims} completed by victims, \
         {} by the survivor, {} completed twice or more: {dups:?}",
        killed_mid_job.len(),
        survivor_runs.runs(),
        dups.len()
    );
    assert_eq!(killed_mid_job.len(), VICTIMS * SLOTS);
    assert_eq!(runs.len(), JOBS, "every job completed at least once");
    let survivor = survivor_runs.snapshot();
    for p in &killed_mid_job {
        assert!(survivor.contains_key(p.as_bytes()), "{p} was killed mid-run and never redone");
    }
    // The hung commands died with their worker.
    eventually(T, "hung commands gone", || groups.0.iter().all(|pg| gone(*pg)).then_some(()));
    groups.0.clear();
    assert_eq!(total(&addr, "rel"), 0);
}

// ----- the server killed under load -------------------------------------

/// Pipelines background submissions of `function` with payloads
/// `{prefix}-{i}` for `i` in `range`, reading JOB_CREATED in order, until
/// done or the connection breaks; returns the acknowledged payloads.
fn submit_pipelined(
    addr: &str,
    function: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
    acked: &AtomicUsize,
) -> Vec<String> {
    let mut c = connect(addr);
    let mut got = Vec::new();
    let payloads: Vec<String> = range.map(|i| format!("{prefix}-{i}")).collect();
    for chunk in payloads.chunks(250) {
        for p in chunk {
            c.queue(&bg(function.as_bytes(), b"", p.as_bytes())).unwrap();
        }
        if c.flush().is_err() {
            return got;
        }
        for p in chunk {
            match c.recv(deadline()) {
                Ok(r) if r.kind == PacketType::JobCreated => {
                    got.push(p.clone());
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                Ok(r) => panic!("{p}: {r:?}"),
                Err(e) => {
                    assert!(!e.is_timeout(), "{p}: no JOB_CREATED");
                    return got;
                }
            }
        }
    }
    got
}

/// Splits executions into (payloads run more than once, total extra runs).
fn duplicates(runs: &HashMap<Vec<u8>, u32>) -> (Vec<String>, u32) {
    let mut d: Vec<String> = runs
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(p, n)| format!("{}x{n}", String::from_utf8_lossy(p)))
        .collect();
    d.sort();
    let extra = runs.values().map(|n| n - 1).sum();
    (d, extra)
}

#[test]
fn server_sigkilled_under_background_load_loses_no_acknowledged_job() {
    const JOBS: usize = 10_000;
    const SUBMITTERS: usize = 2;
    let dir = tempfile::tempdir().unwrap();
    let queue = format!("sqlite:{}", dir.path().join("queue.db").display());
    let mut server = ServerProc::start(&["--queue", &queue], &dir.path().join("server.log"));
    let addr = server.addr_string();
    let runs = Counter::default();
    let worker = counting_worker(std::slice::from_ref(&addr), "load", 4, &runs);
    let acked_count = AtomicUsize::new(0);
    let per = JOBS / SUBMITTERS;
    let (acked, runs_before) = std::thread::scope(|s| {
        let submitters: Vec<_> = (0..SUBMITTERS)
            .map(|k| {
                let (addr, acked_count) = (&addr, &acked_count);
                s.spawn(move || {
                    submit_pipelined(addr, "load", "j", k * per..(k + 1) * per, acked_count)
                })
            })
            .collect();
        eventually(Duration::from_secs(30), "4,000 acknowledged jobs", || {
            (acked_count.load(Ordering::SeqCst) >= 4_000).then_some(())
        });
        server.kill9();
        let runs_before = runs.runs();
        let acked: Vec<String> = submitters.into_iter().flat_map(|t| t.join().unwrap()).collect();
        (acked, runs_before)
    });
    assert!(acked.len() < JOBS, "the kill came after the last acknowledgement");
    server.restart();
    eventually(Duration::from_secs(30), "every acknowledged job run", || {
        let seen = runs.snapshot();
        acked.iter().all(|p| seen.contains_key(p.as_bytes())).then_some(())
    });
    // Let the replayed queue drain, so that every duplicate is counted.
    eventually(Duration::from_secs(30), "the replayed queue drained", || {
        (total(&addr, "load") == 0).then_some(())
    });
    drop(worker);
    let seen = runs.snapshot();
    let acked_set: HashSet<&[u8]> = acked.iter().map(|p| p.as_bytes()).collect();
    let unacked_run = seen.keys().filter(|p| !acked_set.contains(p.as_slice())).count();
    let (dups, extra) = duplicates(&seen);
    eprintln!(
        "{JOBS} submitted, {} acknowledged before the SIGKILL; {runs_before} runs before it; \
         after the restart every acknowledged job ran; {unacked_run} unacknowledged jobs ran too \
         (committed before the kill); {} jobs ran more than once ({extra} extra runs): {:?}",
        acked.len(),
        dups.len(),
        &dups[..dups.len().min(20)]
    );
    let lost: Vec<_> = acked.iter().filter(|p| !seen.contains_key(p.as_bytes())).collect();
    assert!(lost.is_empty(), "acknowledged jobs lost: {lost:?}");
}

#[test]
fn failover_between_two_persistent_servers_delivers_every_result() {
    const JOBS: usize = 4_000;
    let dir = tempfile::tempdir().unwrap();
    let queue = |name: &str| format!("sqlite:{}", dir.path().join(name).display());
    let (qa, qb) = (queue("a.db"), queue("b.db"));
    let a = ServerProc::start(&["--queue", &qa], &dir.path().join("a.log"));
    let b = ServerProc::start(&["--queue", &qb], &dir.path().join("b.log"));
    let servers = [a.addr_string(), b.addr_string()];
    // Foreground `echo` jobs and background `record` jobs, alternately. The
    // `record` worker starts only after the batch, so the background jobs
    // that A acknowledged can only run from its persistent queue.
    let fg_runs = Counter::default();
    let bg_runs = Counter::default();
    // From the 1000th result on, the `echo` worker holds its jobs until A
    // is killed, so that the kill finds foreground jobs in flight on A.
    let hold = Arc::new(AtomicBool::new(false));
    let fg_worker = {
        let (c, hold) = (fg_runs.clone(), hold.clone());
        Worker::builder()
            .servers(&servers)
            .threads(2)
            .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
            .sleep_timeout(Duration::from_secs(1))
            .register("echo", move |job: &WorkJob, _: &mut JobContext<'_>| {
                c.add(job.payload());
                let until = Instant::now() + Duration::from_secs(10);
                while hold.load(Ordering::SeqCst) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(job.payload().to_vec())
            })
            .build()
            .unwrap()
    };
    let client = crate::support::failover_client(&servers);
    let jobs: Vec<Job> = (0..JOBS)
        .map(|i| {
            if i % 2 == 0 {
                Job::new("echo", format!("f-{i}"))
            } else {
                Job::new("record", format!("b-{i}")).background(true)
            }
        })
        .collect();
    let done = AtomicUsize::new(0);
    let resubmitted = AtomicUsize::new(0);
    let killed = AtomicBool::new(false);
    // A is killed mid-batch while the worker holds its jobs and a
    // foreground job acknowledged by A is unfinished: that job cannot
    // finish, so the kill always finds one in flight.
    let a_addr = a.addr_string();
    let on_a: Mutex<HashSet<usize>> = Mutex::default();
    let server_a = Mutex::new(a);
    let kill_if_due = || {
        if hold.load(Ordering::SeqCst)
            && !killed.load(Ordering::SeqCst)
            && !on_a.lock().unwrap().is_empty()
        {
            killed.store(true, Ordering::SeqCst);
            server_a.lock().unwrap().kill9();
            hold.store(false, Ordering::SeqCst);
        }
    };
    let outs = client
        .batch(&jobs)
        .on_event(|i, e| {
            match e {
                gearframe::client::JobEvent::Resubmitted { .. } => {
                    resubmitted.fetch_add(1, Ordering::Relaxed);
                    on_a.lock().unwrap().remove(&i);
                }
                gearframe::client::JobEvent::Created(h) if i % 2 == 0 && h.server() == a_addr => {
                    on_a.lock().unwrap().insert(i);
                }
                _ => {}
            }
            kill_if_due();
        })
        .on_done(|i, _| {
            on_a.lock().unwrap().remove(&i);
            if done.fetch_add(1, Ordering::Relaxed) == 1_000 {
                hold.store(true, Ordering::SeqCst);
            }
            kill_if_due();
        })
        .run();
    let mut a = server_a.into_inner().unwrap();
    assert!(killed.load(Ordering::SeqCst), "server A was killed mid-batch");
    if outs.iter().any(Result::is_err) {
        let failed: Vec<_> = outs.iter().enumerate().filter(|(_, o)| o.is_err()).collect();
        eprintln!("failed jobs: {failed:?}");
        eprintln!("B status: {:?}", admin(&servers[1], "status", true));
        eprintln!("B jobs: {:?}", admin(&servers[1], "show jobs", true));
        eprintln!("B workers: {:?}", admin(&servers[1], "workers", true));
    }
    let mut accepted_by = HashMap::new();
    for (i, o) in outs.iter().enumerate() {
        match o {
            Ok(JobOutcome::Complete { data, .. }) if i % 2 == 0 => {
                assert_eq!(data, format!("f-{i}").as_bytes(), "job {i}");
            }
            Ok(JobOutcome::Accepted { handle }) if i % 2 == 1 => {
                *accepted_by.entry(handle.server().to_string()).or_insert(0) += 1;
            }
            other => panic!("job {i}: {other:?}"),
        }
    }
    // Background jobs acknowledged by A before it died run once it is back.
    a.restart();
    let from_a = total(&a.addr_string(), "record");
    let bg_worker = counting_worker(&servers, "record", 2, &bg_runs);
    eventually(Duration::from_secs(30), "every background job run", || {
        let seen = bg_runs.snapshot();
        (1..JOBS).step_by(2).all(|i| seen.contains_key(format!("b-{i}").as_bytes())).then_some(())
    });
    eventually(Duration::from_secs(30), "both queues drained", || {
        servers.iter().all(|s| total(s, "record") == 0).then_some(())
    });
    drop((fg_worker, bg_worker));
    let (fg_dups, fg_extra) = duplicates(&fg_runs.snapshot());
    let (bg_dups, bg_extra) = duplicates(&bg_runs.snapshot());
    eprintln!(
        "{JOBS} jobs: every foreground result delivered, {} resubmitted by the client; background \
         accepted per server {accepted_by:?}, {from_a} replayed by A after its restart; every \
         background job ran; foreground run more than \
         once: {} ({fg_extra} extra runs), background: {} ({bg_extra} extra runs) {:?}",
        resubmitted.load(Ordering::Relaxed),
        fg_dups.len(),
        bg_dups.len(),
        &bg_dups[..bg_dups.len().min(20)]
    );
    // The kill caught jobs in flight on A: acknowledged foreground jobs that
    // were resubmitted, or jobs A had stored but not yet acknowledged (its
    // replies wait for the commit), which the client sent to B as well.
    let on_a = accepted_by.get(&a.addr_string()).copied().unwrap_or(0);
    assert!(
        resubmitted.load(Ordering::Relaxed) > 0 || from_a as usize > on_a,
        "no job was in flight on the killed server"
    );
    assert!(from_a > 0 && from_a as usize >= on_a, "A replayed {from_a} of its {on_a} jobs");
}

// ----- many connections, a peer that never reads ------------------------

/// The soft limit on open files of this process (children inherit it).
fn open_files_soft_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let v = line.split_whitespace().nth(3).unwrap();
    v.parse().unwrap_or(u64::MAX) // "unlimited"
}

/// `n` echo round trips, one after the other; their total time.
fn echo_round_trips(c: &mut Connection, n: usize) -> Duration {
    let started = Instant::now();
    for i in 0..n {
        echo(c, format!("ping-{i}").as_bytes());
    }
    started.elapsed()
}

#[test]
fn two_thousand_held_connections_do_not_slow_a_separate_client() {
    const HELD: usize = 2_000;
    // The server holds up to three descriptors per connection (the socket
    // and its clones for the outbox and a writer); this process one.
    let need = (HELD * 3 + 200) as u64;
    let soft = open_files_soft_limit();
    if soft < need {
        eprintln!(
            "SKIPPED: the soft limit on open files is {soft}, below the {need} this test needs; \
             raise it (ulimit -n {need}) to run it"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&[], &dir.path().join("server.log"));
    let addr = server.addr_string();
    let mut probe = connect(&addr);
    let baseline = echo_round_trips(&mut probe, 1_000);

    // Opened in groups of 100, each echoed on before the next group, so
    // that every connection is known to be served.
    let req = Packet::EchoReq { data: b"held" }.to_vec(gearframe::proto::Magic::Req);
    let res = Packet::EchoRes { data: b"held" }.to_vec(gearframe::proto::Magic::Res);
    let started = Instant::now();
    let mut held: Vec<TcpStream> = Vec::with_capacity(HELD);
    for group in 0..HELD / 100 {
        let from = held.len();
        for i in 0..100 {
            let mut s = TcpStream::connect_timeout(&server.addr(), T)
                .unwrap_or_else(|e| panic!("connection {}: {e}", from + i));
            s.write_all(&req).unwrap();
            held.push(s);
        }
        for (i, s) in held[from..].iter_mut().enumerate() {
            s.set_read_timeout(Some(T)).unwrap();
            let mut got = vec![0u8; res.len()];
            s.read_exact(&mut got).unwrap_or_else(|e| panic!("group {group}, connection {i}: {e}"));
            assert_eq!(got, res);
        }
    }
    let opened = started.elapsed();
    let workers = admin(&addr, "workers", true).len() - 1;
    assert!(workers > HELD, "`workers` lists {workers} connections");

    let loaded = echo_round_trips(&mut probe, 1_000);
    let mut fresh = connect(&addr);
    let fresh_time = echo_round_trips(&mut fresh, 1_000);
    eprintln!(
        "{HELD} connections opened and served in {opened:?}; 1,000 echo round trips: {baseline:?} alone, {loaded:?} with {HELD} connections held \
         ({fresh_time:?} on a connection opened after them); server VmRSS {} KiB, threads {}",
        server.status_field("VmRSS:"),
        server.status_field("Threads:")
    );
    assert!(loaded < T && fresh_time < T, "{loaded:?} / {fresh_time:?}");
}

#[test]
fn a_burst_of_connects_is_accepted_without_syn_retries() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&[], &dir.path().join("server.log"));
    let mut held = Vec::new();
    let mut stalls = Vec::new();
    for i in 0..1_500 {
        let t = Instant::now();
        held.push(TcpStream::connect_timeout(&server.addr(), T).unwrap());
        if t.elapsed() > Duration::from_millis(500) {
            stalls.push((i, t.elapsed()));
        }
    }
    assert!(stalls.is_empty(), "connects that waited for a SYN retry: {stalls:?}");
}

#[test]
fn a_peer_that_never_reads_is_cut_off_and_memory_stays_bounded() {
    const OUTBOX: usize = 1 << 20;
    const PUSHED: usize = 200 << 20;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, format!("server:\n  max_outbox: {OUTBOX}\n")).unwrap();
    let config = config.display().to_string();
    let server = ServerProc::start(&["-c", &config], &dir.path().join("server.log"));
    let addr = server.addr_string();
    let mut healthy = connect(&addr);
    echo(&mut healthy, b"up");
    let rss_before = server.status_field("VmRSS:");

    // 1. A client that sends echo requests and never reads the replies is
    // disconnected once its replies pass the outbox limit.
    let mut spammer = TcpStream::connect(server.addr()).unwrap();
    spammer.set_write_timeout(Some(T)).unwrap();
    let req = Packet::EchoReq { data: &[b'e'; 60 << 10] }.to_vec(gearframe::proto::Magic::Req);
    let mut sent = 0usize;
    let cut_off = loop {
        match spammer.write_all(&req) {
            Ok(()) => sent += req.len(),
            Err(e) => {
                assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "the server stopped reading");
                break e;
            }
        }
        // With the default limit (256 MiB) it would get much further.
        assert!(sent < 64 << 20, "still connected after {sent} bytes of unread echoes");
    };
    echo(&mut healthy, b"after the spammer");

    // 2. 200 MiB of WORK_DATA for a foreground client that never reads.
    let mut slow = connect(&addr);
    let handle = submit_ok(&mut slow, &fg(b"stream", b"", b""));
    let mut worker = connect(&addr);
    worker.send(&Packet::CanDo { function: b"stream" }).unwrap();
    assert!(grab(&mut worker).is_some());
    let chunk = vec![b'x'; 64 << 10];
    let started = Instant::now();
    for i in 0..PUSHED / chunk.len() {
        worker.send(&Packet::WorkData { handle: &handle, data: &chunk }).unwrap();
        if i % 256 == 0 {
            echo(&mut healthy, b"alive");
        }
    }
    echo(&mut worker, b"worker not blocked");
    let pushed_in = started.elapsed();
    let mut raw = slow.shutdown_handle().unwrap();
    let mut received = 0;
    assert!(closed_by_peer(&mut raw, &mut received), "the slow client is still connected");
    worker.send(&Packet::WorkComplete { handle: &handle, data: b"" }).unwrap();
    echo(&mut worker, b"completed");
    echo(&mut healthy, b"still served");
    let rss_after = server.status_field("VmRSS:");
    let peak = server.status_field("VmHWM:");
    eprintln!(
        "echo spammer cut off after sending {} KiB ({cut_off}); {} MiB of WORK_DATA pushed in \
         {pushed_in:?} at a client cut off after receiving {} KiB; server VmRSS {rss_before} KiB \
         before, {rss_after} KiB after, peak {peak} KiB",
        sent >> 10,
        PUSHED >> 20,
        received >> 10
    );
    assert!(received < 32 << 20, "the slow client was sent {received} bytes");
    let growth_kib = peak.saturating_sub(rss_before);
    assert!(growth_kib < 32 << 10, "server memory grew by {growth_kib} KiB");
    assert_eq!(total(&addr, "stream"), 0);
}

// ----- every limit --------------------------------------------------------

/// A server with `config`, and a healthy connection that echoes.
fn limited(config: ServerConfig) -> (Ours, String, Connection) {
    let server = Ours::with_config(config);
    let addr = server.addr().to_string();
    let mut healthy = connect(&addr);
    echo(&mut healthy, b"up");
    (server, addr, healthy)
}

#[test]
fn max_connections_closes_on_accept() {
    let (_server, addr, mut healthy) =
        limited(ServerConfig { max_connections: 2, ..ServerConfig::default() });
    let mut second = connect(&addr);
    echo(&mut second, b"in");
    for _ in 0..3 {
        let mut extra = TcpStream::connect(&addr).unwrap();
        let _ = extra.write_all(b"version\n");
        let mut received = 0;
        assert!(closed_by_peer(&mut extra, &mut received), "a third connection was kept");
        assert_eq!(received, 0, "a connection over the limit was answered");
        echo(&mut healthy, b"healthy");
    }
    echo(&mut second, b"still in");
}

#[test]
fn max_packet_size_answers_argument_too_large_and_closes() {
    let (_server, addr, mut healthy) =
        limited(ServerConfig { max_packet_size: 1024, ..ServerConfig::default() });
    let mut c = connect(&addr);
    let fits = vec![b'a'; 1000];
    submit_ok(&mut c, &bg(b"f", b"", &fits));
    let big = vec![b'a'; 2000];
    c.send(&bg(b"f", b"", &big)).unwrap();
    let r = c.recv(deadline()).unwrap();
    let Ok(Packet::Error { code, text }) = r.packet() else { panic!("{r:?}") };
    assert_eq!(code, b"ARGUMENT_TOO_LARGE", "{}", String::from_utf8_lossy(text));
    let e = c.recv(deadline()).unwrap_err();
    assert_eq!(e.io_kind(), Some(std::io::ErrorKind::UnexpectedEof), "{e}");
    echo(&mut healthy, b"healthy");
    assert_eq!(total(&addr, "f"), 1);
}

#[test]
fn max_queue_from_the_config_refuses_with_queue_error() {
    let (_server, addr, mut healthy) =
        limited(ServerConfig { max_queue: 2, ..ServerConfig::default() });
    let mut c = connect(&addr);
    submit_ok(&mut c, &bg(b"q", b"", b"1"));
    submit_ok(&mut c, &bg(b"q", b"", b"2"));
    let e = submit_err(&mut c, &bg(b"q", b"", b"3"));
    assert_eq!(e, ("QUEUE_ERROR".into(), "Job queue is full".into()));
    // Another function has its own queue; the connection stays usable.
    submit_ok(&mut c, &bg(b"other", b"", b"1"));
    echo(&mut healthy, b"healthy");
    // Once one leaves, there is room again.
    let mut w = connect(&addr);
    w.send(&Packet::CanDo { function: b"q" }).unwrap();
    let (handle, _) = grab(&mut w).unwrap();
    w.send(&Packet::WorkComplete { handle: &handle, data: b"" }).unwrap();
    echo(&mut w, b"done");
    submit_ok(&mut c, &bg(b"q", b"", b"3"));
    assert_eq!(total(&addr, "q"), 2);
}

#[test]
fn max_jobs_refuses_with_queue_error() {
    let (_server, addr, mut healthy) =
        limited(ServerConfig { max_jobs: 3, ..ServerConfig::default() });
    let mut c = connect(&addr);
    for f in [&b"a"[..], b"b", b"c"] {
        submit_ok(&mut c, &bg(f, b"", b"x"));
    }
    let e = submit_err(&mut c, &bg(b"d", b"", b"x"));
    assert_eq!(e, ("QUEUE_ERROR".into(), "Server job limit reached".into()));
    // Foreground jobs count too.
    let e = submit_err(
        &mut c,
        &Packet::Submit {
            kind: SubmitKind { priority: Priority::High, background: false },
            function: b"a",
            unique: b"",
            data: b"x",
        },
    );
    assert_eq!(e.1, "Server job limit reached");
    echo(&mut healthy, b"healthy");
    let mut w = connect(&addr);
    w.send(&Packet::CanDo { function: b"a" }).unwrap();
    let (handle, _) = grab(&mut w).unwrap();
    w.send(&Packet::WorkComplete { handle: &handle, data: b"" }).unwrap();
    echo(&mut w, b"done");
    submit_ok(&mut c, &bg(b"d", b"", b"x"));
}

#[test]
fn max_payload_bytes_refuses_with_queue_error() {
    let (_server, addr, mut healthy) =
        limited(ServerConfig { max_payload_bytes: 1000, ..ServerConfig::default() });
    let mut c = connect(&addr);
    submit_ok(&mut c, &bg(b"p", b"", &[b'x'; 600]));
    let e = submit_err(&mut c, &bg(b"p", b"", &[b'x'; 600]));
    assert_eq!(e, ("QUEUE_ERROR".into(), "Server payload memory limit reached".into()));
    submit_ok(&mut c, &bg(b"p", b"", &[b'x'; 400]));
    let e = submit_err(&mut c, &bg(b"p", b"", b"1"));
    assert_eq!(e.1, "Server payload memory limit reached");
    echo(&mut healthy, b"healthy");
    assert_eq!(total(&addr, "p"), 2);
}

/// A connection whose source address is `from`.
fn connect_from(from: [u8; 4], to: &str) -> Connection {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    let to: SocketAddr = to.parse().unwrap();
    s.connect_timeout(&to.into(), T).unwrap();
    Connection::from_stream(s.into()).unwrap()
}

#[test]
fn admin_allow_refuses_state_changes_and_listings_from_other_addresses() {
    let (server, addr, mut healthy) = limited(ServerConfig {
        admin_allow: vec!["127.0.0.1".parse().unwrap()],
        ..ServerConfig::default()
    });
    let mut other = connect_from([127, 0, 0, 2], &addr);
    let denied = "ERR PERMISSION_DENIED this+address+may+not+change+the+server+state";
    for cmd in ["cancel job x", "drop function f", "maxqueue f 1", "create function f", "shutdown"]
    {
        assert_eq!(admin_on(&mut other, cmd, false), [denied], "{cmd}");
        echo(&mut healthy, b"healthy");
    }
    assert!(!server.handle().is_stopping());
    // Listings of jobs and connections are refused too: their unique ids
    // would let any peer join another client's job and read its result.
    let listing = "ERR PERMISSION_DENIED this+address+may+not+list+jobs+or+connections";
    for cmd in ["show jobs", "show unique jobs", "workers"] {
        assert_eq!(admin_on(&mut other, cmd, true), [listing], "{cmd}");
    }
    // The other read-only commands work from there.
    assert_eq!(admin_on(&mut other, "status", true), ["."]);
    assert_eq!(admin_on(&mut other, "prioritystatus", true), ["."]);
    assert!(admin_on(&mut other, "version", false)[0].starts_with("OK "));
    assert!(admin_on(&mut other, "getpid", false)[0].starts_with("OK "));
    // From 127.0.0.1 they change the state.
    let mut local = connect_from([127, 0, 0, 1], &addr);
    let workers = admin_on(&mut local, "workers", true);
    assert!(workers.iter().any(|l| l.contains(" 127.0.0.2 ")), "{workers:?}");
    assert_eq!(admin_on(&mut local, "show jobs", true), ["."]);
    assert_eq!(admin_on(&mut local, "cancel job x", false), ["ERR UNKNOWN_JOB"]);
    assert_eq!(admin_on(&mut local, "create function f", false), ["OK"]);
    assert_eq!(admin_on(&mut local, "maxqueue f 1", false), ["OK"]);
    assert_eq!(admin_on(&mut other, "status", true), ["f\t0\t0\t0", "."]);
    assert_eq!(admin_on(&mut local, "drop function f", false), ["OK"]);
    assert_eq!(admin_on(&mut other, "status", true), ["."]);
    assert_eq!(admin_on(&mut local, "shutdown", false), ["OK"]);
    eventually(T, "the server stopping", || server.handle().is_stopping().then_some(()));
}

#[test]
fn admin_allow_flag_decides_who_lists_jobs_and_connections() {
    let dir = tempfile::tempdir().unwrap();
    let listing = "ERR PERMISSION_DENIED this+address+may+not+list+jobs+or+connections";
    // The rule is matched against the peer's address only: this loopback
    // peer is outside 10.0.0.0/8 (nothing connects there).
    let outside = ServerProc::start(&["--admin-allow", "10.0.0.0/8"], &dir.path().join("a.log"));
    let addr = outside.addr_string();
    let mut c = connect(&addr);
    c.send(&bg(b"f", b"private", b"x")).unwrap();
    assert_eq!(c.recv(deadline()).unwrap().kind, PacketType::JobCreated);
    for cmd in ["show jobs", "show unique jobs", "workers"] {
        assert_eq!(admin(&addr, cmd, true), [listing], "{cmd}");
    }
    assert_eq!(admin(&addr, "status", true), ["f\t1\t0\t0", "."]);
    assert!(admin(&addr, "version", false)[0].starts_with("OK gearframe-"));
    drop(outside);

    let inside = ServerProc::start(&["--admin-allow", "127.0.0.1"], &dir.path().join("b.log"));
    let addr = inside.addr_string();
    let mut c = connect(&addr);
    c.send(&bg(b"f", b"private", b"x")).unwrap();
    assert_eq!(c.recv(deadline()).unwrap().kind, PacketType::JobCreated);
    assert_eq!(admin(&addr, "show unique jobs", true), ["private", "."]);
    let jobs = admin(&addr, "show jobs", true);
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(jobs[0].ends_with("\t0\t0\t1"), "{jobs:?}");
    let workers = admin(&addr, "workers", true);
    assert!(workers.iter().any(|l| l.contains(" 127.0.0.1 ")), "{workers:?}");
    assert_eq!(admin(&addr, "status", true), ["f\t1\t0\t0", "."]);
}

#[test]
fn the_ok_of_shutdown_reaches_the_client() {
    for i in 0..20 {
        let server = Ours::with_config(ServerConfig::default());
        let mut c = connect(&server.addr().to_string());
        c.queue_bytes(b"shutdown\n");
        c.flush().unwrap();
        let reply = c.recv_line(deadline());
        assert!(matches!(&reply, Ok(l) if l == "OK"), "attempt {i}: {reply:?}");
        server.into_handle().join();
    }
}

// ----- the persistent queue across restarts -----------------------------

/// A server on a fresh persistent queue in `dir`, with `extra` options.
fn persistent(dir: &Path, extra: &[&str]) -> ServerProc {
    let queue = format!("sqlite:{}", dir.join("queue.db").display());
    let mut args = vec!["--queue", &queue];
    args.extend_from_slice(extra);
    ServerProc::start(&args, &dir.join("server.log"))
}

/// A worker connection registered for `function`.
fn raw_worker(addr: &str, function: &[u8]) -> Connection {
    let mut w = connect(addr);
    w.send(&Packet::CanDo { function }).unwrap();
    w
}

/// Takes every queued job of the worker's functions; their payloads.
fn drain(w: &mut Connection) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while let Some((handle, data)) = grab(w) {
        w.send(&Packet::WorkComplete { handle: &handle, data: b"" }).unwrap();
        got.push(data);
    }
    got.sort();
    got
}

#[test]
fn an_epoch_job_survives_a_restart_and_runs_at_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = persistent(dir.path(), &[]);
    let addr = server.addr_string();
    let at = unix_now() + 4;
    let mut c = connect(&addr);
    submit_ok(
        &mut c,
        &Packet::SubmitJobEpoch {
            function: b"ep",
            unique: b"",
            epoch: at.to_string().as_bytes(),
            data: b"scheduled",
        },
    );
    server.kill9();
    server.restart();
    assert_eq!(total(&addr, "ep"), 1);
    let mut w = raw_worker(&addr, b"ep");
    let mut slept = 0;
    let (handle, data, ran_at) = loop {
        if let Some((handle, data)) = grab(&mut w) {
            break (handle, data, unix_now());
        }
        // Not due yet: the server wakes the sleeping worker when it is.
        w.send(&Packet::PreSleep).unwrap();
        let p = w.recv(Some(Instant::now() + Duration::from_secs(10))).unwrap();
        assert_eq!(p.kind, PacketType::Noop);
        slept += 1;
    };
    assert_eq!(data, b"scheduled");
    assert!(ran_at >= at && ran_at <= at + 2, "due at {at}, ran at {ran_at}");
    eprintln!("epoch job due at {at} ran at {ran_at} after {slept} sleep(s)");
    w.send(&Packet::WorkComplete { handle: &handle, data: b"" }).unwrap();
    echo(&mut w, b"done");
    assert_eq!(total(&addr, "ep"), 0);
}

#[test]
fn background_jobs_with_an_empty_unique_all_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = persistent(dir.path(), &[]);
    let addr = server.addr_string();
    let mut c = connect(&addr);
    let h1 = submit_ok(&mut c, &bg(b"empty", b"", b"one"));
    let h2 = submit_ok(&mut c, &bg(b"empty", b"", b"two"));
    assert_ne!(h1, h2);
    server.kill9();
    server.restart();
    assert_eq!(total(&addr, "empty"), 2);
    let mut w = raw_worker(&addr, b"empty");
    assert_eq!(drain(&mut w), [b"one".to_vec(), b"two".to_vec()]);
}

#[test]
fn completed_and_cancelled_jobs_are_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = persistent(dir.path(), &[]);
    let addr = server.addr_string();
    let mut c = connect(&addr);
    submit_ok(&mut c, &bg(b"completed", b"u1", b"x"));
    let cancelled = submit_ok(&mut c, &bg(b"cancelled", b"", b"y"));
    let mut w = raw_worker(&addr, b"completed");
    assert_eq!(drain(&mut w), [b"x".to_vec()]);
    echo(&mut w, b"completed");
    let cmd = format!("cancel job {}", String::from_utf8_lossy(&cancelled));
    assert_eq!(admin(&addr, &cmd, false), ["OK"]);
    // The queue is written in order: once this job's JOB_CREATED is back,
    // the deletions before it are committed too.
    submit_ok(&mut c, &bg(b"marker", b"", b"m"));
    server.kill9();
    server.restart();
    let st = status(&addr);
    assert_eq!(st.get("marker").map(|s| s.0), Some(1), "{st:?}");
    assert_eq!(total(&addr, "completed"), 0, "{st:?}");
    assert_eq!(total(&addr, "cancelled"), 0, "{st:?}");
}

#[test]
fn store_queue_on_shutdown_survives_sigterm_but_not_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = persistent(dir.path(), &["--store-queue-on-shutdown"]);
    let addr = server.addr_string();
    let mut c = connect(&addr);
    for d in [&b"a"[..], b"b", b"c"] {
        submit_ok(&mut c, &bg(b"later", b"", d));
    }
    drop(c);
    server.terminate();
    server.restart();
    assert_eq!(total(&addr, "later"), 3, "a SIGTERM stop writes the queue");
    // A job submitted since the start lives in memory only until the next
    // clean stop; the rows of the start stay in the file until a dump
    // replaces them.
    let mut c = connect(&addr);
    submit_ok(&mut c, &bg(b"later", b"", b"d"));
    drop(c);
    assert_eq!(total(&addr, "later"), 4);
    server.kill9();
    server.restart();
    assert_eq!(total(&addr, "later"), 3, "a SIGKILL loses the jobs since the start (documented)");
    // In the default mode the same jobs survive a SIGKILL.
    let dir = tempfile::tempdir().unwrap();
    let mut server = persistent(dir.path(), &[]);
    let addr = server.addr_string();
    let mut c = connect(&addr);
    submit_ok(&mut c, &bg(b"later", b"", b"a"));
    server.kill9();
    server.restart();
    assert_eq!(total(&addr, "later"), 1);
}

// ----- the fuzz loop --------------------------------------------------------

mod fuzz_loop {
    //! Random conversations of three connections through the server's
    //! connection handling (`gearframe::server::fuzz`, which checks the
    //! state's invariants after every step): well-formed packets of every
    //! type with arguments drawn from small alphabets, admin lines, raw
    //! bytes, timers firing and disconnections.

    use gearframe::proto::{Magic, PacketType, encode_raw};
    use proptest::prelude::*;

    /// One step, encoded as `gearframe::server::fuzz` reads it.
    fn encode(conn: u8, bytes: &[u8], out: &mut Vec<u8>) {
        for chunk in bytes.chunks(255) {
            out.push(conn);
            out.push(chunk.len() as u8);
            out.extend_from_slice(chunk);
        }
    }

    fn arg() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => prop_oneof![Just(b"f".to_vec()), Just(b"g".to_vec())],
            3 => prop_oneof![Just(Vec::new()), Just(b"-".to_vec()), Just(b"u1".to_vec())],
            3 => (1u8..8).prop_map(|n| format!("H:fuzz:{n}").into_bytes()),
            2 => (0u64..3).prop_map(|n| n.to_string().into_bytes()),
            1 => Just(b"99999999999".to_vec()),
            1 => Just(b"exceptions".to_vec()),
            2 => Just(b"gearframe-push".to_vec()),
            1 => proptest::collection::vec(any::<u8>(), 0..8),
        ]
    }

    /// Packet types, the ones that change the state most often.
    fn kind() -> impl Strategy<Value = u32> {
        prop_oneof![
            // SUBMIT_JOB*, SUBMIT_JOB_EPOCH, SUBMIT_REDUCE_JOB*
            4 => prop_oneof![Just(7), Just(18), Just(21), Just(32), Just(33), Just(34), Just(36), Just(37), Just(38)],
            // CAN_DO, CANT_DO, RESET_ABILITIES, PRE_SLEEP, CAN_DO_TIMEOUT, GRAB_JOB*
            4 => prop_oneof![Just(1), Just(2), Just(3), Just(4), Just(23), Just(9), Just(30), Just(39)],
            // OPTION_REQ
            1 => Just(26),
            // WORK_*
            4 => prop_oneof![Just(12), Just(13), Just(14), Just(25), Just(28), Just(29)],
            2 => 1u32..=42,
        ]
    }

    fn packet() -> impl Strategy<Value = Vec<u8>> {
        (kind(), proptest::collection::vec(arg(), 0..6), 0u8..16).prop_map(|(n, args, m)| {
            let kind = PacketType::from_u32(n).unwrap_or(PacketType::EchoReq);
            let args: Vec<&[u8]> = args.iter().take(kind.arg_count()).map(Vec::as_slice).collect();
            let mut v = Vec::new();
            encode_raw(if m > 0 { Magic::Req } else { Magic::Res }, kind, &args, &mut v);
            v
        })
    }

    fn admin() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just("status"),
            Just("workers"),
            Just("show jobs"),
            Just("show unique jobs"),
            Just("prioritystatus"),
            Just("cancel job H:fuzz:1"),
            Just("cancel job H:fuzz:2"),
            Just("drop function f"),
            Just("drop function g"),
            Just("create function g"),
            Just("maxqueue f 1"),
            Just("maxqueue g 0 1 2"),
            Just("shutdown graceful"),
            Just("shutdown"),
            Just("getpid"),
        ]
        .prop_map(|l| format!("{l}\n").into_bytes())
    }

    fn step() -> impl Strategy<Value = Vec<u8>> {
        let conn = 0u8..3;
        prop_oneof![
            6 => (conn.clone(), packet()).prop_map(|(c, p)| {
                let mut v = Vec::new();
                encode(c, &p, &mut v);
                v
            }),
            2 => (conn.clone(), admin()).prop_map(|(c, l)| {
                let mut v = Vec::new();
                encode(c, &l, &mut v);
                v
            }),
            1 => (conn.clone(), proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(c, b)| {
                let mut v = Vec::new();
                encode(c, &b, &mut v);
                v
            }),
            1 => Just(vec![3]),                              // timers fire
            1 => conn.prop_map(|c| vec![3 | 4 | (c << 4)]), // disconnect
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        #[test]
        fn random_conversations_keep_the_state_consistent(
            settings in any::<u8>(),
            steps in proptest::collection::vec(step(), 1..80),
        ) {
            let mut input = vec![settings];
            for s in &steps {
                input.extend_from_slice(s);
            }
            gearframe::server::fuzz::fuzz_connection_bytes(&input);
        }

        #[test]
        fn random_bytes_keep_the_state_consistent(
            input in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            gearframe::server::fuzz::fuzz_connection_bytes(&input);
        }
    }
}

#[test]
fn a_client_joining_an_abandoned_job_gets_its_result() {
    let server = Ours::with_config(ServerConfig::default());
    let addr = server.addr().to_string();
    let submit_same = |c: &mut Connection| submit_ok(c, &fg(b"j", b"same", b"x"));
    let mut first = connect(&addr);
    submit_same(&mut first);
    drop(first);
    eventually(T, "the first client gone", || {
        (admin(&addr, "workers", true).len() == 2).then_some(())
    });
    let mut second = connect(&addr);
    let handle = submit_same(&mut second);
    let mut w = raw_worker(&addr, b"j");
    let got = grab(&mut w);
    assert!(got.is_some(), "the job the second client waits for was dropped, not run");
    let (h, _) = got.unwrap();
    w.send(&Packet::WorkComplete { handle: &h, data: b"r" }).unwrap();
    let p = second.recv(deadline()).unwrap();
    assert_eq!((p.kind, p.body), (PacketType::WorkComplete, [&handle[..], b"\0r"].concat()));
}

#[test]
fn a_mixed_batch_on_a_persistent_server_is_all_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let server = persistent(dir.path(), &[]);
    let addr = server.addr_string();
    let runs = Counter::default();
    let _worker = counting_worker(std::slice::from_ref(&addr), "echo", 2, &runs);
    let client = Client::builder()
        .servers([&addr])
        .ack_timeout(Duration::from_secs(5))
        .job_timeout(Duration::from_secs(10))
        .window(256)
        .build()
        .unwrap();
    for round in 0..10 {
        let jobs: Vec<Job> = (0..2_000)
            .map(|i| Job::new("echo", format!("{round}-{i}")).background(i % 2 == 1))
            .collect();
        let outs = client.batch(&jobs).run();
        let failed = outs.iter().filter(|o| o.is_err()).count();
        let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
        assert_eq!(failed, 0, "round {round}: {failed} jobs failed; server log: {log}");
    }
}
