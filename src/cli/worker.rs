//! `gearframe worker`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use gearframe::config::{Config, FunctionConfig, WorkerConfig, parse_duration};
use gearframe::worker::shell::{OutputMode, ShellCommand};
use gearframe::worker::{FailKind, Worker};

use super::Failure;
use super::flags::Flags;

/// Options of `gearframe worker`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  gearframe worker                       run every function of config.yaml
  gearframe worker wc echo               run two of them (echo is built in)
  gearframe worker -f wc -- wc -l        one function running a command, like `gearman -w`")]
pub(crate) struct WorkerArgs {
    /// Job server HOST[:PORT] (repeat, or separate with commas); replaces
    /// every other list [default: GEARMAN_SERVERS, else worker.servers, else
    /// 127.0.0.1:4730].
    #[arg(short = 's', long = "server", value_name = "HOST:PORT")]
    servers: Vec<String>,
    /// The `worker:` settings given as options.
    #[command(flatten)]
    config: Flags<WorkerConfig>,
    /// Registers FUNCTION to run the command given after `--`.
    #[arg(short = 'f', long = "function", value_name = "FUNCTION", requires = "command")]
    function: Option<String>,
    /// Wall-clock limit of each run of the `-f` command (e.g. 30s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "function")]
    timeout: Option<Duration>,
    /// Output of the `-f` command: capture (the result), stream (lines as
    /// WORK_DATA) or tty [default: capture].
    #[arg(
        long,
        value_name = "MODE",
        value_enum,
        hide_possible_values = true,
        requires = "function"
    )]
    output: Option<OutputMode>,
    /// How failures of the `-f` command are sent: auto (WORK_WARNING with the
    /// reason, then WORK_EXCEPTION where the server relays it safely, else
    /// WORK_FAIL), exception or fail [default: auto].
    #[arg(
        long,
        value_name = "HOW",
        value_enum,
        hide_possible_values = true,
        requires = "function"
    )]
    failure: Option<FailKind>,
    /// Leave running the processes the `-f` command starts and leaves
    /// behind (daemons) instead of stopping them when it ends.
    #[arg(long, requires = "function")]
    keep_processes: bool,
    /// Functions of config.yaml to run [default: all of them].
    #[arg(value_name = "FUNCTION")]
    functions: Vec<String>,
    /// The command of `-f`, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// The worker's settings: the `worker:` section with the options given
/// over it, the servers of the one rule (see [`super::servers`]), and the
/// functions to run (those named, the `-f` one, else all of the section's).
pub(crate) fn settings(args: &WorkerArgs, config: &Config) -> Result<WorkerConfig, Failure> {
    let mut cfg = config.worker.clone();
    args.config.apply(&mut cfg)?;
    cfg.validate()?;
    let mut functions = std::collections::BTreeMap::new();
    if let Some(name) = &args.function {
        let mut command = ShellCommand::argv(&args.command)
            .timeout(args.timeout)
            .keep_processes(args.keep_processes);
        if let Some(mode) = args.output {
            command = command.output(mode);
        }
        let mut f = FunctionConfig::command(command);
        f.failure = args.failure.unwrap_or_default();
        functions.insert(name.clone(), f);
    } else if !args.command.is_empty() {
        return Err(Failure("a command after `--` needs -f FUNCTION to name it".into()));
    }
    for name in &args.functions {
        match cfg.functions.get(name) {
            Some(f) => functions.insert(name.clone(), f.clone()),
            None if name == "echo" => functions.insert(name.clone(), FunctionConfig::echo()),
            None => {
                return Err(Failure(format!(
                    "unknown function `{name}`: define it under worker.functions in the config file, or use -f {name} -- COMMAND"
                )));
            }
        };
    }
    if args.function.is_some() || !args.functions.is_empty() {
        cfg.functions = functions;
    }
    if cfg.functions.is_empty() {
        return Err(Failure(
            "no function to run: name one (e.g. `gearframe worker echo`), use -f NAME -- COMMAND, or add worker.functions to the config file".into(),
        ));
    }
    let servers = super::servers(&args.servers, &cfg.servers, "worker.servers")?;
    cfg.servers = gearframe::config::ServerList::List(servers);
    Ok(cfg)
}

pub(crate) fn run(args: WorkerArgs, config: &Config) -> Result<ExitCode, Failure> {
    let cfg = settings(&args, config)?;
    let worker = start(&cfg)?;
    let stopper = worker.stopper();
    stop_on_signals(
        "gearframe worker",
        "their servers give them to another worker",
        stopper,
        cfg.grace,
    )?;
    eprintln!(
        "gearframe worker: {} slot(s) on {} for {}",
        worker.live_slots(),
        cfg.servers.entries().join(","),
        cfg.functions.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
    );
    worker.join();
    Ok(ExitCode::SUCCESS)
}

/// Starts a worker pool with these settings and functions.
pub(crate) fn start(config: &WorkerConfig) -> Result<Worker, Failure> {
    Ok(Worker::builder().config(config.clone()).build()?)
}

/// Ctrl-C or SIGTERM stops the pool: the first lets running jobs finish
/// within `grace` and says which they are, the second ends them at once
/// (`then`: what becomes of those jobs).
pub(crate) fn stop_on_signals(
    who: &'static str,
    then: &'static str,
    stopper: gearframe::worker::Stopper,
    grace: std::time::Duration,
) -> Result<(), Failure> {
    let mut signals = 0u32;
    ctrlc::set_handler(move || {
        signals += 1;
        let jobs = stopper.running();
        let list = jobs
            .iter()
            .map(|j| format!("{} {}", j.function, j.handle))
            .collect::<Vec<_>>()
            .join(", ");
        if signals == 1 {
            stopper.shutdown();
            if jobs.is_empty() {
                eprintln!("{who}: stopping: no job running");
            } else {
                eprintln!(
                    "{who}: stopping: waiting up to {grace:?} for {} running job(s) ({list}); Ctrl-C again to stop them now",
                    jobs.len()
                );
            }
        } else {
            stopper.stop_now();
            if !jobs.is_empty() {
                eprintln!(
                    "{who}: stopping now: ending {} running job(s) ({list}); {then}",
                    jobs.len()
                );
            }
        }
    })
    .map_err(|e| Failure(format!("cannot install the signal handler: {e}")))
}
