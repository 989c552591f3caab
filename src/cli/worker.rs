//! `gearframe worker`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use gearframe::config::{Config, FunctionSection, parse_duration};
use gearframe::worker::Worker;
use gearframe::worker::config::{FailureKey, OutputKey};

use super::Failure;

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
    /// Slots (threads and connections) per server [default: 10].
    #[arg(short = 't', long, value_name = "N")]
    threads: Option<usize>,
    /// Client id shown by the admin `workers` command (no short flag: -n is
    /// --interval) [default: worker.name, gearframe-worker-PID].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Registers FUNCTION to run the command given after `--`.
    #[arg(short = 'f', long = "function", value_name = "FUNCTION", requires = "command")]
    function: Option<String>,
    /// Wall-clock limit of each run of the `-f` command (e.g. 30s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "function")]
    timeout: Option<Duration>,
    /// Output of the `-f` command: capture (the result), stream (lines as
    /// WORK_DATA) or tty.
    #[arg(long, value_name = "MODE", value_parser = ["capture", "stream", "tty"], requires = "function")]
    output: Option<String>,
    /// How failures of the `-f` command are sent: auto (WORK_WARNING with the
    /// reason, then WORK_EXCEPTION where the server relays it safely, else
    /// WORK_FAIL), exception or fail [default: auto].
    #[arg(long, value_name = "HOW", value_parser = ["auto", "exception", "fail"], requires = "function")]
    failure: Option<String>,
    /// Leave running the processes the `-f` command starts and leaves
    /// behind (daemons) instead of stopping them when it ends.
    #[arg(long, requires = "function")]
    keep_processes: bool,
    /// How long running jobs may go on after Ctrl-C or SIGTERM (e.g. 30s); a
    /// second Ctrl-C or SIGTERM stops them at once [default: worker.grace of
    /// config.yaml, else 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    grace: Option<Duration>,
    /// Largest packet body accepted from a server, in bytes
    /// [default: worker.max_packet_size, 67108864].
    #[arg(long, value_name = "BYTES")]
    max_packet_size: Option<u32>,
    /// Functions of config.yaml to run [default: all of them].
    #[arg(value_name = "FUNCTION")]
    functions: Vec<String>,
    /// The command of `-f`, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

pub(crate) fn run(args: WorkerArgs, config: &Config) -> Result<ExitCode, Failure> {
    let section = &config.worker;
    section.validate()?;
    let mut functions: Vec<(String, FunctionSection)> = Vec::new();
    if let Some(name) = &args.function {
        let mut f = FunctionSection::command(args.command.clone());
        f.timeout = args.timeout.map(gearframe::config::DurationStr);
        f.keep_processes = args.keep_processes;
        f.output = match args.output.as_deref() {
            Some("stream") => OutputKey::Stream,
            Some("tty") => OutputKey::Tty,
            _ => OutputKey::Capture,
        };
        f.failure = match args.failure.as_deref() {
            Some("exception") => FailureKey::Exception,
            Some("fail") => FailureKey::Fail,
            _ => FailureKey::Auto,
        };
        functions.push((name.clone(), f));
    } else if !args.command.is_empty() {
        return Err(Failure("a command after `--` needs -f FUNCTION to name it".into()));
    }
    for name in &args.functions {
        match section.functions.get(name) {
            Some(f) => functions.push((name.clone(), f.clone())),
            None if name == "echo" => functions.push((name.clone(), FunctionSection::echo())),
            None => {
                return Err(Failure(format!(
                    "unknown function `{name}`: define it under worker.functions in the config file, or use -f {name} -- COMMAND"
                )));
            }
        }
    }
    if args.function.is_none() && args.functions.is_empty() {
        functions.extend(section.functions.iter().map(|(n, f)| (n.clone(), f.clone())));
    }
    if functions.is_empty() {
        return Err(Failure(
            "no function to run: name one (e.g. `gearframe worker echo`), use -f NAME -- COMMAND, or add worker.functions to the config file".into(),
        ));
    }
    let servers = super::servers(&args.servers, &section.servers, "worker.servers")?;
    let grace = args.grace.unwrap_or(section.grace.0);
    let mut config = config.clone();
    if let Some(n) = args.max_packet_size {
        config.worker.max_packet_size = n;
    }
    let worker = start(&config, &servers, &functions, args.threads, args.name.clone(), args.grace)?;
    let stopper = worker.stopper();
    stop_on_signals(
        "gearframe worker",
        "their servers give them to another worker",
        stopper,
        grace,
    )?;
    eprintln!(
        "gearframe worker: {} slot(s) on {} for {}",
        worker.live_slots(),
        servers.join(","),
        functions.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
    );
    worker.join();
    Ok(ExitCode::SUCCESS)
}

/// Starts a worker pool for `functions` on `servers`, with the `worker:`
/// section's name, slots and grace unless given.
pub(crate) fn start(
    config: &Config,
    servers: &[String],
    functions: &[(String, FunctionSection)],
    threads: Option<usize>,
    name: Option<String>,
    grace: Option<Duration>,
) -> Result<Worker, Failure> {
    let section = &config.worker;
    let mut builder = Worker::builder()
        .servers(servers)
        .client_id(name.unwrap_or_else(|| section.name.clone()))
        .threads(threads.unwrap_or(section.threads))
        .grace(grace.unwrap_or(section.grace.0))
        .busy_poll(section.busy_poll.0)
        .max_packet_size(section.max_packet_size)
        .push(section.push);
    for (name, f) in functions {
        let (handler, options) = f.to_function();
        builder = builder.register_arc(name.clone(), handler, options);
    }
    Ok(builder.build()?)
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
