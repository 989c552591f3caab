//! The worker: a pool of Gearman worker slots that run registered
//! functions.
//!
//! ```no_run
//! use gearframe::worker::{Job, JobContext, JobError, Worker};
//!
//! let worker = Worker::builder()
//!     .servers(["127.0.0.1:4730"])
//!     .client_id("reverser")
//!     .threads(10)
//!     .register("reverse", |job: &Job, ctx: &mut JobContext<'_>| {
//!         ctx.status(1, 2).ok();
//!         if job.payload().is_empty() {
//!             return Err(JobError::new("empty payload"));
//!         }
//!         Ok(job.payload().iter().rev().copied().collect())
//!     })
//!     .build()?;
//! // From a signal handler or another thread: worker.stopper().shutdown();
//! worker.join();
//! # Ok::<(), gearframe::worker::BuildError>(())
//! ```
//!
//! Every setting is a field of [`WorkerConfig`], which is also the
//! `worker:` section of config.yaml: [`WorkerBuilder::config`] takes a whole
//! one, functions defined there ([`FunctionConfig`]: a [`shell::ShellCommand`]
//! with its [`FunctionOptions`], or a built-in) included, and the builder's
//! other methods set one field each.
//!
//! # The pool
//!
//! A worker runs `threads` slots per server. A slot is one thread that owns
//! one connection to one server and runs at most one job at a time, so the
//! worker never takes a job it cannot start at once, and the server's
//! `workers` list shows every slot under the worker's client id. Slots of
//! different servers are independent: when one server goes away, the others
//! keep working.
//!
//! ```text
//!             ┌──────── backoff with jitter ◄──────────┐
//!             ▼                                        │ connect failed
//!        ┌─────────┐ ok  ┌──────────────────────────┐  │ or connection lost
//!  ────► │ CONNECT ├────►│ REGISTER                 │──┘
//!        └─────────┘     │ SET_CLIENT_ID, CAN_DO(s) │
//!                        └────────────┬─────────────┘
//!                                     ▼
//!   ┌───────────────────────► ┌──────────────┐ JOB_ASSIGN_UNIQ ┌──────────┐
//!   │                         │ GRAB_JOB_UNIQ├────────────────►│   RUN    │
//!   │                         └──────┬───────┘                 │ handler, │
//!   │ NOOP, or no NOOP               │ NO_JOB                  │ retries  │
//!   │ within sleep_timeout           ▼                         └────┬─────┘
//!   │                         ┌──────────────┐     WORK_COMPLETE /  │
//!   └─────────────────────────┤ PRE_SLEEP,   │     WORK_FAIL /      │
//!                             │ wait         │     WORK_EXCEPTION   │
//!                             └──────────────┘  ◄── back to GRAB ───┘
//! ```
//!
//! A NOOP that arrives while a GRAB is outstanding is ignored; the slot
//! sleeps again only after NO_JOB. The wait for NOOP has a deadline
//! ([`WorkerBuilder::sleep_timeout`], 30 s): a lost NOOP costs at most that
//! long, never a stuck worker.
//!
//! With gearframe's server a slot asks for pushed jobs
//! ([`WorkerBuilder::push`], the [`PUSH_OPTION`](crate::proto::PUSH_OPTION)):
//! after the server's OPTION_RES it writes each result together with
//! PRE_SLEEP and waits for the JOB_ASSIGN_UNIQ that the server sends as
//! soon as there is a job, skipping the NOOP and the grab. Such a slot never
//! grabs while asleep; at each `sleep_timeout` it sends ECHO_REQ instead, so
//! a dead connection is still noticed.
//!
//! # Stopping
//!
//! [`Stopper::shutdown`] stops the grabbing at once: idle slots are woken
//! by shutting their sockets down and exit. Running jobs go on for the
//! grace period ([`WorkerBuilder::grace`]); after it, their
//! [`CancelToken`] is set, which makes the shell runner kill the job's
//! process group and every other process the job started (see
//! [`shell`] for how they are found, and the child subreaper it makes of
//! the worker process). [`Stopper::stop_now`] ends the grace period at once.
//! A job that fails after the grace period is not reported:
//! its connection is closed, so the server gives the job to another worker.
//!
//! A job whose payload is the JSON object `{"SHUTDOWN": true}` completes
//! (echoing the payload) and then stops the one slot that ran it, which is
//! how the original gearman_frame stopped workers through any server. The
//! worker ends when every slot has stopped.
//!
//! # Failures and retries
//!
//! A handler returns the result data or a [`JobError`]. A panic in a
//! handler is caught and becomes a failure of that job; the slot goes on.
//! Every failure reported is logged as a warning naming the function, the
//! handle, the attempt and the reason.
//!
//! How a failure is sent depends on the server ([`FailKind::Auto`], the
//! default of [`JobError::new`], panics and shell commands): each slot asks
//! its server with the
//! [`EXCEPTIONS_SAFE_OPTION`](crate::proto::EXCEPTIONS_SAFE_OPTION) whether
//! WORK_EXCEPTION reaches only the clients that asked for exceptions.
//! gearframe's server says yes (unless it runs with `exceptions` on): the
//! failure goes out as WORK_WARNING with the reason, then WORK_EXCEPTION, so
//! clients with exceptions get an exception and the others a warning and
//! WORK_FAIL. Every other server (gearmand turns an exception into a
//! WORK_FAIL that Perl and Python clients cannot match, and leaves the
//! `gearman` tool waiting) gets WORK_WARNING with the reason, then
//! WORK_FAIL. [`JobError::fail`] and [`JobError::exception`] choose the
//! packets explicitly.
//! With [`FunctionOptions::retries`] a failed job runs again in the same
//! slot, after a backoff that doubles, before its failure is reported; with
//! [`FunctionOptions::on_failure`] the finally failed job is then submitted
//! as a background job to a dead-letter function, with a JSON payload:
//! `{"function", "handle", "unique", "payload", "error", "attempts"}`.

pub mod shell;

mod command;
mod job;
mod reaper;
mod slot;

pub mod config;

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

pub use command::{PayloadCommands, ShellFunction};
pub use config::{FunctionConfig, WorkerConfig};
pub use job::{CancelToken, Echo, FailKind, Handler, Job, JobContext, JobError, JobResult};

use crate::config::ServerList;

/// Options of one registered function; in a function of config.yaml
/// (`worker.functions.NAME`) the keys `retries`, `retry_backoff`,
/// `server_timeout` (`0`: none) and `on_failure`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct FunctionOptions {
    /// Runs of a failed job after the first, before the failure is
    /// reported (default 0).
    pub retries: u32,
    /// Wait before the first retry; doubles for each later one, up to a
    /// minute (default 1 s).
    #[serde(with = "crate::config::duration")]
    pub retry_backoff: Duration,
    /// Registers with CAN_DO_TIMEOUT: the server requeues a job that runs
    /// longer (default: plain CAN_DO).
    #[serde(with = "config::keys::limit")]
    pub server_timeout: Option<Duration>,
    /// Dead-letter function that gets a finally failed job as a background
    /// job.
    pub on_failure: Option<String>,
}

impl Default for FunctionOptions {
    fn default() -> Self {
        FunctionOptions {
            retries: 0,
            retry_backoff: Duration::from_secs(1),
            server_timeout: None,
            on_failure: None,
        }
    }
}

/// A registered function.
#[derive(Clone)]
pub(crate) struct Function {
    pub(crate) name: String,
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) options: FunctionOptions,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Function")
            .field("name", &self.name)
            .field("options", &self.options)
            .finish()
    }
}

/// The worker could not be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum BuildError {
    /// The server list is empty or has a bad entry.
    Servers(crate::conn::BadServer),
    /// No function was registered.
    NoFunction,
    /// `threads(0)`.
    NoThreads,
    /// A function name that is empty, longer than 512 bytes or holds a NUL.
    FunctionName(String),
    /// A slot or the supervisor thread could not be started.
    Spawn(std::io::Error),
    /// A function of [`WorkerConfig::functions`] that cannot run, and why.
    Function {
        /// Its name.
        name: String,
        /// What is wrong, naming the key.
        reason: String,
    },
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::Servers(e) => write!(f, "{e}"),
            BuildError::NoFunction => f.write_str("no function registered"),
            BuildError::NoThreads => f.write_str("threads must be at least 1"),
            BuildError::FunctionName(name) => write!(f, "invalid function name {name:?}"),
            BuildError::Spawn(e) => write!(f, "cannot start a worker thread: {e}"),
            BuildError::Function { name, reason } => write!(f, "function {name}: {reason}"),
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BuildError::Servers(e) => Some(e),
            BuildError::Spawn(e) => Some(e),
            _ => None,
        }
    }
}

/// Configures and starts a [`Worker`]: its settings are a
/// [`WorkerConfig`] ([`WorkerBuilder::config`] takes a whole one, the other
/// methods set one setting each), its functions those registered and those
/// of [`WorkerConfig::functions`].
#[derive(Debug, Clone, Default)]
pub struct WorkerBuilder {
    pub(crate) config: WorkerConfig,
    functions: Vec<Function>,
}

/// The default client id, `gearframe-worker-PID`: the slots of one worker
/// process share it, and `admin workers` tells processes apart by it.
pub fn default_client_id() -> String {
    format!("gearframe-worker-{}", std::process::id())
}
/// Default slots per server.
pub const DEFAULT_THREADS: usize = 10;

impl WorkerBuilder {
    /// Every setting at once (functions defined there included), replacing
    /// those set before; functions registered stay registered.
    pub fn config(mut self, config: WorkerConfig) -> Self {
        self.config = config;
        self
    }

    /// Servers to work for, each `host[:port]` (port 4730 by default) or a
    /// comma-separated list of them (see
    /// [`parse_server_list`](crate::conn::parse_server_list)); replaces any
    /// list given before. Unset: `GEARMAN_SERVERS`, else 127.0.0.1:4730.
    pub fn servers<I, S>(mut self, servers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.config.servers =
            ServerList::List(servers.into_iter().map(|s| s.as_ref().to_string()).collect());
        self
    }

    /// The name sent with SET_CLIENT_ID (shown by the admin `workers`
    /// command; default `gearframe-worker-PID`).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.config.name = Some(id.into());
        self
    }

    /// Slots (threads and connections) per server; default 10.
    pub fn threads(mut self, n: usize) -> Self {
        self.config.threads = n;
        self
    }

    /// Registers a function with default options.
    pub fn register(self, name: impl Into<String>, handler: impl Handler) -> Self {
        self.register_with(name, handler, FunctionOptions::default())
    }

    /// Registers a function with options.
    pub fn register_with(
        self,
        name: impl Into<String>,
        handler: impl Handler,
        options: FunctionOptions,
    ) -> Self {
        self.register_arc(name, Arc::new(handler), options)
    }

    /// Registers a function whose handler is already shared.
    pub fn register_arc(
        mut self,
        name: impl Into<String>,
        handler: Arc<dyn Handler>,
        options: FunctionOptions,
    ) -> Self {
        let name = name.into();
        self.functions.retain(|f| f.name != name);
        self.functions.push(Function { name, handler, options });
        self
    }

    /// How long running jobs may go on after a shutdown before they are
    /// cancelled; default 30 s.
    pub fn grace(mut self, d: Duration) -> Self {
        self.config.grace = d;
        self
    }

    /// Longest wait for a NOOP before grabbing anyway; default 30 s.
    pub fn sleep_timeout(mut self, d: Duration) -> Self {
        self.config.sleep_timeout = d;
        self
    }

    /// Connect timeout; default 5 s.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.config.connect_timeout = d;
        self
    }

    /// Longest wait for a reply to GRAB_JOB_UNIQ or SUBMIT_JOB_BG, and for
    /// one write; default 30 s.
    pub fn io_timeout(mut self, d: Duration) -> Self {
        self.config.io_timeout = d;
        self
    }

    /// Reconnect backoff: first wait and cap (default 100 ms and 10 s);
    /// the wait doubles after each failure in a row, each jittered down to
    /// half.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.config.backoff_min = min;
        self.config.backoff_max = max;
        self
    }

    /// How long a slot polls for the server's reply before its read blocks
    /// (default 100 µs; zero never polls); see [`crate::busy_poll`].
    pub fn busy_poll(mut self, window: Duration) -> Self {
        self.config.busy_poll = window;
        self
    }

    /// Largest packet body accepted from a server, in bytes (default
    /// 64 MiB, as a server's `max_packet_size`): a packet declaring more is
    /// a protocol error that closes the slot's connection, and the slot
    /// reconnects.
    pub fn max_packet_size(mut self, bytes: u32) -> Self {
        self.config.max_packet_size = bytes;
        self
    }

    /// Whether slots ask the server to assign them jobs directly (the
    /// [`PUSH_OPTION`](crate::proto::PUSH_OPTION)) instead of waking them
    /// with NOOP to grab; default true. Only gearframe's server offers it;
    /// with other servers the slots keep to NOOP and grabs either way.
    pub fn push(mut self, on: bool) -> Self {
        self.config.push = on;
        self
    }

    /// Whether `{"SHUTDOWN": true}` jobs stop a slot (default true).
    pub fn shutdown_jobs(mut self, on: bool) -> Self {
        self.config.shutdown_jobs = on;
        self
    }

    /// Starts the slots.
    ///
    /// # Errors
    /// An empty or bad server list, no function, zero threads, or an empty
    /// or too long function name.
    pub fn build(mut self) -> Result<Worker, BuildError> {
        let given = match &self.config.servers {
            ServerList::None => None,
            list => Some(list.entries()),
        };
        let servers =
            crate::conn::resolve_servers(given.as_deref(), &[]).map_err(BuildError::Servers)?;
        for (name, f) in &self.config.functions {
            if self.functions.iter().any(|r| r.name == *name) {
                continue;
            }
            f.validate().map_err(|reason| BuildError::Function { name: name.clone(), reason })?;
            let (handler, options) = f.to_function();
            self.functions.push(Function { name: name.clone(), handler, options });
        }
        if self.functions.is_empty() {
            return Err(BuildError::NoFunction);
        }
        let config = &mut self.config;
        config.name.get_or_insert_with(default_client_id);
        config.backoff_max = config.backoff_max.max(config.backoff_min);
        if self.config.threads == 0 {
            return Err(BuildError::NoThreads);
        }
        for f in &self.functions {
            if f.name.is_empty() || f.name.len() > 512 || f.name.contains('\0') {
                return Err(BuildError::FunctionName(f.name.clone()));
            }
        }
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
        let (hurry_tx, hurry_rx) = crossbeam_channel::bounded::<()>(0);
        let slot_count = servers.len() * self.config.threads;
        let shared = Arc::new(Pool {
            stopping: AtomicBool::new(false),
            cancel: CancelToken::default(),
            stop_tx: Mutex::new(Some(stop_tx)),
            stop_rx,
            hurry_tx: Mutex::new(Some(hurry_tx)),
            hurry_rx,
            wakers: (0..slot_count).map(|_| Waker::default()).collect(),
            jobs: (0..slot_count).map(|_| Mutex::new(None)).collect(),
            running: AtomicUsize::new(0),
            live_slots: AtomicUsize::new(0),
        });
        let settings = Arc::new(self);
        let mut slots = Vec::new();
        let mut id = 0;
        for server in &servers {
            for _ in 0..settings.config.threads {
                let slot = slot::Slot::new(
                    id,
                    server.clone(),
                    Arc::clone(&settings),
                    Arc::clone(&shared),
                    done_tx.clone(),
                );
                shared.live_slots.fetch_add(1, Ordering::SeqCst);
                let spawned = std::thread::Builder::new()
                    .name(format!("gearframe-slot-{id}"))
                    .spawn(move || slot.run());
                match spawned {
                    Ok(h) => slots.push(h),
                    Err(e) => {
                        shared.live_slots.fetch_sub(1, Ordering::SeqCst);
                        shared.shutdown();
                        for h in slots {
                            let _ = h.join();
                        }
                        return Err(BuildError::Spawn(e));
                    }
                }
                id += 1;
            }
        }
        drop(done_tx);
        let sup_shared = Arc::clone(&shared);
        let grace = settings.config.grace;
        let supervisor = std::thread::Builder::new()
            .name("gearframe-worker-stop".into())
            .spawn(move || supervise(&sup_shared, &done_rx, grace));
        let supervisor = match supervisor {
            Ok(h) => Some(h),
            Err(e) => {
                shared.shutdown();
                for h in slots {
                    let _ = h.join();
                }
                return Err(BuildError::Spawn(e));
            }
        };
        log::info!(
            "worker id={} slots={} servers={:?} functions={:?}",
            settings.name(),
            slots.len(),
            servers,
            settings.functions.iter().map(|f| f.name.as_str()).collect::<Vec<_>>()
        );
        Ok(Worker { shared, slots, supervisor })
    }
}

impl WorkerBuilder {
    /// The client id: the configured name (set by `build`).
    pub(crate) fn name(&self) -> &str {
        self.config.name.as_deref().unwrap_or_default()
    }

    /// The functions registered.
    pub(crate) fn functions(&self) -> &[Function] {
        &self.functions
    }
}

/// How often the supervisor reaps exited orphans of past shell runs.
const ORPHAN_SWEEP: Duration = Duration::from_secs(2);

/// Waits for a shutdown, gives running jobs the grace period (or less, when
/// [`Stopper::stop_now`] hurries it), then cancels them. Ends when every
/// slot has ended. Meanwhile it reaps the processes that shell runs left
/// running and that exited since.
fn supervise(shared: &Pool, done: &Receiver<()>, grace: Duration) {
    loop {
        crossbeam_channel::select! {
            recv(shared.stop_rx) -> _ => break,
            recv(done) -> _ => return,
            default(ORPHAN_SWEEP) => reaper::reap_orphans(),
        }
    }
    crossbeam_channel::select! {
        recv(done) -> _ => return,
        recv(shared.hurry_rx) -> _ => {
            log::info!(
                "stopping now: cancelling {} running job(s)",
                shared.running.load(Ordering::SeqCst)
            );
        }
        default(grace) => {
            log::warn!(
                "shutdown grace of {grace:?} is over: cancelling {} running job(s)",
                shared.running.load(Ordering::SeqCst)
            );
        }
    }
    shared.cancel.0.store(true, Ordering::SeqCst);
    let _ = done.recv();
}

/// A job a slot is running, as [`Stopper::running`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningJob {
    /// The function it was submitted to.
    pub function: String,
    /// The server's job handle.
    pub handle: String,
    /// The server it came from.
    pub server: String,
}

/// One slot's entry of [`Pool::wakers`], on a cache line of its own:
/// each slot updates it twice per job.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Waker(Mutex<Option<(TcpStream, bool)>>);

/// State shared by the handle, the slots and the supervisor.
#[derive(Debug)]
pub(crate) struct Pool {
    pub(crate) stopping: AtomicBool,
    pub(crate) cancel: CancelToken,
    stop_tx: Mutex<Option<Sender<()>>>,
    pub(crate) stop_rx: Receiver<()>,
    /// Dropped by [`Stopper::stop_now`]: the grace period ends at once.
    hurry_tx: Mutex<Option<Sender<()>>>,
    hurry_rx: Receiver<()>,
    /// Socket clones of the slots, with whether the slot is idle (grabbing
    /// or sleeping), by slot id. Shutdown closes the idle ones to wake them.
    wakers: Vec<Waker>,
    /// The job each slot runs, by slot id.
    jobs: Vec<Mutex<Option<RunningJob>>>,
    pub(crate) running: AtomicUsize,
    pub(crate) live_slots: AtomicUsize,
}

impl Pool {
    fn shutdown(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        log::info!("worker stopping: no more jobs are taken");
        drop(self.stop_tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        for slot in 0..self.wakers.len() {
            if let Some((stream, true)) = &*self.waker(slot) {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// The socket clone of a slot's connection, with whether it is idle.
    pub(crate) fn waker(&self, slot: usize) -> MutexGuard<'_, Option<(TcpStream, bool)>> {
        self.wakers[slot].0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the job a slot runs (`None`: it runs none).
    pub(crate) fn set_job(&self, slot: usize, job: Option<RunningJob>) {
        *self.jobs[slot].lock().unwrap_or_else(|e| e.into_inner()) = job;
    }

    fn running_jobs(&self) -> Vec<RunningJob> {
        self.jobs
            .iter()
            .filter_map(|j| j.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    /// Marks a slot idle or busy; false when the worker is stopping (the
    /// slot must not take a job).
    pub(crate) fn set_idle(&self, slot: usize, idle: bool) -> bool {
        if let Some(entry) = &mut *self.waker(slot) {
            entry.1 = idle;
        }
        !self.stopping.load(Ordering::SeqCst)
    }

    /// Waits `d`, or less when the worker stops; true when it stops.
    pub(crate) fn wait_or_stop(&self, d: Duration) -> bool {
        !matches!(self.stop_rx.recv_timeout(d), Err(crossbeam_channel::RecvTimeoutError::Timeout))
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// A running worker. Dropping it stops it and waits for its threads.
#[derive(Debug)]
pub struct Worker {
    shared: Arc<Pool>,
    slots: Vec<JoinHandle<()>>,
    supervisor: Option<JoinHandle<()>>,
}

/// Stops a [`Worker`] from another thread or a signal handler.
#[derive(Debug, Clone)]
pub struct Stopper {
    shared: Arc<Pool>,
}

impl Stopper {
    /// Stops taking jobs; running jobs get the grace period. Returns at once.
    pub fn shutdown(&self) {
        self.shared.shutdown();
    }

    /// Stops taking jobs and cancels the running ones now, without waiting
    /// for the rest of the grace period: shell runs have their processes
    /// stopped, and the cancelled jobs go back to their server (see
    /// [Stopping](self#stopping)). Returns at once.
    pub fn stop_now(&self) {
        self.shared.shutdown();
        drop(self.shared.hurry_tx.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    /// The jobs running right now.
    pub fn running(&self) -> Vec<RunningJob> {
        self.shared.running_jobs()
    }
}

impl Worker {
    /// A new builder.
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder::default()
    }

    /// A handle that can stop the worker from elsewhere.
    pub fn stopper(&self) -> Stopper {
        Stopper { shared: Arc::clone(&self.shared) }
    }

    /// Stops taking jobs (see [`Stopper::shutdown`]). Returns at once.
    pub fn shutdown(&self) {
        self.shared.shutdown();
    }

    /// Jobs running right now.
    pub fn running_jobs(&self) -> usize {
        self.shared.running.load(Ordering::SeqCst)
    }

    /// Slots that have not stopped.
    pub fn live_slots(&self) -> usize {
        self.shared.live_slots.load(Ordering::SeqCst)
    }

    /// Waits until every slot has stopped: after a shutdown, or once
    /// `{"SHUTDOWN": true}` jobs stopped them all.
    pub fn join(mut self) {
        self.join_all();
    }

    fn join_all(&mut self) {
        for h in self.slots.drain(..) {
            if h.join().is_err() {
                log::error!("a worker slot thread panicked");
            }
        }
        if let Some(h) = self.supervisor.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.slots.is_empty() && self.supervisor.is_none() {
            return;
        }
        self.shared.shutdown();
        self.join_all();
    }
}

/// Whether a payload is the shutdown job `{"SHUTDOWN": true}`.
pub(crate) fn is_shutdown_payload(payload: &[u8]) -> bool {
    let trimmed = payload.trim_ascii_start();
    if !trimmed.starts_with(b"{") || payload.len() > 4096 {
        return false;
    }
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(serde_json::Value::Object(m)) => {
            m.get("SHUTDOWN") == Some(&serde_json::Value::Bool(true))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_payloads() {
        assert!(is_shutdown_payload(br#"{"SHUTDOWN": true}"#));
        assert!(is_shutdown_payload(br#" {"SHUTDOWN":true, "x": 1}"#));
        assert!(!is_shutdown_payload(br#"{"SHUTDOWN": false}"#));
        assert!(!is_shutdown_payload(b"SHUTDOWN"));
        assert!(!is_shutdown_payload(b"{not json"));
    }

    #[test]
    fn build_errors() {
        let e = Worker::builder()
            .servers(Vec::<String>::new())
            .register("f", Echo)
            .build()
            .unwrap_err();
        assert!(matches!(e, BuildError::Servers(_)), "{e:?}");
        assert!(e.to_string().starts_with("no server given"), "{e}");
        let e = Worker::builder().servers(["http://x"]).register("f", Echo).build().unwrap_err();
        assert!(e.to_string().contains("bad server `http://x`"), "{e}");
        let e = Worker::builder().servers(["127.0.0.1:1"]).build().unwrap_err();
        assert!(matches!(e, BuildError::NoFunction), "{e:?}");
        assert_eq!(e.to_string(), "no function registered");
        let e =
            Worker::builder().servers(["x"]).threads(0).register("f", Echo).build().unwrap_err();
        assert!(matches!(e, BuildError::NoThreads), "{e:?}");
        assert!(e.to_string().contains("threads"));
        let e = Worker::builder().servers(["x"]).register("", Echo).build().unwrap_err();
        assert!(matches!(&e, BuildError::FunctionName(n) if n.is_empty()), "{e:?}");
        let mut config = WorkerConfig::default();
        config.functions.insert("f".into(), FunctionConfig::default());
        let e = Worker::builder().config(config.clone()).servers(["x"]).build().unwrap_err();
        assert!(matches!(&e, BuildError::Function { name, .. } if name == "f"), "{e:?}");
        assert!(e.to_string().starts_with("function f: set one of command"), "{e}");
        // A function registered by that name replaces the config's.
        let e = Worker::builder().config(config).servers(["x"]).threads(0).register("f", Echo);
        assert!(matches!(e.build().unwrap_err(), BuildError::NoThreads));
    }
}
