//! `gearframe admin`: status, workers, queues and control of one or more
//! servers, as aligned tables (with totals across servers) or JSON; and
//! gearadmin's own flags with gearadmin's output (see [`gearadmin`]).
//!
//! Exit codes: 0 when every server that could be reached did what was
//! asked; 1 when a server refused (an `ERR` reply, a job handle no server
//! knows, a function no server has, fewer workers stopped than found, a
//! persistent queue that is failing for `store`); 2 for bad input, or when
//! no server could be reached at all; 130 after Ctrl-C. A server that is
//! down is a row of its own in the output, not an error, while another one
//! answers.

mod gearadmin;
mod table;
mod watch;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Args, Subcommand};
use gearframe::admin::{
    AdminClient, AdminConfig, AdminError, AdminErrorKind, ClearOptions, Cluster, FunctionStatus,
    MaxQueue, PerServer, PriorityStatus, StopTarget, StopWorkersOptions, StoreStatus, WorkerInfo,
    sum_priority, sum_status,
};
use gearframe::config::{Config, parse_duration};
use serde_json::{Value, json};

use super::Failure;
use super::flags::Flags;
use table::Table;

/// Options of `gearframe admin`.
#[derive(Debug, Args)]
#[command(
    disable_help_flag = true,
    after_help = "Examples:
  gearframe admin status                      queues of 127.0.0.1:4730
  gearframe admin -s a:4730,b:4730 workers    workers of two servers
  gearframe admin status --json               for scripts
  gearframe admin watch                       live view, Ctrl-C to quit
  gearframe admin clear resize                empty the queue of `resize`
  gearframe admin job H:host:42               status of one job
  gearframe admin -h host -p 4730 --status    gearadmin's flags and output

Exit codes: 0 done; 1 a server refused, or no server knows the job handle or
has the function named (status, workers, clear, drop, stop-workers, job); 2
bad input or no server reachable; 130 interrupted. `create` and `maxqueue`
make the function they name. gearadmin's flags exit as gearadmin does: 1 when
the server cannot be reached, else 0 (an ERR answer is printed on stderr)."
)]
pub(crate) struct AdminArgs {
    /// Job server HOST[:PORT] (repeatable, or comma-separated) [default:
    /// GEARMAN_SERVERS, else admin.servers in config.yaml, else 127.0.0.1:4730].
    #[arg(short = 's', long = "server", value_name = "HOST:PORT", global = true)]
    servers: Vec<String>,
    /// Machine-readable JSON on stdout instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    config: Flags<AdminConfig>,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    #[command(flatten)]
    gearadmin: GearadminFlags,
    #[command(subcommand)]
    command: Option<AdminCommand>,
}

/// gearadmin's flags, with its meaning and output.
#[derive(Debug, Args)]
#[command(next_help_heading = "gearadmin's flags (its output, byte for byte)")]
struct GearadminFlags {
    /// The server's host, as gearadmin's -h (with -p; instead of -s) [default: localhost].
    #[arg(short = 'h', long, value_name = "HOST")]
    host: Option<String>,
    /// The server's port, as gearadmin's -p [default: 4730].
    #[arg(short = 'p', long, value_name = "PORT")]
    port: Option<u16>,
    /// The server's version.
    #[arg(long)]
    server_version: bool,
    /// The server's verbose setting.
    #[arg(long)]
    server_verbose: bool,
    /// Creates the function.
    #[arg(long, value_name = "FUNCTION")]
    create_function: Option<String>,
    /// Cancels a queued job.
    #[arg(long, value_name = "HANDLE")]
    cancel_job: Option<String>,
    /// Drops the function.
    #[arg(long, value_name = "FUNCTION")]
    drop_function: Option<String>,
    /// Unique ids of the jobs on the server.
    #[arg(long)]
    show_unique_jobs: bool,
    /// Every job on the server.
    #[arg(long)]
    show_jobs: bool,
    /// The server's process id.
    #[arg(long)]
    getpid: bool,
    /// Status (function, total, running, workers).
    #[arg(long)]
    status: bool,
    /// Queued jobs per priority.
    #[arg(long)]
    priority_status: bool,
    /// Worker connections.
    #[arg(long)]
    workers: bool,
}

impl GearadminFlags {
    fn script(&self) -> gearadmin::Script {
        gearadmin::Script {
            getpid: self.getpid,
            create_function: self.create_function.clone(),
            drop_function: self.drop_function.clone(),
            show_jobs: self.show_jobs,
            show_unique_jobs: self.show_unique_jobs,
            cancel_job: self.cancel_job.clone(),
            server_verbose: self.server_verbose,
            server_version: self.server_version,
            workers: self.workers,
            priority_status: self.priority_status,
            status: self.status,
        }
    }
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Queued, running and workers per function, with totals across servers.
    Status {
        /// Only this function.
        function: Option<String>,
        #[command(flatten)]
        _help: HelpFlag,
    },
    /// Worker processes: IP, name (client id), slots (connections) and
    /// functions. The connections sharing a client id and IP are one row
    /// (a gearframe worker's slots share its --name, by default
    /// gearframe-worker-PID); connections without a client id are a row each.
    Workers {
        /// Only workers registered for this function.
        function: Option<String>,
        /// Also connections without functions (clients, admin sessions).
        #[arg(long)]
        all: bool,
        /// One row per connection (with the server's fd), not per process.
        #[arg(long)]
        raw: bool,
        #[command(flatten)]
        _help: HelpFlag,
    },
    /// Status of one job: by handle (GET_STATUS) or by unique id
    /// (GET_STATUS_UNIQUE, which also counts the waiting clients). Every
    /// server is asked; exit 1 when none knows the job.
    Job {
        /// The job handle, e.g. H:host:42.
        #[arg(required_unless_present = "unique", conflicts_with = "unique")]
        handle: Option<String>,
        /// The job's unique id instead of a handle (the server matches it in
        /// any function).
        #[arg(long, value_name = "UNIQUE")]
        unique: Option<String>,
        #[command(flatten)]
        _help: HelpFlag,
    },
    /// Queued jobs per priority (gearmand and gearframe).
    Priority(HelpFlag),
    /// Jobs the servers hold (handle, retries, cancelled).
    Jobs {
        /// List the unique ids instead.
        #[arg(long)]
        unique: bool,
        #[command(flatten)]
        _help: HelpFlag,
    },
    /// Round-trip time of an ECHO to each server.
    Ping(HelpFlag),
    /// Server versions.
    Version(HelpFlag),
    /// Server process ids.
    Pid(HelpFlag),
    /// The persistent queue: file, durability, whether writes succeed, rows
    /// (gearframe's server only).
    Store(HelpFlag),
    /// Limits the queue of FUNCTION: N for every priority, or HIGH NORMAL LOW (0 = unlimited).
    Maxqueue {
        /// The function.
        function: String,
        /// N, or HIGH NORMAL LOW.
        #[arg(value_name = "N", num_args = 1..=3, required = true)]
        limits: Vec<u32>,
        #[command(flatten)]
        _help: HelpFlag,
    },
    /// Cancels a job by handle: the servers are asked in turn, and the
    /// first that has the handle cancels it.
    Cancel {
        /// The job handle, e.g. H:host:42.
        handle: String,
        #[command(flatten)]
        _help: HelpFlag,
    },
    /// Creates an empty function.
    Create {
        /// The function.
        function: String,
        #[command(flatten)]
        _help: HelpFlag,
    },
    /// Drops a function that has no workers and no jobs.
    Drop {
        /// The function.
        function: String,
        #[command(flatten)]
        _help: HelpFlag,
    },
    /// Empties the queue of FUNCTION and stops when it is empty.
    Clear {
        /// The function.
        function: String,
        /// Give up when the queue did not move for this long.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
        stall: Duration,
        #[command(flatten)]
        _help: HelpFlag,
    },
    /// Stops the workers of FUNCTION (or all) with priority shutdown jobs.
    StopWorkers {
        /// The function, or `all`.
        #[arg(value_name = "FUNCTION|all")]
        target: String,
        /// How long to wait for the workers to disconnect.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
        wait: Duration,
        #[command(flatten)]
        _help: HelpFlag,
    },
    /// Stops the server (gearframe's server; gearmand removed this command).
    StopServer {
        /// Stop accepting connections, exit once no job is left.
        #[arg(long)]
        graceful: bool,
        #[command(flatten)]
        _help: HelpFlag,
    },
    /// A live table like top, refreshed until Ctrl-C.
    Watch {
        /// Refresh interval, e.g. 500ms [default: admin.interval, 1s].
        #[arg(short = 'n', long, value_name = "DURATION", value_parser = parse_duration)]
        interval: Option<Duration>,
        /// Exit after N refreshes.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Only this function (repeatable).
        #[arg(short = 'f', long = "function", value_name = "FUNCTION")]
        functions: Vec<String>,
        /// Only functions matching this pattern (`*` any characters, `?` one).
        #[arg(value_name = "PATTERN")]
        pattern: Option<String>,
        #[command(flatten)]
        _help: HelpFlag,
    },
}

/// `-h`/`--help` of each admin subcommand: `gearframe admin -h` is
/// gearadmin's host, so clap's own help flag is off for the whole tree.
#[derive(Debug, Args)]
struct HelpFlag {
    /// Print help.
    #[arg(short = 'h', long = "help", action = clap::ArgAction::Help)]
    _help: Option<bool>,
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

/// The admin command's help, as `gearframe admin --help` prints it.
fn help() -> String {
    use clap::CommandFactory;
    let mut cmd = super::Cli::command();
    cmd.build();
    match cmd.find_subcommand_mut("admin") {
        Some(admin) => admin.render_long_help().to_string(),
        None => String::new(),
    }
}

/// The server of gearadmin's `-h HOST -p PORT`, when either is given.
fn gearadmin_server(args: &AdminArgs) -> Result<Option<String>, Failure> {
    let g = &args.gearadmin;
    if g.host.is_none() && g.port.is_none() {
        return Ok(None);
    }
    if !args.servers.is_empty() {
        return Err(Failure(
            "-h/-p and -s both name servers: give -h HOST -p PORT or -s HOST:PORT".into(),
        ));
    }
    let host = g.host.as_deref().unwrap_or("localhost");
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
    Ok(Some(format!("{host}:{}", g.port.unwrap_or(4730))))
}

pub(crate) fn run(args: AdminArgs, config: &Config) -> Result<ExitCode, Failure> {
    let script = args.gearadmin.script();
    if args.command.is_none() && script.is_empty() {
        // As a bare `gearframe`: the help on stderr, exit 2.
        eprint!("{}", help());
        return Ok(ExitCode::from(2));
    }
    if args.command.is_some() && !script.is_empty() {
        return Err(Failure(
            "gearadmin's flags (--status, --workers, ...) and a subcommand were both given: use one of them".into(),
        ));
    }
    let list = match gearadmin_server(&args)? {
        Some(s) => vec![s],
        None => servers(&args, config)?,
    };
    let mut settings = config.admin.clone();
    args.config.apply(&mut settings)?;
    let timeout = settings.timeout;
    if timeout.is_zero() {
        return Err(Failure("--timeout must be more than 0".into()));
    }
    let Some(command) = args.command else {
        if args.json {
            return Err(Failure(
                "--json does not apply to gearadmin's flags, which print the server's answer: use a subcommand, e.g. `admin status --json`".into(),
            ));
        }
        return Ok(gearadmin::run(&script, &list, timeout));
    };
    let ctx = Ctx { cluster: Cluster::new(&list, timeout), json: args.json };
    match command {
        AdminCommand::Status { function, .. } => status(&ctx, function.as_deref()),
        AdminCommand::Workers { function, all, raw, .. } => {
            workers(&ctx, function.as_deref(), all, raw)
        }
        AdminCommand::Job { handle, unique, .. } => job(&ctx, handle.as_deref(), unique.as_deref()),
        AdminCommand::Priority(_) => priority(&ctx),
        AdminCommand::Jobs { unique, .. } => jobs(&ctx, unique),
        AdminCommand::Ping(_) => ping(&ctx),
        AdminCommand::Version(_) => {
            let rs = ctx.cluster.version();
            single(&ctx, &rs, "VERSION", "version", |v| v.clone(), |v| json!(v))
        }
        AdminCommand::Pid(_) => {
            let rs = ctx.cluster.getpid();
            single(&ctx, &rs, "PID", "pid", |v| v.to_string(), |v| json!(v))
        }
        AdminCommand::Store(_) => store(&ctx),
        AdminCommand::Maxqueue { function, limits, .. } => {
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
        AdminCommand::Cancel { handle, .. } => {
            check_name("job handle", &handle)?;
            cancel(&ctx, &handle)
        }
        AdminCommand::Create { function, .. } => {
            check_name("function name", &function)?;
            let rs = ctx.cluster.create_function(&function);
            done(&ctx, &rs, None)
        }
        AdminCommand::Drop { function, .. } => {
            check_name("function name", &function)?;
            drop_function(&ctx, &function)
        }
        AdminCommand::Clear { function, stall, .. } => {
            check_name("function name", &function)?;
            clear(&ctx, &function, stall)
        }
        AdminCommand::StopWorkers { target, wait, .. } => {
            check_name("function name", &target)?;
            let target =
                if target == "all" { StopTarget::All } else { StopTarget::Function(target) };
            stop_workers(&ctx, &target, wait)
        }
        AdminCommand::StopServer { graceful, .. } => stop_server(&ctx, graceful),
        AdminCommand::Watch { interval, count, functions, pattern, .. } => {
            let interval = interval.unwrap_or(settings.interval);
            if interval.is_zero() {
                return Err(Failure("--interval must be more than 0, e.g. 1s".into()));
            }
            if count == Some(0) {
                return Err(Failure("--count must be at least 1".into()));
            }
            for f in &functions {
                check_name("function name", f)?;
            }
            let filter = watch::Filter { functions, pattern };
            watch::run(&ctx.cluster, ctx.json, interval, count, &filter)
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
fn problem(e: &AdminError) -> String {
    let text = &e.kind;
    if e.is_down() { format!("down: {text}") } else { format!("error: {text}") }
}

/// One server's JSON: `{"server", "up", "error", KEY: data}`.
fn server_json<T>(r: &PerServer<T>, key: &str, data: impl Fn(&T) -> Value) -> Value {
    match &r.result {
        Ok(v) => json!({"server": r.server, "up": true, "error": null, key: data(v)}),
        Err(e) => json!({
            "server": r.server,
            "up": !e.is_down(),
            "error": problem(e),
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
                Err(e) => t.note(&r.server, problem(e)),
            }
        }
        if rs.len() > 1 {
            totals.iter().for_each(|f| t.row(status_cells("TOTAL", f)));
        }
        emit(&t.render());
    }
    if let Some(f) = function {
        if totals.is_empty() && !all_down(&rs) {
            eprintln!("gearframe: no function `{f}` on {}", answered(&rs));
            return Ok(ExitCode::from(1));
        }
    }
    Ok(exit_code(&rs))
}

/// The connections of one worker process on one server: the slots of a
/// gearframe worker share its client id. Connections without a client id
/// (`-`) are a group each.
#[derive(Debug, Clone, serde::Serialize)]
struct WorkerGroup {
    ip: String,
    #[serde(rename = "client_id")]
    name: String,
    slots: usize,
    fds: Vec<i64>,
    functions: Vec<String>,
}

fn group_workers(list: &[WorkerInfo]) -> Vec<WorkerGroup> {
    let mut groups: BTreeMap<(String, String, i64), WorkerGroup> = BTreeMap::new();
    for w in list {
        let key = if w.client_id == "-" {
            (w.ip.clone(), w.client_id.clone(), w.fd)
        } else {
            (w.ip.clone(), w.client_id.clone(), -1)
        };
        let g = groups.entry(key).or_insert_with(|| WorkerGroup {
            ip: w.ip.clone(),
            name: w.client_id.clone(),
            slots: 0,
            fds: Vec::new(),
            functions: Vec::new(),
        });
        g.slots += 1;
        g.fds.push(w.fd);
        g.functions.extend(w.functions.iter().cloned());
    }
    let mut out: Vec<WorkerGroup> = groups.into_values().collect();
    for g in &mut out {
        g.fds.sort_unstable();
        g.functions.sort();
        g.functions.dedup();
    }
    out
}

/// Whether any server that answered `status` lists `function`; `Err`
/// with the exit code when none does (a message on stderr names the
/// function and the servers).
fn known_function(ctx: &Ctx, function: &str) -> Result<(), ExitCode> {
    let rs = ctx.cluster.status();
    if all_down(&rs) {
        return Ok(());
    }
    let listed = rs
        .iter()
        .filter_map(|r| r.result.as_ref().ok())
        .any(|l| l.iter().any(|f| f.function == function));
    if listed {
        return Ok(());
    }
    eprintln!(
        "gearframe: no function `{function}` on {} (see `gearframe admin status` for the functions there)",
        answered(&rs)
    );
    Err(ExitCode::from(1))
}

fn workers(ctx: &Ctx, function: Option<&str>, all: bool, raw: bool) -> Result<ExitCode, Failure> {
    if let Some(f) = function {
        check_name("function name", f)?;
        if let Err(code) = known_function(ctx, f) {
            return Ok(code);
        }
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
    let groups: Vec<PerServer<Vec<WorkerGroup>>> = rs
        .iter()
        .map(|r| PerServer {
            server: r.server.clone(),
            result: match &r.result {
                Ok(list) => Ok(group_workers(list)),
                Err(e) => Err(AdminError::new(
                    e.server.clone(),
                    AdminErrorKind::InvalidArgument(e.kind.to_string()),
                )),
            },
        })
        .collect();
    let processes: usize = groups.iter().filter_map(|r| r.result.as_ref().ok()).map(Vec::len).sum();
    if ctx.json && raw {
        let servers: Vec<Value> =
            rs.iter().map(|r| server_json(r, "workers", |v| json!(v))).collect();
        emit_json(&json!({"servers": servers, "total": count}));
    } else if ctx.json {
        let servers: Vec<Value> = rs
            .iter()
            .zip(&groups)
            .map(|(r, g)| match &g.result {
                Ok(v) => json!({"server": r.server, "up": true, "error": null, "workers": v}),
                Err(_) => server_json(r, "workers", |_| Value::Null),
            })
            .collect();
        emit_json(&json!({"servers": servers, "total": processes, "connections": count}));
    } else if raw {
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
                Err(e) => t.note(&r.server, problem(e)),
            }
        }
        let mut text = t.render();
        let noun = if all && function.is_none() { "connection" } else { "worker connection" };
        let plural = if count == 1 { "" } else { "s" };
        text.push_str(&format!("{count} {noun}{plural}"));
        if rs.len() > 1 {
            text.push_str(&format!(" ({})", per.join(", ")));
        }
        text.push('\n');
        emit(&text);
    } else {
        let mut t = Table::new(&["SERVER", "IP", "NAME", "SLOTS", "FUNCTIONS"]);
        let mut per = Vec::new();
        for (r, g) in rs.iter().zip(&groups) {
            match (&r.result, &g.result) {
                (Ok(_), Ok(list)) => {
                    per.push(format!("{} on {}", list.len(), r.server));
                    for w in list {
                        t.row(vec![
                            r.server.clone(),
                            w.ip.clone(),
                            w.name.clone(),
                            w.slots.to_string(),
                            w.functions.join(" "),
                        ]);
                    }
                }
                (Err(e), _) => t.note(&r.server, problem(e)),
                (Ok(_), Err(_)) => {}
            }
        }
        let mut text = t.render();
        let noun = if all && function.is_none() { "process" } else { "worker" };
        let plural = match (processes == 1, noun) {
            (true, _) => "",
            (false, "process") => "es",
            (false, _) => "s",
        };
        let slots = if count == 1 { "slot" } else { "slots" };
        text.push_str(&format!("{processes} {noun}{plural}, {count} {slots}"));
        if rs.len() > 1 {
            text.push_str(&format!(" ({})", per.join(", ")));
        }
        text.push('\n');
        emit(&text);
    }
    Ok(exit_code(&rs))
}

/// Status of one job on every server.
fn job(ctx: &Ctx, handle: Option<&str>, unique: Option<&str>) -> Result<ExitCode, Failure> {
    let (what, rs) = match (handle, unique) {
        (Some(h), _) => {
            check_name("job handle", h)?;
            (format!("job {h}"), ctx.cluster.each(|c| c.job_status(h)))
        }
        (None, Some(u)) => {
            if u.is_empty() || u.contains('\0') {
                return Err(Failure(
                    "invalid unique id: it must be non-empty and without NUL bytes".into(),
                ));
            }
            (format!("the job with unique id {u:?}"), ctx.cluster.each(|c| c.job_status_unique(u)))
        }
        (None, None) => return Err(Failure("give a job handle, or --unique UNIQUE".into())),
    };
    let known: Vec<&str> = rs
        .iter()
        .filter(|r| matches!(&r.result, Ok(s) if s.known))
        .map(|r| r.server.as_str())
        .collect();
    let status_json = |s: &gearframe::client::JobStatus| {
        json!({
            "known": s.known,
            "running": s.running,
            "numerator": s.numerator,
            "denominator": s.denominator,
            "clients": s.clients,
        })
    };
    if ctx.json {
        let servers: Vec<Value> =
            rs.iter().map(|r| server_json(r, "status", status_json)).collect();
        emit_json(&json!({"servers": servers, "known_by": known}));
    } else {
        let by_unique = unique.is_some() && handle.is_none();
        let mut head = vec!["SERVER", "KNOWN", "RUNNING", "NUMERATOR", "DENOMINATOR"];
        if by_unique {
            head.push("CLIENTS");
        }
        let mut t = Table::new(&head);
        let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
        for r in &rs {
            match &r.result {
                Ok(s) => {
                    let mut row = vec![
                        r.server.clone(),
                        yes(s.known),
                        yes(s.running),
                        s.numerator.to_string(),
                        s.denominator.to_string(),
                    ];
                    if by_unique {
                        row.push(s.clients.unwrap_or(0).to_string());
                    }
                    t.row(row);
                }
                Err(e) => t.note(&r.server, problem(e)),
            }
        }
        let mut text = t.render();
        if !known.is_empty() {
            text.push_str(&format!("{what} is known by {}\n", known.join(", ")));
        }
        emit(&text);
    }
    if all_down(&rs) {
        return Ok(exit_code(&rs));
    }
    if known.is_empty() {
        let asked: Vec<&str> =
            rs.iter().filter(|r| r.result.is_ok()).map(|r| r.server.as_str()).collect();
        eprintln!(
            "gearframe: no server knows {what} (asked {}; a finished job is forgotten: check the handle and the servers)",
            asked.join(", ")
        );
        return Ok(ExitCode::from(1));
    }
    Ok(exit_code(&rs))
}

/// Cancels a job on the first server, in the given order, that has it.
fn cancel(ctx: &Ctx, handle: &str) -> Result<ExitCode, Failure> {
    let mut rs: Vec<PerServer<()>> = Vec::new();
    for server in ctx.cluster.servers() {
        let mut c = AdminClient::lazy(server, ctx.cluster.timeout());
        let result = c.cancel_job(handle);
        let ok = result.is_ok();
        rs.push(PerServer { server: server.clone(), result });
        if ok {
            break;
        }
    }
    done(ctx, &rs, Some(&format!("job {handle}")))
}

/// `drop function`; when a server refuses, says what holds the function
/// there, read from `status` (the server's own text says `there are still
/// connected workers or executing clients` whatever the cause; gearmand
/// drops a function with queued jobs, gearframe's server refuses).
fn drop_function(ctx: &Ctx, function: &str) -> Result<ExitCode, Failure> {
    let rs: Vec<PerServer<()>> = ctx
        .cluster
        .drop_function(function)
        .into_iter()
        .map(|r| match r.result {
            Err(e) if !e.is_down() => {
                let why = drop_refusal(&r.server, ctx.cluster.timeout(), function);
                PerServer { server: r.server, result: Err(why.unwrap_or(e)) }
            }
            other => PerServer { server: r.server, result: other },
        })
        .collect();
    let code = done(ctx, &rs, None)?;
    for r in &rs {
        if let Err(e) = &r.result {
            if !e.is_down() {
                eprintln!("gearframe: {}: {}", r.server, problem(e).trim_start_matches("error: "));
            }
        }
    }
    Ok(code)
}

/// What keeps `function` on `server` from being dropped, as an error to
/// show in place of the server's answer.
fn drop_refusal(server: &str, timeout: Duration, function: &str) -> Option<AdminError> {
    let held = AdminClient::lazy(server, timeout).function_status(function).ok()?;
    let Some(f) = held else {
        return Some(AdminError::new(
            server,
            AdminErrorKind::InvalidArgument(format!("no function `{function}`")),
        ));
    };
    let mut has = Vec::new();
    let mut fix = Vec::new();
    if f.queued() > 0 {
        has.push(format!("{} queued job{}", f.queued(), plural(f.queued())));
        fix.push(format!("empty it with `gearframe admin clear {function}`"));
    }
    if f.running > 0 {
        has.push(format!("{} running job{}", f.running, plural(f.running)));
    }
    if f.workers > 0 {
        has.push(format!("{} connected worker{}", f.workers, plural(f.workers)));
        fix.push(format!("stop them with `gearframe admin stop-workers {function}`"));
    } else if f.running > 0 {
        fix.push("wait until the running jobs end".to_string());
    }
    if has.is_empty() {
        return None;
    }
    Some(AdminError::new(
        server,
        AdminErrorKind::InvalidArgument(format!(
            "cannot drop `{function}`: it has {} ({})",
            has.join(", "),
            fix.join("; ")
        )),
    ))
}

/// The servers that answered, comma-separated.
fn answered<T>(rs: &[PerServer<T>]) -> String {
    let up: Vec<&str> = rs
        .iter()
        .filter(|r| !matches!(&r.result, Err(e) if e.is_down()))
        .map(|r| r.server.as_str())
        .collect();
    up.join(", ")
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
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
                Err(e) => t.note(&r.server, problem(e)),
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
                    Err(e) => t.note(&r.server, problem(e)),
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
                Err(e) => t.note(&r.server, problem(e)),
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
                Err(e) => t.note(&r.server, problem(e)),
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
                Err(e) => t.note(&r.server, problem(e)),
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
    let unknown = |e: &AdminError| matches!(e.kind, AdminErrorKind::UnknownFunction { .. });
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
                Err(e) => t.note(&r.server, problem(e)),
            }
        }
        emit(&format!("{}{cleared} jobs cleared\n", t.render()));
    }
    if !results.is_empty()
        && results.iter().all(|r| matches!(&r.result, Err(e) if unknown(e) || e.is_down()))
        && !all_down(&results)
    {
        eprintln!("gearframe: no function `{function}` on {}", answered(&results));
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
    if let StopTarget::Function(f) = target {
        if let Err(code) = known_function(ctx, f) {
            return Ok(code);
        }
    }
    let (stop, _rx) = interrupt()?;
    let opts = StopWorkersOptions {
        timeout: ctx.cluster.timeout(),
        wait,
        interrupt: Some(stop.clone()),
        ..Default::default()
    };
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
                Err(e) => t.note(&r.server, problem(e)),
            }
        }
        let what = match target {
            StopTarget::All => String::new(),
            StopTarget::Function(f) => format!(" of `{f}`"),
        };
        emit(&format!("{}stopped {stopped} of {found} workers{what}\n", t.render()));
    }
    if stop.load(Ordering::SeqCst) {
        let cancelled: u64 = ok().map(|r| r.cancelled).sum();
        eprintln!(
            "gearframe: interrupted: cancelled {cancelled} shutdown job{} no worker had taken",
            plural(cancelled)
        );
        return Ok(ExitCode::from(130));
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
                Err(e) => t.note(&r.server, problem(e)),
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
            // gearframe's server tells how many jobs it waits for.
            let left = AdminClient::connect(c.server(), timeout)
                .and_then(|mut a| a.command("stopping"))
                .ok()
                .and_then(|a| a.strip_prefix("graceful jobs=").map(str::to_string));
            return Ok(match left {
                Some(n) => format!(
                    "stopping once its jobs are done ({n} left; see `gearframe admin status`, `stop-server` stops it now)"
                ),
                None => "stopping once its jobs are done".to_string(),
            });
        }
        // Confirm: the port stops answering.
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if AdminClient::connect(c.server(), timeout).and_then(|mut a| a.version()).is_err() {
                return Ok("stopped".to_string());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok("stopping".to_string())
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
                Err(e) => t.note(&r.server, problem(e)),
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
        let e = AdminError::new(
            "h:1",
            AdminErrorKind::Server { code: "UNKNOWN_JOB".into(), message: String::new() },
        );
        assert_eq!(problem(&e), "error: server error UNKNOWN_JOB");
    }
}
