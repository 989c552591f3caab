//! Shared test helpers: finding the real peers, and guards that start and
//! stop servers on ephemeral loopback ports.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gearframe::server::{Server, ServerConfig, ServerHandle};

/// Finds a peer executable (gearmand, gearman, gearadmin, python3 modules...).
///
/// When it is missing: with `GEARFRAME_REQUIRE_PEERS=1` (as in CI) the test
/// fails; otherwise a loud line is printed and `None` returned, so the test
/// returns early having checked nothing.
pub fn peer(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    if let Some(found) = dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()) {
        return Some(found);
    }
    missing(name)
}

/// Reports a missing peer (see [`peer`]).
pub fn missing<T>(what: &str) -> Option<T> {
    if std::env::var("GEARFRAME_REQUIRE_PEERS").as_deref() == Ok("1") {
        panic!("required peer `{what}` is not installed (GEARFRAME_REQUIRE_PEERS=1)");
    }
    eprintln!("PEER MISSING: {what} not found; this test checks nothing here");
    None
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something accepts connections on `addr`.
pub fn wait_listening(addr: SocketAddr, limit: Duration) {
    let deadline = Instant::now() + limit;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr} after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Options both servers understand.
#[derive(Debug, Clone, Default)]
pub struct Opts {
    pub job_retries: u32,
    pub worker_wakeup: u32,
    pub round_robin: bool,
}

/// gearmand on an ephemeral loopback port, killed and reaped on drop.
pub struct Gearmand {
    child: Child,
    addr: SocketAddr,
}

impl Gearmand {
    /// Starts gearmand, or returns `None` when it is not installed.
    pub fn start(opts: &Opts) -> Option<Gearmand> {
        let bin = peer("gearmand")?;
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg("--log-file=none")
            .arg(format!("--job-retries={}", opts.job_retries))
            .arg(format!("--worker-wakeup={}", opts.worker_wakeup));
        if opts.round_robin {
            cmd.arg("--round-robin");
        }
        let child =
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let g = Gearmand { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) };
        wait_listening(g.addr, Duration::from_secs(10));
        Some(g)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Gearmand {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// gearframe's embedded server on an ephemeral loopback port, stopped and
/// joined on drop.
pub struct Ours {
    handle: Option<ServerHandle>,
    addr: SocketAddr,
}

impl Ours {
    pub fn start(opts: &Opts) -> Ours {
        Ours::with_config(ServerConfig {
            job_retries: opts.job_retries,
            worker_wakeup: opts.worker_wakeup,
            round_robin: opts.round_robin,
            ..ServerConfig::default()
        })
    }

    /// Starts with a full config; `listen` is always replaced by 127.0.0.1:0.
    pub fn with_config(config: ServerConfig) -> Ours {
        let handle = Server::bind(ServerConfig { listen: "127.0.0.1:0".into(), ..config }).unwrap();
        let addr = handle.local_addr();
        Ours { handle: Some(handle), addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().unwrap()
    }

    /// Stops the server and waits for all its threads.
    pub fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
            h.join();
        }
    }
}

impl Drop for Ours {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
            h.join();
        }
    }
}

/// A child process killed and reaped on drop.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` until it returns `Some`, failing the test after `limit`.
pub fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
