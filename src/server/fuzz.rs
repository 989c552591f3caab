//! A hook for fuzzers: arbitrary byte streams from a few connections, fed
//! through the same path as a connection's reader thread (decoder, then
//! `State::handle_frame` under the state, protocol errors answered and the
//! connection closed), with the state's invariants checked after every step.
//!
//! Only built with the `fuzzing` feature. Nothing here opens a socket: the
//! outboxes have no stream, so their bytes are discarded when flushed.
//!
//! # Input format
//!
//! The first byte picks the settings (see [`settings`]). The rest is a
//! sequence of steps, each starting with an op byte `b`:
//!
//! - `b & 3` in `0..=2`: connection `b & 3` receives the next `n` bytes,
//!   where `n` is the byte after `b` (a read of up to 255 bytes);
//! - `b & 3 == 3`, by `(b >> 2) & 3`:
//!   - `0`: every timer fires, as if an hour had passed;
//!   - `1`: connection `(b >> 4) % 3` disconnects, and a new one takes its place;
//!   - `2`: the outboxes are flushed (replies discarded);
//!   - `3`: connection `(b >> 4) % 3` receives the rest of the input.
//!
//! Connection 2 comes from a non-loopback address, so it is refused by an
//! `admin_allow` of `127.0.0.0/8` and by `shutdown`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::outbox::Outbox;
use super::state::{ConnId, Control, JobState, Owner, Sleep, State};
use super::{AddrRule, ServerConfig};
use crate::proto::{DEFAULT_MAX_LINE, Decoder};

/// Connections fed at once.
const CONNS: usize = 3;
/// Largest body the fuzzed decoders accept.
const MAX_BODY: u32 = 1 << 16;
/// Outbox limit: small, so that the "peer does not read" path is reached.
const MAX_OUTBOX: usize = 16 << 10;

/// Settings chosen by the first input byte: bit 0 job retries (0 or 2),
/// bit 1 round robin, bit 2 one NOOP per job, bit 3 exceptions on, bit 4 a
/// job limit of 8, bit 5 a payload limit of 512 bytes, bit 6 a maxqueue of
/// 3, bit 7 an admin allow-list of `127.0.0.0/8`.
fn settings(b: u8) -> ServerConfig {
    let bit = |n: u8| b & (1 << n) != 0;
    ServerConfig {
        job_retries: if bit(0) { 2 } else { 0 },
        worker_wakeup: u32::from(bit(2)),
        round_robin: bit(1),
        exceptions: bit(3),
        max_queue: if bit(6) { 3 } else { 0 },
        max_jobs: if bit(4) { 8 } else { 0 },
        max_payload_bytes: if bit(5) { 512 } else { 0 },
        admin_allow: if bit(7) {
            vec!["127.0.0.0/8".parse::<AddrRule>().expect("a valid rule")]
        } else {
            Vec::new()
        },
        ..ServerConfig::default()
    }
}

struct Peer {
    id: ConnId,
    decoder: Decoder,
}

struct Harness {
    state: State,
    peers: Vec<Option<Peer>>,
    next_id: ConnId,
}

impl Harness {
    fn connect(&mut self, slot: usize) {
        let id = self.next_id;
        self.next_id += 1;
        let ip: IpAddr = if slot == 2 { [192, 0, 2, 7].into() } else { [127, 0, 0, 1].into() };
        let out = Arc::new(Outbox::new(None, MAX_OUTBOX));
        self.state.add_conn(id, id as i64, Some(ip), out);
        self.peers[slot] =
            Some(Peer { id, decoder: Decoder::new(MAX_BODY).with_max_line(DEFAULT_MAX_LINE) });
    }

    fn disconnect(&mut self, slot: usize) {
        if let Some(p) = self.peers[slot].take() {
            self.state.remove_conn(p.id);
        }
    }

    /// What a reader thread does with the bytes of one read.
    fn read(&mut self, slot: usize, bytes: &[u8]) {
        if self.peers[slot].is_none() {
            self.connect(slot);
        }
        let Some(peer) = self.peers[slot].as_mut() else { return };
        peer.decoder.push(bytes);
        let mut close = false;
        loop {
            match peer.decoder.next_frame() {
                Ok(Some(frame)) => {
                    if self.state.handle_frame(peer.id, frame) == Control::Close {
                        close = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.state.protocol_error(peer.id, &e);
                    close = true;
                    break;
                }
            }
        }
        self.flush();
        if close {
            self.disconnect(slot);
        }
    }

    fn flush(&mut self) {
        self.state.timers_changed = false;
        for out in std::mem::take(&mut self.state.dirty) {
            out.flush();
        }
    }
}

/// Feeds `data` (see the module documentation for its format) to a fresh
/// server state and panics if an invariant of the state breaks.
pub fn fuzz_connection_bytes(data: &[u8]) {
    let Some((&first, mut rest)) = data.split_first() else { return };
    let mut h = Harness {
        state: State::new(Arc::new(settings(first)), b"H:fuzz".to_vec()),
        peers: Vec::new(),
        next_id: 1,
    };
    h.peers.resize_with(CONNS, || None);
    for slot in 0..CONNS {
        h.connect(slot);
    }
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let slot = usize::from(op & 3);
        if slot < CONNS {
            let n = rest.first().map_or(0, |&n| usize::from(n)).min(rest.len().saturating_sub(1));
            let chunk = rest.get(1..1 + n).unwrap_or_default();
            rest = rest.get(1 + n..).unwrap_or_default();
            h.read(slot, chunk);
        } else {
            let target = usize::from(op >> 4) % CONNS;
            match (op >> 2) & 3 {
                0 => {
                    h.state.run_timers(Instant::now() + Duration::from_secs(3600));
                    h.flush();
                }
                1 => {
                    h.disconnect(target);
                    h.flush();
                    h.connect(target);
                }
                2 => h.flush(),
                _ => {
                    h.read(target, rest);
                    rest = &[];
                }
            }
        }
        check(&h.state);
    }
    for slot in 0..CONNS {
        h.disconnect(slot);
    }
    h.flush();
    check(&h.state);
    assert!(
        h.state.jobs.values().all(|j| !matches!(j.state, JobState::Running { .. })),
        "a job is still running after every connection left"
    );
}

/// Panics when the state contradicts itself.
fn check(st: &State) {
    let mut payload = 0usize;
    for (&id, job) in &st.jobs {
        let f = st.functions.get(job.func).unwrap_or_else(|| panic!("job {id}: no function"));
        payload += job.data.len();
        // An ignored job is reaped unrun, or runs without anyone to tell.
        assert!(
            job.owner != Owner::Ignored || job.clients.is_empty(),
            "ignored job {id} has listening clients"
        );
        let in_queue = f.queues.iter().flatten().filter(|&&q| q == id).count();
        match job.state {
            JobState::Queued => assert_eq!(
                f.queues[job.priority.index()].iter().filter(|&&q| q == id).count(),
                1,
                "queued job {id} must be in its queue once"
            ),
            JobState::Scheduled => assert_eq!(in_queue, 0, "scheduled job {id} is in a queue"),
            JobState::Storing => assert_eq!(in_queue, 0, "storing job {id} is in a queue"),
            JobState::Running { conn, .. } => {
                assert_eq!(in_queue, 0, "running job {id} is in a queue");
                let c = st
                    .conns
                    .get(&conn)
                    .unwrap_or_else(|| panic!("job {id} runs on connection {conn}, which is gone"));
                assert_eq!(
                    c.running.iter().filter(|&&j| j == id).count(),
                    1,
                    "job {id} is not in its worker's running list once"
                );
            }
        }
        for &c in &job.clients {
            let conn = st.conns.get(&c).unwrap_or_else(|| panic!("job {id}: client {c} is gone"));
            let n = job.clients.iter().filter(|&&x| x == c).count() as u32;
            assert_eq!(conn.attached.get(&id).copied(), Some(n), "job {id}: attachment count");
        }
    }
    assert_eq!(st.payload_bytes, payload, "payload byte count");
    for (fid, f) in st.functions.iter().enumerate() {
        let of = |pred: &dyn Fn(&JobState) -> bool| {
            st.jobs.values().filter(|j| j.func == fid && pred(&j.state)).count() as u32
        };
        let name = String::from_utf8_lossy(&f.name);
        assert_eq!(f.job_total, of(&|_| true), "{name}: job_total");
        assert_eq!(
            f.job_running,
            of(&|s| matches!(s, JobState::Running { .. })),
            "{name}: running"
        );
        assert_eq!(f.scheduled as u32, of(&|s| *s == JobState::Scheduled), "{name}: scheduled");
        assert_eq!(st.func_index.get(&f.name), Some(&fid), "{name}: index");
        for (map, what) in [(&f.uniques, "unique"), (&f.by_data, "data")] {
            for (key, id) in map {
                let job = st.jobs.get(id).unwrap_or_else(|| {
                    panic!("{name}: {what} {:?} names job {id}, which is gone", key.escape_ascii())
                });
                assert_eq!(job.func, fid, "{name}: {what} map names a job of another function");
            }
        }
        for &w in &f.workers {
            let c = st.conns.get(&w).unwrap_or_else(|| panic!("{name}: worker {w} is gone"));
            let registered = c.abilities.iter().filter(|a| a.func == fid).count();
            let listed = f.workers.iter().filter(|&&x| x == w).count();
            assert_eq!(registered, listed, "{name}: registrations of connection {w}");
        }
    }
    assert_eq!(st.func_index.len(), st.functions.len(), "function index size");
    // With every sleeper woken for each job, none that takes pushed jobs
    // sleeps while a job it can do waits.
    if st.config.worker_wakeup == 0 {
        for (&cid, c) in &st.conns {
            if !(c.push && c.sleep == Sleep::Asleep) {
                continue;
            }
            for a in &c.abilities {
                let waiting = st.functions[a.func]
                    .queues
                    .iter()
                    .flatten()
                    .any(|j| st.jobs.get(j).is_some_and(|job| job.owner != Owner::Ignored));
                assert!(!waiting, "connection {cid} sleeps with pushed jobs on while one waits");
            }
        }
    }
    for (&cid, c) in &st.conns {
        for &j in &c.running {
            assert!(
                st.jobs.get(&j).is_some_and(
                    |job| matches!(job.state, JobState::Running { conn, .. } if conn == cid)
                ),
                "connection {cid} lists job {j} as running, but it is not running there"
            );
        }
        for (&j, &n) in &c.attached {
            let listed = st
                .jobs
                .get(&j)
                .map_or(0, |job| job.clients.iter().filter(|&&x| x == cid).count() as u32);
            assert_eq!(listed, n, "connection {cid}: attachment to job {j}");
        }
        for a in &c.abilities {
            assert!(
                st.functions.get(a.func).is_some_and(|f| f.workers.contains(&cid)),
                "connection {cid}: a registration the function does not list"
            );
        }
    }
}
