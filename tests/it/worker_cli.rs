//! `gearframe worker` as a user runs it: what it says at its default log
//! level about failed jobs, and how it reports and hurries a stop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gearframe::conn::Connection;
use gearframe::proto::{Packet, PacketType, Priority, SubmitKind};

use crate::support::{self, ChildGuard, Opts, Ours, eventually};

const LIMIT: Duration = Duration::from_secs(20);

/// `gearframe worker` with `config`, its stderr collected line by line.
struct WorkerProc {
    child: ChildGuard,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl WorkerProc {
    fn start(config: &str, addr: SocketAddr) -> (WorkerProc, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.yaml");
        std::fs::write(&cfg, config).unwrap();
        let mut child = ChildGuard(
            support::gearframe_worker(&cfg, addr)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.0.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        (WorkerProc { child, stderr, reader: Some(reader) }, dir)
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr has a line containing every one of `parts`.
    fn wait_line(&self, parts: &[&str]) -> String {
        eventually(LIMIT, &format!("a worker line with {parts:?}"), || {
            self.stderr().lines().find(|l| parts.iter().all(|p| l.contains(p))).map(str::to_string)
        })
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn submit(c: &mut Connection, function: &str, background: bool) -> String {
    c.send(&Packet::Submit {
        kind: SubmitKind { priority: Priority::Normal, background },
        function: function.as_bytes(),
        unique: b"",
        data: b"",
    })
    .unwrap();
    let p = c.recv(Some(Instant::now() + LIMIT)).unwrap();
    assert_eq!(p.kind, PacketType::JobCreated, "{p:?}");
    String::from_utf8(p.body).unwrap()
}

/// Waits for the foreground job's WORK_FAIL or WORK_EXCEPTION.
fn wait_failed(c: &mut Connection) {
    loop {
        let p = c.recv(Some(Instant::now() + LIMIT)).unwrap();
        match p.kind {
            PacketType::WorkFail | PacketType::WorkException => return,
            PacketType::WorkComplete => panic!("the job succeeded"),
            _ => {}
        }
    }
}

fn connect(addr: SocketAddr) -> Connection {
    Connection::connect(&addr.to_string(), Duration::from_secs(5)).unwrap()
}

/// At its default level the worker names every failed job: function,
/// handle, attempt of how many, and the reason; a timeout too.
#[test]
fn the_worker_logs_each_failed_job_with_function_handle_attempt_and_reason() {
    let srv = Ours::start(&Opts::default());
    let config = "worker:
  threads: 2
  functions:
    w_exit:
      shell: echo 'no space left' >&2; exit 4
      retries: 1
      retry_backoff: 10ms
    w_slow:
      shell: exec sleep 60
      timeout: 1s
      kill_grace: 1s
";
    let (w, _dir) = WorkerProc::start(config, srv.addr());
    let mut c = connect(srv.addr());
    // Queued until the worker registers, then run twice and failed.
    let handle = submit(&mut c, "w_exit", false);
    wait_failed(&mut c);
    let line = w.wait_line(&["job failed", &handle]);
    for part in ["WARN", "function w_exit", "attempt 2 of 2", "exit code 4: no space left"] {
        assert!(line.contains(part), "{part:?} missing from {line:?}");
    }
    let handle = submit(&mut c, "w_slow", false);
    wait_failed(&mut c);
    let line = w.wait_line(&["job failed", &handle]);
    for part in ["WARN", "function w_slow", "attempt 1 of 1", "timed out after 1 s"] {
        assert!(line.contains(part), "{part:?} missing from {line:?}");
    }
}

/// Ctrl-C: the worker says which jobs it waits for and how long; a second
/// Ctrl-C ends them at once (their processes are gone) and the worker exits
/// long before the grace period is over.
#[test]
fn a_second_ctrl_c_ends_the_running_jobs_and_the_worker_at_once() {
    let _cleanup = support::KillMarked("sleep 613");
    let srv = Ours::start(&Opts::default());
    let marks = tempfile::tempdir().unwrap();
    let started = marks.path().join("started");
    let config = format!(
        "worker:
  threads: 3
  grace: 10m
  functions:
    w_long:
      shell: echo x >> '{}'; sleep 613; echo gearframe-stop-marker
",
        started.display()
    );
    let (mut w, _dir) = WorkerProc::start(&config, srv.addr());
    let mut c = connect(srv.addr());
    let handles: Vec<String> = (0..2).map(|_| submit(&mut c, "w_long", true)).collect();
    // Assigned is not yet started: stop once both commands run.
    eventually(LIMIT, "both commands to run", || {
        let n = std::fs::read_to_string(&started).unwrap_or_default().lines().count();
        (n == 2).then_some(())
    });
    w.signal("-INT");
    let line = w.wait_line(&["stopping: waiting up to"]);
    for part in ["600s", "2 running job(s)", "Ctrl-C again"] {
        assert!(line.contains(part), "{part:?} missing from {line:?}");
    }
    for h in &handles {
        assert!(line.contains(&format!("w_long {h}")), "{h} missing from {line:?}");
    }
    let hurried = Instant::now();
    w.signal("-INT");
    w.wait_line(&["stopping now: ending 2 running job(s)"]);
    // Far below the ten minutes of grace: the second Ctrl-C did not wait.
    let status = eventually(LIMIT, "the worker to exit", || w.child.0.try_wait().unwrap());
    assert!(status.success(), "{status:?}\n{}", w.stderr());
    assert!(hurried.elapsed() < LIMIT);
    support::none_left(LIMIT, "gearframe-stop-marker", &[]);
    support::none_left(LIMIT, "sleep 613", &[]);
    // The cancelled jobs went back to the server, not reported failed.
    eventually(LIMIT, "both jobs queued again", || {
        let mut admin = connect(srv.addr());
        let lines = support::admin_on(&mut admin, "status", true, LIMIT);
        lines.iter().any(|l| l.starts_with("w_long\t2\t0\t")).then_some(())
    });
}

/// `-f` functions send failures as `--failure` says: by default the reason
/// as WORK_WARNING, then WORK_EXCEPTION on gearframe's server; `fail` sends
/// WORK_FAIL, `exception` the WORK_EXCEPTION alone.
#[test]
fn failure_chooses_the_packets_of_a_command_function() {
    let srv = Ours::start(&Opts::default());
    let reason = b"exit code 2: out of paper".to_vec();
    for (how, want) in [
        (None, vec![Some(reason.clone()), None]),
        (Some("fail"), vec![Some(reason.clone()), None]),
        (Some("exception"), vec![None]),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gearframe"));
        cmd.env_remove("GEARMAN_SERVERS").args([
            "-c",
            "/dev/null",
            "worker",
            "-s",
            &srv.addr().to_string(),
            "-f",
            "w_cmd",
        ]);
        if let Some(how) = how {
            cmd.args(["--failure", how]);
        }
        cmd.args(["--", "sh", "-c", "echo 'out of paper' >&2; exit 2"]);
        let _w = ChildGuard(
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap(),
        );
        let mut c = connect(srv.addr());
        c.send(&Packet::OptionReq { option: b"exceptions" }).unwrap();
        assert_eq!(c.recv(Some(Instant::now() + LIMIT)).unwrap().kind, PacketType::OptionRes);
        submit(&mut c, "w_cmd", false);
        // Warnings, then the end: `None` stands for the end packet.
        let mut got = Vec::new();
        let end = loop {
            let p = c.recv(Some(Instant::now() + LIMIT)).unwrap();
            match p.packet().unwrap() {
                Packet::WorkWarning { data, .. } => got.push(Some(data.to_vec())),
                Packet::WorkFail { .. } => break PacketType::WorkFail,
                Packet::WorkException { data, .. } => {
                    assert_eq!(data, reason, "{how:?}");
                    break PacketType::WorkException;
                }
                other => panic!("{how:?}: unexpected {other:?}"),
            }
        };
        got.push(None);
        let want_end =
            if how == Some("fail") { PacketType::WorkFail } else { PacketType::WorkException };
        assert_eq!((got, end), (want, want_end), "--failure {how:?}");
    }
}
