//! Command-line parsing and the subcommands.

mod bench;
mod send;
mod server;
mod submit;
mod worker;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gearframe::config::Config;

/// A Gearman job framework: job server, client, worker and admin tool in one binary.
#[derive(Debug, Parser)]
#[command(name = "gearframe", version, about, max_term_width = 100)]
pub(crate) struct Cli {
    /// Config file (default: ./config.yaml when it exists).
    #[arg(short = 'c', long, global = true, env = "GEARFRAME_CONFIG")]
    config: Option<PathBuf>,
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short = 'v', long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors in the log.
    #[arg(short = 'q', long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the job server (a drop-in for gearmand).
    Server(server::ServerArgs),
    /// Run a worker: registered functions run shell commands (or echo).
    Worker(worker::WorkerArgs),
    /// Submit one job and print its result (like `gearman -f`).
    Submit(submit::SubmitArgs),
    /// Submit a job plan, once or every cycle.
    Send(send::SendArgs),
    /// Measure throughput and latency, against gearmand and libgearman too.
    Bench(bench::BenchArgs),
}

/// An error for the user: printed as one line, exit code 2.
#[derive(Debug)]
pub(crate) struct Failure(pub(crate) String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let env = env_logger::Env::default().default_filter_or(default);
    env_logger::Builder::from_env(env).format_timestamp_millis().init();
}

/// Loads the config file named with `-c`, or ./config.yaml when present.
fn load_config(path: Option<&Path>) -> Result<Config, Failure> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => {
            let p = Path::new("config.yaml");
            if p.exists() { Ok(Config::load(p)?) } else { Ok(Config::default()) }
        }
    }
}

pub(crate) fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // One line: clap's message up to its first blank line.
            let text = e.render().to_string();
            let msg: Vec<&str> =
                text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
            eprintln!("gearframe: {}", msg.join(" ").trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    init_logging(cli.verbose, cli.quiet);
    let result = load_config(cli.config.as_deref()).and_then(|config| match cli.command {
        Command::Server(args) => server::run(args, &config),
        Command::Worker(args) => worker::run(args, &config),
        Command::Submit(args) => submit::run(args, &config, cli.verbose),
        Command::Send(args) => send::run(args, &config),
        Command::Bench(args) => bench::run(args),
    });
    match result {
        Ok(code) => code,
        Err(Failure(msg)) => {
            eprintln!("gearframe: error: {msg}");
            ExitCode::from(2)
        }
    }
}
