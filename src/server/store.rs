//! The persistent queue: background jobs in SQLite, written by one thread
//! with group commit.
//!
//! In `Sync` mode every new background job is written before its
//! JOB_CREATED leaves the server: the JOB_CREATED (and every later reply on
//! that connection) is held in the connection's outbox until the commit that
//! contains the row has returned, then released. While one transaction
//! commits, further jobs queue up on the channel and go into the next one,
//! so a busy server pays one fsync for many jobs. A row is deleted when its
//! job completes, fails for good or is cancelled. On start every row is
//! queued again, whatever its unique id (empty ones included), with its
//! function, priority, payload and due time.
//!
//! In `OnShutdown` mode nothing is written while the server runs; the
//! background jobs still held are written when it stops (a crash loses them).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use rusqlite::{Connection, params};

use super::outbox::Outbox;

/// When rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Before JOB_CREATED is sent (group commit).
    Sync,
    /// Only when the server stops.
    OnShutdown,
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
/// sequence number its hold was registered with.
pub(crate) type Notify = (Arc<Outbox>, u64);

#[derive(Debug)]
enum Op {
    Add(StoredJob, Option<Notify>),
    Done(u64),
    /// Nothing to write; release the waiter once everything before is committed.
    Barrier(Notify),
    /// Replace the whole table with these jobs (shutdown dump).
    Dump(Vec<StoredJob>),
}

/// The sending side, kept in the server state.
#[derive(Debug)]
pub(crate) struct StoreLink {
    tx: Sender<Op>,
    pub(crate) durability: Durability,
    pub(crate) next_key: u64,
    next_seq: u64,
}

impl StoreLink {
    /// A fresh sequence number for a hold.
    pub(crate) fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    pub(crate) fn add(&self, job: StoredJob, notify: Option<Notify>) {
        if self.durability == Durability::Sync {
            let _ = self.tx.send(Op::Add(job, notify));
        }
    }

    pub(crate) fn done(&self, key: u64) {
        if self.durability == Durability::Sync {
            let _ = self.tx.send(Op::Done(key));
        }
    }

    pub(crate) fn barrier(&self, notify: Notify) {
        let _ = self.tx.send(Op::Barrier(notify));
    }

    pub(crate) fn dump(&self, jobs: Vec<StoredJob>) {
        let _ = self.tx.send(Op::Dump(jobs));
    }
}

/// The writer thread's handle; dropping the link's sender and joining it
/// commits what is left.
#[derive(Debug)]
pub(crate) struct StoreThread {
    handle: Option<JoinHandle<()>>,
}

impl StoreThread {
    pub(crate) fn join(mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS gearframe_queue (
        id INTEGER PRIMARY KEY,
        function BLOB NOT NULL,
        unique_id BLOB NOT NULL,
        priority INTEGER NOT NULL,
        data BLOB NOT NULL,
        when_to_run INTEGER NOT NULL DEFAULT 0
    );";

fn open_db(path: &Path) -> rusqlite::Result<Connection> {
    let db = Connection::open(path)?;
    db.busy_timeout(Duration::from_secs(5))?;
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(None, "synchronous", "FULL")?;
    db.execute_batch(SCHEMA)?;
    Ok(db)
}

fn load(db: &Connection) -> rusqlite::Result<Vec<StoredJob>> {
    let mut stmt = db.prepare(
        "SELECT id, function, unique_id, priority, data, when_to_run FROM gearframe_queue ORDER BY id",
    )?;
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

/// Opens (or creates) the queue at `path`, returns the stored jobs to queue
/// again, the link for the state and the writer thread.
///
/// # Errors
/// The database cannot be opened, created or read.
pub(crate) fn open(
    path: &Path,
    durability: Durability,
) -> Result<(Vec<StoredJob>, StoreLink, StoreThread), String> {
    let err = |e: rusqlite::Error| format!("persistent queue {}: {e}", path.display());
    let db = open_db(path).map_err(err)?;
    let jobs = load(&db).map_err(err)?;
    if durability == Durability::OnShutdown {
        // They live in memory now and are written again at the next stop.
        db.execute("DELETE FROM gearframe_queue", []).map_err(err)?;
    }
    let next_key = jobs.iter().map(|j| j.key).max().unwrap_or(0) + 1;
    let (tx, rx) = crossbeam_channel::unbounded();
    let owned: PathBuf = path.to_path_buf();
    let handle = std::thread::Builder::new()
        .name("gearframe-store".into())
        .spawn(move || run(db, &owned, &rx))
        .map_err(|e| format!("cannot start the queue writer: {e}"))?;
    log::info!("persistent queue {} opened: {} jobs to restore", path.display(), jobs.len());
    Ok((
        jobs,
        StoreLink { tx, durability, next_key, next_seq: 0 },
        StoreThread { handle: Some(handle) },
    ))
}

/// Most operations in one transaction.
const MAX_BATCH: usize = 20_000;

fn run(mut db: Connection, path: &Path, rx: &Receiver<Op>) {
    let mut batch: Vec<Op> = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut result = apply(&mut db, &batch);
        if let Err(e) = &result {
            log::error!("persistent queue {}: write failed: {e}; retrying once", path.display());
            std::thread::sleep(Duration::from_millis(100));
            result = apply(&mut db, &batch);
        }
        let ok = match result {
            Ok(()) => true,
            Err(e) => {
                log::error!(
                    "persistent queue {}: write failed again: {e}; dropping the connections \
                     waiting for it so their clients submit again",
                    path.display()
                );
                false
            }
        };
        for op in batch.drain(..) {
            let notify = match op {
                Op::Add(_, Some(n)) | Op::Barrier(n) => n,
                _ => continue,
            };
            if ok {
                notify.0.release(notify.1);
            } else {
                notify.0.shutdown_socket();
            }
        }
    }
}

fn apply(db: &mut Connection, batch: &[Op]) -> rusqlite::Result<()> {
    let tx = db.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR REPLACE INTO gearframe_queue (id, function, unique_id, priority, data, when_to_run)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut delete = tx.prepare_cached("DELETE FROM gearframe_queue WHERE id = ?1")?;
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
        for op in batch {
            match op {
                Op::Add(j, _) => put(j)?,
                Op::Done(key) => {
                    delete.execute(params![*key as i64])?;
                }
                Op::Barrier(_) => {}
                Op::Dump(jobs) => {
                    tx.execute("DELETE FROM gearframe_queue", [])?;
                    for j in jobs {
                        put(j)?;
                    }
                }
            }
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_survive_a_reopen_and_done_deletes_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let (jobs, link, thread) = open(&path, Durability::Sync).unwrap();
        assert!(jobs.is_empty());
        for key in 1..=3 {
            link.add(
                StoredJob {
                    key,
                    function: b"f".to_vec(),
                    unique: Vec::new(),
                    priority: 1,
                    data: vec![0, key as u8],
                    when: 0,
                },
                None,
            );
        }
        link.done(2);
        drop(link);
        thread.join();
        let (jobs, link, thread) = open(&path, Durability::Sync).unwrap();
        assert_eq!(jobs.iter().map(|j| j.key).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(jobs[1].data, [0, 3]);
        assert_eq!(link.next_key, 4);
        drop(link);
        thread.join();
    }
}
