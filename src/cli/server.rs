//! `gearframe server`.

use std::process::ExitCode;

use clap::Args;
use gearframe::config::{Config, parse_duration, parse_queue};
use gearframe::server::{AddrRule, Durability, Server};

use super::Failure;

/// Options of `gearframe server`; each overrides the `server:` key of the
/// same name in config.yaml.
#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// Address to listen on.
    #[arg(short = 'L', long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Drop a job once it was started N times (0 = unlimited).
    #[arg(short = 'j', long, value_name = "N")]
    job_retries: Option<u32>,
    /// NOOPs sent per queued job (0 = wake every sleeping worker).
    #[arg(short = 'w', long, value_name = "N")]
    worker_wakeup: Option<u32>,
    /// Rotate each worker's function order after every job.
    #[arg(short = 'R', long)]
    round_robin: bool,
    /// Job handle prefix [default: H:<hostname>:<port>:<start time>, unique per server and run].
    #[arg(long, value_name = "PREFIX")]
    job_handle_prefix: Option<String>,
    /// Largest packet body accepted, in bytes.
    #[arg(long, value_name = "BYTES")]
    max_packet_size: Option<u32>,
    /// Most connections served at once (0: the file descriptor limit minus 32).
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Every connection starts with the `exceptions` option on, as gearmand's
    /// --exceptions: clients that never asked get WORK_EXCEPTION too, and then
    /// pygearman waits forever and `gearman -f` exits 0 on a failed job (PHP,
    /// Perl and gear cope); gearframe workers then send failures as
    /// WORK_WARNING + WORK_FAIL.
    #[arg(long)]
    exceptions: bool,
    /// How long one write to a peer may block before it is disconnected (e.g. 30s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    write_timeout: Option<std::time::Duration>,
    /// How long a started packet or admin line may take to arrive before the connection is closed (e.g. 30s; 0: no limit).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    read_timeout: Option<std::time::Duration>,
    /// Most bytes held by partial packets across all connections (0 = unlimited).
    #[arg(long, value_name = "BYTES")]
    max_buffered_bytes: Option<usize>,
    /// How long a connection's reader polls for the next request before it blocks (e.g. 50us; 0: never).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    busy_poll: Option<std::time::Duration>,
    /// Persistent queue for background jobs: sqlite:PATH.
    #[arg(long, value_name = "sqlite:PATH", value_parser = parse_queue)]
    queue: Option<std::path::PathBuf>,
    /// Write the persistent queue only when the server stops, in one
    /// transaction (faster; a crash loses the jobs since the last start). A
    /// failed write keeps the rows stored before and exits non-zero.
    #[arg(long)]
    store_queue_on_shutdown: bool,
    /// maxqueue of every function until `maxqueue` changes it (0 = unlimited).
    #[arg(long, value_name = "N")]
    max_queue: Option<u32>,
    /// Most jobs held in total (0 = unlimited).
    #[arg(long, value_name = "N")]
    max_jobs: Option<usize>,
    /// Most payload bytes held in total (0 = unlimited).
    #[arg(long, value_name = "BYTES")]
    max_payload_bytes: Option<usize>,
    /// Allow admin commands that change state or list jobs and connections
    /// only from this address or network (repeatable; default: every peer).
    #[arg(long, value_name = "ADDR[/PREFIX]")]
    admin_allow: Vec<AddrRule>,
}

/// Appends `[default: ...]` to the help of each `server` option, taken from
/// [`ServerConfig::default`](gearframe::server::ServerConfig) so that the
/// defaults have one source. (clap's own `default_value` would make every
/// option look given and override the config file.)
pub(crate) fn show_defaults(cmd: clap::Command) -> clap::Command {
    let d = gearframe::server::ServerConfig::default();
    let dur = gearframe::config::format_duration;
    let defaults = [
        ("listen", d.listen.clone()),
        ("job_retries", d.job_retries.to_string()),
        ("worker_wakeup", d.worker_wakeup.to_string()),
        ("max_packet_size", d.max_packet_size.to_string()),
        ("max_connections", d.max_connections.to_string()),
        ("write_timeout", dur(d.write_timeout)),
        ("read_timeout", dur(d.read_timeout)),
        ("max_buffered_bytes", d.max_buffered_bytes.to_string()),
        ("busy_poll", dur(d.busy_poll)),
        ("max_queue", d.max_queue.to_string()),
        ("max_jobs", d.max_jobs.to_string()),
        ("max_payload_bytes", d.max_payload_bytes.to_string()),
    ];
    cmd.mut_subcommand("server", |mut sub| {
        for (id, value) in defaults {
            sub = sub.mut_arg(id, |a| {
                let help = a.get_help().map(ToString::to_string).unwrap_or_default();
                a.help(format!("{help} [default: {value}]"))
            });
        }
        sub
    })
}

pub(crate) fn run(args: ServerArgs, config: &Config) -> Result<ExitCode, Failure> {
    let mut cfg = config.server.to_server_config()?;
    if let Some(v) = args.listen {
        cfg.listen = v;
    }
    if let Some(v) = args.job_retries {
        cfg.job_retries = v;
    }
    if let Some(v) = args.worker_wakeup {
        cfg.worker_wakeup = v;
    }
    cfg.round_robin |= args.round_robin;
    if let Some(v) = args.job_handle_prefix {
        cfg.job_handle_prefix = Some(v);
    }
    if let Some(v) = args.max_packet_size {
        cfg.max_packet_size = v;
    }
    if let Some(v) = args.max_connections {
        cfg.max_connections = v;
    }
    cfg.exceptions |= args.exceptions;
    if let Some(v) = args.write_timeout {
        cfg.write_timeout = v;
    }
    if let Some(v) = args.read_timeout {
        cfg.read_timeout = v;
    }
    if let Some(v) = args.max_buffered_bytes {
        cfg.max_buffered_bytes = v;
    }
    if let Some(v) = args.busy_poll {
        cfg.busy_poll = v;
    }
    if let Some(v) = args.queue {
        cfg.queue = Some(v);
    }
    if args.store_queue_on_shutdown {
        cfg.durability = Durability::OnShutdown;
    }
    if let Some(v) = args.max_queue {
        cfg.max_queue = v;
    }
    if let Some(v) = args.max_jobs {
        cfg.max_jobs = v;
    }
    if let Some(v) = args.max_payload_bytes {
        cfg.max_payload_bytes = v;
    }
    if !args.admin_allow.is_empty() {
        cfg.admin_allow = args.admin_allow;
    }
    super::raise_fd_limit();
    let server = Server::bind(cfg)?;
    let stopper = server.stopper();
    ctrlc::set_handler(move || {
        eprintln!("gearframe server: signal received: stopping");
        stopper.shutdown();
    })
    .map_err(|e| Failure(format!("cannot install the signal handler: {e}")))?;
    eprintln!("gearframe server listening on {} ({})", server.local_addr(), server.capacity());
    // A shutdown dump that could not be written fails the exit.
    server.join_result().map_err(Failure)?;
    Ok(ExitCode::SUCCESS)
}
