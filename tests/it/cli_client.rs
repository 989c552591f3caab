//! `gearframe submit` and `gearframe send`: the real binary against the
//! embedded server (and gearmand for submit).

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use gearframe::client::{Client, derive_unique};
use gearframe::conn::Connection;

use crate::client::{RawWorker, ctl};
use crate::support::{self, ChildGuard, Gearmand, Opts, Ours, eventually};

fn gearframe(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gearframe"))
        .args(args)
        .env_remove("GEARMAN_SERVERS")
        .env_remove("GEARFRAME_CONFIG")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `func -> (queued total, running)` from the admin `status` command.
fn admin_status(addr: &str, function: &str) -> Option<(u64, u64)> {
    let mut c = Connection::connect(addr, Duration::from_secs(2)).unwrap();
    c.queue_bytes(b"status\n");
    c.flush().unwrap();
    let deadline = Some(Instant::now() + Duration::from_secs(5));
    let mut found = None;
    loop {
        let line = c.recv_line(deadline).unwrap();
        if line.trim_end() == "." {
            return found;
        }
        let f: Vec<&str> = line.split('\t').collect();
        if f[0] == function {
            found = Some((f[1].parse().unwrap(), f[2].parse().unwrap()));
        }
    }
}

#[test]
fn submit_foreground_background_and_failures() {
    let ours = Ours::start(&Opts::default());
    let g = Gearmand::start(&Opts::default());
    let mut addrs = vec![ours.addr().to_string()];
    addrs.extend(g.as_ref().map(|g| g.addr().to_string()));
    for addr in &addrs {
        let (c, _seen, _gate) = ctl();
        let _w = RawWorker::start(addr, &["reverse", "fail", "events", "exception"], c);
        let out = gearframe(&["submit", "-s", addr, "-f", "reverse", "hello", "world"], b"");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "dlrow olleh");
        let out = gearframe(&["submit", "-s", addr, "-f", "reverse", "-I"], b"from stdin");
        assert_eq!(text(&out.stdout), "nidts morf");
        let out =
            gearframe(&["-v", "submit", "-s", addr, "-f", "events", "--priority", "low"], b"");
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(text(&out.stdout), "abdone");
        let err = text(&out.stderr);
        assert!(err.contains("warning: w") && err.contains("status: 1/2"), "{err}");
        let out = gearframe(&["submit", "-s", addr, "-f", "fail", "x"], b"");
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out.stderr).contains("failed"));
        let out = gearframe(&["submit", "-s", addr, "-f", "exception", "x"], b"");
        assert_eq!(out.status.code(), Some(1));
        let out =
            gearframe(&["submit", "-s", addr, "-b", "-u", "cli-bg", "-f", "nobody", "x"], b"");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(text(&out.stdout).starts_with("H:"), "{}", text(&out.stdout));
        let out = gearframe(&["submit", "-s", addr, "--at", "+1h", "-f", "nobody", "later"], b"");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let cl = Client::builder().servers([addr]).build().unwrap();
        assert!(cl.status_unique("cli-bg").unwrap().known);
        assert_eq!(admin_status(addr, "nobody").map(|s| s.0), Some(2));
    }
}

#[test]
fn submit_bad_input_is_a_one_line_error_with_exit_2() {
    let ours = Ours::start(&Opts::default());
    let addr = ours.addr().to_string();
    let cases: [(&[&str], &str); 4] = [
        (&["submit", "-s", &addr, "--priority", "urgent", "-f", "f", "x"], "urgent"),
        (&["submit", "-s", "a:notaport", "-f", "f", "x"], "a:notaport"),
        (&["submit", "-s", &addr, "x"], "--function"),
        (&["submit", "-s", &addr, "--at", "soon", "-f", "f", "x"], "soon"),
    ];
    for (args, needle) in cases {
        let out = gearframe(args, b"");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert_eq!(admin_status(&addr, "f"), None, "nothing was sent");
}

#[test]
fn submit_without_a_server_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        "client:\n  retry_timeout: 200ms\n  backoff_min: 10ms\n  backoff_max: 50ms\n",
    )
    .unwrap();
    let dead = format!("127.0.0.1:{}", support::free_port());
    let t = Instant::now();
    let out = gearframe(&["-c", cfg.to_str().unwrap(), "submit", "-s", &dead, "-f", "f", "x"], b"");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains(&dead) && err.contains("function f"), "{err}");
}

#[test]
fn send_sync_prints_a_line_per_job() {
    let ours = Ours::start(&Opts::default());
    let addr = ours.addr().to_string();
    let (c, _seen, _gate) = ctl();
    let _w = RawWorker::start(&addr, &["reverse", "fail"], c);
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.yaml");
    std::fs::write(
        &plan,
        "jobs:\n  - function: reverse\n    data: {command: ls, argvs: ./}\n  - function: reverse\n    data: abc\n    priority: high\n  - function: fail\n",
    )
    .unwrap();
    let out =
        gearframe(&["send", "-s", &addr, "--plan", plan.to_str().unwrap(), "--mode", "sync"], b"");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout} {}", text(&out.stderr));
    // Printed as they finish: in any order.
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(
        lines[2],
        "reverse\tcomplete\t}\\\"/.\\\":\\\"svgra\\\",\\\"sl\\\":\\\"dnammoc\\\"{"
    );
    assert_eq!(lines[1], "reverse\tcomplete\tcba");
    assert_eq!(lines[0], "fail\tfailed\tno reason given by the worker");
    assert!(text(&out.stderr).contains("sent 3, completed 2, failed 1"), "{}", text(&out.stderr));
}

#[test]
fn send_bad_plans_send_nothing() {
    let ours = Ours::start(&Opts::default());
    let addr = ours.addr().to_string();
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.yaml");
    std::fs::write(&plan, "- function: queued\n  data: x\n- data: y\n").unwrap();
    let missing = dir.path().join("missing.yaml");
    for (p, needle) in [(&plan, "jobs[1]: missing field `function`"), (&missing, "cannot read")] {
        let out = gearframe(&["send", "-s", &addr, "--plan", p.to_str().unwrap()], b"");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{err}");
    }
    let out = gearframe(&["send", "-s", &addr, "--mode", "sometimes"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(admin_status(&addr, "queued"), None, "nothing was sent");
}

#[test]
fn send_cycles_coalesce_and_stop_on_ctrl_c() {
    let ours = Ours::start(&Opts::default());
    let addr = ours.addr().to_string();
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("count");
    let plan = dir.path().join("plan.sh");
    std::fs::write(
        &plan,
        format!(
            "#!/bin/sh\necho run >> '{}'\necho '[{{\"function\": \"cyc\", \"data\": {{\"command\": \"ls\", \"argvs\": \"./\"}}}}]'\n",
            count.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&plan, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let child = Command::new(env!("CARGO_BIN_EXE_gearframe"))
        .args(["send", "-s", &addr, "--plan", plan.to_str().unwrap()])
        .args(["--cycle", "20ms", "--reload", "0"])
        .env_remove("GEARFRAME_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard(child);
    eventually(Duration::from_secs(10), "three cycles", || {
        let n = std::fs::read_to_string(&count).map(|s| s.lines().count()).unwrap_or(0);
        (n >= 3).then_some(())
    });
    let pid = guard.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let status = eventually(Duration::from_secs(10), "send exits", || guard.0.try_wait().unwrap());
    let mut err = String::new();
    std::io::Read::read_to_string(guard.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    let summary = err.lines().find(|l| l.starts_with("sent ")).unwrap_or_else(|| panic!("{err}"));
    let sent: usize = summary[5..].split(',').next().unwrap().parse().unwrap();
    assert!(sent >= 2, "{summary}");
    // Every copy coalesced into one queued job.
    assert_eq!(admin_status(&addr, "cyc"), Some((1, 0)));
    let cl = Client::builder().servers([&addr]).build().unwrap();
    let unique = derive_unique("cyc", br#"{"command":"ls","argvs":"./"}"#);
    assert!(cl.status_unique(&unique).unwrap().known);
}
