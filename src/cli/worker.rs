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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;
    use gearframe::config::{Config, ServerList};
    use gearframe::worker::FailKind;
    use gearframe::worker::shell::{OutputMode, ShellCommand};

    use super::{WorkerArgs, settings};

    #[derive(Debug, Parser)]
    struct Line {
        #[command(flatten)]
        args: WorkerArgs,
    }

    /// A file whose every key a flag sets differs from the default.
    const FILE: &str = "worker:\n  name: file\n  threads: 3\n  servers: [file:1]\n  grace: 7s\n  max_packet_size: 1000\n  busy_poll: 0\n  functions:\n    up:\n      shell: tr a-z A-Z\n";

    fn applied(args: &[&str]) -> gearframe::worker::WorkerConfig {
        let line = Line::try_parse_from(std::iter::once("worker").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{e}"));
        settings(&line.args, &Config::read(FILE).unwrap()).unwrap_or_else(|e| panic!("{}", e.0))
    }

    #[test]
    fn flags_left_out_keep_the_file_values() {
        let file = Config::read(FILE).unwrap().worker;
        let w = applied(&[]);
        assert_eq!(w.servers, ServerList::List(vec!["file:1".into()]));
        assert_eq!(w, gearframe::worker::WorkerConfig { servers: w.servers.clone(), ..file });
    }

    #[test]
    fn each_flag_overrides_its_key() {
        let w = applied(&[
            "-t",
            "5",
            "--name",
            "cli",
            "--grace",
            "1s",
            "--max-packet-size",
            "2000",
            "-s",
            "cli:2",
        ]);
        assert_eq!(w.threads, 5);
        assert_eq!(w.name.as_deref(), Some("cli"));
        assert_eq!(w.grace, Duration::from_secs(1));
        assert_eq!(w.max_packet_size, 2000);
        assert_eq!(w.servers, ServerList::List(vec!["cli:2".into()]));
        assert_eq!(w.busy_poll, Duration::ZERO, "a key without a flag keeps the file's value");
        assert!(w.functions.contains_key("up"));
    }

    #[test]
    fn function_flags_set_the_command() {
        let w = applied(&["-f", "wc", "--timeout", "5s", "--", "wc", "-l"]);
        assert_eq!(w.functions.keys().collect::<Vec<_>>(), ["wc"], "only the -f function");
        let f = &w.functions["wc"];
        assert_eq!(
            f.command,
            ShellCommand::argv(["wc", "-l"]).timeout(Some(Duration::from_secs(5)))
        );
        assert_eq!(f.failure, FailKind::Auto);
        let w = applied(&[
            "-f",
            "s",
            "--output",
            "stream",
            "--failure",
            "exception",
            "--keep-processes",
            "up",
            "--",
            "cat",
        ]);
        assert_eq!(w.functions.keys().collect::<Vec<_>>(), ["s", "up"]);
        let f = &w.functions["s"];
        let want = ShellCommand::argv(["cat"]).output(OutputMode::Stream).keep_processes(true);
        assert_eq!(f.command, want);
        assert_eq!(f.command.get_timeout(), None);
        assert_eq!(f.failure, FailKind::Exception);
    }
}
