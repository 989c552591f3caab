//! Failed jobs reach gearframe's client with their reason: a gearframe
//! worker failing by exit code, timeout and handler error, and each peer
//! worker's ways of failing (`gearman -w`, PHP, Perl, pygearman, gear),
//! through gearframe's server and through gearmand.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gearframe::client::{Client, JobOutcome, NO_REASON};
use gearframe::conn::Connection;
use gearframe::worker::shell::ShellCommand;
use gearframe::worker::{JobError, ShellFunction, Worker};

use crate::support::{self, ChildGuard, Gearmand, Opts, Ours, eventually};

/// The longest a failing job may take to reach the client: far above what
/// a failure needs, only there so that a hang ends the cell.
const GUARD: Duration = Duration::from_secs(30);

/// A server of either kind, with its name for the report.
struct Srv {
    name: &'static str,
    addr: SocketAddr,
    _ours: Option<Ours>,
    _gearmand: Option<Gearmand>,
}

fn servers() -> Vec<Srv> {
    let ours = Ours::start(&Opts::default());
    let mut v =
        vec![Srv { name: "gearframe", addr: ours.addr(), _ours: Some(ours), _gearmand: None }];
    if let Some(g) = Gearmand::start(&Opts::default()) {
        v.push(Srv { name: "gearmand", addr: g.addr(), _ours: None, _gearmand: Some(g) });
    }
    v
}

/// Workers registered for `function`, from the admin `status` command.
fn workers_of(addr: SocketAddr, function: &str) -> u64 {
    let Ok(mut c) = Connection::connect(&addr.to_string(), Duration::from_secs(2)) else {
        return 0;
    };
    c.queue_bytes(b"status\n");
    if c.flush().is_err() {
        return 0;
    }
    let deadline = Some(Instant::now() + Duration::from_secs(5));
    let mut n = 0;
    while let Ok(line) = c.recv_line(deadline) {
        if line.trim_end() == "." {
            break;
        }
        let f: Vec<&str> = line.split('\t').collect();
        if f.first() == Some(&function) {
            n = f.get(3).and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        }
    }
    n
}

fn wait_registered(addr: SocketAddr, functions: &[&str]) {
    for f in functions {
        eventually(Duration::from_secs(30), &format!("a worker for {f} on {addr}"), || {
            (workers_of(addr, f) > 0).then_some(())
        });
    }
}

/// One cell: a failing job through one server. `want` is a part of the
/// reason that must be shown, or `None` where the worker sends no reason.
struct Cell<'a> {
    server: &'a str,
    addr: SocketAddr,
    function: &'a str,
    want: Option<&'a str>,
}

/// Runs a cell with the library client; a problem is pushed to `bad`.
fn library_cell(cell: &Cell<'_>, bad: &mut Vec<String>) {
    let name = format!("{} via {} (library)", cell.function, cell.server);
    let client =
        Client::builder().servers([cell.addr.to_string()]).job_timeout(GUARD).build().unwrap();
    let t = Instant::now();
    let out = client.submit(cell.function, "payload");
    let took = t.elapsed();
    match out {
        Ok(o @ (JobOutcome::Failed { .. } | JobOutcome::Exception { .. })) => {
            let reason = o.reason().unwrap_or_default();
            eprintln!("{name}: {} after {took:?}: {}", o.name(), reason.escape_debug());
            if let Some(want) = cell.want {
                if !reason.starts_with(want) {
                    bad.push(format!("{name}: reason `{reason}`, wanted `{want}` ({o:?})"));
                }
            } else if reason.is_empty() {
                bad.push(format!("{name}: empty reason, wanted at least `{NO_REASON}`"));
            }
        }
        other => bad.push(format!("{name}: after {took:?}: {other:?}, wanted a failure")),
    }
}

/// Runs a cell with `gearframe submit`; a problem is pushed to `bad`.
fn submit_cell(cell: &Cell<'_>, bad: &mut Vec<String>) {
    let name = format!("{} via {} (gearframe submit)", cell.function, cell.server);
    let addr = cell.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gearframe"))
        .args(["submit", "-s", &addr, "--timeout", "30s", "-f", cell.function, "payload"])
        .env_remove("GEARMAN_SERVERS")
        .env_remove("GEARFRAME_CONFIG")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = eventually(GUARD + Duration::from_secs(10), &name, || child.try_wait().unwrap());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if status.code() != Some(1) {
        bad.push(format!("{name}: exit {status} after {:?}, wanted 1: {err}", t.elapsed()));
        return;
    }
    let line = err.lines().find(|l| l.contains(" failed: ")).unwrap_or_default();
    let named = line.contains(&format!("function {}", cell.function)) && line.contains(&addr);
    let reason_ok = cell.want.is_none_or(|w| line.contains(&format!("failed: {w}")));
    if !named || !reason_ok {
        bad.push(format!(
            "{name}: stderr `{err}`, wanted the reason {:?}, function and server",
            cell.want
        ));
    }
    // The warning a worker sends with its failure is the reason: shown once.
    if let Some(w) = cell.want.filter(|w| err.matches(w).count() != 1) {
        bad.push(format!("{name}: the reason `{w}` is not shown exactly once in `{err}`"));
    }
}

/// `gearframe send --mode sync` prints each failed job's reason.
fn send_sync_cell(server: &str, addr: SocketAddr, bad: &mut Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.yaml");
    std::fs::write(&plan, "- function: gf_exit\n- function: gf_error\n  data: x\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gearframe"))
        .args(["send", "-s", &addr.to_string(), "--timeout", "30s", "--mode", "sync", "--plan"])
        .arg(&plan)
        .env_remove("GEARMAN_SERVERS")
        .env_remove("GEARFRAME_CONFIG")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // A shell failure is sent as `failure: auto` chooses: an exception
    // where the server relays it safely (gearframe's), else a warning with
    // the reason and WORK_FAIL (gearmand).
    let exit = if server == "gearframe" { "exception" } else { "failed" };
    let exit_line = format!("gf_exit\t{exit}\texit code 3: disk full");
    for want in [exit_line.as_str(), "gf_error\texception\tbad input"] {
        if !stdout.lines().any(|l| l == want) {
            bad.push(format!("send --mode sync via {server}: no line `{want}` in `{stdout}`"));
        }
    }
}

fn report(bad: &[String]) {
    assert!(bad.is_empty(), "{} failing cell(s):\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn gearframe_worker_failures_reach_the_gearframe_client_with_their_reason() {
    let mut bad = Vec::new();
    for srv in servers() {
        let w = Worker::builder()
            .servers([srv.addr.to_string()])
            .threads(4)
            .register(
                "gf_exit",
                ShellFunction::new(ShellCommand::shell("echo 'disk full' >&2; exit 3")),
            )
            .register(
                "gf_timeout",
                ShellFunction::new(
                    ShellCommand::argv(["sleep", "30"])
                        .timeout(Some(Duration::from_secs(1)))
                        .kill_grace(Duration::from_millis(200)),
                ),
            )
            .register(
                "gf_error",
                |_: &gearframe::worker::Job, _: &mut gearframe::worker::JobContext<'_>| {
                    Err(JobError::exception("bad input"))
                },
            )
            .register(
                "gf_fail",
                |_: &gearframe::worker::Job, _: &mut gearframe::worker::JobContext<'_>| {
                    Err(JobError::fail("refused input"))
                },
            )
            .register(
                "gf_panic",
                |_: &gearframe::worker::Job, _: &mut gearframe::worker::JobContext<'_>| {
                    panic!("handler bug")
                },
            )
            .build()
            .unwrap();
        wait_registered(srv.addr, &["gf_exit", "gf_timeout", "gf_error", "gf_fail", "gf_panic"]);
        for (function, want) in [
            ("gf_exit", "exit code 3: disk full"),
            ("gf_timeout", "timed out"),
            ("gf_error", "bad input"),
            ("gf_fail", "refused input"),
            ("gf_panic", "handler panicked: handler bug"),
        ] {
            let cell = Cell { server: srv.name, addr: srv.addr, function, want: Some(want) };
            library_cell(&cell, &mut bad);
            submit_cell(&cell, &mut bad);
        }
        send_sync_cell(srv.name, srv.addr, &mut bad);
        w.shutdown();
        w.join();
    }
    report(&bad);
}

const PHP_WORKER: &str = r#"<?php
$w = new GearmanWorker();
$w->addServer('127.0.0.1', (int)$argv[1]);
$w->addFunction('php_send_fail', function ($job) { $job->sendFail(); });
$w->addFunction('php_return_fail', function ($job) { $job->setReturn(GEARMAN_WORK_FAIL); return ''; });
$w->addFunction('php_exception', function ($job) { $job->sendException('php boom'); });
$w->addFunction('php_throw', function ($job) { throw new Exception('php thrown'); });
while (true) { @$w->work(); }
"#;

const PERL_WORKER: &str = r#"
use Gearman::Worker;
my $w = Gearman::Worker->new;
$w->job_servers("127.0.0.1:$ARGV[0]");
$w->register_function(perl_die => sub { die "perl boom\n" });
$w->work while 1;
"#;

const PY_WORKER: &str = r#"
import sys, gearman
w = gearman.GearmanWorker(['127.0.0.1:%s' % sys.argv[1]])
def boom(worker, job):
    raise RuntimeError('py boom')
# This pygearman matches abilities by bytes.
w.register_task(b'py_raise', boom)
while True:
    try:
        w.work()
    except Exception:
        pass
"#;

const GEAR_WORKER: &str = r#"
import sys, gear
w = gear.Worker('failures')
w.addServer('127.0.0.1', int(sys.argv[1]))
w.waitForServer()
w.registerFunction('gear_fail')
w.registerFunction('gear_exception')
while True:
    job = w.getJob()
    if job.name == 'gear_fail':
        job.sendWorkFail()
    else:
        job.sendWorkException(b'gear boom')
"#;

/// Starts a peer worker script (`program script port`), or `None` when the
/// program or its library is missing.
fn start_script(
    dir: &Path,
    program: &str,
    file: &str,
    text: &str,
    probe: &[&str],
    port: u16,
) -> Option<ChildGuard> {
    let bin = support::peer(program)?;
    let ok = Command::new(&bin)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return support::missing(&format!("{program} {}", probe.join(" ")));
    }
    let path = dir.join(file);
    std::fs::File::create(&path).unwrap().write_all(text.as_bytes()).unwrap();
    let child = Command::new(bin)
        .arg(&path)
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Some(ChildGuard(child))
}

#[test]
fn peer_worker_failures_reach_the_gearframe_client() {
    let mut bad = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    for srv in servers() {
        let port = srv.addr.port();
        let mut cells: Vec<(&str, Option<&str>)> = Vec::new();
        let mut guards = Vec::new();
        if let Some(gearman) = support::peer("gearman") {
            let child = Command::new(gearman)
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-w", "-f", "cli_fail"])
                .args(["--", "sh", "-c", "echo cli boom >&2; exit 3"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            guards.push(ChildGuard(child));
            cells.push(("cli_fail", None));
        }
        let php_probe = ["-r", "exit(class_exists('GearmanWorker') ? 0 : 1);"];
        if let Some(g) = start_script(dir.path(), "php", "w.php", PHP_WORKER, &php_probe, port) {
            guards.push(g);
            cells.push(("php_send_fail", None));
            cells.push(("php_return_fail", None));
            cells.push(("php_exception", Some("php boom")));
            cells.push(("php_throw", None));
        }
        let perl_probe = ["-MGearman::Worker", "-e", "1"];
        if let Some(g) = start_script(dir.path(), "perl", "w.pl", PERL_WORKER, &perl_probe, port) {
            guards.push(g);
            cells.push(("perl_die", Some("perl boom")));
        }
        let py_probe = ["-c", "import gearman"];
        if let Some(g) = start_script(dir.path(), "python3", "w.py", PY_WORKER, &py_probe, port) {
            guards.push(g);
            cells.push(("py_raise", None));
        }
        let gear_probe = ["-c", "import gear"];
        if let Some(g) = start_script(dir.path(), "python3", "g.py", GEAR_WORKER, &gear_probe, port)
        {
            guards.push(g);
            cells.push(("gear_fail", None));
            cells.push(("gear_exception", Some("gear boom")));
        }
        let names: Vec<&str> = cells.iter().map(|c| c.0).collect();
        wait_registered(srv.addr, &names);
        for (function, want) in cells {
            let cell = Cell { server: srv.name, addr: srv.addr, function, want };
            library_cell(&cell, &mut bad);
        }
        drop(guards);
    }
    report(&bad);
}
