//! The admin tool's library: typed access to a server's text admin
//! protocol ([`AdminClient`]), a view over several servers at once
//! ([`Cluster`]), and the operations built on top of them: emptying a queue
//! ([`clear`]) and stopping workers with priority shutdown jobs
//! ([`stop_workers`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use gearframe::admin::{AdminClient, Cluster};
//!
//! # fn main() -> Result<(), gearframe::admin::AdminError> {
//! let mut admin = AdminClient::connect("127.0.0.1:4730", Duration::from_secs(5))?;
//! for f in admin.status()? {
//!     println!("{}: {} queued, {} running, {} workers", f.function, f.queued(), f.running, f.workers);
//! }
//! println!("round trip {:?}", admin.ping()?);
//!
//! // Several servers, asked in parallel; a server that is down is an error
//! // in its own entry, not a failure of the whole call.
//! let cluster = Cluster::new(["127.0.0.1:4730", "127.0.0.1:4731"], Duration::from_secs(5));
//! for s in cluster.status() {
//!     match &s.result {
//!         Ok(functions) => println!("{}: {} functions", s.server, functions.len()),
//!         Err(e) => println!("{}: down ({e})", s.server),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Parsing
//!
//! Replies are read leniently: lines may end in `\n` or `\r\n`; a list ends
//! at a line that is exactly `.` (an empty line inside `show unique jobs` is
//! a job with an empty unique id); a `workers` line is split on ` : ` so a
//! client id may contain spaces; an `ERR CODE text+with+pluses` line becomes
//! [`AdminErrorKind::Server`] with the text decoded. Requests end in `\r\n`
//! (gearmand cuts the last character of `create function NAME` off a bare
//! `\n` line).
//!
//! # Forged listings
//!
//! gearmand stores function names and client ids with line breaks and tabs,
//! and prints them as they are: a name like `evil\n.\nfake\t9\t9\t9` adds
//! rows to `status` and `workers`, and its `.` line ends the listing early,
//! the rest of it arriving before the reply to the next command. So:
//!
//! - a line that does not read as a row of its listing (a `status` row has
//!   exactly four columns, the last three numbers; a forged row always gets
//!   the real columns appended) is skipped with a warning in the log naming
//!   the server and the line, and the listing goes on;
//! - every list command uses its own connection, closed after the `.`
//!   line, so what a forged `.` left unread is never read as the next reply.
//!
//! Rows forged whole in the middle of a name cannot be told from real ones;
//! gearframe's server refuses such names in the first place.
//!
//! # Timeouts
//!
//! Every connect, write and reply wait is bounded by the client's timeout.
//! After an I/O error or a timeout the connection is dropped and the next
//! call connects again.
//!
//! # Extension: `clear function`
//!
//! [`AdminClient::clear_function`] sends `clear function NAME`, answered by
//! gearframe's server with `OK <n>` after it removed the function's `n`
//! queued (not running) jobs. Servers without it answer
//! `ERR UNKNOWN_COMMAND`; [`clear`] then drains the queue with a worker.

mod cluster;
mod config;
mod ops;
mod parse;

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::JobStatus;
use crate::conn::{self, Connection, with_default_port};
use crate::proto::admin::is_listable_name;
use crate::proto::{Packet, PacketType};

pub use cluster::{Cluster, PerServer, sum_priority, sum_status};
pub use config::AdminConfig;
pub use ops::{
    ClearMethod, ClearOptions, ClearReport, DRAIN_CLIENT_ID, SHUTDOWN_PAYLOAD, StopReport,
    StopTarget, StopWorkersOptions, clear, drain, stop_workers,
};
pub use parse::{decode_text, parse_error_line};

/// A decimal field of a status reply, leniently: garbage is 0.
fn parse_num(b: &[u8]) -> u64 {
    std::str::from_utf8(b).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// Default limit of each connect and reply wait.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// One function in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FunctionStatus {
    /// The function name.
    pub function: String,
    /// Queued plus running jobs.
    pub total: u64,
    /// Jobs a worker is running.
    pub running: u64,
    /// Worker registrations (CAN_DO), busy or not.
    pub workers: u64,
}

impl FunctionStatus {
    /// Jobs waiting for a worker (`total - running`).
    pub fn queued(&self) -> u64 {
        self.total.saturating_sub(self.running)
    }
}

/// One function in `prioritystatus`: queued jobs per priority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PriorityStatus {
    /// The function name.
    pub function: String,
    /// Queued high-priority jobs.
    pub high: u64,
    /// Queued normal-priority jobs.
    pub normal: u64,
    /// Queued low-priority jobs.
    pub low: u64,
    /// Worker registrations.
    pub workers: u64,
}

/// One connection in `workers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerInfo {
    /// The server's file descriptor of the connection.
    pub fd: i64,
    /// The peer's IP address as the server prints it.
    pub ip: String,
    /// The SET_CLIENT_ID name (`-` when never set).
    pub client_id: String,
    /// Registered functions, as the server lists them.
    pub functions: Vec<String>,
}

impl WorkerInfo {
    /// Whether the connection registered `function`.
    pub fn can_do(&self, function: &str) -> bool {
        self.functions.iter().any(|f| f == function)
    }
}

/// One job in `show jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobInfo {
    /// The job handle.
    pub handle: String,
    /// How often the job was requeued.
    pub retries: u64,
    /// Cancelled, or abandoned by its foreground client.
    pub ignored: bool,
    /// Recorded in the persistent queue.
    pub persisted: bool,
}

/// The persistent queue of a gearframe server (`store`, gearframe's own
/// command).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreStatus {
    /// `sqlite`, or `memory` when the server has no persistent queue.
    pub backend: String,
    /// The database file.
    pub path: Option<String>,
    /// `sync` (written before JOB_CREATED) or `on-shutdown`.
    pub durability: Option<String>,
    /// Writes succeed.
    pub ok: bool,
    /// Rows in the table after the last commit.
    pub rows: u64,
    /// Unix time the current failure started.
    pub failing_since: Option<u64>,
    /// The current failure.
    pub error: Option<String>,
}

/// Per-priority queue limits for `maxqueue` (0 = unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MaxQueue {
    /// Limit for high-priority submissions.
    pub high: u32,
    /// Limit for normal-priority submissions.
    pub normal: u32,
    /// Limit for low-priority submissions.
    pub low: u32,
}

impl MaxQueue {
    /// The same limit for every priority.
    pub fn all(n: u32) -> MaxQueue {
        MaxQueue { high: n, normal: n, low: n }
    }
}

/// Why an admin call failed: the server asked and what went wrong.
#[derive(Debug)]
pub struct AdminError {
    /// `host:port`.
    pub server: String,
    /// What went wrong.
    pub kind: AdminErrorKind,
}

/// What went wrong in an admin call.
#[derive(Debug)]
#[non_exhaustive]
pub enum AdminErrorKind {
    /// The server could not be reached.
    Connect {
        /// The cause.
        source: io::Error,
    },
    /// A write or read failed or timed out.
    Io {
        /// The cause (`TimedOut` for a timeout).
        source: io::Error,
    },
    /// The server sent bytes that are not the protocol, or a frame of the
    /// wrong kind (a packet for a text line): it may not be a Gearman
    /// server.
    Protocol {
        /// What came ([`conn::Error::Protocol`] or
        /// [`conn::Error::Unexpected`]).
        source: conn::Error,
    },
    /// The server answered `ERR CODE text`.
    Server {
        /// The error code, such as `UNKNOWN_JOB` or `UNKNOWN_COMMAND`.
        code: String,
        /// The decoded text (`+` read as a space), possibly empty.
        message: String,
    },
    /// The server answered something this client cannot read.
    Parse {
        /// What was expected.
        expected: &'static str,
        /// The line received.
        line: String,
    },
    /// An argument that cannot be sent on an admin line.
    InvalidArgument(String),
    /// A drain made no progress for its stall limit.
    Stalled {
        /// The function.
        function: String,
        /// Jobs still queued.
        queued: u64,
        /// The stall limit.
        after: Duration,
    },
    /// A job submission (of a shutdown job) failed.
    Submit {
        /// The client's error.
        source: crate::client::Error,
    },
    /// A named function is not on the server.
    UnknownFunction {
        /// The function.
        function: String,
    },
}

impl AdminError {
    /// An error of `kind` from `server`.
    pub fn new(server: impl Into<String>, kind: AdminErrorKind) -> AdminError {
        AdminError { server: server.into(), kind }
    }

    /// The server's error code, when the server answered `ERR`.
    pub fn code(&self) -> Option<&str> {
        match &self.kind {
            AdminErrorKind::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True when the server does not know the command (`ERR UNKNOWN_COMMAND`).
    pub fn is_unknown_command(&self) -> bool {
        self.code().is_some_and(|c| c.eq_ignore_ascii_case("UNKNOWN_COMMAND"))
    }

    /// True when the server could not be reached, stopped answering, or
    /// does not speak the protocol.
    pub fn is_down(&self) -> bool {
        matches!(
            self.kind,
            AdminErrorKind::Connect { .. }
                | AdminErrorKind::Io { .. }
                | AdminErrorKind::Protocol { .. }
        )
    }
}

/// The error without the server's name: `AdminError` shows it as
/// `host:port: ` and then this (an invalid argument alone).
impl fmt::Display for AdminErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminErrorKind::Connect { source } => write!(f, "cannot connect: {source}"),
            AdminErrorKind::Io { source } if source.kind() == io::ErrorKind::TimedOut => {
                f.write_str("no reply in time")
            }
            AdminErrorKind::Io { source } => write!(f, "{source}"),
            AdminErrorKind::Protocol { source } => write!(f, "{source}"),
            AdminErrorKind::Server { code, message } if code == "ERROR" => {
                write!(f, "server error: {message}")
            }
            AdminErrorKind::Server { code, message } if message.is_empty() => {
                write!(f, "server error {code}")
            }
            AdminErrorKind::Server { code, message } => write!(f, "server error {code}: {message}"),
            AdminErrorKind::Parse { expected, line } => {
                write!(f, "expected {expected}, got {line:?}")
            }
            AdminErrorKind::InvalidArgument(m) => f.write_str(m),
            AdminErrorKind::Stalled { function, queued, after } => write!(
                f,
                "{queued} jobs of `{function}` still queued after {after:?} without progress (jobs scheduled for later?)"
            ),
            AdminErrorKind::Submit { source } => write!(f, "cannot submit: {source}"),
            AdminErrorKind::UnknownFunction { function } => write!(f, "no function `{function}`"),
        }
    }
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            AdminErrorKind::InvalidArgument(_) => write!(f, "{}", self.kind),
            kind => write!(f, "{}: {kind}", self.server),
        }
    }
}

impl std::error::Error for AdminError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            AdminErrorKind::Connect { source } | AdminErrorKind::Io { source } => Some(source),
            AdminErrorKind::Protocol { source } => Some(source),
            AdminErrorKind::Submit { source } => Some(source),
            _ => None,
        }
    }
}

/// Result of admin calls.
pub type Result<T, E = AdminError> = std::result::Result<T, E>;

/// A blocking admin connection to one server.
#[derive(Debug)]
pub struct AdminClient {
    server: String,
    timeout: Duration,
    conn: Option<Connection>,
}

/// Checks a word sent on an admin line: not empty, no space, no control
/// character (line breaks, tabs, NUL: see [`is_listable_name`]).
fn word<'a>(server: &str, what: &str, w: &'a str) -> Result<&'a str> {
    if w.is_empty() {
        return Err(AdminError::new(
            server,
            AdminErrorKind::InvalidArgument(format!("the {what} is empty")),
        ));
    }
    if w.contains(' ') || !is_listable_name(w.as_bytes()) {
        return Err(AdminError::new(
            server,
            AdminErrorKind::InvalidArgument(format!(
                "the {what} {w:?} contains a space or a control character (line break, tab, NUL), which the admin protocol cannot send"
            )),
        ));
    }
    Ok(w)
}

impl AdminClient {
    /// Connects to `server` (`host[:port]`, port 4730 by default); every
    /// connect and reply wait is limited to `timeout`.
    ///
    /// # Errors
    /// [`AdminErrorKind::Connect`] when the server cannot be reached in time.
    pub fn connect(server: &str, timeout: Duration) -> Result<AdminClient> {
        let mut c = AdminClient::lazy(server, timeout);
        c.conn()?;
        Ok(c)
    }

    /// A client that connects on its first call.
    pub fn lazy(server: &str, timeout: Duration) -> AdminClient {
        AdminClient { server: with_default_port(server), timeout, conn: None }
    }

    /// The server, `host:port`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The limit of each wait.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn conn(&mut self) -> Result<&mut Connection> {
        if self.conn.is_none() {
            let c = Connection::connect(&self.server, self.timeout).map_err(|source| {
                AdminError::new(self.server.clone(), AdminErrorKind::Connect { source })
            })?;
            c.set_write_timeout(Some(self.timeout)).map_err(|source| {
                AdminError::new(self.server.clone(), AdminErrorKind::Connect { source })
            })?;
            log::debug!("admin server={}: connected", self.server);
            self.conn = Some(c);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    fn io_err(&mut self, e: conn::Error) -> AdminError {
        let kind = match e {
            conn::Error::Io(source) => AdminErrorKind::Io { source },
            // Nothing was sent: the connection is still in step.
            conn::Error::Invalid(e) => {
                return AdminError::new(
                    self.server.clone(),
                    AdminErrorKind::InvalidArgument(e.to_string()),
                );
            }
            source => AdminErrorKind::Protocol { source },
        };
        // The stream is out of step after a failure: start again next time.
        if let Some(c) = self.conn.take() {
            c.close();
        }
        AdminError::new(self.server.clone(), kind)
    }

    fn send_line(&mut self, line: &str) -> Result<Instant> {
        log::trace!("admin server={} send {line:?}", self.server);
        let deadline = Instant::now() + self.timeout;
        let c = self.conn()?;
        c.queue_bytes(line.as_bytes());
        c.queue_bytes(b"\r\n");
        match c.flush() {
            Ok(()) => Ok(deadline),
            Err(e) => Err(self.io_err(e)),
        }
    }

    fn recv_line(&mut self, deadline: Instant) -> Result<String> {
        let c = self.conn()?;
        match c.recv_line(Some(deadline)) {
            Ok(mut l) => {
                while l.ends_with('\r') || l.ends_with('\n') {
                    l.pop();
                }
                Ok(l)
            }
            Err(e) => Err(self.io_err(e)),
        }
    }

    fn server_error(&self, line: &str) -> AdminError {
        let (code, message) = parse_error_line(line);
        AdminError::new(self.server.clone(), AdminErrorKind::Server { code, message })
    }

    /// Sends a list command and returns the lines before the `.` line.
    ///
    /// The connection is closed afterwards, so the next call connects
    /// again: the `.` may have been forged by a name holding a line break
    /// (see the module docs), and the rest of the listing must not be read
    /// as the next reply.
    ///
    /// # Errors
    /// I/O, timeout, or an `ERR` reply.
    pub fn list(&mut self, command: &str) -> Result<Vec<String>> {
        let r = self.read_list(command);
        if let Some(c) = self.conn.take() {
            c.close();
        }
        r
    }

    fn read_list(&mut self, command: &str) -> Result<Vec<String>> {
        let deadline = self.send_line(command)?;
        let mut lines = Vec::new();
        loop {
            let l = self.recv_line(deadline)?;
            if l == "." {
                return Ok(lines);
            }
            if lines.is_empty() && l.starts_with("ERR ") {
                return Err(self.server_error(&l));
            }
            lines.push(l);
        }
    }

    /// A list command's rows as `parse` reads them; a line it cannot read
    /// is skipped with a warning (see the module docs).
    fn rows<T>(
        &mut self,
        command: &str,
        row: &str,
        parse: fn(&str) -> Option<T>,
    ) -> Result<Vec<T>> {
        let lines = self.list(command)?;
        let mut rows = Vec::with_capacity(lines.len());
        for l in &lines {
            match parse(l) {
                Some(r) => rows.push(r),
                None => log::warn!(
                    "{}: skipped {l:?} in the reply to `{command}`: not {row} (a function name or client id on that server holds a line break or tab; find the connection that registered it)",
                    self.server
                ),
            }
        }
        Ok(rows)
    }

    /// Sends a one-line command and returns what follows `OK` (trimmed;
    /// empty for a bare `OK`). A reply without `OK ` (Perl's `version`) is
    /// returned whole.
    ///
    /// # Errors
    /// I/O, timeout, or an `ERR` reply.
    pub fn command(&mut self, command: &str) -> Result<String> {
        let deadline = self.send_line(command)?;
        let l = self.recv_line(deadline)?;
        if l.starts_with("ERR ") || l == "ERR" {
            return Err(self.server_error(&l));
        }
        if l == "OK" {
            return Ok(String::new());
        }
        Ok(l.strip_prefix("OK ").unwrap_or(&l).trim().to_string())
    }

    fn parse_err(&self, expected: &'static str, line: &str) -> AdminError {
        AdminError::new(
            self.server.clone(),
            AdminErrorKind::Parse { expected, line: line.to_string() },
        )
    }

    /// `status`: per function total, running and workers.
    ///
    /// # Errors
    /// I/O, timeout or an `ERR` reply. A line that is not a status line is
    /// skipped with a warning (see the module docs).
    pub fn status(&mut self) -> Result<Vec<FunctionStatus>> {
        self.rows("status", "a status line", parse::status_line)
    }

    /// `prioritystatus` (gearmand and gearframe): queued jobs per priority.
    ///
    /// # Errors
    /// As [`AdminClient::status`].
    pub fn priority_status(&mut self) -> Result<Vec<PriorityStatus>> {
        self.rows("prioritystatus", "a prioritystatus line", parse::priority_line)
    }

    /// `workers`: every connection (workers, clients, admin sessions).
    ///
    /// # Errors
    /// As [`AdminClient::status`].
    pub fn workers(&mut self) -> Result<Vec<WorkerInfo>> {
        self.rows("workers", "a workers line", parse::workers_line)
    }

    /// `show jobs`: every job the server holds.
    ///
    /// # Errors
    /// As [`AdminClient::status`].
    pub fn show_jobs(&mut self) -> Result<Vec<JobInfo>> {
        self.rows("show jobs", "a show jobs line", parse::job_line)
    }

    /// `show unique jobs`: the unique id of every job (may be empty).
    ///
    /// # Errors
    /// I/O, timeout or an `ERR` reply.
    pub fn show_unique_jobs(&mut self) -> Result<Vec<String>> {
        self.list("show unique jobs")
    }

    /// `version`.
    ///
    /// # Errors
    /// I/O, timeout or an `ERR` reply.
    pub fn version(&mut self) -> Result<String> {
        self.command("version")
    }

    /// `store` (gearframe only; gearmand answers `ERR UNKNOWN_COMMAND`, see
    /// [`AdminError::is_unknown_command`]): the persistent queue's state.
    ///
    /// # Errors
    /// I/O, timeout, an `ERR` reply, or a reply that is not a store line.
    pub fn store(&mut self) -> Result<StoreStatus> {
        let lines = self.list("store")?;
        match lines.as_slice() {
            [l] => parse::store_line(l).ok_or_else(|| self.parse_err("a store line", l)),
            _ => Err(self.parse_err("one store line", &lines.join("\\n"))),
        }
    }

    /// `getpid`.
    ///
    /// # Errors
    /// I/O, timeout, an `ERR` reply, or a reply that is not a number.
    pub fn getpid(&mut self) -> Result<u32> {
        let v = self.command("getpid")?;
        v.parse().map_err(|_| self.parse_err("OK <pid>", &v))
    }

    /// `verbose`: the server's log level name.
    ///
    /// # Errors
    /// I/O, timeout or an `ERR` reply.
    pub fn verbose(&mut self) -> Result<String> {
        self.command("verbose")
    }

    /// `maxqueue FUNCTION HIGH NORMAL LOW`.
    ///
    /// # Errors
    /// A function name that cannot be sent, I/O, timeout or an `ERR` reply.
    pub fn set_max_queue(&mut self, function: &str, limits: MaxQueue) -> Result<()> {
        let f = word(&self.server, "function name", function)?;
        let line = format!("maxqueue {f} {} {} {}", limits.high, limits.normal, limits.low);
        self.command(&line).map(drop)
    }

    /// `cancel job HANDLE`.
    ///
    /// # Errors
    /// `ERR UNKNOWN_JOB` as [`AdminErrorKind::Server`], I/O or timeout.
    pub fn cancel_job(&mut self, handle: &str) -> Result<()> {
        let h = word(&self.server, "job handle", handle)?;
        self.command(&format!("cancel job {h}")).map(drop)
    }

    /// `create function NAME`.
    ///
    /// # Errors
    /// A name that cannot be sent, I/O, timeout or an `ERR` reply.
    pub fn create_function(&mut self, name: &str) -> Result<()> {
        let f = word(&self.server, "function name", name)?;
        self.command(&format!("create function {f}")).map(drop)
    }

    /// `drop function NAME`.
    ///
    /// # Errors
    /// The server refuses (workers registered or jobs running; gearframe's
    /// server also while jobs are queued), or has no function of that name
    /// (gearframe's server matches it exactly, gearmand ignores case), I/O
    /// or timeout.
    pub fn drop_function(&mut self, name: &str) -> Result<()> {
        let f = word(&self.server, "function name", name)?;
        self.command(&format!("drop function {f}")).map(drop)
    }

    /// `shutdown` or `shutdown graceful`. gearframe's server accepts it from
    /// a loopback address; gearmand 1.1.15 and later answer
    /// `ERR UNKNOWN_COMMAND` (see [`AdminError::is_unknown_command`]). The
    /// server closing the connection instead of answering counts as success.
    ///
    /// # Errors
    /// I/O, timeout or an `ERR` reply.
    pub fn shutdown(&mut self, graceful: bool) -> Result<()> {
        let r = match self.command(if graceful { "shutdown graceful" } else { "shutdown" }) {
            // A server that stops at once may close the connection before
            // its `OK` is read: the request was written, so it was accepted.
            Err(AdminError { kind: AdminErrorKind::Io { source }, .. })
                if matches!(
                    source.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                ) =>
            {
                log::debug!("server={}: closed the connection after shutdown", self.server);
                Ok(())
            }
            other => other.map(drop),
        };
        if let Some(c) = self.conn.take() {
            c.close();
        }
        r
    }

    /// `clear function NAME` (a gearframe extension, see the module docs):
    /// removes the function's queued jobs and returns how many.
    ///
    /// # Errors
    /// `ERR UNKNOWN_COMMAND` from servers without it, I/O, timeout, or
    /// another `ERR` reply.
    pub fn clear_function(&mut self, name: &str) -> Result<u64> {
        let f = word(&self.server, "function name", name)?;
        let v = self.command(&format!("clear function {f}"))?;
        v.parse().map_err(|_| self.parse_err("OK <count>", &v))
    }

    /// Round trip of an ECHO_REQ on the admin connection.
    ///
    /// # Errors
    /// I/O, timeout, or a reply that is not the echo.
    pub fn ping(&mut self) -> Result<Duration> {
        const DATA: &[u8] = b"ping? pong!";
        let start = Instant::now();
        let deadline = start + self.timeout;
        let c = self.conn()?;
        if let Err(e) = c.send(&Packet::EchoReq { data: DATA }) {
            return Err(self.io_err(e));
        }
        let c = self.conn()?;
        match c.recv(Some(deadline)) {
            Ok(p) if p.kind == PacketType::EchoRes && p.body == DATA => Ok(start.elapsed()),
            Ok(p) => {
                let got = format!("{} packet", p.kind);
                let e = self.parse_err("ECHO_RES", &got);
                self.conn = None;
                Err(e)
            }
            Err(e) => Err(self.io_err(e)),
        }
    }

    /// Sends a binary request on the admin connection and waits for a
    /// reply of type `want` (an ERROR packet is [`AdminErrorKind::Server`]).
    fn exchange(&mut self, req: &Packet<'_>, want: PacketType) -> Result<crate::conn::OwnedPacket> {
        let deadline = Instant::now() + self.timeout;
        let c = self.conn()?;
        if let Err(e) = c.send(req) {
            return Err(self.io_err(e));
        }
        let c = self.conn()?;
        match c.recv(Some(deadline)) {
            Ok(p) if p.kind == want => Ok(p),
            Ok(p) => {
                let e = match p.packet() {
                    Ok(Packet::Error { code, text }) => AdminError::new(
                        self.server.clone(),
                        AdminErrorKind::Server {
                            code: String::from_utf8_lossy(code).into_owned(),
                            message: String::from_utf8_lossy(text).into_owned(),
                        },
                    ),
                    _ => self.parse_err(want.name(), &format!("{} packet", p.kind)),
                };
                if let Some(c) = self.conn.take() {
                    c.close();
                }
                Err(e)
            }
            Err(e) => Err(self.io_err(e)),
        }
    }

    /// GET_STATUS on the admin connection: what this server knows of the
    /// job with this handle (`known: false` when it has none).
    ///
    /// # Errors
    /// I/O, timeout, an ERROR packet or a malformed reply.
    pub fn job_status(&mut self, handle: &str) -> Result<JobStatus> {
        let p =
            self.exchange(&Packet::GetStatus { handle: handle.as_bytes() }, PacketType::StatusRes)?;
        match p.packet() {
            Ok(Packet::StatusRes { known, running, numerator, denominator, .. }) => Ok(JobStatus {
                known: known == b"1",
                running: running == b"1",
                numerator: parse_num(numerator),
                denominator: parse_num(denominator),
                clients: None,
            }),
            _ => Err(self.parse_err("STATUS_RES", "a malformed STATUS_RES")),
        }
    }

    /// GET_STATUS_UNIQUE on the admin connection: the job with this unique
    /// id in any function, with the count of waiting clients.
    ///
    /// # Errors
    /// As [`AdminClient::job_status`].
    pub fn job_status_unique(&mut self, unique: &str) -> Result<JobStatus> {
        let req = Packet::GetStatusUnique { unique: unique.as_bytes() };
        let p = self.exchange(&req, PacketType::StatusResUnique)?;
        match p.packet() {
            Ok(Packet::StatusResUnique {
                known, running, numerator, denominator, clients, ..
            }) => Ok(JobStatus {
                known: known == b"1",
                running: running == b"1",
                numerator: parse_num(numerator),
                denominator: parse_num(denominator),
                clients: Some(parse_num(clients)),
            }),
            _ => Err(self.parse_err("STATUS_RES_UNIQUE", "a malformed STATUS_RES_UNIQUE")),
        }
    }

    /// The status of one function, if the server lists it.
    ///
    /// # Errors
    /// As [`AdminClient::status`].
    pub fn function_status(&mut self, function: &str) -> Result<Option<FunctionStatus>> {
        Ok(self.status()?.into_iter().find(|f| f.function == function))
    }
}
