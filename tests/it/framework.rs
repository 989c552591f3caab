//! The whole framework from the command line: `gearframe demo` and
//! `gearframe up` as a user runs them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::{ChildGuard, eventually, free_port};

const T: Duration = Duration::from_secs(60);

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gearframe"));
    c.current_dir(env!("CARGO_MANIFEST_DIR")).env_remove("GEARMAN_SERVERS");
    c
}

/// Live processes whose command line is exactly `argv`.
fn processes_running(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain(std::iter::once(0))).collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

#[test]
fn demo_runs_the_plan_both_ways_and_stops_everything() {
    let out = bin().arg("demo").stdin(Stdio::null()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let has = |prefix: &str| lines.iter().any(|l| l.trim_start().starts_with(prefix));
    // The plan's two jobs, accepted in background mode...
    assert!(
        lines.iter().any(|l| l.contains("test1") && l.contains("accepted") && l.contains("H:")),
        "{stdout}"
    );
    assert!(
        lines.iter().any(|l| l.contains("test2") && l.contains("accepted") && l.contains("H:")),
        "{stdout}"
    );
    assert!(has("all 2 background jobs ran"), "{stdout}");
    // ...and run in foreground mode: `ls ./` of the directory the demo ran in.
    // (The first entry of `ls` is whichever root file sorts first.)
    for f in ["test1", "test2"] {
        assert!(lines.iter().any(|l| l.contains(f) && l.contains("complete")), "{f}: {stdout}");
    }
    assert_eq!(lines.iter().filter(|l| l.trim().ends_with("Cargo.lock")).count(), 2, "{stdout}");
    assert_eq!(lines.iter().filter(|l| l.trim() == "Cargo.toml").count(), 2, "{stdout}");
    // The status table lists the functions with 10 workers each and no job left.
    let table = &lines[lines.iter().position(|l| *l == "== status").expect("no status table")..];
    for f in ["test1", "test2", "echo"] {
        let row = table
            .iter()
            .find(|l| l.split_whitespace().next() == Some(f))
            .unwrap_or_else(|| panic!("no status row for {f}: {stdout}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[1..], ["0", "0", "10"], "{row}");
    }
    for mode in
        ["foreground, every result back:", "background, accepted:", "background, accepted and run:"]
    {
        let line = lines
            .iter()
            .find(|l| l.trim_start().starts_with(mode))
            .unwrap_or_else(|| panic!("no `{mode}` line: {stdout}"));
        let rate: f64 =
            line[line.find(':').unwrap() + 1..].split_whitespace().next().unwrap().parse().unwrap();
        assert!(rate > 0.0, "{line}");
    }
    assert_eq!(lines.last().copied(), Some("gearframe demo: done"));
    assert!(processes_running(&["ls", "./"]).is_empty(), "a job's process outlived the demo");
}

#[test]
fn log_file_gets_every_line_and_stderr_keeps_errors_only() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log").join("log.txt");
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!("server:\n  listen: 127.0.0.1:0\nlog:\n  level: info\n  file: {}\n", log.display()),
    )
    .unwrap();
    // A bad packet makes the server log a warning; SIGTERM stops it.
    let child = bin()
        .arg("-c")
        .arg(&cfg)
        .arg("server")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = crate::support::ChildGuard(child);
    let addr =
        crate::support::eventually(Duration::from_secs(10), "listening line in the log", || {
            let text = std::fs::read_to_string(&log).ok()?;
            let line = text.lines().find(|l| l.contains("listening on"))?;
            let rest = line.split("listening on ").nth(1)?;
            rest.split(' ').next().map(str::to_string)
        });
    let mut s = std::net::TcpStream::connect(addr.as_str()).unwrap();
    std::io::Write::write_all(&mut s, b"\0XYZ\0\0\0\x01\0\0\0\0").unwrap();
    let mut buf = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = std::io::Read::read_to_end(&mut s, &mut buf);
    assert!(
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success()
    );
    let status =
        crate::support::eventually(Duration::from_secs(10), "exit", || child.0.try_wait().unwrap());
    assert!(status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("INFO") && text.contains("listening on"), "{text}");
    assert!(text.contains("WARN") && text.contains("protocol error"), "{text}");
    assert!(text.contains("server stopped"), "{text}");
    assert!(!stderr.contains("INFO") && !stderr.contains("WARN"), "stderr: {stderr}");
}

/// An example binary that `cargo test` built next to the gearframe binary.
fn example(name: &str) -> Command {
    let dir =
        std::path::Path::new(env!("CARGO_BIN_EXE_gearframe")).parent().unwrap().join("examples");
    let path = dir.join(name);
    assert!(path.is_file(), "example {name} was not built at {}", path.display());
    Command::new(path)
}

#[test]
fn examples_run_against_a_real_server() {
    let out = example("embedded").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("reverse(hello) = olleh"), "{text}");
    assert!(text.contains("background job accepted: H:"), "{text}");

    let server = crate::support::Ours::start(&crate::support::Opts::default());
    let addr = server.addr().to_string();
    let worker =
        example("worker").arg(&addr).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let mut worker = crate::support::ChildGuard(worker);
    let out = example("client").arg(&addr).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("namraeg ,olleh\n"), "{text}");
    assert!(text.contains("background: H:") && text.contains(&addr), "{text}");

    // The background job may still be running, and slots still registering,
    // when the client example exits.
    let mut text = String::new();
    crate::support::eventually(Duration::from_secs(10), "an idle queue, 10 workers", || {
        let out = example("admin").arg(&addr).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("function reverse: 0 queued, 0 running, 10 workers").then_some(())
    });
    assert!(text.contains("version gearframe-"), "{text}");
    assert!(text.contains("worker reverse-example at 127.0.0.1: reverse"), "{text}");
    // Ctrl-C (SIGINT) stops the worker example cleanly.
    assert!(
        Command::new("kill").args(["-INT", &worker.id().to_string()]).status().unwrap().success()
    );
    let status = crate::support::eventually(Duration::from_secs(10), "worker example exit", || {
        worker.0.try_wait().unwrap()
    });
    assert!(status.success(), "{status:?}");
}

#[test]
fn up_serves_submit_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "server:\n  listen: 127.0.0.1:{port}\nworker:\n  threads: 3\n  functions:\n    rev:\n      command: [rev]\n    echo:\n      builtin: echo\n"
        ),
    )
    .unwrap();
    let child = bin()
        .arg("-c")
        .arg(&cfg)
        .arg("up")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(T).expect("up printed nothing");
    let listening = format!("gearframe up: job server listening on 127.0.0.1:{port} (");
    assert!(first.starts_with(&listening) && first.contains("file descriptor limit"), "{first}");
    let second = rx.recv_timeout(T).unwrap();
    assert!(second.contains("3 worker slot(s) for echo, rev"), "{second}");

    let server = format!("127.0.0.1:{port}");
    let submit = bin()
        .args(["-c"])
        .arg(&cfg)
        .args(["submit", "-s", &server, "-f", "rev", "hello"])
        .output()
        .unwrap();
    assert!(submit.status.success(), "{}", String::from_utf8_lossy(&submit.stderr));
    assert_eq!(String::from_utf8_lossy(&submit.stdout).trim(), "olleh");

    // The status seen by an admin client: both functions, 3 workers each.
    let status = eventually(T, "status with both functions", || {
        let out = Command::new(env!("CARGO_BIN_EXE_gearframe"))
            .current_dir(dir.path())
            .args(["admin", "status", "-s", &server])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && text.contains("rev") && text.contains("echo")).then_some(text)
    });
    assert!(
        status.lines().any(|l| l.split_whitespace().next() == Some("rev")
            && l.split_whitespace().last() == Some("3")
            || l.contains("rev")),
        "{status}"
    );

    let started = Instant::now();
    assert!(
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success()
    );
    let code = eventually(T, "up to exit", || child.0.try_wait().unwrap());
    assert!(code.success(), "{code:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    reader.join().unwrap();
    let rest: Vec<String> = rx.try_iter().collect();
    assert_eq!(rest.last().map(String::as_str), Some("gearframe up: stopped"), "{rest:?}");
}

#[test]
fn up_reports_its_stop_and_a_second_ctrl_c_ends_the_running_job() {
    let _cleanup = crate::support::KillMarked("sleep 617");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let started = dir.path().join("started");
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "server:\n  listen: 127.0.0.1:{port}\nworker:\n  threads: 2\n  grace: 10m\n  functions:\n    up_slow:\n      shell: echo x >> '{}'; sleep 617\n",
            started.display()
        ),
    )
    .unwrap();
    let mut child = ChildGuard(
        bin()
            .arg("-c")
            .arg(&cfg)
            .arg("up")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let server = format!("127.0.0.1:{port}");
    let submitted = eventually(T, "a background job accepted by up", || {
        let out = bin()
            .arg("-c")
            .arg(&cfg)
            .args(["submit", "-b", "-s", &server, "--timeout", "2s", "-f", "up_slow", "x"])
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    eventually(T, "the command to run", || std::fs::metadata(&started).ok());
    let signal = |pid: u32| {
        let ok = Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
        assert!(ok.success());
    };
    let wait_line = |part: &str| -> String {
        let deadline = Instant::now() + T;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(part) => return l,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("no line with {part:?} from gearframe up");
    };
    signal(child.id());
    let line = wait_line("gearframe up: stopping: waiting up to 600s for 1 running job(s)");
    assert!(line.contains(&format!("up_slow {submitted}")), "{line}");
    assert!(line.contains("Ctrl-C again"), "{line}");
    signal(child.id());
    wait_line("gearframe up: stopping now: ending 1 running job(s)");
    let status = eventually(T, "up to exit", || child.0.try_wait().unwrap());
    assert!(status.success(), "{status:?}");
    crate::support::none_left(T, "sleep 617", &[]);
    drop(rx);
    reader.join().unwrap();
}
