//! The submission engine: one lane per server a call uses, and the calling
//! thread as coordinator. A call to one server (or of one job) runs its lane
//! on the calling thread; otherwise each lane has a thread.
//!
//! ```text
//!  caller ──jobs──▶ coordinator ──Vec<job index>──▶ lane(server k) ──SUBMIT*──▶ server k
//!     ▲                 │  ▲                            │   ◀──JOB_CREATED, WORK_*──┘
//!     └──events, done───┘  └────────Vec<Report>─────────┘
//! ```
//!
//! A lane pipelines submissions on one connection, at most `window` jobs in
//! flight (a background job until JOB_CREATED, a foreground job until its
//! result), writing every packet it can in one `write`. JOB_CREATED is
//! matched to submissions in order; results are matched by handle, one copy
//! of each packet per submission attached to that handle.
//!
//! When a connection cannot be opened or breaks, the lane hands back every
//! job that has no outcome yet (`Report::Lost`), and the coordinator sends
//! them to the next server in the job's order, with the same unique id. A
//! background job answered with `QUEUE_ERROR` (the server could not queue
//! it: its persistent queue cannot be written, or a limit) goes to the next
//! server the same way (`Report::Refused`); once every server refused it,
//! the job fails with the last server's error. It never counts as accepted.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, unbounded};

use super::error::{Context, Error, Phase, Result};
use super::job::{Job, JobEvent, JobHandle, JobOutcome, parse_num, stable_hash};
use crate::conn::{Connection, OwnedPacket};
use crate::proto::{Packet, PacketType, SubmitKind};
use crate::util::Backoff;

/// How often a blocked lane looks at its inbox, and the coordinator at
/// job deadlines.
const TICK: Duration = Duration::from_millis(50);
/// Idle connections kept per server between calls.
const MAX_IDLE: usize = 8;

/// The client settings the engine runs on.
pub(crate) use super::config::ClientConfig as ClientSettings;

#[derive(Debug, Default)]
struct Health {
    /// Started at the first failure, with the settings' bounds.
    backoff: Option<Backoff>,
    retry_at: Option<Instant>,
}

/// One server: its address, idle connections and reconnect back-off.
#[derive(Debug)]
pub(crate) struct ServerEntry {
    pub(crate) addr: Arc<str>,
    idle: Mutex<Vec<Connection>>,
    health: Mutex<Health>,
}

impl ServerEntry {
    pub(crate) fn new(addr: &str) -> ServerEntry {
        ServerEntry {
            addr: Arc::from(addr),
            idle: Mutex::new(Vec::new()),
            health: Mutex::default(),
        }
    }

    fn retry_at(&self) -> Option<Instant> {
        self.health.lock().unwrap_or_else(|e| e.into_inner()).retry_at
    }

    fn record_ok(&self) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = &mut h.backoff {
            b.reset();
        }
        h.retry_at = None;
    }

    /// Waits out a [`Backoff`] between the settings' bounds before the
    /// server is tried again.
    fn record_failure(&self, set: &ClientSettings) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let backoff =
            h.backoff.get_or_insert_with(|| Backoff::new(set.backoff_min, set.backoff_max));
        let wait = backoff.fail();
        log::debug!("server={} failures={} backoff={wait:?}", self.addr, backoff.failures());
        h.retry_at = Some(Instant::now() + wait);
    }

    fn take_idle(&self) -> Option<Connection> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn put_idle(&self, c: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(c);
        }
    }

    fn ctx(&self) -> Box<Context> {
        Box::new(Context { server: Some(self.addr.to_string()), function: None, handle: None })
    }

    /// Opens a fresh connection and queues the per-connection setup
    /// (client id, exceptions option). Returns the number of OPTION_REQs
    /// whose answer is still to come.
    fn open(&self, set: &ClientSettings) -> Result<(Connection, usize)> {
        let mut c = Connection::connect(&self.addr, set.connect_timeout).map_err(|e| {
            self.record_failure(set);
            Error::Connection { phase: Phase::Connect, reason: io_reason(&e), context: self.ctx() }
        })?;
        self.record_ok();
        c.set_busy_poll(set.busy_poll);
        c.set_max_packet_size(set.max_packet_size);
        let _ = c.set_write_timeout(Some(set.ack_timeout));
        if let Some(id) = &set.client_id {
            let _ = c.queue(&Packet::SetClientId { id: id.as_bytes() });
        }
        let mut options = 0;
        if set.exceptions {
            let _ = c.queue(&Packet::OptionReq { option: b"exceptions" });
            options = 1;
        }
        log::debug!("server={} connected", self.addr);
        Ok((c, options))
    }
}

/// The cause of a socket error in words: refused, reset, timed out, or a
/// protocol error (the peer does not speak Gearman).
fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".into(),
        io::ErrorKind::ConnectionRefused => {
            "connection refused (is a job server listening there?)".into()
        }
        io::ErrorKind::ConnectionReset => "connection reset by the server".into(),
        io::ErrorKind::BrokenPipe => "the server closed the connection".into(),
        io::ErrorKind::UnexpectedEof => "the server closed the connection".into(),
        io::ErrorKind::InvalidData => {
            format!("protocol error: {e} (is it a Gearman job server?)")
        }
        _ => e.to_string(),
    }
}

fn strip_nul(b: &[u8]) -> &[u8] {
    let end = b.iter().rposition(|&c| c != 0).map_or(0, |p| p + 1);
    &b[..end]
}

/// One request with one reply (status, echo) on a pooled connection to
/// `slot`, skipping packets of other types. A pooled connection that turns
/// out to be dead is replaced by a fresh one once.
pub(crate) fn exchange(
    slot: &ServerEntry,
    set: &ClientSettings,
    request: &Packet<'_>,
    want: PacketType,
) -> Result<OwnedPacket> {
    let mut allow_pooled = true;
    loop {
        let (mut conn, mut options, reused) = match slot.take_idle().filter(|_| allow_pooled) {
            Some(c) => (c, 0, true),
            None => {
                let (c, o) = slot.open(set)?;
                (c, o, false)
            }
        };
        let broken =
            |reason: String| Error::Connection { phase: Phase::Reply, reason, context: slot.ctx() };
        if let Err(e) = conn.queue(request) {
            return Err(broken(e.to_string()));
        }
        if let Err(e) = conn.flush() {
            if reused {
                allow_pooled = false;
                continue;
            }
            return Err(broken(io_reason(&e)));
        }
        let deadline = Instant::now() + set.ack_timeout;
        loop {
            let p = match conn.recv(Some(deadline)) {
                Ok(p) => p,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return Err(Error::Timeout {
                        phase: Phase::Reply,
                        limit: set.ack_timeout,
                        context: slot.ctx(),
                    });
                }
                Err(_) if reused => {
                    allow_pooled = false;
                    break;
                }
                Err(e) => return Err(broken(io_reason(&e))),
            };
            if p.kind == want {
                slot.put_idle(conn);
                return Ok(p);
            }
            match p.kind {
                PacketType::OptionRes => options = options.saturating_sub(1),
                PacketType::Error if options > 0 => options -= 1,
                PacketType::Error => {
                    let (code, text) = error_fields(&p);
                    return Err(Error::Server {
                        phase: Phase::Reply,
                        code,
                        text,
                        context: slot.ctx(),
                    });
                }
                other => {
                    log::debug!("server={} ignored {other} while waiting for {want}", slot.addr)
                }
            }
        }
    }
}

fn error_fields(p: &OwnedPacket) -> (String, String) {
    match p.packet() {
        Ok(Packet::Error { code, text }) => {
            (String::from_utf8_lossy(code).into_owned(), String::from_utf8_lossy(text).into_owned())
        }
        _ => ("UNKNOWN".into(), String::from_utf8_lossy(&p.body).into_owned()),
    }
}

/// What a lane tells the coordinator.
#[derive(Debug)]
enum Report {
    Created {
        job: usize,
        handle: JobHandle,
    },
    Event {
        job: usize,
        event: JobEvent,
    },
    Done {
        job: usize,
        result: Result<JobOutcome>,
    },
    Lost {
        lane: usize,
        jobs: Vec<usize>,
        error: Error,
    },
    /// A background job the server could not queue (`QUEUE_ERROR`: its
    /// persistent queue cannot be written, or a limit): the next server
    /// may take it.
    Refused {
        lane: usize,
        job: usize,
        error: Error,
    },
}

#[derive(Debug)]
struct Awaiting {
    job: usize,
    sent: Instant,
}

/// The submissions attached to one handle on one connection. The server
/// sends each WORK_* packet once per attachment, so copies are handed out
/// in turn: every attached job sees each packet once.
#[derive(Debug, Default)]
struct Listeners {
    jobs: Vec<usize>,
    cursor: usize,
}

/// Read-only state shared by the lanes of one call.
struct Batch<'a> {
    set: &'a ClientSettings,
    slots: &'a [ServerEntry],
    jobs: &'a [Job],
    uniques: &'a [String],
    done: &'a [AtomicBool],
}

struct Lane<'a> {
    idx: usize,
    sh: &'a Batch<'a>,
    inbox: Receiver<Vec<usize>>,
    out: Sender<Vec<Report>>,
    conn: Option<Connection>,
    reused: bool,
    got_reply: bool,
    force_fresh: bool,
    /// Driven by the calling thread, which must not sleep long in it.
    inline: bool,
    dirty: bool,
    options: usize,
    pending: VecDeque<usize>,
    awaiting: VecDeque<Awaiting>,
    running: HashMap<Vec<u8>, Listeners>,
    running_jobs: usize,
    reports: Vec<Report>,
    last_scan: Instant,
}

impl<'a> Lane<'a> {
    fn slot(&self) -> &'a ServerEntry {
        &self.sh.slots[self.idx]
    }

    fn inflight(&self) -> usize {
        self.awaiting.len() + self.running_jobs
    }

    fn is_done(&self, job: usize) -> bool {
        self.sh.done[job].load(Ordering::Relaxed)
    }

    fn flush_reports(&mut self) {
        if !self.reports.is_empty() {
            let batch = std::mem::take(&mut self.reports);
            let _ = self.out.send(batch);
        }
    }

    fn run(mut self) {
        while self.step(true) {}
        self.finish()
    }

    /// Whether the lane has anything to do without new jobs.
    fn has_work(&self) -> bool {
        self.inflight() > 0 || !self.pending.is_empty() || !self.inbox.is_empty()
    }

    /// One turn of the lane's loop; false once its inbox is closed. With
    /// `block` an idle lane waits for jobs; without it (a lane driven by
    /// the calling thread) it returns at once and hands over its reports
    /// after every read.
    fn step(&mut self, block: bool) -> bool {
        loop {
            match self.inbox.try_recv() {
                Ok(v) => self.pending.extend(v),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
        if self.inflight() == 0 && self.pending.is_empty() {
            self.flush_reports();
            if !block {
                return true;
            }
            return match self.inbox.recv() {
                Ok(v) => {
                    self.pending.extend(v);
                    true
                }
                Err(_) => false,
            };
        }
        if self.conn.is_none() {
            if let Err(e) = self.connect() {
                self.lose_all(e);
                self.flush_reports();
                return true;
            }
        }
        if let Err(e) = self.top_up() {
            self.read_replies_after_write_error();
            self.broken(e);
            if !block {
                self.flush_reports();
            }
            return true;
        }
        if self.inflight() == 0 {
            return true;
        }
        self.flush_reports();
        self.read_some();
        if !block {
            self.flush_reports();
        }
        true
    }

    fn finish(mut self) {
        self.flush_reports();
        if let Some(c) = self.conn.take() {
            if self.inflight() == 0 && self.options == 0 && !self.dirty {
                self.slot().put_idle(c);
            } else {
                c.close();
            }
        }
    }

    fn connect(&mut self) -> Result<()> {
        if !self.force_fresh {
            if let Some(c) = self.slot().take_idle() {
                self.conn = Some(c);
                self.reused = true;
                self.got_reply = false;
                return Ok(());
            }
        }
        self.force_fresh = false;
        if let Some(at) = self.slot().retry_at() {
            let now = Instant::now();
            if at > now {
                if self.inline && at - now > TICK {
                    // The caller checks job deadlines between turns.
                    std::thread::sleep(TICK);
                    return Ok(());
                }
                std::thread::sleep(at - now);
            }
        }
        let (c, options) = self.slot().open(self.sh.set)?;
        self.conn = Some(c);
        self.options = options;
        self.reused = false;
        self.got_reply = false;
        self.dirty = false;
        Ok(())
    }

    /// Queues submissions up to the window and writes them in one go.
    fn top_up(&mut self) -> Result<()> {
        let window = self.sh.set.window;
        let now = Instant::now();
        let Some(conn) = self.conn.as_mut() else { return Ok(()) };
        // Refill a large window in large steps: submissions then go out in
        // few big writes, and the server's reader wakes once per step
        // rather than once per finished job.
        let free = window.saturating_sub(self.awaiting.len() + self.running_jobs);
        let refill = free >= (window / 8).max(1) || free >= self.pending.len();
        let mut epoch_buf = itoa_buf();
        while refill && self.awaiting.len() + self.running_jobs < window {
            let Some(j) = self.pending.pop_front() else { break };
            if self.sh.done[j].load(Ordering::Relaxed) {
                continue;
            }
            let job = &self.sh.jobs[j];
            let unique = self.sh.uniques[j].as_bytes();
            let p = match job.epoch() {
                Some(e) => Packet::SubmitJobEpoch {
                    function: job.function().as_bytes(),
                    unique,
                    epoch: fmt_u64(e, &mut epoch_buf),
                    data: job.payload(),
                },
                None => Packet::Submit {
                    kind: SubmitKind {
                        priority: job.get_priority(),
                        background: job.is_background(),
                    },
                    function: job.function().as_bytes(),
                    unique,
                    data: job.payload(),
                },
            };
            if let Err(e) = conn.queue(&p) {
                self.reports.push(Report::Done {
                    job: j,
                    result: Err(Error::InvalidJob {
                        function: job.function().to_string(),
                        reason: e.to_string(),
                    }),
                });
                continue;
            }
            log::trace!(
                "server={} submit func={} unique={}",
                self.sh.slots[self.idx].addr,
                job.function(),
                self.sh.uniques[j]
            );
            self.awaiting.push_back(Awaiting { job: j, sent: now });
        }
        conn.flush().map_err(|e| Error::Connection {
            phase: Phase::Send,
            reason: io_reason(&e),
            context: self.slot().ctx(),
        })
    }

    /// A write failed: the server may have answered before it closed the
    /// connection (ERROR `ARGUMENT_TOO_LARGE` for a packet over its limit),
    /// so what it sent is read, briefly, before the jobs are given back.
    fn read_replies_after_write_error(&mut self) {
        let Some(mut conn) = self.conn.take() else { return };
        let deadline = Instant::now() + self.sh.set.ack_timeout.min(Duration::from_secs(1));
        while let Ok(p) = conn.recv(Some(deadline)) {
            if self.on_packet(p).is_err() {
                break;
            }
        }
        self.conn = Some(conn);
    }

    fn read_some(&mut self) {
        let set = self.sh.set;
        let now = Instant::now();
        if let Some(a) = self.awaiting.front() {
            if now >= a.sent + set.ack_timeout {
                let function = self.sh.jobs[a.job].function().to_string();
                let e = Error::Timeout {
                    phase: Phase::Ack,
                    limit: set.ack_timeout,
                    context: Box::new(Context { function: Some(function), ..*self.slot().ctx() }),
                };
                return self.broken(e);
            }
        }
        let mut deadline = now + TICK;
        if let Some(a) = self.awaiting.front() {
            deadline = deadline.min(a.sent + set.ack_timeout);
        }
        let Some(mut conn) = self.conn.take() else { return };
        let first = match conn.recv(Some(deadline)) {
            Ok(p) => Some(p),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => None,
            Err(e) => {
                self.conn = Some(conn);
                let phase = if self.awaiting.is_empty() { Phase::Result } else { Phase::Ack };
                let e =
                    Error::Connection { phase, reason: io_reason(&e), context: self.slot().ctx() };
                return self.broken(e);
            }
        };
        if let Some(p) = first {
            let mut next = Some(p);
            while let Some(p) = next {
                if let Err(e) = self.on_packet(p) {
                    self.conn = Some(conn);
                    return self.broken(e);
                }
                next = match conn.try_recv() {
                    Ok(p) => p,
                    Err(e) => {
                        self.conn = Some(conn);
                        let phase =
                            if self.awaiting.is_empty() { Phase::Result } else { Phase::Ack };
                        let e = Error::Connection {
                            phase,
                            reason: io_reason(&e),
                            context: self.slot().ctx(),
                        };
                        return self.broken(e);
                    }
                };
            }
        }
        self.conn = Some(conn);
        if now.duration_since(self.last_scan) >= TICK {
            self.last_scan = now;
            self.drop_finished();
        }
    }

    /// Frees the window slots of jobs the coordinator has given up on.
    fn drop_finished(&mut self) {
        let done = self.sh.done;
        let mut removed = 0;
        self.running.retain(|_, l| {
            let before = l.jobs.len();
            l.jobs.retain(|&j| !done[j].load(Ordering::Relaxed));
            removed += before - l.jobs.len();
            !l.jobs.is_empty()
        });
        if removed > 0 {
            self.running_jobs -= removed;
            self.dirty = true;
        }
    }

    fn on_packet(&mut self, p: OwnedPacket) -> Result<()> {
        self.got_reply = true;
        let protocol = |reason: String| Error::Connection {
            phase: Phase::Result,
            reason,
            context: Box::default(),
        };
        match p.kind {
            PacketType::JobCreated => {
                let Some(a) = self.awaiting.pop_front() else {
                    return Err(protocol("JOB_CREATED without a submission".into()));
                };
                let handle_bytes = strip_nul(&p.body);
                if self.is_done(a.job) {
                    self.dirty = true;
                    return Ok(());
                }
                let handle = JobHandle {
                    server: self.slot().addr.clone(),
                    handle: String::from_utf8_lossy(handle_bytes).into_owned(),
                };
                if self.sh.jobs[a.job].is_background() {
                    let result = Ok(JobOutcome::Accepted { handle });
                    self.reports.push(Report::Done { job: a.job, result });
                } else {
                    self.running.entry(handle_bytes.to_vec()).or_default().jobs.push(a.job);
                    self.running_jobs += 1;
                    self.reports.push(Report::Created { job: a.job, handle });
                }
            }
            PacketType::WorkData
            | PacketType::WorkWarning
            | PacketType::WorkStatus
            | PacketType::WorkComplete
            | PacketType::WorkFail
            | PacketType::WorkException => {
                let pk = p.packet().map_err(|e| protocol(e.to_string()))?;
                let (handle, terminal) = match pk {
                    Packet::WorkData { handle, .. }
                    | Packet::WorkWarning { handle, .. }
                    | Packet::WorkStatus { handle, .. } => (handle, false),
                    Packet::WorkComplete { handle, .. } | Packet::WorkException { handle, .. } => {
                        (handle, true)
                    }
                    Packet::WorkFail { handle } => (strip_nul(handle), true),
                    _ => return Ok(()),
                };
                let Some(l) = self.running.get_mut(handle) else {
                    log::trace!("server={} {} for unknown handle", self.slot().addr, p.kind);
                    return Ok(());
                };
                let at = l.cursor % l.jobs.len();
                let job = if terminal {
                    let j = l.jobs.remove(at);
                    if !l.jobs.is_empty() {
                        l.cursor = at % l.jobs.len();
                    }
                    j
                } else {
                    l.cursor = (at + 1) % l.jobs.len();
                    l.jobs[at]
                };
                if terminal {
                    if l.jobs.is_empty() {
                        self.running.remove(handle);
                    }
                    self.running_jobs -= 1;
                }
                let jh = || JobHandle {
                    server: self.sh.slots[self.idx].addr.clone(),
                    handle: String::from_utf8_lossy(handle).into_owned(),
                };
                let report = match pk {
                    Packet::WorkData { data, .. } => {
                        Report::Event { job, event: JobEvent::Data(data.to_vec()) }
                    }
                    Packet::WorkWarning { data, .. } => {
                        Report::Event { job, event: JobEvent::Warning(data.to_vec()) }
                    }
                    Packet::WorkStatus { numerator, denominator, .. } => Report::Event {
                        job,
                        event: JobEvent::Status {
                            numerator: parse_num(numerator),
                            denominator: parse_num(denominator),
                        },
                    },
                    Packet::WorkComplete { data, .. } => Report::Done {
                        job,
                        result: Ok(JobOutcome::Complete { handle: jh(), data: data.to_vec() }),
                    },
                    Packet::WorkException { data, .. } => Report::Done {
                        job,
                        result: Ok(JobOutcome::Exception { handle: jh(), data: data.to_vec() }),
                    },
                    _ => Report::Done {
                        job,
                        result: Ok(JobOutcome::Failed { handle: jh(), warning: None }),
                    },
                };
                self.reports.push(report);
            }
            PacketType::Error => {
                let (code, text) = error_fields(&p);
                if self.options > 0 {
                    self.options -= 1;
                    log::warn!(
                        "server={} refused OPTION_REQ exceptions: {code} {text}",
                        self.slot().addr
                    );
                    return Ok(());
                }
                match self.awaiting.pop_front() {
                    Some(a) => {
                        let job = &self.sh.jobs[a.job];
                        let refused = code == "QUEUE_ERROR" && job.is_background();
                        let error = Error::Server {
                            phase: Phase::Ack,
                            code,
                            text,
                            context: Box::new(Context {
                                function: Some(job.function().to_string()),
                                ..*self.slot().ctx()
                            }),
                        };
                        self.reports.push(if refused {
                            Report::Refused { lane: self.idx, job: a.job, error }
                        } else {
                            Report::Done { job: a.job, result: Err(error) }
                        });
                    }
                    None => log::warn!("server={} error {code} {text}", self.slot().addr),
                }
            }
            PacketType::OptionRes => self.options = self.options.saturating_sub(1),
            other => log::debug!("server={} ignored {other}", self.slot().addr),
        }
        Ok(())
    }

    /// The connection failed: give every job without an outcome back.
    fn broken(&mut self, error: Error) {
        if let Some(c) = self.conn.take() {
            c.close();
        }
        self.options = 0;
        if self.reused && !self.got_reply {
            // A pooled connection the server had closed: retry at once on a
            // fresh one, without counting a failure.
            log::debug!("server={} pooled connection was dead: reconnecting", self.slot().addr);
            for a in self.awaiting.drain(..).rev() {
                self.pending.push_front(a.job);
            }
            self.force_fresh = true;
            self.reused = false;
            return;
        }
        if !matches!(error.phase(), Some(Phase::Connect)) {
            self.slot().record_failure(self.sh.set);
        }
        log::debug!("{error}");
        self.lose_all(error);
    }

    fn lose_all(&mut self, error: Error) {
        let mut jobs: Vec<usize> = self.awaiting.drain(..).map(|a| a.job).collect();
        for (_, l) in self.running.drain() {
            jobs.extend(l.jobs);
        }
        self.running_jobs = 0;
        jobs.extend(self.pending.drain(..));
        jobs.retain(|&j| !self.is_done(j));
        if !jobs.is_empty() {
            self.reports.push(Report::Lost { lane: self.idx, jobs, error });
        }
    }
}

/// The lanes of one call. A call of one job, or a call to one server,
/// drives its lanes on the calling thread (no thread to start, no hand-over
/// between threads); a larger call to several servers gives each lane its
/// own thread, so that one slow server does not hold up the others.
struct Lanes<'sh, 'scope, 'env> {
    shared: &'sh Batch<'sh>,
    scope: &'scope std::thread::Scope<'scope, 'env>,
    rep_tx: Sender<Vec<Report>>,
    rep_rx: Receiver<Vec<Report>>,
    inboxes: Vec<Option<Sender<Vec<usize>>>>,
    /// The lanes driven by the calling thread, when the call has one job or
    /// one server.
    inline: Option<Vec<Option<Lane<'sh>>>>,
}

impl<'sh: 'scope, 'scope, 'env> Lanes<'sh, 'scope, 'env> {
    fn send(&mut self, lane: usize, batch: Vec<usize>) {
        if self.inboxes[lane].is_none() {
            let (tx, rx) = unbounded();
            let l = Lane {
                idx: lane,
                sh: self.shared,
                inbox: rx,
                out: self.rep_tx.clone(),
                conn: None,
                reused: false,
                got_reply: false,
                force_fresh: false,
                inline: self.inline.is_some(),
                dirty: false,
                options: 0,
                pending: VecDeque::new(),
                awaiting: VecDeque::new(),
                running: HashMap::new(),
                running_jobs: 0,
                reports: Vec::new(),
                last_scan: Instant::now(),
            };
            match self.inline.as_mut() {
                Some(inline) => inline[lane] = Some(l),
                None => {
                    std::thread::Builder::new()
                        .name(format!("gearframe-client-{lane}"))
                        .spawn_scoped(self.scope, move || l.run())
                        .expect("spawn a client lane thread");
                }
            }
            self.inboxes[lane] = Some(tx);
        }
        if let Some(tx) = &self.inboxes[lane] {
            let _ = tx.send(batch);
        }
    }

    /// The next reports: waits up to a tick, or runs one turn of each busy
    /// lane driven by the calling thread.
    fn next(&mut self) -> std::result::Result<Vec<Report>, RecvTimeoutError> {
        let Some(inline) = self.inline.as_mut() else {
            return self.rep_rx.recv_timeout(TICK);
        };
        if let Ok(b) = self.rep_rx.try_recv() {
            return Ok(b);
        }
        let mut busy = false;
        for lane in inline.iter_mut().flatten() {
            if lane.has_work() {
                busy = true;
                lane.step(false);
            }
        }
        match self.rep_rx.try_recv() {
            Ok(b) => Ok(b),
            Err(_) => {
                if !busy {
                    std::thread::sleep(TICK);
                }
                Err(RecvTimeoutError::Timeout)
            }
        }
    }

    /// Closes the inboxes: lane threads finish; lanes driven by the calling
    /// thread finish here.
    fn close(mut self) {
        self.inboxes.clear();
        for lane in self.inline.take().into_iter().flatten().flatten() {
            lane.finish();
        }
    }
}

fn itoa_buf() -> [u8; 20] {
    [0u8; 20]
}

fn fmt_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Called with a job's index and an event.
pub(crate) type EventFn<'h> = &'h mut dyn FnMut(usize, &JobEvent);
/// Called with a job's index and its outcome.
pub(crate) type DoneFn<'h> = &'h mut dyn FnMut(usize, &Result<JobOutcome>);

/// Callbacks of one call.
pub(crate) struct Hooks<'h> {
    pub(crate) on_event: Option<EventFn<'h>>,
    pub(crate) on_done: Option<DoneFn<'h>>,
}

/// Submits `jobs` and waits for every outcome.
pub(crate) fn run(
    set: &ClientSettings,
    slots: &[ServerEntry],
    jobs: &[Job],
    mut hooks: Hooks<'_>,
) -> Vec<Result<JobOutcome>> {
    let n = jobs.len();
    let start = Instant::now();
    let mut results: Vec<Option<Result<JobOutcome>>> = (0..n).map(|_| None).collect();
    let done: Vec<AtomicBool> = (0..n).map(|_| AtomicBool::new(false)).collect();
    let uniques: Vec<String> = jobs
        .iter()
        .map(|j| j.unique_id().map_or_else(super::job::random_unique, str::to_string))
        .collect();
    let deadlines: Vec<Instant> =
        jobs.iter().map(|j| start + j.get_timeout().unwrap_or(set.job_timeout)).collect();
    let mut attempts = vec![0u32; n];
    // Servers that answered QUEUE_ERROR to a background job.
    let mut refusals = vec![0usize; n];
    // When a job's retry window began: the start of the call for a job no
    // server accepted yet, else the moment its accepted copy was lost.
    let mut first_fail: Vec<Option<Instant>> = vec![None; n];
    let mut handles: Vec<Option<JobHandle>> = vec![None; n];
    // The server each job was last given to.
    let mut sent_to = vec![0usize; n];
    // The last WORK_WARNING of each job: the reason of a bare WORK_FAIL.
    let mut last_warning: Vec<Option<Vec<u8>>> = vec![None; n];
    let mut remaining = n;
    let servers = slots.len();
    // Per server, the last failure of this call, and whether the retry
    // was announced (once per server and call, at the default level).
    let mut last_error: Vec<Option<Error>> = vec![None; servers];
    let mut warned = vec![false; servers];

    let mut finish = |i: usize, res: Result<JobOutcome>, hooks: &mut Hooks<'_>| -> bool {
        if done[i].swap(true, Ordering::Relaxed) {
            return false;
        }
        if let Some(f) = hooks.on_done.as_mut() {
            f(i, &res);
        }
        results[i] = Some(res);
        true
    };

    let mut initial: Vec<Vec<usize>> = vec![Vec::new(); servers];
    let now = Instant::now();
    for (i, job) in jobs.iter().enumerate() {
        if let Err(reason) = job.validate() {
            let e = Error::InvalidJob { function: job.function().to_string(), reason };
            if finish(i, Err(e), &mut hooks) {
                remaining -= 1;
            }
            continue;
        }
        if let Some(reason) = too_large(job, &uniques[i], set.max_packet_size) {
            let e = Error::InvalidJob { function: job.function().to_string(), reason };
            if finish(i, Err(e), &mut hooks) {
                remaining -= 1;
            }
            continue;
        }
        let first = (stable_hash(uniques[i].as_bytes()) % servers as u64) as usize;
        let lane = pick(slots, first, now);
        sent_to[i] = lane;
        initial[lane].push(i);
    }
    if remaining == 0 {
        return results.into_iter().map(|r| r.unwrap_or(Err(Error::NoServers))).collect();
    }

    let shared = Batch { set, slots, jobs, uniques: &uniques, done: &done };
    let shared = &shared;
    std::thread::scope(|s| {
        let (rep_tx, rep_rx) = unbounded::<Vec<Report>>();
        let mut lanes = Lanes {
            shared,
            scope: s,
            rep_tx,
            rep_rx,
            inboxes: vec![None; servers],
            inline: (n == 1 || servers == 1).then(|| (0..servers).map(|_| None).collect()),
        };
        for (lane, batch) in initial.into_iter().enumerate() {
            if !batch.is_empty() {
                lanes.send(lane, batch);
            }
        }
        let mut last_scan = Instant::now();
        while remaining > 0 {
            match lanes.next() {
                Ok(batch) => {
                    for r in batch {
                        match r {
                            Report::Created { job, handle } => {
                                if done[job].load(Ordering::Relaxed) {
                                    continue;
                                }
                                handles[job] = Some(handle.clone());
                                if let Some(f) = hooks.on_event.as_mut() {
                                    f(job, &JobEvent::Created(handle));
                                }
                            }
                            Report::Event { job, event } => {
                                if let JobEvent::Warning(w) = &event {
                                    last_warning[job] = Some(w.clone());
                                }
                                if !done[job].load(Ordering::Relaxed) {
                                    if let Some(f) = hooks.on_event.as_mut() {
                                        f(job, &event);
                                    }
                                }
                            }
                            Report::Done { job, mut result } => {
                                if let Ok(JobOutcome::Failed { warning, .. }) = &mut result {
                                    if warning.is_none() {
                                        *warning = last_warning[job].take();
                                    }
                                }
                                let result = result.map_err(|e| {
                                    e.with_handle(handles[job].as_ref().map(JobHandle::as_str))
                                });
                                if finish(job, result, &mut hooks) {
                                    remaining -= 1;
                                }
                            }
                            Report::Refused { lane, job, error } => {
                                if done[job].load(Ordering::Relaxed) {
                                    continue;
                                }
                                refusals[job] += 1;
                                if refusals[job] >= servers {
                                    // Every server refused: the last one's error.
                                    if finish(job, Err(error), &mut hooks) {
                                        remaining -= 1;
                                    }
                                    continue;
                                }
                                let next = (lane + 1) % servers;
                                log::info!("{error}; submitting to {}", slots[next].addr);
                                sent_to[job] = next;
                                lanes.send(next, vec![job]);
                            }
                            Report::Lost { lane, jobs: lost, error } => {
                                let now = Instant::now();
                                let mut reroute: Vec<Vec<usize>> = vec![Vec::new(); servers];
                                for j in lost {
                                    if done[j].load(Ordering::Relaxed) {
                                        continue;
                                    }
                                    attempts[j] += 1;
                                    let accepted = handles[j].is_some();
                                    let since = *first_fail[j].get_or_insert(if accepted {
                                        now
                                    } else {
                                        start
                                    });
                                    if attempts[j] as usize >= servers
                                        && now.duration_since(since) >= set.retry_timeout
                                    {
                                        last_error[lane] = Some(error.clone());
                                        let e = unreachable(
                                            slots,
                                            &last_error,
                                            &jobs[j],
                                            format!("retry_timeout {:?}", set.retry_timeout),
                                        );
                                        if finish(j, Err(e), &mut hooks) {
                                            remaining -= 1;
                                        }
                                        continue;
                                    }
                                    if handles[j].take().is_some() {
                                        // The next run's warnings are its own.
                                        last_warning[j] = None;
                                        if let Some(f) = hooks.on_event.as_mut() {
                                            let reason = error.to_string();
                                            f(j, &JobEvent::Resubmitted { reason });
                                        }
                                    }
                                    let next = pick(slots, (lane + 1) % servers, now);
                                    sent_to[j] = next;
                                    reroute[next].push(j);
                                }
                                if reroute.iter().any(|b| !b.is_empty()) && !warned[lane] {
                                    warned[lane] = true;
                                    log::warn!(
                                        "{error}; retrying for up to {:?}",
                                        set.retry_timeout.min(set.job_timeout)
                                    );
                                }
                                last_error[lane] = Some(error);
                                for (lane, batch) in reroute.into_iter().enumerate() {
                                    if !batch.is_empty() {
                                        log::info!(
                                            "resubmitting {} job(s) to {}",
                                            batch.len(),
                                            slots[lane].addr
                                        );
                                        lanes.send(lane, batch);
                                    }
                                }
                            }
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if now.duration_since(last_scan) >= TICK {
                last_scan = now;
                for i in 0..n {
                    if done[i].load(Ordering::Relaxed) {
                        continue;
                    }
                    let failed = last_error.iter().any(Option::is_some);
                    let e = if now >= deadlines[i] {
                        let job = &jobs[i];
                        if handles[i].is_none() && failed {
                            // The cause, rather than the limit it ran into.
                            let limit = format!("job timeout {:?}", deadlines[i] - start);
                            unreachable(slots, &last_error, job, limit)
                        } else {
                            let phase =
                                if handles[i].is_some() { Phase::Result } else { Phase::Ack };
                            let server = match &handles[i] {
                                Some(h) => h.server().to_string(),
                                None => slots[sent_to[i]].addr.to_string(),
                            };
                            Error::Timeout {
                                phase,
                                limit: deadlines[i] - start,
                                context: Box::new(Context {
                                    server: Some(server),
                                    function: Some(job.function().to_string()),
                                    handle: handles[i].as_ref().map(|h| h.as_str().to_string()),
                                }),
                            }
                        }
                    } else if handles[i].is_none()
                        && attempts[i] as usize >= servers
                        && first_fail[i].is_some_and(|t| now >= t + set.retry_timeout)
                    {
                        // Retried long enough: an attempt still waiting for
                        // its JOB_CREATED does not extend the limit.
                        let limit = format!("retry_timeout {:?}", set.retry_timeout);
                        unreachable(slots, &last_error, &jobs[i], limit)
                    } else {
                        continue;
                    };
                    if finish(i, Err(e), &mut hooks) {
                        remaining -= 1;
                    }
                }
            }
        }
        lanes.close();
    });
    results.into_iter().map(|r| r.unwrap_or(Err(Error::NoServers))).collect()
}

/// A job no server accepted: each server's last failure, and the limit
/// that ended the tries.
fn unreachable(slots: &[ServerEntry], last: &[Option<Error>], job: &Job, limit: String) -> Error {
    let causes: Vec<String> = last.iter().flatten().map(Error::to_string).collect();
    Error::Unreachable {
        servers: slots.iter().map(|s| s.addr.to_string()).collect(),
        function: Some(job.function().to_string()),
        reason: format!("{}; gave up at the {limit}", causes.join("; ")),
    }
}

/// Why a job cannot be sent in one packet: its body would be over the
/// client's largest packet, `max` bytes (the servers' limit by default).
fn too_large(job: &Job, unique: &str, max: u32) -> Option<String> {
    let body = job.function().len() + unique.len() + job.payload().len() + 2 + 20;
    (body > max as usize).then(|| {
        format!(
            "ARGUMENT_TOO_LARGE: the payload is {} bytes, over the {} a packet may carry \
             (client.max_packet_size); send a reference to the data (a path or URL) instead",
            job.payload().len(),
            size_words(max)
        )
    })
}

/// `64 MiB` for whole mebibytes, else `N bytes`.
fn size_words(bytes: u32) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// The first server from `start` on (wrapping) that is not backing off;
/// when all are, the one that becomes available first.
fn pick(slots: &[ServerEntry], start: usize, now: Instant) -> usize {
    let n = slots.len();
    let mut best = start;
    let mut best_at: Option<Instant> = None;
    for k in 0..n {
        let i = (start + k) % n;
        match slots[i].retry_at() {
            None => return i,
            Some(t) if t <= now => return i,
            Some(t) => {
                if best_at.is_none_or(|b| t < b) {
                    best = i;
                    best_at = Some(t);
                }
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_format() {
        let mut b = itoa_buf();
        assert_eq!(fmt_u64(0, &mut b), b"0");
        assert_eq!(fmt_u64(1_700_000_000, &mut b), b"1700000000");
        assert_eq!(fmt_u64(u64::MAX, &mut b), u64::MAX.to_string().as_bytes());
    }

    #[test]
    fn trailing_nuls_are_stripped() {
        assert_eq!(strip_nul(b"H:x:1\0"), b"H:x:1");
        assert_eq!(strip_nul(b"H:x:1"), b"H:x:1");
        assert_eq!(strip_nul(b"\0"), b"");
    }

    #[test]
    fn pick_skips_servers_backing_off() {
        let slots = [ServerEntry::new("a:1"), ServerEntry::new("b:1"), ServerEntry::new("c:1")];
        let now = Instant::now();
        assert_eq!(pick(&slots, 1, now), 1);
        slots[1].health.lock().unwrap().retry_at = Some(now + Duration::from_secs(5));
        assert_eq!(pick(&slots, 1, now), 2);
        slots[2].health.lock().unwrap().retry_at = Some(now + Duration::from_secs(2));
        slots[0].health.lock().unwrap().retry_at = Some(now + Duration::from_secs(9));
        assert_eq!(pick(&slots, 1, now), 2);
    }
}
