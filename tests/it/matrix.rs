//! The failure matrix: every peer client against a real gearframe worker,
//! through gearframe's server and through gearmand, for a success, a
//! non-zero exit, a timeout, a handler's error and panic, and streamed
//! WORK_DATA and WORK_STATUS. Each cell checks that the client ends, ends
//! the way the job did, and shows the reason wherever the client can show
//! one. Every failing cell is reported, not only the first.

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gearframe::conn::Connection;
use gearframe::proto::{Packet, PacketType};
use gearframe::server::ServerConfig;
use gearframe::worker::{Job, JobContext, JobError, Worker};

use crate::support::{self, ChildGuard, Gearmand, Opts, Ours, eventually};

/// A "did not hang" guard for one client run, not a speed limit.
const CELL_LIMIT: Duration = Duration::from_secs(20);
/// How long the workers get to register.
const READY_LIMIT: Duration = Duration::from_secs(20);

/// The reasons the failing functions give.
const EXIT_REASON: &str = "exit code 3: disk on fire";
const TIMEOUT_REASON: &str = "timed out after 1 s";
const ERROR_REASON: &str = "handler said no";
const PANIC_REASON: &str = "handler panicked: handler blew up";

/// The config of the `gearframe worker` that runs the shell functions.
const WORKER_CONFIG: &str = "worker:
  threads: 6
  grace: 1s
  functions:
    m_ok:
      shell: tr a-z A-Z
    m_exit:
      shell: echo 'disk on fire' >&2; exit 3
    m_timeout:
      shell: exec sleep 60
      timeout: 1s
      kill_grace: 1s
    m_stream:
      shell: printf 'line-1\\nline-2\\n'
      output: stream
";

/// What a cell runs and what the client must show.
struct Case {
    name: &'static str,
    function: &'static str,
    /// `Some(result)`: the job succeeds with it; `None`: it fails.
    result: Option<&'static str>,
    /// Texts the client must show (reason, data, status).
    shows: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case { name: "success", function: "m_ok", result: Some("HELLO"), shows: &[] },
    Case { name: "non-zero exit", function: "m_exit", result: None, shows: &[EXIT_REASON] },
    Case { name: "timeout", function: "m_timeout", result: None, shows: &[TIMEOUT_REASON] },
    Case { name: "handler error", function: "m_err", result: None, shows: &[ERROR_REASON] },
    Case { name: "handler panic", function: "m_panic", result: None, shows: &[PANIC_REASON] },
    Case { name: "streamed data", function: "m_stream", result: Some(""), shows: &["line-1"] },
    Case {
        name: "data and status",
        function: "m_events",
        result: Some("whole"),
        shows: &["part-1", "STATUS 1/2"],
    },
];

/// The peer clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    GearmanCli,
    Php,
    Perl,
    PyGearman,
    Gear,
}

const PEERS: [Peer; 5] = [Peer::GearmanCli, Peer::Php, Peer::Perl, Peer::PyGearman, Peer::Gear];

/// PHP's GearmanClient twice: doNormal with its return codes, then a task
/// with every callback.
const PHP_CLIENT: &str = r#"<?php
[$_, $port, $fn] = $argv;
$c = new GearmanClient(); $c->addServer("127.0.0.1", (int)$port); $c->setTimeout(15000);
do {
    $r = $c->doNormal($fn, "hello");
    $rc = $c->returnCode();
    if ($rc == GEARMAN_WORK_DATA || $rc == GEARMAN_WORK_WARNING) { echo "DO data $r\n"; }
    if ($rc == GEARMAN_WORK_STATUS) { [$n, $d] = $c->doStatus(); echo "DO STATUS $n/$d\n"; }
} while ($rc == GEARMAN_WORK_DATA || $rc == GEARMAN_WORK_WARNING || $rc == GEARMAN_WORK_STATUS);
// doNormal's result holds the WORK_DATA before it: the task shows the result.
echo $rc == GEARMAN_SUCCESS ? "DO ok\n" : "DO fail (return code $rc)\n";
$t = new GearmanClient(); $t->addServer("127.0.0.1", (int)$port); $t->setTimeout(15000);
$t->setCompleteCallback(function ($k) { echo "OUTCOME ok " . $k->data() . "\n"; });
$t->setFailCallback(function ($k) { echo "OUTCOME fail\n"; });
$t->setExceptionCallback(function ($k) { echo "EXCEPTION " . $k->data() . "\nOUTCOME fail\n"; });
$t->setWarningCallback(function ($k) { echo "WARNING " . $k->data() . "\n"; });
$t->setDataCallback(function ($k) { echo "DATA " . $k->data() . "\n"; });
$t->setStatusCallback(function ($k) {
    echo "STATUS " . $k->taskNumerator() . "/" . $k->taskDenominator() . "\n";
});
if (!$t->addTask($fn, "hello")) { echo "ADDTASK failed: " . $t->error() . "\n"; }
$ok = $t->runTasks();
echo "RUNTASKS " . ($ok ? "done" : "failed") . " (return code " . $t->returnCode() . ": " . $t->error() . ")\n";
"#;

/// Perl's Gearman::Client: do_task with every callback.
const PERL_CLIENT: &str = r#"
use Gearman::Client;
my ($port, $fn) = @ARGV;
$| = 1;
my $c = Gearman::Client->new;
$c->job_servers("127.0.0.1:$port");
my $r = $c->do_task($fn, "hello", {
    timeout => 15,
    on_fail => sub { print "ON_FAIL\n" },
    on_exception => sub { print "EXCEPTION $_[0]\n" },
    on_warning => sub { my $w = shift; print "WARNING ", (ref $w ? $$w : $w), "\n" },
    on_data => sub { my $d = shift; print "DATA ", (ref $d ? $$d : $d), "\n" },
    on_status => sub { print "STATUS $_[0]/$_[1]\n" },
});
print defined $r ? "OUTCOME ok $$r\n" : "OUTCOME fail\n";
"#;

/// pygearman: submit_job and what the request collected.
const PYGEARMAN_CLIENT: &str = r#"
import sys, gearman
port, fn = sys.argv[1], sys.argv[2]
c = gearman.GearmanClient(["127.0.0.1:" + port])
r = c.submit_job(fn, "hello", poll_timeout=15)
for w in r.warning_updates: print("WARNING", w.decode())
for d in r.data_updates: print("DATA", d.decode())
t = lambda v: v.decode() if isinstance(v, bytes) else str(v)
if r.status: print("STATUS %s/%s" % (t(r.status.get("numerator")), t(r.status.get("denominator"))))
if r.exception is not None: print("EXCEPTION", r.exception.decode())
if r.state == "COMPLETE": print("OUTCOME ok", r.result.decode())
elif r.state == "FAILED": print("OUTCOME fail")
else: print("OUTCOME none", r.state)
"#;

/// OpenDev gear: a TextJob and its fields.
const GEAR_CLIENT: &str = r#"
import sys, time, gear
port, fn = sys.argv[1], sys.argv[2]
c = gear.Client()
c.addServer("127.0.0.1", int(port))
c.waitForServer(10)
j = gear.TextJob(fn, "hello")
c.submitJob(j)
deadline = time.time() + 15
while not j.complete and time.time() < deadline:
    time.sleep(0.02)
t = lambda v: v.decode() if isinstance(v, bytes) else str(v)
if j.denominator: print("STATUS %s/%s" % (t(j.numerator), t(j.denominator)))
for d in j.data: print("DATA", d)
if j.exception: print("EXCEPTION", j.exception)
if not j.complete: print("OUTCOME none")
elif j.failure: print("OUTCOME fail")
# The result is the last of the DATA lines (gear keeps it with the data).
else: print("OUTCOME ok")
c.shutdown()
"#;

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::GearmanCli => "gearman -f",
            Peer::Php => "PHP GearmanClient",
            Peer::Perl => "Perl Gearman::Client",
            Peer::PyGearman => "pygearman",
            Peer::Gear => "gear",
        }
    }

    /// The command that runs one job, or `None` when the peer is missing.
    fn command(self, dir: &std::path::Path, port: u16, function: &str) -> Option<Command> {
        let port = port.to_string();
        let script = |name: &str, text: &str| {
            let p = dir.join(name);
            if !p.exists() {
                std::fs::write(&p, text).unwrap();
            }
            p
        };
        let mut c = match self {
            Peer::GearmanCli => {
                let mut c = Command::new(support::peer("gearman")?);
                c.args(["-h", "127.0.0.1", "-p", &port, "-f", function, "hello"]);
                c
            }
            Peer::Php => {
                let mut c = Command::new(support::peer("php")?);
                c.arg(script("client.php", PHP_CLIENT)).args([&port, function]);
                c
            }
            Peer::Perl => {
                let mut c = Command::new(support::peer("perl")?);
                c.arg(script("client.pl", PERL_CLIENT)).args([&port, function]);
                c
            }
            Peer::PyGearman => {
                let mut c = Command::new(support::peer("python3")?);
                c.arg(script("pygearman_client.py", PYGEARMAN_CLIENT)).args([&port, function]);
                c
            }
            Peer::Gear => {
                let mut c = Command::new(support::peer("python3")?);
                c.arg(script("gear_client.py", GEAR_CLIENT)).args([&port, function]);
                c
            }
        };
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        Some(c)
    }

    /// Whether the peer's library is there (the module, the extension).
    fn available(self) -> bool {
        let check = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let ok = match self {
            Peer::GearmanCli => support::peer("gearman").is_some(),
            Peer::Php => {
                support::peer("php").is_some()
                    && check("php", &["-r", "exit(class_exists('GearmanClient') ? 0 : 1);"])
            }
            Peer::Perl => {
                support::peer("perl").is_some() && check("perl", &["-MGearman::Client", "-e", "1"])
            }
            Peer::PyGearman => {
                support::peer("python3").is_some()
                    && check("python3", &["-c", "import gearman.client"])
            }
            Peer::Gear => {
                support::peer("python3").is_some() && check("python3", &["-c", "import gear"])
            }
        };
        ok || support::missing::<()>(self.name()).is_some()
    }
}

/// How one client run ended.
struct Run {
    /// `None`: it did not end within [`CELL_LIMIT`] and was killed.
    code: Option<i32>,
    text: String,
}

/// Runs `cmd`, killing it after `limit`.
fn run(mut cmd: Command, limit: Duration) -> Run {
    let mut child = ChildGuard(cmd.spawn().expect("start the client"));
    let readers: Vec<_> = [
        Box::new(child.0.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.0.stderr.take().unwrap()),
    ]
    .into_iter()
    .map(|mut pipe| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = pipe.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    })
    .collect();
    let deadline = Instant::now() + limit;
    let code = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break Some(status.code().unwrap_or(-1));
        }
        if Instant::now() >= deadline {
            let _ = child.0.kill();
            let _ = child.0.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let text: Vec<String> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    Run { code, text: text.join("\n--- stderr ---\n") }
}

/// Checks one cell; the problems found, if any.
fn check(peer: Peer, case: &Case, run: &Run) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(code) = run.code else {
        return vec![format!("did not end within {CELL_LIMIT:?}")];
    };
    let text = &run.text;
    let outcomes: Vec<&str> = text.lines().filter(|l| l.starts_with("OUTCOME")).collect();
    match peer {
        Peer::GearmanCli => {
            // stdout: data and result; stderr: warnings; the exit code
            // tells success from failure. It prints no status.
            if case.result.is_some() != (code == 0) {
                problems.push(format!("exit code {code}"));
            }
            if let Some(r) = case.result
                && !text.contains(r)
            {
                problems.push(format!("no result {r:?}"));
            }
        }
        _ => {
            if code != 0 {
                problems.push(format!("exit code {code}"));
            }
            let want = match (case.result, peer) {
                (Some(_), Peer::Gear) => "OUTCOME ok".to_string(),
                (Some(r), _) => format!("OUTCOME ok {r}"),
                (None, _) => "OUTCOME fail".into(),
            };
            if outcomes.len() != 1 || outcomes[0].trim_end() != want.trim_end() {
                problems.push(format!("outcome {outcomes:?}, want {want:?}"));
            }
            if let (Peer::Gear, Some(r)) = (peer, case.result)
                && !text.contains(&format!("DATA {r}"))
            {
                problems.push(format!("no result {r:?}"));
            }
            // PHP's doNormal, besides its task callbacks.
            let want_do = if case.result.is_some() { "DO ok" } else { "DO fail" };
            if peer == Peer::Php && !text.lines().any(|l| l.starts_with(want_do)) {
                problems.push(format!("doNormal did not end with {want_do:?}"));
            }
        }
    }
    for s in case.shows {
        let status_shown = peer != Peer::GearmanCli;
        if s.starts_with("STATUS") && !status_shown {
            continue;
        }
        if !text.contains(s) {
            problems.push(format!("does not show {s:?}"));
        }
    }
    problems
}

/// The library worker for the handler cases, in this process.
fn handler_worker(addr: SocketAddr) -> Worker {
    Worker::builder()
        .servers([addr.to_string()])
        .threads(6)
        .grace(Duration::from_secs(1))
        .register("m_err", |_: &Job, _: &mut JobContext<'_>| Err(JobError::new(ERROR_REASON)))
        .register("m_panic", |_: &Job, _: &mut JobContext<'_>| -> gearframe::worker::JobResult {
            panic!("handler blew up")
        })
        .register("m_events", |_: &Job, ctx: &mut JobContext<'_>| {
            ctx.data(b"part-1")?;
            ctx.status(1, 2)?;
            Ok(b"whole".to_vec())
        })
        .build()
        .unwrap()
}

/// Waits until every function of the matrix has a worker on `addr`.
fn wait_registered(addr: SocketAddr) {
    let functions: Vec<&str> = CASES.iter().map(|c| c.function).collect();
    eventually(READY_LIMIT, "the matrix workers to register", || {
        let mut c = Connection::connect(&addr.to_string(), Duration::from_secs(5)).ok()?;
        let lines = support::admin_on(&mut c, "status", true, Duration::from_secs(5));
        functions
            .iter()
            .all(|f| {
                lines.iter().any(|l| {
                    let cols: Vec<&str> = l.split('\t').collect();
                    cols.len() == 4 && cols[0] == *f && cols[3].parse::<u32>().unwrap_or(0) > 0
                })
            })
            .then_some(())
    });
}

/// Runs every cell against the server on `addr`; returns the failures.
fn run_matrix(server: &str, addr: SocketAddr) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("worker.yaml");
    std::fs::write(&cfg, WORKER_CONFIG).unwrap();
    let shell_worker = ChildGuard(
        support::gearframe_worker(&cfg, addr)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let lib_worker = handler_worker(addr);
    wait_registered(addr);
    let peers: Vec<Peer> = PEERS.into_iter().filter(|p| p.available()).collect();
    let failures = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|scope| {
        for peer in peers {
            let failures = Arc::clone(&failures);
            let dir = dir.path().to_path_buf();
            scope.spawn(move || {
                for case in CASES {
                    let Some(cmd) = peer.command(&dir, addr.port(), case.function) else {
                        continue;
                    };
                    let run = run(cmd, CELL_LIMIT);
                    let problems = check(peer, case, &run);
                    if !problems.is_empty() {
                        failures.lock().unwrap().push(format!(
                            "[{server} × {} × {}] {}\n    saw: {}",
                            peer.name(),
                            case.name,
                            problems.join("; "),
                            run.text.trim().replace('\n', "\n         ")
                        ));
                    }
                }
            });
        }
    });
    lib_worker.shutdown();
    lib_worker.join();
    stop_worker(shell_worker);
    Arc::try_unwrap(failures).unwrap().into_inner().unwrap()
}

/// Stops `gearframe worker` with SIGTERM and waits for it.
fn stop_worker(mut w: ChildGuard) {
    let _ = Command::new("kill").args(["-TERM", &w.id().to_string()]).status();
    eventually(Duration::from_secs(20), "the shell worker to exit", || w.0.try_wait().unwrap());
}

fn assert_no_failures(failures: &[String]) {
    assert!(failures.is_empty(), "{} failing cell(s):\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn every_peer_client_ends_with_the_reason_through_gearframes_server() {
    let srv = Ours::start(&Opts::default());
    assert_no_failures(&run_matrix("gearframe server", srv.addr()));
}

#[test]
fn every_peer_client_ends_with_the_reason_through_gearmand() {
    let Some(g) = Gearmand::start(&Opts::default()) else { return };
    assert_no_failures(&run_matrix("gearmand", g.addr()));
}

/// The question a worker asks before it reports failures: gearframe's
/// server says WORK_EXCEPTION is safe unless it sends exceptions to every
/// client; gearmand does not know the option.
#[test]
fn servers_answer_the_exceptions_safe_option() {
    let ask = |addr: SocketAddr| {
        let mut c = support::RawConn::connect(addr, "worker");
        c.send(Packet::OptionReq { option: gearframe::proto::EXCEPTIONS_SAFE_OPTION.as_bytes() });
        let p = c.recv_packet();
        match p.kind {
            PacketType::Error => p.arg_str(0),
            other => other.to_string(),
        }
    };
    let ours = Ours::start(&Opts::default());
    assert_eq!(ask(ours.addr()), PacketType::OptionRes.to_string());
    let all = Ours::with_config(ServerConfig { exceptions: true, ..ServerConfig::default() });
    assert_eq!(ask(all.addr()), "EXCEPTIONS_FOR_ALL");
    if let Some(g) = Gearmand::start(&Opts::default()) {
        assert_eq!(ask(g.addr()), "UNKNOWN_OPTION");
    }
}

/// With `exceptions` on, gearframe's server sends WORK_EXCEPTION to every
/// client; the worker learns it and reports failures as WORK_WARNING and
/// WORK_FAIL, so pygearman and the `gearman` tool still end with a failure.
#[test]
fn a_server_with_exceptions_for_all_still_fails_jobs_for_every_peer() {
    let srv = Ours::with_config(ServerConfig { exceptions: true, ..ServerConfig::default() });
    let failures = run_matrix("gearframe server --exceptions", srv.addr());
    assert_no_failures(&failures);
}
