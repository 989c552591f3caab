//! `gearframe up`: the single-binary deployment. The embedded server and
//! the configured worker pool in one process, until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Args;
use gearframe::config::Config;
use gearframe::server::Server;

use super::Failure;

/// Options of `gearframe up`.
#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Address of the embedded server [default: server.listen of config.yaml].
    #[arg(short = 'L', long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Slots per server for the worker pool [default: worker.threads].
    #[arg(short = 't', long, value_name = "N")]
    threads: Option<usize>,
}

/// A worker server list that names only this server (or nothing) means the
/// embedded server is the one to start.
fn wants_embedded(worker_servers: &[String], listen: &str) -> bool {
    let norm = |s: &str| gearframe::conn::with_default_port(s);
    worker_servers.is_empty() || worker_servers.iter().all(|s| norm(s) == norm(listen))
}

pub(crate) fn run(args: UpArgs, config: &Config) -> Result<ExitCode, Failure> {
    config.worker.validate()?;
    let mut server_cfg = config.server.to_server_config()?;
    if let Some(l) = args.listen {
        server_cfg.listen = l;
    }
    let functions: Vec<_> =
        config.worker.functions.iter().map(|(n, f)| (n.clone(), f.clone())).collect();
    if functions.is_empty() {
        return Err(Failure(
            "no function to run: add worker.functions to the config file (see config.yaml)".into(),
        ));
    }
    let configured = config.worker.servers.to_vec();
    let server = if wants_embedded(&configured, &server_cfg.listen) {
        super::raise_fd_limit();
        Some(Server::bind(server_cfg)?)
    } else {
        None
    };
    let servers: Vec<String> = match &server {
        Some(s) => vec![connect_addr(s.local_addr()).to_string()],
        None => configured,
    };
    let worker = super::worker::start(config, &servers, &functions, args.threads, None, None)?;
    let worker_stop = worker.stopper();
    ctrlc::set_handler(move || {
        log::info!("signal received: stopping");
        worker_stop.shutdown();
    })
    .map_err(|e| Failure(format!("cannot install the signal handler: {e}")))?;
    match &server {
        Some(s) => {
            println!("gearframe up: job server listening on {} ({})", s.local_addr(), s.capacity());
        }
        None => println!("gearframe up: using job servers {}", servers.join(",")),
    }
    println!(
        "gearframe up: {} worker slot(s) for {}; Ctrl-C stops",
        worker.live_slots(),
        functions.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
    );
    // Running jobs finish (within worker.grace) and report to the server
    // before the server stops.
    worker.join();
    if let Some(s) = server {
        s.shutdown();
        s.join();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_unless_servers_point_elsewhere() {
        assert!(wants_embedded(&[], "127.0.0.1:4730"));
        assert!(wants_embedded(&["127.0.0.1".into()], "127.0.0.1:4730"));
        assert!(!wants_embedded(&["jobs.example:4730".into()], "127.0.0.1:4730"));
    }
}
