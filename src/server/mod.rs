//! The embedded job server: a drop-in for gearmand on blocking sockets and
//! threads.
//!
//! ```text
//!             accept thread ──spawns──▶ per connection: reader thread ┄┄▶ writer thread
//!                                              │  decode, lock state,   (only while the
//!                                              │  apply, append replies  peer's socket is
//!                                              │  to outboxes, unlock,   full)
//!                                              ▼  send them (no blocking)
//!                           Mutex<State>  ◀── timer thread (CAN_DO_TIMEOUT, epoch jobs)
//! ```
//!
//! One mutex guards all queues and registrations, so commands apply in one
//! order as in gearmand's single processing thread; no socket I/O ever
//! happens under it. Replies are appended to bounded per-connection
//! outboxes; once the lock is released, the thread that produced them sends
//! them with non-blocking writes, one write per connection and batch. Only
//! when a peer's socket buffer is full does a writer thread for that
//! connection take over with blocking writes; a peer that stops reading is
//! disconnected once its outbox is full, and cannot stall anyone else.
//!
//! ```no_run
//! use gearframe::server::{Server, ServerConfig};
//! let server = Server::bind(ServerConfig { listen: "127.0.0.1:0".into(), ..Default::default() })?;
//! println!("listening on {}", server.local_addr());
//! server.shutdown();
//! server.join();
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Names in admin listings
//!
//! Function names and client ids are printed by `status` and `workers`,
//! whose columns are split by tabs and rows by line feeds, up to a `.` line.
//! Unlike gearmand, which stores any bytes, the server refuses a name with a
//! control character (any byte below 0x20, DEL 0x7f) so that no peer can
//! forge or cut those listings: such a CAN_DO, CAN_DO_TIMEOUT, CANT_DO,
//! SUBMIT_JOB* or SET_CLIENT_ID gets an ERROR packet (`INVALID_FUNCTION_NAME`
//! or `INVALID_CLIENT_ID`) and changes nothing, and the connection stays open
//! since the packet is well formed (a malformed packet is answered with an
//! ERROR and closed). The text commands `maxqueue`, `create function`, `drop
//! function` and `clear function` answer `ERR INVALID_FUNCTION_NAME`. Spaces
//! and UTF-8 stay allowed. `drop function` matches the name exactly (gearmand
//! ignores case).

mod admin;
mod dispatch;
mod fds;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod outbox;
mod state;
mod store;

pub use fds::{FD_RESERVE, connections_for, fd_limit, raise_fd_limit};
pub use store::Durability;

use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use outbox::Outbox;
use state::{Control, State};

use crate::busy_poll::BusyPoll;
use crate::proto::{DEFAULT_MAX_LINE, Decoder};

/// Server settings: the `server:` section of config.yaml and the options
/// of `gearframe server`. Every field has a default that matches gearmand
/// where gearmand has the option.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct ServerConfig {
    /// Address to listen on, such as 127.0.0.1:4730 or 0.0.0.0:4730 (port
    /// 0: any free port).
    #[cfg_attr(feature = "cli", arg(short = 'L', long, value_name = "HOST:PORT"))]
    pub listen: String,
    /// Drop a job once it was started N times (0 = unlimited, as in
    /// gearmand 1.1).
    #[cfg_attr(feature = "cli", arg(short = 'j', long, value_name = "N"))]
    pub job_retries: u32,
    /// NOOPs sent per queued job (0 = wake every sleeping worker).
    #[cfg_attr(feature = "cli", arg(short = 'w', long, value_name = "N"))]
    pub worker_wakeup: u32,
    /// Rotate each worker's function order after every job it is given.
    #[cfg_attr(feature = "cli", arg(short = 'R', long))]
    pub round_robin: bool,
    /// Prefix of job handles, which are PREFIX:N (default:
    /// `H:<hostname>:<port>:<start time>`, unique per server and run).
    #[cfg_attr(feature = "cli", arg(long, value_name = "PREFIX"))]
    pub job_handle_prefix: Option<String>,
    /// Largest packet body accepted, in bytes; a larger one is refused from
    /// its header with ARGUMENT_TOO_LARGE and the connection closed.
    #[cfg_attr(feature = "cli", arg(long, value_name = "BYTES"))]
    pub max_packet_size: u32,
    /// Most connections served at once, further ones are closed on accept
    /// (0: the soft file descriptor limit at start minus 32, `FD_RESERVE`).
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub max_connections: usize,
    /// Every connection starts with the `exceptions` option on, as gearmand's
    /// --exceptions: clients that never asked get
    /// WORK_EXCEPTION too, and then pygearman waits forever and `gearman -f`
    /// exits 0 on a failed job (PHP, Perl and gear cope); gearframe workers
    /// then send failures as WORK_WARNING + WORK_FAIL.
    #[cfg_attr(feature = "cli", arg(long))]
    pub exceptions: bool,
    /// Bytes waiting to be written to one peer before it is considered dead
    /// and disconnected.
    #[cfg_attr(feature = "cli", arg(long, value_name = "BYTES"))]
    pub max_outbox: usize,
    /// How long one write to a peer may block before it is disconnected
    /// (e.g. 30s).
    #[serde(with = "crate::config::duration")]
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)
    )]
    pub write_timeout: Duration,
    /// How long a started packet or admin line may take to arrive before the
    /// connection is closed (e.g. 30s; 0: no limit); idle time between
    /// frames is not limited.
    #[serde(with = "crate::config::duration")]
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)
    )]
    pub read_timeout: Duration,
    /// Most bytes held by partial packets across all connections (0 =
    /// unlimited); a connection whose partial packet would pass it gets
    /// ERROR SERVER_BUSY and is closed.
    #[cfg_attr(feature = "cli", arg(long, value_name = "BYTES"))]
    pub max_buffered_bytes: usize,
    /// How long a connection's reader polls for the next request before it
    /// blocks (e.g. 50us; 0: never).
    #[serde(with = "crate::config::duration")]
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)
    )]
    pub busy_poll: Duration,
    /// Persistent queue for background jobs: sqlite:PATH (the field holds
    /// PATH; none: memory only). A background job is acknowledged once its
    /// row is committed; a failed write answers QUEUE_ERROR with the cause.
    #[serde(with = "queue")]
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "sqlite:PATH", value_parser = crate::config::parse_queue)
    )]
    pub queue: Option<std::path::PathBuf>,
    /// Write the persistent queue only when the server stops, in one
    /// transaction (faster; a crash loses the jobs since the last start). A
    /// failed write keeps the rows stored before and exits non-zero. In
    /// config.yaml: `store_queue_on_shutdown: true`.
    #[serde(rename = "store_queue_on_shutdown", with = "on_shutdown")]
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "store_queue_on_shutdown",
            long = "store-queue-on-shutdown",
            value_parser = on_shutdown::parse,
            num_args = 0,
            default_missing_value = "true",
        )
    )]
    pub durability: Durability,
    /// maxqueue of every function until `maxqueue` changes it (0 =
    /// unlimited).
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub max_queue: u32,
    /// Most jobs held in total (0 = unlimited); more get QUEUE_ERROR.
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub max_jobs: usize,
    /// Most payload bytes held in total (0 = unlimited); more get
    /// QUEUE_ERROR.
    #[cfg_attr(feature = "cli", arg(long, value_name = "BYTES"))]
    pub max_payload_bytes: usize,
    /// Allow admin commands that change state or list jobs and connections
    /// only from this address or network (repeatable; default: every peer).
    /// Those are cancel job, create, drop and clear function, maxqueue,
    /// shutdown, show jobs, show unique jobs and workers (a unique id read
    /// there lets a peer join another client's job); others get ERR
    /// PERMISSION_DENIED. status, prioritystatus, version, getpid and
    /// verbose are open to every peer.
    #[cfg_attr(feature = "cli", arg(long, value_name = "ADDR[/PREFIX]"))]
    pub admin_allow: Vec<AddrRule>,
}

/// `queue` in the file: `sqlite:PATH`, read by
/// [`parse_queue`](crate::config::parse_queue).
mod queue {
    use std::path::PathBuf;

    use serde::Deserialize;

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<PathBuf>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => crate::config::parse_queue(&s).map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }

    pub(super) fn serialize<S: serde::Serializer>(
        q: &Option<PathBuf>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match q {
            Some(p) => s.serialize_some(&format!("sqlite:{}", p.display())),
            None => s.serialize_none(),
        }
    }
}

/// [`Durability`] as the bool `store_queue_on_shutdown`.
mod on_shutdown {
    use serde::Deserialize;

    use super::Durability;

    fn from_bool(b: bool) -> Durability {
        if b { Durability::OnShutdown } else { Durability::Sync }
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Durability, D::Error> {
        bool::deserialize(d).map(from_bool)
    }

    pub(super) fn serialize<S: serde::Serializer>(v: &Durability, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(*v == Durability::OnShutdown)
    }

    /// The option's value: `true` or `false`.
    #[cfg(feature = "cli")]
    pub(super) fn parse(s: &str) -> Result<Durability, String> {
        s.parse::<bool>()
            .map(from_bool)
            .map_err(|_| format!("invalid value `{s}`: write true or false"))
    }
}

/// An address or a network (`127.0.0.1`, `10.0.0.0/8`, `::1`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrRule {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for AddrRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid address rule `{s}`: write an address or ADDRESS/PREFIX");
        let (a, p) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(AddrRule { addr, prefix })
    }
}

impl std::fmt::Display for AddrRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let max = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix == max {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

impl<'de> serde::Deserialize<'de> for AddrRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for AddrRule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl AddrRule {
    /// Whether `ip` is inside this rule.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
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
            max_connections: 0,
            exceptions: false,
            max_outbox: 256 << 20,
            write_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(30),
            max_buffered_bytes: 1 << 30,
            busy_poll: crate::busy_poll::DEFAULT_BUSY_POLL,
            queue: None,
            durability: Durability::Sync,
            max_queue: 0,
            max_jobs: 0,
            max_payload_bytes: 0,
            admin_allow: Vec::new(),
        }
    }
}

/// Connections the kernel queues for `accept` (std's default is 128, too
/// few for a burst of clients connecting at once).
const BACKLOG: i32 = 4096;

/// Binds a listening socket with SO_REUSEADDR and a deep backlog.
fn listen(addr: &str) -> io::Result<TcpListener> {
    use std::net::ToSocketAddrs;
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to listen on");
    for a in addr.to_socket_addrs()? {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(a),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        sock.set_reuse_address(true)?;
        match sock.bind(&a.into()).and_then(|()| sock.listen(BACKLOG)) {
            Ok(()) => return Ok(sock.into()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The host name, for the default job handle prefix: letters, digits, `-`
/// and `.` only, at most 24 of them, so that a handle stays within the 63
/// bytes peers allow.
fn hostname() -> String {
    let name: String = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        .take(24)
        .collect();
    if name.is_empty() { "localhost".into() } else { name }
}

/// The default job handle prefix, `H:<host>:<port>:<start>`: the port tells
/// two servers on one host apart, and the start time (milliseconds since the
/// epoch, base 36) one run of a server from the next, so that a handle
/// issued before a restart never names a job made after it. Handles are
/// ASCII without spaces, such as `H:vm:4730:miocq2zk:17`.
fn default_handle_prefix(port: u16) -> String {
    let mut ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut start = Vec::new();
    loop {
        start.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(ms % 36) as usize]);
        ms /= 36;
        if ms == 0 {
            break;
        }
    }
    start.reverse();
    format!("H:{}:{port}:{}", hostname(), String::from_utf8_lossy(&start))
}

/// What the server's threads share: the state under its mutex, the
/// config, and the stop and connection counters.
#[derive(Debug)]
struct Core {
    state: Mutex<State>,
    /// Paired with `state`: wakes the timer thread when an earlier deadline
    /// is added.
    timer_cv: Condvar,
    stop_cv: Condvar,
    stop: AtomicBool,
    timer_quit: AtomicBool,
    wake_addr: SocketAddr,
    /// The settings, shared with the state.
    config: Arc<ServerConfig>,
    /// `config.max_connections`, or the one derived from `fd_limit`.
    max_connections: usize,
    /// The soft file descriptor limit at bind (None: unknown).
    fd_limit: Option<u64>,
    active: AtomicUsize,
    next_conn: AtomicU64,
    /// Bytes of memory held by partial packets, over all connections.
    buffered: AtomicUsize,
    /// Connection threads not joined yet. A thread that ended keeps its
    /// stack until it is joined, so the timer thread joins the finished ones
    /// at least once a second; the acceptor joins the rest at the stop.
    conn_threads: Mutex<Vec<JoinHandle<()>>>,
    /// What went wrong while stopping (the persistent queue was not saved).
    stop_error: Mutex<Option<String>>,
}

impl Core {
    /// Connection threads started and not joined yet.
    fn conn_threads_len(&self) -> usize {
        self.conn_threads.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Finishes a batch of commands: wakes the timer thread if a deadline
    /// moved, releases the lock, sends the replies the batch produced, and
    /// only then acts on a stop it asked for, so a client that asked for
    /// `shutdown` (or sent the last job of a graceful stop) gets its reply.
    fn release(&self, mut st: MutexGuard<'_, State>) {
        if st.timers_changed {
            st.timers_changed = false;
            self.timer_cv.notify_one();
        }
        // A stop is acted on by the release that takes it: the one whose
        // batch asked for it, so its replies (the OK of `shutdown`) are
        // sent before the sockets close.
        let stop = st.take_stop();
        let dirty = std::mem::take(&mut st.dirty);
        drop(st);
        // Newest first: a batch's last replies are usually to workers (the
        // job a PRE_SLEEP or a submission brought, a NOOP), its first ones to
        // clients (a result, JOB_CREATED). A worker that starts sooner
        // finishes sooner; each connection's own order is unchanged.
        for out in dirty.iter().rev() {
            out.flush();
        }
        if stop && !self.stop.load(Ordering::SeqCst) {
            {
                let _st = self.lock();
                self.stop.store(true, Ordering::SeqCst);
                self.stop_cv.notify_all();
            }
            self.wake_acceptor();
        }
    }

    /// Joins the connection threads that have ended, freeing their stacks.
    fn reap_conn_threads(&self) {
        let done: Vec<JoinHandle<()>> = {
            let mut all = self.conn_threads.lock().unwrap_or_else(|e| e.into_inner());
            if !all.iter().any(JoinHandle::is_finished) {
                return;
            }
            let (done, running) =
                std::mem::take(&mut *all).into_iter().partition(|h| h.is_finished());
            *all = running;
            done
        };
        for h in done {
            let _ = h.join();
        }
    }

    /// Unblocks `accept()` by connecting to our own listening address.
    fn wake_acceptor(&self) {
        let _ = TcpStream::connect_timeout(&self.wake_addr, Duration::from_secs(1));
    }
}

/// Entry point: [`Server::bind`].
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Binds the listening socket and starts serving on background threads.
    ///
    /// # Errors
    /// The address cannot be parsed or bound, or a thread cannot be started.
    pub fn bind(config: ServerConfig) -> io::Result<ServerHandle> {
        let listener = listen(&config.listen).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen))
        })?;
        // accept() wakes up this often to look at the stop flag and the
        // refusal counts, even when the stop's wake-up connection cannot be
        // made (no descriptor left).
        socket2::SockRef::from(&listener).set_read_timeout(Some(ACCEPT_TICK))?;
        let addr = listener.local_addr()?;
        let fd_limit = fds::fd_limit().ok().map(|(soft, _)| soft);
        let fitting = fd_limit.map_or(usize::MAX, fds::connections_for);
        let max_connections = match config.max_connections {
            0 => fitting,
            n => {
                if n > fitting {
                    log::warn!(
                        "max_connections {n} is more than the file descriptor limit {} leaves \
                         room for ({fitting}); past that new connections are closed at once: \
                         raise the limit (ulimit -n, LimitNOFILE=) or lower max_connections",
                        fd_limit.unwrap_or_default()
                    );
                }
                n
            }
        };
        let wake_ip = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let prefix =
            config.job_handle_prefix.clone().unwrap_or_else(|| default_handle_prefix(addr.port()));
        let config = Arc::new(config);
        let mut state = State::new(Arc::clone(&config), prefix.into_bytes());
        let writer = match &config.queue {
            Some(path) => {
                let (jobs, link, writer) =
                    store::open(path, config.durability).map_err(io::Error::other)?;
                let restored = jobs.len();
                state.store = Some(link);
                for job in jobs {
                    state.restore(job);
                }
                if restored > 0 {
                    log::info!("restored {restored} background jobs from {}", path.display());
                }
                Some(writer)
            }
            None => None,
        };
        state.verbose = match log::max_level() {
            log::LevelFilter::Off | log::LevelFilter::Error => "ERROR",
            log::LevelFilter::Warn => "WARNING",
            log::LevelFilter::Info => "INFO",
            _ => "DEBUG",
        };
        let shared = Arc::new(Core {
            state: Mutex::new(state),
            timer_cv: Condvar::new(),
            stop_cv: Condvar::new(),
            stop: AtomicBool::new(false),
            timer_quit: AtomicBool::new(false),
            wake_addr: SocketAddr::new(wake_ip, addr.port()),
            config,
            max_connections,
            fd_limit,
            active: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
            buffered: AtomicUsize::new(0),
            conn_threads: Mutex::new(Vec::new()),
            stop_error: Mutex::new(None),
        });
        let store_thread = match writer {
            Some(w) => {
                let s = Arc::clone(&shared);
                let report = Box::new(move |outcome| {
                    let mut st = s.lock();
                    st.stored(outcome);
                    s.release(st);
                });
                Some(store::spawn(w, report).map_err(io::Error::other)?)
            }
            None => None,
        };
        let timer = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("gearframe-timer".into())
                .spawn(move || run_timer(&shared))?
        };
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("gearframe-accept".into())
                .spawn(move || run_acceptor(&shared, listener, timer, store_thread))?
        };
        let handle = ServerHandle { addr, shared, acceptor: Some(acceptor) };
        log::info!("listening on {addr} ({})", handle.capacity());
        Ok(handle)
    }
}

/// A running server. Dropping it stops the server and waits for its threads.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    shared: Arc<Core>,
    acceptor: Option<JoinHandle<()>>,
}

/// A cloneable way to stop a server from another thread (a signal handler).
#[derive(Debug, Clone)]
pub struct Stopper {
    shared: Arc<Core>,
}

impl Stopper {
    /// Stops at once: the listener and every connection close.
    pub fn shutdown(&self) {
        let mut st = self.shared.lock();
        st.request_stop(false);
        self.shared.release(st);
    }

    /// Takes no new jobs and stops once no job is left; workers and admin
    /// connections are still accepted meanwhile, so the queue can drain and
    /// the wait be watched (`status`, `stopping`).
    pub fn shutdown_graceful(&self) {
        let mut st = self.shared.lock();
        st.request_stop(true);
        self.shared.release(st);
    }
}

impl ServerHandle {
    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Most connections served at once (`max_connections`, or the number
    /// derived from the file descriptor limit).
    pub fn max_connections(&self) -> usize {
        self.shared.max_connections
    }

    /// The soft file descriptor limit the server started with (None when
    /// it could not be read).
    pub fn fd_limit(&self) -> Option<u64> {
        self.shared.fd_limit
    }

    /// `file descriptor limit N, at most M connections`, for start-up lines.
    pub fn capacity(&self) -> String {
        let limit = self.fd_limit().map_or_else(|| "unknown".into(), |n| n.to_string());
        format!("file descriptor limit {limit}, at most {} connections", self.max_connections())
    }

    /// A handle that can stop the server from elsewhere.
    pub fn stopper(&self) -> Stopper {
        Stopper { shared: Arc::clone(&self.shared) }
    }

    /// Stops at once: the listener and every connection close.
    pub fn shutdown(&self) {
        self.stopper().shutdown();
    }

    /// Takes no new jobs, then stops once no job is left (see
    /// [`Stopper::shutdown_graceful`]).
    pub fn shutdown_graceful(&self) {
        self.stopper().shutdown_graceful();
    }

    /// True once a stop was requested (by a signal, the API or `shutdown`).
    pub fn is_stopping(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// Waits until the server has stopped and every thread is joined.
    pub fn join(mut self) {
        self.join_inner();
    }

    /// Like [`ServerHandle::join`], and tells whether the stop completed:
    /// an error when the persistent queue could not be saved (with
    /// `--store-queue-on-shutdown`: the dump failed, the rows stored
    /// before are kept).
    ///
    /// # Errors
    /// The text names the file, the cause and how many jobs were not saved.
    pub fn join_result(mut self) -> Result<(), String> {
        self.join_inner();
        match self.shared.stop_error.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn join_inner(&mut self) {
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if self.acceptor.is_some() {
            self.shutdown();
            self.join_inner();
        }
    }
}

/// Longest sleep of the timer thread without a deadline; it only bounds
/// the wait, since every new deadline and the stop notify it.
const TIMER_IDLE: Duration = Duration::from_secs(1);

fn run_timer(shared: &Core) {
    let mut st = shared.lock();
    loop {
        let now = Instant::now();
        st.run_timers(now);
        st.report_graceful(now);
        st.timers_changed = false;
        let pending =
            !st.dirty.is_empty() || matches!(st.lifecycle, state::Lifecycle::Stopping { .. });
        if pending {
            shared.release(st);
            st = shared.lock();
        }
        // Checked under the lock right before waiting: the stop sets the
        // flag and then notifies under the lock, so it cannot be missed.
        if shared.timer_quit.load(Ordering::SeqCst) {
            return;
        }
        if shared.active.load(Ordering::SeqCst) < shared.conn_threads_len() {
            // Joined without the state lock: a connection ending takes it.
            drop(st);
            shared.reap_conn_threads();
            st = shared.lock();
            if shared.timer_quit.load(Ordering::SeqCst) {
                return;
            }
        }
        // Timers may have been added while the lock was released.
        let next = st.timers.peek().map(|std::cmp::Reverse((at, _))| *at);
        st.timers_changed = false;
        let wait = next.map_or(TIMER_IDLE, |at| at.saturating_duration_since(Instant::now()));
        st = shared
            .timer_cv
            .wait_timeout(st, wait.min(TIMER_IDLE))
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// Longest time `accept` blocks before the acceptor looks at the stop flag
/// and logs pending refusal counts (SO_RCVTIMEO, which Linux applies to
/// `accept`).
const ACCEPT_TICK: Duration = Duration::from_secs(1);

/// Pause after an `accept` error that a retry at once would repeat.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

fn run_acceptor(
    shared: &Arc<Core>,
    listener: TcpListener,
    timer: JoinHandle<()>,
    store_thread: Option<store::StoreThread>,
) {
    let mut spare = fds::Spare::open();
    let mut over_limit = fds::Refusals::new(format!(
        "{} connections already open; raise max_connections to serve more",
        shared.max_connections
    ));
    let mut no_descriptor = fds::Refusals::new(format!(
        "no file descriptor left (limit {}); raise the limit (ulimit -n, LimitNOFILE=) or lower \
         max_connections",
        shared.fd_limit.map_or_else(|| "unknown".into(), |n| n.to_string())
    ));
    // The last accept found no descriptor and poll then saw a connection
    // waiting: if the next accept finds none either, that connection is
    // refused.
    let mut waiting = false;
    let mut last_accept_error: Option<Instant> = None;
    let mut no_thread = fds::Refusals::new(
        "no thread could be started for them; lower max_connections or raise the thread limit \
         (ulimit -u)"
            .into(),
    );
    loop {
        // A graceful stop keeps accepting: workers drain the queue and admin
        // connections watch; submissions are refused by the state.
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let accepted = listener.accept();
        let now = Instant::now();
        over_limit.flush(now);
        no_descriptor.flush(now);
        no_thread.flush(now);
        let stream = match accepted {
            Ok((s, _)) => {
                waiting = false;
                s
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) if fds::out_of_descriptors(&e) => {
                if std::mem::take(&mut waiting) {
                    match spare.refuse_waiting(&listener) {
                        Some(n) => no_descriptor.add(n, now),
                        // No spare: wait for a descriptor to be freed.
                        None => thread::sleep(ACCEPT_BACKOFF),
                    }
                } else {
                    waiting = fds::wait_readable(&listener, ACCEPT_TICK);
                }
                continue;
            }
            Err(e) if fds::gone_before_accept(&e) => {
                log::debug!("a connection ended before it was accepted: {e}");
                continue;
            }
            Err(e) => {
                // Short of memory or buffers: back off, and say so at most
                // once a second.
                if last_accept_error.is_none_or(|t| now.duration_since(t) >= ACCEPT_TICK) {
                    log::warn!("accept failed: {e}; retrying (check the system's memory)");
                    last_accept_error = Some(now);
                }
                thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        if shared.active.load(Ordering::SeqCst) >= shared.max_connections {
            let _ = stream.shutdown(Shutdown::Both);
            over_limit.add(1, now);
            continue;
        }
        shared.active.fetch_add(1, Ordering::SeqCst);
        let s = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name("gearframe-conn".into())
            .stack_size(256 << 10)
            .spawn(move || {
                serve_connection(&s, stream);
                s.active.fetch_sub(1, Ordering::SeqCst);
            });
        match spawned {
            Ok(h) => shared.conn_threads.lock().unwrap_or_else(|e| e.into_inner()).push(h),
            Err(e) => {
                // The connection was moved into the closure and is closed.
                shared.active.fetch_sub(1, Ordering::SeqCst);
                log::debug!("cannot start a connection thread: {e}");
                no_thread.add(1, now);
            }
        }
    }
    drop(listener);
    for r in [&mut over_limit, &mut no_descriptor, &mut no_thread] {
        r.finish();
    }
    {
        let st = shared.lock();
        for c in st.conns.values() {
            c.out.shutdown_socket();
        }
    }
    let conns = std::mem::take(&mut *shared.conn_threads.lock().unwrap_or_else(|e| e.into_inner()));
    for h in conns {
        let _ = h.join();
    }
    shared.timer_quit.store(true, Ordering::SeqCst);
    {
        let _st = shared.lock();
        shared.timer_cv.notify_all();
    }
    let _ = timer.join();
    if let Some(thread) = store_thread {
        let link = {
            let mut st = shared.lock();
            if st.store.as_ref().is_some_and(|l| l.durability == Durability::OnShutdown) {
                let jobs = st.jobs_to_store();
                log::info!("writing {} background jobs to the persistent queue", jobs.len());
                if let Some(l) = &st.store {
                    l.dump(jobs);
                }
            }
            st.store.take()
        };
        // Closing the channel lets the writer commit what is left and stop.
        drop(link);
        if let Err(e) = thread.join() {
            *shared.stop_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
        }
    }
    log::info!("server stopped");
}

fn serve_connection(shared: &Core, stream: TcpStream) {
    let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    // The accepted socket inherits the listener's accept tick as its read
    // timeout; reads block until the peer sends or the stop shuts it down.
    let _ = stream.set_read_timeout(None);
    let _ = stream.set_write_timeout(Some(shared.config.write_timeout));
    // One descriptor per connection: the outbox writes to the socket this
    // thread reads from.
    let stream = Arc::new(stream);
    let out = Arc::new(Outbox::new(Some(Arc::clone(&stream)), shared.config.max_outbox));
    {
        let mut st = shared.lock();
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        st.add_conn(id, i64::from(stream.as_raw_fd()), peer.map(|p| p.ip()), Arc::clone(&out));
    }
    log::debug!("conn={id} connected peer={peer:?}");
    read_loop(shared, id, peer, &stream);
    {
        let mut st = shared.lock();
        st.remove_conn(id);
        shared.release(st);
    }
    out.finish(&stream, shared.config.write_timeout);
    let _ = stream.shutdown(Shutdown::Both);
    log::debug!("conn={id} closed");
}

/// One connection's share of [`Core::buffered`]: the memory its decoder
/// holds for a partial frame. Given back when the connection ends.
struct BufferedShare<'a> {
    total: &'a AtomicUsize,
    cap: usize,
    held: usize,
}

impl BufferedShare<'_> {
    /// Accounts `now` bytes for this connection; false when growing to it
    /// would pass the cap (the share is then left as it was).
    fn set(&mut self, now: usize) -> bool {
        if now > self.held {
            let more = now - self.held;
            let before = self.total.fetch_add(more, Ordering::SeqCst);
            if self.cap > 0 && before + more > self.cap {
                self.total.fetch_sub(more, Ordering::SeqCst);
                return false;
            }
        } else {
            self.total.fetch_sub(self.held - now, Ordering::SeqCst);
        }
        self.held = now;
        true
    }
}

impl Drop for BufferedShare<'_> {
    fn drop(&mut self) {
        self.total.fetch_sub(self.held, Ordering::SeqCst);
    }
}

/// The read side of a connection: reads, decodes and applies frames until
/// the peer closes, breaks the protocol, passes a limit or stalls mid-frame.
///
/// Between frames a read blocks without a timeout (a sleeping worker may
/// stay silent for hours); once a frame has begun, the socket's read timeout
/// is the time left until the frame must be complete (`read_timeout`).
fn read_loop(shared: &Core, id: u64, peer: Option<SocketAddr>, mut stream: &TcpStream) {
    let config = &shared.config;
    let mut dec = Decoder::new(config.max_packet_size).with_max_line(DEFAULT_MAX_LINE);
    let mut buf = vec![0u8; 64 << 10];
    let mut busy = BusyPoll::new(config.busy_poll);
    let mut share =
        BufferedShare { total: &shared.buffered, cap: config.max_buffered_bytes, held: 0 };
    // When the frame in progress must be complete, and the socket's timeout.
    let mut deadline: Option<Instant> = None;
    let mut timeout: Option<Duration> = None;
    loop {
        let want = match deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    read_timed_out(shared, id, peer);
                    return;
                }
                // Rounded up to whole milliseconds so that the socket's
                // timeout changes at most once per millisecond.
                Some(Duration::from_millis(left.as_millis() as u64 + 1))
            }
        };
        if want != timeout {
            if let Err(e) = stream.set_read_timeout(want) {
                log::debug!("conn={id} cannot set the read timeout: {e}");
                return;
            }
            timeout = want;
        }
        let started = busy.poll(stream);
        let r = stream.read(&mut buf);
        busy.waited(started);
        let n = match r {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The deadline is checked at the top of the loop.
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                continue;
            }
            Err(e) => {
                log::debug!("conn={id} read failed: {e}");
                return;
            }
        };
        dec.push(&buf[..n]);
        let mut st = shared.lock();
        let mut close = false;
        let mut completed = false;
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => {
                    completed = true;
                    if st.handle_frame(id, frame) == Control::Close {
                        close = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    st.protocol_error(id, &e);
                    close = true;
                    break;
                }
            }
        }
        if !close && !share.set(if dec.in_frame() { dec.capacity() } else { 0 }) {
            log::warn!(
                "conn={id} peer={peer:?} closed: partial packets of all connections hold over \
                 max_buffered_bytes ({}); raise it or lower max_packet_size",
                config.max_buffered_bytes
            );
            st.send_error(
                id,
                "SERVER_BUSY",
                "server memory for partial packets is full (max_buffered_bytes); retry later",
            );
            close = true;
        }
        shared.release(st);
        if close {
            return;
        }
        if !dec.in_frame() {
            deadline = None;
        } else if (completed || deadline.is_none()) && !config.read_timeout.is_zero() {
            // A new frame began in this read.
            deadline = Some(Instant::now() + config.read_timeout);
        }
    }
}

/// Ends a connection whose frame did not complete within `read_timeout`.
fn read_timed_out(shared: &Core, id: u64, peer: Option<SocketAddr>) {
    log::info!(
        "conn={id} peer={peer:?} closed: a packet or line was not complete within \
         read_timeout ({:?}); the peer is too slow or stalled, or read_timeout too short",
        shared.config.read_timeout
    );
    let mut st = shared.lock();
    st.send_error(
        id,
        "READ_TIMEOUT",
        "packet not complete within the server's read_timeout; connection closed",
    );
    shared.release(st);
}
