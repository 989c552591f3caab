//! The libgearman peer: the same scenarios driven by PHP's gearman
//! extension (benches/peers/php_bench.php, built into this program).

use std::ffi::OsString;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gearframe::client::{Client, Job};
use gearframe::worker::shell::{Ending, ExitKind, ProcessGroup};
use subprocess::{PopenConfig, Redirection};

use super::target::{Meter, status, wait_for};
use super::{Load, Sample};

const SCRIPT: &str = include_str!("../../../benches/peers/php_bench.php");
/// How long a PHP process may run before the scenario is declared failed.
const LIMIT: Duration = Duration::from_secs(300);
/// How long a PHP process may take to exit once its stdin is closed.
const RELEASE_LIMIT: Duration = Duration::from_secs(30);

/// The script written to a temporary file, removed on drop.
#[derive(Debug)]
pub(super) struct Php {
    script: PathBuf,
}

impl Drop for Php {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.script);
    }
}

/// A running PHP process. It prints one JSON line when its part is done,
/// then keeps its connection open until its stdin is closed, so that the
/// server's threads for it are still there when the server's CPU time and
/// context switches are read.
struct Running {
    group: ProcessGroup,
    what: String,
    first_line: std::sync::mpsc::Receiver<String>,
    stdout: std::thread::JoinHandle<()>,
    stderr: std::thread::JoinHandle<String>,
}

impl Running {
    fn new(mut group: ProcessGroup, what: &str) -> Running {
        let (tx, first_line) = std::sync::mpsc::channel();
        let out = group.popen().stdout.take();
        // Output is read while the process runs, so that a large report
        // cannot fill the pipe and stall it.
        let stdout = std::thread::spawn(move || {
            let Some(out) = out else { return };
            let mut lines = std::io::BufReader::new(out).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            lines.for_each(drop);
        });
        let err = group.popen().stderr.take();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = err {
                let _ = r.read_to_string(&mut s);
            }
            s
        });
        Running { group, what: what.to_string(), first_line, stdout, stderr }
    }

    /// The process's JSON report, once its part is done.
    fn report(&mut self) -> Result<serde_json::Value, String> {
        match self.first_line.recv_timeout(LIMIT) {
            Ok(line) => serde_json::from_str(line.trim())
                .map_err(|e| format!("php {}: bad output ({e}): {:.200}", self.what, line.trim())),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // Its time is up: its group is stopped now.
                let _ = self.group.wait(Some(Duration::ZERO), &|| false, &mut || false);
                Err(format!("php {} still running after {LIMIT:?}", self.what))
            }
            // It ended without a report: release() says why.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Err(format!("php {} ended without a report", self.what))
            }
        }
    }

    /// Closes its stdin and waits for it to exit.
    fn release(self) -> Result<(), String> {
        let Running { mut group, what, stdout, stderr, .. } = self;
        drop(group.popen().stdin.take());
        let ending = group.run(Some(RELEASE_LIMIT));
        let _ = stdout.join();
        let err = stderr.join().unwrap_or_default();
        match ending {
            Ending::Exited(ExitKind::Code(0)) => Ok(()),
            Ending::Exited(kind) => Err(format!("php {what} failed ({kind}): {}", err.trim())),
            Ending::TimedOut(_) | Ending::Cancelled => {
                Err(format!("php {what} did not exit once released"))
            }
        }
    }
}

/// The reports of `procs`, or the first process's failure to report (see
/// [`fail_all`] for releasing them then).
fn reports(procs: &mut [Running]) -> Result<Vec<serde_json::Value>, String> {
    procs.iter_mut().map(Running::report).collect()
}

/// Releases every process; the first failure, if any.
fn release_all(procs: Vec<Running>) -> Result<(), String> {
    let mut first = Ok(());
    for p in procs {
        let r = p.release();
        if first.is_ok() {
            first = r;
        }
    }
    first
}

/// Releases `procs` after a failed report, preferring the process's own
/// error (its exit status and stderr) to the report's.
fn fail_all(procs: Vec<Running>, report_error: String) -> String {
    match release_all(procs) {
        Err(e) => e,
        Ok(()) => report_error,
    }
}

/// What the workers of one run reported, over all of them.
struct WorkerReports {
    /// Jobs run.
    count: u64,
    /// Start of the first job and end of the last (seconds, wall clock).
    first: f64,
    last: f64,
    /// CPU seconds.
    cpu: f64,
}

fn num(v: &serde_json::Value, key: &str) -> f64 {
    v.get(key).and_then(serde_json::Value::as_f64).unwrap_or(0.0)
}

fn host_port(addr: &str) -> (&str, &str) {
    addr.rsplit_once(':').unwrap_or((addr, "4730"))
}

impl Php {
    /// Checks that `php` with the gearman extension runs.
    pub(super) fn new() -> Result<Php, String> {
        let out = Command::new("php")
            .args(["-r", "echo class_exists('GearmanClient') ? 'yes' : 'no';"])
            .output()
            .map_err(|e| format!("php not found: {e} (apt-get install php-cli php-gearman)"))?;
        if out.stdout != b"yes" {
            return Err("php has no gearman extension (apt-get install php-gearman)".into());
        }
        let script =
            std::env::temp_dir().join(format!("gearframe-php-bench-{}.php", std::process::id()));
        std::fs::write(&script, SCRIPT).map_err(|e| format!("{}: {e}", script.display()))?;
        Ok(Php { script })
    }

    fn script(&self) -> &Path {
        &self.script
    }

    fn spawn(&self, args: &[String], what: &str) -> Result<Running, String> {
        let argv: Vec<OsString> = ["php".into(), self.script().into()]
            .into_iter()
            .chain(args.iter().map(OsString::from))
            .collect();
        let config = PopenConfig {
            stdin: Redirection::Pipe,
            stdout: Redirection::Pipe,
            stderr: Redirection::Pipe,
            ..Default::default()
        };
        ProcessGroup::start(&argv, config)
            .map(|g| Running::new(g, what))
            .map_err(|e| format!("cannot start php: {e}"))
    }

    fn clients(
        &self,
        mode: &str,
        addr: &str,
        function: &str,
        load: &Load,
    ) -> Result<(f64, Vec<f64>, f64, Vec<Running>), String> {
        let clients = load.clients.max(1);
        let (host, port) = host_port(addr);
        let mut children = Vec::new();
        for c in 0..clients {
            let jobs = load.jobs / clients + usize::from(c < load.jobs % clients);
            let args = [
                "client",
                mode,
                host,
                port,
                function,
                &jobs.to_string(),
                &(load.in_flight / clients).max(1).to_string(),
                &load.payload.to_string(),
            ]
            .map(String::from);
            match self.spawn(&args, &format!("client {mode}")) {
                Ok(r) => children.push(r),
                Err(e) => return Err(fail_all(children, e)),
            }
        }
        let got = match reports(&mut children) {
            Ok(v) => v,
            Err(e) => return Err(fail_all(children, e)),
        };
        let (mut start, mut end, mut lat, mut cpu) = (f64::MAX, 0f64, Vec::new(), 0.0);
        for v in got {
            start = start.min(num(&v, "start"));
            end = end.max(num(&v, "end"));
            cpu += num(&v, "cpu_s");
            if let Some(l) = v.get("lat_us").and_then(|l| l.as_array()) {
                lat.extend(l.iter().filter_map(serde_json::Value::as_f64));
            }
        }
        Ok(((end - start).max(0.0), lat, cpu, children))
    }

    fn workers(&self, addr: &str, function: &str, n: usize) -> Result<Vec<Running>, String> {
        let (host, port) = host_port(addr);
        let mut out = Vec::new();
        for _ in 0..n {
            match self.spawn(&["worker", host, port, function].map(String::from), "worker") {
                Ok(r) => out.push(r),
                Err(e) => return Err(fail_all(out, e)),
            }
        }
        Ok(out)
    }

    /// Stops `workers` with one STOP job each; returns what they reported,
    /// and the workers, still connected until released.
    fn stop(
        &self,
        addr: &str,
        function: &str,
        mut workers: Vec<Running>,
    ) -> Result<(WorkerReports, Vec<Running>), String> {
        let stops: Vec<Job> =
            (0..workers.len()).map(|_| Job::new(function, "STOP").background(true)).collect();
        let sent = Client::builder().servers([addr]).build().map_err(|e| e.to_string()).and_then(
            |client| {
                client
                    .batch(&stops)
                    .run()
                    .into_iter()
                    .try_for_each(|r| r.map(drop).map_err(|e| format!("STOP job: {e}")))
            },
        );
        if let Err(e) = sent {
            return Err(fail_all(workers, e));
        }
        let got = match reports(&mut workers) {
            Ok(v) => v,
            Err(e) => return Err(fail_all(workers, e)),
        };
        let (mut count, mut first, mut last, mut cpu) = (0u64, f64::MAX, 0f64, 0.0);
        for v in got {
            let c = num(&v, "count") as u64;
            count += c;
            if c > 0 {
                first = first.min(num(&v, "first"));
                last = last.max(num(&v, "last"));
            }
            cpu += num(&v, "cpu_s");
        }
        Ok((WorkerReports { count, first, last, cpu }, workers))
    }

    /// Background submissions; leaves `load.jobs` jobs queued.
    pub(super) fn bg(
        &self,
        addr: &str,
        function: &str,
        load: &Load,
        meter: &Meter,
    ) -> Result<Sample, String> {
        let before = meter.snap();
        let (wall, lat, cpu, clients) = self.clients("bg", addr, function, load)?;
        let after = meter.snap();
        release_all(clients)?;
        let (total, _, _) = status(addr, function)?;
        if total != load.jobs as u64 {
            return Err(format!("{total} jobs queued after {} background submissions", load.jobs));
        }
        Ok(Sample::new(load.jobs, wall, lat, before, after).with_generator_cpu(cpu))
    }

    /// PHP workers drain the queue.
    pub(super) fn drain(
        &self,
        addr: &str,
        function: &str,
        jobs: usize,
        workers: usize,
        meter: &Meter,
    ) -> Result<Sample, String> {
        let before = meter.snap();
        // The STOP jobs go behind the queued ones, so each worker takes its
        // STOP only once every real job was handed out.
        let ws = self.workers(addr, function, workers)?;
        let (WorkerReports { count, first, last, cpu }, ws) = self.stop(addr, function, ws)?;
        let after = meter.snap();
        release_all(ws)?;
        if count != jobs as u64 {
            return Err(format!("php workers ran {count} of {jobs} jobs"));
        }
        wait_for(Duration::from_secs(30), "the queue to empty", || {
            Ok(status(addr, function)?.0 == 0)
        })?;
        let wall = (last - first).max(0.0);
        Ok(Sample::new(jobs, wall, Vec::new(), before, after).with_generator_cpu(cpu))
    }

    /// Foreground echo jobs with `workers` PHP worker processes.
    pub(super) fn fg(
        &self,
        addr: &str,
        function: &str,
        load: &Load,
        workers: usize,
        meter: &Meter,
    ) -> Result<Sample, String> {
        self.foreground("fg", addr, function, load, workers, meter)
    }

    fn foreground(
        &self,
        mode: &str,
        addr: &str,
        function: &str,
        load: &Load,
        workers: usize,
        meter: &Meter,
    ) -> Result<Sample, String> {
        let ws = self.workers(addr, function, workers)?;
        let ready = wait_for(Duration::from_secs(10), "php workers to register", || {
            Ok(status(addr, function)?.2 >= workers as u64)
        });
        let before = meter.snap();
        let run = ready.and_then(|()| self.clients(mode, addr, function, load));
        let after = meter.snap();
        let run = run
            .and_then(|(wall, lat, cpu, clients)| release_all(clients).map(|()| (wall, lat, cpu)));
        let stopped = self.stop(addr, function, ws).and_then(|(r, ws)| release_all(ws).map(|()| r));
        let (wall, lat, cpu) = run?;
        let wcpu = stopped?.cpu;
        Ok(Sample::new(load.jobs, wall, lat, before, after).with_generator_cpu(cpu + wcpu))
    }

    /// One PHP client (`doNormal` in a loop), one PHP worker.
    pub(super) fn seq(
        &self,
        addr: &str,
        function: &str,
        jobs: usize,
        bytes: usize,
        meter: &Meter,
    ) -> Result<Sample, String> {
        let load = Load { jobs, clients: 1, payload: bytes, in_flight: 1, busy_poll: None };
        self.foreground("seq", addr, function, &load, 1, meter).map(|mut s| {
            s.wall_s = s.lat_us.iter().sum::<f64>() / 1e6;
            s
        })
    }
}
