//! `gearframe submit`: one job, close to the `gearman` command-line client.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use gearframe::client::{Client, ClientConfig, Job, JobEvent, JobOutcome};
use gearframe::config::{Config, ServerList, parse_duration};
use gearframe::proto::Priority;

use super::Failure;
use super::flags::Flags;

/// Where to find the servers and the client settings given as options;
/// shared by `submit` and `send`.
#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// Job server HOST[:PORT] (repeat, or separate with commas); replaces
    /// every other list [default: GEARMAN_SERVERS, else client.servers, else
    /// 127.0.0.1:4730].
    #[arg(short = 's', long = "server", value_name = "HOST:PORT")]
    servers: Vec<String>,
    /// The `client:` settings given as options.
    #[command(flatten)]
    config: Flags<ClientConfig>,
}

impl ServerArgs {
    /// The `client:` section with the options given over it, and the
    /// servers of the one rule (see [`super::servers`]).
    pub(crate) fn client_config(&self, config: &Config) -> Result<ClientConfig, Failure> {
        let mut cfg = config.client.clone();
        self.config.apply(&mut cfg)?;
        let servers = super::servers(&self.servers, &cfg.servers, "client.servers")?;
        cfg.servers = ServerList::List(servers);
        Ok(cfg)
    }
}

/// Options of `gearframe submit`.
#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    /// Function to run.
    #[arg(short = 'f', long, value_name = "FUNCTION")]
    function: String,
    /// The payload, joined with spaces [default: read from stdin].
    #[arg(value_name = "DATA")]
    data: Vec<String>,
    /// Background job: print its handle once the server accepted it.
    #[arg(short = 'b', long)]
    background: bool,
    /// Priority: high, normal or low [default: normal].
    #[arg(long, value_name = "PRIORITY", value_parser = parse_priority, conflicts_with_all = ["high", "low"])]
    priority: Option<Priority>,
    /// High priority (same as --priority high).
    #[arg(short = 'I', long = "high", conflicts_with = "low")]
    high: bool,
    /// Low priority (same as --priority low; no short flag: -L is --listen).
    #[arg(long = "low")]
    low: bool,
    /// Unique id: jobs with the same one coalesce [default: random].
    #[arg(short = 'u', long, value_name = "UNIQUE")]
    unique: Option<String>,
    /// Epoch job: run at a Unix time in seconds, or +DURATION from now
    /// (e.g. +90s); implies --background.
    #[arg(long, value_name = "TIME", value_parser = parse_at)]
    at: Option<u64>,
    #[command(flatten)]
    server: ServerArgs,
}

fn parse_priority(s: &str) -> Result<Priority, String> {
    s.parse()
}

/// `1700000000` or `+90s`.
pub(crate) fn parse_at(s: &str) -> Result<u64, String> {
    if let Some(rel) = s.strip_prefix('+') {
        let d = parse_duration(rel)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?;
        return Ok((now + d).as_secs());
    }
    s.parse::<u64>().map_err(|_| {
        format!("invalid time `{s}`: give Unix seconds (1700000000) or +DURATION (+90s)")
    })
}

/// The client's settings and the job, from the options over the file.
fn settings(args: SubmitArgs, config: &Config) -> Result<(ClientConfig, Job), Failure> {
    let cfg = args.server.client_config(config)?;
    let priority = if args.high {
        Priority::High
    } else if args.low {
        Priority::Low
    } else {
        args.priority.unwrap_or_default()
    };
    let payload = if args.data.is_empty() {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| Failure(format!("cannot read the payload from stdin: {e}")))?;
        buf
    } else {
        args.data.join(" ").into_bytes()
    };
    let mut job = Job::new(args.function, payload).priority(priority);
    if let Some(u) = args.unique {
        job = job.unique(u);
    }
    if let Some(at) = args.at {
        job = job.at_unix(at);
    } else if args.background {
        job = job.background(true);
    }
    Ok((cfg, job))
}

pub(crate) fn run(args: SubmitArgs, config: &Config, verbose: u8) -> Result<ExitCode, Failure> {
    let (cfg, job) = settings(args, config)?;
    let client = Client::with_config(cfg)?;

    let stdout = std::io::stdout();
    let tty = stdout.is_terminal();
    let mut out = stdout.lock();
    let mut wrote_error = None;
    // A warning is printed when the next event comes, so that the warning
    // a worker sends with its failure is not printed twice: it is the
    // failure's reason, printed below.
    let mut warning: Option<String> = None;
    let show = |w: &mut Option<String>| {
        if let Some(w) = w.take() {
            eprintln!("warning: {w}");
        }
    };
    let outcome = client.submit_job_with(&job, |e| {
        if !matches!(e, JobEvent::Warning(_)) {
            show(&mut warning);
        }
        match e {
            JobEvent::Data(d) => {
                if let Err(e) = out.write_all(d).and_then(|()| out.flush()) {
                    wrote_error.get_or_insert(e);
                }
            }
            JobEvent::Warning(w) => {
                show(&mut warning);
                warning = Some(String::from_utf8_lossy(w).into_owned());
            }
            JobEvent::Status { numerator, denominator } if verbose > 0 => {
                eprintln!("status: {numerator}/{denominator}");
            }
            JobEvent::Created(h) if verbose > 0 => eprintln!("handle: {h} on {}", h.server()),
            JobEvent::Resubmitted { reason } => eprintln!("resubmitting: {reason}"),
            _ => {}
        }
    });
    if warning.as_deref().is_some_and(|w| {
        outcome.as_ref().ok().and_then(JobOutcome::reason).as_deref()
            != Some(w.trim_end_matches(['\0', '\n']))
    }) {
        show(&mut warning);
    }
    let outcome = outcome?;
    if let Some(e) = wrote_error {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Ok(ExitCode::SUCCESS);
        }
        return Err(Failure(format!("cannot write to stdout: {e}")));
    }
    let write = |out: &mut std::io::StdoutLock<'_>, d: &[u8]| -> std::io::Result<()> {
        out.write_all(d)?;
        if tty && !d.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
        out.flush()
    };
    let res = match &outcome {
        JobOutcome::Complete { data, .. } => write(&mut out, data),
        JobOutcome::Accepted { handle } => write(&mut out, format!("{handle}\n").as_bytes()),
        failed @ (JobOutcome::Failed { .. } | JobOutcome::Exception { .. }) => {
            let handle = failed.handle();
            eprintln!(
                "gearframe: job {handle} failed: {} (function {}, server {})",
                failed.reason().unwrap_or_default(),
                job.function(),
                handle.server()
            );
            return Ok(ExitCode::from(1));
        }
        other => {
            eprintln!("gearframe: job {}", other.name());
            return Ok(ExitCode::from(1));
        }
    };
    match res {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure(format!("cannot write to stdout: {e}")))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_times() {
        assert_eq!(parse_at("1700000000"), Ok(1_700_000_000));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let t = parse_at("+90s").unwrap();
        assert!((now + 89..=now + 91).contains(&t));
        assert!(parse_at("tomorrow").unwrap_err().contains("+DURATION"));
    }
}

#[cfg(test)]
mod flag_tests {
    use std::time::Duration;

    use clap::Parser;
    use gearframe::client::ClientConfig;
    use gearframe::config::{Config, ServerList};

    use super::{SubmitArgs, settings};

    #[derive(Debug, Parser)]
    struct Line {
        #[command(flatten)]
        args: SubmitArgs,
    }

    const FILE: &str =
        "client:\n  servers: [file:1]\n  job_timeout: 7s\n  max_packet_size: 1000\n  window: 3\n";

    fn applied(args: &[&str]) -> ClientConfig {
        let line =
            Line::try_parse_from(["submit", "-f", "f"].into_iter().chain(args.iter().copied()))
                .unwrap_or_else(|e| panic!("{e}"));
        settings(line.args, &Config::read(FILE).unwrap()).unwrap_or_else(|e| panic!("{}", e.0)).0
    }

    #[test]
    fn flags_left_out_keep_the_file_values() {
        assert_eq!(applied(&["x"]), Config::read(FILE).unwrap().client);
    }

    #[test]
    fn each_flag_overrides_its_key() {
        let c = applied(&["--timeout", "2s", "--max-packet-size", "2000", "-s", "cli", "x"]);
        assert_eq!(c.job_timeout, Duration::from_secs(2));
        assert_eq!(c.max_packet_size, 2000);
        assert_eq!(c.servers, ServerList::List(vec!["cli:4730".into()]));
        assert_eq!(c.window, 3, "a key without a flag keeps the file's value");
    }
}
