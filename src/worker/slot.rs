//! One slot: a thread, a connection to one server, at most one job.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::job::{FailKind, Job, JobContext, JobError, JobResult};
use super::{Function, Pool, WorkerBuilder, is_shutdown_payload};
use crate::conn::{self, Connection, Expected, OwnedPacket, Received};
use crate::proto::{Packet, PacketType, Priority, SubmitKind};
use crate::util::{Backoff, panic_message, random_u64};

/// Whether the server assigns this connection jobs without a grab (see
/// [`crate::proto::PUSH_OPTION`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Push {
    /// Not asked for.
    Off,
    /// Asked for; no answer yet.
    Asked,
    /// The server answered OPTION_RES.
    On,
}

/// What the server answered to the
/// [`EXCEPTIONS_SAFE_OPTION`](crate::proto::EXCEPTIONS_SAFE_OPTION).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exceptions {
    /// Asked; no answer yet (WORK_EXCEPTION is not sent meanwhile).
    Asked,
    /// OPTION_RES: WORK_EXCEPTION reaches only clients that asked for it.
    Safe,
    /// An ERROR: another server, or one that sends exceptions to all.
    Unsafe,
}

/// Why [`Slot::serve`] returned.
enum End {
    /// The worker stops, or a shutdown job stopped this slot.
    Stop,
    /// The connection broke; reconnect.
    Lost(conn::Error),
}

pub(crate) struct Slot {
    id: usize,
    server: String,
    settings: Arc<WorkerBuilder>,
    shared: Arc<Pool>,
    _done: Sender<()>,
}

impl Slot {
    pub(crate) fn new(
        id: usize,
        server: String,
        settings: Arc<WorkerBuilder>,
        shared: Arc<Pool>,
        done: Sender<()>,
    ) -> Slot {
        Slot { id, server, settings, shared, _done: done }
    }

    pub(crate) fn run(self) {
        let mut backoff =
            Backoff::new(self.settings.config.backoff_min, self.settings.config.backoff_max);
        while !self.shared.is_stopping() {
            let mut conn =
                match Connection::connect(&self.server, self.settings.config.connect_timeout) {
                    Ok(c) => c,
                    Err(e) => {
                        let wait = backoff.fail();
                        if backoff.failures() == 1 {
                            log::warn!(
                                "slot={} server={}: cannot connect: {e}; retrying",
                                self.id,
                                self.server
                            );
                        } else {
                            log::debug!(
                                "slot={} server={}: cannot connect: {e}",
                                self.id,
                                self.server
                            );
                        }
                        if self.shared.wait_or_stop(wait) {
                            break;
                        }
                        continue;
                    }
                };
            if backoff.failures() > 0 {
                log::info!("slot={} server={}: connected", self.id, self.server);
            }
            conn.set_busy_poll(self.settings.config.busy_poll);
            conn.set_max_packet_size(self.settings.config.max_packet_size);
            match conn.shutdown_handle() {
                Ok(s) => *self.shared.waker(self.id) = Some((s, true)),
                Err(e) => log::warn!("slot={}: cannot clone the socket: {e}", self.id),
            }
            let end = self.serve(&mut conn, &mut backoff);
            *self.shared.waker(self.id) = None;
            conn.close();
            match end {
                End::Stop => break,
                End::Lost(e) => {
                    if self.shared.is_stopping() {
                        break;
                    }
                    log::warn!(
                        "slot={} server={}: connection lost: {e}; reconnecting",
                        self.id,
                        self.server
                    );
                    if self.shared.wait_or_stop(backoff.fail()) {
                        break;
                    }
                }
            }
        }
        self.shared.live_slots.fetch_sub(1, Ordering::SeqCst);
        log::debug!("slot={} server={}: stopped", self.id, self.server);
    }

    fn register(&self, conn: &mut Connection) -> Result<(), conn::Error> {
        conn.set_write_timeout(Some(self.settings.config.io_timeout))?;
        conn.queue(&Packet::SetClientId { id: self.settings.name().as_bytes() })?;
        for f in self.settings.functions() {
            match f.options.server_timeout {
                Some(t) => {
                    let ms = t.as_millis().to_string();
                    conn.queue(&Packet::CanDoTimeout {
                        function: f.name.as_bytes(),
                        timeout: ms.as_bytes(),
                    })?;
                }
                None => conn.queue(&Packet::CanDo { function: f.name.as_bytes() })?,
            }
        }
        // Answered before the push option, and before the first grab.
        conn.queue(&Packet::OptionReq { option: crate::proto::EXCEPTIONS_SAFE_OPTION.as_bytes() })?;
        if self.settings.config.push {
            conn.queue(&Packet::OptionReq { option: crate::proto::PUSH_OPTION.as_bytes() })?;
        }
        conn.flush()
    }

    fn serve(&self, conn: &mut Connection, backoff: &mut Backoff) -> End {
        if let Err(e) = self.register(conn) {
            return End::Lost(e);
        }
        let mut registered = false;
        let mut push = if self.settings.config.push { Push::Asked } else { Push::Off };
        let mut exceptions = Exceptions::Asked;
        loop {
            if !self.shared.set_idle(self.id, true) {
                // The last job's result may still be buffered.
                return match conn.flush() {
                    Ok(()) => End::Stop,
                    Err(e) => End::Lost(e),
                };
            }
            // Written together with the last job's result, when one is buffered.
            let reply = if push == Push::On {
                conn.send(&Packet::PreSleep)
                    .and_then(|()| self.await_push(conn, &mut push, &mut exceptions))
            } else {
                conn.send(&Packet::GrabJobUniq)
                    .and_then(|()| self.await_grab_reply(conn, &mut push, &mut exceptions))
            };
            let reply = match reply {
                Ok(r) => r,
                Err(e) => return self.lost_or_stop(e),
            };
            if !registered {
                // The server answered: the registration went through.
                registered = true;
                backoff.reset();
            }
            let job = match reply {
                Some(job) => job,
                // Asleep until the server assigns a job: PRE_SLEEP next round.
                None if push == Push::On => continue,
                None => {
                    if let Err(e) = self.sleep(conn) {
                        return self.lost_or_stop(e);
                    }
                    continue;
                }
            };
            if !self.shared.set_idle(self.id, false) {
                // Stopping: do not start it; closing the connection
                // gives it back to the server.
                return End::Stop;
            }
            match self.run_job(conn, job, exceptions == Exceptions::Safe) {
                Ok(true) => {}
                Ok(false) => return End::Stop,
                Err(e) => return End::Lost(e),
            }
        }
    }

    fn lost_or_stop(&self, e: conn::Error) -> End {
        if self.shared.is_stopping() { End::Stop } else { End::Lost(e) }
    }

    /// Waits for NO_JOB (`None`) or a job; learns on the way whether the
    /// server took the push option.
    fn await_grab_reply(
        &self,
        conn: &mut Connection,
        push: &mut Push,
        exceptions: &mut Exceptions,
    ) -> Result<Option<Job>, conn::Error> {
        let deadline = Instant::now() + self.settings.config.io_timeout;
        loop {
            let p = conn.recv(Some(deadline))?;
            match p.kind {
                PacketType::NoJob => return Ok(None),
                PacketType::JobAssignUniq | PacketType::JobAssign | PacketType::JobAssignAll => {
                    return parse_assign(&p).map(Some);
                }
                PacketType::OptionRes
                    if *exceptions == Exceptions::Asked
                        && matches!(p.packet(), Ok(Packet::OptionRes { option })
                        if option.eq_ignore_ascii_case(
                            crate::proto::EXCEPTIONS_SAFE_OPTION.as_bytes()
                        )) =>
                {
                    log::debug!("slot={}: failures go out as WORK_EXCEPTION", self.id);
                    *exceptions = Exceptions::Safe;
                }
                PacketType::Error if *exceptions == Exceptions::Asked => {
                    // The first answer of the two options is this one's.
                    log::debug!("slot={}: failures go out as WORK_FAIL", self.id);
                    *exceptions = Exceptions::Unsafe;
                }
                PacketType::OptionRes if *push == Push::Asked => {
                    if let Ok(Packet::OptionRes { option }) = p.packet()
                        && option.eq_ignore_ascii_case(crate::proto::PUSH_OPTION.as_bytes())
                    {
                        log::debug!("slot={}: the server assigns jobs without grabs", self.id);
                        *push = Push::On;
                    }
                }
                PacketType::Error if *push == Push::Asked && is_unknown_option(&p) => {
                    log::debug!("slot={}: the server has no push option; grabbing", self.id);
                    *push = Push::Off;
                }
                PacketType::Noop | PacketType::OptionRes | PacketType::EchoRes => {}
                PacketType::Error => log_error(self.id, &p),
                other => log::debug!("slot={}: ignoring {other} while grabbing", self.id),
            }
        }
    }

    /// After PRE_SLEEP with the push option on: waits for the job the
    /// server assigns. The server never sends this connection NOOP; if one
    /// comes anyway, it is answered with a grab as usual. Every
    /// `sleep_timeout` an ECHO_REQ checks that the connection still works
    /// (a grab here could be answered with a second job).
    fn await_push(
        &self,
        conn: &mut Connection,
        push: &mut Push,
        exceptions: &mut Exceptions,
    ) -> Result<Option<Job>, conn::Error> {
        loop {
            let deadline = Instant::now() + self.settings.config.sleep_timeout;
            match conn.recv(Some(deadline)) {
                Ok(p) => match p.kind {
                    PacketType::JobAssignUniq
                    | PacketType::JobAssign
                    | PacketType::JobAssignAll => {
                        return parse_assign(&p).map(Some);
                    }
                    PacketType::Noop => {
                        conn.send(&Packet::GrabJobUniq)?;
                        return self.await_grab_reply(conn, push, exceptions);
                    }
                    PacketType::Error => log_error(self.id, &p),
                    other => log::debug!("slot={}: ignoring {other} while asleep", self.id),
                },
                Err(e) if e.is_timeout() => {
                    conn.send(&Packet::EchoReq { data: b"" })?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// PRE_SLEEP, then waits for NOOP or the sleep timeout.
    fn sleep(&self, conn: &mut Connection) -> Result<(), conn::Error> {
        conn.send(&Packet::PreSleep)?;
        let deadline = Instant::now() + self.settings.config.sleep_timeout;
        loop {
            match conn.recv(Some(deadline)) {
                Ok(p) => match p.kind {
                    PacketType::Noop => return Ok(()),
                    PacketType::Error => log_error(self.id, &p),
                    other => log::debug!("slot={}: ignoring {other} while asleep", self.id),
                },
                Err(e) if e.is_timeout() => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs a job and reports it. `Ok(false)`: the slot stops.
    fn run_job(
        &self,
        conn: &mut Connection,
        mut job: Job,
        exceptions_safe: bool,
    ) -> Result<bool, conn::Error> {
        let handle = job.handle.clone();
        log::debug!("slot={} job start handle={handle} func={}", self.id, job.function);
        if self.settings.config.shutdown_jobs && is_shutdown_payload(&job.payload) {
            log::info!("slot={} handle={handle}: shutdown job, this slot stops", self.id);
            conn.send(&Packet::WorkComplete { handle: handle.as_bytes(), data: &job.payload })?;
            return Ok(false);
        }
        let Some(function) = self.settings.functions().iter().find(|f| f.name == job.function)
        else {
            log::warn!(
                "slot={} handle={handle}: job for unregistered function {:?}",
                self.id,
                job.function
            );
            conn.send(&Packet::WorkFail { handle: handle.as_bytes() })?;
            return Ok(true);
        };
        self.shared.running.fetch_add(1, Ordering::SeqCst);
        self.shared.set_job(
            self.id,
            Some(super::RunningJob {
                function: job.function.clone(),
                handle: handle.clone(),
                server: self.server.clone(),
            }),
        );
        let result = self.attempts(conn, function, &mut job);
        self.shared.set_job(self.id, None);
        self.shared.running.fetch_sub(1, Ordering::SeqCst);
        let result = result?;
        if result.is_err() && self.shared.cancel.is_cancelled() {
            log::info!(
                "slot={} handle={handle}: cancelled at shutdown; the server requeues it",
                self.id
            );
            return Ok(false);
        }
        let h = handle.as_bytes();
        match &result {
            Ok(data) => {
                log::debug!("slot={} job complete handle={handle} len={}", self.id, data.len());
                // Buffered: the next GRAB_JOB_UNIQ goes out in the same write.
                conn.queue(&Packet::WorkComplete { handle: h, data })?;
            }
            Err(e) => {
                log::warn!(
                    "job failed: function {}, handle {handle}, attempt {} of {}: {e}",
                    job.function,
                    job.attempt,
                    function.options.retries + 1
                );
                let exception = match e.kind() {
                    FailKind::Auto => exceptions_safe,
                    FailKind::Fail => false,
                    FailKind::Exception => true,
                };
                if e.kind() != FailKind::Exception && !e.message().is_empty() {
                    conn.queue(&Packet::WorkWarning { handle: h, data: e.message() })?;
                }
                if exception {
                    conn.send(&Packet::WorkException { handle: h, data: e.message() })?;
                } else {
                    conn.send(&Packet::WorkFail { handle: h })?;
                }
                if let Some(dead) = &function.options.on_failure {
                    self.dead_letter(conn, dead, &job, e)?;
                }
            }
        }
        Ok(true)
    }

    /// Calls the handler, retrying failures as configured.
    fn attempts(
        &self,
        conn: &mut Connection,
        f: &Function,
        job: &mut Job,
    ) -> Result<JobResult, conn::Error> {
        let mut wait = f.options.retry_backoff;
        loop {
            let mut ctx = JobContext::new(conn, job.handle.as_bytes(), self.shared.cancel.clone());
            let outcome = catch_unwind(AssertUnwindSafe(|| f.handler.call(job, &mut ctx)));
            let broken = ctx.is_broken();
            let result = match outcome {
                Ok(r) => r,
                Err(panic) => {
                    let msg = panic_message(panic.as_ref());
                    log::error!("slot={} handle={}: handler panicked: {msg}", self.id, job.handle);
                    Err(JobError::new(format!("handler panicked: {msg}")))
                }
            };
            if broken {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "connection lost during a job",
                )
                .into());
            }
            let Err(e) = &result else { return Ok(result) };
            if job.attempt > f.options.retries
                || self.shared.is_stopping()
                || self.shared.cancel.is_cancelled()
            {
                return Ok(result);
            }
            log::info!(
                "slot={} handle={} attempt {} failed: {e}; retrying in {wait:?}",
                self.id,
                job.handle,
                job.attempt
            );
            if self.shared.wait_or_stop(wait) {
                return Ok(result);
            }
            wait = (wait * 2).min(Duration::from_secs(60));
            job.attempt += 1;
        }
    }

    /// Submits the failed job to the dead-letter function as a background
    /// job, on this connection.
    fn dead_letter(
        &self,
        conn: &mut Connection,
        dead: &str,
        job: &Job,
        e: &JobError,
    ) -> Result<(), conn::Error> {
        let body = serde_json::json!({
            "function": job.function,
            "handle": job.handle,
            "unique": String::from_utf8_lossy(&job.unique),
            "payload": String::from_utf8_lossy(&job.payload),
            "error": e.to_string(),
            "attempts": job.attempt,
        })
        .to_string();
        let unique = format!("{}-dead-{:016x}", job.function, random_u64());
        let unique = &unique[unique.len().saturating_sub(63)..];
        conn.send(&Packet::Submit {
            kind: SubmitKind { priority: Priority::Normal, background: true },
            function: dead.as_bytes(),
            unique: unique.as_bytes(),
            data: body.as_bytes(),
        })?;
        let deadline = Instant::now() + self.settings.config.io_timeout;
        loop {
            let p = conn.recv(Some(deadline))?;
            match p.kind {
                PacketType::JobCreated => {
                    log::info!("handle={}: failed job sent to {dead}", job.handle);
                    return Ok(());
                }
                PacketType::Error => {
                    log_error(self.id, &p);
                    return Ok(());
                }
                _ => {}
            }
        }
    }
}

fn parse_assign(p: &OwnedPacket) -> Result<Job, conn::Error> {
    let (handle, function, unique, data) = match p.packet().map_err(conn::Error::Protocol)? {
        Packet::JobAssignUniq { handle, function, unique, data } => {
            (handle, function, unique, data)
        }
        Packet::JobAssignAll { handle, function, unique, data, .. } => {
            (handle, function, unique, data)
        }
        Packet::JobAssign { handle, function, data } => (handle, function, &[][..], data),
        _ => {
            return Err(conn::Error::Unexpected {
                expected: Expected::JobAssignment,
                got: Received::Packet(p.kind),
            });
        }
    };
    Ok(Job {
        function: String::from_utf8_lossy(function).into_owned(),
        handle: String::from_utf8_lossy(handle).into_owned(),
        unique: unique.to_vec(),
        payload: data.to_vec(),
        attempt: 1,
    })
}

fn is_unknown_option(p: &OwnedPacket) -> bool {
    matches!(p.packet(), Ok(Packet::Error { code, .. }) if code == b"UNKNOWN_OPTION")
}

fn log_error(slot: usize, p: &OwnedPacket) {
    if let Ok(Packet::Error { code, text }) = p.packet() {
        log::warn!(
            "slot={slot}: server error {}: {}",
            String::from_utf8_lossy(code),
            String::from_utf8_lossy(text)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Magic;

    fn packet(kind: PacketType, body: &[u8]) -> OwnedPacket {
        OwnedPacket { magic: Magic::Res, kind, body: body.to_vec() }
    }

    #[test]
    fn a_bad_job_assignment_says_what_is_wrong() {
        let job = parse_assign(&packet(PacketType::JobAssign, b"H:1\0f\0data")).unwrap();
        assert_eq!((job.handle.as_str(), job.function.as_str()), ("H:1", "f"));
        let e = parse_assign(&packet(PacketType::JobAssign, b"H:1")).unwrap_err();
        assert!(
            matches!(e, conn::Error::Protocol(crate::proto::ProtocolError::TooFewArguments { .. })),
            "{e:?}"
        );
        let e = parse_assign(&packet(PacketType::NoJob, b"")).unwrap_err();
        assert!(
            matches!(
                e,
                conn::Error::Unexpected {
                    expected: Expected::JobAssignment,
                    got: Received::Packet(PacketType::NoJob)
                }
            ),
            "{e:?}"
        );
    }
}
