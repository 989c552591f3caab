//! A connection's outgoing bytes.
//!
//! Replies are appended under the state lock by whichever thread produced
//! them. Once that thread has released the lock it flushes every outbox it
//! touched with a non-blocking send, so a reply usually leaves on the thread
//! that computed it, without waking another thread. When the peer's socket
//! buffer is full, the rest is handed to the connection's writer thread,
//! which blocks (up to the write timeout) on its behalf; nobody else ever
//! waits for a slow peer.
//!
//! The outbox is bounded: a peer that stops reading is disconnected once its
//! pending bytes pass the limit, instead of growing the server's memory.
//!
//! The reader, the outbox and the writer thread share one socket (one file
//! descriptor per connection): `&TcpStream` reads and writes.
//!
//! One mutex guards the outbox: its bytes, its [`Mode`] and the writer
//! thread's handle. A writer is started under that lock only while the mode
//! is `Direct` or `HandedOff`, and [`Outbox::finish`] moves the mode to
//! `Closing` and takes the handle under the same lock, so a writer is either
//! started before `finish` looks (and joined) or not started at all.

use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Who sends an outbox's bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The thread that appended sends without blocking.
    #[default]
    Direct,
    /// The socket would block: the writer thread sends with blocking
    /// writes until the buffer is empty, then the mode is `Direct` again.
    HandedOff,
    /// The connection ended: nothing more is queued, and the connection's
    /// reader (or the writer thread it joins) writes what is left.
    Closing,
    /// The socket was shut down: nothing more can be sent, and nothing is
    /// kept.
    Dead,
}

#[derive(Debug, Default)]
struct Inner {
    buf: Vec<u8>,
    mode: Mode,
    /// A thread is sending bytes taken from `buf`; nobody else may send.
    writing: bool,
    /// Registered for a flush by the thread that appended to it.
    dirty: bool,
    /// The writer thread, started the first time the socket is full; the
    /// connection's reader joins it when the connection ends.
    writer: Option<std::thread::JoinHandle<()>>,
    /// Bytes from these offsets on wait until the store has answered for
    /// the given hold (a JOB_CREATED for a durable job, and every reply
    /// after it). Ascending in sequence and offset.
    holds: std::collections::VecDeque<Hold>,
}

/// A held reply: `len` bytes at `at`, sent once the hold is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hold {
    seq: u64,
    at: usize,
    len: usize,
    /// Resolved, but a hold before it is not yet.
    resolved: bool,
}

impl Inner {
    /// No more bytes are queued (the connection is closing or dead).
    fn closed(&self) -> bool {
        matches!(self.mode, Mode::Closing | Mode::Dead)
    }

    /// How many bytes at the front may be sent now.
    fn sendable(&self) -> usize {
        self.holds.front().map_or(self.buf.len(), |h| h.at.min(self.buf.len()))
    }

    /// Takes the sendable bytes off the front of the buffer.
    fn take_sendable(&mut self) -> Vec<u8> {
        let n = self.sendable();
        for h in &mut self.holds {
            h.at -= n;
        }
        if n == self.buf.len() {
            return std::mem::take(&mut self.buf);
        }
        let rest = self.buf.split_off(n);
        std::mem::replace(&mut self.buf, rest)
    }

    /// Puts the bytes of `chunk` from `sent` on back in front of the
    /// buffer, in `chunk`'s own allocation: a large reply is never copied
    /// a second time.
    fn put_back(&mut self, mut chunk: Vec<u8>, sent: usize) {
        chunk.drain(..sent.min(chunk.len()));
        if chunk.is_empty() {
            return;
        }
        for h in &mut self.holds {
            h.at += chunk.len();
        }
        chunk.extend_from_slice(&self.buf);
        self.buf = chunk;
    }

    /// Resolves hold `seq`, first replacing its reply with `replacement`
    /// when one is given; the resolved holds at the front are dropped, so
    /// what they held may be sent.
    fn resolve(&mut self, seq: u64, replacement: Option<&[u8]>) {
        let Some(i) = self.holds.iter().position(|h| h.seq == seq) else { return };
        let h = self.holds[i];
        if let Some(new) = replacement.filter(|_| h.at <= self.buf.len()) {
            let end = (h.at + h.len).min(self.buf.len());
            self.buf.splice(h.at..end, new.iter().copied());
            let grown = new.len() as isize - (end - h.at) as isize;
            self.holds[i].len = new.len();
            for later in self.holds.iter_mut().skip(i + 1) {
                later.at = later.at.saturating_add_signed(grown);
            }
        }
        self.holds[i].resolved = true;
        while self.holds.front().is_some_and(|h| h.resolved) {
            self.holds.pop_front();
        }
    }
}

/// Pending output of one connection.
#[derive(Debug)]
pub(crate) struct Outbox {
    inner: Mutex<Inner>,
    wake_writer: Condvar,
    limit: usize,
    /// The socket (shared with the connection's reader); sent to without
    /// blocking here, blocking in the writer.
    stream: Option<Arc<TcpStream>>,
}

/// Result of a non-blocking send attempt.
enum Sent {
    All,
    WouldBlock(usize),
    Failed,
}

impl Outbox {
    pub(crate) fn new(stream: Option<Arc<TcpStream>>, limit: usize) -> Outbox {
        Outbox { inner: Mutex::new(Inner::default()), wake_writer: Condvar::new(), limit, stream }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends bytes produced by `f`. Returns true when the caller must
    /// register this outbox for a [`Outbox::flush`] (it was not dirty yet).
    pub(crate) fn push_with(&self, f: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut g = self.lock();
        if g.closed() {
            return false;
        }
        f(&mut g.buf);
        self.check_limit(g)
    }

    /// Disconnects a peer whose pending bytes passed the limit; else marks
    /// the outbox dirty, returning true when it was not yet.
    fn check_limit(&self, mut g: MutexGuard<'_, Inner>) -> bool {
        if g.buf.len() > self.limit {
            log::warn!("outbox over {} bytes: peer is not reading; disconnecting", self.limit);
            self.kill(g);
            return false;
        }
        !std::mem::replace(&mut g.dirty, true)
    }

    /// Appends the reply produced by `f` held under `seq` (larger than every
    /// earlier one): neither it nor anything appended after it is sent until
    /// [`Outbox::resolve`] is called for `seq` and every earlier hold.
    /// Returns what [`Outbox::push_with`] returns.
    pub(crate) fn push_held(&self, seq: u64, f: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut g = self.lock();
        if g.closed() {
            return false;
        }
        let at = g.buf.len();
        f(&mut g.buf);
        let len = g.buf.len() - at;
        // Registered with the bytes, under the same lock: no flush between
        // the two can send them.
        g.holds.push_back(Hold { seq, at, len, resolved: false });
        self.check_limit(g)
    }

    /// The store answered for hold `seq`: its reply goes out as appended, or
    /// replaced by `replacement` (an ERROR instead of a JOB_CREATED), in its
    /// place among the connection's replies. The caller flushes.
    pub(crate) fn resolve(&self, seq: u64, replacement: Option<&[u8]>) {
        self.lock().resolve(seq, replacement);
        self.wake_writer.notify_all();
    }

    /// Sends what is pending without blocking; hands the rest to the writer
    /// thread (started on first need) when the socket is full. Call without
    /// holding the state lock.
    pub(crate) fn flush(self: &Arc<Self>) {
        let mut g = self.lock();
        g.dirty = false;
        loop {
            // Handed off, the writer sends; closing, the connection's reader
            // does; dead, nothing is kept to send.
            if g.mode != Mode::Direct || g.writing || g.sendable() == 0 {
                return;
            }
            let chunk = g.take_sendable();
            g.writing = true;
            drop(g);
            let sent = self.send_nonblocking(&chunk);
            g = self.lock();
            g.writing = false;
            match sent {
                Sent::All => {
                    if g.buf.capacity() == 0 && chunk.capacity() <= (64 << 10) {
                        // Keep the allocation for the next replies.
                        let mut chunk = chunk;
                        chunk.clear();
                        g.buf = chunk;
                    }
                    if g.mode == Mode::Closing {
                        self.wake_writer.notify_all();
                    }
                }
                Sent::WouldBlock(n) => {
                    if g.mode == Mode::Dead {
                        // Shut down meanwhile: nothing is kept.
                        return;
                    }
                    g.put_back(chunk, n);
                    if g.mode == Mode::Closing {
                        // The connection's reader drains what is left.
                        drop(g);
                    } else {
                        self.hand_off(g);
                    }
                    self.wake_writer.notify_all();
                    return;
                }
                Sent::Failed => {
                    self.kill(g);
                    return;
                }
            }
        }
    }

    fn send_nonblocking(&self, mut data: &[u8]) -> Sent {
        let Some(stream) = &self.stream else { return Sent::All };
        let sock = socket2::SockRef::from(&**stream);
        let mut sent = 0;
        while !data.is_empty() {
            match sock.send_with_flags(data, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) {
                Ok(0) => return Sent::Failed,
                Ok(n) => {
                    sent += n;
                    data = &data[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Sent::WouldBlock(sent),
                Err(e) => {
                    log::debug!("send failed: {e}; closing connection");
                    return Sent::Failed;
                }
            }
        }
        Sent::All
    }

    /// Hands the socket to the writer thread, starting it on first need.
    /// Spawned under the lock: the new thread waits for it, and `finish`
    /// cannot take the handle before it is stored.
    fn hand_off(self: &Arc<Self>, mut g: MutexGuard<'_, Inner>) {
        g.mode = Mode::HandedOff;
        if g.writer.is_some() {
            return;
        }
        let Some(stream) = self.stream.clone() else {
            self.kill(g);
            return;
        };
        let me = Arc::clone(self);
        match std::thread::Builder::new()
            .name("gearframe-write".into())
            .stack_size(128 << 10)
            .spawn(move || me.run_writer(stream))
        {
            Ok(h) => g.writer = Some(h),
            Err(e) => {
                log::error!("cannot start a writer thread: {e}; closing connection");
                self.kill(g);
            }
        }
    }

    /// Ends the connection's output: no more bytes are queued; what is
    /// pending (held bytes once the store releases them, for at most
    /// `limit`) is written with blocking writes, and the writer thread, if
    /// one was started, is joined. Called by the connection's reader.
    pub(crate) fn finish(&self, stream: &TcpStream, limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        let writer = {
            let mut g = self.lock();
            if g.mode != Mode::Dead {
                g.mode = Mode::Closing;
            }
            g.writer.take()
        };
        self.wake_writer.notify_all();
        match writer {
            Some(w) => {
                let _ = w.join();
            }
            None => self.write_blocking(stream, Some(deadline)),
        }
    }

    /// Shuts the socket down both ways, waking a blocked reader and writer.
    pub(crate) fn shutdown_socket(&self) {
        self.kill(self.lock());
    }

    /// Moves to `Dead`: what is pending is dropped (holds go with the bytes
    /// they point into), the socket is shut down both ways, waking a
    /// blocked reader and writer.
    fn kill(&self, mut g: MutexGuard<'_, Inner>) {
        g.mode = Mode::Dead;
        g.buf = Vec::new();
        g.holds.clear();
        drop(g);
        if let Some(s) = &self.stream {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.wake_writer.notify_all();
    }

    /// The bytes that may be sent right now (for tests).
    #[cfg(test)]
    pub(crate) fn take_now(&self) -> Vec<u8> {
        let mut g = self.lock();
        g.dirty = false;
        g.take_sendable()
    }

    /// The writer thread: blocking writes for a peer whose socket buffer is
    /// full, and the last bytes once the connection closes.
    pub(crate) fn run_writer(&self, stream: Arc<TcpStream>) {
        self.write_blocking(&stream, None);
    }

    /// Writes with blocking writes whatever may be sent once the socket is
    /// handed over or the outbox is closed, until the outbox is closed and
    /// empty, the socket is dead, or `deadline` passes (bytes still held for
    /// the store are dropped then).
    fn write_blocking(&self, mut stream: &TcpStream, deadline: Option<std::time::Instant>) {
        let mut g = self.lock();
        loop {
            if g.mode == Mode::Dead {
                return;
            }
            if !g.writing && g.sendable() > 0 && g.mode != Mode::Direct {
                let chunk = g.take_sendable();
                g.writing = true;
                drop(g);
                let r = stream.write_all(&chunk);
                g = self.lock();
                g.writing = false;
                if let Err(e) = r {
                    log::debug!("write failed: {e}; closing connection");
                    self.kill(g);
                    return;
                }
                continue;
            }
            if g.sendable() == 0 {
                if g.mode == Mode::HandedOff {
                    g.mode = Mode::Direct;
                }
                if g.mode == Mode::Closing && !g.writing && g.buf.is_empty() {
                    drop(g);
                    let _ = stream.flush();
                    return;
                }
            }
            g = match deadline {
                None => self.wake_writer.wait(g).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = std::time::Instant::now();
                    if now >= d {
                        log::debug!("output held past the limit is dropped with the connection");
                        return;
                    }
                    self.wake_writer.wait_timeout(g, d - now).unwrap_or_else(|e| e.into_inner()).0
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(seq: u64, at: usize, len: usize) -> Hold {
        Hold { seq, at, len, resolved: false }
    }

    #[test]
    fn holds_keep_their_place_when_everything_before_them_is_taken() {
        let mut i = Inner::default();
        i.buf.extend_from_slice(b"abc");
        i.holds.push_back(hold(1, 3, 4));
        assert_eq!(i.take_sendable(), b"abc");
        i.buf.extend_from_slice(b"held");
        assert_eq!(i.sendable(), 0);
        i.holds.push_back(hold(2, 4, 4));
        i.buf.extend_from_slice(b"more");
        i.resolve(1, None);
        assert_eq!(i.take_sendable(), b"held");
        i.put_back(b"held".to_vec(), 2);
        assert_eq!(i.holds.front(), Some(&hold(2, 2, 4)));
        i.resolve(2, None);
        assert_eq!(i.take_sendable(), b"ldmore");
    }

    /// A send that fails at a stop (the socket was shut down) with several
    /// replies still held: the rest of the holds go with the bytes, so the
    /// store's later answers find nothing to send instead of offsets past
    /// the end of an emptied buffer.
    #[test]
    fn holds_go_with_the_bytes_when_a_send_fails_at_a_stop() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _peer = listener.accept().unwrap();
        let out = Arc::new(Outbox::new(Some(Arc::new(stream)), 1 << 20));
        out.push_with(|b| b.extend_from_slice(b"before;"));
        for seq in 1..=3 {
            out.push_held(seq, |b| b.extend_from_slice(b"JOB_CREATED H:vm:1;"));
        }
        out.shutdown_socket();
        out.resolve(1, None);
        out.flush();
        out.resolve(2, None);
        out.flush();
        out.resolve(3, Some(b"ERROR;"));
        out.flush();
        assert_eq!(out.take_now(), b"");
    }

    #[test]
    fn a_replaced_hold_keeps_its_place_and_holds_resolve_in_order() {
        let out = Outbox::new(None, 1 << 20);
        out.push_with(|b| b.extend_from_slice(b"a;"));
        out.push_held(1, |b| b.extend_from_slice(b"OK1;"));
        out.push_held(2, |b| b.extend_from_slice(b"OK2;"));
        out.push_with(|b| b.extend_from_slice(b"z;"));
        assert_eq!(out.take_now(), b"a;");
        // The second is answered first: nothing moves until the first is.
        out.resolve(2, Some(b"ERROR-TWO;"));
        assert_eq!(out.take_now(), b"");
        out.resolve(1, None);
        assert_eq!(out.take_now(), b"OK1;ERROR-TWO;z;");
        // An unknown hold is ignored.
        out.resolve(9, None);
    }

    /// A peer that reads slowly: the socket fills, the bytes are handed to
    /// the writer thread, and `finish` joins it once everything is written,
    /// whatever the order of the hand-off and the close.
    #[test]
    fn a_full_socket_hands_off_to_the_writer_and_finish_joins_it() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = Arc::new(TcpStream::connect(listener.local_addr().unwrap()).unwrap());
        stream.set_write_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        let out = Arc::new(Outbox::new(Some(Arc::clone(&stream)), 64 << 20));
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..16 {
            out.push_with(|b| b.extend_from_slice(&chunk));
            out.flush();
        }
        assert_eq!(out.lock().mode, Mode::HandedOff, "16 MiB do not fit a socket buffer");
        assert!(out.lock().writer.is_some());
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).unwrap();
            got.len()
        });
        out.finish(&stream, std::time::Duration::from_secs(30));
        assert_eq!(out.lock().mode, Mode::Closing);
        assert!(out.lock().writer.is_none(), "finish joined the writer");
        stream.shutdown(Shutdown::Write).unwrap();
        assert_eq!(reader.join().unwrap(), 16 << 20);
        assert!(!out.push_with(|b| b.push(1)), "a closing outbox queues nothing");
    }
}
