//! What a handler sees: the job, a context to report progress, and the
//! error type for failures.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::conn::{self, Connection};
use crate::proto::Packet;

/// A job assigned to this worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub(crate) function: String,
    pub(crate) handle: String,
    pub(crate) unique: Vec<u8>,
    pub(crate) payload: Vec<u8>,
    pub(crate) attempt: u32,
}

impl Job {
    /// A job built by hand (to call a handler outside a worker).
    pub fn new(
        function: impl Into<String>,
        handle: impl Into<String>,
        unique: impl Into<Vec<u8>>,
        payload: impl Into<Vec<u8>>,
    ) -> Job {
        Job {
            function: function.into(),
            handle: handle.into(),
            unique: unique.into(),
            payload: payload.into(),
            attempt: 1,
        }
    }

    /// The function name the job was submitted to.
    pub fn function(&self) -> &str {
        &self.function
    }

    /// The server's job handle.
    pub fn handle(&self) -> &str {
        &self.handle
    }

    /// The client's unique id (may be empty).
    pub fn unique(&self) -> &[u8] {
        &self.unique
    }

    /// The workload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// 1 for the first run, 2 for the first retry, and so on.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// How a failed job is reported (`failure:` in a function of config.yaml:
/// `auto`, `fail` or `exception`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum FailKind {
    /// Chosen per server so that every client ends with a failure and can
    /// see the message: WORK_WARNING with the message, then WORK_EXCEPTION
    /// on gearframe's server (it relays the exception only to clients that
    /// asked for exceptions, and a WORK_FAIL to the others), WORK_FAIL on
    /// every other server (gearmand's relay of an exception breaks Perl and
    /// Python clients and leaves the `gearman` tool waiting). See
    /// [`EXCEPTIONS_SAFE_OPTION`](crate::proto::EXCEPTIONS_SAFE_OPTION).
    #[default]
    Auto,
    /// WORK_FAIL; a non-empty message goes first as WORK_WARNING.
    Fail,
    /// WORK_EXCEPTION with the message, on every server. Clients that
    /// enabled the `exceptions` option get it as is; the server turns it
    /// into WORK_FAIL for the others (gearmand with a trailing NUL after the
    /// handle, which Perl's Gearman::Client and pygearman cannot match).
    Exception,
}

/// A job failure returned by a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    kind: FailKind,
    message: Vec<u8>,
}

impl JobError {
    /// A failure reported as the server it runs on allows best
    /// ([`FailKind::Auto`]): every client ends and can see `message`.
    pub fn new(message: impl Into<Vec<u8>>) -> JobError {
        JobError { kind: FailKind::Auto, message: message.into() }
    }

    /// A failure reported as WORK_FAIL (the message as a WORK_WARNING first).
    pub fn fail(message: impl Into<Vec<u8>>) -> JobError {
        JobError { kind: FailKind::Fail, message: message.into() }
    }

    /// A failure reported as WORK_EXCEPTION carrying `data`, on every
    /// server (see [`FailKind::Exception`]).
    pub fn exception(data: impl Into<Vec<u8>>) -> JobError {
        JobError { kind: FailKind::Exception, message: data.into() }
    }

    /// The same failure reported as `kind`.
    pub fn with_kind(self, kind: FailKind) -> JobError {
        JobError { kind, ..self }
    }

    /// How it is reported.
    pub fn kind(&self) -> FailKind {
        self.kind
    }

    /// The message or exception data.
    pub fn message(&self) -> &[u8] {
        &self.message
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.message))
    }
}

impl std::error::Error for JobError {}

/// An I/O failure in a handler fails the job with its message.
impl From<io::Error> for JobError {
    fn from(e: io::Error) -> Self {
        JobError::new(e.to_string())
    }
}

/// A lost connection while sending updates fails the job (the slot then
/// reconnects), so handlers can use `ctx.data(..)?`.
impl From<conn::Error> for JobError {
    fn from(e: conn::Error) -> Self {
        JobError::new(e.to_string())
    }
}

/// What a handler returns: the WORK_COMPLETE data, or a failure.
pub type JobResult = Result<Vec<u8>, JobError>;

/// Set when the worker's shutdown grace period is over: running jobs
/// should stop.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(pub(crate) Arc<AtomicBool>);

impl CancelToken {
    /// Whether the job should stop now.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Lets a running handler send WORK_DATA, WORK_WARNING and WORK_STATUS for
/// its job.
#[derive(Debug)]
pub struct JobContext<'a> {
    conn: Option<&'a mut Connection>,
    handle: &'a [u8],
    cancel: CancelToken,
    broken: bool,
}

impl<'a> JobContext<'a> {
    pub(crate) fn new(conn: &'a mut Connection, handle: &'a [u8], cancel: CancelToken) -> Self {
        JobContext { conn: Some(conn), handle, cancel, broken: false }
    }

    /// A context that is connected to nothing: the updates a handler sends
    /// are dropped (to call a handler outside a worker).
    pub fn detached(handle: &'a [u8]) -> JobContext<'a> {
        JobContext { conn: None, handle, cancel: CancelToken::default(), broken: false }
    }

    fn send(&mut self, p: &Packet<'_>) -> Result<(), conn::Error> {
        let Some(conn) = self.conn.as_deref_mut() else { return Ok(()) };
        if self.broken {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "connection lost").into());
        }
        let r = conn.send(p);
        // An invalid packet was not sent: the connection is still in step.
        if r.as_ref().is_err_and(|e| !matches!(e, conn::Error::Invalid(_))) {
            self.broken = true;
        }
        r
    }

    /// Sends partial result data (WORK_DATA).
    ///
    /// # Errors
    /// The connection to the server is lost, or the packet would be over
    /// 4 GiB ([`conn::Error::Invalid`]; nothing is sent).
    pub fn data(&mut self, data: &[u8]) -> Result<(), conn::Error> {
        log::trace!("work_data handle={} len={}", String::from_utf8_lossy(self.handle), data.len());
        self.send(&Packet::WorkData { handle: self.handle, data })
    }

    /// Sends a warning (WORK_WARNING).
    ///
    /// # Errors
    /// The connection to the server is lost, or the packet would be over
    /// 4 GiB ([`conn::Error::Invalid`]; nothing is sent).
    pub fn warning(&mut self, data: &[u8]) -> Result<(), conn::Error> {
        self.send(&Packet::WorkWarning { handle: self.handle, data })
    }

    /// Sends progress (WORK_STATUS), e.g. `status(3, 10)`.
    ///
    /// # Errors
    /// The connection to the server is lost, or the packet would be over
    /// 4 GiB ([`conn::Error::Invalid`]; nothing is sent).
    pub fn status(&mut self, numerator: u64, denominator: u64) -> Result<(), conn::Error> {
        let (n, d) = (numerator.to_string(), denominator.to_string());
        self.send(&Packet::WorkStatus {
            handle: self.handle,
            numerator: n.as_bytes(),
            denominator: d.as_bytes(),
        })
    }

    /// Whether the worker wants the job to stop now (its shutdown grace
    /// period is over).
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// A token to check for cancellation while the context is borrowed.
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }
}

/// A job handler: called once per job (and again per retry), from any of
/// the worker's threads.
pub trait Handler: Send + Sync + 'static {
    /// Runs one job.
    ///
    /// # Errors
    /// The job failed; the error says how to report it.
    fn call(&self, job: &Job, ctx: &mut JobContext<'_>) -> JobResult;
}

impl<F> Handler for F
where
    F: Fn(&Job, &mut JobContext<'_>) -> JobResult + Send + Sync + 'static,
{
    fn call(&self, job: &Job, ctx: &mut JobContext<'_>) -> JobResult {
        self(job, ctx)
    }
}

/// The built-in `echo` handler: completes with the payload.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl Handler for Echo {
    fn call(&self, job: &Job, _ctx: &mut JobContext<'_>) -> JobResult {
        Ok(job.payload.clone())
    }
}
