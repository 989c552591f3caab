//! The submission engine: one lane per server a call uses, and a
//! coordinator that decides for the whole call.
//!
//! ```text
//!  caller ──jobs──▶ Coordinator ──Command::Submit/Cancel──▶ Lane(server k) ──SUBMIT*──▶ server k
//!     ▲                 │  ▲                                   │   ◀──JOB_CREATED, WORK_*──┘
//!     └──events, done───┘  └──────────────Report───────────────┘
//! ```
//!
//! Both are sans-IO: the [`Coordinator`](coord::Coordinator) (`coord.rs`)
//! holds one entry per job and decides failover, resubmission and time
//! limits; a [`Lane`](lane::Lane) (`lane.rs`) is the conversation with one
//! server, turning received packets into packets to send and reports.
//! `io.rs` carries them out on sockets and threads.

use std::io::ErrorKind;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::ClientConfig;
use super::error::{Context, Error, Phase, Result};
use super::job::{Job, JobEvent, JobOutcome};
use crate::conn::{self, Connection, OwnedPacket};
use crate::proto::{Packet, PacketType};
use crate::util::Backoff;
use coord::Coordinator;

mod coord;
mod io;
mod lane;

/// Idle connections kept per server between calls.
const MAX_IDLE: usize = 8;

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
    fn record_failure(&self, set: &ClientConfig) {
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

    /// Opens a fresh connection with the settings' socket options.
    fn dial(&self, set: &ClientConfig) -> Result<Connection> {
        let mut c = Connection::connect(&self.addr, set.connect_timeout).map_err(|e| {
            self.record_failure(set);
            Error::Connection {
                phase: Phase::Connect,
                reason: socket_reason(&e),
                context: self.ctx(),
            }
        })?;
        self.record_ok();
        c.set_busy_poll(set.busy_poll);
        c.set_max_packet_size(set.max_packet_size);
        let _ = c.set_write_timeout(Some(set.ack_timeout));
        log::debug!("server={} connected", self.addr);
        Ok(c)
    }

    /// Opens a fresh connection and queues the per-connection setup
    /// (client id, exceptions option). Returns the number of OPTION_REQs
    /// whose answer is still to come.
    fn open(&self, set: &ClientConfig) -> Result<(Connection, usize)> {
        let mut c = self.dial(set)?;
        if let Some(id) = &set.client_id {
            let _ = c.queue(&Packet::SetClientId { id: id.as_bytes() });
        }
        let mut options = 0;
        if set.exceptions {
            let _ = c.queue(&Packet::OptionReq { option: b"exceptions" });
            options = 1;
        }
        Ok((c, options))
    }
}

/// The cause of a failed exchange in words: the socket's (refused, reset,
/// timed out), a protocol error (the peer does not speak Gearman), or the
/// packet that could not be sent.
fn conn_reason(e: &conn::Error) -> String {
    match e {
        conn::Error::Io(e) => socket_reason(e),
        conn::Error::Protocol(_) | conn::Error::Unexpected { .. } => {
            format!("protocol error: {e} (is it a Gearman job server?)")
        }
        _ => e.to_string(),
    }
}

/// The cause of a socket error in words: refused, reset, timed out.
fn socket_reason(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timed out".into(),
        ErrorKind::ConnectionRefused => {
            "connection refused (is a job server listening there?)".into()
        }
        ErrorKind::ConnectionReset => "connection reset by the server".into(),
        ErrorKind::BrokenPipe => "the server closed the connection".into(),
        ErrorKind::UnexpectedEof => "the server closed the connection".into(),
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
    set: &ClientConfig,
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
            return Err(broken(conn_reason(&e)));
        }
        let deadline = Instant::now() + set.ack_timeout;
        loop {
            let p = match conn.recv(Some(deadline)) {
                Ok(p) => p,
                Err(e) if e.is_timeout() => {
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
                Err(e) => return Err(broken(conn_reason(&e))),
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

/// Called with a job's index and an event.
pub(crate) type EventFn<'h> = &'h mut dyn FnMut(usize, &JobEvent);
/// Called with a job's index and its outcome.
pub(crate) type DoneFn<'h> = &'h mut dyn FnMut(usize, &Result<JobOutcome>);

/// Callbacks of one call.
pub(crate) struct Hooks<'h> {
    pub(crate) on_event: Option<EventFn<'h>>,
    pub(crate) on_done: Option<DoneFn<'h>>,
}

/// What the lanes send for one job: the job, its unique id (the caller's
/// or a random one) and its epoch as text.
#[derive(Debug)]
struct Submission<'a> {
    job: &'a Job,
    unique: String,
    epoch: Option<String>,
}

/// Submits `jobs` and waits for every outcome.
pub(crate) fn run(
    set: &ClientConfig,
    slots: &[ServerEntry],
    jobs: &[Job],
    hooks: Hooks<'_>,
) -> Vec<Result<JobOutcome>> {
    let start = Instant::now();
    let subs: Vec<Submission<'_>> = jobs
        .iter()
        .map(|job| Submission {
            job,
            unique: job.unique_id().map_or_else(super::job::random_unique, str::to_string),
            epoch: job.epoch().map(|e| e.to_string()),
        })
        .collect();
    let mut coord = Coordinator::new(set, slots, &subs, hooks, start);
    if !coord.finished() {
        if jobs.len() == 1 || slots.len() == 1 {
            io::run_inline(&mut coord, set, slots, &subs);
        } else {
            io::run_threaded(&mut coord, set, slots, &subs);
        }
    }
    coord.into_results()
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
    use std::time::Duration;

    use super::*;

    /// Settings for the unit tests: the defaults, without busy polling.
    pub(super) fn settings() -> ClientConfig {
        ClientConfig { busy_poll: Duration::ZERO, ..ClientConfig::default() }
    }

    /// The submissions of `jobs`, with unique ids `u0`, `u1`... unless a
    /// job has its own.
    pub(super) fn subs(jobs: &[Job]) -> Vec<Submission<'_>> {
        jobs.iter()
            .enumerate()
            .map(|(i, job)| Submission {
                job,
                unique: job.unique_id().map_or_else(|| format!("u{i}"), str::to_string),
                epoch: job.epoch().map(|e| e.to_string()),
            })
            .collect()
    }

    #[test]
    fn failed_exchanges_are_told_apart() {
        use crate::conn::{Expected, Received};
        use crate::proto::ProtocolError;
        let reason = |e: conn::Error| conn_reason(&e);
        let closed = reason(std::io::Error::from(ErrorKind::UnexpectedEof).into());
        assert_eq!(closed, "the server closed the connection");
        let garbage = reason(conn::Error::Protocol(ProtocolError::BadMagic(*b"\0XYZ")));
        assert!(garbage.starts_with("protocol error: bad packet magic"), "{garbage}");
        assert!(garbage.ends_with("(is it a Gearman job server?)"), "{garbage}");
        let text = reason(conn::Error::Unexpected {
            expected: Expected::Packet,
            got: Received::Text("HTTP/1.1 400".into()),
        });
        assert_eq!(
            text,
            "protocol error: unexpected text from server: \"HTTP/1.1 400\" \
             (is it a Gearman job server?)"
        );
        let bad = ProtocolError::NulInArgument { kind: PacketType::SubmitJob, index: 0 };
        assert_eq!(reason(conn::Error::Invalid(bad.clone())), bad.to_string());
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
