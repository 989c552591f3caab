//! Command-line parsing and the subcommands.

mod admin;
mod bench;
mod demo;
mod send;
mod server;
mod submit;
mod up;
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
    /// Watch and steer servers: status, workers, queues, stop workers.
    Admin(admin::AdminArgs),
    /// Run the job server and the configured worker pool in one process.
    Up(up::UpArgs),
    /// Show the whole framework at work in one process, then stop.
    Demo(demo::DemoArgs),
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

/// Log lines go to stderr, or to the configured file with errors also on
/// stderr.
#[derive(Debug)]
struct Logger {
    stderr: env_logger::Logger,
    file: Option<env_logger::Logger>,
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.stderr.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        match &self.file {
            Some(file) => {
                file.log(record);
                if record.level() == log::Level::Error {
                    self.stderr.log(record);
                }
            }
            None => self.stderr.log(record),
        }
    }

    fn flush(&self) {
        self.stderr.flush();
        if let Some(f) = &self.file {
            f.flush();
        }
    }
}

/// Installs the logger: `-q`/`-v` choose the level, else `log.level`;
/// `RUST_LOG` overrides both; `log.file` gets a copy of every line.
fn init_logging(
    verbose: u8,
    quiet: bool,
    section: &gearframe::config::LogSection,
) -> Result<(), Failure> {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => section.level.as_str(),
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let builder = || {
        let env = env_logger::Env::default().default_filter_or(default);
        let mut b = env_logger::Builder::from_env(env);
        b.format_timestamp_millis();
        b
    };
    let stderr = builder().build();
    let file = match &section.file {
        Some(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    Failure(format!("log.file: cannot create {}: {e}", dir.display()))
                })?;
            }
            let f =
                std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| {
                    Failure(format!("log.file: cannot open {}: {e}", path.display()))
                })?;
            Some(builder().target(env_logger::Target::Pipe(Box::new(f))).build())
        }
        None => None,
    };
    log::set_max_level(stderr.filter());
    log::set_boxed_logger(Box::new(Logger { stderr, file }))
        .map_err(|e| Failure(format!("cannot install the logger: {e}")))
}

/// Raises the soft file descriptor limit to the hard one before a command
/// starts a server; a failure only leaves the limit as it was.
pub(crate) fn raise_fd_limit() {
    if let Err(e) = gearframe::server::raise_fd_limit() {
        log::warn!("{e}; serving within the current limit (raise it with ulimit -n)");
    }
}

/// The servers of a command, by the one rule of the README's "Which servers"
/// section: `-s` (all its values) replaces every other list, else
/// `GEARMAN_SERVERS`, else the config section's list (`key`), else
/// 127.0.0.1:4730.
pub(crate) fn servers(
    flags: &[String],
    section: &gearframe::config::ServerList,
    key: &str,
) -> Result<Vec<String>, Failure> {
    let configured = section.to_vec().map_err(|e| Failure(format!("{key}: {e}")))?;
    let explicit = (!flags.is_empty()).then_some(flags);
    gearframe::conn::resolve_servers(explicit, &configured).map_err(|e| match explicit {
        Some(_) => Failure(format!("-s: {e}")),
        None => Failure(e.to_string()),
    })
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
    let result = load_config(cli.config.as_deref()).and_then(|config| {
        init_logging(cli.verbose, cli.quiet, &config.log)?;
        Ok(config)
    });
    let result = result.and_then(|config| match cli.command {
        Command::Server(args) => server::run(args, &config),
        Command::Worker(args) => worker::run(args, &config),
        Command::Submit(args) => submit::run(args, &config, cli.verbose),
        Command::Send(args) => send::run(args, &config),
        Command::Admin(args) => admin::run(args, &config),
        Command::Up(args) => up::run(args, &config),
        Command::Demo(args) => demo::run(args, &config),
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
