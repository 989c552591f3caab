//! `gearframe up`: the single-binary deployment. The embedded server and
//! the configured worker pool in one process, until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Args;
use gearframe::config::Config;
use gearframe::server::{Server, ServerConfig};

use super::Failure;
use super::flags::Flags;

/// Options of `gearframe up`: those of `gearframe server` for the embedded
/// server (the only one the worker pool serves), and the pool's.
#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    #[command(flatten)]
    server: Flags<ServerConfig>,
    /// Slots per server for the worker pool [default: worker.threads].
    #[arg(short = 't', long, value_name = "N")]
    threads: Option<usize>,
}

pub(crate) fn run(args: UpArgs, config: &Config) -> Result<ExitCode, Failure> {
    config.worker.validate()?;
    let server_cfg = super::server::settings(&args.server, config)?;
    if config.worker.functions.is_empty() {
        return Err(Failure(
            "no function to run: add worker.functions to the config file (see config.yaml)".into(),
        ));
    }
    let configured =
        config.worker.servers.to_vec().map_err(|e| Failure(format!("worker.servers: {e}")))?;
    super::raise_fd_limit();
    let server = Server::bind(server_cfg)?;
    // The pool serves this process's server only: worker.servers and
    // GEARMAN_SERVERS are for `gearframe worker`.
    let own = connect_addr(server.local_addr()).to_string();
    if configured.iter().any(|s| *s != own) {
        eprintln!(
            "gearframe up: worker.servers ({}) is not used: the worker pool serves this process's server at {own}; run `gearframe worker` to serve other servers",
            configured.join(",")
        );
    }
    let mut cfg = config.worker.clone();
    cfg.servers = gearframe::config::ServerList::List(vec![own]);
    if let Some(n) = args.threads {
        cfg.threads = n;
    }
    let worker = super::worker::start(&cfg)?;
    super::worker::stop_on_signals(
        "gearframe up",
        "they go back to this server's queue, kept only with a persistent queue",
        worker.stopper(),
        cfg.grace,
    )?;
    println!(
        "gearframe up: job server listening on {} ({})",
        server.local_addr(),
        server.capacity()
    );
    println!(
        "gearframe up: {} worker slot(s) for {}; Ctrl-C stops",
        worker.live_slots(),
        cfg.functions.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
    );
    // Running jobs finish (within worker.grace) and report to the server
    // before the server stops.
    worker.join();
    server.shutdown();
    server.join();
    println!("gearframe up: stopped");
    Ok(ExitCode::SUCCESS)
}

/// The address to connect to for a listening address (0.0.0.0 → 127.0.0.1).
pub(crate) fn connect_addr(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip = if addr.is_ipv4() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}
