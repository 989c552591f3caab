//! `gearframe demo`: the whole framework in one process on an ephemeral
//! loopback port. An embedded server, a 10-slot worker pool running the
//! configured shell functions, the example plan sent in background and in
//! foreground mode, a status table, and foreground against background
//! throughput; then everything stops.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use gearframe::client::{Client, Job, JobOutcome};
use gearframe::config::{Config, FunctionConfig, SendMode};
use gearframe::conn::Connection;
use gearframe::server::{Server, ServerConfig};

use super::Failure;

/// Options of `gearframe demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Plan to send [default: client.send.plan of config.yaml, plugin/eg.yaml].
    #[arg(long, value_name = "FILE")]
    plan: Option<std::path::PathBuf>,
    /// Jobs per throughput run.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    jobs: usize,
}

/// The functions the example plan needs when the config defines none.
fn default_functions() -> std::collections::BTreeMap<String, FunctionConfig> {
    let ls = || FunctionConfig::allowed_commands(vec!["ls".into(), "echo".into()]);
    [("test1".into(), ls()), ("test2".into(), ls())].into()
}

/// The example plan when no plan file is at hand.
fn builtin_plan(mode: SendMode) -> Vec<Job> {
    let payload = br#"{"argvs":"./","command":"ls"}"#.to_vec();
    ["test1", "test2"]
        .iter()
        .map(|f| {
            Job::new(*f, payload.clone())
                .unique(gearframe::client::derive_unique(f, &payload))
                .background(mode == SendMode::Async)
        })
        .collect()
}

fn plan(path: &Path, mode: SendMode) -> Result<Vec<Job>, Failure> {
    if path.exists() { super::send::load_plan(path, mode, false) } else { Ok(builtin_plan(mode)) }
}

/// `status` of a server as rows of function, total, running, workers.
fn status(addr: &str) -> Result<Vec<[String; 4]>, Failure> {
    let deadline = Some(Instant::now() + Duration::from_secs(5));
    let mut c = Connection::connect(addr, Duration::from_secs(5))?;
    c.queue_bytes(b"status\n");
    c.flush()?;
    let mut rows = Vec::new();
    loop {
        let line = c.recv_line(deadline)?;
        if line == "." {
            return Ok(rows);
        }
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() == 4 {
            rows.push([f[0], f[1], f[2], f[3]].map(String::from));
        }
    }
}

fn print_status(rows: &[[String; 4]]) {
    let head = ["function", "total", "running", "workers"].map(String::from);
    let mut widths = [0usize; 4];
    for r in std::iter::once(&head).chain(rows) {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    for r in std::iter::once(&head).chain(rows) {
        println!(
            "  {:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        );
    }
}

/// Waits until the functions of `jobs` have nothing queued or running.
fn wait_drained(addr: &str, jobs: &[Job], limit: Duration) -> Result<(), Failure> {
    let deadline = Instant::now() + limit;
    loop {
        let busy =
            status(addr)?.iter().any(|r| jobs.iter().any(|j| j.function() == r[0]) && r[1] != "0");
        if !busy {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Failure(format!("background jobs still queued after {limit:?}")));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn show(outcome: &Result<JobOutcome, gearframe::client::Error>) -> (String, String) {
    match outcome {
        Ok(JobOutcome::Complete { data, .. }) => {
            ("complete".into(), String::from_utf8_lossy(data).into_owned())
        }
        Ok(JobOutcome::Accepted { handle }) => ("accepted".into(), handle.as_str().to_string()),
        Ok(other) => (
            other.name().into(),
            other.data().map(|d| String::from_utf8_lossy(d).into_owned()).unwrap_or_default(),
        ),
        Err(e) => ("error".into(), e.to_string()),
    }
}

fn print_outcomes(jobs: &[Job], outcomes: &[Result<JobOutcome, gearframe::client::Error>]) -> bool {
    let mut ok = true;
    for (job, outcome) in jobs.iter().zip(outcomes) {
        let (state, text) = show(outcome);
        ok &= matches!(outcome, Ok(o) if o.is_success());
        let mut lines = text.lines();
        println!("  {:<8} {:<9} {}", job.function(), state, lines.next().unwrap_or(""));
        for l in lines {
            println!("  {:<8} {:<9} {l}", "", "");
        }
    }
    ok
}

fn rate(n: usize, d: Duration) -> String {
    format!(
        "{:>9.0} jobs/s ({n} jobs in {:.3} s)",
        n as f64 / d.as_secs_f64().max(1e-9),
        d.as_secs_f64()
    )
}

pub(crate) fn run(args: DemoArgs, config: &Config) -> Result<ExitCode, Failure> {
    super::raise_fd_limit();
    let server =
        Server::bind(ServerConfig { listen: "127.0.0.1:0".into(), ..ServerConfig::default() })?;
    let addr = server.local_addr().to_string();
    let mut cfg = config.worker.clone();
    if cfg.functions.is_empty() {
        cfg.functions = default_functions();
    }
    cfg.functions.entry("echo".into()).or_insert_with(FunctionConfig::echo);
    cfg.servers = gearframe::config::ServerList::List(vec![addr.clone()]);
    cfg.threads = 10;
    cfg.name = Some("gearframe-demo".into());
    let worker = super::worker::start(&cfg)?;
    let client = Client::builder().servers([addr.as_str()]).build()?;
    println!(
        "gearframe demo: job server on {addr}; {} worker slots for {}",
        worker.live_slots(),
        cfg.functions.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
    );
    let plan_path = args.plan.clone().unwrap_or_else(|| config.send.plan.clone());
    let mut ok = true;

    let bg = plan(&plan_path, SendMode::Async)?;
    println!(
        "\n== background: {} ({} jobs), returns when the server has accepted them",
        plan_path.display(),
        bg.len()
    );
    let started = Instant::now();
    let outcomes = client.batch(&bg).run();
    ok &= print_outcomes(&bg, &outcomes);
    wait_drained(&addr, &bg, Duration::from_secs(60))?;
    println!(
        "  all {} background jobs ran within {:.3} s",
        bg.len(),
        started.elapsed().as_secs_f64()
    );

    let fg = plan(&plan_path, SendMode::Sync)?;
    println!(
        "\n== foreground: {} ({} jobs), waits for every result",
        plan_path.display(),
        fg.len()
    );
    let outcomes = client.batch(&fg).run();
    ok &= print_outcomes(&fg, &outcomes);

    println!("\n== status");
    print_status(&status(&addr)?);

    println!("\n== throughput: {} `echo` jobs of 64 bytes, 10 worker slots", args.jobs);
    let payload = vec![b'x'; 64];
    let fg_jobs: Vec<Job> = (0..args.jobs).map(|_| Job::new("echo", payload.clone())).collect();
    let started = Instant::now();
    let results = client.batch(&fg_jobs).run();
    let fg_time = started.elapsed();
    let fg_ok = results
        .iter()
        .all(|r| matches!(r, Ok(JobOutcome::Complete { data, .. }) if *data == payload));
    let bg_jobs: Vec<Job> =
        (0..args.jobs).map(|_| Job::new("echo", payload.clone()).background(true)).collect();
    let started = Instant::now();
    let results = client.batch(&bg_jobs).run();
    let accepted = started.elapsed();
    let bg_ok = results.iter().all(|r| matches!(r, Ok(JobOutcome::Accepted { .. })));
    wait_drained(&addr, &bg_jobs, Duration::from_secs(60))?;
    let drained = started.elapsed();
    println!("  foreground, every result back:   {}", rate(args.jobs, fg_time));
    println!("  background, accepted:            {}", rate(args.jobs, accepted));
    println!("  background, accepted and run:    {}", rate(args.jobs, drained));
    if !(fg_ok && bg_ok) {
        println!("  some throughput jobs did not come back as expected");
        ok = false;
    }

    worker.shutdown();
    worker.join();
    server.shutdown();
    server.join();
    if ok {
        println!("\ngearframe demo: done");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\ngearframe demo: some jobs failed");
        Ok(ExitCode::from(1))
    }
}
