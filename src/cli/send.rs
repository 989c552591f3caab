//! `gearframe send`: submit a job plan once or every cycle (the original
//! send_job_client).
//!
//! A plan is a YAML file, or an executable (any language) that prints the
//! same list as JSON on stdout:
//!
//! ```yaml
//! jobs:
//!   - function: test1
//!     data: {command: ls, argvs: ./}   # a structure is sent as JSON
//!     priority: low                    # high, normal or low (default low)
//!     unique: optional-id              # default: derived from function and data
//! ```
//!
//! The top level may also be the bare list. An executable plan given by a
//! relative path is run from the current directory (`--plan plan.sh` runs
//! `./plan.sh`), never looked up in `PATH`.
//!
//! In sync mode each result is printed as it arrives; Ctrl-C then ends at
//! once with `interrupted: D of N done, F failed, R not finished`.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use gearframe::client::{Client, ClientConfig};
use gearframe::client::{Job, JobOutcome, MAX_UNIQUE_LEN, derive_unique};
use gearframe::config::{Config, SendMode, SendSection};
use gearframe::proto::Priority;
use gearframe::worker::shell::{Ending, ExitKind, ProcessGroup};
use serde::Deserialize;
use subprocess::{PopenConfig, Redirection};

use super::Failure;
use super::flags::Flags;
use super::submit::ServerArgs;

/// Longest an executable plan may run.
const PLAN_RUN_LIMIT: Duration = Duration::from_secs(60);
/// How long one read of a plan's stdout may wait.
const PLAN_READ_TICK: Duration = Duration::from_millis(20);

/// Options of `gearframe send`; each setting overrides the `client.send:`
/// or `client:` key of the same name in config.yaml.
#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// The `client.send:` settings given as options.
    #[command(flatten)]
    send: Flags<SendSection>,
    /// Give each job a random unique id instead of one derived from its
    /// function and data (copies then never coalesce).
    #[arg(long)]
    random_unique: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// One job of a plan as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanJob {
    function: String,
    #[serde(default)]
    data: serde_yaml::Value,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    unique: Option<String>,
}

/// Reads a plan (running it when it is executable) into jobs.
pub(crate) fn load_plan(
    path: &Path,
    mode: SendMode,
    random_unique: bool,
) -> Result<Vec<Job>, Failure> {
    let fail = |m: String| Failure(format!("plan {}: {m}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let text = if is_executable(&meta) {
        run_plan(path).map_err(fail)?
    } else {
        std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?
    };
    let value: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| fail(e.to_string()))?;
    let items = match value {
        serde_yaml::Value::Sequence(items) => items,
        serde_yaml::Value::Mapping(mut m) if m.len() == 1 => match m.remove("jobs") {
            Some(serde_yaml::Value::Sequence(items)) => items,
            _ => return Err(fail("`jobs:` must be a list of jobs".into())),
        },
        _ => return Err(fail("expected a list of jobs, or a map with a `jobs:` list".into())),
    };
    let list = items
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            serde_yaml::from_value::<PlanJob>(v).map_err(|e| fail(format!("jobs[{i}]: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if list.is_empty() {
        return Err(fail("the plan has no jobs".into()));
    }
    list.into_iter()
        .enumerate()
        .map(|(i, pj)| {
            plan_job(pj, mode, random_unique).map_err(|m| fail(format!("jobs[{i}]: {m}")))
        })
        .collect()
}

fn plan_job(pj: PlanJob, mode: SendMode, random_unique: bool) -> Result<Job, String> {
    if pj.function.trim().is_empty() {
        return Err("the function is empty".into());
    }
    if pj.function.contains('\0') {
        return Err("the function contains a NUL byte".into());
    }
    let payload: Vec<u8> = match &pj.data {
        serde_yaml::Value::Null => Vec::new(),
        serde_yaml::Value::String(s) => s.clone().into_bytes(),
        serde_yaml::Value::Bool(b) => b.to_string().into_bytes(),
        serde_yaml::Value::Number(n) => n.to_string().into_bytes(),
        other => {
            serde_json::to_vec(other).map_err(|e| format!("data cannot be sent as JSON: {e}"))?
        }
    };
    let priority = match pj.priority.as_deref() {
        None => Priority::Low,
        Some(p) => p.parse()?,
    };
    let mut job = Job::new(pj.function.clone(), payload).priority(priority);
    match pj.unique {
        Some(u) if u.len() > MAX_UNIQUE_LEN || u.contains('\0') => {
            return Err(format!("unique must be at most {MAX_UNIQUE_LEN} bytes without NUL"));
        }
        Some(u) => job = job.unique(u),
        None if random_unique => {}
        None => {
            let u = derive_unique(&pj.function, job.payload());
            job = job.unique(u);
        }
    }
    Ok(job.background(mode == SendMode::Async))
}

#[cfg(unix)]
fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.is_file() && meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_meta: &std::fs::Metadata) -> bool {
    false
}

/// Runs an executable plan and returns its stdout, within [`PLAN_RUN_LIMIT`]
/// (then its process group is stopped). A relative path is run from the
/// current directory (`plan.sh` as `./plan.sh`), never looked up in `PATH`:
/// the plan is the file named.
fn run_plan(path: &Path) -> Result<String, String> {
    let program = if path.is_relative() { Path::new(".").join(path) } else { path.to_path_buf() };
    let null =
        std::fs::File::open("/dev/null").map_err(|e| format!("cannot open /dev/null: {e}"))?;
    let config = PopenConfig {
        stdin: Redirection::File(null),
        stdout: Redirection::Pipe,
        ..Default::default()
    };
    let mut group = ProcessGroup::start(&[program.into_os_string()], config)
        .map_err(|e| format!("cannot run it: {e}"))?;
    let mut comm = Some(group.popen().communicate_start(None).limit_time(PLAN_READ_TICK));
    let mut out = Vec::new();
    let stopped =
        group.wait(Some(PLAN_RUN_LIMIT), &|| false, &mut || read_stdout(&mut comm, &mut out));
    // What is left in the pipe once the plan has exited.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until && read_stdout(&mut comm, &mut out) {}
    drop(comm);
    let exit = group.finish();
    match stopped.unwrap_or(Ending::Exited(exit)) {
        Ending::Exited(ExitKind::Code(0)) => {}
        Ending::Exited(kind) => return Err(format!("it ended with {kind}")),
        Ending::TimedOut(_) | Ending::Cancelled => {
            return Err(format!("still running after {PLAN_RUN_LIMIT:?}: killed"));
        }
    }
    String::from_utf8(out).map_err(|e| format!("its output is not UTF-8 text: {e}"))
}

/// Reads the plan's stdout once (at most [`PLAN_READ_TICK`]); false once
/// it is closed.
fn read_stdout(comm: &mut Option<subprocess::Communicator>, out: &mut Vec<u8>) -> bool {
    let Some(c) = comm.as_mut() else { return false };
    let open = match c.read() {
        Ok((o, _)) => {
            let o = o.unwrap_or_default();
            out.extend_from_slice(&o);
            !o.is_empty()
        }
        Err(e) => {
            out.extend_from_slice(&e.capture.0.unwrap_or_default());
            e.error.kind() == std::io::ErrorKind::TimedOut
        }
    };
    if !open {
        *comm = None;
    }
    open
}

#[derive(Debug, Default)]
struct Totals {
    sent: usize,
    /// Completed (sync) or accepted (async).
    ok: usize,
    failed: usize,
    errors: usize,
}

/// Where the batch being sent stands, for the summary printed on Ctrl-C.
#[derive(Debug, Default)]
struct Progress {
    /// A batch of foreground jobs is waiting for its results.
    waiting: bool,
    total: usize,
    done: usize,
    failed: usize,
}

impl Progress {
    /// `interrupted: 3 of 5 done, 1 failed, 1 not finished`.
    fn interrupted(&self) -> String {
        format!(
            "interrupted: {} of {} done, {} failed, {} not finished",
            self.done,
            self.total,
            self.failed,
            self.total.saturating_sub(self.done + self.failed)
        )
    }
}

/// How one outcome counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    Ok,
    Failed,
    Error,
}

/// How one job's outcome counts, its status word and its text.
fn describe(o: &gearframe::client::Result<JobOutcome>) -> (Counted, &'static str, String) {
    match o {
        Ok(JobOutcome::Accepted { handle }) => (Counted::Ok, "accepted", handle.to_string()),
        Ok(JobOutcome::Complete { data, .. }) => {
            (Counted::Ok, "complete", String::from_utf8_lossy(data).into_owned())
        }
        Ok(other) => (Counted::Failed, other.name(), other.reason().unwrap_or_default()),
        Err(e) => (Counted::Error, "error", e.to_string()),
    }
}

/// The `client.send:` and `client:` sections with the options given over
/// them.
fn settings(args: &SendArgs, config: &Config) -> Result<(SendSection, ClientConfig), Failure> {
    let mut send = config.send.clone();
    args.send.apply(&mut send)?;
    Ok((send, args.server.client_config(config)?))
}

pub(crate) fn run(args: SendArgs, config: &Config) -> Result<ExitCode, Failure> {
    let (send, client_config) = settings(&args, config)?;
    let SendSection { plan: plan_path, mode, cycle, reload } = send;
    // Everything the user gave is checked before anything is sent.
    let mut jobs = load_plan(&plan_path, mode, args.random_unique)?;
    let client = Client::with_config(client_config)?;
    let mut loaded = Instant::now();

    // Ctrl-C while foreground jobs run (or a second one) ends at once with
    // the batch's summary: the finished results are printed already.
    // Otherwise the batch being accepted is finished first.
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Mutex::new(Progress::default()));
    let (flag, shown) = (stop.clone(), progress.clone());
    ctrlc::set_handler(move || {
        let again = flag.swap(true, Ordering::SeqCst);
        let p = shown.lock().unwrap_or_else(|e| e.into_inner());
        if again || p.waiting {
            eprintln!("gearframe: {}", p.interrupted());
            std::process::exit(130);
        }
        eprintln!("gearframe: finishing the current batch (Ctrl-C again to quit now)");
    })
    .map_err(|e| Failure(format!("cannot install the signal handler: {e}")))?;

    let tty = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut totals = Totals::default();
    loop {
        let cycle_start = Instant::now();
        if cycle > Duration::ZERO && loaded.elapsed() >= reload {
            match load_plan(&plan_path, mode, args.random_unique) {
                Ok(j) => jobs = j,
                Err(Failure(m)) => log::warn!("{m}; keeping the previous plan"),
            }
            loaded = Instant::now();
        }
        log::info!("sending {} job(s) in {:?} mode", jobs.len(), mode);
        let bar = tty.then(|| {
            let b = indicatif::ProgressBar::new(jobs.len() as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} jobs {per_sec} {elapsed}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        *progress.lock().unwrap_or_else(|e| e.into_inner()) =
            Progress { waiting: mode == SendMode::Sync, total: jobs.len(), done: 0, failed: 0 };
        client
            .batch(&jobs)
            .on_done(|i, o| {
                let (counted, status, text) = describe(o);
                // Counted and printed under the lock, so that a Ctrl-C
                // summary agrees with the lines printed before it.
                let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
                totals.sent += 1;
                match counted {
                    Counted::Ok => {
                        totals.ok += 1;
                        p.done += 1;
                    }
                    Counted::Failed | Counted::Error => {
                        totals.failed += 1;
                        totals.errors += usize::from(counted == Counted::Error);
                        p.failed += 1;
                    }
                }
                if mode == SendMode::Sync || counted == Counted::Error {
                    let line = format!("{}\t{status}\t{}", jobs[i].function(), text.escape_debug());
                    match &bar {
                        Some(b) => b.println(line),
                        None => {
                            // A closed stdout (`| head`) loses the lines only.
                            let mut out = std::io::stdout().lock();
                            let _ = writeln!(out, "{line}").and_then(|()| out.flush());
                        }
                    }
                }
                if let Some(b) = &bar {
                    b.inc(1);
                }
            })
            .run();
        progress.lock().unwrap_or_else(|e| e.into_inner()).waiting = false;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        if cycle.is_zero() || stop.load(Ordering::SeqCst) {
            break;
        }
        let next = cycle_start + cycle;
        while Instant::now() < next && !stop.load(Ordering::SeqCst) {
            std::thread::sleep((next - Instant::now()).min(Duration::from_millis(100)));
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
    }
    eprintln!(
        "sent {}, {} {}, failed {}, {:.2}s",
        totals.sent,
        if mode == SendMode::Async { "accepted" } else { "completed" },
        totals.ok,
        totals.failed,
        started.elapsed().as_secs_f64()
    );
    Ok(if totals.errors > 0 {
        ExitCode::from(2)
    } else if totals.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> Result<Vec<Job>, Failure> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.yaml");
        std::fs::write(&p, text).unwrap();
        load_plan(&p, SendMode::Async, false)
    }

    #[test]
    fn shipped_example_plan() {
        let jobs = load_plan(Path::new("plugin/eg.yaml"), SendMode::Sync, false).unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].function(), "test1");
        assert_eq!(jobs[1].function(), "test2");
        assert_eq!(jobs[0].payload(), br#"{"command":"ls","argvs":"./"}"#);
        assert_eq!(jobs[0].get_priority(), Priority::Low);
        assert!(!jobs[0].is_background());
        assert_eq!(jobs[0].unique_id(), Some(derive_unique("test1", jobs[0].payload()).as_str()));
    }

    #[test]
    fn plans_in_both_shapes() {
        let a = plan("- function: f\n  data: hi\n  priority: high\n  unique: u1\n").unwrap();
        assert_eq!(a[0].payload(), b"hi");
        assert_eq!(a[0].get_priority(), Priority::High);
        assert_eq!(a[0].unique_id(), Some("u1"));
        assert!(a[0].is_background());
        let b = plan(r#"{"jobs": [{"function": "f", "data": {"k": [1, 2]}}]}"#).unwrap();
        assert_eq!(b[0].payload(), br#"{"k":[1,2]}"#);
    }

    #[test]
    fn bad_plans_name_the_problem() {
        let msg = |t: &str| plan(t).unwrap_err().0;
        assert!(msg("- data: x\n").contains("function"), "{}", msg("- data: x\n"));
        assert!(msg("- function: f\n  priority: urgent\n").contains("urgent"));
        assert!(msg("- function: ''\n").contains("empty"));
        assert!(msg("jobs: []\n").contains("no jobs"));
        assert!(msg("- function: f\n  colour: red\n").contains("colour"));
        assert!(msg("just text").contains("list of jobs"));
        let e = load_plan(Path::new("/nonexistent/plan.yaml"), SendMode::Async, false).unwrap_err();
        assert!(e.0.contains("/nonexistent/plan.yaml"), "{}", e.0);
    }
}

#[cfg(test)]
mod flag_tests {
    use std::time::Duration;

    use clap::Parser;
    use gearframe::config::{Config, SendMode};

    use super::{SendArgs, settings};

    #[derive(Debug, Parser)]
    struct Line {
        #[command(flatten)]
        args: SendArgs,
    }

    const FILE: &str = "client:\n  job_timeout: 7s\n  send:\n    plan: file.yaml\n    mode: sync\n    cycle: 2s\n    reload: 5s\n";

    fn applied(args: &[&str]) -> (gearframe::config::SendSection, gearframe::client::ClientConfig) {
        let line = Line::try_parse_from(std::iter::once("send").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{e}"));
        settings(&line.args, &Config::read(FILE).unwrap()).unwrap_or_else(|e| panic!("{}", e.0))
    }

    #[test]
    fn flags_left_out_keep_the_file_values() {
        let file = Config::read(FILE).unwrap();
        let (send, client) = applied(&[]);
        assert_eq!(send, file.send);
        assert_eq!(client.job_timeout, Duration::from_secs(7));
    }

    #[test]
    fn each_flag_overrides_its_key() {
        let (send, client) = applied(&[
            "--plan",
            "cli.yaml",
            "-m",
            "async",
            "--cycle",
            "0",
            "--reload",
            "1m",
            "--timeout",
            "1s",
        ]);
        assert_eq!(send.plan, std::path::Path::new("cli.yaml"));
        assert_eq!(send.mode, SendMode::Async);
        assert_eq!(send.cycle, Duration::ZERO);
        assert_eq!(send.reload, Duration::from_secs(60));
        assert_eq!(client.job_timeout, Duration::from_secs(1));
    }
}
