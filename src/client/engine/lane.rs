//! A lane's conversation with one server, sans-IO: the [`Lane`] takes the
//! coordinator's jobs and the packets the server sent, and returns the
//! packets to write, [`Report`]s for the coordinator and the deadline of
//! its next wait. It opens, reads and writes nothing itself; the driver in
//! `io.rs` does, asking [`Lane::step`] what to do next.
//!
//! ```text
//!  step() returns      the driver then
//!  Connect { fresh }   takes or opens one: connected(pooled) | connect_failed(error) → Lost
//!  Send(packets)       writes them        | send_failed(error): replies read briefly, then Lost
//!  Recv(deadline)      reads: on_packet(p)* | on_timeout(now) | recv_failed(error) → Lost
//!  Close { failed }    closes the socket (a failed one backs the server off)
//!  Idle                waits for submit(jobs) / cancel(jobs) from the coordinator
//! ```
//!
//! A lane pipelines submissions on one connection, at most `window` jobs
//! in flight (a background job until JOB_CREATED, a foreground job until
//! its result). JOB_CREATED is matched to submissions in order; results
//! are matched by handle, one copy of each packet per submission attached
//! to that handle.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ClientConfig, Submission, conn_reason, error_fields, strip_nul};
use crate::client::error::{Context, Error, Phase, Result};
use crate::client::job::{JobEvent, JobHandle, JobOutcome, parse_num};
use crate::conn::{self, OwnedPacket};
use crate::proto::{Packet, PacketType, SubmitKind};

/// What a lane tells the coordinator.
#[derive(Debug)]
pub(super) enum Report {
    /// A foreground job was accepted.
    Created { job: usize, handle: JobHandle },
    /// WORK_DATA, WORK_WARNING or WORK_STATUS of a foreground job.
    Event { job: usize, event: JobEvent },
    /// A job's outcome, or an error that ends it.
    Done { job: usize, result: Result<JobOutcome> },
    /// The connection could not be opened or broke: these jobs have no
    /// outcome from this server.
    Lost { jobs: Vec<usize>, error: Error },
    /// A background job the server could not queue (`QUEUE_ERROR`: its
    /// persistent queue cannot be written, or a limit): the next server
    /// may take it.
    Refused { job: usize, error: Error },
}

/// What the driver is to do next.
#[derive(Debug)]
pub(super) enum Step<'a> {
    /// Nothing until new jobs come.
    Idle,
    /// Get a connection: an idle pooled one, unless `fresh`, else a new one
    /// (after the server's back-off). Then [`Lane::connected`] or
    /// [`Lane::connect_failed`].
    Connect { fresh: bool },
    /// Write these packets, in one write; on failure [`Lane::send_failed`].
    Send(Vec<Packet<'a>>),
    /// Read packets ([`Lane::on_packet`]) until the deadline
    /// ([`Lane::on_timeout`]); a read error goes to [`Lane::recv_failed`].
    Recv(Option<Instant>),
    /// Close the connection; `failed`: it failed, so the server backs off.
    Close { failed: bool },
}

/// The lane's connection, as far as the lane knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    /// None; the next must be a new one when `fresh`.
    None { fresh: bool },
    /// The driver is to close it (the next [`Step`]).
    Closing { fresh: bool, failed: bool },
    Open {
        /// Taken from the idle pool: it may have died meanwhile.
        pooled: bool,
        /// The server sent something on it.
        answered: bool,
        /// The per-connection setup (client id, exceptions) is still to go.
        setup: bool,
        /// Answers for jobs the coordinator gave up on may still come, so
        /// it goes back to no pool.
        stale: bool,
    },
}

#[derive(Debug)]
struct Awaiting {
    job: usize,
    sent: Instant,
    /// The coordinator gave up on the job: its JOB_CREATED is dropped.
    cancelled: bool,
}

/// The submissions attached to one handle on one connection. The server
/// sends each WORK_* packet once per attachment, so copies are handed out
/// in turn: every attached job sees each packet once.
#[derive(Debug, Default)]
struct Listeners {
    jobs: Vec<usize>,
    cursor: usize,
}

/// One server's share of a call.
#[derive(Debug)]
pub(super) struct Lane<'a> {
    addr: Arc<str>,
    set: &'a ClientConfig,
    subs: &'a [Submission<'a>],
    conn: Conn,
    /// A write failed: the replies read until this moment come first, then
    /// the jobs are lost with this error.
    draining: Option<(Instant, Error)>,
    /// OPTION_REQs whose answer is still to come.
    options: usize,
    pending: VecDeque<usize>,
    awaiting: VecDeque<Awaiting>,
    running: HashMap<Vec<u8>, Listeners>,
    running_jobs: usize,
    reports: Vec<Report>,
}

impl<'a> Lane<'a> {
    pub(super) fn new(addr: Arc<str>, set: &'a ClientConfig, subs: &'a [Submission<'a>]) -> Self {
        Lane {
            addr,
            set,
            subs,
            conn: Conn::None { fresh: false },
            draining: None,
            options: 0,
            pending: VecDeque::new(),
            awaiting: VecDeque::new(),
            running: HashMap::new(),
            running_jobs: 0,
            reports: Vec::new(),
        }
    }

    fn inflight(&self) -> usize {
        self.awaiting.len() + self.running_jobs
    }

    fn ctx(&self) -> Box<Context> {
        Box::new(Context { server: Some(self.addr.to_string()), function: None, handle: None })
    }

    fn mark_stale(&mut self) {
        if let Conn::Open { stale, .. } = &mut self.conn {
            *stale = true;
        }
    }

    /// Jobs to submit.
    pub(super) fn submit(&mut self, jobs: impl IntoIterator<Item = usize>) {
        self.pending.extend(jobs);
    }

    /// Jobs the coordinator gave up on: they leave the window, and what the
    /// server still sends for them is dropped.
    pub(super) fn cancel(&mut self, jobs: &[usize]) {
        let gone: HashSet<usize> = jobs.iter().copied().collect();
        self.pending.retain(|j| !gone.contains(j));
        for a in &mut self.awaiting {
            a.cancelled |= gone.contains(&a.job);
        }
        let mut removed = 0;
        self.running.retain(|_, l| {
            let before = l.jobs.len();
            l.jobs.retain(|j| !gone.contains(j));
            removed += before - l.jobs.len();
            !l.jobs.is_empty()
        });
        if removed > 0 {
            self.running_jobs -= removed;
            self.mark_stale();
        }
    }

    /// The reports since the last call.
    pub(super) fn take_reports(&mut self) -> Vec<Report> {
        std::mem::take(&mut self.reports)
    }

    /// Whether the lane has nothing to do until new jobs come.
    pub(super) fn is_idle(&self) -> bool {
        self.inflight() == 0
            && self.pending.is_empty()
            && self.draining.is_none()
            && !matches!(self.conn, Conn::Closing { .. })
    }

    /// Whether the lane reads packets now (its connection is open).
    pub(super) fn is_open(&self) -> bool {
        matches!(self.conn, Conn::Open { .. })
    }

    /// Whether the connection may go back to the idle pool: open, set up,
    /// nothing in flight and nothing more to come on it.
    pub(super) fn reusable(&self) -> bool {
        matches!(self.conn, Conn::Open { setup: false, stale: false, .. })
            && self.inflight() == 0
            && self.options == 0
            && self.draining.is_none()
    }

    /// When the lane's current wait ends: the end of the replies read
    /// after a failed write, else the ack timeout of its oldest submission.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match &self.draining {
            Some((until, _)) => Some(*until),
            None => self.awaiting.front().map(|a| a.sent + self.set.ack_timeout),
        }
    }

    /// What to do next.
    pub(super) fn step(&mut self, now: Instant) -> Step<'a> {
        if let Conn::Closing { fresh, failed } = self.conn {
            self.conn = Conn::None { fresh };
            return Step::Close { failed };
        }
        if self.draining.is_some() {
            return Step::Recv(self.deadline());
        }
        if self.inflight() == 0 && self.pending.is_empty() {
            return Step::Idle;
        }
        if let Conn::None { fresh } = self.conn {
            return Step::Connect { fresh };
        }
        if self.ack_expired(now) {
            return self.step(now);
        }
        let packets = self.top_up(now);
        if !packets.is_empty() {
            return Step::Send(packets);
        }
        if self.inflight() == 0 {
            // Every pending job was refused before it was sent.
            return Step::Idle;
        }
        Step::Recv(self.deadline())
    }

    /// The driver has a connection; a new one (not `pooled`) is set up
    /// before the first submission.
    pub(super) fn connected(&mut self, pooled: bool) {
        self.conn = Conn::Open { pooled, answered: false, setup: !pooled, stale: false };
        self.options = 0;
    }

    /// No connection could be opened: every job is lost.
    pub(super) fn connect_failed(&mut self, error: Error) {
        self.conn = Conn::None { fresh: false };
        self.lose_all(error);
    }

    /// A write failed. The server may have answered before it closed the
    /// connection (ERROR `ARGUMENT_TOO_LARGE` for a packet over its limit),
    /// so what it sent is read, briefly, before the jobs are given back.
    pub(super) fn send_failed(&mut self, e: &conn::Error, now: Instant) {
        let error =
            Error::Connection { phase: Phase::Send, reason: conn_reason(e), context: self.ctx() };
        let until = now + self.set.ack_timeout.min(Duration::from_secs(1));
        self.draining = Some((until, error));
    }

    /// A read failed (other than by timing out: [`Lane::on_timeout`]).
    pub(super) fn recv_failed(&mut self, e: &conn::Error) {
        if let Some((_, error)) = self.draining.take() {
            return self.broken(error);
        }
        let phase = if self.awaiting.is_empty() { Phase::Result } else { Phase::Ack };
        let error = Error::Connection { phase, reason: conn_reason(e), context: self.ctx() };
        self.broken(error)
    }

    /// A read timed out at `now`: a deadline of the lane may have passed.
    pub(super) fn on_timeout(&mut self, now: Instant) {
        if let Some((until, _)) = &self.draining {
            if now >= *until {
                if let Some((_, error)) = self.draining.take() {
                    self.broken(error);
                }
            }
            return;
        }
        self.ack_expired(now);
    }

    /// Breaks the connection when the oldest submission waited longer than
    /// the ack timeout for its JOB_CREATED.
    fn ack_expired(&mut self, now: Instant) -> bool {
        let Some(a) = self.awaiting.front() else { return false };
        if now < a.sent + self.set.ack_timeout {
            return false;
        }
        let function = self.subs[a.job].job.function().to_string();
        let e = Error::Timeout {
            phase: Phase::Ack,
            limit: self.set.ack_timeout,
            context: Box::new(Context { function: Some(function), ..*self.ctx() }),
        };
        self.broken(e);
        true
    }

    /// The setup of a new connection, then submissions up to the window.
    fn top_up(&mut self, now: Instant) -> Vec<Packet<'a>> {
        let mut out = Vec::new();
        if let Conn::Open { setup: setup @ true, .. } = &mut self.conn {
            *setup = false;
            if let Some(id) = &self.set.client_id {
                out.push(Packet::SetClientId { id: id.as_bytes() });
            }
            if self.set.exceptions {
                out.push(Packet::OptionReq { option: b"exceptions" });
                self.options += 1;
            }
        }
        let window = self.set.window;
        // Refill a large window in large steps: submissions then go out in
        // few big writes, and the server's reader wakes once per step
        // rather than once per finished job.
        let free = window.saturating_sub(self.inflight());
        let refill = free >= (window / 8).max(1) || free >= self.pending.len();
        while refill && self.inflight() < window {
            let Some(j) = self.pending.pop_front() else { break };
            let sub = &self.subs[j];
            let job = sub.job;
            let unique = sub.unique.as_bytes();
            let p = match &sub.epoch {
                Some(epoch) => Packet::SubmitJobEpoch {
                    function: job.function().as_bytes(),
                    unique,
                    epoch: epoch.as_bytes(),
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
            if let Err(e) = p.validate() {
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
                self.addr,
                job.function(),
                sub.unique
            );
            out.push(p);
            self.awaiting.push_back(Awaiting { job: j, sent: now, cancelled: false });
        }
        out
    }

    /// A packet from the server.
    pub(super) fn on_packet(&mut self, p: &OwnedPacket) {
        if let Conn::Open { answered, .. } = &mut self.conn {
            *answered = true;
        }
        if let Err(e) = self.packet(p) {
            match self.draining.take() {
                Some((_, error)) => self.broken(error),
                None => self.broken(e),
            }
        }
    }

    fn packet(&mut self, p: &OwnedPacket) -> Result<()> {
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
                if a.cancelled {
                    self.mark_stale();
                    return Ok(());
                }
                let handle_bytes = strip_nul(&p.body);
                let handle = JobHandle {
                    server: self.addr.clone(),
                    handle: String::from_utf8_lossy(handle_bytes).into_owned(),
                };
                if self.subs[a.job].job.is_background() {
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
                if let Some(report) = self.work(&pk) {
                    self.reports.push(report);
                } else {
                    log::trace!("server={} {} for unknown handle", self.addr, p.kind);
                }
            }
            PacketType::Error => self.error(p),
            PacketType::OptionRes => self.options = self.options.saturating_sub(1),
            other => log::debug!("server={} ignored {other}", self.addr),
        }
        Ok(())
    }

    /// The report of a WORK_* packet, handed to the next job attached to
    /// its handle; `None` for a handle the lane does not know.
    fn work(&mut self, pk: &Packet<'_>) -> Option<Report> {
        let (handle, terminal) = match *pk {
            Packet::WorkData { handle, .. }
            | Packet::WorkWarning { handle, .. }
            | Packet::WorkStatus { handle, .. } => (handle, false),
            Packet::WorkComplete { handle, .. } | Packet::WorkException { handle, .. } => {
                (handle, true)
            }
            Packet::WorkFail { handle } => (strip_nul(handle), true),
            _ => return None,
        };
        let l = self.running.get_mut(handle)?;
        let at = l.cursor % l.jobs.len();
        let job = if terminal {
            let j = l.jobs.remove(at);
            if l.jobs.is_empty() {
                self.running.remove(handle);
            } else {
                l.cursor = at % l.jobs.len();
            }
            self.running_jobs -= 1;
            j
        } else {
            l.cursor = (at + 1) % l.jobs.len();
            l.jobs[at]
        };
        let jh = || JobHandle {
            server: self.addr.clone(),
            handle: String::from_utf8_lossy(handle).into_owned(),
        };
        Some(match *pk {
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
            _ => {
                Report::Done { job, result: Ok(JobOutcome::Failed { handle: jh(), warning: None }) }
            }
        })
    }

    /// An ERROR packet: the answer to an OPTION_REQ, else to the oldest
    /// submission.
    fn error(&mut self, p: &OwnedPacket) {
        let (code, text) = error_fields(p);
        if self.options > 0 {
            self.options -= 1;
            log::warn!("server={} refused OPTION_REQ exceptions: {code} {text}", self.addr);
            return;
        }
        let Some(a) = self.awaiting.pop_front() else {
            log::warn!("server={} error {code} {text}", self.addr);
            return;
        };
        if a.cancelled {
            self.mark_stale();
            return;
        }
        let job = self.subs[a.job].job;
        let refused = code == "QUEUE_ERROR" && job.is_background();
        let error = Error::Server {
            phase: Phase::Ack,
            code,
            text,
            context: Box::new(Context {
                function: Some(job.function().to_string()),
                ..*self.ctx()
            }),
        };
        self.reports.push(if refused {
            Report::Refused { job: a.job, error }
        } else {
            Report::Done { job: a.job, result: Err(error) }
        });
    }

    /// The connection failed: it is closed, and every job without an
    /// outcome goes back to the coordinator.
    fn broken(&mut self, error: Error) {
        let Conn::Open { pooled, answered, .. } = self.conn else { return };
        self.options = 0;
        self.draining = None;
        if pooled && !answered {
            // A pooled connection the server had closed: retry at once on a
            // fresh one, without counting a failure.
            log::debug!("server={} pooled connection was dead: reconnecting", self.addr);
            for a in self.awaiting.drain(..).rev() {
                if !a.cancelled {
                    self.pending.push_front(a.job);
                }
            }
            self.conn = Conn::Closing { fresh: true, failed: false };
            return;
        }
        let failed = !matches!(error.phase(), Some(Phase::Connect));
        self.conn = Conn::Closing { fresh: false, failed };
        log::debug!("{error}");
        self.lose_all(error);
    }

    fn lose_all(&mut self, error: Error) {
        let mut jobs: Vec<usize> =
            self.awaiting.drain(..).filter(|a| !a.cancelled).map(|a| a.job).collect();
        for (_, l) in self.running.drain() {
            jobs.extend(l.jobs);
        }
        self.running_jobs = 0;
        jobs.extend(self.pending.drain(..));
        if !jobs.is_empty() {
            self.reports.push(Report::Lost { jobs, error });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{settings, subs};
    use super::*;
    use crate::client::Job;
    use crate::proto::Magic;
    use std::io;

    fn res(kind: PacketType, args: &[&[u8]]) -> OwnedPacket {
        let mut body = Vec::new();
        for (i, a) in args.iter().enumerate() {
            if i > 0 {
                body.push(0);
            }
            body.extend_from_slice(a);
        }
        OwnedPacket { magic: Magic::Res, kind, body }
    }

    fn kinds(step: Step<'_>) -> Vec<PacketType> {
        match step {
            Step::Send(ps) => ps.iter().map(Packet::kind).collect(),
            other => panic!("expected packets to send, got {other:?}"),
        }
    }

    /// A lane with an open new connection whose setup and first
    /// submissions were sent.
    fn open<'a>(set: &'a ClientConfig, subs: &'a [Submission<'a>], now: Instant) -> Lane<'a> {
        let mut lane = Lane::new(Arc::from("a:1"), set, subs);
        lane.submit(0..subs.len());
        assert!(matches!(lane.step(now), Step::Connect { fresh: false }));
        lane.connected(false);
        let sent = kinds(lane.step(now));
        assert_eq!(sent[0], PacketType::OptionReq, "{sent:?}");
        lane.on_packet(&res(PacketType::OptionRes, &[b"exceptions"]));
        lane
    }

    #[test]
    fn a_foreground_job_reports_its_events_and_outcome() {
        let set = settings();
        let jobs = [Job::new("f", "x")];
        let subs = subs(&jobs);
        let now = Instant::now();
        let mut lane = open(&set, &subs, now);
        assert!(matches!(lane.step(now), Step::Recv(Some(d)) if d == now + set.ack_timeout));
        lane.on_packet(&res(PacketType::JobCreated, &[b"H:x:1"]));
        let r = lane.take_reports();
        assert!(
            matches!(&r[..], [Report::Created { job: 0, handle }] if handle.as_str() == "H:x:1")
        );
        assert!(matches!(lane.step(now), Step::Recv(None)), "no ack deadline once created");
        lane.on_packet(&res(PacketType::WorkData, &[b"H:x:1", b"d"]));
        lane.on_packet(&res(PacketType::WorkWarning, &[b"H:x:1", b"w"]));
        lane.on_packet(&res(PacketType::WorkStatus, &[b"H:x:1", b"1", b"4"]));
        lane.on_packet(&res(PacketType::WorkData, &[b"H:other", b"d"]));
        lane.on_packet(&res(PacketType::WorkComplete, &[b"H:x:1", b"done"]));
        let r = lane.take_reports();
        assert_eq!(r.len(), 4, "{r:?}");
        assert!(matches!(&r[0], Report::Event { job: 0, event: JobEvent::Data(d) } if d == b"d"));
        assert!(matches!(&r[1], Report::Event { event: JobEvent::Warning(w), .. } if w == b"w"));
        assert!(matches!(
            &r[2],
            Report::Event { event: JobEvent::Status { numerator: 1, denominator: 4 }, .. }
        ));
        assert!(matches!(
            &r[3],
            Report::Done { job: 0, result: Ok(JobOutcome::Complete { data, .. }) } if data == b"done"
        ));
        assert!(matches!(lane.step(now), Step::Idle));
        assert!(lane.reusable());
    }

    #[test]
    fn fail_exception_and_error_end_their_jobs() {
        let set = settings();
        let jobs = [Job::new("f", "1"), Job::new("f", "2"), Job::new("f", "3")];
        let subs = subs(&jobs);
        let now = Instant::now();
        let mut lane = open(&set, &subs, now);
        lane.on_packet(&res(PacketType::JobCreated, &[b"H:1"]));
        lane.on_packet(&res(PacketType::JobCreated, &[b"H:2"]));
        lane.on_packet(&res(PacketType::Error, &[b"ARGUMENT_TOO_LARGE", b"too big"]));
        lane.take_reports();
        lane.on_packet(&res(PacketType::WorkFail, &[b"H:1"]));
        lane.on_packet(&res(PacketType::WorkException, &[b"H:2", b"boom"]));
        let r = lane.take_reports();
        assert!(matches!(&r[0], Report::Done { job: 0, result: Ok(JobOutcome::Failed { .. }) }));
        assert!(matches!(
            &r[1],
            Report::Done { job: 1, result: Ok(JobOutcome::Exception { data, .. }) } if data == b"boom"
        ));
        assert!(matches!(lane.step(now), Step::Idle));
        let jobs = [Job::new("f", "1")];
        let subs = super::super::tests::subs(&jobs);
        let mut lane = open(&set, &subs, now);
        lane.on_packet(&res(PacketType::Error, &[b"ARGUMENT_TOO_LARGE", b"too big"]));
        let r = lane.take_reports();
        match &r[..] {
            [Report::Done { job: 0, result: Err(e @ Error::Server { code, .. }) }] => {
                assert_eq!(code, "ARGUMENT_TOO_LARGE");
                assert!(e.to_string().contains("server a:1, function f"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn queue_error_of_a_background_job_is_a_refusal() {
        let set = settings();
        let jobs = [Job::new("f", "1").background(true)];
        let subs = subs(&jobs);
        let now = Instant::now();
        let mut lane = open(&set, &subs, now);
        lane.on_packet(&res(PacketType::Error, &[b"QUEUE_ERROR", b"disk full"]));
        assert!(matches!(&lane.take_reports()[..], [Report::Refused { job: 0, .. }]));
        let mut lane = open(&set, &subs, now);
        lane.on_packet(&res(PacketType::JobCreated, &[b"H:9\0"]));
        assert!(matches!(
            &lane.take_reports()[..],
            [Report::Done { job: 0, result: Ok(JobOutcome::Accepted { handle }) }]
                if handle.as_str() == "H:9"
        ));
    }

    #[test]
    fn coalesced_jobs_each_get_a_copy() {
        let set = settings();
        let jobs = [Job::new("f", "1").unique("u"), Job::new("f", "1").unique("u")];
        let subs = subs(&jobs);
        let now = Instant::now();
        let mut lane = open(&set, &subs, now);
        lane.on_packet(&res(PacketType::JobCreated, &[b"H:1"]));
        lane.on_packet(&res(PacketType::JobCreated, &[b"H:1"]));
        lane.take_reports();
        for _ in 0..2 {
            lane.on_packet(&res(PacketType::WorkData, &[b"H:1", b"d"]));
        }
        for _ in 0..2 {
            lane.on_packet(&res(PacketType::WorkComplete, &[b"H:1", b"r"]));
        }
        let jobs: Vec<(usize, bool)> = lane
            .take_reports()
            .iter()
            .map(|r| match r {
                Report::Event { job, .. } => (*job, false),
                Report::Done { job, .. } => (*job, true),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(jobs, [(0, false), (1, false), (0, true), (1, true)]);
    }

    #[test]
    fn the_window_bounds_jobs_in_flight() {
        let mut set = settings();
        set.window = 2;
        let jobs: Vec<Job> = (0..5).map(|i| Job::new("f", i.to_string())).collect();
        let subs = subs(&jobs);
        let now = Instant::now();
        let mut lane = open(&set, &subs, now);
        assert!(matches!(lane.step(now), Step::Recv(_)), "two in flight, the window is full");
        lane.on_packet(&res(PacketType::JobCreated, &[b"H:1"]));
        lane.on_packet(&res(PacketType::WorkComplete, &[b"H:1", b""]));
        assert_eq!(kinds(lane.step(now)), [PacketType::SubmitJob]);
    }

    #[test]
    fn a_broken_connection_loses_every_job_without_an_outcome() {
        let set = settings();
        let jobs = [Job::new("f", "1"), Job::new("f", "2"), Job::new("f", "3")];
        let subs = subs(&jobs);
        let now = Instant::now();
        let mut lane = open(&set, &subs, now);
        lane.on_packet(&res(PacketType::JobCreated, &[b"H:1"]));
        lane.take_reports();
        lane.recv_failed(&io::Error::from(io::ErrorKind::ConnectionReset).into());
        match &lane.take_reports()[..] {
            [Report::Lost { jobs, error }] => {
                let mut jobs = jobs.clone();
                jobs.sort();
                assert_eq!(jobs, [0, 1, 2]);
                assert_eq!(error.phase(), Some(Phase::Ack));
                assert!(error.to_string().contains("reset"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(lane.step(now), Step::Close { failed: true }));
        assert!(matches!(lane.step(now), Step::Idle));
    }

    #[test]
    fn an_unknown_job_created_is_a_protocol_error() {
        let set = settings();
        let jobs = [Job::new("f", "1")];
        let subs = subs(&jobs);
        let now = Instant::now();
        let mut lane = open(&set, &subs, now);
        lane.on_packet(&res(PacketType::JobCreated, &[b"H:1"]));
        lane.on_packet(&res(PacketType::JobCreated, &[b"H:2"]));
        let r = lane.take_reports();
        assert!(matches!(&r[1], Report::Lost { jobs, .. } if jobs == &[0]), "{r:?}");
    }

    #[test]
    fn the_ack_timeout_breaks_the_connection() {
        let set = settings();
        let jobs = [Job::new("f", "1")];
        let subs = subs(&jobs);
        let now = Instant::now();
        let mut lane = open(&set, &subs, now);
        lane.on_timeout(now + set.ack_timeout / 2);
        assert!(lane.take_reports().is_empty());
        lane.on_timeout(now + set.ack_timeout);
        match &lane.take_reports()[..] {
            [Report::Lost { error: Error::Timeout { phase: Phase::Ack, .. }, .. }] => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_dead_pooled_connection_is_replaced_without_a_loss() {
        let set = settings();
        let jobs = [Job::new("f", "1")];
        let subs = subs(&jobs);
        let now = Instant::now();
        let mut lane = Lane::new(Arc::from("a:1"), &set, &subs);
        lane.submit([0]);
        lane.connected(true);
        assert_eq!(kinds(lane.step(now)), [PacketType::SubmitJob], "no setup on a pooled one");
        lane.recv_failed(&io::Error::from(io::ErrorKind::UnexpectedEof).into());
        assert!(lane.take_reports().is_empty());
        assert!(matches!(lane.step(now), Step::Close { failed: false }));
        assert!(matches!(lane.step(now), Step::Connect { fresh: true }));
    }

    #[test]
    fn replies_are_read_after_a_failed_write() {
        let set = settings();
        let jobs = [Job::new("f", "1")];
        let subs = subs(&jobs);
        let now = Instant::now();
        let mut lane = open(&set, &subs, now);
        lane.send_failed(&io::Error::from(io::ErrorKind::BrokenPipe).into(), now);
        assert!(matches!(lane.step(now), Step::Recv(Some(_))));
        lane.on_packet(&res(PacketType::Error, &[b"ARGUMENT_TOO_LARGE", b"x"]));
        assert!(matches!(&lane.take_reports()[..], [Report::Done { job: 0, result: Err(_) }]));
        lane.on_timeout(now + Duration::from_secs(2));
        assert!(matches!(lane.step(now), Step::Close { failed: true }));
    }

    #[test]
    fn cancelled_jobs_leave_the_window_and_the_pool() {
        let set = settings();
        let jobs = [Job::new("f", "1"), Job::new("f", "2")];
        let subs = subs(&jobs);
        let now = Instant::now();
        let mut lane = open(&set, &subs, now);
        lane.on_packet(&res(PacketType::JobCreated, &[b"H:1"]));
        lane.take_reports();
        lane.cancel(&[0, 1]);
        lane.on_packet(&res(PacketType::JobCreated, &[b"H:2"]));
        lane.on_packet(&res(PacketType::WorkComplete, &[b"H:1", b""]));
        assert!(lane.take_reports().is_empty());
        assert!(matches!(lane.step(now), Step::Idle));
        assert!(!lane.reusable(), "answers for the cancelled jobs may still come");
    }

    #[test]
    fn an_invalid_job_ends_before_it_is_sent() {
        let set = settings();
        let jobs = [Job::new("f\0g", "1")];
        let subs = subs(&jobs);
        let now = Instant::now();
        let mut lane = Lane::new(Arc::from("a:1"), &set, &subs);
        lane.submit([0]);
        lane.connected(true);
        assert!(matches!(lane.step(now), Step::Idle));
        assert!(matches!(
            &lane.take_reports()[..],
            [Report::Done { job: 0, result: Err(Error::InvalidJob { .. }) }]
        ));
    }
}
