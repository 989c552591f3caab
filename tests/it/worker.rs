//! The worker pool against the embedded server and gearmand: concurrency,
//! no over-grabbing, panics, reconnects, shutdown jobs, SIGTERM, retries,
//! dead letters, pushed jobs, and interop with the `gearman` CLI, pygearman
//! and gear's server.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gearframe::conn::Connection;
use gearframe::proto::{Packet, PacketType, Priority, SubmitKind};
use gearframe::server::{Server, ServerConfig};
use gearframe::worker::shell::{OutputMode, ShellCommand};
use gearframe::worker::{FunctionOptions, Job, JobContext, JobError, ShellFunction, Worker};

use crate::support::{self, ChildGuard, Gearmand, Opts, Ours};

const LIMIT: Duration = Duration::from_secs(20);

/// A running server of either kind.
enum Srv {
    Ours(Ours),
    Gearmand(Gearmand),
}

impl Srv {
    fn addr(&self) -> SocketAddr {
        match self {
            Srv::Ours(s) => s.addr(),
            Srv::Gearmand(g) => g.addr(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Srv::Ours(_) => "embedded",
            Srv::Gearmand(_) => "gearmand",
        }
    }
}

/// The embedded server, and gearmand when it is installed.
fn servers() -> Vec<Srv> {
    let mut v = vec![Srv::Ours(Ours::start(&Opts::default()))];
    if let Some(g) = Gearmand::start(&Opts::default()) {
        v.push(Srv::Gearmand(g));
    }
    v
}

/// What a foreground client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Data(Vec<u8>),
    Warning(Vec<u8>),
    Status(String, String),
    Complete(Vec<u8>),
    Fail,
    Exception(Vec<u8>),
}

fn connect(addr: SocketAddr) -> Connection {
    Connection::connect(&addr.to_string(), Duration::from_secs(5)).unwrap()
}

fn submit_on(c: &mut Connection, func: &str, payload: &[u8], background: bool) -> String {
    c.send(&Packet::Submit {
        kind: SubmitKind { priority: Priority::Normal, background },
        function: func.as_bytes(),
        unique: b"",
        data: payload,
    })
    .unwrap();
    let p = c.recv(Some(Instant::now() + LIMIT)).unwrap();
    assert_eq!(p.kind, PacketType::JobCreated, "{p:?}");
    String::from_utf8(p.body).unwrap()
}

/// Submits a background job.
fn submit_bg(addr: SocketAddr, func: &str, payload: &[u8]) {
    let mut c = connect(addr);
    submit_on(&mut c, func, payload, true);
}

/// Runs a foreground job and returns every event up to the terminal one.
fn run_fg(addr: SocketAddr, func: &str, payload: &[u8], exceptions: bool) -> Vec<Ev> {
    let mut c = connect(addr);
    if exceptions {
        c.send(&Packet::OptionReq { option: b"exceptions" }).unwrap();
        let p = c.recv(Some(Instant::now() + LIMIT)).unwrap();
        assert_eq!(p.kind, PacketType::OptionRes);
    }
    submit_on(&mut c, func, payload, false);
    let mut evs = Vec::new();
    loop {
        let p = c.recv(Some(Instant::now() + LIMIT)).expect("job result");
        let ev = match p.packet().unwrap() {
            Packet::WorkData { data, .. } => Ev::Data(data.to_vec()),
            Packet::WorkWarning { data, .. } => Ev::Warning(data.to_vec()),
            Packet::WorkStatus { numerator, denominator, .. } => Ev::Status(
                String::from_utf8_lossy(numerator).into(),
                String::from_utf8_lossy(denominator).into(),
            ),
            Packet::WorkComplete { data, .. } => Ev::Complete(data.to_vec()),
            Packet::WorkFail { .. } => Ev::Fail,
            Packet::WorkException { data, .. } => Ev::Exception(data.to_vec()),
            other => panic!("unexpected {other:?}"),
        };
        let done = matches!(ev, Ev::Complete(_) | Ev::Fail | Ev::Exception(_));
        evs.push(ev);
        if done {
            return evs;
        }
    }
}

/// Lines of an admin list command.
fn admin(addr: SocketAddr, cmd: &str) -> Vec<String> {
    let mut c = connect(addr);
    c.queue_bytes(format!("{cmd}\n").as_bytes());
    c.flush().unwrap();
    let mut lines = Vec::new();
    loop {
        let l = c.recv_line(Some(Instant::now() + LIMIT)).unwrap();
        if l.trim_end() == "." {
            return lines;
        }
        lines.push(l);
    }
}

/// `(total, running, workers)` of a function from `status`.
fn status(addr: SocketAddr, func: &str) -> (u64, u64, u64) {
    for l in admin(addr, "status") {
        let f: Vec<&str> = l.split('\t').collect();
        if f.len() == 4 && f[0] == func {
            return (f[1].parse().unwrap(), f[2].parse().unwrap(), f[3].parse().unwrap());
        }
    }
    (0, 0, 0)
}

/// `workers` lines whose client id is `id`.
fn workers_named(addr: SocketAddr, id: &str) -> Vec<String> {
    admin(addr, "workers")
        .into_iter()
        .filter(|l| l.split(" : ").next().is_some_and(|h| h.ends_with(&format!(" {id}"))))
        .collect()
}

fn echo_worker(addr: SocketAddr, id: &str, threads: usize) -> Worker {
    Worker::builder()
        .servers([addr.to_string()])
        .client_id(id)
        .threads(threads)
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .register("echo", gearframe::worker::Echo)
        .build()
        .unwrap()
}

#[test]
fn ten_slots_run_ten_jobs_at_once() {
    for srv in servers() {
        let spans: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
        let s2 = Arc::clone(&spans);
        let w = Worker::builder()
            .servers([srv.addr().to_string()])
            .client_id("overlap")
            .register("nap", move |_: &Job, _: &mut JobContext<'_>| {
                let start = Instant::now();
                // The job's work: long enough for all ten to be running.
                std::thread::sleep(Duration::from_millis(400));
                s2.lock().unwrap().push((start, Instant::now()));
                Ok(Vec::new())
            })
            .build()
            .unwrap();
        support::eventually(LIMIT, "10 slots registered", || {
            (status(srv.addr(), "nap").2 == 10).then_some(())
        });
        for _ in 0..10 {
            submit_bg(srv.addr(), "nap", b"");
        }
        support::eventually(LIMIT, "10 jobs done", || {
            (spans.lock().unwrap().len() == 10).then_some(())
        });
        let spans = spans.lock().unwrap();
        let latest_start = spans.iter().map(|s| s.0).max().unwrap();
        let earliest_end = spans.iter().map(|s| s.1).min().unwrap();
        assert!(latest_start < earliest_end, "{}: the 10 jobs did not all overlap", srv.name());
        w.shutdown();
        w.join();
    }
}

#[test]
fn ten_slots_never_hold_more_than_ten_of_a_hundred_jobs() {
    for srv in servers() {
        let done = Arc::new(AtomicUsize::new(0));
        let d2 = Arc::clone(&done);
        let w = Worker::builder()
            .servers([srv.addr().to_string()])
            .client_id("bounded")
            .threads(10)
            .register("work", move |_: &Job, _: &mut JobContext<'_>| {
                std::thread::sleep(Duration::from_millis(15));
                d2.fetch_add(1, Ordering::SeqCst);
                Ok(b"ok".to_vec())
            })
            .build()
            .unwrap();
        let mut c = connect(srv.addr());
        for _ in 0..100 {
            submit_on(&mut c, "work", b"x", true);
        }
        let mut max_running = 0;
        let mut polls = 0;
        support::eventually(LIMIT, "100 jobs done", || {
            let (_, running, _) = status(srv.addr(), "work");
            max_running = max_running.max(running);
            assert!(w.running_jobs() <= 10);
            polls += 1;
            (done.load(Ordering::SeqCst) == 100).then_some(())
        });
        assert!(max_running <= 10, "{}: server saw {max_running} running", srv.name());
        assert!(polls > 3, "the status was sampled only {polls} times");
        w.shutdown();
        w.join();
    }
}

#[test]
fn a_panicking_handler_fails_its_job_and_the_slot_serves_on() {
    for srv in servers() {
        let w = Worker::builder()
            .servers([srv.addr().to_string()])
            .threads(1)
            .register("maybe", |job: &Job, _: &mut JobContext<'_>| {
                if job.payload() == b"boom" {
                    panic!("asked to explode");
                }
                Ok(job.payload().to_vec())
            })
            .build()
            .unwrap();
        let evs = run_fg(srv.addr(), "maybe", b"boom", false);
        assert_eq!(evs.last(), Some(&Ev::Fail), "{}: {evs:?}", srv.name());
        assert!(
            evs.contains(&Ev::Warning(b"handler panicked: asked to explode".to_vec())),
            "{evs:?}"
        );
        assert_eq!(run_fg(srv.addr(), "maybe", b"fine", false), [Ev::Complete(b"fine".to_vec())]);
        assert_eq!(w.live_slots(), 1);
        w.shutdown();
        w.join();
    }
}

#[test]
fn context_updates_and_exceptions_reach_the_client() {
    for srv in servers() {
        let w = Worker::builder()
            .servers([srv.addr().to_string()])
            .threads(2)
            .register("chatty", |job: &Job, ctx: &mut JobContext<'_>| {
                ctx.data(b"part")?;
                ctx.warning(b"careful")?;
                ctx.status(1, 2)?;
                if job.payload() == b"fail" {
                    return Err(JobError::exception("bad input"));
                }
                Ok(b"whole".to_vec())
            })
            .build()
            .unwrap();
        let evs = run_fg(srv.addr(), "chatty", b"", false);
        assert_eq!(
            evs,
            [
                Ev::Data(b"part".to_vec()),
                Ev::Warning(b"careful".to_vec()),
                Ev::Status("1".into(), "2".into()),
                Ev::Complete(b"whole".to_vec())
            ],
            "{}",
            srv.name()
        );
        let evs = run_fg(srv.addr(), "chatty", b"fail", true);
        assert_eq!(evs.last(), Some(&Ev::Exception(b"bad input".to_vec())), "{}", srv.name());
        let evs = run_fg(srv.addr(), "chatty", b"fail", false);
        assert_eq!(evs.last(), Some(&Ev::Fail), "{}", srv.name());
        w.shutdown();
        w.join();
    }
}

/// Starts the embedded server or gearmand on a given port.
enum Fixed {
    Ours(gearframe::server::ServerHandle),
    Gearmand(ChildGuard),
}

fn start_fixed(gearmand: bool, port: u16) -> Option<Fixed> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let f = if gearmand {
        let bin = support::peer("gearmand")?;
        let child = Command::new(bin)
            .args(["--listen=127.0.0.1", &format!("--port={port}"), "--log-file=none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Fixed::Gearmand(ChildGuard(child))
    } else {
        let cfg = ServerConfig { listen: addr.to_string(), ..ServerConfig::default() };
        // The port was just released by the previous server; it may take a
        // moment before it can be bound again.
        Fixed::Ours(support::eventually(LIMIT, "binding the port", || {
            Server::bind(cfg.clone()).ok()
        }))
    };
    support::wait_listening(addr, LIMIT);
    Some(f)
}

fn stop_fixed(f: Fixed) {
    match f {
        Fixed::Ours(h) => {
            h.shutdown();
            h.join();
        }
        Fixed::Gearmand(g) => drop(g),
    }
}

#[test]
fn a_restarted_server_gets_the_worker_back() {
    for gearmand in [false, true] {
        let port = support::free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let Some(first) = start_fixed(gearmand, port) else { continue };
        let w = echo_worker(addr, "phoenix", 2);
        support::eventually(LIMIT, "registration", || {
            (workers_named(addr, "phoenix").len() == 2).then_some(())
        });
        assert_eq!(run_fg(addr, "echo", b"before", false), [Ev::Complete(b"before".to_vec())]);
        stop_fixed(first);
        let second = start_fixed(gearmand, port).unwrap();
        support::eventually(LIMIT, "re-registration", || {
            let ws = workers_named(addr, "phoenix");
            (ws.len() == 2 && ws.iter().all(|l| l.ends_with(": echo"))).then_some(())
        });
        assert_eq!(
            run_fg(addr, "echo", b"after", false),
            [Ev::Complete(b"after".to_vec())],
            "gearmand={gearmand}"
        );
        w.shutdown();
        w.join();
        stop_fixed(second);
    }
}

#[test]
fn a_worker_started_before_its_server_waits_for_it() {
    let port = support::free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let w = echo_worker(addr, "early", 1);
    let srv = start_fixed(false, port).unwrap();
    support::eventually(LIMIT, "registration", || {
        (workers_named(addr, "early").len() == 1).then_some(())
    });
    assert_eq!(run_fg(addr, "echo", b"hi", false), [Ev::Complete(b"hi".to_vec())]);
    w.shutdown();
    w.join();
    stop_fixed(srv);
}

#[test]
fn other_servers_keep_working_while_one_is_down() {
    let good = Ours::start(&Opts::default());
    let dead_port = support::free_port();
    let w = Worker::builder()
        .servers([good.addr().to_string(), format!("127.0.0.1:{dead_port}")])
        .threads(2)
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(100))
        .register("echo", gearframe::worker::Echo)
        .build()
        .unwrap();
    assert_eq!(run_fg(good.addr(), "echo", b"up", false), [Ev::Complete(b"up".to_vec())]);
    assert_eq!(w.live_slots(), 4);
    let t = Instant::now();
    w.shutdown();
    w.join();
    assert!(t.elapsed() < Duration::from_secs(5), "shutdown took {:?}", t.elapsed());
}

#[test]
fn shutdown_jobs_stop_exactly_as_many_slots() {
    for srv in servers() {
        let w = echo_worker(srv.addr(), "stoppable", 4);
        support::eventually(LIMIT, "registration", || {
            (workers_named(srv.addr(), "stoppable").len() == 4).then_some(())
        });
        let evs = run_fg(srv.addr(), "echo", br#"{"SHUTDOWN": true}"#, false);
        assert_eq!(evs, [Ev::Complete(br#"{"SHUTDOWN": true}"#.to_vec())]);
        submit_bg(srv.addr(), "echo", br#"{"SHUTDOWN": true}"#);
        submit_bg(srv.addr(), "echo", br#"{"SHUTDOWN": true}"#);
        support::eventually(LIMIT, "3 slots stopped", || (w.live_slots() == 1).then_some(()));
        support::eventually(LIMIT, "one slot left on the server", || {
            (workers_named(srv.addr(), "stoppable").len() == 1).then_some(())
        });
        assert_eq!(
            run_fg(srv.addr(), "echo", b"still here", false),
            [Ev::Complete(b"still here".to_vec())]
        );
        submit_bg(srv.addr(), "echo", br#"{"SHUTDOWN": true}"#);
        // The last one ends the worker: join returns without a shutdown.
        w.join();
    }
}

#[test]
fn shutdown_wakes_idle_slots_at_once_and_lets_a_running_job_finish() {
    let srv = Ours::start(&Opts::default());
    let finished = Arc::new(AtomicUsize::new(0));
    let f2 = Arc::clone(&finished);
    let w = Worker::builder()
        .servers([srv.addr().to_string()])
        .threads(3)
        .register("slow", move |_: &Job, _: &mut JobContext<'_>| {
            std::thread::sleep(Duration::from_millis(500));
            f2.fetch_add(1, Ordering::SeqCst);
            Ok(b"done".to_vec())
        })
        .build()
        .unwrap();
    let addr = srv.addr();
    let client = std::thread::spawn(move || run_fg(addr, "slow", b"", false));
    support::eventually(LIMIT, "job running", || (w.running_jobs() == 1).then_some(()));
    let t = Instant::now();
    w.shutdown();
    w.join();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(finished.load(Ordering::SeqCst), 1);
    assert_eq!(client.join().unwrap(), [Ev::Complete(b"done".to_vec())]);
}

#[test]
fn after_the_grace_period_a_shell_job_is_killed_and_requeued() {
    let srv = Ours::start(&Opts::default());
    let w = Worker::builder()
        .servers([srv.addr().to_string()])
        .threads(1)
        .grace(Duration::from_millis(200))
        .register(
            "long",
            ShellFunction::new(
                ShellCommand::argv(["sleep", "30"]).kill_grace(Duration::from_millis(100)),
            ),
        )
        .build()
        .unwrap();
    submit_bg(srv.addr(), "long", b"");
    support::eventually(LIMIT, "job running", || (w.running_jobs() == 1).then_some(()));
    let t = Instant::now();
    w.shutdown();
    w.join();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // Not reported failed: the server has it queued again.
    support::eventually(LIMIT, "requeued", || {
        let (total, running, _) = status(srv.addr(), "long");
        (total == 1 && running == 0).then_some(())
    });
}

#[test]
fn retries_run_a_failed_job_again_before_reporting() {
    for srv in servers() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c2 = Arc::clone(&calls);
        let dead: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let d2 = Arc::clone(&dead);
        let opts = FunctionOptions {
            retries: 2,
            retry_backoff: Duration::from_millis(10),
            ..Default::default()
        };
        let w = Worker::builder()
            .servers([srv.addr().to_string()])
            .threads(2)
            .register_with(
                "flaky",
                move |job: &Job, _: &mut JobContext<'_>| {
                    c2.fetch_add(1, Ordering::SeqCst);
                    if job.attempt() < 3 {
                        Err(JobError::fail("not yet"))
                    } else {
                        Ok(b"third time".to_vec())
                    }
                },
                opts.clone(),
            )
            .register_with(
                "broken",
                |_: &Job, _: &mut JobContext<'_>| Err(JobError::exception("always")),
                FunctionOptions { on_failure: Some("dead".into()), ..opts },
            )
            .register("dead", move |job: &Job, _: &mut JobContext<'_>| {
                d2.lock().unwrap().push(serde_json::from_slice(job.payload()).unwrap());
                Ok(Vec::new())
            })
            .build()
            .unwrap();
        assert_eq!(run_fg(srv.addr(), "flaky", b"", false), [Ev::Complete(b"third time".to_vec())]);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(
            run_fg(srv.addr(), "broken", b"payload-1", true),
            [Ev::Exception(b"always".to_vec())]
        );
        let letter =
            support::eventually(LIMIT, "dead letter", || dead.lock().unwrap().first().cloned());
        assert_eq!(letter["function"], "broken");
        assert_eq!(letter["payload"], "payload-1");
        assert_eq!(letter["error"], "always");
        assert_eq!(letter["attempts"], 3);
        w.shutdown();
        w.join();
    }
}

#[test]
fn shell_functions_stream_and_report_failures_through_the_servers() {
    for srv in servers() {
        let w = Worker::builder()
            .servers([srv.addr().to_string()])
            .threads(2)
            .register(
                "lines",
                ShellFunction::new(
                    ShellCommand::shell("cat; printf 'x\\ny\\n'").output(OutputMode::Stream),
                ),
            )
            .register(
                "fails",
                ShellFunction::new(ShellCommand::shell("echo 'no such thing' >&2; exit 5")),
            )
            .register(
                "env",
                ShellFunction::new(ShellCommand::shell("printf %s \"$GEARMAN_FUNCTION\"")),
            )
            .build()
            .unwrap();
        let evs = run_fg(srv.addr(), "lines", b"a\n", false);
        assert_eq!(
            evs,
            [
                Ev::Data(b"a\n".to_vec()),
                Ev::Data(b"x\n".to_vec()),
                Ev::Data(b"y\n".to_vec()),
                Ev::Complete(vec![])
            ],
            "{}",
            srv.name()
        );
        // The reason as a warning, then the end the server relays safely.
        let reason = b"exit code 5: no such thing".to_vec();
        let end = match srv {
            Srv::Ours(_) => Ev::Exception(reason.clone()),
            Srv::Gearmand(_) => Ev::Fail,
        };
        let evs = run_fg(srv.addr(), "fails", b"", true);
        assert_eq!(evs, [Ev::Warning(reason.clone()), end], "{}", srv.name());
        let evs = run_fg(srv.addr(), "fails", b"", false);
        assert_eq!(evs, [Ev::Warning(reason), Ev::Fail], "{}", srv.name());
        assert_eq!(run_fg(srv.addr(), "env", b"", false), [Ev::Complete(b"env".to_vec())]);
        w.shutdown();
        w.join();
    }
}

// ---- the binary ----

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gearframe"));
    c.env_remove("GEARMAN_SERVERS").env_remove("GEARFRAME_CONFIG").env("RUST_LOG", "warn");
    c
}

fn empty_config() -> tempfile::NamedTempFile {
    tempfile::NamedTempFile::new().unwrap()
}

#[test]
fn sigterm_lets_running_jobs_finish_and_exits_zero() {
    let srv = Ours::start(&Opts::default());
    let cfg = empty_config();
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let script = format!("echo x >> '{}'; sleep 0.7; echo finished", started.display());
    let child = bin()
        .args([
            "-c",
            cfg.path().to_str().unwrap(),
            "worker",
            "-s",
            &srv.addr().to_string(),
            "--threads",
            "3",
        ])
        .args(["-f", "slow", "--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let addr = srv.addr();
    let clients: Vec<_> =
        (0..3).map(|_| std::thread::spawn(move || run_fg(addr, "slow", b"", false))).collect();
    support::eventually(LIMIT, "3 jobs running", || (status(addr, "slow").1 == 3).then_some(()));
    // Assigned is not yet started: a job pushed to a slot that has not read
    // it when the stop comes goes back to the server. Stop once all three
    // commands run.
    support::eventually(LIMIT, "3 commands started", || {
        let n = std::fs::read_to_string(&started).unwrap_or_default().lines().count();
        (n == 3).then_some(())
    });
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    for c in clients {
        assert_eq!(c.join().unwrap(), [Ev::Complete(b"finished\n".to_vec())]);
    }
    let code = support::eventually(LIMIT, "worker exit", || child.0.try_wait().unwrap());
    assert_eq!(code.code(), Some(0));
}

#[test]
fn cli_worker_serves_config_functions_and_builtin_echo() {
    let srv = Ours::start(&Opts::default());
    let mut cfg = empty_config();
    write!(
        cfg,
        "worker:\n  name: from-config\n  threads: 2\n  servers: [{}]\n  functions:\n    upper:\n      shell: tr a-z A-Z\n",
        srv.addr()
    )
    .unwrap();
    let child = bin()
        .args(["-c", cfg.path().to_str().unwrap(), "worker", "upper", "echo"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = ChildGuard(child);
    support::eventually(LIMIT, "registration", || {
        (workers_named(srv.addr(), "from-config").len() == 2).then_some(())
    });
    assert_eq!(run_fg(srv.addr(), "upper", b"abc", false), [Ev::Complete(b"ABC".to_vec())]);
    assert_eq!(run_fg(srv.addr(), "echo", b"abc", false), [Ev::Complete(b"abc".to_vec())]);
}

#[test]
fn cli_errors_name_what_to_fix() {
    let cfg = empty_config();
    let out =
        bin().args(["-c", cfg.path().to_str().unwrap(), "worker", "nosuch"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown function `nosuch`"), "{err}");
    let out = bin().args(["-c", cfg.path().to_str().unwrap(), "worker"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no function to run"));
    let mut bad = empty_config();
    write!(bad, "worker:\n  functions:\n    f:\n      command: []\n").unwrap();
    let out = bin().args(["-c", bad.path().to_str().unwrap(), "worker"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("worker.functions.f.command: give"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

// ---- interop ----

#[test]
fn the_gearman_cli_gets_results_from_our_worker() {
    let Some(gearman) = support::peer("gearman") else { return };
    for srv in servers() {
        let w = Worker::builder()
            .servers([srv.addr().to_string()])
            .threads(2)
            .register("wc", ShellFunction::new(ShellCommand::argv(["wc", "-l"])))
            .build()
            .unwrap();
        let mut child = Command::new(&gearman)
            .args(["-h", "127.0.0.1", "-p", &srv.addr().port().to_string(), "-f", "wc"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"1\n2\n3\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}: {out:?}", srv.name());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3", "{}", srv.name());
        w.shutdown();
        w.join();
    }
}

#[test]
fn pygearman_clients_get_results_from_our_worker() {
    let Some(python) = support::peer("python3") else { return };
    let probe = Command::new(&python).args(["-c", "import gearman"]).output().unwrap();
    if !probe.status.success() {
        support::missing::<()>("python module gearman (pip install pygearman)");
        return;
    }
    for srv in servers() {
        let w = Worker::builder()
            .servers([srv.addr().to_string()])
            .threads(2)
            .register("reverse", |job: &Job, _: &mut JobContext<'_>| {
                Ok(job.payload().iter().rev().copied().collect())
            })
            .register(
                "fails",
                ShellFunction::new(ShellCommand::shell("exit 3"))
                    .failure(gearframe::worker::FailKind::Fail),
            )
            // The default: chosen per server, so that gearmand never turns it
            // into a WORK_FAIL pygearman cannot match.
            .register("excepts", ShellFunction::new(ShellCommand::shell("exit 3")))
            .build()
            .unwrap();
        let script = format!(
            r#"
import gearman
c = gearman.GearmanClient(['{addr}'])
r = c.submit_job('reverse', 'hello', poll_timeout=15)
print(r.state, r.result.decode())
r = c.submit_job('fails', 'x', poll_timeout=15)
print(r.state)
r = c.submit_job('excepts', 'x', poll_timeout=15)
print(r.state)
"#,
            addr = srv.addr(),
        );
        let out = Command::new(&python).args(["-c", &script]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}: {out:?}", srv.name());
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines[0], "COMPLETE olleh", "{}: {stdout}", srv.name());
        assert_eq!(lines[1], "FAILED", "{}: {stdout}", srv.name());
        assert_eq!(lines[2], "FAILED", "{}: {stdout}", srv.name());
        w.shutdown();
        w.join();
    }
}

/// Jobs run the same whether connections never poll before blocking or
/// poll for far longer than any wait, and a long polling window does not
/// hold up a stop: the server, the worker and the client each end while
/// their readers are polling.
#[test]
fn busy_polling_off_or_long_changes_no_result_and_delays_no_stop() {
    for window in [Duration::ZERO, Duration::from_secs(60)] {
        let server =
            Ours::with_config(ServerConfig { busy_poll: window, ..ServerConfig::default() });
        let addr = server.addr().to_string();
        let worker = Worker::builder()
            .servers([&addr])
            .threads(2)
            .busy_poll(window)
            .grace(Duration::from_secs(1))
            .register("bp-echo", |job: &Job, _: &mut JobContext<'_>| Ok(job.payload().to_vec()))
            .build()
            .unwrap();
        let client = gearframe::client::Client::builder()
            .servers([&addr])
            .busy_poll(window)
            .job_timeout(LIMIT)
            .build()
            .unwrap();
        let jobs: Vec<gearframe::client::Job> = (0..200)
            .map(|i| gearframe::client::Job::new("bp-echo", format!("job-{i}").into_bytes()))
            .collect();
        let results = client.batch(&jobs).run();
        for (i, r) in results.iter().enumerate() {
            let out = r.as_ref().unwrap_or_else(|e| panic!("window {window:?}, job {i}: {e}"));
            assert_eq!(out.name(), "complete", "window {window:?}, job {i}");
            assert_eq!(out.data(), Some(format!("job-{i}").as_bytes()), "window {window:?}");
        }
        // One job after the connections sat idle for longer than twice the
        // short window, so polling has turned itself off and on again.
        std::thread::sleep(Duration::from_millis(50));
        let out = client.submit("bp-echo", "job-7").unwrap();
        assert_eq!(out.data(), Some(&b"job-7"[..]), "window {window:?}");

        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(client);
            worker.shutdown();
            worker.join();
            server.stop();
            let _ = tx.send(());
        });
        rx.recv_timeout(LIMIT).unwrap_or_else(|_| {
            panic!("window {window:?}: client, worker and server did not stop")
        });
    }
}

/// Accepts one connection on `l` within the limit.
fn accept_within(l: &std::net::TcpListener, limit: Duration) -> std::net::TcpStream {
    l.set_nonblocking(true).unwrap();
    let end = Instant::now() + limit;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("the worker did not connect: {e}"),
        }
    }
}

/// Reads the worker's next packet and checks its type and arguments.
fn expect_req(c: &mut support::RawConn, kind: PacketType, args: &[&[u8]]) {
    let p = c.recv_packet_within(Duration::from_secs(5));
    assert_eq!(p.kind, kind, "{p:?}");
    let got: Vec<&[u8]> = p.args.iter().map(Vec::as_slice).collect();
    assert_eq!(got, args, "{kind}");
}

fn res(kind: PacketType, args: &[&[u8]]) -> Vec<u8> {
    support::raw_packet(b"\0RES", kind as u32, &args.join(&0u8))
}

/// What a slot says on the wire, with a server that takes the push option
/// and with one that refuses it (as gearmand does): with push it sends its
/// result and PRE_SLEEP together, never grabs while asleep (a grab there
/// could be answered with a second job) and checks the idle connection with
/// ECHO_REQ; without, it waits for NOOP and grabs.
#[test]
fn a_push_slot_sleeps_without_grabbing_and_keeps_to_noop_where_push_is_refused() {
    for takes_push in [true, false] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let w = Worker::builder()
            .servers([listener.local_addr().unwrap().to_string()])
            .client_id("pusher")
            .threads(1)
            .sleep_timeout(Duration::from_millis(200))
            .register("f", |job: &Job, _: &mut JobContext<'_>| Ok(job.payload().to_vec()))
            .build()
            .unwrap();
        let mut s = support::RawConn::from_stream(accept_within(&listener, LIMIT), "slot");
        expect_req(&mut s, PacketType::SetClientId, &[b"pusher"]);
        expect_req(&mut s, PacketType::CanDo, &[b"f"]);
        expect_req(&mut s, PacketType::OptionReq, &[b"gearframe-exceptions-safe"]);
        expect_req(&mut s, PacketType::OptionReq, &[b"gearframe-push"]);
        expect_req(&mut s, PacketType::GrabJobUniq, &[]);
        let unknown =
            res(PacketType::Error, &[b"UNKNOWN_OPTION", b"Server does not recognize given option"]);
        if takes_push {
            s.send_bytes(&res(PacketType::OptionRes, &[b"gearframe-exceptions-safe"]));
            s.send_bytes(&res(PacketType::OptionRes, &[b"gearframe-push"]));
        } else {
            s.send_bytes(&unknown);
            s.send_bytes(&unknown);
        }
        s.send_bytes(&res(PacketType::NoJob, &[]));
        expect_req(&mut s, PacketType::PreSleep, &[]);
        let assign = res(PacketType::JobAssignUniq, &[b"H:x:1", b"f", b"u1", b"hello"]);
        if takes_push {
            // Past the sleep timeout: a check, not a grab.
            expect_req(&mut s, PacketType::EchoReq, &[b""]);
            s.send_bytes(&res(PacketType::EchoRes, &[b""]));
            s.send_bytes(&assign);
            expect_req(&mut s, PacketType::WorkComplete, &[b"H:x:1", b"hello"]);
            expect_req(&mut s, PacketType::PreSleep, &[]);
        } else {
            s.send_bytes(&res(PacketType::Noop, &[]));
            expect_req(&mut s, PacketType::GrabJobUniq, &[]);
            s.send_bytes(&assign);
            expect_req(&mut s, PacketType::WorkComplete, &[b"H:x:1", b"hello"]);
            expect_req(&mut s, PacketType::GrabJobUniq, &[]);
        }
        w.shutdown();
        w.join();
    }
}

/// gearmand refuses the push option with ERROR and keeps serving the
/// connection, which the slots' fallback relies on; gearframe's server
/// takes it and hands a sleeping worker its job instead of a NOOP.
#[test]
fn the_push_option_skips_noop_on_our_server_and_is_refused_harmlessly_by_gearmand() {
    for srv in servers() {
        let mut w = support::RawConn::connect(srv.addr(), "worker");
        w.send(Packet::OptionReq { option: b"gearframe-push" });
        let reply = w.recv_packet();
        w.send(Packet::CanDo { function: b"pushed" });
        w.send(Packet::PreSleep);
        let mut c = connect(srv.addr());
        let handle = submit_on(&mut c, "pushed", b"payload", false);
        let got = w.recv_packet();
        match srv {
            Srv::Ours(_) => {
                assert_eq!(reply.kind, PacketType::OptionRes);
                assert_eq!(got.kind, PacketType::JobAssignUniq, "{got:?}");
                assert_eq!(got.arg_str(0), handle);
            }
            Srv::Gearmand(_) => {
                assert_eq!(reply.kind, PacketType::Error);
                assert_eq!(reply.arg_str(0), "UNKNOWN_OPTION");
                assert_eq!(got.kind, PacketType::Noop, "{got:?}");
                w.send(Packet::GrabJobUniq);
                let got = w.recv_packet();
                assert_eq!(got.kind, PacketType::JobAssignUniq, "{got:?}");
                assert_eq!(got.arg_str(0), handle);
            }
        }
        w.send(Packet::WorkComplete { handle: handle.as_bytes(), data: b"done" });
        let p = c.recv(Some(Instant::now() + LIMIT)).unwrap();
        assert_eq!(p.kind, PacketType::WorkComplete, "{}: {p:?}", srv.name());
    }
}

/// Slots that take jobs pushed by gearframe's server and slots that grab
/// them serve the same jobs with the same results, on both servers, also
/// after idling past their sleep timeout.
#[test]
fn push_and_grabbing_slots_serve_the_same_jobs_on_both_servers() {
    for srv in servers() {
        for push in [true, false] {
            let w = Worker::builder()
                .servers([srv.addr().to_string()])
                .threads(2)
                .push(push)
                .sleep_timeout(Duration::from_millis(100))
                .register("pp-echo", |job: &Job, _: &mut JobContext<'_>| Ok(job.payload().to_vec()))
                .build()
                .unwrap();
            let what = format!("{} push={push}", srv.name());
            support::eventually(LIMIT, "two slots registered", || {
                let (_, _, workers) = status(srv.addr(), "pp-echo");
                (workers == 2).then_some(())
            });
            std::thread::sleep(Duration::from_millis(300));
            for i in 0..20 {
                let payload = format!("{what} {i}");
                let evs = run_fg(srv.addr(), "pp-echo", payload.as_bytes(), false);
                assert_eq!(evs, [Ev::Complete(payload.into_bytes())], "{what}");
            }
            let mut c = connect(srv.addr());
            for i in 0..50 {
                submit_on(&mut c, "pp-echo", format!("bg {i}").as_bytes(), true);
            }
            support::eventually(LIMIT, "background jobs drained", || {
                let (queued, running, _) = status(srv.addr(), "pp-echo");
                (queued == 0 && running == 0).then_some(())
            });
            w.shutdown();
            w.join();
        }
    }
}

/// OpenDev's gear server neither takes nor refuses the push option (it logs
/// the packet and answers nothing): the slots keep to NOOP and grabs, serve
/// jobs from the start and after idling past their sleep timeout, and stop
/// promptly.
#[test]
fn our_worker_serves_jobs_through_gears_server_which_ignores_the_push_option() {
    let Some(geard) = support::peer("geard") else { return };
    let port = support::free_port();
    let child = Command::new(geard)
        .args(["-d", "-p", &port.to_string(), "--listen-address", "127.0.0.1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _geard = ChildGuard(child);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    support::wait_listening(addr, support::START_TIMEOUT);
    let w = Worker::builder()
        .servers([addr.to_string()])
        .threads(2)
        .sleep_timeout(Duration::from_millis(200))
        .register("gear-echo", |job: &Job, _: &mut JobContext<'_>| Ok(job.payload().to_vec()))
        .build()
        .unwrap();
    let client = gearframe::client::Client::builder()
        .servers([addr.to_string()])
        .job_timeout(LIMIT)
        .build()
        .unwrap();
    for round in 0..2 {
        for i in 0..10 {
            let payload = format!("round {round} job {i}");
            let out = client.submit("gear-echo", payload.as_bytes()).unwrap();
            assert_eq!(out.data(), Some(payload.as_bytes()), "{out:?}");
        }
        // Idle past the sleep timeout: the slots wake by themselves and grab.
        std::thread::sleep(Duration::from_millis(500));
    }
    let started = Instant::now();
    w.shutdown();
    w.join();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the worker took {:?} to stop",
        started.elapsed()
    );
}

/// A `gearframe worker` process serving `function` with `script`, its
/// escaping process writing its pid to `pids`.
fn escaping_worker(
    srv: &Ours,
    cfg: &tempfile::NamedTempFile,
    pids: &std::path::Path,
    function: &str,
    extra: &[&str],
    script: &str,
) -> ChildGuard {
    let child = bin()
        .args(["-c", cfg.path().to_str().unwrap(), "worker", "-s", &srv.addr().to_string()])
        .args(["--threads", "1", "--name", function, "-f", function])
        .args(extra)
        .args(["--", "sh", "-c", script])
        .env("F", pids)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = ChildGuard(child);
    support::eventually(LIMIT, "registration", || {
        (workers_named(srv.addr(), function).len() == 1).then_some(())
    });
    guard
}

#[test]
fn the_worker_binary_stops_and_reaps_what_a_job_detached() {
    let _cleanup = support::KillMarked("sleep 61.201");
    let srv = Ours::start(&Opts::default());
    let cfg = empty_config();
    let pids = tempfile::NamedTempFile::new().unwrap();
    let script = "(setsid sh -c 'echo $$ >> \"$F\"; exec sleep 61.201' &) & \
                  setsid sh -c 'echo $$ >> \"$F\"; exec sleep 61.201' & \
                  while [ $(wc -l < \"$F\") -lt 2 ]; do sleep 0.01; done; echo started";
    let worker = escaping_worker(&srv, &cfg, pids.path(), "detach", &[], script);
    assert_eq!(run_fg(srv.addr(), "detach", b"", false), [Ev::Complete(b"started\n".to_vec())]);
    let daemons = support::pids_in(pids.path());
    assert_eq!(daemons.len(), 2, "both detached processes wrote their pid");
    // The worker's own command line holds the script too.
    support::none_left(LIMIT, "sleep 61.201", &[worker.id()]);
    let zombies = support::zombies_of(worker.id(), &daemons);
    assert!(zombies.is_empty(), "zombies of the worker: {zombies:?}");
}

#[test]
fn the_worker_binary_keeps_daemons_with_keep_processes_and_reaps_them_later() {
    let _cleanup = support::KillMarked("sleep 61.202");
    let srv = Ours::start(&Opts::default());
    let cfg = empty_config();
    let pids = tempfile::NamedTempFile::new().unwrap();
    let script = "setsid sh -c 'echo $$ >> \"$F\"; exec sleep 61.202' & \
                  while [ ! -s \"$F\" ]; do sleep 0.01; done; echo started";
    let worker = escaping_worker(&srv, &cfg, pids.path(), "daemon", &["--keep-processes"], script);
    assert_eq!(run_fg(srv.addr(), "daemon", b"", false), [Ev::Complete(b"started\n".to_vec())]);
    let daemon = support::pids_in(pids.path());
    assert_eq!(daemon.len(), 1);
    let daemon = daemon[0];
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        support::live_with_marker_except("sleep 61.202", &[worker.id()]),
        [daemon],
        "the daemon runs on"
    );
    assert_eq!(
        support::proc_state(daemon).map(|(_, ppid)| ppid),
        Some(worker.id()),
        "the worker adopted the daemon"
    );
    let killed = Command::new("kill").args(["-KILL", &daemon.to_string()]).status().unwrap();
    assert!(killed.success());
    // Re-parented to the worker (its subreaper would be init otherwise), and
    // reaped by it once it exited, with no other job running.
    support::eventually(LIMIT, "the daemon reaped", || {
        (support::proc_state(daemon)
            .is_none_or(|(state, ppid)| state != 'Z' || ppid != worker.id()))
        .then_some(())
    });
}
