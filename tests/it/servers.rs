//! Which servers each command and builder uses: `-s` replaces every other
//! list, else `GEARMAN_SERVERS`, else the config file's list, else
//! 127.0.0.1:4730. Each test gives a config naming a "dead" server (a
//! listener that records and drops every connection) and a live server by
//! `-s` or `GEARMAN_SERVERS`; the command must succeed on the live one and
//! never connect to the dead one.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{ChildStderr, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use gearframe::client::{Client, Job, JobOutcome};
use gearframe::config::Config;
use gearframe::worker::{Echo, Worker};

use crate::support::{self, ChildGuard, Opts, Ours};

const LIMIT: Duration = Duration::from_secs(60);

/// A listener that counts the connections made to it and closes each at once.
struct Dead {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Dead {
    fn start() -> Dead {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (Arc::clone(&accepts), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        a.fetch_add(1, Ordering::SeqCst);
                        drop(conn);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Dead { addr, accepts, stop, thread: Some(thread) }
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

impl Drop for Dead {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A config naming `dead` in every section, with long retry limits so that
/// a command that tried it would not end quickly with success.
fn config(dead: &Dead, extra: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    write!(
        f,
        "client:\n  servers: [{d}]\n  retry_timeout: 1h\n  ack_timeout: 1h\n  job_timeout: 50s\nadmin:\n  servers: [{d}]\nworker:\n  servers: [{d}]\n  threads: 2\n  functions:\n    echo:\n      builtin: echo\n{extra}",
        d = dead.addr
    )
    .unwrap();
    f
}

fn bin(cfg: &tempfile::NamedTempFile, env: Option<&str>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gearframe"));
    c.env_remove("GEARMAN_SERVERS").env_remove("GEARFRAME_CONFIG").env("RUST_LOG", "warn");
    if let Some(e) = env {
        c.env("GEARMAN_SERVERS", e);
    }
    c.arg("-c").arg(cfg.path()).stdin(Stdio::null());
    c
}

fn run(cfg: &tempfile::NamedTempFile, env: Option<&str>, args: &[&str]) -> Output {
    bin(cfg, env).args(args).output().unwrap()
}

fn echo_worker(addr: SocketAddr) -> Worker {
    Worker::builder().servers([addr.to_string()]).threads(2).register("echo", Echo).build().unwrap()
}

/// The next line of `from` that contains `want` (an empty string at its
/// end); the caller keeps `from` open so the child never writes to a closed pipe.
fn line_with(from: &mut BufReader<ChildStderr>, want: &str) -> String {
    from.lines().map_while(Result::ok).find(|l| l.contains(want)).unwrap_or_default()
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Both ways of naming the live server: `-s` on the command line, or
/// `GEARMAN_SERVERS` without `-s`.
fn ways(live: &str) -> [(Vec<&str>, Option<&str>); 2] {
    [(vec!["-s", live], None), (vec![], Some(live))]
}

#[test]
fn submit_uses_only_the_flag_or_env_list() {
    let dead = Dead::start();
    let srv = Ours::start(&Opts::default());
    let _w = echo_worker(srv.addr());
    let cfg = config(&dead, "");
    let live = srv.addr().to_string();
    for (flags, env) in ways(&live) {
        // Several uniques, so that a list that still held the dead server
        // would hash some of them to it.
        for u in ["a", "b", "c", "d", "e", "f"] {
            let mut args = vec!["submit", "-f", "echo", "-u", u];
            args.extend(&flags);
            args.push("hello");
            let out = run(&cfg, env, &args);
            assert_eq!(out.status.code(), Some(0), "{env:?} {args:?}: {}", show(&out));
            assert_eq!(String::from_utf8_lossy(&out.stdout), "hello");
        }
    }
    assert_eq!(dead.accepts(), 0, "the config's server was connected to");
}

#[test]
fn send_uses_only_the_flag_or_env_list() {
    let dead = Dead::start();
    let srv = Ours::start(&Opts::default());
    let _w = echo_worker(srv.addr());
    let cfg = config(&dead, "");
    let mut plan = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    let jobs: String = (0..8).map(|i| format!("  - function: echo\n    data: job{i}\n")).collect();
    write!(plan, "jobs:\n{jobs}").unwrap();
    let live = srv.addr().to_string();
    let plan_path = plan.path().to_str().unwrap();
    for (flags, env) in ways(&live) {
        let mut args = vec!["send", "--plan", plan_path, "--mode", "sync"];
        args.extend(&flags);
        let out = run(&cfg, env, &args);
        assert_eq!(out.status.code(), Some(0), "{env:?}: {}", show(&out));
    }
    assert_eq!(dead.accepts(), 0, "the config's server was connected to");
}

#[test]
fn admin_uses_only_the_flag_or_env_list() {
    let dead = Dead::start();
    let srv = Ours::start(&Opts::default());
    let cfg = config(&dead, "");
    let live = srv.addr().to_string();
    for (flags, env) in ways(&live) {
        let mut args = vec!["admin"];
        args.extend(&flags);
        args.push("status");
        let out = run(&cfg, env, &args);
        assert_eq!(out.status.code(), Some(0), "{env:?}: {}", show(&out));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(!text.contains(&dead.addr.to_string()), "{text}");
    }
    assert_eq!(dead.accepts(), 0, "the config's server was connected to");
    // Without -s or GEARMAN_SERVERS the config's list is the one used.
    let out = run(&cfg, None, &["admin", "status"]);
    assert_ne!(out.status.code(), Some(0), "{}", show(&out));
    assert!(dead.accepts() > 0, "admin.servers is used when nothing else is given");
}

#[test]
fn worker_uses_only_the_flag_or_env_list() {
    let dead = Dead::start();
    let srv = Ours::start(&Opts::default());
    let cfg = config(&dead, "");
    let live = srv.addr().to_string();
    let client = Client::builder().servers([&live]).build().unwrap();
    for (i, (flags, env)) in ways(&live).into_iter().enumerate() {
        let mut args = vec!["worker"];
        args.extend(&flags);
        args.push("echo");
        let mut child = bin(&cfg, env).args(&args).stderr(Stdio::piped()).spawn().unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let _guard = ChildGuard(child);
        let line = line_with(&mut stderr, "gearframe worker:");
        assert!(line.contains(&format!("on {live} for echo")), "{env:?}: {line}");
        let payload = format!("via-{i}");
        let outcome = client.submit_job(&Job::new("echo", payload.clone()).timeout(LIMIT)).unwrap();
        assert!(
            matches!(&outcome, JobOutcome::Complete { data, .. } if *data == payload.as_bytes()),
            "{outcome:?}"
        );
    }
    assert_eq!(dead.accepts(), 0, "the config's server was connected to");
}

#[test]
fn up_serves_its_own_server_and_says_worker_servers_is_unused() {
    let dead = Dead::start();
    let cfg = config(&dead, "");
    let port = support::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = bin(&cfg, Some(&dead.addr.to_string()))
        .args(["up", "-L", &listen])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let _guard = ChildGuard(child);
    let line = line_with(&mut stderr, "gearframe up:");
    assert!(
        line.contains(&format!("worker.servers ({}) is not used", dead.addr))
            && line.contains(&listen),
        "{line}"
    );
    support::wait_listening(listen.parse().unwrap(), LIMIT);
    let client = Client::builder().servers([&listen]).build().unwrap();
    let outcome = client.submit_job(&Job::new("echo", "up").timeout(LIMIT)).unwrap();
    assert!(matches!(&outcome, JobOutcome::Complete { data, .. } if data == b"up"), "{outcome:?}");
    assert_eq!(dead.accepts(), 0, "worker.servers or GEARMAN_SERVERS was connected to");
}

#[test]
fn builders_replace_the_config_list() {
    let dead = Dead::start();
    let srv = Ours::start(&Opts::default());
    let live = srv.addr().to_string();
    let cfg = Config::read(&format!(
        "client:\n  servers: \"{d}\"\n  retry_timeout: 1h\nworker:\n  servers: [{d}]\nadmin:\n  servers: [{d}]\n",
        d = dead.addr
    ))
    .unwrap();
    // The config's client list, then an explicit one: the explicit one replaces it.
    let client = Client::builder().config(cfg.client.clone()).servers([&live]).build().unwrap();
    assert_eq!(client.servers().collect::<Vec<_>>(), [live.as_str()]);
    let worker = Worker::builder()
        .config(cfg.worker.clone())
        .servers([&live])
        .threads(1)
        .register("echo", Echo)
        .build()
        .unwrap();
    for u in ["a", "b", "c", "d", "e", "f"] {
        let job = Job::new("echo", u).unique(u).timeout(LIMIT);
        let outcome = client.submit_job(&job).unwrap();
        assert!(matches!(outcome, JobOutcome::Complete { .. }), "{outcome:?}");
    }
    drop(worker);
    assert_eq!(dead.accepts(), 0, "the config's server was connected to");
    // The config helpers alone use the config's list.
    let from_config = Client::with_config(cfg.client.clone()).unwrap();
    assert_eq!(from_config.servers().collect::<Vec<_>>(), [dead.addr.to_string()]);
    let admin = Config::read(&format!("admin:\n  servers: {live}\n")).unwrap();
    let cluster = admin.admin.to_cluster().unwrap();
    assert_eq!(cluster.servers(), [live.as_str()]);
    assert!(cluster.status().iter().all(|r| r.result.is_ok()), "the live server answers");
}

/// An example binary that `cargo test` built next to the gearframe binary.
fn example(name: &str) -> Command {
    let dir =
        std::path::Path::new(env!("CARGO_BIN_EXE_gearframe")).parent().unwrap().join("examples");
    let mut c = Command::new(dir.join(name));
    c.stdin(Stdio::null());
    c
}

#[test]
fn builders_without_a_list_take_gearman_servers() {
    let srv = Ours::start(&Opts::default());
    let live = srv.addr().to_string();
    let worker = example("worker")
        .env("GEARMAN_SERVERS", &live)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _worker = ChildGuard(worker);
    let out = example("client").env("GEARMAN_SERVERS", &live).output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("namraeg ,olleh\n") && text.contains(&live), "{text}");
    let out = example("client").env("GEARMAN_SERVERS", "gearman://x").output().unwrap();
    assert!(!out.status.success());
    // The example prints the error's Debug form.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("BadServer") && err.contains("gearman://x"), "{err}");
}

#[test]
fn every_command_refuses_a_bad_entry_in_one_line() {
    let dead = Dead::start();
    let cfg = config(&dead, "");
    let cases: [&[&str]; 4] = [
        &["submit", "-f", "x", "y"],
        &["send", "--plan", "plugin/eg.yaml"],
        &["admin", "status"],
        &["worker", "echo"],
    ];
    for args in cases {
        for (flags, env) in ways("http://127.0.0.1:4730") {
            let mut argv = args.to_vec();
            argv.extend(&flags);
            let out = bin(&cfg, env).args(&argv).current_dir(env!("CARGO_MANIFEST_DIR")).output();
            let out = out.unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{argv:?} {env:?}: {}", show(&out));
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(
                err.contains("bad server `http://127.0.0.1:4730`")
                    && err.contains("a server address has no scheme; write HOST[:PORT]"),
                "{err}"
            );
            assert!(!err.contains("[http"), "{err}");
        }
    }
    let mut bad = tempfile::NamedTempFile::new().unwrap();
    write!(bad, "client:\n  window: 4\n  servers: [a, 'b:x']\n").unwrap();
    let out = bin(&bad, None).args(["submit", "-f", "x", "y"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        err.contains("line 3 column 3: client.servers: bad server `b:x`: the port must be"),
        "{err}"
    );
    assert_eq!(dead.accepts(), 0);
}
