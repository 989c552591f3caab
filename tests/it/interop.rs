//! The real gearman tools against our server: `gearman` as client and worker,
//! `gearadmin` for every admin command it has, asserting exactly what the
//! tools print.
//!
//! gearadmin prints `OK` for an `OK\r\n` reply, the value for `OK <value>`,
//! `Error: <text>\r\n` on stderr for `ERR <text>\r\n` (keeping the `\r`, and
//! exiting 0 all the same), and list replies verbatim with their final `.`
//! line.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gearframe::proto::Packet;

use crate::peers::{Conn, IO_LIMIT, Kind, Output, Proc, SETTLE_LIMIT, Target, peer, poll, run};

/// The target, a raw admin connection to it and the two tools; `None` (after
/// a loud message) when a tool is missing.
struct Setup {
    target: Target,
    probe: Conn,
    gearman: PathBuf,
    gearadmin: PathBuf,
}

fn setup() -> Option<Setup> {
    let gearman = peer("gearman")?;
    let gearadmin = peer("gearadmin")?;
    let target = Target::start()?;
    let mut probe = Conn::connect(target.addr());
    // Names the probe connection so `workers` shows which line is ours.
    probe.send(Packet::SetClientId { id: b"probe" });
    probe.echo(b"ready");
    Some(Setup { target, probe, gearman, gearadmin })
}

impl Setup {
    fn host_port(&self) -> Vec<String> {
        vec!["-h".into(), "127.0.0.1".into(), "-p".into(), self.target.port()]
    }

    /// `gearman -h .. -p .. ARGS` with `input` on stdin.
    fn gearman(&self, args: &[&str], input: &[u8]) -> Output {
        let mut all: Vec<String> = self.host_port();
        all.extend(args.iter().map(|s| s.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        run(&self.gearman, &all, input, IO_LIMIT)
    }

    /// `gearadmin -h .. -p .. ARGS`.
    fn gearadmin(&self, args: &[&str]) -> Output {
        let mut all: Vec<String> = self.host_port();
        all.extend(args.iter().map(|s| s.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        run(&self.gearadmin, &all, b"", IO_LIMIT)
    }

    /// gearadmin output that must succeed with nothing on stderr.
    fn admin_ok(&self, args: &[&str]) -> String {
        let out = self.gearadmin(args);
        assert!(out.status.success(), "gearadmin {args:?} failed: {out:?}");
        assert_eq!(out.stderr, "", "gearadmin {args:?} wrote to stderr");
        out.stdout
    }

    /// gearadmin for an `ERR` reply: returns stderr, checks stdout is empty.
    fn admin_err(&self, args: &[&str]) -> String {
        let out = self.gearadmin(args);
        assert_eq!(out.stdout, "", "gearadmin {args:?} printed to stdout: {out:?}");
        out.stderr
    }

    /// Starts `gearman -w -f FUNCTION -- COMMAND...` and waits until the
    /// server counts one worker for the function.
    fn worker(&mut self, extra: &[&str], function: &str, command: &[&str]) -> Proc {
        let mut cmd = Command::new(&self.gearman);
        cmd.args(self.host_port())
            .arg("-w")
            .args(extra)
            .args(["-f", function, "--"])
            .args(command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let p = Proc::spawn(&mut cmd);
        let probe = &mut self.probe;
        poll(SETTLE_LIMIT, &format!("a worker for {function}"), || {
            let status = probe.admin("status");
            status
                .lines()
                .any(|l| l.starts_with(&format!("{function}\t")) && l.ends_with("\t1"))
                .then_some(())
        });
        p
    }

    /// Polls `status` (through the raw connection) until it equals `want`.
    fn wait_status(&mut self, want: &str) {
        let deadline = Instant::now() + SETTLE_LIMIT;
        loop {
            let last = self.probe.admin("status");
            if last == want {
                return;
            }
            assert!(Instant::now() < deadline, "status never became {want:?}; last seen {last:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn assert_printed(out: &Output, stdout: &str, what: &str) {
    assert!(out.status.success(), "{what}: {out:?}");
    assert_eq!(out.stdout, stdout, "{what}: stdout");
    assert_eq!(out.stderr, "", "{what}: stderr");
}

/// Lines of a list reply without its final `.`, sorted (lists come out in
/// no particular order).
fn rows(list: &str) -> Vec<String> {
    assert!(list.ends_with("\n.\n") || list == ".\n", "list reply without a final `.`: {list:?}");
    let mut v: Vec<String> = list.lines().filter(|l| *l != ".").map(str::to_string).collect();
    v.sort();
    v
}

#[test]
fn foreground_jobs_at_every_priority() {
    let Some(mut s) = setup() else { return };
    let _worker = s.worker(&[], "wc", &["wc", "-l"]);
    for (flags, input, want) in [
        (&[][..], &b"a\nb\nc\n"[..], "3\n"),
        (&["-I"][..], b"a\nb\n", "2\n"),
        (&["-L"][..], b"one line\n", "1\n"),
        (&[][..], b"", "0\n"),
    ] {
        let mut args = flags.to_vec();
        args.extend(["-f", "wc"]);
        let out = s.gearman(&args, input);
        assert_printed(&out, want, &format!("gearman {args:?}"));
    }
    assert_eq!(s.admin_ok(&["--status"]), "wc\t0\t0\t1\n.\n");
}

#[test]
fn background_jobs_queue_by_priority_then_drain() {
    let Some(mut s) = setup() else { return };
    for flags in [&["-b"][..], &["-b", "-I"], &["-b", "-L"]] {
        let mut args = flags.to_vec();
        args.extend(["-f", "wc"]);
        let out = s.gearman(&args, b"x\ny\n");
        assert_printed(&out, "", &format!("gearman {args:?}"));
    }
    assert_eq!(s.admin_ok(&["--status"]), "wc\t3\t0\t0\n.\n");
    assert_eq!(s.admin_ok(&["--priority-status"]), "wc\t1\t1\t1\t0\n.\n");
    let jobs = rows(&s.admin_ok(&["--show-jobs"]));
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    let mut handles: Vec<&str> = Vec::new();
    for j in &jobs {
        let (handle, flags) = j.split_once('\t').expect("handle, tab, columns");
        assert!(handle.starts_with("H:") && !handle.contains(' '), "handle {handle:?}");
        assert_eq!(flags, "0\t0\t1", "a new background job: no retries, not ignored, queued");
        handles.push(handle);
    }
    handles.dedup();
    assert_eq!(handles.len(), 3, "handles are distinct: {jobs:?}");
    // gearman generates a unique id per job.
    assert_eq!(rows(&s.admin_ok(&["--show-unique-jobs"])).len(), 3);

    let _worker = s.worker(&[], "wc", &["wc", "-l"]);
    s.wait_status("wc\t0\t0\t1\n.\n");
    assert_eq!(s.admin_ok(&["--show-jobs"]), ".\n");
    assert_eq!(s.admin_ok(&["--priority-status"]), "wc\t0\t0\t0\t1\n.\n");
}

#[test]
fn background_jobs_run_high_then_normal_then_low() {
    let Some(mut s) = setup() else { return };
    let Some(sh) = peer("sh") else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("order");
    for (flags, data) in [(&[][..], "normal\n"), (&["-L"], "low\n"), (&["-I"], "high\n")] {
        let mut args = vec!["-b"];
        args.extend(flags);
        args.extend(["-f", "order"]);
        assert_printed(&s.gearman(&args, data.as_bytes()), "", &format!("gearman {args:?}"));
    }
    assert_eq!(s.admin_ok(&["--priority-status"]), "order\t1\t1\t1\t0\n.\n");
    // One worker that runs three jobs, appending each payload to the file.
    let sh = sh.to_string_lossy().into_owned();
    let file_arg = file.to_string_lossy().into_owned();
    let mut worker = s.worker(&["-c", "3"], "order", &[&sh, "-c", "cat >> \"$0\"", &file_arg]);
    assert!(worker.wait(SETTLE_LIMIT).success(), "the worker exits after three jobs");
    assert_eq!(std::fs::read_to_string(&file).expect("worker output"), "high\nnormal\nlow\n");
    s.wait_status("order\t0\t0\t0\n.\n");
}

#[test]
fn gearadmin_status_and_workers() {
    let Some(mut s) = setup() else { return };
    assert_eq!(s.admin_ok(&["--status"]), ".\n");
    let _worker = s.worker(&[], "wc", &["wc", "-l"]);
    assert_eq!(s.admin_ok(&["--status"]), "wc\t0\t0\t1\n.\n");

    // One line per connection: the worker, the probe and gearadmin itself.
    let workers = rows(&s.admin_ok(&["--workers"]));
    let mut shapes: Vec<String> = workers
        .iter()
        .map(|l| {
            let (fd, rest) = l.split_once(' ').expect("fd, space, rest");
            assert!(!fd.is_empty() && fd.bytes().all(|b| b.is_ascii_digit()), "fd in {l:?}");
            rest.to_string()
        })
        .collect();
    shapes.sort();
    assert_eq!(shapes, ["127.0.0.1 - :", "127.0.0.1 - : wc", "127.0.0.1 probe :"], "{workers:?}");
}

#[test]
fn gearadmin_server_version_and_getpid() {
    let Some(s) = setup() else { return };
    let version = s.admin_ok(&["--server-version"]);
    match s.target.kind() {
        Kind::Ours => {
            assert_eq!(version, format!("gearframe-{}\n", env!("CARGO_PKG_VERSION")));
        }
        // gearmand prints its own version; only the shape is common.
        Kind::Gearmand => assert!(version.starts_with("1.1.") && version.ends_with('\n')),
    }
    assert_eq!(s.admin_ok(&["--getpid"]), format!("{}\n", s.target.pid()));
}

#[test]
fn gearadmin_show_jobs_and_cancel_job() {
    let Some(mut s) = setup() else { return };
    let Some(sh) = peer("sh") else { return };
    assert_printed(&s.gearman(&["-b", "-f", "rec"], b"cancelled\n"), "", "gearman -b");
    let jobs = rows(&s.admin_ok(&["--show-jobs"]));
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let handle = jobs[0].strip_suffix("\t0\t0\t1").expect("a queued background job").to_string();

    assert_eq!(s.admin_ok(&["--cancel-job", &handle]), "OK\n");
    match s.target.kind() {
        // A cancelled queued job leaves the queue, the listing and the
        // counts at once.
        Kind::Ours => {
            assert_eq!(s.admin_ok(&["--show-jobs"]), ".\n");
            assert_eq!(s.admin_ok(&["--status"]), "rec\t0\t0\t0\n.\n");
        }
        // gearmand keeps it listed, ignored and no longer queued, and
        // counted, until a worker reaches it.
        Kind::Gearmand => {
            assert_eq!(s.admin_ok(&["--show-jobs"]), format!("{handle}\t0\t1\t0\n.\n"));
            assert_eq!(s.admin_ok(&["--status"]), "rec\t1\t0\t0\n.\n");
        }
    }
    assert_eq!(s.admin_err(&["--cancel-job", "H:no-such-host:424242"]), "Error: UNKNOWN_JOB\r\n");

    // A worker reaps the cancelled job without running it, then runs the next.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("ran");
    let sh = sh.to_string_lossy().into_owned();
    let file_arg = file.to_string_lossy().into_owned();
    let mut worker = s.worker(&["-c", "1"], "rec", &[&sh, "-c", "cat >> \"$0\"", &file_arg]);
    assert_printed(&s.gearman(&["-b", "-f", "rec"], b"after\n"), "", "gearman -b");
    assert!(worker.wait(SETTLE_LIMIT).success(), "the worker exits after one job");
    assert_eq!(std::fs::read_to_string(&file).expect("worker output"), "after\n");
    s.wait_status("rec\t0\t0\t0\n.\n");
    assert_eq!(s.admin_ok(&["--show-jobs"]), ".\n");
}

#[test]
fn gearadmin_create_and_drop_function() {
    let Some(mut s) = setup() else { return };
    assert_eq!(s.admin_ok(&["--create-function", "newf"]), "OK\n");
    // Creating an existing function is not an error.
    assert_eq!(s.admin_ok(&["--create-function", "newf"]), "OK\n");
    assert_eq!(s.admin_ok(&["--status"]), "newf\t0\t0\t0\n.\n");
    assert_eq!(s.admin_ok(&["--drop-function", "newf"]), "OK\n");
    assert_eq!(s.admin_ok(&["--status"]), ".\n");
    assert_eq!(s.admin_err(&["--drop-function", "newf"]), "Error: function not found\r\n");

    let worker = s.worker(&[], "wc", &["wc", "-l"]);
    assert_eq!(
        s.admin_err(&["--drop-function", "wc"]),
        "Error: there are still connected workers or executing clients\r\n"
    );
    assert_eq!(s.admin_ok(&["--status"]), "wc\t0\t0\t1\n.\n");
    drop(worker);
    s.wait_status("wc\t0\t0\t0\n.\n");
    assert_eq!(s.admin_ok(&["--drop-function", "wc"]), "OK\n");
    assert_eq!(s.admin_ok(&["--status"]), ".\n");
}
