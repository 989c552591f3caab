//! The coordinator of one call: pure state, no I/O. It learns what the
//! lanes report ([`Coordinator::on_report`], [`Coordinator::on_lost`]) and
//! how time passes ([`Coordinator::expire`]); it decides which server each
//! job goes to, when a job is given up, and what each lane is sent next
//! ([`Coordinator::take_commands`]); it calls the hooks and keeps the
//! outcomes.
//!
//! When a connection cannot be opened or breaks, the lane hands back every
//! job that has no outcome yet, and the coordinator sends them to the next
//! server in the job's order, with the same unique id. A background job
//! answered with `QUEUE_ERROR` goes to the next server the same way; once
//! every server refused it, the job fails with the last server's error. It
//! never counts as accepted.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use super::lane::Report;
use super::{ClientConfig, Hooks, ServerEntry, Submission, pick, too_large, unreachable};
use crate::client::error::{Context, Error, Phase, Result};
use crate::client::job::{Job, JobEvent, JobHandle, JobOutcome, stable_hash};

/// What the coordinator sends a lane.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Command {
    /// Submit these jobs.
    Submit(Vec<usize>),
    /// The call gave up on these jobs: free their place in the window.
    Cancel(Vec<usize>),
}

/// One job of the call.
#[derive(Debug)]
struct Entry {
    /// The server the job was last given to.
    lane: usize,
    /// When the job's own limit passes (job_timeout or [`Job::timeout`]).
    deadline: Instant,
    /// Connections lost or not opened with the job on them.
    attempts: u32,
    /// Servers that answered QUEUE_ERROR to the background job.
    refusals: usize,
    /// When the job's retry window began: the start of the call for a job
    /// no server accepted yet, else the moment its accepted copy was lost.
    retry_from: Option<Instant>,
    /// The handle of the current run, once a server accepted the job.
    handle: Option<JobHandle>,
    /// The last WORK_WARNING: the reason of a bare WORK_FAIL.
    last_warning: Option<Vec<u8>>,
    /// The outcome, once the job has one.
    outcome: Option<Result<JobOutcome>>,
}

/// Per server, over the call.
#[derive(Debug, Default)]
struct ServerLog {
    /// The last failure of this call.
    last_error: Option<Error>,
    /// The first retry was announced (once per server and call, at the
    /// default level).
    warned: bool,
}

/// The decisions of one call.
pub(super) struct Coordinator<'c, 'h> {
    set: &'c ClientConfig,
    slots: &'c [ServerEntry],
    jobs: Vec<Entry>,
    specs: &'c [Submission<'c>],
    servers: Vec<ServerLog>,
    start: Instant,
    remaining: usize,
    /// Job deadlines and ends of retry windows, soonest first; entries of
    /// finished jobs are dropped as they come up.
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    outbox: Vec<(usize, Command)>,
    hooks: Hooks<'h>,
}

impl<'c, 'h> Coordinator<'c, 'h> {
    /// Checks every job and gives each valid one to the server its unique
    /// id hashes to (or the next one not backing off).
    pub(super) fn new(
        set: &'c ClientConfig,
        slots: &'c [ServerEntry],
        specs: &'c [Submission<'c>],
        hooks: Hooks<'h>,
        start: Instant,
    ) -> Self {
        let servers = slots.len();
        let jobs = specs
            .iter()
            .map(|s| Entry {
                lane: 0,
                deadline: start + s.job.get_timeout().unwrap_or(set.job_timeout),
                attempts: 0,
                refusals: 0,
                retry_from: None,
                handle: None,
                last_warning: None,
                outcome: None,
            })
            .collect();
        let mut c = Coordinator {
            set,
            slots,
            jobs,
            specs,
            servers: (0..servers).map(|_| ServerLog::default()).collect(),
            start,
            remaining: specs.len(),
            timers: BinaryHeap::new(),
            outbox: Vec::new(),
            hooks,
        };
        let mut initial: Vec<Vec<usize>> = vec![Vec::new(); servers];
        let mut timers = Vec::with_capacity(specs.len());
        for (i, s) in specs.iter().enumerate() {
            let job = s.job;
            let invalid =
                job.validate().err().or_else(|| too_large(job, &s.unique, set.max_packet_size));
            if let Some(reason) = invalid {
                let e = Error::InvalidJob { function: job.function().to_string(), reason };
                c.finish(i, Err(e));
                continue;
            }
            let first = (stable_hash(s.unique.as_bytes()) % servers as u64) as usize;
            let lane = pick(slots, first, start);
            c.jobs[i].lane = lane;
            initial[lane].push(i);
            timers.push(Reverse((c.jobs[i].deadline, i)));
        }
        c.timers = BinaryHeap::from(timers);
        for (lane, batch) in initial.into_iter().enumerate() {
            if !batch.is_empty() {
                c.outbox.push((lane, Command::Submit(batch)));
            }
        }
        c
    }

    fn job(&self, i: usize) -> &'c Job {
        self.specs[i].job
    }

    fn is_done(&self, i: usize) -> bool {
        self.jobs[i].outcome.is_some()
    }

    /// Every job has its outcome.
    pub(super) fn finished(&self) -> bool {
        self.remaining == 0
    }

    /// What the lanes are to be sent, in order.
    pub(super) fn take_commands(&mut self) -> Vec<(usize, Command)> {
        std::mem::take(&mut self.outbox)
    }

    /// When [`Coordinator::expire`] is next due, if any job is unfinished.
    pub(super) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((t, i))) = self.timers.peek().copied() {
            if !self.is_done(i) {
                return Some(t);
            }
            self.timers.pop();
        }
        None
    }

    /// The outcome of every job, in the order of the jobs.
    pub(super) fn into_results(self) -> Vec<Result<JobOutcome>> {
        self.jobs.into_iter().map(|e| e.outcome.unwrap_or(Err(Error::NoServers))).collect()
    }

    /// Ends job `i` with `res`, unless it has an outcome already.
    fn finish(&mut self, i: usize, res: Result<JobOutcome>) {
        if self.is_done(i) {
            return;
        }
        if let Some(f) = self.hooks.on_done.as_mut() {
            f(i, &res);
        }
        self.jobs[i].outcome = Some(res);
        self.remaining -= 1;
    }

    fn event(&mut self, i: usize, e: &JobEvent) {
        if let Some(f) = self.hooks.on_event.as_mut() {
            f(i, e);
        }
    }

    /// Ends `jobs` given to `lane` with an error that no other server would
    /// change (the lane could not be started).
    pub(super) fn fail(&mut self, lane: usize, jobs: &[usize], reason: &str) {
        for &j in jobs {
            let e = Error::Connection {
                phase: Phase::Connect,
                reason: reason.to_string(),
                context: Box::new(Context {
                    server: Some(self.slots[lane].addr.to_string()),
                    function: Some(self.job(j).function().to_string()),
                    handle: None,
                }),
            };
            self.finish(j, Err(e));
        }
    }

    /// A lane's report.
    pub(super) fn on_report(&mut self, lane: usize, report: Report, now: Instant) {
        match report {
            Report::Created { job, handle } => {
                if self.is_done(job) {
                    return;
                }
                self.jobs[job].handle = Some(handle.clone());
                self.event(job, &JobEvent::Created(handle));
            }
            Report::Event { job, event } => {
                if let JobEvent::Warning(w) = &event {
                    self.jobs[job].last_warning = Some(w.clone());
                }
                if !self.is_done(job) {
                    self.event(job, &event);
                }
            }
            Report::Done { job, mut result } => {
                if let Ok(JobOutcome::Failed { warning, .. }) = &mut result {
                    if warning.is_none() {
                        *warning = self.jobs[job].last_warning.take();
                    }
                }
                let handle = self.jobs[job].handle.as_ref().map(JobHandle::as_str);
                let result = result.map_err(|e| e.with_handle(handle));
                self.finish(job, result);
            }
            Report::Refused { job, error } => self.on_refused(lane, job, error),
            Report::Lost { jobs, error } => self.on_lost(lane, jobs, error, now),
        }
    }

    /// A background job `lane`'s server could not queue: the next server
    /// gets it, until every server refused it.
    fn on_refused(&mut self, lane: usize, job: usize, error: Error) {
        if self.is_done(job) {
            return;
        }
        let servers = self.slots.len();
        self.jobs[job].refusals += 1;
        if self.jobs[job].refusals >= servers {
            // Every server refused: the last one's error.
            return self.finish(job, Err(error));
        }
        let next = (lane + 1) % servers;
        log::info!("{error}; submitting to {}", self.slots[next].addr);
        self.jobs[job].lane = next;
        self.outbox.push((next, Command::Submit(vec![job])));
    }

    /// `lane` lost its connection (or could not open one) with `lost` on
    /// it: each goes to the next server, unless its retries are over.
    pub(super) fn on_lost(&mut self, lane: usize, lost: Vec<usize>, error: Error, now: Instant) {
        let servers = self.slots.len();
        let retry = self.set.retry_timeout;
        let mut reroute: Vec<Vec<usize>> = vec![Vec::new(); servers];
        for j in lost {
            if self.is_done(j) {
                continue;
            }
            let start = self.start;
            let e = &mut self.jobs[j];
            e.attempts += 1;
            let since = match e.retry_from {
                Some(t) => t,
                None => {
                    let t = if e.handle.is_some() { now } else { start };
                    e.retry_from = Some(t);
                    self.timers.push(Reverse((t + retry, j)));
                    t
                }
            };
            if e.attempts as usize >= servers && now.duration_since(since) >= retry {
                self.servers[lane].last_error = Some(error.clone());
                let e = self.unreachable(j, format!("retry_timeout {retry:?}"));
                self.finish(j, Err(e));
                continue;
            }
            if self.jobs[j].handle.take().is_some() {
                // The next run's warnings are its own.
                self.jobs[j].last_warning = None;
                let reason = error.to_string();
                self.event(j, &JobEvent::Resubmitted { reason });
            }
            let next = pick(self.slots, (lane + 1) % servers, now);
            self.jobs[j].lane = next;
            reroute[next].push(j);
        }
        if reroute.iter().any(|b| !b.is_empty()) && !self.servers[lane].warned {
            self.servers[lane].warned = true;
            log::warn!("{error}; retrying for up to {:?}", retry.min(self.set.job_timeout));
        }
        self.servers[lane].last_error = Some(error);
        for (lane, batch) in reroute.into_iter().enumerate() {
            if !batch.is_empty() {
                log::info!("resubmitting {} job(s) to {}", batch.len(), self.slots[lane].addr);
                self.outbox.push((lane, Command::Submit(batch)));
            }
        }
    }

    /// Ends the jobs whose limit passed by `now`: the job timeout, or the
    /// retry timeout of a job no server accepted. Their lanes are told to
    /// drop them.
    pub(super) fn expire(&mut self, now: Instant) {
        let servers = self.slots.len();
        let mut cancel: Vec<Vec<usize>> = vec![Vec::new(); servers];
        while let Some(&Reverse((t, i))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            if self.is_done(i) {
                continue;
            }
            let e = &self.jobs[i];
            let limit = e.deadline - self.start;
            let err = if now >= e.deadline {
                let failed = self.servers.iter().any(|s| s.last_error.is_some());
                if e.handle.is_none() && failed {
                    // The cause, rather than the limit it ran into.
                    self.unreachable(i, format!("job timeout {limit:?}"))
                } else {
                    let phase = if e.handle.is_some() { Phase::Result } else { Phase::Ack };
                    let server = match &e.handle {
                        Some(h) => h.server().to_string(),
                        None => self.slots[e.lane].addr.to_string(),
                    };
                    Error::Timeout {
                        phase,
                        limit,
                        context: Box::new(Context {
                            server: Some(server),
                            function: Some(self.job(i).function().to_string()),
                            handle: e.handle.as_ref().map(|h| h.as_str().to_string()),
                        }),
                    }
                }
            } else if e.handle.is_none()
                && e.attempts as usize >= servers
                && e.retry_from.is_some_and(|t| now >= t + self.set.retry_timeout)
            {
                // Retried long enough: an attempt still waiting for its
                // JOB_CREATED does not extend the limit.
                self.unreachable(i, format!("retry_timeout {:?}", self.set.retry_timeout))
            } else {
                continue;
            };
            cancel[self.jobs[i].lane].push(i);
            self.finish(i, Err(err));
        }
        for (lane, jobs) in cancel.into_iter().enumerate() {
            if !jobs.is_empty() {
                self.outbox.push((lane, Command::Cancel(jobs)));
            }
        }
    }

    /// A job no server accepted: each server's last failure, and the limit
    /// that ended the tries.
    fn unreachable(&self, i: usize, limit: String) -> Error {
        let last: Vec<Option<Error>> = self.servers.iter().map(|s| s.last_error.clone()).collect();
        unreachable(self.slots, &last, self.job(i), limit)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{settings, subs};
    use super::*;
    use std::cell::RefCell;
    use std::time::Duration;

    fn refused(server: &str) -> Error {
        Error::Connection {
            phase: Phase::Connect,
            reason: "connection refused".into(),
            context: Box::new(Context { server: Some(server.into()), ..Context::default() }),
        }
    }

    fn slots() -> Vec<ServerEntry> {
        vec![ServerEntry::new("a:1"), ServerEntry::new("b:1")]
    }

    /// The lane of the only job's first submission.
    fn first(c: &mut Coordinator<'_, '_>) -> usize {
        match &c.take_commands()[..] {
            [(lane, Command::Submit(jobs))] if jobs == &[0] => *lane,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_lost_job_fails_over_to_the_next_server() {
        let set = settings();
        let slots = slots();
        let jobs = [Job::new("f", "x")];
        let subs = subs(&jobs);
        let events = RefCell::new(Vec::new());
        let mut on_event = |i: usize, e: &JobEvent| events.borrow_mut().push((i, e.clone()));
        let hooks = Hooks { on_event: Some(&mut on_event), on_done: None };
        let now = Instant::now();
        let mut c = Coordinator::new(&set, &slots, &subs, hooks, now);
        let a = first(&mut c);
        let b = 1 - a;
        c.on_report(a, Report::Lost { jobs: vec![0], error: refused("a") }, now);
        assert_eq!(c.take_commands(), [(b, Command::Submit(vec![0]))]);
        let handle = JobHandle::new(slots[b].addr.to_string(), "H:1");
        c.on_report(b, Report::Created { job: 0, handle: handle.clone() }, now);
        // Accepted, then lost: resubmitted, with an event saying so.
        let later = now + Duration::from_millis(10);
        c.on_lost(b, vec![0], refused("b"), later);
        assert_eq!(c.take_commands(), [(a, Command::Submit(vec![0]))]);
        assert!(matches!(&events.borrow()[1], (0, JobEvent::Resubmitted { .. })));
        let data = b"ok".to_vec();
        c.on_report(
            a,
            Report::Done { job: 0, result: Ok(JobOutcome::Complete { handle, data }) },
            later,
        );
        assert!(c.finished());
        assert!(c.into_results()[0].is_ok());
    }

    #[test]
    fn retries_end_at_the_retry_timeout() {
        let mut set = settings();
        set.retry_timeout = Duration::from_secs(5);
        let slots = slots();
        let jobs = [Job::new("f", "x")];
        let subs = subs(&jobs);
        let now = Instant::now();
        let hooks = Hooks { on_event: None, on_done: None };
        let mut c = Coordinator::new(&set, &slots, &subs, hooks, now);
        let a = first(&mut c);
        c.on_lost(a, vec![0], refused("a"), now);
        let b = match &c.take_commands()[..] {
            [(b, Command::Submit(_))] => *b,
            other => panic!("{other:?}"),
        };
        assert_eq!(c.next_deadline(), Some(now + set.retry_timeout));
        // Both servers were tried; the second attempt is still waiting
        // for its JOB_CREATED when the retry window ends.
        c.on_lost(b, vec![0], refused("b"), now + Duration::from_secs(1));
        c.take_commands();
        c.expire(now + Duration::from_secs(4));
        assert!(!c.finished());
        c.expire(now + Duration::from_secs(5));
        assert!(c.finished());
        assert_eq!(c.take_commands(), [(a, Command::Cancel(vec![0]))]);
        let e = c.into_results().pop().unwrap().unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::Unreachable { .. }), "{text}");
        assert!(text.contains("gave up at the retry_timeout 5s"), "{text}");
        assert!(
            text.contains("cannot connect to a") && text.contains("cannot connect to b"),
            "{text}"
        );
    }

    #[test]
    fn a_lost_job_past_its_retry_window_fails_at_once() {
        let mut set = settings();
        set.retry_timeout = Duration::from_secs(5);
        let slots = vec![ServerEntry::new("a:1")];
        let jobs = [Job::new("f", "x")];
        let subs = subs(&jobs);
        let now = Instant::now();
        let mut c =
            Coordinator::new(&set, &slots, &subs, Hooks { on_event: None, on_done: None }, now);
        first(&mut c);
        c.on_lost(0, vec![0], refused("a"), now + Duration::from_secs(6));
        assert!(c.finished());
        assert!(c.take_commands().is_empty());
    }

    #[test]
    fn the_job_timeout_ends_a_running_job_and_cancels_it() {
        let set = settings();
        let slots = slots();
        let jobs = [Job::new("f", "x").timeout(Duration::from_secs(2))];
        let subs = subs(&jobs);
        let done = RefCell::new(Vec::new());
        let mut on_done = |i: usize, r: &Result<JobOutcome>| done.borrow_mut().push((i, r.clone()));
        let hooks = Hooks { on_event: None, on_done: Some(&mut on_done) };
        let now = Instant::now();
        let mut c = Coordinator::new(&set, &slots, &subs, hooks, now);
        let a = first(&mut c);
        let handle = JobHandle::new(slots[a].addr.to_string(), "H:7");
        c.on_report(a, Report::Created { job: 0, handle }, now);
        assert_eq!(c.next_deadline(), Some(now + Duration::from_secs(2)));
        c.expire(now + Duration::from_secs(1));
        assert!(!c.finished());
        c.expire(now + Duration::from_secs(2));
        assert!(c.finished());
        assert_eq!(c.next_deadline(), None);
        assert_eq!(c.take_commands(), [(a, Command::Cancel(vec![0]))]);
        let e = done.borrow()[0].1.clone().unwrap_err();
        assert!(matches!(e, Error::Timeout { phase: Phase::Result, .. }), "{e}");
        assert!(e.to_string().contains("handle H:7"), "{e}");
        // A late outcome does not change it.
        drop(c);
        assert_eq!(done.borrow().len(), 1);
    }

    #[test]
    fn a_lost_lane_requeues_its_jobs_without_an_outcome() {
        let set = settings();
        let slots = slots();
        let jobs: Vec<Job> = (0..20).map(|i| Job::new("f", i.to_string())).collect();
        let subs = subs(&jobs);
        let now = Instant::now();
        let mut c =
            Coordinator::new(&set, &slots, &subs, Hooks { on_event: None, on_done: None }, now);
        let at_a: Vec<usize> = c
            .take_commands()
            .into_iter()
            .find(|(l, _)| *l == 0)
            .map(|(_, cmd)| match cmd {
                Command::Submit(v) => v,
                other => panic!("{other:?}"),
            })
            .expect("some jobs hash to a");
        // The first one finished; the lane loses the others.
        let h = JobHandle::new("a:1", "H:1");
        let outcome = Ok(JobOutcome::Accepted { handle: h });
        c.on_report(0, Report::Done { job: at_a[0], result: outcome }, now);
        c.on_report(0, Report::Lost { jobs: at_a.clone(), error: refused("a") }, now);
        assert_eq!(c.take_commands(), [(1, Command::Submit(at_a[1..].to_vec()))]);
    }

    #[test]
    fn a_job_refused_by_every_server_fails_with_the_last_error() {
        let set = settings();
        let slots = slots();
        let jobs = [Job::new("f", "x").background(true)];
        let subs = subs(&jobs);
        let now = Instant::now();
        let mut c =
            Coordinator::new(&set, &slots, &subs, Hooks { on_event: None, on_done: None }, now);
        let a = first(&mut c);
        let queue_error = |s: &str| Error::Server {
            phase: Phase::Ack,
            code: "QUEUE_ERROR".into(),
            text: s.into(),
            context: Box::default(),
        };
        c.on_report(a, Report::Refused { job: 0, error: queue_error("one") }, now);
        assert_eq!(c.take_commands(), [(1 - a, Command::Submit(vec![0]))]);
        c.on_report(1 - a, Report::Refused { job: 0, error: queue_error("two") }, now);
        assert!(c.finished());
        assert_eq!(c.into_results()[0], Err(queue_error("two")));
    }

    #[test]
    fn invalid_jobs_end_before_any_lane_sees_them() {
        let set = settings();
        let slots = slots();
        let jobs = [Job::new("", "x")];
        let subs = subs(&jobs);
        let c = Coordinator::new(
            &set,
            &slots,
            &subs,
            Hooks { on_event: None, on_done: None },
            Instant::now(),
        );
        assert!(c.finished());
        assert!(matches!(c.into_results()[0], Err(Error::InvalidJob { .. })));
    }
}
