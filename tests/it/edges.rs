//! Edges of the server and of `gearframe send` as a user meets them: job
//! handles unique across servers and restarts, cancelled jobs in `status`,
//! relative plan executables, results as they finish, an interrupted send.

use std::process::Command;

use gearframe::proto::PacketType;

use crate::support::{RawConn, ServerProc, bg};

/// Submits a background job and returns its handle.
fn submit_bg(addr: std::net::SocketAddr, function: &str, unique: &str) -> String {
    let mut c = RawConn::connect(addr, "client");
    c.send(bg(function.as_bytes(), unique.as_bytes(), b"x"));
    let p = c.recv_packet();
    assert_eq!(p.kind, PacketType::JobCreated, "{p:?}");
    p.arg_str(0)
}

/// `status` rows of a server as (function, total, running, workers).
fn status(addr: std::net::SocketAddr) -> Vec<(String, u64, u64, u64)> {
    let mut c = RawConn::connect(addr, "admin");
    c.send_line("status");
    c.recv_admin_list()
        .iter()
        .map(|l| String::from_utf8_lossy(l).trim_end().to_string())
        .filter(|l| l != ".")
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_string(), f[1].parse().unwrap(), f[2].parse().unwrap(), f[3].parse().unwrap())
        })
        .collect()
}

fn queued(addr: std::net::SocketAddr, function: &str) -> u64 {
    status(addr).iter().find(|r| r.0 == function).map_or(0, |r| r.1 - r.2)
}

fn gearframe(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gearframe"))
        .args(args)
        .env_remove("GEARMAN_SERVERS")
        .output()
        .unwrap()
}

/// Two servers on one host issue different handles, a restart with the
/// persistent queue does not reissue a handle, and `admin -s A,B cancel H`
/// cancels the job of the server that issued H only.
#[test]
fn handles_name_their_server_and_cancel_acts_on_one_job() {
    let dir = tempfile::tempdir().unwrap();
    let queue = format!("sqlite:{}", dir.path().join("q.db").display());
    let mut a = ServerProc::start(&["--queue", &queue], &dir.path().join("a.log"));
    let b = ServerProc::start(&[], &dir.path().join("b.log"));
    let ha = submit_bg(a.addr(), "edge", "ua");
    let hb = submit_bg(b.addr(), "edge", "ub");
    assert_ne!(ha, hb, "two servers on one host issued the same handle");
    for h in [&ha, &hb] {
        assert!(h.len() < 64 && h.is_ascii() && !h.contains([' ', '\0']), "handle {h:?}");
    }
    // The stored job comes back under a new handle, and new jobs do not
    // take the old one.
    a.terminate();
    a.restart();
    let again = submit_bg(a.addr(), "edge", "ua2");
    assert_ne!(again, ha, "a restarted server reissued a handle of its last run");
    assert_eq!(queued(a.addr(), "edge"), 2);
    let servers = format!("{},{}", a.addr_string(), b.addr_string());
    let out = gearframe(&["admin", "-s", &servers, "cancel", &hb]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(queued(b.addr(), "edge"), 0, "the job of the server that issued the handle");
    assert_eq!(queued(a.addr(), "edge"), 2, "the other server's jobs are left");
    // A handle of the last run names nothing now.
    let out = gearframe(&["admin", "-s", &a.addr_string(), "cancel", &ha]);
    assert!(!out.status.success());
    assert_eq!(queued(a.addr(), "edge"), 2);
}

/// A cancelled job leaves `status` (and `gearframe admin status`) at once.
#[test]
fn a_cancelled_job_leaves_status_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(&[], &dir.path().join("s.log"));
    let handles: Vec<String> =
        (0..3).map(|i| submit_bg(s.addr(), "cancelme", &format!("u{i}"))).collect();
    assert_eq!(queued(s.addr(), "cancelme"), 3);
    let out = gearframe(&["admin", "-s", &s.addr_string(), "cancel", &handles[1]]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(queued(s.addr(), "cancelme"), 2);
    let out = gearframe(&["admin", "-s", &s.addr_string(), "status", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let row = &v["totals"][0];
    assert_eq!(row["function"], "cancelme", "{text}");
    assert_eq!((row["total"].as_u64(), row["queued"].as_u64()), (Some(2), Some(2)), "{text}");
}

/// `send --plan plan.sh` runs the executable `plan.sh` of the current
/// directory (the README's form), as `./plan.sh`.
#[test]
fn send_runs_a_relative_plan_executable_from_the_current_directory() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(&[], &dir.path().join("s.log"));
    let plan = dir.path().join("plan.sh");
    std::fs::write(&plan, "#!/bin/sh\necho '[{\"function\": \"relplan\", \"data\": \"x\"}]'\n")
        .unwrap();
    std::fs::set_permissions(&plan, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gearframe"))
        .args(["send", "-s", &s.addr_string(), "--plan", "plan.sh", "--mode", "async"])
        .env_remove("GEARMAN_SERVERS")
        .env_remove("GEARFRAME_CONFIG")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("sent 1, accepted 1, failed 0"), "{err}");
    assert_eq!(queued(s.addr(), "relplan"), 1);
}

/// `gearframe send` with stdout read line by line as it comes.
struct Send {
    child: crate::support::ChildGuard,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Send {
    fn start(addr: &str, plan: &str) -> Send {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.keep().join("plan.yaml");
        std::fs::write(&path, plan).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_gearframe"))
            .args(["send", "-s", addr, "--mode", "sync", "--plan", path.to_str().unwrap()])
            .env_remove("GEARMAN_SERVERS")
            .env_remove("GEARFRAME_CONFIG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Send { child: crate::support::ChildGuard(child), lines }
    }

    fn line(&self) -> String {
        self.lines.recv_timeout(LIMIT).expect("a result line from send")
    }

    /// Waits for the exit; the status and stderr.
    fn finish(&mut self) -> (std::process::ExitStatus, String) {
        let c = &mut self.child.0;
        let status = crate::support::eventually(LIMIT, "send exits", || c.try_wait().unwrap());
        let mut err = String::new();
        std::io::Read::read_to_string(c.stderr.as_mut().unwrap(), &mut err).unwrap();
        (status, err)
    }
}

const LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Sync results are printed as they finish: a fast job's line comes while
/// a slow job of the plan (listed first) still runs.
#[test]
fn send_prints_each_result_as_it_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(&[], &dir.path().join("s.log"));
    let addr = s.addr_string();
    let (c, seen, gate) = crate::client::ctl();
    let _slow = crate::client::RawWorker::start(&addr, &["hold"], c.clone());
    let _fast = crate::client::RawWorker::start(&addr, &["reverse"], c);
    let mut send =
        Send::start(&addr, "- function: hold\n  data: slow\n- function: reverse\n  data: abc\n");
    assert_eq!(seen.recv_timeout(LIMIT).unwrap(), b"slow");
    assert_eq!(send.line(), "reverse\tcomplete\tcba", "the fast job's line comes first");
    gate.send(()).unwrap();
    assert_eq!(send.line(), "hold\tcomplete\theld:slow");
    let (status, err) = send.finish();
    assert!(status.success(), "{err}");
    assert!(err.contains("sent 2, completed 2, failed 0"), "{err}");
}

/// Ctrl-C while a job runs: the results that had finished stay printed, a
/// summary says what was done, and send exits 130 at once.
#[test]
fn send_interrupted_keeps_finished_results_and_prints_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(&[], &dir.path().join("s.log"));
    let addr = s.addr_string();
    let (c, seen, gate) = crate::client::ctl();
    let _slow = crate::client::RawWorker::start(&addr, &["hold"], c.clone());
    let _fast = crate::client::RawWorker::start(&addr, &["reverse", "fail"], c);
    let mut send = Send::start(
        &addr,
        "- function: hold\n  data: never\n- function: reverse\n  data: abc\n- function: fail\n",
    );
    assert_eq!(seen.recv_timeout(LIMIT).unwrap(), b"never");
    let mut lines = vec![send.line(), send.line()];
    lines.sort();
    assert_eq!(lines[1], "reverse\tcomplete\tcba");
    assert!(lines[0].starts_with("fail\tfail"), "{lines:?}");
    let pid = send.child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let (status, err) = send.finish();
    gate.send(()).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted: 1 of 3 done, 1 failed, 1 not finished"), "{err}");
    assert_eq!(err.lines().filter(|l| l.contains("interrupted")).count(), 1, "{err}");
    assert!(send.lines.recv_timeout(LIMIT).is_err(), "no line after the interrupt");
}

/// A worker config whose on_failure chain loops is refused at load, in one
/// line naming the chain, before any server is contacted.
#[test]
fn an_on_failure_cycle_is_refused_when_the_worker_loads_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    for (functions, chain) in [
        ("    a:\n      builtin: echo\n      on_failure: a\n", "a -> a"),
        (
            "    a:\n      builtin: echo\n      on_failure: b\n    b:\n      builtin: echo\n      on_failure: a\n",
            "a -> b -> a",
        ),
    ] {
        std::fs::write(&cfg, format!("worker:\n  functions:\n{functions}")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_gearframe"))
            .arg("-c")
            .arg(&cfg)
            .args(["worker", "-s", "127.0.0.1:1"])
            .env_remove("GEARMAN_SERVERS")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(&format!("on_failure: {chain} loops")), "{err}");
    }
}
