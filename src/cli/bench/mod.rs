//! `gearframe bench`: a load generator built on the library.
//!
//! Scenarios (each run checks every result, and fails loudly on a wrong or
//! missing one):
//!
//! - `bg`: pipelined background submissions until every JOB_CREATED;
//! - `drain`: worker slots empty the queue `bg` left (each job must run
//!   exactly once);
//! - `fg`: pipelined foreground echo jobs with worker slots;
//! - `seq`: one client, one worker slot, one job at a time (latency).
//!
//! Servers: gearframe's own (`gearframe server` as a child process), or
//! `--server`, and with `--against-gearmand` also gearmand, all loaded the
//! same way, rounds alternating between them. `--peer php` adds the
//! libgearman peer (PHP's gearman extension) as a second load generator,
//! run on both servers.

mod ours;
mod php;
mod target;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use serde::Serialize;

use super::Failure;
use target::{Meter, Snap, Target};

/// Which scenarios run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Pipelined foreground echo jobs.
    Fg,
    /// Pipelined background submissions.
    Bg,
    /// Workers draining a queue of background jobs.
    Drain,
    /// One job at a time (the latency scenario).
    Seq,
    /// All of them.
    All,
}

/// A second load generator, run against gearmand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PeerKind {
    /// libgearman through PHP (`php-cli php-gearman`).
    Php,
}

/// Options of `gearframe bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Scenarios to run.
    #[arg(long, value_enum, default_value = "all")]
    mode: Mode,
    /// Jobs per run of the bg, drain and fg scenarios.
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    jobs: usize,
    /// Jobs per run of the seq scenario [default: the smaller of --jobs and 2000].
    #[arg(long, value_name = "N")]
    seq_jobs: Option<usize>,
    /// Client connections (threads, or PHP processes) sharing the jobs.
    #[arg(long, value_name = "C", default_value_t = 1)]
    clients: usize,
    /// Worker slots (threads, or PHP processes); a list runs drain and fg once per count.
    #[arg(long, value_name = "W[,W...]", value_delimiter = ',', default_value = "1,6")]
    workers: Vec<usize>,
    /// Payload bytes per job (the job number, padded with dots).
    #[arg(long, value_name = "BYTES", default_value_t = 16)]
    payload: usize,
    /// Jobs in flight at once, over all clients.
    #[arg(long, value_name = "K", default_value_t = 5000)]
    in_flight: usize,
    /// A running server to load instead of starting gearframe's own.
    #[arg(long, value_name = "HOST:PORT")]
    server: Option<String>,
    /// Also start gearmand on an ephemeral loopback port and run the same load on it.
    #[arg(long)]
    against_gearmand: bool,
    /// Also run a peer load generator on both servers (implies --against-gearmand).
    #[arg(long, value_enum)]
    peer: Option<PeerKind>,
    /// Rounds; each runs every scenario on every server, alternating the order.
    #[arg(long, value_name = "N", default_value_t = 3)]
    rounds: usize,
    /// The gearmand program [default: found in PATH or /usr/sbin].
    #[arg(long, value_name = "PATH")]
    gearmand: Option<PathBuf>,
    /// Polling window of gearframe's server, client and worker before a read
    /// blocks (e.g. 0 to turn polling off) [default: their defaults].
    #[arg(long, value_name = "DURATION", value_parser = gearframe::config::parse_duration)]
    busy_poll: Option<std::time::Duration>,
    /// Print the results as one JSON document.
    #[arg(long)]
    json: bool,
}

/// The shape of one run's load.
#[derive(Debug, Clone, Copy)]
pub(super) struct Load {
    pub(super) jobs: usize,
    pub(super) clients: usize,
    pub(super) payload: usize,
    pub(super) in_flight: usize,
    /// gearframe's client and worker polling window (none: the default).
    pub(super) busy_poll: Option<std::time::Duration>,
}

/// The payload of job `i`: its number, padded with dots to `bytes`.
pub(super) fn payload(i: usize, bytes: usize) -> Vec<u8> {
    let mut p = i.to_string().into_bytes();
    if p.len() < bytes {
        p.resize(bytes, b'.');
    }
    p
}

/// The job number in a payload made by [`payload`].
pub(super) fn payload_index(p: &[u8]) -> Option<usize> {
    let end = p.iter().position(|b| !b.is_ascii_digit()).unwrap_or(p.len());
    std::str::from_utf8(&p[..end]).ok()?.parse().ok()
}

/// What one run measured.
#[derive(Debug, Clone)]
pub(super) struct Sample {
    jobs: usize,
    pub(super) wall_s: f64,
    pub(super) lat_us: Vec<f64>,
    server_cpu_s: Option<f64>,
    server_switches: Option<u64>,
    generator_cpu_s: Option<f64>,
}

impl Sample {
    pub(super) fn new(jobs: usize, wall_s: f64, lat_us: Vec<f64>, a: Snap, b: Snap) -> Sample {
        Sample {
            jobs,
            wall_s,
            lat_us,
            server_cpu_s: target::server_cpu_between(&a, &b),
            server_switches: a
                .server_switches
                .as_ref()
                .zip(b.server_switches.as_ref())
                .map(|(a, b)| target::growth(a, b)),
            generator_cpu_s: a.own_cpu.zip(b.own_cpu).map(|(a, b)| b - a),
        }
    }

    /// Replaces the generator CPU time (for generators in other processes).
    pub(super) fn with_generator_cpu(mut self, cpu: f64) -> Sample {
        self.generator_cpu_s = Some(cpu);
        self
    }

    fn stats(&self) -> Stats {
        let mut l = self.lat_us.clone();
        l.sort_by(f64::total_cmp);
        let q = |q: f64| (!l.is_empty()).then(|| l[((l.len() - 1) as f64 * q).round() as usize]);
        let per_job = |x: f64| x * 1e6 / self.jobs.max(1) as f64;
        Stats {
            jobs_per_s: if self.wall_s > 0.0 { self.jobs as f64 / self.wall_s } else { 0.0 },
            wall_s: self.wall_s,
            p50_us: q(0.5),
            p99_us: q(0.99),
            max_us: l.last().copied(),
            server_cpu_s: self.server_cpu_s,
            server_cpu_us_per_job: self.server_cpu_s.map(per_job),
            server_switches_per_job: self
                .server_switches
                .map(|s| s as f64 / self.jobs.max(1) as f64),
            generator_cpu_us_per_job: self.generator_cpu_s.map(per_job),
        }
    }
}

/// The numbers of one run.
#[derive(Debug, Clone, Serialize)]
struct Stats {
    jobs_per_s: f64,
    wall_s: f64,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    max_us: Option<f64>,
    server_cpu_s: Option<f64>,
    server_cpu_us_per_job: Option<f64>,
    /// Context switches of the server's threads per job.
    server_switches_per_job: Option<f64>,
    /// CPU time of the load generator (clients and workers) per job.
    generator_cpu_us_per_job: Option<f64>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// Every run of one scenario on one server with one generator.
#[derive(Debug, Clone, Serialize)]
struct Row {
    scenario: &'static str,
    workers: Option<usize>,
    jobs: usize,
    server: &'static str,
    generator: &'static str,
    median: Stats,
    jobs_per_s_min: f64,
    jobs_per_s_max: f64,
    runs: Vec<Stats>,
}

impl Row {
    fn summarise(&mut self) {
        let f = |g: fn(&Stats) -> Option<f64>| median(self.runs.iter().filter_map(g).collect());
        let rate: Vec<f64> = self.runs.iter().map(|s| s.jobs_per_s).collect();
        self.jobs_per_s_min = rate.iter().copied().fold(f64::INFINITY, f64::min);
        self.jobs_per_s_max = rate.iter().copied().fold(0.0, f64::max);
        self.median = Stats {
            jobs_per_s: median(rate).unwrap_or(0.0),
            wall_s: f(|s| Some(s.wall_s)).unwrap_or(0.0),
            p50_us: f(|s| s.p50_us),
            p99_us: f(|s| s.p99_us),
            max_us: f(|s| s.max_us),
            server_cpu_s: f(|s| s.server_cpu_s),
            server_cpu_us_per_job: f(|s| s.server_cpu_us_per_job),
            server_switches_per_job: f(|s| s.server_switches_per_job),
            generator_cpu_us_per_job: f(|s| s.generator_cpu_us_per_job),
        };
    }
}

/// A comparison with its target.
#[derive(Debug, Clone, Serialize)]
struct Ratio {
    /// `server`, `client` or `latency`.
    kind: &'static str,
    scenario: &'static str,
    workers: Option<usize>,
    what: String,
    value: f64,
    /// The value must be at least this (`server`, `client`) or at most
    /// this (`latency`).
    target: f64,
    met: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Generator {
    Gearframe,
    Php,
}

impl Generator {
    fn name(self) -> &'static str {
        match self {
            Generator::Gearframe => "gearframe",
            Generator::Php => "php",
        }
    }
}

/// One step of a round.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Background submissions, then a drain of the queue they left.
    BgDrain {
        workers: usize,
        record_bg: bool,
        record_drain: bool,
    },
    Fg {
        workers: usize,
    },
    Seq,
}

fn plan(mode: Mode, workers: &[usize]) -> Vec<Step> {
    let drains = |record_bg_first: bool| {
        workers.iter().enumerate().map(move |(i, &w)| Step::BgDrain {
            workers: w,
            record_bg: record_bg_first && i == 0,
            record_drain: true,
        })
    };
    let fgs = workers.iter().map(|&w| Step::Fg { workers: w });
    match mode {
        Mode::Bg => {
            vec![Step::BgDrain { workers: workers[0], record_bg: true, record_drain: false }]
        }
        Mode::Drain => drains(false).collect(),
        Mode::Fg => fgs.collect(),
        Mode::Seq => vec![Step::Seq],
        Mode::All => drains(true).chain(fgs).chain([Step::Seq]).collect(),
    }
}

/// The machine, for the report.
fn machine() -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':'])))
        .unwrap_or("unknown")
        .to_string();
    serde_json::json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu": cpu,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "loadavg": read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    })
}

/// A sample to record: scenario, worker slots, sample.
type Recorded = (&'static str, Option<usize>, Sample);

struct Ctx<'a> {
    args: &'a BenchArgs,
    php: Option<&'a php::Php>,
    seq_jobs: usize,
    counter: usize,
}

impl Ctx<'_> {
    fn function(&mut self, scenario: &str) -> String {
        self.counter += 1;
        format!("bench-{}-{}-{scenario}", std::process::id(), self.counter)
    }

    /// Runs one step; returns the samples to record.
    fn step(
        &mut self,
        generator: Generator,
        target: &Target,
        step: Step,
    ) -> Result<Vec<Recorded>, String> {
        let a = self.args;
        let load = Load {
            jobs: a.jobs,
            clients: a.clients,
            payload: a.payload,
            in_flight: a.in_flight,
            busy_poll: a.busy_poll,
        };
        let addr = target.addr.as_str();
        let meter = Meter { pid: target.pid };
        let php_peer = self.php;
        let php = || php_peer.ok_or_else(|| "no php peer".to_string());
        let mut out = Vec::new();
        match step {
            Step::BgDrain { workers, record_bg, record_drain } => {
                let f = self.function("bg");
                let bg = match generator {
                    Generator::Gearframe => ours::bg(addr, &f, &load, &meter),
                    Generator::Php => php()?.bg(addr, &f, &load, &meter),
                }
                .map_err(|e| format!("bg: {e}"))?;
                let drain = match generator {
                    Generator::Gearframe => ours::drain(addr, &f, &load, workers, &meter),
                    Generator::Php => php()?.drain(addr, &f, a.jobs, workers, &meter),
                }
                .map_err(|e| format!("drain ({workers} workers): {e}"))?;
                if record_bg {
                    out.push(("bg", None, bg));
                }
                if record_drain {
                    out.push(("drain", Some(workers), drain));
                }
            }
            Step::Fg { workers } => {
                let f = self.function("fg");
                let s = match generator {
                    Generator::Gearframe => ours::fg(addr, &f, &load, workers, &meter),
                    Generator::Php => php()?.fg(addr, &f, &load, workers, &meter),
                }
                .map_err(|e| format!("fg ({workers} workers): {e}"))?;
                out.push(("fg", Some(workers), s));
            }
            Step::Seq => {
                let f = self.function("seq");
                let s = match generator {
                    Generator::Gearframe => {
                        let seq = Load { jobs: self.seq_jobs, ..load };
                        ours::seq(addr, &f, &seq, &meter)
                    }
                    Generator::Php => php()?.seq(addr, &f, self.seq_jobs, a.payload, &meter),
                }
                .map_err(|e| format!("seq: {e}"))?;
                out.push(("seq", Some(1), s));
            }
        }
        Ok(out)
    }
}

fn ratios(rows: &[Row]) -> Vec<Ratio> {
    let find = |r: &Row, server: &str, generator: &str| {
        rows.iter()
            .find(|x| {
                x.scenario == r.scenario
                    && x.workers == r.workers
                    && x.server == server
                    && x.generator == generator
            })
            .cloned()
    };
    // `r`'s jobs/s over `other`'s, which must be at least `target`.
    let faster = |kind, r: &Row, other: &Row, what: String, target: f64| {
        let value = r.median.jobs_per_s / other.median.jobs_per_s.max(1e-9);
        Ratio {
            kind,
            scenario: r.scenario,
            workers: r.workers,
            what,
            value,
            target,
            met: value >= target,
        }
    };
    let mut out = Vec::new();
    for r in rows.iter().filter(|r| r.generator == "gearframe" && r.server != "gearmand") {
        if let Some(g) = find(r, "gearmand", "gearframe") {
            let what = format!("jobs/s, {} server / gearmand, gearframe load", r.server);
            out.push(faster("server", r, &g, what, 1.5));
        }
        if r.scenario == "seq" {
            if let (Some(p), Some(ours)) = (find(r, "gearmand", "php"), r.median.p50_us) {
                if let Some(pp) = p.median.p50_us {
                    let value = ours / pp.max(1e-9);
                    out.push(Ratio {
                        kind: "latency",
                        scenario: "seq",
                        workers: Some(1),
                        what: format!(
                            "median round trip, all-gearframe ({}) / gearmand with php",
                            r.server
                        ),
                        value,
                        target: 0.6,
                        met: value <= 0.6,
                    });
                }
            }
        }
    }
    for r in rows.iter().filter(|r| r.generator == "gearframe") {
        if let Some(p) = find(r, r.server, "php") {
            let what =
                format!("jobs/s on {}, gearframe client+worker / php (libgearman)", r.server);
            out.push(faster("client", r, &p, what, 2.0));
        }
    }
    out
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

fn print_table(rows: &[Row], ratios: &[Ratio], machine: &serde_json::Value, a: &BenchArgs) {
    println!(
        "machine: {} x {}, Linux {}, load {}",
        machine["nproc"],
        machine["cpu"].as_str().unwrap_or(""),
        machine["kernel"].as_str().unwrap_or(""),
        machine["loadavg"].as_str().unwrap_or("")
    );
    println!(
        "load: {} jobs, {} client(s), {} in flight, {} B payload, {} round(s)\n",
        a.jobs, a.clients, a.in_flight, a.payload, a.rounds
    );
    println!(
        "{:<8} {:>2} {:<10} {:<10} {:>26} {:>8} {:>8} {:>8} {:>9} {:>7} {:>9}",
        "scenario",
        "W",
        "server",
        "generator",
        "jobs/s median (min-max)",
        "p50 µs",
        "p99 µs",
        "max µs",
        "srv µs/job",
        "srv cs/job",
        "generator µs/job"
    );
    for r in rows {
        let m = &r.median;
        println!(
            "{:<8} {:>2} {:<10} {:<10} {:>26} {:>8} {:>8} {:>8} {:>9} {:>7} {:>9}",
            r.scenario,
            r.workers.map_or("-".into(), |w| w.to_string()),
            r.server,
            r.generator,
            format!("{:.0} ({:.0}-{:.0})", m.jobs_per_s, r.jobs_per_s_min, r.jobs_per_s_max),
            opt(m.p50_us, 0),
            opt(m.p99_us, 0),
            opt(m.max_us, 0),
            opt(m.server_cpu_us_per_job, 1),
            opt(m.server_switches_per_job, 2),
            opt(m.generator_cpu_us_per_job, 1),
        );
    }
    if !ratios.is_empty() {
        println!();
        for r in ratios {
            let w = r.workers.map_or(String::new(), |w| format!(" W={w}"));
            let cmp = if r.kind == "latency" { "<=" } else { ">=" };
            println!(
                "{:<7} {:<5}{:<5} {:>6.2} (target {cmp} {}) {:<7}  {}",
                r.kind,
                r.scenario,
                w,
                r.value,
                r.target,
                if r.met { "met" } else { "NOT MET" },
                r.what
            );
        }
    }
}

pub(crate) fn run(args: BenchArgs) -> Result<ExitCode, Failure> {
    if args.jobs == 0 || args.rounds == 0 || args.clients == 0 || args.in_flight == 0 {
        return Err(Failure(
            "--jobs, --rounds, --clients and --in-flight must be at least 1".into(),
        ));
    }
    if args.workers.is_empty() || args.workers.contains(&0) {
        return Err(Failure("--workers must be one or more counts of at least 1".into()));
    }
    let seq_jobs = args.seq_jobs.unwrap_or(args.jobs.min(2000)).max(1);
    let php = match args.peer {
        Some(PeerKind::Php) => Some(php::Php::new()?),
        None => None,
    };
    let mut targets = vec![match &args.server {
        Some(s) => Target::external(s)?,
        None => Target::gearframe(args.busy_poll)?,
    }];
    if args.against_gearmand || php.is_some() {
        targets.push(Target::gearmand(args.gearmand.as_deref())?);
    }
    let mut combos: Vec<(usize, Generator)> =
        (0..targets.len()).map(|t| (t, Generator::Gearframe)).collect();
    if php.is_some() {
        // The peer's load on both servers: on gearmand it compares the
        // client libraries where gearmand's own cost is shared by both; on
        // gearframe's server, where the server costs least, the libraries'
        // own costs show.
        combos.push((targets.len() - 1, Generator::Php));
        combos.push((0, Generator::Php));
    }
    let steps = plan(args.mode, &args.workers);
    let machine = machine();
    let mut ctx = Ctx { args: &args, php: php.as_ref(), seq_jobs, counter: 0 };
    let mut rows: Vec<Row> = Vec::new();
    for round in 0..args.rounds {
        for k in 0..combos.len() {
            let (t, generator) = combos[(k + round) % combos.len()];
            let target = &targets[t];
            for &step in &steps {
                if !args.json {
                    eprintln!(
                        "round {}/{}: {} server, {} load: {step:?}",
                        round + 1,
                        args.rounds,
                        target.name,
                        generator.name()
                    );
                }
                let samples = ctx.step(generator, target, step).map_err(|e| {
                    Failure(format!("{} server, {} load: {e}", target.name, generator.name()))
                })?;
                for (scenario, workers, sample) in samples {
                    let jobs = if scenario == "seq" { seq_jobs } else { args.jobs };
                    let stats = sample.stats();
                    match rows.iter_mut().find(|r| {
                        r.scenario == scenario
                            && r.workers == workers
                            && r.server == target.name
                            && r.generator == generator.name()
                    }) {
                        Some(r) => r.runs.push(stats),
                        None => rows.push(Row {
                            scenario,
                            workers,
                            jobs,
                            server: target.name,
                            generator: generator.name(),
                            median: stats.clone(),
                            jobs_per_s_min: 0.0,
                            jobs_per_s_max: 0.0,
                            runs: vec![stats],
                        }),
                    }
                }
            }
        }
    }
    for r in &mut rows {
        r.summarise();
    }
    let order = |r: &Row| {
        let s = ["bg", "drain", "fg", "seq"].iter().position(|x| *x == r.scenario);
        (s, r.workers, r.server == "gearmand", r.generator == "php")
    };
    rows.sort_by_key(order);
    let ratios = ratios(&rows);
    if args.json {
        let doc = serde_json::json!({
            "machine": machine,
            "settings": {
                "jobs": args.jobs,
                "seq_jobs": seq_jobs,
                "clients": args.clients,
                "workers": args.workers,
                "payload": args.payload,
                "in_flight": args.in_flight,
                "rounds": args.rounds,
                "busy_poll_us": args.busy_poll.map(|d| d.as_micros()),
            },
            "rows": rows,
            "ratios": ratios,
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        print_table(&rows, &ratios, &machine, &args);
    }
    Ok(ExitCode::SUCCESS)
}
