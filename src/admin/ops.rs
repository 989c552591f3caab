//! Operations built on the admin protocol and the worker and client
//! libraries: emptying a queue and stopping workers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{AdminClient, AdminError, AdminErrorKind, Result, WorkerInfo};
use crate::client::{Client, Job};
use crate::proto::Priority;
use crate::worker::{JobError, Worker};

/// The payload that stops one gearframe worker slot (and one thread of
/// the original gearman_frame workers).
pub const SHUTDOWN_PAYLOAD: &str = r#"{"SHUTDOWN": true}"#;

/// Client id of the draining worker of [`drain`].
pub const DRAIN_CLIENT_ID: &str = "gearframe-admin-clear";

/// How a queue was emptied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClearMethod {
    /// The server's `clear function` command.
    Native,
    /// A worker that failed the queued jobs.
    Drained,
}

/// Settings of [`clear`] and [`drain`].
#[derive(Debug, Clone)]
pub struct ClearOptions {
    /// Limit of each admin connect and reply wait.
    pub timeout: Duration,
    /// Give up when neither the count of drained jobs nor the queue moved
    /// for this long (jobs scheduled for later, or a worker that cannot
    /// connect).
    pub stall: Duration,
    /// How often `status` is read while draining.
    pub poll: Duration,
    /// Connections of the draining worker.
    pub threads: usize,
}

impl Default for ClearOptions {
    fn default() -> Self {
        ClearOptions {
            timeout: super::DEFAULT_TIMEOUT,
            stall: Duration::from_secs(10),
            poll: Duration::from_millis(50),
            threads: 8,
        }
    }
}

/// What [`clear`] did on one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClearReport {
    /// `host:port`.
    pub server: String,
    /// The function.
    pub function: String,
    /// How.
    pub method: ClearMethod,
    /// Jobs removed (native) or failed by the draining worker.
    pub cleared: u64,
    /// Jobs still queued at the end (0 unless stopped early).
    pub remaining: u64,
    /// The caller stopped the drain before the queue was empty.
    pub interrupted: bool,
}

/// Empties `function`'s queue on `server`: with the server's
/// `clear function` command when it has one, else with [`drain`].
///
/// `progress(cleared, queued)` is called while draining; returning `false`
/// stops the drain early.
///
/// # Errors
/// The server is down, does not know the function
/// ([`AdminErrorKind::UnknownFunction`]), or the drain stalled.
pub fn clear(
    server: &str,
    function: &str,
    opts: &ClearOptions,
    progress: &mut dyn FnMut(u64, u64) -> bool,
) -> Result<ClearReport> {
    let mut admin = AdminClient::lazy(server, opts.timeout);
    match admin.clear_function(function) {
        Ok(n) => {
            log::info!("server={} func={function}: cleared {n} jobs natively", admin.server());
            Ok(ClearReport {
                server: admin.server().to_string(),
                function: function.to_string(),
                method: ClearMethod::Native,
                cleared: n,
                remaining: 0,
                interrupted: false,
            })
        }
        Err(e) if e.is_unknown_command() => drain(server, function, opts, progress),
        Err(e) if e.code().is_some_and(|c| c.eq_ignore_ascii_case("UNKNOWN_FUNCTION")) => {
            Err(AdminError::new(
                admin.server(),
                AdminErrorKind::UnknownFunction { function: function.to_string() },
            ))
        }
        Err(e) => Err(e),
    }
}

/// Empties `function`'s queue on `server` with a worker that fails every
/// job it gets, and stops it once `status` shows no queued job (running
/// jobs of other workers are left alone). Workers of the function that are
/// connected keep taking jobs meanwhile; stop them first for an exact count.
///
/// # Errors
/// As [`clear`].
pub fn drain(
    server: &str,
    function: &str,
    opts: &ClearOptions,
    progress: &mut dyn FnMut(u64, u64) -> bool,
) -> Result<ClearReport> {
    let mut admin = AdminClient::lazy(server, opts.timeout);
    let server = admin.server().to_string();
    let unknown = || {
        AdminError::new(
            server.clone(),
            AdminErrorKind::UnknownFunction { function: function.to_string() },
        )
    };
    let first = admin.function_status(function)?.ok_or_else(unknown)?;
    let mut report = ClearReport {
        server: server.clone(),
        function: function.to_string(),
        method: ClearMethod::Drained,
        cleared: 0,
        remaining: first.queued(),
        interrupted: false,
    };
    if first.queued() == 0 {
        return Ok(report);
    }
    let count = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&count);
    let worker = Worker::builder()
        .servers([server.as_str()])
        .client_id(DRAIN_CLIENT_ID)
        .threads(opts.threads.max(1))
        .shutdown_jobs(false)
        .grace(opts.timeout)
        .sleep_timeout(opts.poll.max(Duration::from_millis(100)))
        .connect_timeout(opts.timeout)
        .io_timeout(opts.timeout)
        .register(function, move |_: &crate::worker::Job, _: &mut crate::worker::JobContext<'_>| {
            c.fetch_add(1, Ordering::Relaxed);
            Err(JobError::fail(Vec::new()))
        })
        .build()
        .map_err(|e| {
            AdminError::new(server.clone(), AdminErrorKind::InvalidArgument(e.to_string()))
        })?;
    log::info!("server={server} func={function}: draining {} queued jobs", first.queued());
    let mut last = (0, first.queued());
    let mut last_change = Instant::now();
    let outcome = loop {
        std::thread::sleep(opts.poll);
        let queued = match admin.function_status(function) {
            Ok(s) => s.map_or(0, |s| s.queued()),
            Err(e) => break Err(e),
        };
        let done = count.load(Ordering::Relaxed);
        report.remaining = queued;
        if !progress(done, queued) {
            report.interrupted = true;
            break Ok(());
        }
        if queued == 0 {
            break Ok(());
        }
        if (done, queued) != last {
            last = (done, queued);
            last_change = Instant::now();
        } else if last_change.elapsed() >= opts.stall {
            break Err(AdminError::new(
                server.clone(),
                AdminErrorKind::Stalled {
                    function: function.to_string(),
                    queued,
                    after: opts.stall,
                },
            ));
        }
    };
    worker.shutdown();
    worker.join();
    report.cleared = count.load(Ordering::Relaxed);
    log::info!("server={server} func={function}: drained {} jobs", report.cleared);
    outcome.map(|()| report)
}

/// Which workers [`stop_workers`] stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopTarget {
    /// Connections registered for this function.
    Function(String),
    /// Every connection with a registered function.
    All,
}

impl StopTarget {
    fn matches(&self, w: &WorkerInfo) -> bool {
        match self {
            StopTarget::Function(f) => w.can_do(f),
            StopTarget::All => !w.functions.is_empty(),
        }
    }
}

/// Settings of [`stop_workers`].
#[derive(Debug, Clone)]
pub struct StopWorkersOptions {
    /// Limit of each connect and reply wait.
    pub timeout: Duration,
    /// How long to wait for the workers to disconnect.
    pub wait: Duration,
    /// How often `workers` is read while waiting.
    pub poll: Duration,
    /// Set (by a Ctrl-C handler) to stop early: the shutdown jobs no worker
    /// has taken yet are cancelled, so that they cannot stop a worker later.
    pub interrupt: Option<Arc<AtomicBool>>,
}

impl Default for StopWorkersOptions {
    fn default() -> Self {
        StopWorkersOptions {
            timeout: super::DEFAULT_TIMEOUT,
            wait: Duration::from_secs(30),
            poll: Duration::from_millis(50),
            interrupt: None,
        }
    }
}

impl StopWorkersOptions {
    fn interrupted(&self) -> bool {
        self.interrupt.as_ref().is_some_and(|f| f.load(Ordering::SeqCst))
    }
}

/// What [`stop_workers`] did on one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StopReport {
    /// `host:port`.
    pub server: String,
    /// Matching worker connections before.
    pub workers: u64,
    /// Shutdown jobs submitted, per function.
    pub jobs: BTreeMap<String, u64>,
    /// Matching connections that disconnected within the wait.
    pub stopped: u64,
    /// Shutdown jobs no worker took in time, cancelled so that they cannot
    /// stop a worker started later.
    pub cancelled: u64,
    /// Stopped early by [`StopWorkersOptions::interrupt`].
    pub interrupted: bool,
}

/// Stops workers the way the original gearman_frame did: one
/// high-priority background `{"SHUTDOWN": true}` job per registered worker
/// connection, which works through any server. Waits until that many
/// matching connections are gone (or `wait` passes), then cancels the
/// shutdown jobs nobody took.
///
/// With [`StopTarget::All`] each connection is counted once, under the
/// function that most connections share, so a job can reach the most
/// workers. Workers that do not know the convention just run the job.
///
/// # Errors
/// The server is down or a submission fails.
pub fn stop_workers(
    server: &str,
    target: &StopTarget,
    opts: &StopWorkersOptions,
) -> Result<StopReport> {
    let mut admin = AdminClient::lazy(server, opts.timeout);
    let server = admin.server().to_string();
    let before: Vec<WorkerInfo> =
        admin.workers()?.into_iter().filter(|w| target.matches(w)).collect();
    let mut jobs: BTreeMap<String, u64> = BTreeMap::new();
    match target {
        StopTarget::Function(f) => {
            if !before.is_empty() {
                jobs.insert(f.clone(), before.len() as u64);
            }
        }
        StopTarget::All => {
            let mut shared: BTreeMap<&str, usize> = BTreeMap::new();
            for w in &before {
                let mut fs: Vec<&str> = w.functions.iter().map(String::as_str).collect();
                fs.dedup();
                for f in fs {
                    *shared.entry(f).or_default() += 1;
                }
            }
            for w in &before {
                let best = w.functions.iter().max_by_key(|f| (shared[f.as_str()], f.as_str()));
                if let Some(f) = best {
                    *jobs.entry(f.clone()).or_default() += 1;
                }
            }
        }
    }
    let mut report = StopReport {
        server: server.clone(),
        workers: before.len() as u64,
        jobs: jobs.clone(),
        stopped: 0,
        cancelled: 0,
        interrupted: false,
    };
    if before.is_empty() {
        return Ok(report);
    }
    let client = Client::builder()
        .servers([server.as_str()])
        .connect_timeout(opts.timeout)
        .ack_timeout(opts.timeout)
        .retry_timeout(opts.timeout)
        .build()
        .map_err(|e| {
            AdminError::new(server.clone(), AdminErrorKind::InvalidArgument(e.to_string()))
        })?;
    let mut handles = Vec::new();
    'submit: for (f, n) in &jobs {
        for _ in 0..*n {
            if opts.interrupted() {
                break 'submit;
            }
            let job =
                Job::new(f.clone(), SHUTDOWN_PAYLOAD).priority(Priority::High).background(true);
            let h = client.submit_background_job(&job).map_err(|source| {
                AdminError::new(server.clone(), AdminErrorKind::Submit { source })
            })?;
            log::info!("server={server} func={f}: shutdown job {h}");
            handles.push(h);
        }
    }
    let want = before.len() as u64;
    let deadline = Instant::now() + opts.wait;
    loop {
        let now = admin.workers()?.into_iter().filter(|w| target.matches(w)).count() as u64;
        report.stopped = want.saturating_sub(now);
        if opts.interrupted() {
            report.interrupted = true;
            break;
        }
        if report.stopped >= want || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(opts.poll);
    }
    if report.stopped < want || report.interrupted {
        for h in &handles {
            let leftover = client.status(h).is_ok_and(|s| s.known && !s.running);
            if leftover && admin.cancel_job(h.as_str()).is_ok() {
                report.cancelled += 1;
            }
        }
    }
    Ok(report)
}
