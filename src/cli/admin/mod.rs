//! `gearframe admin`: status, workers, queues and control of one or more
//! servers, as aligned tables (with totals across servers) or JSON.
//!
//! Exit codes: 0 when every server that could be reached did what was
//! asked; 1 when a server refused (an `ERR` reply, a job handle no server
//! knows, fewer workers stopped than found, a persistent queue that is
//! failing for `store`); 2 for bad input, or when no
//! server could be reached at all. A server that is down is a row of its
//! own in the output, not an error, while another one answers.

mod table;
mod watch;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Args, Subcommand};
use gearframe::admin::{
    AdminClient, AdminError, ClearOptions, Cluster, FunctionStatus, MaxQueue, PerServer,
    PriorityStatus, StopTarget, StopWorkersOptions, StoreStatus, sum_priority, sum_status,
};
use gearframe::config::{Config, parse_duration};
use serde_json::{Value, json};

use super::Failure;
use table::Table;

/// Options of `gearframe admin`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  gearframe admin status                      queues of 127.0.0.1:4730
  gearframe admin -s a:4730,b:4730 workers    workers of two servers
  gearframe admin status --json               for scripts
  gearframe admin watch                       live view, Ctrl-C to quit
  gearframe admin clear resize                empty the queue of `resize`")]
pub(crate) struct AdminArgs {
    /// Job server HOST[:PORT] (repeatable, or comma-separated) [default:
    /// GEARMAN_SERVERS, else admin.servers in config.yaml, else 127.0.0.1:4730].
    #[arg(short = 's', long = "server", value_name = "HOST:PORT", global = true)]
    servers: Vec<String>,
    /// Machine-readable JSON on stdout instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Limit of each connect and reply wait, e.g. 2s [default: admin.timeout, 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, global = true)]
    timeout: Option<Duration>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Queued, running and workers per function, with totals across servers.
    Status {
        /// Only this function.
        function: Option<String>,
    },
    /// Worker connections: IP, name (client id) and functions.
    Workers {
        /// Only workers registered for this function.
        function: Option<String>,
        /// Also connections without functions (clients, admin sessions).
        #[arg(long)]
        all: bool,
    },
    /// Queued jobs per priority (gearmand and gearframe).
    Priority,
    /// Jobs the servers hold (handle, retries, cancelled).
    Jobs {
        /// List the unique ids instead.
        #[arg(long)]
        unique: bool,
    },
    /// Round-trip time of an ECHO to each server.
    Ping,
    /// Server versions.
    Version,
    /// Server process ids.
    Pid,
    /// The persistent queue: file, durability, whether writes succeed, rows
    /// (gearframe's server only).
    Store,
    /// Limits the queue of FUNCTION: N for every priority, or HIGH NORMAL LOW (0 = unlimited).
    Maxqueue {
        /// The function.
        function: String,
        /// N, or HIGH NORMAL LOW.
        #[arg(value_name = "N", num_args = 1..=3, required = true)]
        limits: Vec<u32>,
    },
    /// Cancels a job by handle (the server that issued it answers).
    Cancel {
        /// The job handle, e.g. H:host:42.
        handle: String,
    },
    /// Creates an empty function.
    Create {
        /// The function.
        function: String,
    },
    /// Drops a function that has no workers and no jobs.
    Drop {
        /// The function.
        function: String,
    },
    /// Empties the queue of FUNCTION and stops when it is empty.
    Clear {
        /// The function.
        function: String,
        /// Give up when the queue did not move for this long.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
        stall: Duration,
    },
    /// Stops the workers of FUNCTION (or all) with priority shutdown jobs.
    StopWorkers {
        /// The function, or `all`.
        #[arg(value_name = "FUNCTION|all")]
        target: String,
        /// How long to wait for the workers to disconnect.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
        wait: Duration,
    },
    /// Stops the server (gearframe's server; gearmand removed this command).
    StopServer {
        /// Stop accepting connections, exit once no job is left.
        #[arg(long)]
        graceful: bool,
    },
    /// A live table like top, refreshed until Ctrl-C.
    Watch {
        /// Refresh interval, e.g. 500ms [default: admin.interval, 1s].
        #[arg(short = 'n', long, value_name = "DURATION", value_parser = parse_duration)]
        interval: Option<Duration>,
        /// Exit after N refreshes.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
}

/// The resolved settings.
struct Ctx {
    cluster: Cluster,
    json: bool,
}

/// Servers by the one rule (see [`super::servers`]).
fn servers(args: &AdminArgs, config: &Config) -> Result<Vec<String>, Failure> {
    super::servers(&args.servers, &config.admin.servers, "admin.servers")
}

fn check_name(what: &str, s: &str) -> Result<(), Failure> {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Failure(format!(
            "invalid {what} {s:?}: it must be non-empty, without spaces, line breaks or other control characters"
        )));
    }
    Ok(())
}

pub(crate) fn run(args: AdminArgs, config: &Config) -> Result<ExitCode, Failure> {
    let list = servers(&args, config)?;
    let timeout = args.timeout.unwrap_or(config.admin.timeout.0);
    if timeout.is_zero() {
        return Err(Failure("--timeout must be more than 0".into()));
    }
    let ctx = Ctx { cluster: Cluster::new(&list, timeout), json: args.json };
    match args.command {
        AdminCommand::Status { function } => status(&ctx, function.as_deref()),
        AdminCommand::Workers { function, all } => workers(&ctx, function.as_deref(), all),
        AdminCommand::Priority => priority(&ctx),
        AdminCommand::Jobs { unique } => jobs(&ctx, unique),
        AdminCommand::Ping => ping(&ctx),
        AdminCommand::Version => {
            let rs = ctx.cluster.version();
            single(&ctx, &rs, "VERSION", "version", |v| v.clone(), |v| json!(v))
        }
        AdminCommand::Pid => {
            let rs = ctx.cluster.getpid();
            single(&ctx, &rs, "PID", "pid", |v| v.to_string(), |v| json!(v))
        }
        AdminCommand::Store => store(&ctx),
        AdminCommand::Maxqueue { function, limits } => {
            check_name("function name", &function)?;
            let limits = match limits[..] {
                [n] => MaxQueue::all(n),
                [high, normal, low] => MaxQueue { high, normal, low },
                _ => {
                    return Err(Failure(
                        "maxqueue takes N, or HIGH NORMAL LOW: give 1 or 3 numbers".into(),
                    ));
                }
            };
            let rs = ctx.cluster.set_max_queue(&function, limits);
            done(&ctx, &rs, None)
        }
        AdminCommand::Cancel { handle } => {
            check_name("job handle", &handle)?;
            let rs = ctx.cluster.cancel_job(&handle);
            done(&ctx, &rs, Some(&format!("job {handle}")))
        }
        AdminCommand::Create { function } => {
            check_name("function name", &function)?;
            let rs = ctx.cluster.create_function(&function);
            done(&ctx, &rs, None)
        }
        AdminCommand::Drop { function } => {
            check_name("function name", &function)?;
            let rs = ctx.cluster.drop_function(&function);
            done(&ctx, &rs, None)
        }
        AdminCommand::Clear { function, stall } => {
            check_name("function name", &function)?;
            clear(&ctx, &function, stall)
        }
        AdminCommand::StopWorkers { target, wait } => {
            check_name("function name", &target)?;
            let target =
                if target == "all" { StopTarget::All } else { StopTarget::Function(target) };
            stop_workers(&ctx, &target, wait)
        }
        AdminCommand::StopServer { graceful } => stop_server(&ctx, graceful),
        AdminCommand::Watch { interval, count } => {
            let interval = interval.unwrap_or(config.admin.interval.0);
            if interval.is_zero() {
                return Err(Failure("--interval must be more than 0, e.g. 1s".into()));
            }
            if count == Some(0) {
                return Err(Failure("--count must be at least 1".into()));
            }
            watch::run(&ctx.cluster, ctx.json, interval, count)
        }
    }
}

/// Writes to stdout; a closed pipe is not an error.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn emit_json(v: &Value) {
    emit(&format!("{v}\n"));
}

fn all_down<T>(rs: &[PerServer<T>]) -> bool {
    rs.iter().all(|r| matches!(&r.result, Err(e) if e.is_down()))
}

/// 2 when no server answered, 1 when one answered with an error, else 0.
fn exit_code<T>(rs: &[PerServer<T>]) -> ExitCode {
    if all_down(rs) {
        eprintln!("gearframe: error: no server could be reached");
        ExitCode::from(2)
    } else if rs.iter().any(|r| matches!(&r.result, Err(e) if !e.is_down())) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The note of a server that did not answer: its error without the server
/// name (the row names it).
fn problem(server: &str, e: &AdminError) -> String {
    let text = e.to_string();
    let text = text.strip_prefix(&format!("{server}: ")).unwrap_or(&text).to_string();
    if e.is_down() { format!("down: {text}") } else { format!("error: {text}") }
}

/// One server's JSON: `{"server", "up", "error", KEY: data}`.
fn server_json<T>(r: &PerServer<T>, key: &str, data: impl Fn(&T) -> Value) -> Value {
    match &r.result {
        Ok(v) => json!({"server": r.server, "up": true, "error": null, key: data(v)}),
        Err(e) => json!({
            "server": r.server,
            "up": !e.is_down(),
            "error": problem(&r.server, e),
            key: null,
        }),
    }
}

fn status_json(f: &FunctionStatus) -> Value {
    json!({
        "function": f.function,
        "total": f.total,
        "queued": f.queued(),
        "running": f.running,
        "workers": f.workers,
    })
}

fn status_cells(server: &str, f: &FunctionStatus) -> Vec<String> {
    vec![
        server.to_string(),
        f.function.clone(),
        f.total.to_string(),
        f.queued().to_string(),
        f.running.to_string(),
        f.workers.to_string(),
    ]
}

fn status(ctx: &Ctx, function: Option<&str>) -> Result<ExitCode, Failure> {
    if let Some(f) = function {
        check_name("function name", f)?;
    }
    let mut rs = ctx.cluster.status();
    if let Some(f) = function {
        for r in &mut rs {
            if let Ok(list) = &mut r.result {
                list.retain(|s| s.function == f);
            }
        }
    }
    for r in &mut rs {
        if let Ok(list) = &mut r.result {
            list.sort_by(|a, b| a.function.cmp(&b.function));
        }
    }
    let totals = sum_status(&rs);
    if ctx.json {
        let servers: Vec<Value> = rs
            .iter()
            .map(|r| server_json(r, "functions", |v| v.iter().map(status_json).collect()))
            .collect();
        let totals: Vec<Value> = totals.iter().map(status_json).collect();
        emit_json(&json!({"servers": servers, "totals": totals}));
    } else {
        let mut t = Table::new(&["SERVER", "FUNCTION", "TOTAL", "QUEUED", "RUNNING", "WORKERS"]);
        for r in &rs {
            match &r.result {
                Ok(list) => list.iter().for_each(|f| t.row(status_cells(&r.server, f))),
                Err(e) => t.note(&r.server, problem(&r.server, e)),
            }
        }
        if rs.len() > 1 {
            totals.iter().for_each(|f| t.row(status_cells("TOTAL", f)));
        }
        emit(&t.render());
    }
    if let Some(f) = function {
        if totals.is_empty() && !all_down(&rs) {
            eprintln!("gearframe: no server has a function `{f}`");
            return Ok(ExitCode::from(1));
        }
    }
    Ok(exit_code(&rs))
}

fn workers(ctx: &Ctx, function: Option<&str>, all: bool) -> Result<ExitCode, Failure> {
    if let Some(f) = function {
        check_name("function name", f)?;
    }
    let mut rs = ctx.cluster.workers();
    for r in &mut rs {
        if let Ok(list) = &mut r.result {
            list.retain(|w| match function {
                Some(f) => w.can_do(f),
                None => all || !w.functions.is_empty(),
            });
            list.sort_by(|a, b| (&a.ip, a.fd).cmp(&(&b.ip, b.fd)));
        }
    }
    let count: usize = rs.iter().filter_map(|r| r.result.as_ref().ok()).map(Vec::len).sum();
    if ctx.json {
        let servers: Vec<Value> =
            rs.iter().map(|r| server_json(r, "workers", |v| json!(v))).collect();
        emit_json(&json!({"servers": servers, "total": count}));
    } else {
        let mut t = Table::new(&["SERVER", "FD", "IP", "NAME", "FUNCTIONS"]);
        let mut per = Vec::new();
        for r in &rs {
            match &r.result {
                Ok(list) => {
                    per.push(format!("{} on {}", list.len(), r.server));
                    for w in list {
                        t.row(vec![
                            r.server.clone(),
                            w.fd.to_string(),
                            w.ip.clone(),
                            w.client_id.clone(),
                            w.functions.join(" "),
                        ]);
                    }
                }
                Err(e) => t.note(&r.server, problem(&r.server, e)),
            }
        }
        let mut text = t.render();
        let noun = if all && function.is_none() { "connection" } else { "worker" };
        let plural = if count == 1 { "" } else { "s" };
        text.push_str(&format!("{count} {noun}{plural}"));
        if rs.len() > 1 {
            text.push_str(&format!(" ({})", per.join(", ")));
        }
        text.push('\n');
        emit(&text);
    }
    Ok(exit_code(&rs))
}

fn priority_cells(server: &str, f: &PriorityStatus) -> Vec<String> {
    vec![
        server.to_string(),
        f.function.clone(),
        f.high.to_string(),
        f.normal.to_string(),
        f.low.to_string(),
        f.workers.to_string(),
    ]
}

fn priority(ctx: &Ctx) -> Result<ExitCode, Failure> {
    let mut rs = ctx.cluster.priority_status();
    for r in &mut rs {
        if let Ok(list) = &mut r.result {
            list.sort_by(|a, b| a.function.cmp(&b.function));
        }
    }
    let totals = sum_priority(&rs);
    if ctx.json {
        let servers: Vec<Value> =
            rs.iter().map(|r| server_json(r, "functions", |v| json!(v))).collect();
        emit_json(&json!({"servers": servers, "totals": totals}));
    } else {
        let mut t = Table::new(&["SERVER", "FUNCTION", "HIGH", "NORMAL", "LOW", "WORKERS"]);
        for r in &rs {
            match &r.result {
                Ok(list) => list.iter().for_each(|f| t.row(priority_cells(&r.server, f))),
                Err(e) => t.note(&r.server, problem(&r.server, e)),
            }
        }
        if rs.len() > 1 {
            totals.iter().for_each(|f| t.row(priority_cells("TOTAL", f)));
        }
        emit(&t.render());
    }
    Ok(exit_code(&rs))
}

fn jobs(ctx: &Ctx, unique: bool) -> Result<ExitCode, Failure> {
    if unique {
        let rs = ctx.cluster.show_unique_jobs();
        if ctx.json {
            let servers: Vec<Value> =
                rs.iter().map(|r| server_json(r, "uniques", |v| json!(v))).collect();
            emit_json(&json!({"servers": servers}));
        } else {
            let mut t = Table::new(&["SERVER", "UNIQUE"]);
            for r in &rs {
                match &r.result {
                    Ok(list) => list.iter().for_each(|u| t.row(vec![r.server.clone(), u.clone()])),
                    Err(e) => t.note(&r.server, problem(&r.server, e)),
                }
            }
            emit(&t.render());
        }
        return Ok(exit_code(&rs));
    }
    let rs = ctx.cluster.show_jobs();
    let count: usize = rs.iter().filter_map(|r| r.result.as_ref().ok()).map(Vec::len).sum();
    if ctx.json {
        let servers: Vec<Value> = rs.iter().map(|r| server_json(r, "jobs", |v| json!(v))).collect();
        emit_json(&json!({"servers": servers, "total": count}));
    } else {
        let mut t = Table::new(&["SERVER", "HANDLE", "RETRIES", "CANCELLED"]);
        for r in &rs {
            match &r.result {
                Ok(list) => list.iter().for_each(|j| {
                    t.row(vec![
                        r.server.clone(),
                        j.handle.clone(),
                        j.retries.to_string(),
                        if j.ignored { "yes" } else { "no" }.to_string(),
                    ])
                }),
                Err(e) => t.note(&r.server, problem(&r.server, e)),
            }
        }
        emit(&format!("{}{count} job{}\n", t.render(), if count == 1 { "" } else { "s" }));
    }
    Ok(exit_code(&rs))
}

fn ping(ctx: &Ctx) -> Result<ExitCode, Failure> {
    let rs = ctx.cluster.ping();
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    single(ctx, &rs, "TIME", "ms", |d| format!("{:.3} ms", ms(d)), |d| json!(ms(d)))
}

/// A table with one value per server.
fn single<T>(
    ctx: &Ctx,
    rs: &[PerServer<T>],
    column: &'static str,
    key: &str,
    text: impl Fn(&T) -> String,
    value: impl Fn(&T) -> Value,
) -> Result<ExitCode, Failure> {
    if ctx.json {
        let servers: Vec<Value> = rs.iter().map(|r| server_json(r, key, &value)).collect();
        emit_json(&json!({"servers": servers}));
    } else {
        let mut t = Table::new(&["SERVER", column]);
        for r in rs {
            match &r.result {
                Ok(v) => t.row(vec![r.server.clone(), text(v)]),
                Err(e) => t.note(&r.server, problem(&r.server, e)),
            }
        }
        emit(&t.render());
    }
    Ok(exit_code(rs))
}

/// Output of a command with no data. With `any_server`, one `OK` is enough
/// (a job handle lives on one server; the others answer `UNKNOWN_JOB`);
/// `any_server` names the object for the error when none did.
fn done(ctx: &Ctx, rs: &[PerServer<()>], any_server: Option<&str>) -> Result<ExitCode, Failure> {
    let ok = rs.iter().filter(|r| r.result.is_ok()).count();
    if ctx.json {
        let servers: Vec<Value> =
            rs.iter().map(|r| server_json(r, "ok", |_| json!(true))).collect();
        emit_json(&json!({"servers": servers}));
    } else {
        let mut t = Table::new(&["SERVER", "RESULT"]);
        for r in rs {
            match &r.result {
                Ok(()) => t.row(vec![r.server.clone(), "OK".into()]),
                Err(e) => t.note(&r.server, problem(&r.server, e)),
            }
        }
        emit(&t.render());
    }
    if let Some(what) = any_server.filter(|_| !all_down(rs)) {
        return Ok(if ok > 0 {
            ExitCode::SUCCESS
        } else {
            eprintln!("gearframe: no server knows {what}");
            ExitCode::from(1)
        });
    }
    Ok(exit_code(rs))
}

/// Installs the process's Ctrl-C handler; the flag is set on Ctrl-C and a
/// message sent on the channel. A second Ctrl-C exits at once.
pub(crate) fn interrupt() -> Result<(Arc<AtomicBool>, crossbeam_channel::Receiver<()>), Failure> {
    let flag = Arc::new(AtomicBool::new(false));
    let (tx, rx) = crossbeam_channel::bounded(1);
    let f = flag.clone();
    ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            eprintln!("gearframe: interrupted");
            std::process::exit(130);
        }
        let _ = tx.try_send(());
    })
    .map_err(|e| Failure(format!("cannot install the signal handler: {e}")))?;
    Ok((flag, rx))
}

fn clear(ctx: &Ctx, function: &str, stall: Duration) -> Result<ExitCode, Failure> {
    let (stop, _rx) = interrupt()?;
    let opts = ClearOptions { timeout: ctx.cluster.timeout(), stall, ..ClearOptions::default() };
    let mut results = Vec::new();
    let tty = std::io::stderr().is_terminal() && !ctx.json;
    for server in ctx.cluster.servers() {
        let bar = tty.then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} {bar:40} {pos}/{len} jobs cleared {per_sec} {elapsed}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_prefix(server.clone());
            b
        });
        let mut progress = |done: u64, queued: u64| {
            if let Some(b) = &bar {
                b.set_length(done + queued);
                b.set_position(done);
            }
            !stop.load(Ordering::SeqCst)
        };
        let r = gearframe::admin::clear(server, function, &opts, &mut progress);
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        results.push(PerServer { server: server.clone(), result: r });
        if stop.load(Ordering::SeqCst) {
            break;
        }
    }
    let unknown = |e: &AdminError| matches!(e, AdminError::UnknownFunction { .. });
    let cleared: u64 =
        results.iter().filter_map(|r| r.result.as_ref().ok()).map(|c| c.cleared).sum();
    if ctx.json {
        let servers: Vec<Value> =
            results.iter().map(|r| server_json(r, "clear", |v| json!(v))).collect();
        emit_json(&json!({"servers": servers, "cleared": cleared}));
    } else {
        let mut t = Table::new(&["SERVER", "FUNCTION", "CLEARED", "LEFT", "METHOD"]);
        for r in &results {
            match &r.result {
                Ok(c) => t.row(vec![
                    r.server.clone(),
                    c.function.clone(),
                    c.cleared.to_string(),
                    c.remaining.to_string(),
                    match c.method {
                        gearframe::admin::ClearMethod::Native => "clear function".into(),
                        gearframe::admin::ClearMethod::Drained if c.interrupted => {
                            "draining worker (interrupted)".into()
                        }
                        gearframe::admin::ClearMethod::Drained => "draining worker".into(),
                    },
                ]),
                Err(e) if unknown(e) => t.note(&r.server, format!("no function `{function}`")),
                Err(e) => t.note(&r.server, problem(&r.server, e)),
            }
        }
        emit(&format!("{}{cleared} jobs cleared\n", t.render()));
    }
    if !results.is_empty()
        && results.iter().all(|r| matches!(&r.result, Err(e) if unknown(e) || e.is_down()))
        && !all_down(&results)
    {
        eprintln!("gearframe: no server has a function `{function}`");
        return Ok(ExitCode::from(1));
    }
    if stop.load(Ordering::SeqCst) {
        return Ok(ExitCode::from(130));
    }
    let others: Vec<_> = results
        .into_iter()
        .map(|r| PerServer {
            server: r.server,
            result: match r.result {
                Err(e) if unknown(&e) => Ok(()),
                other => other.map(drop),
            },
        })
        .collect();
    Ok(exit_code(&others))
}

fn stop_workers(ctx: &Ctx, target: &StopTarget, wait: Duration) -> Result<ExitCode, Failure> {
    let opts = StopWorkersOptions { timeout: ctx.cluster.timeout(), wait, ..Default::default() };
    let rs = ctx.cluster.each(|c| gearframe::admin::stop_workers(c.server(), target, &opts));
    let ok = || rs.iter().filter_map(|r| r.result.as_ref().ok());
    let found: u64 = ok().map(|r| r.workers).sum();
    let stopped: u64 = ok().map(|r| r.stopped).sum();
    if ctx.json {
        let servers: Vec<Value> = rs.iter().map(|r| server_json(r, "stop", |v| json!(v))).collect();
        emit_json(&json!({"servers": servers, "workers": found, "stopped": stopped}));
    } else {
        let mut t = Table::new(&["SERVER", "WORKERS", "JOBS", "STOPPED", "CANCELLED"]);
        for r in &rs {
            match &r.result {
                Ok(s) => t.row(vec![
                    r.server.clone(),
                    s.workers.to_string(),
                    s.jobs.values().sum::<u64>().to_string(),
                    s.stopped.to_string(),
                    s.cancelled.to_string(),
                ]),
                Err(e) => t.note(&r.server, problem(&r.server, e)),
            }
        }
        let what = match target {
            StopTarget::All => String::new(),
            StopTarget::Function(f) => format!(" of `{f}`"),
        };
        emit(&format!("{}stopped {stopped} of {found} workers{what}\n", t.render()));
    }
    let code = exit_code(&rs);
    if code == ExitCode::SUCCESS && stopped < found {
        eprintln!(
            "gearframe: {} workers did not stop within {wait:?} (busy, or not gearframe workers)",
            found - stopped
        );
        return Ok(ExitCode::from(1));
    }
    Ok(code)
}

/// The note of a server without the `store` command.
const NO_STORE: &str = "error: this server has no `store` command (not a gearframe server)";

fn store(ctx: &Ctx) -> Result<ExitCode, Failure> {
    let rs = ctx.cluster.store();
    if ctx.json {
        let servers: Vec<Value> = rs
            .iter()
            .map(|r| {
                let mut v = server_json(r, "store", |s: &StoreStatus| json!(s));
                if matches!(&r.result, Err(e) if e.is_unknown_command()) {
                    v["error"] = json!(NO_STORE);
                }
                v
            })
            .collect();
        emit_json(&json!({"servers": servers}));
    } else {
        let mut t = Table::new(&["SERVER", "QUEUE", "DURABILITY", "STATE", "ROWS", "ERROR"]);
        for r in &rs {
            match &r.result {
                Ok(s) => {
                    let queue = match &s.path {
                        Some(p) => format!("{}:{p}", s.backend),
                        None => s.backend.clone(),
                    };
                    let state = match s.failing_since {
                        Some(since) => format!("failing since {since}"),
                        None => "ok".into(),
                    };
                    t.row(vec![
                        r.server.clone(),
                        queue,
                        s.durability.clone().unwrap_or_else(|| "-".into()),
                        state,
                        s.rows.to_string(),
                        s.error.clone().unwrap_or_else(|| "-".into()),
                    ]);
                }
                Err(e) if e.is_unknown_command() => t.note(&r.server, NO_STORE.into()),
                Err(e) => t.note(&r.server, problem(&r.server, e)),
            }
        }
        emit(&t.render());
    }
    let failing = rs.iter().any(|r| matches!(&r.result, Ok(s) if !s.ok));
    let code = exit_code(&rs);
    if failing && code == ExitCode::SUCCESS {
        return Ok(ExitCode::from(1));
    }
    Ok(code)
}

fn stop_server(ctx: &Ctx, graceful: bool) -> Result<ExitCode, Failure> {
    let timeout = ctx.cluster.timeout();
    let rs = ctx.cluster.each(|c| {
        c.shutdown(graceful)?;
        if graceful {
            return Ok("stopping once its jobs are done");
        }
        // Confirm: the port stops answering.
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if AdminClient::connect(c.server(), timeout).and_then(|mut a| a.version()).is_err() {
                return Ok("stopped");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok("stopping")
    });
    if ctx.json {
        let servers: Vec<Value> =
            rs.iter().map(|r| server_json(r, "state", |v| json!(v))).collect();
        emit_json(&json!({"servers": servers}));
    } else {
        let mut t = Table::new(&["SERVER", "RESULT"]);
        for r in &rs {
            match &r.result {
                Ok(s) => t.row(vec![r.server.clone(), s.to_string()]),
                Err(e) if e.is_unknown_command() => t.note(
                    &r.server,
                    "error: this server has no `shutdown` command (gearmand removed it in 1.1.15): stop it with SIGTERM, or SIGUSR1 to let its jobs finish".into(),
                ),
                Err(e) => t.note(&r.server, problem(&r.server, e)),
            }
        }
        emit(&t.render());
    }
    Ok(exit_code(&rs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_drop_the_server_name() {
        let e = AdminError::Server {
            server: "h:1".into(),
            code: "UNKNOWN_JOB".into(),
            message: String::new(),
        };
        assert_eq!(problem("h:1", &e), "error: server error UNKNOWN_JOB");
    }
}
