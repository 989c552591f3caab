//! The embedded job server (work in progress: API only).

use std::io;
use std::net::SocketAddr;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on, such as `127.0.0.1:4730` or `127.0.0.1:0`.
    pub listen: String,
    /// Drop a job after it was started this many times (0 = unlimited).
    pub job_retries: u32,
    /// NOOPs sent per queued job (0 = wake every sleeping worker).
    pub worker_wakeup: u32,
    /// Rotate the function order of each worker after every grab.
    pub round_robin: bool,
    /// Prefix of job handles (default `H:<hostname>`).
    pub job_handle_prefix: Option<String>,
    /// Largest accepted packet body in bytes.
    pub max_packet_size: u32,
    /// Most connections served at once.
    pub max_connections: usize,
    /// Every connection starts with the `exceptions` option on.
    pub exceptions: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:4730".into(),
            job_retries: 0,
            worker_wakeup: 0,
            round_robin: false,
            job_handle_prefix: None,
            max_packet_size: crate::proto::DEFAULT_MAX_BODY,
            max_connections: 10_000,
            exceptions: false,
        }
    }
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
}

/// Entry point.
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Binds and starts serving on background threads.
    pub fn bind(_config: ServerConfig) -> io::Result<ServerHandle> {
        Err(io::Error::other("server not implemented yet"))
    }
}

impl ServerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
    /// Stops at once: closes the listener and every connection.
    pub fn shutdown(&self) {}
    /// Waits for every thread to finish.
    pub fn join(self) {}
}
