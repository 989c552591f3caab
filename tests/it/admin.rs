//! The admin library and `gearframe admin` against the embedded server and
//! gearmand, with real workers and queued jobs: parsed figures equal the
//! state the test made, agreement with gearadmin, clearing 10,000 jobs,
//! stopping exactly the registered workers, a server that is down, watch.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use gearframe::admin::{AdminClient, AdminErrorKind, Cluster, MaxQueue, sum_status};
use gearframe::client::{Client, Job, JobOutcome};
use gearframe::proto::Priority;
use gearframe::worker::{JobError, Worker};
use serde_json::Value;

use crate::support::{self, ChildGuard, Gearmand, Opts, Ours, eventually, free_port};

pub(crate) const LIMIT: Duration = Duration::from_secs(20);
pub(crate) const T: Duration = Duration::from_secs(5);

/// A running server of either kind.
pub(crate) enum Srv {
    Ours(Ours),
    Gearmand(Gearmand),
}

impl Srv {
    pub(crate) fn addr(&self) -> String {
        match self {
            Srv::Ours(s) => s.addr().to_string(),
            Srv::Gearmand(g) => g.addr().to_string(),
        }
    }

    pub(crate) fn port(&self) -> u16 {
        match self {
            Srv::Ours(s) => s.addr().port(),
            Srv::Gearmand(g) => g.addr().port(),
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Srv::Ours(_) => "embedded",
            Srv::Gearmand(_) => "gearmand",
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        match self {
            Srv::Ours(_) => std::process::id(),
            Srv::Gearmand(g) => g.pid(),
        }
    }
}

/// The embedded server, and gearmand when it is installed.
pub(crate) fn servers() -> Vec<Srv> {
    let mut v = vec![Srv::Ours(Ours::start(&Opts::default()))];
    if let Some(g) = Gearmand::start(&Opts::default()) {
        v.push(Srv::Gearmand(g));
    }
    v
}

pub(crate) fn admin(addr: &str) -> AdminClient {
    AdminClient::connect(addr, T).unwrap()
}

pub(crate) fn client(addr: &str) -> Client {
    Client::builder().servers([addr]).ack_timeout(T).job_timeout(LIMIT).build().unwrap()
}

/// Submits `n` background jobs to `function` in one pipelined batch.
pub(crate) fn submit_many(addr: &str, function: &str, n: usize, priority: Priority) {
    let jobs: Vec<Job> = (0..n)
        .map(|i| Job::new(function, format!("p{i}")).priority(priority).background(true))
        .collect();
    let outs = client(addr).batch(&jobs).run();
    assert!(outs.iter().all(|o| o.is_ok()), "a submission failed on {addr}");
}

/// `(total, running, workers)` of `function`, if listed.
pub(crate) fn figures(addr: &str, function: &str) -> Option<(u64, u64, u64)> {
    admin(addr).function_status(function).unwrap().map(|f| (f.total, f.running, f.workers))
}

/// A worker whose `function` jobs block until released (bounded by LIMIT).
pub(crate) struct Gated {
    worker: Option<Worker>,
    release: Sender<()>,
}

impl Gated {
    pub(crate) fn start(addr: &str, name: &str, threads: usize, functions: &[&str]) -> Gated {
        let (tx, rx): (Sender<()>, Receiver<()>) = crossbeam_channel::unbounded();
        let mut b = Worker::builder().servers([addr]).client_id(name).threads(threads);
        for f in functions {
            let rx = rx.clone();
            b = b.register(
                *f,
                move |_: &gearframe::worker::Job, _: &mut gearframe::worker::JobContext<'_>| {
                    let _ = rx.recv_timeout(LIMIT);
                    Err(JobError::fail(Vec::new()))
                },
            );
        }
        Gated { worker: Some(b.grace(Duration::ZERO).build().unwrap()), release: tx }
    }
}

impl Drop for Gated {
    fn drop(&mut self) {
        for _ in 0..64 {
            let _ = self.release.send(());
        }
        if let Some(w) = self.worker.take() {
            w.shutdown();
            w.join();
        }
    }
}

/// A temporary config file for the binary (never ./config.yaml).
pub(crate) struct Cfg {
    _dir: tempfile::TempDir,
    pub(crate) path: PathBuf,
}

pub(crate) fn config(text: &str) -> Cfg {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, text).unwrap();
    Cfg { _dir: dir, path }
}

pub(crate) struct Out {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Out {
    pub(crate) fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

/// Runs `gearframe -c CONFIG ARGS` with a deadline; the child is killed if
/// it overruns.
pub(crate) fn run_with(cfg: &Cfg, args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gearframe"));
    cmd.arg("-c")
        .arg(&cfg.path)
        .args(args)
        .env_remove("GEARMAN_SERVERS")
        .env_remove("GEARFRAME_CONFIG")
        .env_remove("RUST_LOG")
        .env_remove("LINES")
        .env_remove("COLUMNS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = ChildGuard(cmd.spawn().unwrap());
    let mut so = child.0.stdout.take().unwrap();
    let mut se = child.0.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let status =
        eventually(Duration::from_secs(60), &format!("gearframe {args:?} to exit"), || {
            child.0.try_wait().unwrap()
        });
    Out { status, stdout: o.join().unwrap(), stderr: e.join().unwrap() }
}

pub(crate) fn run(cfg: &Cfg, args: &[&str]) -> Out {
    run_with(cfg, args, &[])
}

/// The data rows of a table (header skipped), split on runs of 2+ spaces.
pub(crate) fn table_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .skip(1)
        .map(|l| {
            l.split("  ").map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
        })
        .collect()
}

#[test]
fn library_figures_equal_the_state_made() {
    for srv in servers() {
        let addr = srv.addr();
        let ctx = srv.name();
        // 3 high, 2 normal, 1 low queued jobs without workers.
        let c = client(&addr);
        let mut handles = Vec::new();
        for (p, n) in [(Priority::High, 3), (Priority::Normal, 2), (Priority::Low, 1)] {
            for i in 0..n {
                let job = Job::new("adm_q", "x").priority(p).unique(format!("u-{p:?}-{i}"));
                handles.push(c.submit_background_job(&job).unwrap());
            }
        }
        // A worker with two slots, a client id with spaces, one job running.
        let gate = Gated::start(&addr, "admin test worker", 2, &["adm_busy", "adm_other"]);
        c.submit_background("adm_busy", "run").unwrap();
        eventually(LIMIT, "the busy job to run", || {
            (figures(&addr, "adm_busy") == Some((1, 1, 2))).then_some(())
        });

        let mut a = admin(&addr);
        let st = a.status().unwrap();
        let q = st.iter().find(|f| f.function == "adm_q").unwrap();
        assert_eq!((q.total, q.queued(), q.running, q.workers), (6, 6, 0, 0), "{ctx}");
        let b = st.iter().find(|f| f.function == "adm_busy").unwrap();
        assert_eq!((b.total, b.queued(), b.running, b.workers), (1, 0, 1, 2), "{ctx}");

        let ps = a.priority_status().unwrap();
        let p = ps.iter().find(|f| f.function == "adm_q").unwrap();
        assert_eq!((p.high, p.normal, p.low, p.workers), (3, 2, 1, 0), "{ctx}");

        let ws = a.workers().unwrap();
        let mine: Vec<_> = ws.iter().filter(|w| w.client_id == "admin test worker").collect();
        assert_eq!(mine.len(), 2, "{ctx}: {ws:?}");
        for w in &mine {
            assert_eq!(w.ip, "127.0.0.1");
            assert!(w.can_do("adm_busy") && w.can_do("adm_other"), "{ctx}: {w:?}");
        }

        let jobs = a.show_jobs().unwrap();
        for h in &handles {
            assert!(jobs.iter().any(|j| j.handle == h.as_str() && !j.ignored), "{ctx}: {h}");
        }
        assert_eq!(jobs.len(), 7, "{ctx}: {jobs:?}");
        let uniques = a.show_unique_jobs().unwrap();
        assert!(uniques.contains(&"u-High-2".to_string()), "{ctx}: {uniques:?}");
        assert_eq!(uniques.len(), 7, "{ctx}");

        assert!(!a.version().unwrap().is_empty());
        assert_eq!(a.getpid().unwrap(), srv.pid(), "{ctx}");
        assert!(!a.verbose().unwrap().is_empty());
        assert!(a.ping().unwrap() < T);

        // cancel: a queued job leaves at once on ours, is marked on
        // gearmand; an unknown handle is UNKNOWN_JOB.
        a.cancel_job(handles[0].as_str()).unwrap();
        let j = a.show_jobs().unwrap();
        let listed =
            |ignored| j.iter().any(|j| j.handle == handles[0].as_str() && j.ignored == ignored);
        match srv {
            Srv::Ours(_) => assert!(!listed(true) && !listed(false), "{ctx}: {j:?}"),
            Srv::Gearmand(_) => assert!(listed(true), "{ctx}: {j:?}"),
        }
        let e = a.cancel_job("H:nowhere:1").unwrap_err();
        assert_eq!(e.code(), Some("UNKNOWN_JOB"), "{ctx}: {e}");

        // create, drop, drop again.
        a.create_function("adm_made").unwrap();
        assert_eq!(figures(&addr, "adm_made"), Some((0, 0, 0)), "{ctx}");
        a.drop_function("adm_made").unwrap();
        assert_eq!(figures(&addr, "adm_made"), None, "{ctx}");
        assert!(
            matches!(a.drop_function("adm_made"), Err(e) if matches!(e.kind, AdminErrorKind::Server { .. }))
        );

        // maxqueue: one job fits, the second is refused.
        a.create_function("adm_mq").unwrap();
        a.set_max_queue("adm_mq", MaxQueue::all(1)).unwrap();
        c.submit_background("adm_mq", "1").unwrap();
        assert!(c.submit_background("adm_mq", "2").is_err(), "{ctx}: maxqueue not applied");

        // ERR lines decode into code and text.
        let e = a.command("frobnicate").unwrap_err();
        assert!(e.is_unknown_command(), "{ctx}: {e}");
        match &e.kind {
            AdminErrorKind::Server { message, .. } => {
                assert_eq!(message, "Unknown server commandfrobnicate")
            }
            other => panic!("{other}"),
        }
        // Arguments that would break the line are refused before sending.
        assert!(
            matches!(a.cancel_job("a b"), Err(e) if matches!(e.kind, AdminErrorKind::InvalidArgument(_)))
        );
        // The connection is still usable after all the errors.
        assert!(a.status().is_ok());
        drop(gate);
    }
}

/// `function -> (total, running, workers)` from `gearadmin --status`.
fn gearadmin_status(port: u16) -> Option<BTreeMap<String, (u64, u64, u64)>> {
    let bin = support::peer("gearadmin")?;
    let out = Command::new(bin)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--status"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut m = BTreeMap::new();
    for l in text.lines().filter(|l| *l != ".") {
        let f: Vec<&str> = l.split('\t').collect();
        assert_eq!(f.len(), 4, "gearadmin line {l:?}");
        m.insert(
            f[0].to_string(),
            (f[1].parse().unwrap(), f[2].parse().unwrap(), f[3].parse().unwrap()),
        );
    }
    Some(m)
}

#[test]
fn cli_status_agrees_with_gearadmin_and_json_matches_the_table() {
    let cfg = config("");
    for srv in servers() {
        let addr = srv.addr();
        let ctx = srv.name();
        submit_many(&addr, "cli_a", 5, Priority::Normal);
        submit_many(&addr, "cli_b", 2, Priority::Low);
        let _gate = Gated::start(&addr, "cli-worker", 3, &["cli_b"]);
        eventually(LIMIT, "two cli_b jobs running", || {
            (figures(&addr, "cli_b") == Some((2, 2, 3))).then_some(())
        });

        let table = run(&cfg, &["admin", "status", "-s", &addr]);
        assert_eq!(table.code(), Some(0), "{ctx}: {}", table.stderr);
        let json = run(&cfg, &["admin", "status", "-s", &addr, "--json"]).json();

        let mut from_json = BTreeMap::new();
        for f in json["servers"][0]["functions"].as_array().unwrap() {
            let n = |k: &str| f[k].as_u64().unwrap();
            assert_eq!(n("queued") + n("running"), n("total"));
            from_json.insert(
                f["function"].as_str().unwrap().to_string(),
                (n("total"), n("running"), n("workers")),
            );
        }
        assert_eq!(from_json["cli_a"], (5, 0, 0), "{ctx}");
        assert_eq!(from_json["cli_b"], (2, 2, 3), "{ctx}");
        assert_eq!(json["servers"][0]["up"], Value::Bool(true));

        let mut from_table = BTreeMap::new();
        for r in table_rows(&table.stdout) {
            assert_eq!(r.len(), 6, "{ctx}: row {r:?}");
            assert_eq!(r[0], addr);
            let n = |i: usize| r[i].parse::<u64>().unwrap();
            from_table.insert(r[1].clone(), (n(2), n(4), n(5)));
        }
        assert_eq!(from_table, from_json, "{ctx}: table and JSON differ");

        if let Some(g) = gearadmin_status(srv.port()) {
            assert_eq!(g, from_json, "{ctx}: gearadmin --status and gearframe admin status differ");
        }
    }
}

#[test]
fn clear_empties_10000_jobs_and_fails_waiting_clients() {
    let cfg = config("");
    for srv in servers() {
        let addr = srv.addr();
        let ctx = srv.name();
        submit_many(&addr, "clr", 10_000, Priority::Normal);
        submit_many(&addr, "clr_keep", 3, Priority::Normal);
        // A foreground client waits on a queued job of the function.
        let fg_client = client(&addr);
        let fg = std::thread::spawn(move || fg_client.submit("clr", "waiting"));
        eventually(LIMIT, "10001 queued jobs", || {
            (figures(&addr, "clr") == Some((10_001, 0, 0))).then_some(())
        });

        let started = Instant::now();
        let out = run(&cfg, &["admin", "clear", "clr", "-s", &addr, "--json"]);
        assert_eq!(out.code(), Some(0), "{ctx}: {}{}", out.stdout, out.stderr);
        let j = out.json();
        assert_eq!(j["cleared"], 10_001, "{ctx}: {j}");
        let report = &j["servers"][0]["clear"];
        assert_eq!(report["remaining"], 0, "{ctx}: {j}");
        eprintln!("{ctx}: cleared 10001 jobs by {} in {:?}", report["method"], started.elapsed());

        assert_eq!(figures(&addr, "clr").map(|f| f.0 - f.1), Some(0), "{ctx}: queue not empty");
        assert_eq!(figures(&addr, "clr_keep"), Some((3, 0, 0)), "{ctx}: other queue touched");
        let outcome = fg.join().unwrap().unwrap();
        assert!(matches!(outcome, JobOutcome::Failed { .. }), "{ctx}: {outcome:?}");
        // No draining worker is left behind.
        let ws = admin(&addr).workers().unwrap();
        assert!(ws.iter().all(|w| w.functions.is_empty()), "{ctx}: {ws:?}");

        // The table form, on an empty queue, and on a function nobody has.
        let out = run(&cfg, &["admin", "clear", "clr", "-s", &addr]);
        assert_eq!(out.code(), Some(0), "{ctx}: {}", out.stderr);
        assert!(out.stdout.ends_with("0 jobs cleared\n"), "{ctx}: {}", out.stdout);
        let out = run(&cfg, &["admin", "clear", "clr_nobody", "-s", &addr]);
        assert_eq!(out.code(), Some(1), "{ctx}: {}", out.stdout);
        assert!(out.stderr.contains("no function `clr_nobody` on "), "{}", out.stderr);
    }
}

/// The embedded server's native `clear function` command; skipped (with a
/// message) while the server answers it as an unknown command.
#[test]
fn native_clear_function_on_the_embedded_server() {
    let ours = Ours::start(&Opts::default());
    let addr = ours.addr().to_string();
    let mut a = admin(&addr);
    a.create_function("nat_probe").unwrap();
    match a.clear_function("nat_probe") {
        Err(e) if e.is_unknown_command() => {
            eprintln!(
                "SKIPPED: the embedded server does not answer `clear function` yet ({e}); \
                 `gearframe admin clear` uses the draining worker"
            );
            return;
        }
        r => assert_eq!(r.unwrap(), 0),
    }
    submit_many(&addr, "nat", 50, Priority::Normal);
    let _gate = Gated::start(&addr, "nat-worker", 1, &["nat"]);
    eventually(LIMIT, "one nat job running", || {
        (figures(&addr, "nat").map(|f| f.1) == Some(1)).then_some(())
    });
    let fg_client = client(&addr);
    let fg = std::thread::spawn(move || fg_client.submit("nat", "waiting"));
    eventually(LIMIT, "the waiting job queued", || {
        (figures(&addr, "nat").map(|f| f.0) == Some(51)).then_some(())
    });
    // Queued jobs go (49 background + 1 foreground); the running one stays.
    assert_eq!(a.clear_function("nat").unwrap(), 50);
    assert_eq!(figures(&addr, "nat"), Some((1, 1, 1)));
    let outcome = fg.join().unwrap().unwrap();
    assert!(matches!(outcome, JobOutcome::Failed { .. }), "{outcome:?}");
    let e = a.clear_function("nat_missing").unwrap_err();
    assert_eq!(e.code(), Some("UNKNOWN_FUNCTION"), "{e}");
    let cfg = config("");
    let out = run(&cfg, &["admin", "clear", "nat", "-s", &addr, "--json"]);
    assert_eq!(out.json()["servers"][0]["clear"]["method"], "native");
}

/// Starts `gearframe worker -f FUNCTION -t N -- cat` on `addr`.
pub(crate) fn worker_process(cfg: &Cfg, addr: &str, function: &str, threads: usize) -> ChildGuard {
    let child = Command::new(env!("CARGO_BIN_EXE_gearframe"))
        .arg("-c")
        .arg(&cfg.path)
        .args(["-q", "worker", "-s", addr, "--name", "stoppable", "-t", &threads.to_string()])
        .args(["-f", function, "--", "cat"])
        .env_remove("GEARMAN_SERVERS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    ChildGuard(child)
}

pub(crate) fn registered(addr: &str, function: &str) -> usize {
    admin(addr).workers().unwrap().iter().filter(|w| w.can_do(function)).count()
}

#[test]
fn stop_workers_stops_exactly_the_registered_workers() {
    let cfg = config("");
    for srv in servers() {
        let addr = srv.addr();
        let ctx = srv.name();
        let mut target = worker_process(&cfg, &addr, "stop_me", 3);
        let mut other = worker_process(&cfg, &addr, "stop_later", 2);
        eventually(LIMIT, "5 worker connections", || {
            (registered(&addr, "stop_me") == 3 && registered(&addr, "stop_later") == 2)
                .then_some(())
        });

        let out = run(&cfg, &["admin", "stop-workers", "stop_me", "-s", &addr, "--json"]);
        assert_eq!(out.code(), Some(0), "{ctx}: {}{}", out.stdout, out.stderr);
        let j = out.json();
        assert_eq!(
            (j["workers"].as_u64(), j["stopped"].as_u64()),
            (Some(3), Some(3)),
            "{ctx}: {j}"
        );
        assert_eq!(j["servers"][0]["stop"]["cancelled"], 0);
        let status = eventually(LIMIT, "the stopped worker process to exit", || {
            target.0.try_wait().unwrap()
        });
        assert!(status.success(), "{ctx}: {status}");
        assert_eq!(registered(&addr, "stop_later"), 2, "{ctx}: the other worker was touched");
        assert_eq!(registered(&addr, "stop_me"), 0);

        // `all`, as a table; then nothing is left to stop.
        let out = run(&cfg, &["admin", "stop-workers", "all", "-s", &addr]);
        assert_eq!(out.code(), Some(0), "{ctx}: {}{}", out.stdout, out.stderr);
        assert!(out.stdout.contains("stopped 2 of 2 workers"), "{ctx}: {}", out.stdout);
        eventually(LIMIT, "the other worker process to exit", || other.0.try_wait().unwrap());
        let out = run(&cfg, &["admin", "stop-workers", "all", "-s", &addr]);
        assert!(out.stdout.contains("stopped 0 of 0 workers"), "{ctx}: {}", out.stdout);
        // No shutdown job is left over to stop a worker started later.
        assert_eq!(figures(&addr, "stop_me").map_or(0, |f| f.0), 0, "{ctx}");
    }
}

#[test]
fn stop_workers_cancels_shutdown_jobs_nobody_took() {
    // A worker that ignores the convention (it fails every job, like a
    // non-gearframe worker would just run it) never disconnects.
    let ours = Ours::start(&Opts::default());
    let addr = ours.addr().to_string();
    let w = Worker::builder()
        .servers([addr.as_str()])
        .threads(1)
        .shutdown_jobs(false)
        .register(
            "deaf",
            |_: &gearframe::worker::Job, _: &mut gearframe::worker::JobContext<'_>| {
                Err(JobError::fail(Vec::new()))
            },
        )
        .build()
        .unwrap();
    let _gate = Gated::start(&addr, "busy", 1, &["deaf_busy"]);
    eventually(LIMIT, "the worker", || (registered(&addr, "deaf") == 1).then_some(()));
    let opts = gearframe::admin::StopWorkersOptions {
        timeout: T,
        wait: Duration::from_millis(300),
        ..Default::default()
    };
    let target = gearframe::admin::StopTarget::Function("deaf".into());
    let r = gearframe::admin::stop_workers(&addr, &target, &opts).unwrap();
    assert_eq!((r.workers, r.stopped), (1, 0));
    // The deaf worker consumed its shutdown job, so nothing was left to cancel.
    assert_eq!(r.cancelled, 0);
    w.shutdown();
    w.join();
    // A busy worker keeps its job past the wait: its shutdown job is cancelled.
    let c = client(&addr);
    c.submit_background("deaf_busy", "hold").unwrap();
    eventually(LIMIT, "the busy job", || {
        (figures(&addr, "deaf_busy") == Some((1, 1, 1))).then_some(())
    });
    let target = gearframe::admin::StopTarget::Function("deaf_busy".into());
    let r = gearframe::admin::stop_workers(&addr, &target, &opts).unwrap();
    assert_eq!((r.workers, r.stopped, r.cancelled), (1, 0, 1), "{r:?}");
    // The cancelled shutdown job is gone at once; the busy job is left.
    let jobs = admin(&addr).show_jobs().unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert!(!jobs[0].ignored, "{jobs:?}");
}

#[test]
fn one_of_two_servers_down() {
    let cfg = config("");
    let ours = Ours::start(&Opts::default());
    let up = ours.addr().to_string();
    let down = format!("127.0.0.1:{}", free_port());
    submit_many(&up, "dn", 4, Priority::Normal);
    let both = format!("{up},{down}");

    // The library: the dead server is an error in its own entry.
    let rs = Cluster::new([&up, &down], T).status();
    assert!(rs[0].result.is_ok());
    assert!(rs[1].result.as_ref().unwrap_err().is_down());
    assert_eq!(sum_status(&rs).iter().find(|f| f.function == "dn").unwrap().total, 4);

    for cmd in ["status", "workers", "ping", "version", "pid", "priority", "jobs"] {
        let out = run(&cfg, &["admin", cmd, "-s", &both]);
        assert_eq!(out.code(), Some(0), "{cmd}: {}{}", out.stdout, out.stderr);
        let line = out.stdout.lines().find(|l| l.starts_with(&down)).unwrap_or_default();
        assert!(line.contains("down: "), "{cmd}: {}", out.stdout);
    }
    let out = run(&cfg, &["admin", "status", "-s", &both]);
    let total = out.stdout.lines().find(|l| l.starts_with("TOTAL")).unwrap();
    assert_eq!(table_rows(&format!("h\n{total}"))[0], ["TOTAL", "dn", "4", "4", "0", "0"]);
    let j = run(&cfg, &["admin", "status", "-s", &both, "--json"]).json();
    assert_eq!(j["servers"][1]["up"], false);
    assert!(j["servers"][1]["error"].as_str().unwrap().starts_with("down: "));
    assert_eq!(j["totals"][0]["total"], 4);

    // All servers down: exit 2, still a table.
    let out = run(&cfg, &["admin", "status", "-s", &down]);
    assert_eq!(out.code(), Some(2), "{}", out.stdout);
    assert!(out.stdout.contains("down: "));
    assert!(out.stderr.contains("no server could be reached"), "{}", out.stderr);
}

#[test]
fn cli_commands_on_both_servers() {
    let cfg = config("");
    for srv in servers() {
        let addr = srv.addr();
        let ctx = srv.name();
        let _gate = Gated::start(&addr, "cli named worker", 2, &["cw_a", "cw_b"]);
        let _other = Gated::start(&addr, "other", 1, &["cw_c"]);
        eventually(LIMIT, "3 workers", || {
            (registered(&addr, "cw_a") == 2 && registered(&addr, "cw_c") == 1).then_some(())
        });
        let out = run(&cfg, &["admin", "workers", "cw_a", "-s", &addr, "--raw"]);
        assert_eq!(out.code(), Some(0), "{ctx}: {}", out.stderr);
        let rows = table_rows(&out.stdout);
        assert_eq!(rows.len(), 3, "{ctx}: {}", out.stdout);
        for r in &rows[..2] {
            assert_eq!((r[2].as_str(), r[3].as_str()), ("127.0.0.1", "cli named worker"), "{ctx}");
            assert!(r[4].split(' ').any(|f| f == "cw_a"), "{ctx}: {r:?}");
        }
        assert_eq!(rows[2], ["2 worker connections"]);
        let j = run(&cfg, &["admin", "workers", "-s", &addr, "--json", "--raw"]).json();
        assert_eq!(j["total"], 3, "{ctx}: {j}");

        submit_many(&addr, "cp", 2, Priority::High);
        submit_many(&addr, "cp", 1, Priority::Low);
        let j = run(&cfg, &["admin", "priority", "-s", &addr, "--json"]).json();
        let f = j["totals"].as_array().unwrap().iter().find(|f| f["function"] == "cp").unwrap();
        assert_eq!(
            (f["high"].as_u64(), f["normal"].as_u64(), f["low"].as_u64()),
            (Some(2), Some(0), Some(1))
        );

        let j = run(&cfg, &["admin", "jobs", "-s", &addr, "--json"]).json();
        assert_eq!(j["total"], 3, "{ctx}: {j}");
        let handle = j["servers"][0]["jobs"][0]["handle"].as_str().unwrap().to_string();
        let out = run(&cfg, &["admin", "cancel", &handle, "-s", &addr]);
        assert_eq!(out.code(), Some(0), "{ctx}: {}{}", out.stdout, out.stderr);
        let out = run(&cfg, &["admin", "cancel", "H:none:9", "-s", &addr]);
        assert_eq!(out.code(), Some(1), "{ctx}");
        assert!(out.stderr.contains("no server knows job H:none:9"), "{}", out.stderr);

        let j = run(&cfg, &["admin", "pid", "-s", &addr, "--json"]).json();
        assert_eq!(j["servers"][0]["pid"], srv.pid(), "{ctx}");
        let j = run(&cfg, &["admin", "ping", "-s", &addr, "--json"]).json();
        assert!(j["servers"][0]["ms"].as_f64().unwrap() >= 0.0);
        let out = run(&cfg, &["admin", "version", "-s", &addr]);
        assert_eq!(out.code(), Some(0));

        assert_eq!(run(&cfg, &["admin", "create", "cc", "-s", &addr]).code(), Some(0));
        assert_eq!(figures(&addr, "cc"), Some((0, 0, 0)), "{ctx}");
        assert_eq!(run(&cfg, &["admin", "maxqueue", "cc", "1", "-s", &addr]).code(), Some(0));
        let c = client(&addr);
        c.submit_background("cc", "1").unwrap();
        assert!(c.submit_background("cc", "2").is_err(), "{ctx}: maxqueue not applied");
        assert_eq!(run(&cfg, &["admin", "maxqueue", "cc", "0", "-s", &addr]).code(), Some(0));
        c.submit_background("cc", "3").unwrap();
        assert_eq!(run(&cfg, &["admin", "create", "cd", "-s", &addr]).code(), Some(0));
        assert_eq!(run(&cfg, &["admin", "drop", "cd", "-s", &addr]).code(), Some(0));
        assert_eq!(figures(&addr, "cd"), None, "{ctx}");
        let out = run(&cfg, &["admin", "drop", "cd", "-s", &addr]);
        assert_eq!(out.code(), Some(1), "{ctx}: {}", out.stdout);
        assert!(out.stdout.contains("error: "), "{ctx}: {}", out.stdout);
    }
}

#[test]
fn stop_server_stops_ours_and_explains_gearmand() {
    let cfg = config("");
    let ours = Ours::start(&Opts::default());
    let addr = ours.addr().to_string();
    let handle = ours.into_handle();
    let out = run(&cfg, &["admin", "stop-server", "-s", &addr]);
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("stopped"), "{}", out.stdout);
    assert!(handle.is_stopping());
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        handle.join();
        let _ = tx.send(());
    });
    rx.recv_timeout(LIMIT).expect("the server did not stop");

    let ours = Ours::start(&Opts::default());
    let addr = ours.addr().to_string();
    submit_many(&addr, "sg", 1, Priority::Normal);
    let out = run(&cfg, &["admin", "stop-server", "--graceful", "-s", &addr]);
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    assert!(ours.handle().is_stopping() || out.stdout.contains("once its jobs are done"));

    if let Some(g) = Gearmand::start(&Opts::default()) {
        let addr = g.addr().to_string();
        let out = run(&cfg, &["admin", "stop-server", "-s", &addr]);
        assert_eq!(out.code(), Some(1), "{}", out.stdout);
        assert!(out.stdout.contains("SIGTERM"), "{}", out.stdout);
        assert!(admin(&addr).version().is_ok(), "gearmand should still run");
    }
}

#[test]
fn watch_refreshes_count_times() {
    let ours = Ours::start(&Opts::default());
    let addr = ours.addr().to_string();
    submit_many(&addr, "wt", 7, Priority::Normal);
    let cfg = config(&format!("admin:\n  servers: [{addr}]\n  interval: 50ms\n"));
    let started = Instant::now();
    let out = run(&cfg, &["admin", "watch", "--count", "3"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.stdout.matches("gearframe admin watch").count(), 3, "{}", out.stdout);
    let row = out.stdout.lines().find(|l| l.starts_with("wt ")).unwrap();
    assert_eq!(table_rows(&format!("h\n{row}"))[0][..4], ["wt", "7", "0", "0"]);
    assert!(!out.stdout.contains('\x1b'), "no escapes when stdout is not a terminal");

    let out = run(&cfg, &["admin", "watch", "-n", "20ms", "--count", "2", "--json"]);
    let frames: Vec<Value> = out.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(frames.len(), 2);
    let f = &frames[1]["functions"][0];
    assert_eq!((f["function"].as_str(), f["queued"].as_u64()), (Some("wt"), Some(7)));
    assert_eq!(f["jobs_per_sec"].as_f64(), Some(0.0));
    assert!(frames[0]["functions"][0]["jobs_per_sec"].is_null());

    // Every server down: the frames still come, and the exit code says so.
    let down = format!("127.0.0.1:{}", free_port());
    let out = run(&cfg, &["admin", "watch", "-n", "20ms", "--count", "1", "-s", &down]);
    assert_eq!(out.code(), Some(2));
    assert!(out.stdout.contains("down: "), "{}", out.stdout);
}

#[test]
fn servers_come_from_flags_env_and_config() {
    let ours = Ours::start(&Opts::default());
    let addr = ours.addr().to_string();
    submit_many(&addr, "srcs", 1, Priority::Normal);
    let down = format!("127.0.0.1:{}", free_port());
    let cfg = config(&format!("admin:\n  servers: \"{addr}\"\n  timeout: 2s\n"));
    let from_cfg = run(&cfg, &["admin", "status"]);
    assert!(from_cfg.stdout.contains(&addr), "{}", from_cfg.stdout);
    let from_env = run_with(&cfg, &["admin", "status"], &[("GEARMAN_SERVERS", &down)]);
    assert_eq!(from_env.code(), Some(2), "GEARMAN_SERVERS overrides the config");
    let from_flag =
        run_with(&cfg, &["admin", "status", "-s", &addr], &[("GEARMAN_SERVERS", &down)]);
    assert_eq!(from_flag.code(), Some(0), "-s overrides GEARMAN_SERVERS");
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let cfg = config("");
    let cases: &[(&[&str], &str)] = &[
        (&["admin", "maxqueue", "f", "x"], "invalid value 'x'"),
        (&["admin", "maxqueue", "f", "1", "2"], "HIGH NORMAL LOW"),
        (&["admin", "status", "-s", "127.0.0.1:notaport"], "bad server `127.0.0.1:notaport`"),
        (&["admin", "create", "a b"], "invalid function name"),
        (&["admin", "cancel", ""], "invalid job handle"),
        (&["admin", "watch", "--count", "0"], "--count"),
        (&["admin", "watch", "--interval", "fast"], "invalid duration"),
        (&["admin", "status", "--timeout", "0"], "--timeout"),
        (&["admin", "frob"], "frob"),
    ];
    for (args, want) in cases {
        let out = run(&cfg, args);
        assert_eq!(out.code(), Some(2), "{args:?}: {}{}", out.stdout, out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(want), "{args:?}: {}", out.stderr);
    }
    let bad = config("admin:\n  timout: 1s\n");
    let out = run(&bad, &["admin", "status"]);
    assert_eq!(out.code(), Some(2));
    assert!(out.stderr.contains("timout"), "{}", out.stderr);
}

#[test]
fn watch_exits_cleanly_on_ctrl_c() {
    use std::io::{BufRead, BufReader};
    let ours = Ours::start(&Opts::default());
    let addr = ours.addr().to_string();
    let cfg = config("");
    let mut child = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_gearframe"))
            .arg("-c")
            .arg(&cfg.path)
            .args(["admin", "watch", "-n", "10s", "-s", &addr])
            .env_remove("GEARMAN_SERVERS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(LIMIT).expect("the first frame");
    assert!(first.starts_with("gearframe admin watch"), "{first}");
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    // The 10 s refresh wait is cut short by Ctrl-C.
    let started = Instant::now();
    let status = eventually(Duration::from_secs(5), "watch to exit on SIGINT", || {
        child.0.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// What a worker on gearmand registers to forge its listings: a `.` line
/// that ends `status` early, then a row for a function `fake`; and a client
/// id that cuts its `workers` row the same way.
const FORGED_FUNCTION: &[u8] = b"evil\n.\nfake\t9\t9\t9";
const FORGED_CLIENT_ID: &[u8] = b"evil\n.\nbad : fake";

// gearmand stores both names and prints them as they are: `status` reads
// `good 0 0 1`, `evil`, `.`, and the `fake` row plus the real `.` arrive
// after the listing's end. (gearadmin --status prints all of it, the `fake`
// row included, and exits 0.) gearframe's admin reads the listing up to the
// first `.`, warns about the `evil` line naming the server, lists `good`,
// and does not mix the rest into the next reply.
#[test]
fn forged_names_on_gearmand_neither_fail_nor_fool_the_admin() {
    let Some(g) = Gearmand::start(&Opts::default()) else { return };
    let addr = g.addr().to_string();
    let mut w = support::RawConn::connect(g.addr(), "forger");
    w.send(gearframe::proto::Packet::SetClientId { id: FORGED_CLIENT_ID });
    w.send(gearframe::proto::Packet::CanDo { function: FORGED_FUNCTION });
    w.send(gearframe::proto::Packet::CanDo { function: b"good" });
    assert!(w.sync().is_empty(), "gearmand answered the forged names");
    let cfg = config("");
    // One warning line naming the server and the skipped line.
    let warned = |out: &Out, fragment: &str| {
        assert!(
            out.stderr.lines().any(|l| l.contains("WARN")
                && l.contains(&addr)
                && l.contains("skipped")
                && l.contains(fragment)),
            "no warning naming {addr} and {fragment}: {}",
            out.stderr
        );
    };
    // Two commands in a row through the library: the second reply is its own.
    let mut a = admin(&addr);
    for _ in 0..2 {
        let st = a.status().unwrap();
        let names: Vec<&str> = st.iter().map(|f| f.function.as_str()).collect();
        assert!(names.contains(&"good") && !names.contains(&"fake"), "{st:?}");
        assert!(a.version().unwrap().starts_with("1."), "the leftover rows were read as a reply");
        let ws = a.workers().unwrap();
        assert!(ws.iter().all(|w| !w.can_do("fake") && !w.client_id.contains("fake")), "{ws:?}");
        assert!(a.show_jobs().unwrap().is_empty());
    }

    let out = run(&cfg, &["admin", "status", "-s", &addr]);
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    let functions: Vec<String> = table_rows(&out.stdout).iter().map(|r| r[1].clone()).collect();
    assert_eq!(functions, ["good"], "{}", out.stdout);
    warned(&out, "\"evil\" in the reply to `status`");

    let out = run(&cfg, &["admin", "status", "-s", &addr, "--json"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let j = out.json();
    assert_eq!(j["totals"].as_array().map(Vec::len), Some(1), "{j}");
    assert_eq!(j["totals"][0]["function"], "good", "{j}");
    warned(&out, "\"evil\" in the reply to `status`");

    let out = run(&cfg, &["admin", "workers", "--all", "-s", &addr]);
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    assert!(!out.stdout.contains("fake"), "{}", out.stdout);
    warned(&out, " 127.0.0.1 evil\" in the reply to `workers`");

    let out = run(&cfg, &["admin", "workers", "--all", "-s", &addr, "--json"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(!out.stdout.contains("fake"), "{}", out.stdout);
}
