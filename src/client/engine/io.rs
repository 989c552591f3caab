//! The sockets of a call: the driver that carries out a [`Lane`]'s steps on
//! a [`Connection`], and the two loops that run a call. A call that can
//! have only one lane busy at a time (one job, or one server) runs its
//! lanes and its coordinator on the calling thread; otherwise each lane has
//! a thread, and the calling thread runs the coordinator, so that one slow
//! server does not hold up the others.
//!
//! A lane thread waits on its socket with its own deadline, and is woken
//! by the coordinator's commands: each command on the lane's channel is
//! followed by a byte on the lane's wake socket, which the lane's reads
//! watch too. The coordinator waits for reports until its next deadline.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, unbounded};

use super::coord::{Command, Coordinator};
use super::lane::{Lane, Report, Step};
use super::{ClientConfig, ServerEntry, Submission};
use crate::conn::Connection;

/// A lane and its connection.
struct LaneIo<'a> {
    idx: usize,
    lane: Lane<'a>,
    slot: &'a ServerEntry,
    set: &'a ClientConfig,
    conn: Option<Connection>,
}

impl<'a> LaneIo<'a> {
    fn new(
        idx: usize,
        set: &'a ClientConfig,
        slots: &'a [ServerEntry],
        subs: &'a [Submission<'a>],
    ) -> Self {
        let slot = &slots[idx];
        LaneIo { idx, lane: Lane::new(slot.addr.clone(), set, subs), slot, set, conn: None }
    }

    fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(jobs) => self.lane.submit(jobs),
            Command::Cancel(jobs) => self.lane.cancel(&jobs),
        }
    }

    /// Takes an idle connection (unless `fresh`) or opens one. Returns the
    /// moment to try again when the server is backing off.
    fn connect(&mut self, fresh: bool) -> Option<Instant> {
        if !fresh {
            if let Some(c) = self.slot.take_idle() {
                self.conn = Some(c);
                self.lane.connected(true);
                return None;
            }
        }
        if let Some(at) = self.slot.retry_at() {
            if at > Instant::now() {
                return Some(at);
            }
        }
        match self.slot.dial(self.set) {
            Ok(c) => {
                self.conn = Some(c);
                self.lane.connected(false);
            }
            Err(e) => self.lane.connect_failed(e),
        }
        None
    }

    fn send(&mut self, packets: &[crate::proto::Packet<'_>]) {
        let Some(conn) = self.conn.as_mut() else { return };
        let r = packets.iter().try_for_each(|p| conn.queue(p)).and_then(|()| conn.flush());
        if let Err(e) = r {
            self.lane.send_failed(&e, Instant::now());
        }
    }

    /// Reads what arrives until `deadline`, or until `wake` is readable;
    /// then every packet already buffered.
    fn recv(&mut self, deadline: Option<Instant>, wake: Option<&UnixStream>) {
        let Some(conn) = self.conn.as_mut() else { return };
        let first = match wake {
            Some(w) => conn.recv_or_wake(deadline, w.as_fd()),
            None => conn.recv(deadline).map(Some),
        };
        match first {
            Ok(Some(p)) => self.lane.on_packet(&p),
            Ok(None) => {
                if let Some(w) = wake {
                    drain(w);
                }
                return;
            }
            Err(e) if e.is_timeout() => {
                return self.lane.on_timeout(Instant::now());
            }
            Err(e) => return self.lane.recv_failed(&e),
        }
        while self.lane.is_open() {
            match conn.try_recv() {
                Ok(Some(p)) => self.lane.on_packet(&p),
                Ok(None) => break,
                Err(e) => {
                    self.lane.recv_failed(&e);
                    break;
                }
            }
        }
    }

    fn close(&mut self, failed: bool) {
        if let Some(c) = self.conn.take() {
            c.close();
        }
        if failed {
            self.slot.record_failure(self.set);
        }
    }

    /// Sends the lane's reports to the coordinator.
    fn flush(&mut self, out: &Sender<(usize, Vec<Report>)>) {
        let reports = self.lane.take_reports();
        if !reports.is_empty() {
            let _ = out.send((self.idx, reports));
        }
    }

    /// The call is over: a clean connection goes back to the pool.
    fn finish(mut self) {
        if let Some(c) = self.conn.take() {
            if self.lane.reusable() {
                self.slot.put_idle(c);
            } else {
                c.close();
            }
        }
    }

    /// Runs the lane on the calling thread until it has reports, is idle,
    /// or `until` (the coordinator's next deadline) has come.
    fn turn(&mut self, until: Option<Instant>) -> Vec<Report> {
        loop {
            let now = Instant::now();
            match self.lane.step(now) {
                Step::Idle => break,
                Step::Connect { fresh } => {
                    if let Some(at) = self.connect(fresh) {
                        let wake = until.map_or(at, |u| u.min(at));
                        std::thread::sleep(wake.saturating_duration_since(now));
                        if wake < at {
                            break;
                        }
                    }
                }
                Step::Send(packets) => self.send(&packets),
                Step::Recv(deadline) => {
                    let wait = match (deadline, until) {
                        (Some(d), Some(u)) => Some(d.min(u)),
                        (d, u) => d.or(u),
                    };
                    self.recv(wait, None);
                }
                Step::Close { failed } => self.close(failed),
            }
            let reports = self.lane.take_reports();
            if !reports.is_empty() {
                return reports;
            }
            if until.is_some_and(|u| Instant::now() >= u) {
                break;
            }
        }
        self.lane.take_reports()
    }
}

/// Reads every byte waiting on a wake socket.
fn drain(mut w: &UnixStream) {
    let mut buf = [0u8; 64];
    while let Ok(n) = w.read(&mut buf) {
        if n < buf.len() {
            break;
        }
    }
}

/// Runs a call on the calling thread: at most one of its lanes is busy at
/// a time (the call has one job, or one server).
pub(super) fn run_inline<'a>(
    coord: &mut Coordinator<'a, '_>,
    set: &'a ClientConfig,
    slots: &'a [ServerEntry],
    subs: &'a [Submission<'a>],
) {
    let mut lanes: Vec<Option<LaneIo<'a>>> = (0..slots.len()).map(|_| None).collect();
    loop {
        for (k, cmd) in coord.take_commands() {
            lanes[k].get_or_insert_with(|| LaneIo::new(k, set, slots, subs)).apply(cmd);
        }
        if coord.finished() {
            break;
        }
        let until = coord.next_deadline();
        let mut reports = Vec::new();
        for io in lanes.iter_mut().flatten() {
            let r = io.turn(until);
            if !r.is_empty() {
                reports.push((io.idx, r));
            }
        }
        let now = Instant::now();
        if reports.is_empty() && lanes.iter().flatten().all(|io| io.lane.is_idle()) {
            // Nothing is in flight: only a deadline can change anything.
            match until {
                Some(u) => std::thread::sleep(u.saturating_duration_since(now)),
                None => break,
            }
        }
        for (k, batch) in reports {
            for r in batch {
                coord.on_report(k, r, Instant::now());
            }
        }
        coord.expire(Instant::now());
    }
    for io in lanes.into_iter().flatten() {
        io.finish();
    }
}

/// A lane thread's end of the call.
struct Remote {
    inbox: Sender<Command>,
    wake: UnixStream,
}

enum Slot {
    Unstarted,
    Running(Remote),
    /// The lane could not be started, for this reason.
    Failed(String),
}

/// Runs a call with a thread per lane; the calling thread coordinates.
pub(super) fn run_threaded<'a>(
    coord: &mut Coordinator<'a, '_>,
    set: &'a ClientConfig,
    slots: &'a [ServerEntry],
    subs: &'a [Submission<'a>],
) {
    std::thread::scope(|s| {
        let (rep_tx, rep_rx) = unbounded::<(usize, Vec<Report>)>();
        let mut lanes: Vec<Slot> = (0..slots.len()).map(|_| Slot::Unstarted).collect();
        loop {
            for (k, cmd) in coord.take_commands() {
                if let Slot::Unstarted = lanes[k] {
                    let io = LaneIo::new(k, set, slots, subs);
                    lanes[k] = match start(s, io, rep_tx.clone()) {
                        Ok(r) => Slot::Running(r),
                        Err(e) => {
                            log::error!("server={} cannot start a client lane: {e}", slots[k].addr);
                            Slot::Failed(format!("cannot start a thread for the connection: {e}"))
                        }
                    };
                }
                match &lanes[k] {
                    Slot::Running(r) => {
                        let _ = r.inbox.send(cmd);
                        let _ = (&r.wake).write(&[1]);
                    }
                    Slot::Failed(reason) => {
                        if let Command::Submit(jobs) = cmd {
                            coord.fail(k, &jobs, reason);
                        }
                    }
                    Slot::Unstarted => {}
                }
            }
            if coord.finished() {
                break;
            }
            let got = match coord.next_deadline() {
                Some(d) => rep_rx.recv_deadline(d),
                None => rep_rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match got {
                Ok((k, batch)) => {
                    for r in batch {
                        coord.on_report(k, r, Instant::now());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            coord.expire(Instant::now());
        }
        // Closing the inboxes ends the lane threads; the scope joins them.
        for lane in lanes {
            if let Slot::Running(Remote { inbox, wake }) = lane {
                drop(inbox);
                let _ = (&wake).write(&[1]);
            }
        }
    });
}

/// Starts a lane's thread.
fn start<'scope, 'a: 'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    io: LaneIo<'a>,
    out: Sender<(usize, Vec<Report>)>,
) -> io::Result<Remote> {
    let (wake, wake_rx) = UnixStream::pair()?;
    wake.set_nonblocking(true)?;
    wake_rx.set_nonblocking(true)?;
    let (tx, rx) = unbounded();
    std::thread::Builder::new()
        .name(format!("gearframe-client-{}", io.idx))
        .spawn_scoped(s, move || lane_thread(io, &rx, &wake_rx, &out))?;
    Ok(Remote { inbox: tx, wake })
}

/// A lane's own thread: commands in, steps carried out, reports out,
/// until its inbox is closed.
fn lane_thread(
    mut io: LaneIo<'_>,
    inbox: &Receiver<Command>,
    wake: &UnixStream,
    out: &Sender<(usize, Vec<Report>)>,
) {
    loop {
        loop {
            match inbox.try_recv() {
                Ok(cmd) => io.apply(cmd),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return io.finish(),
            }
        }
        match io.lane.step(Instant::now()) {
            Step::Idle => {
                io.flush(out);
                match inbox.recv() {
                    Ok(cmd) => io.apply(cmd),
                    Err(_) => return io.finish(),
                }
            }
            Step::Connect { fresh } => {
                if let Some(at) = io.connect(fresh) {
                    io.flush(out);
                    match inbox.recv_deadline(at) {
                        Ok(cmd) => io.apply(cmd),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return io.finish(),
                    }
                }
            }
            Step::Send(packets) => io.send(&packets),
            Step::Recv(deadline) => {
                io.flush(out);
                io.recv(deadline, Some(wake));
            }
            Step::Close { failed } => io.close(failed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::settings;
    use super::super::{Hooks, run};
    use super::*;
    use crate::client::{Error, Job, Phase};
    use std::net::TcpListener;
    use std::time::Duration;

    /// A server that accepts connections and never answers, until the
    /// returned sender is dropped (at most 10 s).
    fn silent_server() -> (String, Sender<()>, std::thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let (stop, stopped) = unbounded::<()>();
        let t = std::thread::spawn(move || {
            l.set_nonblocking(true).unwrap();
            let mut held = Vec::new();
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until && stopped.try_recv() == Err(TryRecvError::Empty) {
                match l.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        (addr, stop, t)
    }

    #[test]
    fn lanes_blocked_on_their_sockets_are_woken_when_the_call_ends() {
        let (a, stop_a, ta) = silent_server();
        let (b, stop_b, tb) = silent_server();
        let slots = [ServerEntry::new(&a), ServerEntry::new(&b)];
        let set = settings();
        let jobs: Vec<Job> = (0..8)
            .map(|i| Job::new("f", i.to_string()).timeout(Duration::from_millis(200)))
            .collect();
        let started = Instant::now();
        let out = run(&set, &slots, &jobs, Hooks { on_event: None, on_done: None });
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "the call took {took:?}");
        for r in &out {
            assert!(matches!(r, Err(Error::Timeout { phase: Phase::Ack, .. })), "{r:?}");
        }
        // The connections carry unanswered submissions: none is pooled.
        assert!(slots.iter().all(|s| s.take_idle().is_none()));
        drop((stop_a, stop_b));
        ta.join().unwrap();
        tb.join().unwrap();
    }
}
