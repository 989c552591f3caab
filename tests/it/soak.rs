//! The reliability soak: what must hold under attack, checked against real
//! `gearframe server` and `gearframe worker` processes, each test repeated
//! many times.
//!
//! By default every test runs at a small size (a few seconds). With
//! `GEARFRAME_SOAK=1` they run at the size of a full attack run; each size
//! can also be set on its own:
//!
//! | variable | what | default | soak |
//! |---|---|---|---|
//! | `GEARFRAME_SOAK_KILLS` | server SIGKILLs under load | 2 | 10 |
//! | `GEARFRAME_SOAK_ACKS_PER_KILL` | acknowledged jobs between kills | 2,000 | 8,300 |
//! | `GEARFRAME_SOAK_GEARMAND_ACKS_PER_KILL` | the same for gearmand (soak only) | 1,000 | 1,000 |
//! | `GEARFRAME_SOAK_SUBMITTERS` | client threads of the load | 3 | 4 |
//! | `GEARFRAME_SOAK_STREAMS` | malformed streams | 2,000 | 72,500 |
//! | `GEARFRAME_SOAK_WORKER_KILLS` | worker processes SIGKILLed mid-job | 3 | 20 |
//!
//! Every test prints its figures on a line starting with `SOAK`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gearframe::conn::Connection;
use gearframe::proto::{Magic, Packet, PacketType};

use crate::support::{self, ChildGuard, Rng, ServerProc, bg, eventually, free_port, spray_streams};

/// How long one reply may take on a loaded machine.
const T: Duration = Duration::from_secs(30);

fn deadline() -> Option<Instant> {
    Some(Instant::now() + T)
}

/// True with `GEARFRAME_SOAK=1`: the full attack-run sizes.
fn soak() -> bool {
    std::env::var("GEARFRAME_SOAK").as_deref() == Ok("1")
}

/// A size: the variable `var` when set, else `full` in soak mode, else `small`.
fn size(var: &str, small: usize, full: usize) -> usize {
    match std::env::var(var) {
        Ok(v) => v.trim().replace('_', "").parse().unwrap_or_else(|_| {
            panic!("{var}={v:?} is not a whole number; set it to a count such as 10")
        }),
        Err(_) if soak() => full,
        Err(_) => small,
    }
}

fn connect(addr: &str) -> Connection {
    let c = Connection::connect(addr, T).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    c.set_write_timeout(Some(T)).unwrap();
    c
}

fn echo(c: &mut Connection, data: &[u8]) {
    c.send(&Packet::EchoReq { data }).unwrap();
    let p = c.recv(deadline()).unwrap();
    assert_eq!((p.kind, p.body.as_slice()), (PacketType::EchoRes, data), "{p:?}");
}

/// One admin command and its reply lines, up to the `.` line of a list.
fn admin(addr: &str, line: &str, list: bool) -> Vec<String> {
    support::admin_on(&mut connect(addr), line, list, T)
}

/// Jobs queued or running for `function`, from `status`.
fn total(addr: &str, function: &str) -> u64 {
    admin(addr, "status", true)
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 4 && f[0] == function).then(|| f[1].parse::<u64>().unwrap())
        })
        .sum()
}

// ----- 1. the persistent server SIGKILLed again and again under load ------

/// The functions of the load: the pair (function, unique) names a job.
const LOAD_FUNCTIONS: [&str; 2] = ["soak-a", "soak-b"];

type JobId = (String, String);

/// One client thread of the load: pipelines background submissions in
/// chunks on a connection and counts every JOB_CREATED (a connection's
/// replies come in the order of its submissions); reconnects when the server
/// went away, until `stop`. A reply that takes over `T` fails the test
/// when `strict`, else it is counted in `stalls` and the connection is
/// dropped. Returns the acknowledged jobs.
fn submitter(addr: &str, k: usize, strict: bool, counts: &Counts, stop: &AtomicBool) -> Vec<JobId> {
    const CHUNK: usize = 200;
    let mut got = Vec::new();
    let mut seq = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let Ok(mut c) = Connection::connect(addr, Duration::from_millis(200)) else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        c.set_write_timeout(Some(T)).unwrap();
        'conn: while !stop.load(Ordering::SeqCst) {
            let chunk: Vec<JobId> = (seq..seq + CHUNK)
                .map(|i| (LOAD_FUNCTIONS[i % 2].to_string(), format!("c{k}-{i}")))
                .collect();
            seq += CHUNK;
            for (f, u) in &chunk {
                c.queue(&bg(f.as_bytes(), u.as_bytes(), u.as_bytes())).unwrap();
            }
            if c.flush().is_err() {
                break;
            }
            for job in chunk {
                match c.recv(deadline()) {
                    Ok(r) if r.kind == PacketType::JobCreated => {
                        got.push(job);
                        counts.acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => panic!("{job:?}: {r:?} instead of JOB_CREATED"),
                    Err(e) if e.is_timeout() => {
                        assert!(!strict, "{job:?}: no JOB_CREATED within {T:?}");
                        counts.stalls.fetch_add(1, Ordering::SeqCst);
                        break 'conn;
                    }
                    Err(_) => break 'conn,
                }
            }
        }
    }
    got
}

/// Takes every queued job of [`LOAD_FUNCTIONS`] as a worker (completing
/// each) until the server has none; returns how often each job was handed
/// out.
fn drain(addr: &str) -> HashMap<JobId, u32> {
    let mut c = connect(addr);
    for f in LOAD_FUNCTIONS {
        c.queue(&Packet::CanDo { function: f.as_bytes() }).unwrap();
    }
    c.queue(&Packet::GrabJobUniq).unwrap();
    c.flush().unwrap();
    let mut ran = HashMap::new();
    loop {
        let p = c.recv(deadline()).unwrap();
        match p.packet() {
            Ok(Packet::Noop) => {}
            Ok(Packet::NoJob) => return ran,
            Ok(Packet::JobAssignUniq { handle, function, unique, .. }) => {
                let id = (
                    String::from_utf8_lossy(function).into_owned(),
                    String::from_utf8_lossy(unique).into_owned(),
                );
                *ran.entry(id).or_insert(0) += 1;
                c.queue(&Packet::WorkComplete { handle, data: b"" }).unwrap();
                c.queue(&Packet::GrabJobUniq).unwrap();
                c.flush().unwrap();
            }
            other => panic!("the draining worker got {other:?}"),
        }
    }
}

/// Shared counters of the submitters.
#[derive(Default)]
struct Counts {
    acked: AtomicUsize,
    stalls: AtomicUsize,
}

/// What a kill loop measured.
struct KillReport {
    acked: usize,
    lost: Vec<JobId>,
    unacked_ran: usize,
    twice: usize,
    /// Connections given up after a reply took over `T`.
    stalls: usize,
    load: Duration,
    /// The part of `load` spent from each kill until the server answered again.
    down: Duration,
}

impl KillReport {
    fn acks_per_sec(&self) -> f64 {
        self.acked as f64 / self.load.as_secs_f64()
    }

    fn acks_per_sec_up(&self) -> f64 {
        self.acked as f64 / (self.load - self.down).as_secs_f64()
    }

    /// The figures in a line.
    fn line(&self) -> String {
        format!(
            "{} jobs acknowledged in {:.1} s: {:.0} acks/s ({:.0} acks/s without the {:.1} s \
             from the kills to the restarted server answering), {} lost, {} unacknowledged \
             jobs stored too, {} handed out twice, {} connections given up after no reply \
             within {T:?}",
            self.acked,
            self.load.as_secs_f64(),
            self.acks_per_sec(),
            self.acks_per_sec_up(),
            self.down.as_secs_f64(),
            self.lost.len(),
            self.unacked_ran,
            self.twice,
            self.stalls
        )
    }
}

/// Sets its flag when dropped, also while a panic unwinds.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Loads `server` from `submitters` threads, SIGKILLs it `kills` times (each
/// after `per_kill` more acknowledgements) and restarts it on the same
/// queue, then drains the queue and compares with what was acknowledged.
fn kill_loop(
    server: &mut ServerProc,
    kills: usize,
    per_kill: usize,
    submitters: usize,
    strict: bool,
) -> KillReport {
    let addr = server.addr_string();
    let counts = Counts::default();
    let acked_count = &counts.acked;
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let mut down = Duration::ZERO;
    let (acked, load) = std::thread::scope(|s| {
        // A failed wait or restart stops the submitters, so that the scope ends.
        let _stop = StopOnDrop(&stop);
        let threads: Vec<_> = (0..submitters)
            .map(|k| {
                let (addr, counts, stop) = (&addr, &counts, &stop);
                s.spawn(move || submitter(addr, k, strict, counts, stop))
            })
            .collect();
        for round in 0..kills {
            let target = (round + 1) * per_kill;
            eventually(Duration::from_secs(600), &format!("{target} acknowledged jobs"), || {
                (acked_count.load(Ordering::SeqCst) >= target).then_some(())
            });
            let killed = Instant::now();
            server.kill9();
            server.restart();
            down += killed.elapsed();
            eprintln!(
                "kill {}: {} acknowledged; answering again after {:?}",
                round + 1,
                acked_count.load(Ordering::SeqCst),
                killed.elapsed()
            );
        }
        stop.store(true, Ordering::SeqCst);
        let acked: Vec<JobId> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        (acked, started.elapsed())
    });
    let ran = drain(&addr);
    let acked_set: HashSet<&JobId> = acked.iter().collect();
    KillReport {
        lost: acked.iter().filter(|j| !ran.contains_key(*j)).cloned().collect(),
        unacked_ran: ran.keys().filter(|j| !acked_set.contains(j)).count(),
        twice: ran.values().filter(|&&n| n > 1).count(),
        acked: acked.len(),
        stalls: counts.stalls.load(Ordering::SeqCst),
        load,
        down,
    }
}

#[test]
fn persistent_server_sigkilled_again_and_again_under_load_loses_no_acknowledged_job() {
    let kills = size("GEARFRAME_SOAK_KILLS", 2, 10);
    let per_kill = size("GEARFRAME_SOAK_ACKS_PER_KILL", 2_000, 8_300);
    let submitters = size("GEARFRAME_SOAK_SUBMITTERS", 3, 4);
    let dir = tempfile::tempdir().unwrap();
    let queue = format!("sqlite:{}", dir.path().join("queue.db").display());
    let mut server = ServerProc::start(&["--queue", &queue], &dir.path().join("server.log"));
    let r = kill_loop(&mut server, kills, per_kill, submitters, true);
    eprintln!(
        "SOAK gearframe sqlite queue: {kills} SIGKILLs under load from {submitters} clients: {}",
        r.line()
    );
    assert!(r.acked >= kills * per_kill, "only {} acknowledged", r.acked);
    assert!(
        r.lost.is_empty(),
        "{} acknowledged jobs lost: {:?}",
        r.lost.len(),
        &r.lost[..r.lost.len().min(20)]
    );
    assert_eq!(r.twice, 0, "a stored job was handed out twice by one server");
    assert_eq!(total(&server.addr_string(), LOAD_FUNCTIONS[0]), 0);
}

/// The same load and kills against gearmand's libsqlite3 queue, for the
/// comparison: its figures are reported, its losses not asserted.
#[test]
fn gearmand_sqlite_queue_under_the_same_kills_for_comparison() {
    if !soak() {
        eprintln!("SOAK gearmand comparison: runs with GEARFRAME_SOAK=1 only");
        return;
    }
    let kills = size("GEARFRAME_SOAK_KILLS", 2, 10);
    let per_kill = size("GEARFRAME_SOAK_GEARMAND_ACKS_PER_KILL", 1_000, 1_000);
    let submitters = size("GEARFRAME_SOAK_SUBMITTERS", 3, 4);
    let dir = tempfile::tempdir().unwrap();
    let db = format!("--libsqlite3-db={}", dir.path().join("gearmand.db").display());
    let Some(mut server) =
        ServerProc::start_gearmand(&["-q", "libsqlite3", &db], &dir.path().join("gearmand.log"))
    else {
        return;
    };
    let r = kill_loop(&mut server, kills, per_kill, submitters, false);
    eprintln!(
        "SOAK gearmand libsqlite3 queue: {kills} SIGKILLs under load from {submitters} clients: \
         {}; lost for example {:?}",
        r.line(),
        &r.lost[..r.lost.len().min(5)]
    );
    assert!(r.acked >= kills * per_kill, "only {} acknowledged", r.acked);
}

// ----- 2. malformed streams ---------------------------------------------

/// Admin words that start the text lines of the streams.
const WORDS: [&str; 6] = ["status", "workers", "show jobs", "cancel job", "maxqueue", "getpid"];

fn header(magic: &[u8; 4], kind: u32, size: u32) -> Vec<u8> {
    let mut h = magic.to_vec();
    h.extend_from_slice(&kind.to_be_bytes());
    h.extend_from_slice(&size.to_be_bytes());
    h
}

/// Stream number `i`: its kind is `i % 8`, its bytes random.
fn stream(rng: &mut Rng, i: usize) -> Vec<u8> {
    let small_body = |rng: &mut Rng| {
        let n = rng.below(64);
        rng.bytes(n)
    };
    match i % 8 {
        // A type of 0x80000000 or more (a signed type would be negative).
        0 => {
            let kind = 0x8000_0000 | rng.next() as u32;
            let body = small_body(rng);
            let mut v = header(b"\0REQ", kind, body.len() as u32);
            v.extend(body);
            v
        }
        // A magic that is neither \0REQ nor \0RES.
        1 => {
            let mut magic = [0u8; 4];
            magic[1..].copy_from_slice(&rng.bytes(3));
            if &magic == b"\0REQ" || &magic == b"\0RES" {
                magic[1] = b'X';
            }
            let body = small_body(rng);
            let mut v = header(&magic, 1 + rng.below(40) as u32, body.len() as u32);
            v.extend(body);
            v
        }
        // A header cut short.
        2 => {
            let h = header(b"\0REQ", 1 + rng.below(40) as u32, rng.below(64) as u32);
            h[..1 + rng.below(11)].to_vec()
        }
        // A huge declared size, then part of a body.
        3 => {
            let size = 0x1000_0000 | rng.next() as u32;
            let mut v = header(b"\0REQ", 1 + rng.below(40) as u32, size);
            let n = rng.below(4096);
            v.extend(rng.bytes(n));
            v
        }
        // Random bytes from the first one.
        4 => {
            let n = 1 + rng.below(2048);
            rng.bytes(n)
        }
        // A text line with binary bytes in it, sometimes longer than any line may be.
        5 => {
            let mut v = WORDS[rng.below(WORDS.len())].as_bytes().to_vec();
            v.push(b' ');
            let n = if rng.below(16) == 0 { 70_000 } else { rng.below(200) };
            v.extend(rng.bytes(n).into_iter().map(|b| if b == b'\n' { 0 } else { b }));
            v.extend_from_slice(if rng.below(2) == 0 { b"\r\n" } else { b"\n" });
            v
        }
        // Known types with bodies of random arguments and sizes that may lie.
        6 => {
            let mut v = Vec::new();
            for _ in 0..1 + rng.below(4) {
                let body = small_body(rng);
                let size = if rng.below(4) == 0 { rng.below(96) } else { body.len() };
                v.extend(header(b"\0REQ", rng.below(46) as u32, size as u32));
                v.extend(body);
            }
            v
        }
        // A valid echo, then random bytes.
        _ => {
            let mut v = Packet::EchoReq { data: b"fine" }.to_vec(Magic::Req);
            let n = rng.below(512);
            v.extend(rng.bytes(n));
            v
        }
    }
}

/// Sends `count` streams from seed `seed`, one connection each. Half of
/// them are half-closed and read until the server closes them; the others
/// are dropped at once. Returns how many were not closed within `T`.
fn send_streams(addr: SocketAddr, seed: u64, first: usize, count: usize) -> usize {
    spray_streams(addr, &mut Rng(seed), first, count, T, stream)
}

/// A normal client's round trip: ECHO, then a background job acknowledged.
fn still_serves(c: &mut Connection, round: usize) {
    let data = format!("round-{round}");
    echo(c, data.as_bytes());
    c.send(&bg(b"after-garbage", data.as_bytes(), b"x")).unwrap();
    let r = c.recv(deadline()).unwrap();
    assert_eq!(r.kind, PacketType::JobCreated, "{r:?}");
}

#[test]
fn malformed_streams_never_stop_the_server_process() {
    const THREADS: usize = 4;
    let total_streams = size("GEARFRAME_SOAK_STREAMS", 2_000, 72_500);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let mut server = ServerProc::start(&[], &log);
    let pid = server.pid();
    let addr = server.addr();
    let mut healthy = connect(&server.addr_string());
    let started = Instant::now();
    let per = total_streams.div_ceil(THREADS);
    let not_closed = std::thread::scope(|s| {
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let count = per.min(total_streams - (t * per).min(total_streams));
                s.spawn(move || send_streams(addr, 0x5eed_0000 + t as u64, t * per, count))
            })
            .collect();
        let mut round = 0;
        // A normal client keeps being served while the streams arrive.
        while !threads.iter().all(|t| t.is_finished()) {
            round += 1;
            still_serves(&mut healthy, round);
            std::thread::sleep(Duration::from_millis(50));
        }
        threads.into_iter().map(|t| t.join().unwrap()).sum::<usize>()
    });
    let took = started.elapsed();
    assert_eq!(server.exited(), None, "the server exited; its log: {}", read(&log));
    assert_eq!(not_closed, 0, "half-closed malformed streams the server left open");
    let mut fresh = connect(&server.addr_string());
    still_serves(&mut fresh, 0);
    still_serves(&mut healthy, 0);
    assert_eq!(admin(&server.addr_string(), "getpid", false), [format!("OK {pid}")]);
    let log = read(&log);
    assert!(!log.contains("panicked"), "the server log shows a panic: {log}");
    eprintln!(
        "SOAK malformed streams: {total_streams} streams of 8 kinds in {:.1} s; the server \
         (pid {pid}) stayed up and served ECHO and submissions throughout",
        took.as_secs_f64()
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// gearmand 1.1.20 dies of one packet whose type is 0x80000000 (its stack
/// trace goes to stderr and it exits with status 1); the same bytes get an
/// ERROR from gearframe, which goes on serving.
#[test]
fn one_packet_of_type_0x80000000_stops_gearmand_but_not_gearframe() {
    let dir = tempfile::tempdir().unwrap();
    let bad = header(b"\0REQ", 0x8000_0000, 0);

    let mut ours = ServerProc::start(&[], &dir.path().join("server.log"));
    let mut c = connect(&ours.addr_string());
    c.queue_bytes(&bad);
    c.flush().unwrap();
    let r = c.recv(deadline()).unwrap();
    assert_eq!((r.magic, r.kind), (Magic::Res, PacketType::Error), "{r:?}");
    assert_eq!(ours.exited(), None);
    still_serves(&mut connect(&ours.addr_string()), 1);

    let Some(mut gearmand) = ServerProc::start_gearmand(&[], &dir.path().join("gearmand.log"))
    else {
        return;
    };
    let mut c = connect(&gearmand.addr_string());
    c.queue_bytes(&bad);
    c.flush().unwrap();
    let status = eventually(T, "gearmand to exit", || gearmand.exited());
    eprintln!(
        "SOAK gearmand on one packet of type 0x80000000: exited with {status}; stderr: {}",
        read(&dir.path().join("gearmand.log")).lines().find(|l| !l.trim().is_empty()).unwrap_or("")
    );
    assert!(!status.success(), "gearmand exited with {status}");
}

// ----- 3. corrupt queue files -------------------------------------------

/// Runs `gearframe server --queue sqlite:PATH` and waits for it to exit;
/// returns its status and stderr.
fn start_refused(path: &Path) -> (std::process::ExitStatus, String) {
    let err = path.with_extension("stderr");
    let child = Command::new(env!("CARGO_BIN_EXE_gearframe"))
        .arg("server")
        .args(["-L", &format!("127.0.0.1:{}", free_port())])
        .args(["--queue", &format!("sqlite:{}", path.display())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let status = eventually(T, &format!("the server refusing {}", path.display()), || {
        child.0.try_wait().unwrap()
    });
    (status, read(&err))
}

/// A real queue file with `jobs` background jobs in it, written by the
/// server and closed cleanly.
fn real_queue(path: &Path, jobs: usize) {
    let queue = format!("sqlite:{}", path.display());
    let mut server = ServerProc::start(&["--queue", &queue], &path.with_extension("log"));
    let mut c = connect(&server.addr_string());
    let data = vec![b'd'; 1000];
    for i in 0..jobs {
        c.queue(&bg(b"stored", format!("u{i}").as_bytes(), &data)).unwrap();
    }
    c.flush().unwrap();
    for _ in 0..jobs {
        assert_eq!(c.recv(deadline()).unwrap().kind, PacketType::JobCreated);
    }
    server.terminate();
}

/// What a path holds: a file's bytes or a directory's entries.
#[derive(PartialEq, Eq)]
enum Snapshot {
    File(Vec<u8>),
    Dir(Vec<PathBuf>),
}

impl Snapshot {
    fn of(path: &Path) -> Snapshot {
        if path.is_dir() {
            Snapshot::Dir(std::fs::read_dir(path).unwrap().map(|e| e.unwrap().path()).collect())
        } else {
            Snapshot::File(std::fs::read(path).unwrap())
        }
    }

    /// How `self` differs from `before`, in a line (the byte offsets that changed).
    fn changes_from(&self, before: &Snapshot) -> Option<String> {
        match (before, self) {
            (Snapshot::File(a), Snapshot::File(b)) if a != b => {
                let at: Vec<usize> =
                    (0..a.len().max(b.len())).filter(|&i| a.get(i) != b.get(i)).take(10).collect();
                Some(format!("{} bytes, then {}; first changed offsets {at:?}", a.len(), b.len()))
            }
            (Snapshot::Dir(a), Snapshot::Dir(b)) if a != b => {
                Some(format!("directory entries {a:?}, then {b:?}"))
            }
            (a, b) if std::mem::discriminant(a) != std::mem::discriminant(b) => {
                Some("changed between file and directory".into())
            }
            _ => None,
        }
    }
}

/// A database holding a `gearframe_queue` table of other columns, with one row.
fn wrong_schema(path: &Path) {
    let db = rusqlite::Connection::open(path).unwrap();
    db.execute_batch(
        "CREATE TABLE gearframe_queue (job TEXT, payload BLOB);
         INSERT INTO gearframe_queue VALUES ('theirs', x'00ff');",
    )
    .unwrap();
}

/// The rows of a [`wrong_schema`] database.
fn wrong_schema_rows(path: &Path) -> Vec<(String, Vec<u8>)> {
    let db = rusqlite::Connection::open(path).unwrap();
    let mut st = db.prepare("SELECT job, payload FROM gearframe_queue").unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
}

/// Starts on `path`, expects a refusal naming the file with SQLite's
/// `message`; returns the line.
fn refused_with(path: &Path, message: &str) -> String {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let (status, stderr) = start_refused(path);
    assert!(!status.success(), "{name}: the server started ({status}); stderr: {stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains(&*path.to_string_lossy()))
        .unwrap_or_else(|| panic!("{name}: no line names {}: {stderr}", path.display()));
    assert!(line.contains(message), "{name}: {line:?} lacks SQLite's {message:?}");
    assert!(line.starts_with("gearframe: error: "), "{name}: {line:?}");
    assert_eq!(stderr.trim().lines().count(), 1, "{name}: more than the error line: {stderr}");
    line.to_string()
}

#[test]
fn corrupt_queue_files_are_refused_with_sqlites_message_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    let mut rng = Rng(0xc0ff_ee00);

    std::fs::write(at("random.db"), rng.bytes(100_000)).unwrap();
    real_queue(&at("real.db"), 300);
    let real = std::fs::read(at("real.db")).unwrap();
    assert!(real.len() > 100_000, "the real queue holds {} bytes", real.len());
    std::fs::write(at("truncated.db"), &real[..real.len() / 2]).unwrap();
    let mut zeroed = real.clone();
    zeroed[100..4096].fill(0);
    std::fs::write(at("schema-zeroed.db"), zeroed).unwrap();
    std::fs::create_dir(at("a-directory.db")).unwrap();

    let cases: [(&str, &str); 4] = [
        ("random.db", "file is not a database"),
        ("truncated.db", "database disk image is malformed"),
        ("schema-zeroed.db", "database disk image is malformed"),
        ("a-directory.db", "unable to open database file"),
    ];
    let mut seen = BTreeMap::new();
    for (name, message) in cases {
        let path = at(name);
        let before = Snapshot::of(&path);
        let line = refused_with(&path, message);
        if let Some(change) = Snapshot::of(&path).changes_from(&before) {
            panic!("{name} was changed by the refused start: {change}");
        }
        seen.insert(name, line);
    }
    // A queue table of other columns is refused too, and its rows are kept.
    let path = at("wrong-schema.db");
    wrong_schema(&path);
    let rows = wrong_schema_rows(&path);
    seen.insert("wrong-schema.db", refused_with(&path, "no such column"));
    assert_eq!(wrong_schema_rows(&path), rows);
    eprintln!("SOAK corrupt queue files, each refused at start: {seen:#?}");
}

/// A refused start leaves a database of the wrong schema byte for byte as it
/// was: the table is checked before the file is switched to WAL journal mode
/// (header bytes 18 and 19).
#[test]
fn a_refused_wrong_schema_database_is_left_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wrong-schema.db");
    wrong_schema(&path);
    let before = Snapshot::of(&path);
    refused_with(&path, "no such column");
    if let Some(change) = Snapshot::of(&path).changes_from(&before) {
        panic!("wrong-schema.db was changed by the refused start: {change}");
    }
}

/// What SQLite accepts as a database is used: a zero-length file becomes a
/// new queue, and another program's database gets the queue table next to
/// its own, which is kept.
#[test]
fn an_empty_file_or_another_programs_database_is_used_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let other = dir.path().join("other.db");
    {
        let db = rusqlite::Connection::open(&other).unwrap();
        db.execute_batch("CREATE TABLE notes (n TEXT); INSERT INTO notes VALUES ('keep me');")
            .unwrap();
    }
    for path in [&empty, &other] {
        let queue = format!("sqlite:{}", path.display());
        let mut server = ServerProc::start(&["--queue", &queue], &path.with_extension("log"));
        let mut c = connect(&server.addr_string());
        still_serves(&mut c, 1);
        server.kill9();
        server.restart();
        assert_eq!(total(&server.addr_string(), "after-garbage"), 1, "{}", path.display());
    }
    let db = rusqlite::Connection::open(&other).unwrap();
    let kept: String = db.query_row("SELECT n FROM notes", [], |r| r.get(0)).unwrap();
    assert_eq!(kept, "keep me");
}

// ----- 4. worker processes SIGKILLed mid-job ----------------------------

/// `(state, ppid)` of a `/proc` entry, `None` once it is reaped.
fn stat(pid: u32) -> Option<(char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut it = s[s.rfind(')')? + 1..].split_ascii_whitespace();
    Some((it.next()?.chars().next()?, it.next()?.parse().ok()?))
}

/// Zombie children of `parent`.
fn zombies_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat(pid) == Some(('Z', parent)))
        .collect()
}

/// The `start JOB PID` and `done JOB PID` lines of the runs file.
fn runs(path: &Path) -> Vec<(String, String, u32)> {
    read(path)
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            Some((f.next()?.to_string(), f.next()?.to_string(), f.next()?.parse().ok()?))
        })
        .collect()
}

fn spawn_worker(addr: &str, script: &str, log: &Path) -> ChildGuard {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_gearframe"))
            .args(["worker", "-s", addr, "-t", "1", "-f", "soak-shell"])
            .args(["--", "sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

#[test]
fn worker_processes_sigkilled_mid_job_rerun_each_job_exactly_once() {
    let kills = size("GEARFRAME_SOAK_WORKER_KILLS", 3, 20);
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&[], &dir.path().join("server.log"));
    let addr = server.addr_string();
    let runs_file = dir.path().join("runs");
    let seen = dir.path().join("seen");
    std::fs::create_dir(&seen).unwrap();
    // The first run of a job hangs (writing a line every 50 ms, so that it
    // dies of SIGPIPE once its worker is gone); the run after it completes.
    // Each run writes its `start` line once it knows which of the two it is.
    let script = format!(
        "p=$(cat); \
         if mkdir {s}/\"$p\" 2>/dev/null; then echo \"start $p $$\" >> {r}; \
         while :; do echo .; sleep 0.05; done; fi; \
         echo \"start $p $$\" >> {r}; echo \"done $p $$\" >> {r}; printf ok",
        r = runs_file.display(),
        s = seen.display()
    );
    let log = dir.path().join("workers.log");
    let mut client = connect(&addr);
    let mut worker = spawn_worker(&addr, &script, &log);
    let mut killed = Vec::new();
    let started = Instant::now();
    for k in 0..kills {
        let job = format!("job-{k}");
        client.send(&bg(b"soak-shell", job.as_bytes(), job.as_bytes())).unwrap();
        assert_eq!(client.recv(deadline()).unwrap().kind, PacketType::JobCreated);
        let pid = eventually(T, &format!("{job} started"), || {
            runs(&runs_file).into_iter().find(|(w, j, _)| w == "start" && *j == job).map(|r| r.2)
        });
        // Killed while the job runs; the next worker runs it again.
        let victim = worker.id();
        drop(std::mem::replace(&mut worker, spawn_worker(&addr, &script, &log)));
        killed.push((job.clone(), pid));
        eventually(T, &format!("{job} run again"), || {
            runs(&runs_file).iter().any(|(w, j, _)| w == "done" && *j == job).then_some(())
        });
        eventually(T, &format!("the killed run of {job} (pid {pid}) gone"), || {
            (!matches!(stat(pid), Some((s, _)) if s != 'Z')).then_some(())
        });
        assert!(stat(victim).is_none(), "the killed worker {victim} is not reaped");
        let live = worker.id();
        eventually(T, "the rerun reaped by its worker", || {
            zombies_of(live).is_empty().then_some(())
        });
    }
    eventually(T, "the queue empty", || (total(&addr, "soak-shell") == 0).then_some(()));
    let took = started.elapsed();
    let all = runs(&runs_file);
    let mut count: HashMap<(String, String), Vec<u32>> = HashMap::new();
    for (what, job, pid) in all {
        count.entry((what, job)).or_default().push(pid);
    }
    for (job, pid) in &killed {
        let starts = &count[&("start".to_string(), job.clone())];
        let done = &count[&("done".to_string(), job.clone())];
        assert_eq!(starts.len(), 2, "{job} started {starts:?}");
        assert_eq!(done.len(), 1, "{job} completed {done:?}");
        assert_eq!(starts[0], *pid);
        assert_ne!(done[0], *pid, "{job} completed by the killed run");
    }
    assert_eq!(count.len(), 2 * kills, "runs of other jobs: {count:?}");
    eprintln!(
        "SOAK worker SIGKILL mid-job: {kills} `gearframe worker` processes killed while their \
         shell job ran; each job ran again exactly once ({:.1} s); no zombie left",
        took.as_secs_f64()
    );
}
