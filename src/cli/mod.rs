//! Command-line parsing and the subcommands.

mod admin;
mod bench;
mod demo;
mod flags;
mod send;
mod server;
mod submit;
mod up;
mod worker;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use gearframe::config::Config;

/// A Gearman job framework: job server, client, worker and admin tool in one binary.
#[derive(Debug, Parser)]
#[command(name = "gearframe", version, about, max_term_width = 100, arg_required_else_help = true)]
pub(crate) struct Cli {
    /// Config file (default: ./config.yaml when it exists).
    #[arg(short = 'c', long, global = true, env = "GEARFRAME_CONFIG")]
    config: Option<PathBuf>,
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short = 'v', long, global = true, action = clap::ArgAction::Count, display_order = 900)]
    verbose: u8,
    /// Only errors in the log.
    #[arg(short = 'q', long, global = true, display_order = 900)]
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
    /// Set once a write to the file failed: every line goes to stderr then.
    file_failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// The log file: the first failed write (a full disk) is reported once on
/// stderr, naming the file and the cause, and the logger falls back to
/// stderr.
#[derive(Debug)]
struct LogFile {
    file: std::fs::File,
    path: PathBuf,
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::io::Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::sync::atomic::Ordering;
        if self.failed.load(Ordering::Relaxed) {
            return Ok(buf.len());
        }
        if let Err(e) = self.file.write_all(buf) {
            self.failed.store(true, Ordering::Relaxed);
            eprintln!(
                "gearframe: log.file: cannot write {}: {e}; logging to stderr from now on (free space or fix log.file)",
                self.path.display()
            );
            let _ = std::io::stderr().write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.stderr.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        match &self.file {
            Some(file) if !self.file_failed.load(std::sync::atomic::Ordering::Relaxed) => {
                file.log(record);
                if record.level() == log::Level::Error {
                    self.stderr.log(record);
                }
            }
            _ => self.stderr.log(record),
        }
    }

    fn flush(&self) {
        self.stderr.flush();
        if let Some(f) = &self.file {
            f.flush();
        }
    }
}

/// clap's usage error in one line: the error, its tips ("a similar
/// subcommand exists"), and where to read more; the usage synopsis is left out.
fn usage_error_line(text: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut in_usage = false;
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() {
            in_usage = false;
            continue;
        }
        if l.starts_with("Usage:") {
            in_usage = true;
            continue;
        }
        if in_usage {
            continue;
        }
        let l = l.strip_prefix("error: ").unwrap_or(l);
        let l = l.strip_suffix('.').unwrap_or(l);
        match parts.last_mut() {
            // A message that goes on over several lines stays one part.
            Some(last) if !l.starts_with("tip:") && !l.starts_with("For more") => {
                last.push(' ');
                last.push_str(l);
            }
            _ => parts.push(l.to_string()),
        }
    }
    parts.join("; ").replace("For more information, try", "for more information, try")
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
    let file_failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let file = match &section.file {
        Some(path) => {
            let fail = |what: &str, p: &Path, e: std::io::Error| {
                Failure(format!(
                    "log.file: cannot {what} {}: {e}; fix log.file in the config file",
                    p.display()
                ))
            };
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| fail("create", dir, e))?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| fail("open", path, e))?;
            let f = LogFile { file: f, path: path.clone(), failed: file_failed.clone() };
            Some(builder().target(env_logger::Target::Pipe(Box::new(f))).build())
        }
        None => None,
    };
    log::set_max_level(stderr.filter());
    log::set_boxed_logger(Box::new(Logger { stderr, file, file_failed }))
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
    let command = Cli::command();
    let cli = match command.try_get_matches().and_then(|m| Cli::from_arg_matches(&m)) {
        Ok(cli) => cli,
        Err(e)
            if !e.use_stderr()
                || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => {
            eprintln!("gearframe: {}", usage_error_line(&e.render().to_string()));
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::CommandFactory;

    use super::Cli;

    /// Every short flag of every subcommand, with the long names it stands for.
    fn short_flags() -> BTreeMap<char, BTreeMap<String, Vec<String>>> {
        fn walk(
            cmd: &clap::Command,
            path: &str,
            out: &mut BTreeMap<char, BTreeMap<String, Vec<String>>>,
        ) {
            for a in cmd.get_arguments() {
                if let Some(c) = a.get_short() {
                    let long = a.get_long().unwrap_or(a.get_id().as_str()).to_string();
                    out.entry(c).or_default().entry(long).or_default().push(path.to_string());
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), out);
            }
        }
        let mut out = BTreeMap::new();
        walk(&Cli::command(), "gearframe", &mut out);
        out
    }

    #[test]
    fn usage_errors_keep_their_tips_in_one_line() {
        let e = Cli::command().try_get_matches_from(["gearframe", "sumbit"]).unwrap_err();
        let line = super::usage_error_line(&e.render().to_string());
        assert_eq!(
            line,
            "unrecognized subcommand 'sumbit'; tip: a similar subcommand exists: 'submit'; for more information, try '--help'"
        );
    }

    #[test]
    fn server_help_shows_the_defaults_of_the_config_type() {
        let mut cmd = Cli::command();
        let help = cmd.find_subcommand_mut("server").unwrap().render_long_help().to_string();
        let d = gearframe::server::ServerConfig::default();
        for want in [
            format!("[default: {}]", d.listen),
            format!("[default: {}]", d.max_packet_size),
            format!("[default: {}]", gearframe::config::format_duration(d.write_timeout)),
            format!("[default: {}]", d.max_buffered_bytes),
        ] {
            assert!(help.contains(&want), "{want} missing in\n{help}");
        }
        assert!(help.contains("[default: 30s]"), "{help}");
    }

    #[test]
    fn each_short_flag_has_one_meaning() {
        let mut flags = short_flags();
        // `gearframe admin -h HOST` is gearadmin's own flag, kept so that
        // gearadmin scripts run unchanged; its subcommands keep -h for help.
        if let Some(h) = flags.get_mut(&'h') {
            assert_eq!(h.remove("host"), Some(vec!["gearframe admin".to_string()]));
        }
        let twice: Vec<_> = flags.iter().filter(|(_, m)| m.len() > 1).collect();
        assert!(twice.is_empty(), "short flags with two meanings: {twice:?}");
    }
}
