//! The persistent queue: background jobs in SQLite, written by one thread
//! with group commit.
//!
//! In `Sync` mode a new background job is written before its JOB_CREATED
//! leaves the server, on every path (a new job, a submission that joins a
//! job whose row is not committed yet, a background submission joining a
//! foreground job, epoch jobs): the JOB_CREATED, and every later reply on
//! that connection, is held in the connection's outbox until the commit
//! that contains the row has returned. Until then the job is not handed to
//! a worker either. While one transaction commits, further jobs queue up on
//! the channel and go into the next one, so a busy server pays one fsync
//! for many jobs. A row is deleted when its job completes, fails for good or
//! is cancelled; a job queued again after a worker loss keeps its row. On
//! start every row is queued again, whatever its unique id (empty ones
//! included), with its function, priority, payload and due time.
//!
//! When a transaction fails (the database is locked by another process for
//! longer than [`BUSY_TIMEOUT`], the disk is full, the file is read-only or
//! an I/O error), every submission waiting for it gets
//! `ERROR QUEUE_ERROR "persistent queue PATH: CAUSE"` in place of its
//! JOB_CREATED, and the job loses its background owner: it is removed, or
//! kept for the foreground clients that also wait for it. Deletions that
//! failed are kept and tried again with the next transaction (the job may
//! then run again after a restart: at least once). The failure is logged
//! once when it starts and once when it ends (when writes have succeeded
//! for a probe interval: a nearly full disk that takes some writes and
//! refuses others is one failure). While failing, every new
//! background submission still tries its write (it is acked if that write
//! commits), and the writer probes the database every [`PROBE_EVERY`], so
//! it recovers by itself once the database can be written again. The admin
//! command `store` shows the state.
//!
//! In `OnShutdown` mode nothing is written while the server runs; the rows
//! found at start stay in the file. When the server stops, its background
//! jobs replace them in one transaction: if that fails, the previous rows
//! are kept, the error names the file and how many jobs were not saved, and
//! [`crate::server::ServerHandle::join_result`] reports it.
//!
//! Without the `persistent-queue` feature only the link is built: the
//! state's code for it stays, and [`open`] refuses every path.
// Without SQLite no writer reads the link's operations.
#![cfg_attr(not(feature = "persistent-queue"), allow(dead_code))]

use std::path::{Path, PathBuf};
use std::sync::Arc;
#[cfg(feature = "persistent-queue")]
use std::thread::JoinHandle;
use std::time::Duration;
#[cfg(feature = "persistent-queue")]
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;
#[cfg(feature = "persistent-queue")]
use crossbeam_channel::{Receiver, RecvTimeoutError};
#[cfg(feature = "persistent-queue")]
use rusqlite::{Connection, TransactionBehavior, params};

use super::outbox::Outbox;
use super::state::JobId;

/// How long a write waits for a lock held by another process before it
/// fails (SQLite's busy timeout).
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a failing store tries a probe transaction.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a probe waits for a lock.
#[cfg(feature = "persistent-queue")]
const PROBE_BUSY_TIMEOUT: Duration = Duration::from_millis(100);

/// When rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Before JOB_CREATED is sent (group commit).
    Sync,
    /// Only when the server stops, in one transaction that replaces the rows
    /// found at start (kept if it fails).
    OnShutdown,
}

impl Durability {
    /// The name the admin command `store` shows.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Durability::Sync => "sync",
            Durability::OnShutdown => "on-shutdown",
        }
    }
}

/// A background job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredJob {
    pub(crate) key: u64,
    pub(crate) function: Vec<u8>,
    pub(crate) unique: Vec<u8>,
    pub(crate) priority: u8,
    pub(crate) data: Vec<u8>,
    /// Unix time before which the job does not run (0: now).
    pub(crate) when: u64,
}

/// Who waits for a commit: the outbox holding a JOB_CREATED, and the
/// sequence number of its hold.
pub(crate) type Notify = (Arc<Outbox>, u64);

#[derive(Debug)]
pub(crate) enum Op {
    /// Write the row of this job.
    Add(JobId, StoredJob),
    /// Delete a row.
    Done(u64),
    /// Replace the whole table with these jobs (shutdown dump).
    Dump(Vec<StoredJob>),
}

/// Whether the store can write, as the admin command `store` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Health {
    /// Rows in the table after the last commit.
    pub(crate) rows: u64,
    /// Unix time the current failure started; `None` while writes succeed.
    pub(crate) failing_since: Option<u64>,
    /// The last failure (`persistent queue PATH: CAUSE`).
    pub(crate) error: String,
}

/// What one transaction did, reported to the state.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The rows it was to add: job and key.
    pub(crate) added: Vec<(JobId, u64)>,
    /// `None` when it committed, else the failure (`persistent queue PATH: CAUSE`).
    pub(crate) error: Option<String>,
    pub(crate) health: Health,
}

/// Receives every outcome on the writer thread.
pub(crate) type Reporter = Box<dyn FnMut(Outcome) + Send>;

/// The sending side, kept in the server state.
#[derive(Debug)]
pub(crate) struct StoreLink {
    tx: Sender<Op>,
    pub(crate) durability: Durability,
    pub(crate) path: PathBuf,
    pub(crate) next_key: u64,
    next_seq: u64,
    /// As of the last outcome.
    pub(crate) health: Health,
}

impl StoreLink {
    /// A link whose operations go to `tx` (for tests of the state).
    #[cfg(test)]
    pub(crate) fn for_test(tx: Sender<Op>) -> StoreLink {
        StoreLink {
            tx,
            durability: Durability::Sync,
            path: PathBuf::from("q.db"),
            next_key: 1,
            next_seq: 0,
            health: Health::default(),
        }
    }

    /// A fresh sequence number for a hold.
    pub(crate) fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// A fresh row key.
    pub(crate) fn next_key(&mut self) -> u64 {
        let k = self.next_key;
        self.next_key += 1;
        k
    }

    pub(crate) fn add(&self, job: JobId, row: StoredJob) {
        if self.durability == Durability::Sync {
            let _ = self.tx.send(Op::Add(job, row));
        }
    }

    pub(crate) fn done(&self, key: u64) {
        if self.durability == Durability::Sync {
            let _ = self.tx.send(Op::Done(key));
        }
    }

    pub(crate) fn dump(&self, jobs: Vec<StoredJob>) {
        let _ = self.tx.send(Op::Dump(jobs));
    }
}

/// The database, opened and read, before its writer thread starts.
#[derive(Debug)]
#[cfg(feature = "persistent-queue")]
pub(crate) struct Writer {
    db: Connection,
    path: PathBuf,
    rx: Receiver<Op>,
    rows: u64,
}

/// The writer thread's handle; dropping the link's sender and joining it
/// commits what is left.
#[derive(Debug)]
#[cfg(feature = "persistent-queue")]
pub(crate) struct StoreThread {
    handle: Option<JoinHandle<Result<(), String>>>,
}

#[cfg(feature = "persistent-queue")]
impl StoreThread {
    /// Waits for the writer; the error of a shutdown dump that failed.
    pub(crate) fn join(mut self) -> Result<(), String> {
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err("the persistent queue writer stopped unexpectedly".into()),
            None => Ok(()),
        }
    }
}

#[cfg(feature = "persistent-queue")]
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS gearframe_queue (
        id INTEGER PRIMARY KEY,
        function BLOB NOT NULL,
        unique_id BLOB NOT NULL,
        priority INTEGER NOT NULL,
        data BLOB NOT NULL,
        when_to_run INTEGER NOT NULL DEFAULT 0
    );";

#[cfg(feature = "persistent-queue")]
fn open_db(path: &Path) -> rusqlite::Result<Connection> {
    let db = Connection::open(path)?;
    db.busy_timeout(BUSY_TIMEOUT)?;
    db.execute_batch(SCHEMA)?;
    // The table must have the queue's columns before the file is switched
    // to WAL, so a database that is refused is left as it was.
    db.prepare(&format!("{SELECT_JOBS} LIMIT 0"))?;
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(None, "synchronous", "FULL")?;
    Ok(db)
}

/// Reads every stored job (the columns `load` expects).
#[cfg(feature = "persistent-queue")]
const SELECT_JOBS: &str =
    "SELECT id, function, unique_id, priority, data, when_to_run FROM gearframe_queue";

#[cfg(feature = "persistent-queue")]
fn load(db: &Connection) -> rusqlite::Result<Vec<StoredJob>> {
    let mut stmt = db.prepare(&format!("{SELECT_JOBS} ORDER BY id"))?;
    let rows = stmt.query_map([], |r| {
        Ok(StoredJob {
            key: r.get::<_, i64>(0)? as u64,
            function: r.get(1)?,
            unique: r.get(2)?,
            priority: r.get::<_, i64>(3)?.clamp(0, 2) as u8,
            data: r.get(4)?,
            when: r.get::<_, i64>(5)?.max(0) as u64,
        })
    })?;
    rows.collect()
}

/// Opens (or creates) the queue at `path`; returns the stored jobs to queue
/// again, the link for the state and the writer, to start with [`spawn`].
///
/// # Errors
/// The database cannot be opened, created or read.
#[cfg(feature = "persistent-queue")]
pub(crate) fn open(
    path: &Path,
    durability: Durability,
) -> Result<(Vec<StoredJob>, StoreLink, Writer), String> {
    let err = |e: rusqlite::Error| format!("persistent queue {}: {e}", path.display());
    let db = open_db(path).map_err(err)?;
    let jobs = load(&db).map_err(err)?;
    let next_key = jobs.iter().map(|j| j.key).max().unwrap_or(0) + 1;
    let (tx, rx) = crossbeam_channel::unbounded();
    let rows = jobs.len() as u64;
    log::info!("persistent queue {} opened: {} jobs to restore", path.display(), jobs.len());
    let link = StoreLink {
        tx,
        durability,
        path: path.to_path_buf(),
        next_key,
        next_seq: 0,
        health: Health { rows, ..Health::default() },
    };
    Ok((jobs, link, Writer { db, path: path.to_path_buf(), rx, rows }))
}

/// Starts the writer thread; `report` gets the outcome of every transaction.
///
/// # Errors
/// The thread cannot be started.
#[cfg(feature = "persistent-queue")]
pub(crate) fn spawn(w: Writer, report: Reporter) -> Result<StoreThread, String> {
    let handle = std::thread::Builder::new()
        .name("gearframe-store".into())
        .spawn(move || run(w, report))
        .map_err(|e| format!("cannot start the persistent queue writer: {e}"))?;
    Ok(StoreThread { handle: Some(handle) })
}

/// No database without the `persistent-queue` feature.
#[cfg(not(feature = "persistent-queue"))]
#[derive(Debug)]
pub(crate) enum Writer {}

/// No writer thread without the `persistent-queue` feature.
#[cfg(not(feature = "persistent-queue"))]
#[derive(Debug)]
pub(crate) enum StoreThread {}

#[cfg(not(feature = "persistent-queue"))]
impl StoreThread {
    pub(crate) fn join(self) -> Result<(), String> {
        match self {}
    }
}

/// Refuses `path`: this build has no SQLite.
///
/// # Errors
/// Always, naming the path and the missing feature.
#[cfg(not(feature = "persistent-queue"))]
pub(crate) fn open(
    path: &Path,
    _durability: Durability,
) -> Result<(Vec<StoredJob>, StoreLink, Writer), String> {
    Err(format!(
        "persistent queue {}: this build of gearframe lacks the persistent-queue feature; \
         rebuild with `--features persistent-queue` or run without a queue",
        path.display()
    ))
}

#[cfg(not(feature = "persistent-queue"))]
pub(crate) fn spawn(w: Writer, _report: Reporter) -> Result<StoreThread, String> {
    match w {}
}

/// Most operations in one transaction.
#[cfg(feature = "persistent-queue")]
const MAX_BATCH: usize = 20_000;

#[cfg(feature = "persistent-queue")]
fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(feature = "persistent-queue")]
fn run(w: Writer, mut report: Reporter) -> Result<(), String> {
    let Writer { mut db, path, rx, rows } = w;
    let mut health = Health { rows, ..Health::default() };
    // Deletions that failed, tried again with every transaction.
    let mut deletes: Vec<u64> = Vec::new();
    let mut dump_error = Ok(());
    let mut last_failure: Option<Instant> = None;
    let mut batch: Vec<Op> = Vec::new();
    loop {
        let first = if health.failing_since.is_some() {
            match rx.recv_timeout(PROBE_EVERY) {
                Ok(op) => Some(op),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(op) => Some(op),
                Err(_) => break,
            }
        };
        batch.extend(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        // A probe waits only briefly for a lock, so that a submission
        // arriving meanwhile is not delayed by it.
        let probe = batch.is_empty();
        if probe {
            let _ = db.busy_timeout(PROBE_BUSY_TIMEOUT);
        }
        let result = apply(&mut db, &batch, &deletes, health.rows);
        if probe {
            let _ = db.busy_timeout(BUSY_TIMEOUT);
        }
        let error = match result {
            Ok(rows) => {
                // The failure ends once writes succeed for a probe interval:
                // a nearly full disk alternates and is one failure.
                let settled = last_failure.is_none_or(|t| t.elapsed() >= PROBE_EVERY);
                if settled && health.failing_since.take().is_some() {
                    // A warning, so that whoever saw the failure at the
                    // default level also sees it end.
                    log::warn!(
                        "persistent queue {}: writes succeed again; background submissions are \
                         accepted",
                        path.display()
                    );
                }
                health.rows = rows;
                deletes.clear();
                None
            }
            Err(e) => {
                let text = format!("persistent queue {}: {e}", path.display());
                last_failure = Some(Instant::now());
                if health.failing_since.is_none() {
                    log::error!(
                        "{text}; background submissions get QUEUE_ERROR until the database \
                         can be written again (retried every {}s)",
                        PROBE_EVERY.as_secs()
                    );
                    health.failing_since = Some(unix_now());
                } else {
                    log::debug!("{text}: still failing");
                }
                health.error = text.clone();
                Some(text)
            }
        };
        let mut added = Vec::new();
        for op in batch.drain(..) {
            match op {
                Op::Add(job, row) => added.push((job, row.key)),
                Op::Done(key) if error.is_some() => deletes.push(key),
                Op::Done(_) => {}
                Op::Dump(jobs) => {
                    if let Some(e) = &error {
                        let msg = format!(
                            "{e}: {} background jobs were not saved at stop (the rows stored \
                             before are kept and run at the next start); free space or release \
                             the database before stopping",
                            jobs.len()
                        );
                        log::error!("{msg}");
                        dump_error = Err(msg);
                    } else {
                        log::info!(
                            "persistent queue {}: {} background jobs saved",
                            path.display(),
                            jobs.len()
                        );
                    }
                }
            }
        }
        report(Outcome { added, error, health: health.clone() });
    }
    if !deletes.is_empty() {
        match apply(&mut db, &[], &deletes, health.rows) {
            Ok(_) => {}
            Err(e) => log::warn!(
                "persistent queue {}: {e}: {} finished jobs are still stored and run again \
                 after a restart",
                path.display(),
                deletes.len()
            ),
        }
    }
    dump_error
}

/// Bytes written (and deleted again) by a probe transaction: a write of
/// about the size of a job must fit for the store to count as writable.
#[cfg(feature = "persistent-queue")]
const PROBE_BYTES: i32 = 4096;

/// Applies the batch (and the deletions left from failed transactions) in
/// one transaction; returns the rows in the table afterwards, given the
/// `rows` before. An empty batch is a probe: it writes and deletes a
/// scratch row.
#[cfg(feature = "persistent-queue")]
fn apply(db: &mut Connection, batch: &[Op], deletes: &[u64], rows: u64) -> rusqlite::Result<u64> {
    let mut rows = rows;
    let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR REPLACE INTO gearframe_queue (id, function, unique_id, priority, data, when_to_run)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut delete = tx.prepare_cached("DELETE FROM gearframe_queue WHERE id = ?1")?;
        // Keys are never reused, so every insert is a new row.
        let mut put = |j: &StoredJob| {
            insert
                .execute(params![
                    j.key as i64,
                    j.function,
                    j.unique,
                    i64::from(j.priority),
                    j.data,
                    j.when as i64
                ])
                .map(drop)
        };
        for key in deletes {
            rows = rows.saturating_sub(delete.execute(params![*key as i64])? as u64);
        }
        for op in batch {
            match op {
                Op::Add(_, j) => {
                    put(j)?;
                    rows += 1;
                }
                Op::Done(key) => {
                    rows = rows.saturating_sub(delete.execute(params![*key as i64])? as u64);
                }
                Op::Dump(jobs) => {
                    tx.execute("DELETE FROM gearframe_queue", [])?;
                    for j in jobs {
                        put(j)?;
                    }
                    rows = jobs.len() as u64;
                }
            }
        }
        if batch.is_empty() {
            tx.execute(
                "INSERT INTO gearframe_queue (id, function, unique_id, priority, data)
                 VALUES (-1, x'', x'', 1, zeroblob(?1))",
                params![PROBE_BYTES],
            )?;
            tx.execute("DELETE FROM gearframe_queue WHERE id = -1", [])?;
        }
    }
    tx.commit()?;
    Ok(rows)
}

#[cfg(all(test, feature = "persistent-queue"))]
mod tests {
    use super::*;

    fn row(key: u64) -> StoredJob {
        StoredJob {
            key,
            function: b"f".to_vec(),
            unique: Vec::new(),
            priority: 1,
            data: vec![0, key as u8],
            when: 0,
        }
    }

    /// Starts the writer, sending every outcome to the returned channel.
    fn start(w: Writer) -> (StoreThread, Receiver<Outcome>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = spawn(
            w,
            Box::new(move |o| {
                let _ = tx.send(o);
            }),
        )
        .unwrap();
        (thread, rx)
    }

    #[test]
    fn rows_survive_a_reopen_and_done_deletes_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let (jobs, link, w) = open(&path, Durability::Sync).unwrap();
        assert!(jobs.is_empty());
        let (thread, outcomes) = start(w);
        for key in 1..=3 {
            link.add(key, row(key));
        }
        link.done(2);
        drop(link);
        thread.join().unwrap();
        let seen: Vec<Outcome> = outcomes.iter().collect();
        assert!(seen.iter().all(|o| o.error.is_none()), "{seen:?}");
        assert_eq!(
            seen.iter().flat_map(|o| o.added.iter().map(|a| a.1)).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(seen.last().unwrap().health.rows, 2);
        let (jobs, link, w) = open(&path, Durability::Sync).unwrap();
        assert_eq!(jobs.iter().map(|j| j.key).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(jobs[1].data, [0, 3]);
        assert_eq!(link.next_key, 4);
        assert_eq!(link.health.rows, 2);
        drop(link);
        start(w).0.join().unwrap();
    }

    #[test]
    fn a_failed_write_is_reported_and_its_deletes_are_retried() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let (_, link, w) = open(&path, Durability::Sync).unwrap();
        let (thread, outcomes) = start(w);
        link.add(1, row(1));
        link.add(2, row(2));
        assert!(outcomes.recv().unwrap().error.is_none());
        // Another connection holds the write lock longer than the busy timeout.
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        link.done(1);
        link.add(3, row(3));
        let failed = outcomes.recv().unwrap();
        let error = failed.error.expect("the write fails while locked");
        assert!(error.contains("q.db") && error.contains("locked"), "{error}");
        assert_eq!(failed.added, [(3, 3)]);
        assert!(failed.health.failing_since.is_some());
        other.execute_batch("ROLLBACK").unwrap();
        // The probe recovers by itself, with the failed delete applied.
        let recovered = outcomes
            .iter()
            .find(|o| o.health.failing_since.is_none())
            .expect("the writer recovers");
        assert!(recovered.error.is_none());
        assert_eq!(recovered.health.rows, 1);
        drop(link);
        thread.join().unwrap();
        let (jobs, _, _) = open(&path, Durability::Sync).unwrap();
        assert_eq!(jobs.iter().map(|j| j.key).collect::<Vec<_>>(), [2]);
    }
}

#[cfg(all(test, not(feature = "persistent-queue")))]
mod without_sqlite_tests {
    use crate::server::{Server, ServerConfig};

    #[test]
    fn a_queue_is_refused_naming_the_feature() {
        let e = crate::config::parse_queue("sqlite:q.db").unwrap_err();
        assert!(e.contains("persistent-queue feature"), "{e}");
        let dir = std::env::temp_dir().join(format!("gearframe-noqueue-{}", std::process::id()));
        let config = ServerConfig {
            listen: "127.0.0.1:0".into(),
            queue: Some(dir.join("q.db")),
            ..ServerConfig::default()
        };
        let e = Server::bind(config).expect_err("a server with a queue");
        let msg = e.to_string();
        assert!(msg.contains("persistent-queue feature") && msg.contains("q.db"), "{msg}");
        assert!(!dir.exists(), "nothing is created");
    }

    #[test]
    fn the_in_memory_queue_serves() {
        use crate::conn::Connection;
        use crate::proto::{Packet, PacketType};
        let config = ServerConfig { listen: "127.0.0.1:0".into(), ..ServerConfig::default() };
        let server = Server::bind(config).unwrap();
        let addr = server.local_addr().to_string();
        let mut c = Connection::connect(&addr, std::time::Duration::from_secs(10)).unwrap();
        c.send(&Packet::EchoReq { data: b"hi" }).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let reply = c.recv(Some(deadline)).unwrap();
        assert_eq!((reply.kind, reply.body.as_slice()), (PacketType::EchoRes, b"hi".as_slice()));
        server.shutdown();
        server.join();
    }
}
