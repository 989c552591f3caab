//! The server's whole state: functions with their three priority queues,
//! jobs, connections with their registrations and attachments, and timers.
//!
//! One mutex guards it (see `super::Core`); every packet is applied under
//! that lock and its replies are appended to the outboxes of the connections
//! concerned. No socket I/O happens here.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::ServerConfig;
use super::outbox::Outbox;
use super::store::{Durability, Notify, Outcome, StoreLink, StoredJob};
use crate::proto::{Magic, PacketType, Priority, encode_raw};

/// Connection id, unique for the life of the server.
pub(crate) type ConnId = u64;
/// Job id: the number at the end of the job's handle.
pub(crate) type JobId = u64;
/// Index of a function in `State::functions`.
pub(crate) type FuncId = usize;

/// A fast hasher for integer keys (ids that the server allocates itself).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Collections smaller than this many entries keep their capacity.
const SHRINK_MIN: usize = 1024;

/// How often a graceful stop logs what it still waits for.
pub(crate) const GRACEFUL_REPORT: Duration = Duration::from_secs(5);

/// Whether a collection of `len` entries in room for `cap` should give
/// memory back: only when it is both large and mostly empty, and then to
/// twice its length, so a busy server that fills and empties the same room
/// does not reallocate on every job (the hysteresis of a factor of two).
fn should_shrink(len: usize, cap: usize) -> bool {
    cap > SHRINK_MIN && len < cap / 4
}

fn shrink_map<K: Eq + std::hash::Hash, V, S: std::hash::BuildHasher>(m: &mut HashMap<K, V, S>) {
    if should_shrink(m.len(), m.capacity()) {
        m.shrink_to(m.len() * 2);
    }
}

fn shrink_deque<T>(q: &mut VecDeque<T>) {
    if should_shrink(q.len(), q.capacity()) {
        q.shrink_to(q.len() * 2);
    }
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobState {
    /// In its function's priority queue.
    Queued,
    /// An epoch job waiting for its time; not in any queue yet.
    Scheduled,
    /// A new background job whose row is being written to the persistent
    /// queue; queued (or scheduled) once that commit returned.
    Storing,
    /// Assigned to a worker connection; `seq` identifies the assignment.
    Running { conn: ConnId, seq: u64 },
}

/// Who a job runs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// Only its foreground listeners (`clients`).
    Listeners,
    /// A background submission: it runs even with no listener. `queued`:
    /// counted as stored in the (background) queue, as `show jobs`
    /// reports; false when the background submission joined a job a
    /// foreground one had created.
    Background { queued: bool },
    /// Cancelled, or abandoned by its last foreground client: a queued job
    /// is never handed out, a running one finishes for nobody.
    Ignored,
}

impl Owner {
    pub(crate) fn is_background(self) -> bool {
        matches!(self, Owner::Background { .. })
    }

    /// The background owner is gone (its row was not written); listeners
    /// keep the job.
    fn disown(&mut self) {
        if self.is_background() {
            *self = Owner::Listeners;
        }
    }
}

#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) handle: Box<[u8]>,
    pub(crate) func: FuncId,
    pub(crate) unique: Box<[u8]>,
    pub(crate) data: Box<[u8]>,
    pub(crate) reducer: Option<Box<[u8]>>,
    pub(crate) priority: Priority,
    pub(crate) state: JobState,
    /// Foreground listeners; a connection attached twice appears twice.
    pub(crate) clients: Vec<ConnId>,
    pub(crate) owner: Owner,
    pub(crate) retries: u32,
    pub(crate) numerator: u32,
    pub(crate) denominator: u32,
    /// Unix time before which an epoch job does not run (0: now).
    pub(crate) when: u64,
    /// Its row in the persistent queue.
    pub(crate) row: Row,
}

/// A job's row in the persistent queue (`Sync` mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Row {
    /// No row: a foreground job, a memory-only server, or a write that failed.
    None,
    /// Sent to the writer, not committed yet: submissions wait for it.
    Pending(u64),
    /// Committed.
    Stored(u64),
}

impl Row {
    pub(crate) fn key(self) -> Option<u64> {
        match self {
            Row::None => None,
            Row::Pending(k) | Row::Stored(k) => Some(k),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Function {
    pub(crate) name: Box<[u8]>,
    pub(crate) queues: [VecDeque<JobId>; 3],
    /// Epoch jobs not yet due.
    pub(crate) scheduled: usize,
    /// Queued + scheduled + running, including ignored jobs not yet reaped.
    pub(crate) job_total: u32,
    pub(crate) job_running: u32,
    /// Registrations (connections, duplicates kept), walked circularly for NOOPs.
    pub(crate) workers: Vec<ConnId>,
    pub(crate) wake_cursor: usize,
    pub(crate) max_queue: [u32; 3],
    pub(crate) uniques: HashMap<Box<[u8]>, JobId>,
    /// Jobs submitted with unique `-`, keyed by their data.
    pub(crate) by_data: HashMap<Box<[u8]>, JobId>,
}

impl Function {
    fn new(name: &[u8], max_queue: [u32; 3]) -> Function {
        Function {
            name: name.into(),
            queues: Default::default(),
            scheduled: 0,
            job_total: 0,
            job_running: 0,
            workers: Vec::new(),
            wake_cursor: 0,
            max_queue,
            uniques: HashMap::new(),
            by_data: HashMap::new(),
        }
    }
}

/// A SUBMIT_* request, whichever packet carried it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Submission<'a> {
    pub(crate) function: &'a [u8],
    pub(crate) unique: &'a [u8],
    pub(crate) data: &'a [u8],
    pub(crate) priority: Priority,
    pub(crate) background: bool,
    /// Unix time before which it does not run (SUBMIT_JOB_EPOCH).
    pub(crate) epoch: Option<u64>,
    /// The reducer of a SUBMIT_REDUCE_JOB.
    pub(crate) reducer: Option<&'a [u8]>,
}

/// What `State::insert_job` needs to create a job.
#[derive(Debug)]
struct NewJob<'a> {
    func: FuncId,
    unique: &'a [u8],
    data: &'a [u8],
    reducer: Option<&'a [u8]>,
    priority: Priority,
    background: bool,
    /// Unix time it becomes runnable, when in the future.
    due: Option<u64>,
    client: Option<ConnId>,
    row: Row,
}

/// Where a worker connection is between PRE_SLEEP and its next grab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sleep {
    /// Not asleep: it grabs when it wants work.
    Awake,
    /// Sent PRE_SLEEP and nothing was waiting: a new job wakes it.
    Asleep,
    /// Sent NOOP: it is not woken again until it grabs or sleeps once
    /// more.
    Woken,
}

/// One registration of a connection: a function and its optional timeout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ability {
    pub(crate) func: FuncId,
    pub(crate) timeout: Option<Duration>,
}

#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) fd: i64,
    pub(crate) ip: String,
    pub(crate) peer: Option<std::net::IpAddr>,
    pub(crate) loopback: bool,
    pub(crate) client_id: Box<[u8]>,
    pub(crate) exceptions: bool,
    /// The `gearframe-push` option: a sleeping worker is assigned a job
    /// directly instead of being sent NOOP.
    pub(crate) push: bool,
    pub(crate) sleep: Sleep,
    /// Newest registration first.
    pub(crate) abilities: Vec<Ability>,
    /// Jobs assigned to this connection.
    pub(crate) running: Vec<JobId>,
    /// Foreground jobs this connection listens to, with multiplicity.
    pub(crate) attached: IdMap<JobId, u32>,
    pub(crate) out: Arc<Outbox>,
}

/// What a timer does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TimerKind {
    /// Requeue the job if this assignment is still current.
    CanDoTimeout { job: JobId, seq: u64 },
    /// Move a scheduled epoch job into its queue.
    EpochDue { job: JobId },
}

/// What the caller must do after a request was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Continue,
    /// Flush the outbox and close the connection.
    Close,
}

/// Where the server is in its life; moved on by [`State::request_stop`]
/// and by the last job of a graceful stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Lifecycle {
    #[default]
    Running,
    /// A graceful stop: no new jobs are taken; the server stops once it
    /// holds none.
    Draining,
    /// A stop was asked for (`graceful`: by a graceful stop); the next
    /// release acts on it, after sending the replies applied with it.
    Stopping { graceful: bool },
    /// A release took the stop and closes the server.
    Stopped { graceful: bool },
}

impl Lifecycle {
    /// A graceful stop was asked for: new jobs are refused.
    pub(crate) fn graceful(self) -> bool {
        matches!(
            self,
            Lifecycle::Draining
                | Lifecycle::Stopping { graceful: true }
                | Lifecycle::Stopped { graceful: true }
        )
    }
}

/// The whole server state.
#[derive(Debug)]
pub(crate) struct State {
    /// The server's settings, shared with its threads.
    pub(crate) config: Arc<ServerConfig>,
    /// `config.job_handle_prefix`, or the default one made at bind.
    pub(crate) handle_prefix: Vec<u8>,
    pub(crate) functions: Vec<Function>,
    pub(crate) func_index: HashMap<Box<[u8]>, FuncId>,
    pub(crate) jobs: IdMap<JobId, Job>,
    pub(crate) next_job: JobId,
    pub(crate) next_seq: u64,
    pub(crate) conns: IdMap<ConnId, Conn>,
    pub(crate) timers: BinaryHeap<std::cmp::Reverse<(Instant, TimerKind)>>,
    /// Set when a timer earlier than every other was added.
    pub(crate) timers_changed: bool,
    pub(crate) lifecycle: Lifecycle,
    /// When a graceful stop next logs what it waits for.
    pub(crate) graceful_report: Option<Instant>,
    /// Reply of `version`.
    pub(crate) version: String,
    /// Reply of `verbose`.
    pub(crate) verbose: &'static str,
    /// Outboxes appended to since the last flush; the thread that applied
    /// the commands sends them once it has released the lock.
    pub(crate) dirty: Vec<Arc<Outbox>>,
    /// Payload bytes of every job held.
    pub(crate) payload_bytes: usize,
    /// The persistent queue, when one is configured.
    pub(crate) store: Option<StoreLink>,
    /// Held JOB_CREATED replies by the key of the row they wait for.
    pub(crate) acks: IdMap<u64, Vec<Notify>>,
}

pub(crate) use crate::proto::admin::atoi;

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl State {
    pub(crate) fn new(config: Arc<ServerConfig>, handle_prefix: Vec<u8>) -> State {
        State {
            config,
            handle_prefix,
            functions: Vec::new(),
            func_index: HashMap::new(),
            jobs: IdMap::default(),
            next_job: 1,
            next_seq: 1,
            conns: IdMap::default(),
            timers: BinaryHeap::new(),
            timers_changed: false,
            lifecycle: Lifecycle::default(),
            graceful_report: None,
            version: format!("gearframe-{}", env!("CARGO_PKG_VERSION")),
            verbose: "ERROR",
            dirty: Vec::new(),
            payload_bytes: 0,
            store: None,
            acks: IdMap::default(),
        }
    }

    // ----- connections -------------------------------------------------

    pub(crate) fn add_conn(
        &mut self,
        id: ConnId,
        fd: i64,
        peer: Option<std::net::IpAddr>,
        out: Arc<Outbox>,
    ) {
        let exceptions = self.config.exceptions;
        let ip = peer.map_or_else(|| "-".to_string(), |p| p.to_string());
        let loopback = peer.is_some_and(|p| match p {
            std::net::IpAddr::V6(v6) => {
                v6.to_ipv4_mapped().map_or(v6.is_loopback(), |v4| v4.is_loopback())
            }
            v4 => v4.is_loopback(),
        });
        self.conns.insert(
            id,
            Conn {
                fd,
                ip,
                peer,
                loopback,
                client_id: b"-"[..].into(),
                exceptions,
                push: false,
                sleep: Sleep::Awake,
                abilities: Vec::new(),
                running: Vec::new(),
                attached: IdMap::default(),
                out,
            },
        );
    }

    /// Appends a packet to a connection's outbox.
    pub(crate) fn send(&mut self, conn: ConnId, kind: PacketType, args: &[&[u8]]) {
        if let Some(c) = self.conns.get(&conn)
            && c.out.push_with(|b| encode_raw(Magic::Res, kind, args, b))
        {
            self.dirty.push(Arc::clone(&c.out));
        }
    }

    /// Appends raw bytes (admin text) to a connection's outbox.
    pub(crate) fn send_raw(&mut self, conn: ConnId, bytes: &[u8]) {
        if let Some(c) = self.conns.get(&conn)
            && c.out.push_with(|b| b.extend_from_slice(bytes))
        {
            self.dirty.push(Arc::clone(&c.out));
        }
    }

    pub(crate) fn send_error(&mut self, conn: ConnId, code: &str, text: &str) {
        self.send(conn, PacketType::Error, &[code.as_bytes(), text.as_bytes()]);
    }

    /// Removes a connection: its registrations go, its running jobs are
    /// requeued, and foreground jobs it alone listened to are abandoned.
    pub(crate) fn remove_conn(&mut self, id: ConnId) {
        self.drop_abilities(id, None);
        let Some(conn) = self.conns.remove(&id) else { return };
        shrink_map(&mut self.conns);
        for job_id in conn.running {
            self.requeue(job_id, "worker disconnected");
        }
        for (job_id, _) in conn.attached {
            let Some(job) = self.jobs.get_mut(&job_id) else { continue };
            job.clients.retain(|&c| c != id);
            if job.clients.is_empty() && !job.owner.is_background() {
                // Nobody waits for the result any more: a queued job is never
                // handed out, a running one finishes without a listener.
                job.owner = Owner::Ignored;
                log::debug!("abandoned job={}", String::from_utf8_lossy(&job.handle));
            }
        }
    }

    // ----- functions ---------------------------------------------------

    pub(crate) fn function_id(&mut self, name: &[u8]) -> FuncId {
        if let Some(&f) = self.func_index.get(name) {
            return f;
        }
        // Reuse a dropped slot if there is one.
        let id = self.functions.len();
        let limits = [self.config.max_queue; 3];
        self.functions.push(Function::new(name, limits));
        self.func_index.insert(name.into(), id);
        id
    }

    // ----- submission --------------------------------------------------

    /// Applies a SUBMIT_* packet and replies JOB_CREATED or ERROR.
    pub(crate) fn submit(&mut self, conn: ConnId, s: Submission<'_>) {
        let Submission { function, unique, data, priority, background, epoch, reducer } = s;
        if self.lifecycle.graceful() {
            self.send_error(
                conn,
                "SERVER_STOPPING",
                "the server is stopping gracefully and takes no new jobs; submit to another server",
            );
            return;
        }
        if unique.len() > 64 {
            self.send_error(conn, "ARGUMENT_TOO_LARGE", "Unique value too large");
            return;
        }
        let fid = self.function_id(function);
        let existing = {
            let f = &self.functions[fid];
            if unique.is_empty() {
                None
            } else if unique == b"-" {
                if data.is_empty() { None } else { f.by_data.get(data).copied() }
            } else {
                f.uniques.get(unique).copied()
            }
        };
        if let Some(job_id) = existing {
            self.join_job(conn, job_id, background);
            return;
        }
        if let Err(why) = self.check_limits(fid, priority, data.len()) {
            self.send_error(conn, "QUEUE_ERROR", why);
            return;
        }
        let due = epoch.filter(|&e| e > unix_now());
        let job_id = self.insert_job(NewJob {
            func: fid,
            unique,
            data,
            reducer,
            priority,
            background,
            due,
            client: (!background).then_some(conn),
            row: Row::None,
        });
        self.ack(conn, job_id, background);
        let handle = &self.jobs[&job_id].handle;
        log::debug!(
            "job created handle={} func={} bg={background} prio={}",
            String::from_utf8_lossy(handle),
            String::from_utf8_lossy(function),
            priority.name()
        );
    }

    /// A submission that coalesced into an existing job.
    fn join_job(&mut self, conn: ConnId, job_id: JobId, background: bool) {
        let job = self.jobs.get_mut(&job_id).expect("unique maps point at live jobs");
        // Only jobs abandoned by their last client are ignored and still
        // found by unique (a cancelled job leaves the maps): a new listener
        // or owner revives it, so it runs and reports to them.
        job.owner = match job.owner {
            Owner::Background { queued } => Owner::Background { queued },
            _ if background => Owner::Background { queued: false },
            _ => Owner::Listeners,
        };
        if !background {
            job.clients.push(conn);
            if let Some(c) = self.conns.get_mut(&conn) {
                *c.attached.entry(job_id).or_insert(0) += 1;
            }
        }
        self.ack(conn, job_id, background);
    }

    /// The limits a new job must fit in; the error text when it does not.
    fn check_limits(
        &self,
        fid: FuncId,
        priority: Priority,
        size: usize,
    ) -> Result<(), &'static str> {
        let f = &self.functions[fid];
        let limit = f.max_queue[priority.index()];
        if limit > 0 && f.job_total >= limit {
            return Err("Job queue is full");
        }
        let max_jobs = self.config.max_jobs;
        if max_jobs > 0 && self.jobs.len() >= max_jobs {
            return Err("Server job limit reached");
        }
        let max_bytes = self.config.max_payload_bytes;
        if max_bytes > 0 && self.payload_bytes + size > max_bytes {
            return Err("Server payload memory limit reached");
        }
        Ok(())
    }

    /// Whether background jobs are written before they are acknowledged.
    fn sync_store(&self) -> bool {
        self.store.as_ref().is_some_and(|s| s.durability == Durability::Sync)
    }

    /// Sends JOB_CREATED for a submission. A background submission on a
    /// `Sync` persistent queue is acknowledged only once the job's row is
    /// committed: the row is written unless it is already, and the reply
    /// (with every later one on the connection) is held until then.
    fn ack(&mut self, conn: ConnId, job_id: JobId, background: bool) {
        let sync = background && self.sync_store();
        let job = self.jobs.get_mut(&job_id).expect("acknowledging a live job");
        let key = match job.row {
            Row::Stored(_) => None,
            _ if !sync => None,
            Row::Pending(key) => Some(key),
            Row::None => {
                let store = self.store.as_mut().expect("sync_store checked it");
                let key = store.next_key();
                job.row = Row::Pending(key);
                let stored = StoredJob {
                    key,
                    function: self.functions[job.func].name.to_vec(),
                    unique: job.unique.to_vec(),
                    priority: job.priority.index() as u8,
                    data: job.data.to_vec(),
                    when: job.when,
                };
                store.add(job_id, stored);
                Some(key)
            }
        };
        let handle = &self.jobs[&job_id].handle;
        let (Some(key), Some(c), Some(store)) = (key, self.conns.get(&conn), self.store.as_mut())
        else {
            let handle = handle.clone();
            self.send(conn, PacketType::JobCreated, &[&handle]);
            return;
        };
        let seq = store.next_seq();
        if c.out.push_held(seq, |b| encode_raw(Magic::Res, PacketType::JobCreated, &[handle], b)) {
            self.dirty.push(Arc::clone(&c.out));
        }
        self.acks.entry(key).or_default().push((Arc::clone(&c.out), seq));
    }

    /// Applies what the persistent queue's writer reports about one
    /// transaction: held JOB_CREATED replies go out and their jobs may run;
    /// or, when it failed, the submitters get QUEUE_ERROR instead and the
    /// jobs lose their background owner.
    pub(crate) fn stored(&mut self, outcome: Outcome) {
        if let Some(store) = self.store.as_mut() {
            store.health = outcome.health;
        }
        let error = outcome.error.map(|text| {
            let mut b = Vec::new();
            encode_raw(Magic::Res, PacketType::Error, &[b"QUEUE_ERROR", text.as_bytes()], &mut b);
            b
        });
        for (job_id, key) in outcome.added {
            for (out, seq) in self.acks.remove(&key).unwrap_or_default() {
                out.resolve(seq, error.as_deref());
                self.dirty.push(out);
            }
            let Some(job) = self.jobs.get_mut(&job_id) else { continue };
            if job.row != Row::Pending(key) {
                continue;
            }
            let storing = job.state == JobState::Storing;
            if error.is_none() {
                job.row = Row::Stored(key);
            } else {
                job.row = Row::None;
                job.owner.disown();
                if job.clients.is_empty() {
                    log::debug!(
                        "job handle={} not accepted: its row was not written",
                        String::from_utf8_lossy(&job.handle)
                    );
                    self.free_job(job_id);
                    continue;
                }
            }
            if storing {
                self.place(job_id);
            }
        }
    }

    /// Queues again a job read from the persistent queue.
    pub(crate) fn restore(&mut self, stored: StoredJob) {
        let fid = self.function_id(&stored.function);
        let priority = match stored.priority {
            0 => Priority::High,
            2 => Priority::Low,
            _ => Priority::Normal,
        };
        let due = Some(stored.when).filter(|&e| e > unix_now());
        self.insert_job(NewJob {
            func: fid,
            unique: &stored.unique,
            data: &stored.data,
            reducer: None,
            priority,
            background: true,
            due,
            client: None,
            row: Row::Stored(stored.key),
        });
    }

    /// The background jobs to write when the server stops (`OnShutdown` mode).
    pub(crate) fn jobs_to_store(&mut self) -> Vec<StoredJob> {
        let mut ids: Vec<JobId> =
            self.jobs.iter().filter(|(_, j)| j.owner.is_background()).map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.iter()
            .enumerate()
            .map(|(i, id)| {
                let job = &self.jobs[id];
                StoredJob {
                    key: i as u64 + 1,
                    function: self.functions[job.func].name.to_vec(),
                    unique: job.unique.to_vec(),
                    priority: job.priority.index() as u8,
                    data: job.data.to_vec(),
                    when: job.when,
                }
            })
            .collect()
    }

    /// Creates a job and queues (or schedules) it.
    fn insert_job(&mut self, new: NewJob<'_>) -> JobId {
        let job_id = self.next_job;
        self.next_job += 1;
        let mut handle = Vec::with_capacity(self.handle_prefix.len() + 12);
        handle.extend_from_slice(&self.handle_prefix);
        handle.push(b':');
        handle.extend_from_slice(job_id.to_string().as_bytes());
        let fid = new.func;
        // A new background job waits for its row before any worker sees it.
        let storing = new.background && new.row == Row::None && self.sync_store();
        let job = Job {
            handle: handle.into(),
            func: fid,
            unique: new.unique.into(),
            data: new.data.into(),
            reducer: new.reducer.map(Into::into),
            priority: new.priority,
            state: JobState::Storing,
            clients: new.client.into_iter().collect(),
            owner: if new.background {
                Owner::Background { queued: true }
            } else {
                Owner::Listeners
            },
            retries: 0,
            numerator: 0,
            denominator: 0,
            when: new.due.unwrap_or(0),
            row: new.row,
        };
        if let Some(conn) = new.client
            && let Some(c) = self.conns.get_mut(&conn)
        {
            *c.attached.entry(job_id).or_insert(0) += 1;
        }
        let f = &mut self.functions[fid];
        if new.unique == b"-" {
            if !new.data.is_empty() {
                f.by_data.insert(new.data.into(), job_id);
            }
        } else if !new.unique.is_empty() {
            f.uniques.insert(new.unique.into(), job_id);
        }
        f.job_total += 1;
        self.payload_bytes += new.data.len();
        self.jobs.insert(job_id, job);
        if !storing {
            self.place(job_id);
        }
        job_id
    }

    /// Puts a job that is in no queue yet into its queue, or schedules it
    /// when it is an epoch job not yet due.
    fn place(&mut self, job_id: JobId) {
        let Some(job) = self.jobs.get_mut(&job_id) else { return };
        let (fid, prio) = (job.func, job.priority.index());
        // The clock is read only for epoch jobs.
        let now = if job.when > 0 { unix_now() } else { 0 };
        if job.when > now {
            job.state = JobState::Scheduled;
            self.functions[fid].scheduled += 1;
            let wait = Duration::from_secs(job.when - now);
            self.add_timer(Instant::now() + wait, TimerKind::EpochDue { job: job_id });
        } else {
            job.state = JobState::Queued;
            self.functions[fid].queues[prio].push_back(job_id);
            self.wake(fid);
        }
    }

    /// Sends NOOP to sleeping workers of a function that has work; a
    /// sleeping worker with the `gearframe-push` option is assigned a job
    /// at once instead.
    fn wake(&mut self, fid: FuncId) {
        let n = self.functions[fid].workers.len();
        if n == 0 {
            return;
        }
        let limit = self.config.worker_wakeup as usize;
        let mut sent = 0;
        let start = self.functions[fid].wake_cursor % n;
        let mut i = 0;
        while i < n {
            let conn_id = self.functions[fid].workers[(start + i) % n];
            i += 1;
            let Some(c) = self.conns.get_mut(&conn_id) else { continue };
            if c.sleep != Sleep::Asleep {
                continue;
            }
            if c.push {
                if !self.offer(conn_id) {
                    // Nothing left that it can do: it sleeps on.
                    continue;
                }
                sent += 1;
                if self.functions[fid].queues.iter().all(|q| q.is_empty()) {
                    break;
                }
            } else {
                c.sleep = Sleep::Woken;
                if c.out.push_with(|b| encode_raw(Magic::Res, PacketType::Noop, &[], b)) {
                    self.dirty.push(Arc::clone(&c.out));
                }
                sent += 1;
            }
            if limit > 0 && sent >= limit {
                break;
            }
        }
        self.functions[fid].wake_cursor = (start + i) % n;
    }

    // ----- workers -----------------------------------------------------

    pub(crate) fn can_do(&mut self, conn: ConnId, function: &[u8], timeout: Option<Duration>) {
        let fid = self.function_id(function);
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.abilities.insert(0, Ability { func: fid, timeout });
        self.functions[fid].workers.push(conn);
        self.offer(conn);
    }

    /// Assigns a job to a sleeping connection with the push option, when
    /// one is waiting that it can do; true when it did. Called when a job
    /// arrives, when the worker goes to sleep, registers a function or turns
    /// the option on while asleep.
    pub(crate) fn offer(&mut self, conn: ConnId) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else { return false };
        if !c.push || c.sleep != Sleep::Asleep {
            return false;
        }
        c.sleep = Sleep::Awake;
        if self.assign(conn, PacketType::GrabJobUniq) {
            return true;
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.sleep = Sleep::Asleep;
        }
        false
    }

    /// Drops a connection's registrations (all, or those of one function),
    /// requeuing the jobs it runs for them.
    pub(crate) fn drop_abilities(&mut self, conn: ConnId, only: Option<FuncId>) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let mut dropped: Vec<FuncId> = Vec::new();
        c.abilities.retain(|a| {
            let drop = only.is_none_or(|f| f == a.func);
            if drop && !dropped.contains(&a.func) {
                dropped.push(a.func);
            }
            !drop
        });
        let running: Vec<JobId> = c
            .running
            .iter()
            .copied()
            .filter(|j| self.jobs.get(j).is_some_and(|job| only.is_none_or(|f| f == job.func)))
            .collect();
        for fid in dropped {
            self.functions[fid].workers.retain(|&w| w != conn);
        }
        for job_id in running {
            self.requeue(job_id, "worker dropped the function");
        }
    }

    /// Takes the job off its worker and queues it again at the tail, or drops
    /// it once it was started `job_retries` times.
    pub(crate) fn requeue(&mut self, job_id: JobId, why: &str) {
        let Some(job) = self.jobs.get_mut(&job_id) else { return };
        let JobState::Running { conn, .. } = job.state else { return };
        job.retries = job.retries.saturating_add(1);
        let fid = job.func;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.running.retain(|&j| j != job_id);
        }
        let limit = self.config.job_retries;
        if limit > 0 && job.retries >= limit {
            log::warn!(
                "dropped job due to max retry count handle={} retries={}",
                String::from_utf8_lossy(&job.handle),
                job.retries
            );
            let handle = job.handle.clone();
            let clients = job.clients.clone();
            for c in clients {
                self.send(c, PacketType::WorkFail, &[&handle]);
            }
            self.free_job(job_id);
            return;
        }
        log::debug!("requeue handle={} why={why}", String::from_utf8_lossy(&job.handle));
        job.state = JobState::Queued;
        job.numerator = 0;
        job.denominator = 0;
        let prio = job.priority.index();
        let f = &mut self.functions[fid];
        f.job_running = f.job_running.saturating_sub(1);
        f.queues[prio].push_back(job_id);
        self.wake(fid);
    }

    /// Removes a finished (or dropped) job everywhere.
    pub(crate) fn free_job(&mut self, job_id: JobId) {
        let Some(job) = self.jobs.remove(&job_id) else { return };
        self.payload_bytes = self.payload_bytes.saturating_sub(job.data.len());
        if let (Some(key), Some(store)) = (job.row.key(), &self.store) {
            store.done(key);
        }
        shrink_map(&mut self.jobs);
        let f = &mut self.functions[job.func];
        f.job_total = f.job_total.saturating_sub(1);
        for q in &mut f.queues {
            shrink_deque(q);
        }
        match job.state {
            JobState::Running { conn, .. } => {
                f.job_running = f.job_running.saturating_sub(1);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.running.retain(|&j| j != job_id);
                }
            }
            JobState::Scheduled => f.scheduled = f.scheduled.saturating_sub(1),
            JobState::Queued | JobState::Storing => {}
        }
        if &*job.unique == b"-" {
            if f.by_data.get(&job.data) == Some(&job_id) {
                f.by_data.remove(&job.data);
            }
        } else if !job.unique.is_empty() && f.uniques.get(&job.unique) == Some(&job_id) {
            f.uniques.remove(&job.unique);
        }
        shrink_map(&mut f.by_data);
        shrink_map(&mut f.uniques);
        for c in &job.clients {
            if let Some(conn) = self.conns.get_mut(c) {
                conn.attached.remove(&job_id);
            }
        }
        self.stop_if_drained();
    }

    /// Asks the server to stop: at once, or (`graceful`) once it holds no
    /// job, taking no new ones meanwhile (queued jobs that no worker serves
    /// keep it waiting, as in gearmand). The release that takes the request
    /// acts on it.
    pub(crate) fn request_stop(&mut self, graceful: bool) {
        use Lifecycle::*;
        self.lifecycle = match self.lifecycle {
            Running | Draining if graceful => Draining,
            Running => Stopping { graceful: false },
            Draining => Stopping { graceful: true },
            Stopping { graceful: g } => Stopping { graceful: g || graceful },
            Stopped { graceful: g } => Stopped { graceful: g || graceful },
        };
        if self.lifecycle == Draining {
            self.stop_if_drained();
            self.graceful_report = None;
            self.report_graceful(Instant::now());
        }
    }

    /// A graceful stop stops once no job is left.
    fn stop_if_drained(&mut self) {
        if self.lifecycle == Lifecycle::Draining && self.jobs.is_empty() {
            self.lifecycle = Lifecycle::Stopping { graceful: true };
        }
    }

    /// Takes a stop that was asked for: true once, for the release that
    /// acts on it.
    pub(crate) fn take_stop(&mut self) -> bool {
        match self.lifecycle {
            Lifecycle::Stopping { graceful } => {
                self.lifecycle = Lifecycle::Stopped { graceful };
                true
            }
            _ => false,
        }
    }

    /// What a graceful stop waits for, logged at most every
    /// [`GRACEFUL_REPORT`]: `N jobs: f (1 running, 2 queued), ...`.
    pub(crate) fn report_graceful(&mut self, now: Instant) {
        if self.lifecycle != Lifecycle::Draining || self.jobs.is_empty() {
            return;
        }
        if self.graceful_report.is_some_and(|at| now < at) {
            return;
        }
        self.graceful_report = Some(now + GRACEFUL_REPORT);
        let per_function: Vec<String> = self
            .functions
            .iter()
            .filter(|f| f.job_total > 0)
            .map(|f| {
                format!(
                    "{} ({} running, {} queued)",
                    String::from_utf8_lossy(&f.name),
                    f.job_running,
                    f.job_total.saturating_sub(f.job_running)
                )
            })
            .collect();
        log::warn!(
            "graceful stop: waiting for {} jobs: {}; new jobs are refused, workers and admin \
             may connect (`shutdown` or `clear function` to drop the rest)",
            self.jobs.len(),
            per_function.join(", ")
        );
    }

    /// Finds the next runnable job for a worker, reaping ignored jobs on the
    /// way. With `take`, the job is removed from its queue; the index of the
    /// registration it was found under is returned with it.
    fn find_job(&mut self, conn: ConnId, take: bool) -> Option<(JobId, usize)> {
        let abilities = &self.conns.get(&conn)?.abilities;
        let mut reaped: Vec<JobId> = Vec::new();
        let mut found = None;
        'outer: for (idx, a) in abilities.iter().enumerate() {
            let f = &mut self.functions[a.func];
            for q in f.queues.iter_mut() {
                while let Some(&job_id) = q.front() {
                    match self.jobs.get(&job_id) {
                        Some(job) if job.owner != Owner::Ignored => {
                            if take {
                                q.pop_front();
                            }
                            found = Some((job_id, idx));
                            break 'outer;
                        }
                        _ => {
                            q.pop_front();
                            reaped.push(job_id);
                        }
                    }
                }
            }
        }
        for job_id in reaped {
            self.free_job(job_id);
        }
        found
    }

    /// GRAB_JOB, GRAB_JOB_UNIQ, GRAB_JOB_ALL.
    pub(crate) fn grab(&mut self, conn: ConnId, kind: PacketType) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.sleep = Sleep::Awake;
        }
        if !self.assign(conn, kind) {
            self.send(conn, PacketType::NoJob, &[]);
        }
    }

    /// Assigns the next job the worker can do, answering as to a grab of
    /// `kind`; false when there is none.
    fn assign(&mut self, conn: ConnId, kind: PacketType) -> bool {
        let Some((job_id, idx)) = self.find_job(conn, true) else {
            return false;
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let round_robin = self.config.round_robin;
        let c = self.conns.get_mut(&conn).expect("grabbing connection exists");
        let ability = c.abilities[idx];
        if round_robin {
            let a = c.abilities.remove(idx);
            c.abilities.push(a);
        }
        c.running.push(job_id);
        let job = self.jobs.get_mut(&job_id).expect("found job exists");
        job.state = JobState::Running { conn, seq };
        self.functions[job.func].job_running += 1;
        let job = &self.jobs[&job_id];
        let fname = &self.functions[job.func].name;
        log::debug!("assign handle={} conn={conn}", String::from_utf8_lossy(&job.handle));
        let first = c.out.push_with(|b| match (kind, &job.reducer) {
            (PacketType::GrabJob, _) => {
                encode_raw(Magic::Res, PacketType::JobAssign, &[&job.handle, fname, &job.data], b)
            }
            (PacketType::GrabJobAll, Some(reducer)) => encode_raw(
                Magic::Res,
                PacketType::JobAssignAll,
                &[&job.handle, fname, &job.unique, reducer, &job.data],
                b,
            ),
            _ => encode_raw(
                Magic::Res,
                PacketType::JobAssignUniq,
                &[&job.handle, fname, &job.unique, &job.data],
                b,
            ),
        });
        if first {
            self.dirty.push(Arc::clone(&c.out));
        }
        if let Some(t) = ability.timeout {
            self.add_timer(Instant::now() + t, TimerKind::CanDoTimeout { job: job_id, seq });
        }
        true
    }

    /// PRE_SLEEP: NOOP at once when work is waiting (with `gearframe-push`,
    /// the job itself), else sleep until woken.
    pub(crate) fn pre_sleep(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.sleep = Sleep::Asleep;
        if c.push {
            self.offer(conn);
        } else if self.find_job(conn, false).is_some() {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.sleep = Sleep::Woken;
            }
            self.send(conn, PacketType::Noop, &[]);
        }
    }

    // ----- results -----------------------------------------------------

    /// Looks a handle up and checks that the job is assigned to `conn`.
    fn owned_job(&self, conn: ConnId, handle: &[u8]) -> Option<JobId> {
        let id = self.job_id(handle)?;
        match self.jobs.get(&id)?.state {
            JobState::Running { conn: c, .. } if c == conn => Some(id),
            _ => None,
        }
    }

    /// The job id a handle names, if it is one of ours and the job exists.
    pub(crate) fn job_id(&self, handle: &[u8]) -> Option<JobId> {
        let p = &self.handle_prefix;
        let rest = handle.strip_prefix(p.as_slice())?.strip_prefix(b":")?;
        if rest.is_empty() || rest.len() > 19 || !rest.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let id: JobId = std::str::from_utf8(rest).ok()?.parse().ok()?;
        self.jobs.contains_key(&id).then_some(id)
    }

    /// WORK_STATUS, WORK_DATA, WORK_WARNING, WORK_COMPLETE, WORK_FAIL, WORK_EXCEPTION.
    pub(crate) fn work(&mut self, conn: ConnId, kind: PacketType, handle: &[u8], args: &[&[u8]]) {
        if kind == PacketType::WorkFail && handle.len() >= 64 {
            self.send_error(
                conn,
                "ARGUMENT_TOO_LARGE",
                "Error occurred due to GEARMAND_JOB_HANDLE_SIZE being too small from snprintf",
            );
            return;
        }
        let Some(job_id) = self.owned_job(conn, handle) else {
            let text = match kind {
                PacketType::WorkData | PacketType::WorkWarning => "Job does not exist on server",
                PacketType::WorkException => {
                    "An exception was received for a job that does not exist"
                }
                _ => "Job given in work result not found",
            };
            self.send_error(conn, "JOB_NOT_FOUND", text);
            return;
        };
        let job = self.jobs.get_mut(&job_id).expect("owned job exists");
        if kind == PacketType::WorkStatus {
            job.numerator = atoi(args[0]) as u32;
            job.denominator = atoi(args[1]) as u32;
        }
        let done = matches!(
            kind,
            PacketType::WorkComplete | PacketType::WorkFail | PacketType::WorkException
        );
        if done && &*job.unique != b"-" {
            // The job's payload is no part of the result: its memory goes
            // before the result is copied to the clients' outboxes.
            self.payload_bytes = self.payload_bytes.saturating_sub(job.data.len());
            job.data = Box::default();
        }
        let job = &self.jobs[&job_id];
        let mut full: [&[u8]; 3] = [&job.handle, &[], &[]];
        full[1..=args.len()].copy_from_slice(args);
        let full = &full[..=args.len()];
        for c in &job.clients {
            let Some(client) = self.conns.get(c) else { continue };
            let first = if kind == PacketType::WorkException && !client.exceptions {
                client
                    .out
                    .push_with(|b| encode_raw(Magic::Res, PacketType::WorkFail, &[&job.handle], b))
            } else {
                client.out.push_with(|b| encode_raw(Magic::Res, kind, full, b))
            };
            if first {
                self.dirty.push(Arc::clone(&client.out));
            }
        }
        if done {
            log::debug!("job done handle={} result={kind}", String::from_utf8_lossy(&job.handle));
            self.free_job(job_id);
        }
    }

    // ----- status --------------------------------------------------------

    /// Known, running, numerator, denominator and listener count of a job.
    fn status_fields(job: Option<&Job>) -> [String; 5] {
        match job {
            Some(job) => [
                "1".into(),
                u8::from(matches!(job.state, JobState::Running { .. })).to_string(),
                job.numerator.to_string(),
                job.denominator.to_string(),
                job.clients.len().to_string(),
            ],
            None => ["0", "0", "0", "0", "0"].map(String::from),
        }
    }

    pub(crate) fn get_status(&mut self, conn: ConnId, handle: &[u8]) {
        let job = self.job_id(handle).and_then(|id| self.jobs.get(&id));
        let [k, r, n, d, _] = State::status_fields(job);
        let args = [handle, k.as_bytes(), r.as_bytes(), n.as_bytes(), d.as_bytes()];
        self.send(conn, PacketType::StatusRes, &args);
    }

    /// The first job with this unique id in any function.
    fn job_by_unique(&self, unique: &[u8]) -> Option<&Job> {
        if unique.is_empty() || unique == b"-" {
            let mut ids: Vec<&JobId> = self.jobs.keys().collect();
            ids.sort();
            return ids.into_iter().map(|id| &self.jobs[id]).find(|j| &*j.unique == unique);
        }
        self.functions.iter().find_map(|f| f.uniques.get(unique)).and_then(|id| self.jobs.get(id))
    }

    pub(crate) fn get_status_unique(&mut self, conn: ConnId, unique: &[u8]) {
        let [k, r, n, d, c] = State::status_fields(self.job_by_unique(unique));
        let args = [unique, k.as_bytes(), r.as_bytes(), n.as_bytes(), d.as_bytes(), c.as_bytes()];
        self.send(conn, PacketType::StatusResUnique, &args);
    }

    // ----- timers --------------------------------------------------------

    pub(crate) fn add_timer(&mut self, at: Instant, kind: TimerKind) {
        let earliest = self.timers.peek().is_none_or(|std::cmp::Reverse((t, _))| at < *t);
        self.timers.push(std::cmp::Reverse((at, kind)));
        if earliest {
            self.timers_changed = true;
        }
    }

    /// Fires every timer due at `now`; returns the next deadline.
    pub(crate) fn run_timers(&mut self, now: Instant) -> Option<Instant> {
        if should_shrink(self.timers.len(), self.timers.capacity()) {
            self.timers.shrink_to(self.timers.len() * 2);
        }
        while let Some(std::cmp::Reverse((at, kind))) = self.timers.peek().copied() {
            if at > now {
                return Some(at);
            }
            self.timers.pop();
            match kind {
                TimerKind::CanDoTimeout { job, seq } => {
                    let current = self.jobs.get(&job).is_some_and(
                        |j| matches!(j.state, JobState::Running { seq: s, .. } if s == seq),
                    );
                    if current {
                        self.requeue(job, "CAN_DO_TIMEOUT expired");
                    }
                }
                TimerKind::EpochDue { job } => {
                    let Some(j) = self.jobs.get_mut(&job) else { continue };
                    if j.state != JobState::Scheduled {
                        continue;
                    }
                    j.state = JobState::Queued;
                    let (fid, prio) = (j.func, j.priority.index());
                    self.functions[fid].scheduled -= 1;
                    self.functions[fid].queues[prio].push_back(job);
                    self.wake(fid);
                }
            }
        }
        None
    }

    // ----- admin changes -------------------------------------------------

    /// `cancel job`: listeners get WORK_FAIL; a queued job is never handed out.
    pub(crate) fn cancel(&mut self, handle: &[u8]) -> bool {
        let Some(id) = self.job_id(handle) else { return false };
        let job = self.jobs.get_mut(&id).expect("job_id checks existence");
        job.owner = Owner::Ignored;
        if let (Some(key), Some(store)) = (job.row.key(), &self.store) {
            store.done(key);
        }
        job.row = Row::None;
        // A new submission with the same unique makes a new job.
        let f = &mut self.functions[job.func];
        if &*job.unique == b"-" {
            if f.by_data.get(&job.data) == Some(&id) {
                f.by_data.remove(&job.data);
            }
        } else if !job.unique.is_empty() && f.uniques.get(&job.unique) == Some(&id) {
            f.uniques.remove(&job.unique);
        }
        let clients = std::mem::take(&mut job.clients);
        let handle = job.handle.clone();
        for c in clients {
            if let Some(conn) = self.conns.get_mut(&c) {
                conn.attached.remove(&id);
            }
            self.send(c, PacketType::WorkFail, &[&handle]);
        }
        match self.jobs[&id].state {
            // Not in any queue: nothing would reap it later.
            JobState::Scheduled | JobState::Storing => self.free_job(id),
            // Out of its queue at once, so that `status` stops counting it.
            JobState::Queued => {
                let job = &self.jobs[&id];
                let q = &mut self.functions[job.func].queues[job.priority.index()];
                if let Some(i) = q.iter().position(|&j| j == id) {
                    q.remove(i);
                }
                self.free_job(id);
            }
            // The worker keeps running it: it counts as running until it
            // reports, and its result goes to nobody.
            JobState::Running { .. } => {}
        }
        true
    }

    /// `clear function`: removes every job of the function that no worker
    /// runs (queued, scheduled, cancelled but not reaped); their waiting
    /// clients get WORK_FAIL. Returns how many were removed, `None` for an
    /// unknown function.
    pub(crate) fn clear_function(&mut self, name: &[u8]) -> Option<usize> {
        let fid = *self.func_index.get(name)?;
        let f = &mut self.functions[fid];
        let mut ids: Vec<JobId> = f.queues.iter_mut().flat_map(|q| q.drain(..)).collect();
        ids.extend(
            self.jobs
                .iter()
                .filter(|(_, j)| {
                    j.func == fid && matches!(j.state, JobState::Scheduled | JobState::Storing)
                })
                .map(|(id, _)| *id),
        );
        let n = ids.len();
        for id in ids {
            let Some(job) = self.jobs.get(&id) else { continue };
            let handle = job.handle.clone();
            let clients = job.clients.clone();
            for c in clients {
                self.send(c, PacketType::WorkFail, &[&handle]);
            }
            self.free_job(id);
        }
        log::info!("cleared {n} jobs of function {}", String::from_utf8_lossy(name));
        Some(n)
    }

    /// `drop function`: refused while workers, queued or running jobs exist.
    /// The name is matched exactly, byte for byte, as every other command
    /// matches it (gearmand ignores case here, so `drop function foo` drops
    /// an idle `Foo`).
    pub(crate) fn drop_function(&mut self, name: &[u8]) -> Result<(), &'static str> {
        let Some(&fid) = self.func_index.get(name) else {
            return Err("ERR function not found\r\n");
        };
        let f = &self.functions[fid];
        if !f.workers.is_empty() || f.job_total > 0 {
            return Err("ERR there are still connected workers or executing clients\r\n");
        }
        // Remove by swapping the last function into its slot and renumbering.
        let last = self.functions.len() - 1;
        let removed = self.functions.swap_remove(fid);
        self.func_index.remove(&removed.name);
        if fid != last {
            let moved_name = self.functions[fid].name.clone();
            self.func_index.insert(moved_name, fid);
            for job in self.jobs.values_mut() {
                if job.func == last {
                    job.func = fid;
                }
            }
            for c in self.conns.values_mut() {
                for a in &mut c.abilities {
                    if a.func == last {
                        a.func = fid;
                    }
                }
            }
        }
        Ok(())
    }

    pub(crate) fn set_max_queue(&mut self, name: &[u8], limits: [u32; 3]) {
        if let Some(&fid) = self.func_index.get(name) {
            self.functions[fid].max_queue = limits;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Decoder, Frame, Packet};

    /// A state with the default settings.
    fn state() -> State {
        state_with(ServerConfig::default())
    }

    /// A state with `config`, its handles `H:t:N`.
    fn state_with(config: ServerConfig) -> State {
        State::new(Arc::new(config), b"H:t".to_vec())
    }

    fn conn(st: &mut State, id: ConnId) -> Arc<Outbox> {
        let out = Arc::new(Outbox::new(None, 1 << 20));
        st.add_conn(id, id as i64, Some([127, 0, 0, 1].into()), Arc::clone(&out));
        out
    }

    /// Decodes what a connection was sent, as `TYPE arg,arg` strings.
    fn sent(out: &Outbox) -> Vec<String> {
        let mut d = Decoder::default();
        d.push(&out.take_now());
        let mut v = Vec::new();
        while let Some(Frame::Binary { kind, body, .. }) = d.next_frame().unwrap() {
            let p = Packet::parse(kind, body).unwrap();
            let args: Vec<String> =
                p.args().iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            v.push(format!("{kind} {}", args.join(",")).trim_end().to_string());
        }
        v
    }

    #[test]
    fn tables_give_memory_back_once_drained_but_not_while_busy() {
        let mut st = state();
        conn(&mut st, 1);
        let worker = conn(&mut st, 2);
        apply(&mut st, 2, Packet::CanDo { function: b"f" });
        let n = 20_000;
        for i in 0..n {
            let u = format!("u{i}");
            apply(&mut st, 1, submit(b"f", u.as_bytes(), b"d", Priority::Normal, true));
        }
        let full = (st.jobs.capacity(), st.functions[0].queues[1].capacity());
        let full_uniques = st.functions[0].uniques.capacity();
        assert!(full.0 >= n && full.1 >= n && full_uniques >= n);
        // Half drained: still over a quarter full, nothing is reallocated.
        for i in 0..n / 2 {
            apply(&mut st, 2, Packet::GrabJob);
            let h = format!("H:t:{}", i + 1);
            apply(&mut st, 2, Packet::WorkComplete { handle: h.as_bytes(), data: b"" });
        }
        assert_eq!(st.jobs.capacity(), full.0, "a half-full table keeps its room");
        for i in n / 2..n {
            apply(&mut st, 2, Packet::GrabJob);
            let h = format!("H:t:{}", i + 1);
            apply(&mut st, 2, Packet::WorkComplete { handle: h.as_bytes(), data: b"" });
        }
        worker.take_now();
        assert!(st.jobs.is_empty());
        assert!(st.jobs.capacity() <= 2 * SHRINK_MIN, "jobs keep {}", st.jobs.capacity());
        let f = &st.functions[0];
        assert!(f.queues[1].capacity() <= 2 * SHRINK_MIN, "queue keeps {}", f.queues[1].capacity());
        assert!(f.uniques.capacity() <= 2 * SHRINK_MIN, "uniques keep {}", f.uniques.capacity());
    }

    fn apply(st: &mut State, c: ConnId, p: Packet<'_>) {
        let bytes = p.to_vec(Magic::Req);
        let mut d = Decoder::default();
        d.push(&bytes);
        let f = d.next_frame().unwrap().unwrap();
        st.handle_frame(c, f);
    }

    fn submit<'a>(f: &'a [u8], u: &'a [u8], d: &'a [u8], p: Priority, bg: bool) -> Packet<'a> {
        Packet::Submit {
            kind: crate::proto::SubmitKind { priority: p, background: bg },
            function: f,
            unique: u,
            data: d,
        }
    }

    #[test]
    fn coalescing_by_unique_and_by_data() {
        let mut st = state();
        let c = conn(&mut st, 1);
        apply(&mut st, 1, submit(b"f", b"u", b"a", Priority::Normal, false));
        apply(&mut st, 1, submit(b"f", b"u", b"b", Priority::High, true));
        apply(&mut st, 1, submit(b"g", b"u", b"a", Priority::Normal, false));
        apply(&mut st, 1, submit(b"f", b"", b"a", Priority::Normal, false));
        apply(&mut st, 1, submit(b"f", b"-", b"x", Priority::Normal, false));
        apply(&mut st, 1, submit(b"f", b"-", b"x", Priority::Normal, false));
        apply(&mut st, 1, submit(b"f", b"-", b"", Priority::Normal, false));
        apply(&mut st, 1, submit(b"f", b"-", b"", Priority::Normal, false));
        assert_eq!(
            sent(&c),
            [
                "JOB_CREATED H:t:1",
                "JOB_CREATED H:t:1",
                "JOB_CREATED H:t:2",
                "JOB_CREATED H:t:3",
                "JOB_CREATED H:t:4",
                "JOB_CREATED H:t:4",
                "JOB_CREATED H:t:5",
                "JOB_CREATED H:t:6",
            ]
        );
        assert_eq!(st.functions[0].job_total, 5);
    }

    #[test]
    fn noop_once_per_sleep_and_priority_order() {
        let mut st = state();
        let client = conn(&mut st, 1);
        let worker = conn(&mut st, 2);
        apply(&mut st, 2, Packet::CanDo { function: b"f" });
        apply(&mut st, 2, Packet::PreSleep);
        apply(&mut st, 1, submit(b"f", b"", b"low", Priority::Low, true));
        apply(&mut st, 1, submit(b"f", b"", b"high", Priority::High, true));
        assert_eq!(sent(&worker), ["NOOP"]);
        apply(&mut st, 2, Packet::GrabJob);
        apply(&mut st, 2, Packet::GrabJobUniq);
        apply(&mut st, 2, Packet::GrabJob);
        assert_eq!(
            sent(&worker),
            ["JOB_ASSIGN H:t:2,f,high", "JOB_ASSIGN_UNIQ H:t:1,f,,low", "NO_JOB"]
        );
        sent(&client);
    }

    #[test]
    fn push_workers_are_assigned_jobs_instead_of_noop() {
        let mut st = state();
        let client = conn(&mut st, 1);
        let pusher = conn(&mut st, 2);
        let other = conn(&mut st, 3);
        let waker = conn(&mut st, 4);
        apply(&mut st, 2, Packet::OptionReq { option: b"GEARFRAME-PUSH" });
        assert_eq!(sent(&pusher), ["OPTION_RES GEARFRAME-PUSH"]);
        for w in [2, 3, 4] {
            apply(&mut st, w, Packet::CanDo { function: b"f" });
        }
        apply(&mut st, 3, Packet::OptionReq { option: b"gearframe-push" });
        sent(&other);
        for w in [2, 3, 4] {
            apply(&mut st, w, Packet::PreSleep);
        }
        // One job: the first pushing sleeper gets it, nobody else is disturbed.
        apply(&mut st, 1, submit(b"f", b"u1", b"one", Priority::Normal, false));
        assert_eq!(sent(&pusher), ["JOB_ASSIGN_UNIQ H:t:1,f,u1,one"]);
        assert_eq!(sent(&other), Vec::<String>::new());
        assert_eq!(sent(&waker), Vec::<String>::new());
        // The next goes to the other pushing sleeper; then the one that
        // wants NOOP is woken, once, and grabs.
        apply(&mut st, 1, submit(b"f", b"u2", b"two", Priority::Normal, false));
        assert_eq!(sent(&other), ["JOB_ASSIGN_UNIQ H:t:2,f,u2,two"]);
        apply(&mut st, 1, submit(b"f", b"u3", b"three", Priority::Normal, false));
        apply(&mut st, 1, submit(b"f", b"u4", b"four", Priority::Normal, false));
        assert_eq!(sent(&waker), ["NOOP"]);
        assert_eq!(sent(&pusher), Vec::<String>::new(), "a busy worker gets nothing more");
        // Result and PRE_SLEEP in one go: the waiting job comes at once.
        apply(&mut st, 2, Packet::WorkComplete { handle: b"H:t:1", data: b"r" });
        apply(&mut st, 2, Packet::PreSleep);
        assert_eq!(sent(&pusher), ["JOB_ASSIGN_UNIQ H:t:3,f,u3,three"]);
        apply(&mut st, 4, Packet::GrabJobUniq);
        assert_eq!(sent(&waker), ["JOB_ASSIGN_UNIQ H:t:4,f,u4,four"]);
        assert_eq!(st.functions[0].job_running, 3);
        // A pushed job of a worker that goes away is queued for the next.
        apply(&mut st, 3, Packet::WorkComplete { handle: b"H:t:2", data: b"r" });
        apply(&mut st, 3, Packet::PreSleep);
        st.remove_conn(2);
        assert_eq!(sent(&other), ["JOB_ASSIGN_UNIQ H:t:3,f,u3,three"]);
        let to_client = sent(&client);
        assert!(to_client.contains(&"WORK_COMPLETE H:t:1,r".to_string()), "{to_client:?}");
    }

    /// `show jobs` columns: retries, ignored, queued (created by a
    /// background submission).
    #[test]
    fn a_job_is_owned_by_listeners_a_background_submission_or_nobody() {
        let mut st = state();
        conn(&mut st, 1);
        conn(&mut st, 2);
        let admin = conn(&mut st, 3);
        let jobs = |st: &mut State| {
            st.admin(3, b"show jobs");
            String::from_utf8(admin.take_now()).unwrap()
        };
        apply(&mut st, 1, submit(b"f", b"a", b"x", Priority::Normal, false));
        apply(&mut st, 2, submit(b"f", b"b", b"x", Priority::Normal, true));
        assert_eq!(st.jobs[&1].owner, Owner::Listeners);
        assert_eq!(st.jobs[&2].owner, Owner::Background { queued: true });
        assert_eq!(jobs(&mut st), "H:t:1\t0\t0\t0\nH:t:2\t0\t0\t1\n.\n");
        // Its last listener gone, the foreground job runs for nobody; a
        // background submission of the same unique adopts it.
        st.remove_conn(1);
        assert_eq!(st.jobs[&1].owner, Owner::Ignored);
        assert_eq!(jobs(&mut st), "H:t:1\t0\t1\t0\nH:t:2\t0\t0\t1\n.\n");
        apply(&mut st, 2, submit(b"f", b"a", b"x", Priority::Normal, true));
        assert_eq!(st.jobs[&1].owner, Owner::Background { queued: false });
        assert_eq!(jobs(&mut st), "H:t:1\t0\t0\t0\nH:t:2\t0\t0\t1\n.\n");
        assert_eq!(st.jobs_to_store().len(), 2, "both are owned by a background submission");
        // A foreground joiner leaves a background job background.
        let again = conn(&mut st, 4);
        apply(&mut st, 4, submit(b"f", b"b", b"x", Priority::Normal, false));
        assert_eq!(st.jobs[&2].owner, Owner::Background { queued: true });
        assert!(st.cancel(b"H:t:2"));
        assert!(!st.jobs.contains_key(&2), "a queued cancelled job is freed at once");
        assert_eq!(sent(&again), ["JOB_CREATED H:t:2", "WORK_FAIL H:t:2"]);
        assert_eq!(st.jobs_to_store().len(), 1);
    }

    #[test]
    fn a_sleeper_is_woken_once_per_sleep() {
        let mut st = state();
        let client = conn(&mut st, 1);
        let w = conn(&mut st, 2);
        apply(&mut st, 2, Packet::CanDo { function: b"f" });
        apply(&mut st, 2, Packet::PreSleep);
        assert_eq!(st.conns[&2].sleep, Sleep::Asleep);
        apply(&mut st, 1, submit(b"f", b"u1", b"one", Priority::Normal, true));
        apply(&mut st, 1, submit(b"f", b"u2", b"two", Priority::Normal, true));
        assert_eq!(sent(&w), ["NOOP"], "woken once, not once per job");
        assert_eq!(st.conns[&2].sleep, Sleep::Woken);
        apply(&mut st, 2, Packet::GrabJobUniq);
        assert_eq!(st.conns[&2].sleep, Sleep::Awake);
        apply(&mut st, 2, Packet::WorkComplete { handle: b"H:t:1", data: b"" });
        // Work waits at PRE_SLEEP: NOOP at once, and no second one when
        // another job arrives before the grab.
        apply(&mut st, 2, Packet::PreSleep);
        apply(&mut st, 1, submit(b"f", b"u3", b"three", Priority::Normal, true));
        assert_eq!(sent(&w), ["JOB_ASSIGN_UNIQ H:t:1,f,u1,one", "NOOP"]);
        assert_eq!(st.conns[&2].sleep, Sleep::Woken);
        apply(&mut st, 2, Packet::GrabJob);
        apply(&mut st, 2, Packet::GrabJob);
        apply(&mut st, 2, Packet::GrabJob);
        assert_eq!(sent(&w), ["JOB_ASSIGN H:t:2,f,two", "JOB_ASSIGN H:t:3,f,three", "NO_JOB"]);
        apply(&mut st, 2, Packet::PreSleep);
        apply(&mut st, 1, submit(b"f", b"u4", b"four", Priority::Normal, true));
        assert_eq!(sent(&w), ["NOOP"], "asleep again, woken again");
        sent(&client);
    }

    #[test]
    fn a_sleeping_pusher_gets_waiting_work_once_it_can_do_it() {
        let mut st = state();
        let client = conn(&mut st, 1);
        let late = conn(&mut st, 2);
        let turned = conn(&mut st, 3);
        apply(&mut st, 1, submit(b"f", b"u1", b"one", Priority::Normal, true));
        apply(&mut st, 1, submit(b"f", b"u2", b"two", Priority::Normal, true));
        sent(&client);
        // Push on and asleep before registering: CAN_DO brings the job.
        apply(&mut st, 2, Packet::OptionReq { option: b"gearframe-push" });
        apply(&mut st, 2, Packet::PreSleep);
        apply(&mut st, 2, Packet::CanDo { function: b"f" });
        assert_eq!(sent(&late), ["OPTION_RES gearframe-push", "JOB_ASSIGN_UNIQ H:t:1,f,u1,one"]);
        // Registered and asleep before turning push on: the option brings it.
        apply(&mut st, 3, Packet::CanDo { function: b"g" });
        apply(&mut st, 3, Packet::PreSleep);
        apply(&mut st, 3, Packet::CanDo { function: b"f" });
        assert_eq!(sent(&turned), Vec::<String>::new(), "without push, CAN_DO wakes nobody");
        apply(&mut st, 3, Packet::OptionReq { option: b"gearframe-push" });
        assert_eq!(sent(&turned), ["OPTION_RES gearframe-push", "JOB_ASSIGN_UNIQ H:t:2,f,u2,two"]);
    }

    #[test]
    fn requeue_on_disconnect_goes_to_the_tail_and_retries_drop() {
        let mut st = state_with(ServerConfig { job_retries: 2, ..ServerConfig::default() });
        let client = conn(&mut st, 1);
        conn(&mut st, 2);
        apply(&mut st, 2, Packet::CanDo { function: b"f" });
        apply(&mut st, 1, submit(b"f", b"", b"x", Priority::Normal, false));
        apply(&mut st, 2, Packet::GrabJob);
        st.remove_conn(2);
        assert_eq!(st.functions[0].job_total, 1);
        assert_eq!(st.functions[0].job_running, 0);
        let w = conn(&mut st, 3);
        apply(&mut st, 3, Packet::CanDo { function: b"f" });
        apply(&mut st, 3, Packet::GrabJob);
        assert_eq!(sent(&w), ["JOB_ASSIGN H:t:1,f,x"]);
        st.remove_conn(3);
        assert_eq!(sent(&client), ["JOB_CREATED H:t:1", "WORK_FAIL H:t:1"]);
        assert!(st.jobs.is_empty());
        assert_eq!(st.functions[0].job_total, 0);
    }

    /// A state with a `Sync` persistent queue whose writer is the test: the
    /// operations come out of the receiver, outcomes go in by `commit`.
    fn durable() -> (State, crossbeam_channel::Receiver<super::super::store::Op>) {
        let mut st = state();
        let (tx, rx) = crossbeam_channel::unbounded();
        st.store = Some(StoreLink::for_test(tx));
        (st, rx)
    }

    /// The rows the writer was asked to add and delete since the last call.
    fn ops(rx: &crossbeam_channel::Receiver<super::super::store::Op>) -> Vec<String> {
        use super::super::store::Op;
        rx.try_iter()
            .map(|op| match op {
                Op::Add(job, row) => format!("add job={job} key={}", row.key),
                Op::Done(key) => format!("delete key={key}"),
                Op::Dump(jobs) => format!("dump {}", jobs.len()),
            })
            .collect()
    }

    /// Reports a transaction that added these rows (job, key).
    fn commit(st: &mut State, added: &[(JobId, u64)], error: Option<&str>) {
        st.stored(Outcome {
            added: added.to_vec(),
            error: error.map(String::from),
            health: Default::default(),
        });
    }

    const LOCKED: &str = "persistent queue q.db: database is locked";

    #[test]
    fn a_background_job_is_acked_and_handed_out_only_once_its_row_is_committed() {
        let (mut st, rx) = durable();
        let client = conn(&mut st, 1);
        let worker = conn(&mut st, 2);
        apply(&mut st, 2, Packet::CanDo { function: b"f" });
        apply(&mut st, 1, submit(b"f", b"u", b"x", Priority::Normal, true));
        // Replies after the held JOB_CREATED wait behind it.
        apply(&mut st, 1, Packet::EchoReq { data: b"e" });
        assert_eq!(sent(&client), Vec::<String>::new());
        apply(&mut st, 2, Packet::GrabJob);
        assert_eq!(sent(&worker), ["NO_JOB"], "not handed out before its row is committed");
        assert_eq!(ops(&rx), ["add job=1 key=1"]);
        commit(&mut st, &[(1, 1)], None);
        assert_eq!(sent(&client), ["JOB_CREATED H:t:1", "ECHO_RES e"]);
        apply(&mut st, 2, Packet::GrabJob);
        assert_eq!(sent(&worker), ["JOB_ASSIGN H:t:1,f,x"]);
        // A resubmission of a stored job is acked at once, with no write.
        apply(&mut st, 1, submit(b"f", b"u", b"x", Priority::Normal, true));
        assert_eq!(sent(&client), ["JOB_CREATED H:t:1"]);
        assert_eq!(ops(&rx), Vec::<String>::new());
        // A worker loss requeues it with its row; only the end deletes it.
        st.remove_conn(2);
        assert_eq!(ops(&rx), Vec::<String>::new(), "a requeued job keeps its row");
        let w2 = conn(&mut st, 3);
        apply(&mut st, 3, Packet::CanDo { function: b"f" });
        apply(&mut st, 3, Packet::GrabJob);
        assert_eq!(sent(&w2), ["JOB_ASSIGN H:t:1,f,x"]);
        apply(&mut st, 3, Packet::WorkComplete { handle: b"H:t:1", data: b"" });
        assert_eq!(ops(&rx), ["delete key=1"]);
    }

    #[test]
    fn a_failed_write_answers_queue_error_to_every_submitter_and_drops_the_job() {
        let (mut st, rx) = durable();
        let a = conn(&mut st, 1);
        let b = conn(&mut st, 2);
        apply(&mut st, 1, submit(b"f", b"u", b"x", Priority::Normal, true));
        apply(&mut st, 1, submit(b"f", b"", b"fg", Priority::Normal, false));
        // Same unique while the first row is pending: it waits for that row.
        apply(&mut st, 2, submit(b"f", b"u", b"x", Priority::Normal, true));
        assert_eq!(ops(&rx), ["add job=1 key=1"]);
        assert_eq!(sent(&a), Vec::<String>::new());
        commit(&mut st, &[(1, 1)], Some(LOCKED));
        let error = format!("ERROR QUEUE_ERROR,{LOCKED}");
        assert_eq!(sent(&a), [error.clone(), "JOB_CREATED H:t:2".to_string()]);
        assert_eq!(sent(&b), [error]);
        assert!(!st.jobs.contains_key(&1), "an unstored job is not kept as accepted");
        assert_eq!(st.functions[0].job_total, 1);
        // Submitting again makes a new job with a new row.
        apply(&mut st, 2, submit(b"f", b"u", b"x", Priority::Normal, true));
        assert_eq!(ops(&rx), ["add job=3 key=2"]);
        commit(&mut st, &[(3, 2)], None);
        assert_eq!(sent(&b), ["JOB_CREATED H:t:3"]);
    }

    #[test]
    fn a_background_submission_joining_a_foreground_job_waits_for_its_row() {
        let (mut st, rx) = durable();
        let fg = conn(&mut st, 1);
        let bg = conn(&mut st, 2);
        let worker = conn(&mut st, 3);
        apply(&mut st, 1, submit(b"f", b"u", b"x", Priority::Normal, false));
        assert_eq!(sent(&fg), ["JOB_CREATED H:t:1"]);
        assert_eq!(ops(&rx), Vec::<String>::new(), "foreground jobs are not stored");
        apply(&mut st, 2, submit(b"f", b"u", b"x", Priority::Normal, true));
        assert_eq!(ops(&rx), ["add job=1 key=1"]);
        assert_eq!(sent(&bg), Vec::<String>::new());
        // The write fails: the joiner is refused, the foreground client keeps its job.
        commit(&mut st, &[(1, 1)], Some(LOCKED));
        assert_eq!(sent(&bg), [format!("ERROR QUEUE_ERROR,{LOCKED}")]);
        assert_eq!(st.jobs[&1].owner, Owner::Listeners);
        apply(&mut st, 3, Packet::CanDo { function: b"f" });
        apply(&mut st, 3, Packet::GrabJob);
        assert_eq!(sent(&worker), ["JOB_ASSIGN H:t:1,f,x"]);
        // Joining again writes the row again; this time it commits.
        apply(&mut st, 2, submit(b"f", b"u", b"x", Priority::Normal, true));
        assert_eq!(ops(&rx), ["add job=1 key=2"]);
        commit(&mut st, &[(1, 2)], None);
        assert_eq!(sent(&bg), ["JOB_CREATED H:t:1"]);
        assert_eq!(st.jobs[&1].owner, Owner::Background { queued: false });
        apply(&mut st, 3, Packet::WorkComplete { handle: b"H:t:1", data: b"r" });
        assert_eq!(sent(&fg), ["WORK_COMPLETE H:t:1,r"]);
        assert_eq!(ops(&rx), ["delete key=2"]);
    }

    #[test]
    fn an_epoch_job_is_stored_before_it_is_scheduled() {
        let (mut st, rx) = durable();
        let c = conn(&mut st, 1);
        let later = (unix_now() + 3600).to_string();
        for e in [later.as_bytes(), b"1"] {
            let p = Packet::SubmitJobEpoch { function: b"f", unique: b"", epoch: e, data: b"d" };
            apply(&mut st, 1, p);
        }
        assert_eq!(ops(&rx), ["add job=1 key=1", "add job=2 key=2"]);
        assert_eq!(st.functions[0].scheduled, 0);
        assert_eq!(st.jobs[&1].state, JobState::Storing);
        assert_eq!(sent(&c), Vec::<String>::new());
        commit(&mut st, &[(1, 1)], None);
        commit(&mut st, &[(2, 2)], Some(LOCKED));
        assert_eq!(
            sent(&c),
            ["JOB_CREATED H:t:1".to_string(), format!("ERROR QUEUE_ERROR,{LOCKED}")]
        );
        assert_eq!(st.jobs[&1].state, JobState::Scheduled);
        assert_eq!(st.functions[0].scheduled, 1);
        assert!(!st.jobs.contains_key(&2));
    }

    #[test]
    fn a_cancelled_job_leaves_status_at_once_and_a_running_one_counts_until_it_reports() {
        let mut st = state();
        let client = conn(&mut st, 1);
        let admin = conn(&mut st, 2);
        let worker = conn(&mut st, 3);
        for u in [&b"a"[..], b"b", b"c"] {
            apply(&mut st, 1, submit(b"f", u, b"d", Priority::Normal, true));
        }
        apply(&mut st, 1, submit(b"f", b"fg", b"d", Priority::Normal, false));
        client.take_now();
        let status = |st: &mut State| {
            st.admin(2, b"status");
            String::from_utf8(admin.take_now()).unwrap()
        };
        assert_eq!(status(&mut st), "f\t4\t0\t0\n.\n");
        st.admin(2, b"cancel job H:t:2");
        assert_eq!(admin.take_now(), b"OK\r\n");
        assert_eq!(status(&mut st), "f\t3\t0\t0\n.\n");
        st.admin(2, b"cancel job H:t:4");
        assert_eq!(admin.take_now(), b"OK\r\n");
        assert_eq!(sent(&client), ["WORK_FAIL H:t:4"]);
        assert_eq!(status(&mut st), "f\t2\t0\t0\n.\n");
        // A running job stays counted as running until its worker reports.
        apply(&mut st, 3, Packet::CanDo { function: b"f" });
        apply(&mut st, 3, Packet::GrabJob);
        assert_eq!(sent(&worker), ["JOB_ASSIGN H:t:1,f,d"]);
        st.admin(2, b"cancel job H:t:1");
        assert_eq!(admin.take_now(), b"OK\r\n");
        assert_eq!(status(&mut st), "f\t2\t1\t1\n.\n");
        apply(&mut st, 3, Packet::WorkComplete { handle: b"H:t:1", data: b"" });
        assert_eq!(status(&mut st), "f\t1\t0\t1\n.\n");
        // The cancelled ones are never handed out.
        apply(&mut st, 3, Packet::GrabJob);
        apply(&mut st, 3, Packet::GrabJob);
        assert_eq!(sent(&worker), ["JOB_ASSIGN H:t:3,f,d", "NO_JOB"]);
    }

    #[test]
    fn a_graceful_stop_refuses_new_jobs_and_stops_with_the_last_one() {
        let mut st = state();
        let client = conn(&mut st, 1);
        let admin = conn(&mut st, 2);
        let worker = conn(&mut st, 3);
        apply(&mut st, 1, submit(b"f", b"a", b"d", Priority::Normal, true));
        client.take_now();
        st.admin(2, b"stopping");
        assert_eq!(admin.take_now(), b"OK running\r\n");
        st.admin(2, b"shutdown graceful");
        assert_eq!(admin.take_now(), b"OK\r\n");
        assert_eq!(st.lifecycle, Lifecycle::Draining, "a job is left");
        st.admin(2, b"stopping");
        assert_eq!(admin.take_now(), b"OK graceful jobs=1\r\n");
        apply(&mut st, 1, submit(b"f", b"b", b"d", Priority::Normal, true));
        apply(&mut st, 1, submit(b"f", b"c", b"d", Priority::High, false));
        assert_eq!(error_codes(&client), ["SERVER_STOPPING", "SERVER_STOPPING"]);
        assert_eq!(st.jobs.len(), 1);
        apply(&mut st, 3, Packet::CanDo { function: b"f" });
        apply(&mut st, 3, Packet::GrabJob);
        assert_eq!(sent(&worker), ["JOB_ASSIGN H:t:1,f,d"]);
        assert_eq!(st.lifecycle, Lifecycle::Draining);
        apply(&mut st, 3, Packet::WorkComplete { handle: b"H:t:1", data: b"" });
        assert_eq!(st.lifecycle, Lifecycle::Stopping { graceful: true }, "the last job is done");
        assert!(st.take_stop());
        assert!(!st.take_stop(), "a stop is taken once");
        st.admin(2, b"stopping");
        assert_eq!(admin.take_now(), b"OK graceful jobs=0\r\n");
        st.request_stop(false);
        assert_eq!(st.lifecycle, Lifecycle::Stopped { graceful: true }, "taken is taken");
    }

    #[test]
    fn shutdown_only_from_loopback() {
        let mut st = state();
        let remote = Arc::new(Outbox::new(None, 1 << 20));
        st.add_conn(7, 7, Some([192, 0, 2, 1].into()), Arc::clone(&remote));
        st.admin(7, b"shutdown");
        assert_eq!(st.lifecycle, Lifecycle::Running);
        assert_eq!(
            remote.take_now(),
            b"ERR PERMISSION_DENIED shutdown+is+only+accepted+from+a+loopback+address\r\n"
        );
        let local = conn(&mut st, 8);
        st.admin(8, b"shutdown graceful");
        assert_eq!(local.take_now(), b"OK\r\n");
        assert_eq!(
            st.lifecycle,
            Lifecycle::Stopping { graceful: true },
            "no job is left, so a graceful stop is immediate"
        );
    }

    /// The ERROR codes a connection was sent, in order.
    fn error_codes(out: &Outbox) -> Vec<String> {
        sent(out)
            .iter()
            .map(|l| match l.strip_prefix("ERROR ") {
                Some(rest) => rest.split(',').next().unwrap_or_default().to_string(),
                None => l.clone(),
            })
            .collect()
    }

    #[test]
    fn names_with_control_characters_are_refused_and_the_connection_kept() {
        let mut st = state();
        let c = conn(&mut st, 1);
        for bad in [&b"evil\n.\nfake\t9\t9\t9"[..], b"a\rb", b"a\tb", b"\x1b[2J", b"del\x7f"] {
            apply(&mut st, 1, Packet::CanDo { function: bad });
            apply(&mut st, 1, Packet::CanDoTimeout { function: bad, timeout: b"5" });
            apply(&mut st, 1, Packet::CantDo { function: bad });
            apply(&mut st, 1, submit(bad, b"", b"x", Priority::Normal, false));
            apply(&mut st, 1, submit(bad, b"u", b"x", Priority::High, true));
            apply(
                &mut st,
                1,
                Packet::SubmitJobEpoch { function: bad, unique: b"", epoch: b"1", data: b"x" },
            );
            apply(
                &mut st,
                1,
                Packet::SubmitReduceJob {
                    background: true,
                    function: bad,
                    unique: b"",
                    reducer: b"r",
                    aggregator: b"",
                    data: b"x",
                },
            );
            apply(&mut st, 1, Packet::SetClientId { id: bad });
            let f = "INVALID_FUNCTION_NAME";
            assert_eq!(error_codes(&c), [f, f, f, f, f, f, f, "INVALID_CLIENT_ID"], "{bad:?}");
        }
        // NUL separates arguments: only a last argument can hold one.
        apply(&mut st, 1, Packet::CanDo { function: b"a\0b" });
        apply(&mut st, 1, Packet::CantDo { function: b"a\0b" });
        apply(&mut st, 1, Packet::SetClientId { id: b"a\0b" });
        let f = "INVALID_FUNCTION_NAME";
        assert_eq!(error_codes(&c), [f, f, "INVALID_CLIENT_ID"]);
        assert!(st.functions.is_empty() && st.jobs.is_empty());
        assert_eq!(&*st.conns[&1].client_id, b"-");
        assert!(st.conns[&1].abilities.is_empty());
        // Printable names, spaces and UTF-8 included, still work on the same connection.
        apply(&mut st, 1, Packet::SetClientId { id: "wörker 1".as_bytes() });
        apply(&mut st, 1, Packet::CanDo { function: "ünï code".as_bytes() });
        apply(&mut st, 1, submit(b"f g", b"", b"x", Priority::Normal, true));
        assert_eq!(sent(&c), ["JOB_CREATED H:t:1"]);
        assert_eq!(&*st.conns[&1].client_id, "wörker 1".as_bytes());
        assert_eq!(st.functions.len(), 2);
    }

    #[test]
    fn admin_commands_refuse_function_names_with_control_characters() {
        let mut st = state();
        let c = conn(&mut st, 1);
        let refused: &[u8] = b"ERR INVALID_FUNCTION_NAME Function+name+holds+a+control+character;+use+printable+characters\r\n";
        for line in [
            &b"create function a\tb"[..],
            b"maxqueue a\0b 5",
            b"drop function a\x01b",
            b"clear function a\x7fb",
        ] {
            st.admin(1, line);
            assert_eq!(c.take_now(), refused, "{:?}", String::from_utf8_lossy(line));
        }
        assert!(st.functions.is_empty());
        st.admin(1, b"create function a");
        st.admin(1, b"status");
        assert_eq!(c.take_now(), b"OK\r\na\t0\t0\t0\n.\n");
    }

    #[test]
    fn drop_function_matches_the_exact_name() {
        let mut st = state();
        let c = conn(&mut st, 1);
        st.admin(1, b"create function Foo");
        st.admin(1, b"drop function foo");
        st.admin(1, b"drop function FOO");
        st.admin(1, b"status");
        assert_eq!(
            c.take_now(),
            &b"OK\r\nERR function not found\r\nERR function not found\r\nFoo\t0\t0\t0\n.\n"[..]
        );
        st.admin(1, b"create function foo");
        st.admin(1, b"drop function Foo");
        st.admin(1, b"status");
        assert_eq!(c.take_now(), b"OK\r\nOK\r\nfoo\t0\t0\t0\n.\n");
    }

    #[test]
    fn admin_allow_keeps_job_and_connection_listings_from_other_peers() {
        let mut st = state_with(ServerConfig {
            admin_allow: vec!["10.0.0.0/8".parse().unwrap()],
            ..ServerConfig::default()
        });
        let local = conn(&mut st, 1);
        let inside = Arc::new(Outbox::new(None, 1 << 20));
        st.add_conn(2, 2, Some([10, 1, 2, 3].into()), Arc::clone(&inside));
        apply(&mut st, 1, submit(b"f", b"secret-unique", b"x", Priority::Normal, true));
        sent(&local);
        let listing = b"ERR PERMISSION_DENIED this+address+may+not+list+jobs+or+connections\r\n";
        let change = b"ERR PERMISSION_DENIED this+address+may+not+change+the+server+state\r\n";
        for line in [&b"show jobs"[..], b"show unique jobs", b"workers"] {
            st.admin(1, line);
            assert_eq!(local.take_now(), listing, "{:?}", String::from_utf8_lossy(line));
        }
        for line in [&b"clear function f"[..], b"cancel job H:t:1", b"create function g"] {
            st.admin(1, line);
            assert_eq!(local.take_now(), change, "{:?}", String::from_utf8_lossy(line));
        }
        st.admin(1, b"status");
        st.admin(1, b"prioritystatus");
        st.admin(1, b"version");
        let open = String::from_utf8(local.take_now()).unwrap();
        assert_eq!(
            open,
            format!(
                "f\t1\t0\t0\n.\nf\t0\t1\t0\t0\n.\nOK gearframe-{}\n",
                env!("CARGO_PKG_VERSION")
            )
        );
        st.admin(1, b"getpid");
        st.admin(1, b"verbose");
        assert!(String::from_utf8(local.take_now()).unwrap().starts_with("OK "));
        // A peer inside the rule lists everything.
        st.admin(2, b"show unique jobs");
        st.admin(2, b"show jobs");
        assert_eq!(inside.take_now(), b"secret-unique\n.\nH:t:1\t0\t0\t1\n.\n");
        st.admin(2, b"workers");
        assert_eq!(inside.take_now(), b"1 127.0.0.1 - :\n2 10.1.2.3 - :\n.\n");
    }
}
