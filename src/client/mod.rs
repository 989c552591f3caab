//! A blocking Gearman client that never loses an accepted job.
//!
//! [`Client`] is a cheap-to-clone handle (an `Arc` inside) built with
//! [`Client::builder`]. It keeps a few idle connections per server between
//! calls and can be shared between threads.
//!
//! ```no_run
//! use gearframe::client::{Client, Job, JobEvent, JobOutcome};
//! use gearframe::proto::Priority;
//! use std::time::Duration;
//!
//! # fn main() -> gearframe::client::Result<()> {
//! let client = Client::builder()
//!     .servers(["127.0.0.1:4730", "10.0.0.2"])
//!     .connect_timeout(Duration::from_secs(2))
//!     .ack_timeout(Duration::from_secs(5))
//!     .build()?;
//!
//! // Foreground: wait for the result.
//! match client.submit("reverse", "hello")? {
//!     JobOutcome::Complete { data, .. } => println!("{}", String::from_utf8_lossy(&data)),
//!     other => eprintln!("job {}", other.name()),
//! }
//!
//! // Foreground with options, watching WORK_DATA/WARNING/STATUS as they arrive.
//! let job = Job::new("build", "src.tar").priority(Priority::High).timeout(Duration::from_secs(60));
//! let outcome = client.submit_job_with(&job, |event| {
//!     if let JobEvent::Status { numerator, denominator } = event {
//!         eprintln!("{numerator}/{denominator}");
//!     }
//! })?;
//!
//! // Background: returns once the server has accepted the job.
//! let handle = client.submit_background("index", "doc-42")?;
//! let status = client.status(&handle)?;
//!
//! // Many jobs pipelined, one outcome per job, in order.
//! let jobs: Vec<Job> = (0..10_000).map(|i| Job::new("echo", i.to_string())).collect();
//! let outcomes = client.batch(&jobs).run();
//! assert_eq!(outcomes.len(), jobs.len());
//! # Ok(()) }
//! ```
//!
//! Every setting is a field of [`ClientConfig`], which is also the
//! `client:` section of config.yaml: [`Client::with_config`] (or
//! [`ClientBuilder::config`]) takes a whole one, the builder's other
//! methods set one field each, and [`ClientConfig::default`] holds the
//! defaults of both.
//!
//! # Servers
//!
//! Servers come from [`ClientBuilder::servers`] (the last call replaces
//! the list), else from the `GEARMAN_SERVERS` environment variable
//! (`host[:port],...`), else `127.0.0.1:4730`; the forms accepted are those
//! of [`parse_server_list`], the same for
//! every command and builder. The port defaults to 4730.
//!
//! A job goes to the server chosen by a stable hash of its unique id
//! ([`stable_hash`] modulo the number of servers), so that jobs with the
//! same unique id meet on one server and coalesce across a cluster. When
//! that server cannot be reached the job goes to the next one in the list.
//! A server that failed is avoided for a back-off time that doubles with
//! each failure in a row (with jitter), from
//! [`backoff`](ClientBuilder::backoff)'s minimum up to its maximum.
//!
//! # Delivery guarantee: at least once
//!
//! Every job gets a unique id: the caller's, or a random one. A job whose
//! JOB_CREATED did not arrive (connection refused, broken, or silent for
//! longer than the ack timeout) is submitted again to the next server with
//! the same unique id. A foreground job whose connection breaks after
//! JOB_CREATED is submitted again too, and its result still reaches the
//! caller. So no job that a server accepted is lost by the client, but a
//! job may run more than once: when the first server had already accepted
//! it (or a worker had started it) before the failure, and the copies do
//! not meet on one server to coalesce. Workers should be idempotent. Events
//! of a resubmitted job may repeat; [`JobEvent::Resubmitted`] marks the
//! point. A background job that was accepted is the server's from then on:
//! if that server dies without a persistent queue, the job is lost with it.
//!
//! # Timeouts
//!
//! Every wait is bounded:
//!
//! | limit | default | what it bounds |
//! |---|---|---|
//! | [`connect_timeout`](ClientBuilder::connect_timeout) | 3 s | one TCP connect |
//! | [`ack_timeout`](ClientBuilder::ack_timeout) | 10 s | JOB_CREATED after a submission is written, a status or echo reply, a blocked write |
//! | [`retry_timeout`](ClientBuilder::retry_timeout) | 30 s | how long a job keeps being tried: from the start of the call for a job no server accepted yet, from the break for an accepted job whose connection broke (each server is tried at least once) |
//! | [`job_timeout`](ClientBuilder::job_timeout) | 1 h | a job from the start of the call to its outcome; [`Job::timeout`] overrides it |
//!
//! Errors ([`Error`]) name the cause, the phase ([`Phase`]: connect, send,
//! ack, result, reply), the server, the function and the handle where they
//! are known. A job no server took ends with [`Error::Unreachable`] naming
//! each server's last failure (refused, unresolvable, protocol error, no
//! JOB_CREATED...), also when its own timeout ended the tries. The first
//! retry of a call is logged once per server at warn level.
//!
//! # Failures
//!
//! A job that ran and failed is a [`JobOutcome`], with its reason in
//! [`JobOutcome::reason`]: the exception text (the client asks for
//! exceptions by default), else the job's last WORK_WARNING, else
//! [`NO_REASON`]. A job whose packet would be over the client's
//! [`max_packet_size`](ClientBuilder::max_packet_size) (64 MiB, as a
//! server's) is refused before it is sent ([`Error::InvalidJob`],
//! `ARGUMENT_TOO_LARGE`), and a server's ERROR such as `ARGUMENT_TOO_LARGE`
//! ends the job rather than being retried. A packet from a server over that
//! size is refused from its header, before any of it is buffered: a
//! protocol error for that connection, naming the server.
//!
//! # Batches
//!
//! [`Client::batch`] pipelines many jobs: per server one connection, up to
//! [`window`](ClientBuilder::window) jobs in flight, submissions written in
//! large writes, JOB_CREATED matched in request order and results matched
//! by handle (jobs that coalesce on one handle each get their own copy).

mod config;
mod engine;
mod error;
mod job;

use std::sync::Arc;
use std::time::Duration;

pub use config::ClientConfig;
pub use error::{Context, Error, Phase, Result};
pub use job::{
    Job, JobEvent, JobHandle, JobOutcome, JobStatus, MAX_UNIQUE_LEN, NO_REASON, derive_unique,
    stable_hash,
};

use crate::config::ServerList;
use crate::conn::{parse_server_list, resolve_servers};
use crate::proto::{Packet, PacketType};
use engine::{Hooks, ServerEntry};

/// The server used when none is configured.
pub use crate::conn::DEFAULT_SERVER;

/// A Gearman client: a cheap-to-clone handle on shared settings and idle
/// connections.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    slots: Vec<ServerEntry>,
    set: ClientConfig,
}

/// Builds a [`Client`] from a [`ClientConfig`]: [`ClientBuilder::config`]
/// takes a whole one (the `client:` section of a config file), the other
/// methods set one setting each.
#[derive(Debug, Clone, Default)]
pub struct ClientBuilder {
    set: ClientConfig,
}

impl ClientBuilder {
    /// Every setting at once, replacing those set before.
    pub fn config(mut self, config: ClientConfig) -> Self {
        self.set = config;
        self
    }

    /// The job servers, each `host[:port]` or a comma-separated list of them
    /// (see [`parse_server_list`]); replaces any list given before. Unset:
    /// `GEARMAN_SERVERS`, else 127.0.0.1:4730.
    pub fn servers<I, S>(mut self, servers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.set.servers =
            ServerList::List(servers.into_iter().map(|s| s.as_ref().to_string()).collect());
        self
    }

    /// Limit of one TCP connect (default 3 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.set.connect_timeout = t;
        self
    }

    /// Limit of the wait for JOB_CREATED after a submission, and of status,
    /// echo and option replies (default 10 s).
    pub fn ack_timeout(mut self, t: Duration) -> Self {
        self.set.ack_timeout = t;
        self
    }

    /// How long a job keeps being retried: from the start of the call for a
    /// job no server accepted yet, from the break for an accepted job whose
    /// connection broke; every server is tried at least once (default 30 s).
    pub fn retry_timeout(mut self, t: Duration) -> Self {
        self.set.retry_timeout = t;
        self
    }

    /// Default overall limit of a job, from the start of the call to its
    /// outcome (default 1 h); [`Job::timeout`] overrides it per job.
    pub fn job_timeout(mut self, t: Duration) -> Self {
        self.set.job_timeout = t;
        self
    }

    /// How long a connection polls for a reply before its read blocks
    /// (default 100 µs; zero never polls); see [`crate::busy_poll`].
    pub fn busy_poll(mut self, window: Duration) -> Self {
        self.set.busy_poll = window;
        self
    }

    /// Largest packet body in bytes, both ways (default 64 MiB, as a
    /// server's `max_packet_size`): a job whose submission would be larger
    /// is refused before it is sent (`ARGUMENT_TOO_LARGE`), and a server's
    /// packet declaring more is a protocol error that closes its connection.
    pub fn max_packet_size(mut self, bytes: u32) -> Self {
        self.set.max_packet_size = bytes;
        self
    }

    /// Most jobs in flight per server connection in a batch (default 1024).
    pub fn window(mut self, n: usize) -> Self {
        self.set.window = n;
        self
    }

    /// Reconnect back-off: the first wait after a failure, and the cap
    /// (defaults 100 ms and 5 s); each wait is jittered down to half.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.set.backoff_min = min;
        self.set.backoff_max = max;
        self
    }

    /// Ask every connection for WORK_EXCEPTION packets (`OPTION_REQ
    /// exceptions`; default true), so that a failed job's outcome carries
    /// the worker's reason; without it servers turn exceptions into
    /// WORK_FAIL.
    pub fn exceptions(mut self, yes: bool) -> Self {
        self.set.exceptions = yes;
        self
    }

    /// Name every connection (SET_CLIENT_ID), as shown by the admin
    /// `workers` command.
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.set.client_id = Some(id.into());
        self
    }

    /// Builds the client. No connection is opened yet.
    ///
    /// # Errors
    /// [`Error::BadServer`] naming an address that is not `host[:port]`
    /// with a port from 1 to 65535; [`Error::NoServers`] for an empty list.
    pub fn build(mut self) -> Result<Client> {
        let bad =
            |e: crate::conn::BadServer| Error::BadServer { server: e.entry, reason: e.reason };
        let servers = match &self.set.servers {
            ServerList::None => resolve_servers(None, &[]).map_err(bad)?,
            list => parse_server_list(list.entries()).map_err(bad)?,
        };
        self.set.window = self.set.window.max(1);
        self.set.backoff_max = self.set.backoff_max.max(self.set.backoff_min);
        if servers.is_empty() {
            return Err(Error::NoServers);
        }
        let mut slots: Vec<ServerEntry> = Vec::new();
        for s in servers {
            if !slots.iter().any(|x| *x.addr == *s) {
                slots.push(ServerEntry::new(&s));
            }
        }
        if self.set.client_id.as_deref().is_some_and(|id| id.contains('\0')) {
            return Err(Error::InvalidJob {
                function: String::new(),
                reason: "the client id contains a NUL byte".into(),
            });
        }
        Ok(Client { inner: Arc::new(Inner { slots, set: self.set }) })
    }
}

impl Client {
    /// A builder with the defaults ([`ClientConfig::default`]).
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A client with these settings; as
    /// `Client::builder().config(config).build()`.
    ///
    /// # Errors
    /// As [`ClientBuilder::build`].
    pub fn with_config(config: ClientConfig) -> Result<Client> {
        Client::builder().config(config).build()
    }

    /// The client's settings.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.set
    }

    /// The servers, with ports, in hash order.
    pub fn servers(&self) -> impl Iterator<Item = &str> {
        self.inner.slots.iter().map(|s| &*s.addr)
    }

    /// Runs a foreground job at normal priority and waits for its outcome.
    ///
    /// # Errors
    /// No server accepted the job, or a limit passed (see the module docs).
    pub fn submit(&self, function: &str, payload: impl Into<Vec<u8>>) -> Result<JobOutcome> {
        self.submit_job(&Job::new(function, payload))
    }

    /// Runs a job: a foreground job's outcome, or `Accepted` for a
    /// background job.
    ///
    /// # Errors
    /// As [`Client::submit`].
    pub fn submit_job(&self, job: &Job) -> Result<JobOutcome> {
        self.submit_job_with(job, |_| {})
    }

    /// Runs a job and calls `on_event` for each event (JOB_CREATED,
    /// WORK_DATA, WORK_WARNING, WORK_STATUS, resubmission) as it arrives.
    ///
    /// # Errors
    /// As [`Client::submit`].
    pub fn submit_job_with(
        &self,
        job: &Job,
        mut on_event: impl FnMut(&JobEvent),
    ) -> Result<JobOutcome> {
        let mut f = |_: usize, e: &JobEvent| on_event(e);
        let hooks = Hooks { on_event: Some(&mut f), on_done: None };
        let mut out =
            engine::run(&self.inner.set, &self.inner.slots, std::slice::from_ref(job), hooks);
        out.pop().unwrap_or(Err(Error::NoServers))
    }

    /// Submits a background job at normal priority and returns its handle
    /// once a server has accepted it.
    ///
    /// # Errors
    /// As [`Client::submit`].
    pub fn submit_background(
        &self,
        function: &str,
        payload: impl Into<Vec<u8>>,
    ) -> Result<JobHandle> {
        self.submit_background_job(&Job::new(function, payload))
    }

    /// Submits `job` as a background job (epoch jobs included) and returns
    /// its handle once a server has accepted it.
    ///
    /// # Errors
    /// As [`Client::submit`].
    pub fn submit_background_job(&self, job: &Job) -> Result<JobHandle> {
        let job = if job.is_background() { job.clone() } else { job.clone().background(true) };
        match self.submit_job(&job)? {
            JobOutcome::Accepted { handle } => Ok(handle),
            other => Ok(other.handle().clone()),
        }
    }

    /// A batch of jobs to pipeline; see [`Batch`].
    pub fn batch<'a>(&'a self, jobs: &'a [Job]) -> Batch<'a> {
        Batch { client: self, jobs, on_event: None, on_done: None }
    }

    /// The status of a job, asked of the server that issued the handle.
    ///
    /// # Errors
    /// The server cannot be reached or does not answer in time.
    pub fn status(&self, handle: &JobHandle) -> Result<JobStatus> {
        let temp;
        let slot = match self.inner.slots.iter().find(|s| *s.addr == *handle.server) {
            Some(s) => s,
            None => {
                temp = ServerEntry::new(&handle.server);
                &temp
            }
        };
        let req = Packet::GetStatus { handle: handle.as_str().as_bytes() };
        let p = engine::exchange(slot, &self.inner.set, &req, PacketType::StatusRes)
            .map_err(|e| e.with_handle(Some(handle.as_str())))?;
        match p.packet() {
            Ok(Packet::StatusRes { known, running, numerator, denominator, .. }) => Ok(JobStatus {
                known: known == b"1",
                running: running == b"1",
                numerator: job::parse_num(numerator),
                denominator: job::parse_num(denominator),
                clients: None,
            }),
            _ => Err(Error::Connection {
                phase: Phase::Reply,
                reason: "malformed STATUS_RES".into(),
                context: Box::new(Context {
                    server: Some(slot.addr.to_string()),
                    function: None,
                    handle: Some(handle.as_str().to_string()),
                }),
            }),
        }
    }

    /// The status of the job with this unique id (GET_STATUS_UNIQUE; the
    /// server matches any function). Asks the server the unique id hashes
    /// to first, then the others, and returns the first that knows the job.
    ///
    /// # Errors
    /// No server could be asked.
    pub fn status_unique(&self, unique: &str) -> Result<JobStatus> {
        let slots = &self.inner.slots;
        let n = slots.len();
        let first = (stable_hash(unique.as_bytes()) % n as u64) as usize;
        let req = Packet::GetStatusUnique { unique: unique.as_bytes() };
        let mut answered = false;
        let mut last = None;
        for k in 0..n {
            let slot = &slots[(first + k) % n];
            match engine::exchange(slot, &self.inner.set, &req, PacketType::StatusResUnique) {
                Ok(p) => {
                    answered = true;
                    if let Ok(Packet::StatusResUnique {
                        known,
                        running,
                        numerator,
                        denominator,
                        clients,
                        ..
                    }) = p.packet()
                    {
                        if known == b"1" {
                            return Ok(JobStatus {
                                known: true,
                                running: running == b"1",
                                numerator: job::parse_num(numerator),
                                denominator: job::parse_num(denominator),
                                clients: Some(job::parse_num(clients)),
                            });
                        }
                    }
                }
                Err(e) => last = Some(e),
            }
        }
        match (answered, last) {
            (false, Some(e)) => Err(e),
            _ => Ok(JobStatus { clients: Some(0), ..JobStatus::default() }),
        }
    }

    /// Sends ECHO_REQ to the first server that answers and returns the echo.
    ///
    /// # Errors
    /// No server answered.
    pub fn echo(&self, data: &[u8]) -> Result<Vec<u8>> {
        let mut last = Error::NoServers;
        for slot in &self.inner.slots {
            match engine::exchange(
                slot,
                &self.inner.set,
                &Packet::EchoReq { data },
                PacketType::EchoRes,
            ) {
                Ok(p) => return Ok(p.body),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// Callback for batch events: job index and event.
type EventHook<'a> = Box<dyn FnMut(usize, &JobEvent) + 'a>;
/// Callback for batch outcomes: job index and outcome.
type DoneHook<'a> = Box<dyn FnMut(usize, &Result<JobOutcome>) + 'a>;

/// Many jobs submitted together: pipelined per server, foreground and
/// background mixed, one outcome per job in the order of the jobs.
///
/// ```no_run
/// use gearframe::client::{Client, Job};
///
/// # fn main() -> gearframe::client::Result<()> {
/// let client = Client::builder().build()?;
/// let jobs: Vec<Job> =
///     (0..100_000).map(|i| Job::new("index", i.to_string()).background(true)).collect();
/// let mut accepted = 0;
/// let outcomes = client.batch(&jobs).on_done(|_, r| accepted += r.is_ok() as usize).run();
/// # Ok(()) }
/// ```
pub struct Batch<'a> {
    client: &'a Client,
    jobs: &'a [Job],
    on_event: Option<EventHook<'a>>,
    on_done: Option<DoneHook<'a>>,
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("jobs", &self.jobs.len()).finish_non_exhaustive()
    }
}

impl<'a> Batch<'a> {
    /// Called on the calling thread for each event, with the job's index.
    pub fn on_event(mut self, f: impl FnMut(usize, &JobEvent) + 'a) -> Self {
        self.on_event = Some(Box::new(f));
        self
    }

    /// Called on the calling thread as each job gets its outcome.
    pub fn on_done(mut self, f: impl FnMut(usize, &Result<JobOutcome>) + 'a) -> Self {
        self.on_done = Some(Box::new(f));
        self
    }

    /// Submits every job and waits for every outcome; `result[i]` belongs
    /// to `jobs[i]`. Each job's outcome or error is its own: one failing job
    /// does not stop the others.
    pub fn run(mut self) -> Vec<Result<JobOutcome>> {
        let hooks = Hooks {
            on_event: self.on_event.as_mut().map(|f| &mut **f as &mut dyn FnMut(usize, &JobEvent)),
            on_done: self
                .on_done
                .as_mut()
                .map(|f| &mut **f as &mut dyn FnMut(usize, &Result<JobOutcome>)),
        };
        engine::run(&self.client.inner.set, &self.client.inner.slots, self.jobs, hooks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_are_checked() {
        let c = Client::builder().servers(["a", "b:7003,c"]).build().unwrap();
        assert_eq!(c.servers().collect::<Vec<_>>(), ["a:4730", "b:7003", "c:4730"]);
        let e = Client::builder().servers(["a:notaport"]).build().unwrap_err();
        assert!(matches!(e, Error::BadServer { .. }), "{e}");
        assert!(e.to_string().contains("a:notaport"), "{e}");
        let e = Client::builder().servers(["a:0"]).build().unwrap_err();
        assert!(matches!(e, Error::BadServer { .. }), "{e}");
        assert_eq!(Client::builder().servers([""]).build().unwrap_err(), Error::NoServers);
        let c = Client::builder().servers(["a"]).servers(["b"]).build().unwrap();
        assert_eq!(c.servers().collect::<Vec<_>>(), ["b:4730"], "a later list replaces");
        assert_eq!(
            Client::builder().servers(Vec::<String>::new()).build().unwrap_err(),
            Error::NoServers
        );
        let c = Client::builder().servers(["a:1", "a:1"]).build().unwrap();
        assert_eq!(c.servers().count(), 1);
    }

    #[test]
    fn client_is_shareable() {
        fn bounds<T: Send + Sync + Clone + 'static>() {}
        bounds::<Client>();
    }
}
