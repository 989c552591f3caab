//! The libgearman peer: the same scenarios driven by PHP's gearman
//! extension (benches/peers/php_bench.php, built into this program).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gearframe::client::{Client, Job};

use super::target::{Meter, status, wait_for};
use super::{Load, Sample};

const SCRIPT: &str = include_str!("../../../benches/peers/php_bench.php");
/// How long a PHP process may run before the scenario is declared failed.
const LIMIT: Duration = Duration::from_secs(300);

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

/// A finished PHP process's JSON line. Its output is read while it runs,
/// so a large report cannot fill the pipe and stall it.
fn finish(mut child: Child, what: &str) -> Result<serde_json::Value, String> {
    fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("php {what} still running after {LIMIT:?}"));
            }
            Err(e) => break Err(format!("php {what}: {e}")),
        }
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    let status = status?;
    if !status.success() {
        return Err(format!("php {what} failed ({status}): {}", err.trim()));
    }
    serde_json::from_str(out.trim())
        .map_err(|e| format!("php {what}: bad output ({e}): {:.200}", out.trim()))
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

    fn spawn(&self, args: &[String]) -> Result<Child, String> {
        Command::new("php")
            .arg(self.script())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start php: {e}"))
    }

    fn clients(
        &self,
        mode: &str,
        addr: &str,
        function: &str,
        load: &Load,
    ) -> Result<(f64, Vec<f64>, f64), String> {
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
            children.push(self.spawn(&args)?);
        }
        let (mut start, mut end, mut lat, mut cpu) = (f64::MAX, 0f64, Vec::new(), 0.0);
        let mut first_err = None;
        for child in children {
            match finish(child, &format!("client {mode}")) {
                Ok(v) => {
                    start = start.min(num(&v, "start"));
                    end = end.max(num(&v, "end"));
                    cpu += num(&v, "cpu_s");
                    if let Some(l) = v.get("lat_us").and_then(|l| l.as_array()) {
                        lat.extend(l.iter().filter_map(serde_json::Value::as_f64));
                    }
                }
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(((end - start).max(0.0), lat, cpu))
    }

    fn workers(&self, addr: &str, function: &str, n: usize) -> Result<Vec<Child>, String> {
        let (host, port) = host_port(addr);
        (0..n).map(|_| self.spawn(&["worker", host, port, function].map(String::from))).collect()
    }

    /// Stops `workers` with one STOP job each; returns (jobs, first, last,
    /// CPU seconds) over all of them.
    fn stop(
        &self,
        addr: &str,
        function: &str,
        workers: Vec<Child>,
    ) -> Result<(u64, f64, f64, f64), String> {
        let stops: Vec<Job> =
            (0..workers.len()).map(|_| Job::new(function, "STOP").background(true)).collect();
        let client = Client::builder().servers([addr]).build().map_err(|e| e.to_string())?;
        for r in client.batch(&stops).run() {
            r.map_err(|e| format!("STOP job: {e}"))?;
        }
        let (mut count, mut first, mut last, mut cpu) = (0u64, f64::MAX, 0f64, 0.0);
        let mut first_err = None;
        for w in workers {
            match finish(w, "worker") {
                Ok(v) => {
                    let c = num(&v, "count") as u64;
                    count += c;
                    if c > 0 {
                        first = first.min(num(&v, "first"));
                        last = last.max(num(&v, "last"));
                    }
                    cpu += num(&v, "cpu_s");
                }
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok((count, first, last, cpu)),
        }
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
        let (wall, lat, cpu) = self.clients("bg", addr, function, load)?;
        let after = meter.snap();
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
        let (count, first, last, cpu) = self.stop(addr, function, ws)?;
        let after = meter.snap();
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
        let stopped = self.stop(addr, function, ws);
        let (wall, lat, cpu) = run?;
        let (_, _, _, wcpu) = stopped?;
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
        let load = Load { jobs, clients: 1, payload: bytes, in_flight: 1 };
        self.foreground("seq", addr, function, &load, 1, meter).map(|mut s| {
            s.wall_s = s.lat_us.iter().sum::<f64>() / 1e6;
            s
        })
    }
}
