//! A connection's outgoing bytes: appended under the state lock by whoever
//! produces replies, written to the socket by the connection's writer thread.
//!
//! The outbox is bounded: a peer that stops reading is disconnected once its
//! pending bytes pass the limit, instead of growing the server's memory.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::{Condvar, Mutex, MutexGuard};

#[derive(Debug, Default)]
struct Inner {
    buf: Vec<u8>,
    closed: bool,
    overflowed: bool,
}

/// Pending output of one connection.
#[derive(Debug)]
pub(crate) struct Outbox {
    inner: Mutex<Inner>,
    ready: Condvar,
    limit: usize,
    /// A handle on the socket, used only to shut it down (never written here).
    stream: Option<TcpStream>,
}

impl Outbox {
    pub(crate) fn new(stream: Option<TcpStream>, limit: usize) -> Outbox {
        Outbox { inner: Mutex::new(Inner::default()), ready: Condvar::new(), limit, stream }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends bytes produced by `f`. Returns false when the connection is
    /// closed or its outbox overflowed (the socket is then shut down).
    pub(crate) fn push_with(&self, f: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut g = self.lock();
        if g.closed {
            return false;
        }
        let was_empty = g.buf.is_empty();
        f(&mut g.buf);
        if g.buf.len() > self.limit {
            g.overflowed = true;
            g.closed = true;
            g.buf.clear();
            drop(g);
            log::warn!("outbox over {} bytes: peer is not reading; disconnecting", self.limit);
            self.shutdown_socket();
            self.ready.notify_all();
            return false;
        }
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    /// Appends raw bytes.
    pub(crate) fn push(&self, bytes: &[u8]) -> bool {
        self.push_with(|b| b.extend_from_slice(bytes))
    }

    /// No more output will be queued; the writer sends what is pending and stops.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Shuts the socket down both ways, waking a blocked reader and writer.
    pub(crate) fn shutdown_socket(&self) {
        if let Some(s) = &self.stream {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Takes the pending bytes (swapping in `spare`), waiting until there
    /// are some. Returns false once the outbox is closed and drained.
    fn take(&self, spare: &mut Vec<u8>) -> bool {
        let mut g = self.lock();
        loop {
            if !g.buf.is_empty() {
                spare.clear();
                std::mem::swap(&mut g.buf, spare);
                return true;
            }
            if g.closed {
                return false;
            }
            g = self.ready.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Bytes in the outbox right now (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn take_now(&self) -> Vec<u8> {
        std::mem::take(&mut self.lock().buf)
    }

    /// The writer thread's loop: write pending bytes in as few writes as
    /// possible until the outbox is closed and drained, or the socket fails.
    pub(crate) fn run_writer(&self, mut stream: TcpStream) {
        let mut chunk = Vec::with_capacity(16 << 10);
        while self.take(&mut chunk) {
            if let Err(e) = stream.write_all(&chunk) {
                log::debug!("write failed: {e}; closing connection");
                self.lock().closed = true;
                self.shutdown_socket();
                return;
            }
            if chunk.capacity() > (1 << 20) {
                chunk = Vec::with_capacity(16 << 10);
            }
        }
        let _ = stream.flush();
    }
}
