//! File descriptors: the process limit, the connection count it allows,
//! and refusing connections cleanly once none is left.
//!
//! Each connection costs one descriptor (its socket). When `accept` fails
//! with EMFILE/ENFILE the waiting connection stays in the kernel's queue, and
//! a server that only retries leaves its clients hanging. The acceptor
//! keeps one spare descriptor open instead: out of descriptors, it closes
//! the spare, accepts and closes at once every waiting connection, and opens
//! the spare again, so clients see their connection closed and the open
//! ones keep being served.
//!
//! Linux reports EMFILE from `accept` whether or not a connection waits, so
//! after one the acceptor first waits for the listener to be readable
//! ([`wait_readable`]) and tries a plain `accept` again: a connection that
//! arrives once descriptors are free again is served, not refused.

use std::fs::File;
use std::io;
use std::net::{Shutdown, TcpListener};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};

/// Descriptors the default `max_connections` leaves for everything that is
/// not a connection: stdin, stdout and stderr (3), the listener (1), the
/// spare descriptor for refusals (1), a log file (1), the SQLite queue's
/// database, WAL, shared-memory and journal files (4), the stop's wake-up
/// connection (2), and about 20 for the rest of the process (a worker pool
/// in `gearframe up`, its commands' pipes, name lookups).
pub const FD_RESERVE: u64 = 32;

/// The soft and hard RLIMIT_NOFILE of the process.
///
/// # Errors
/// `getrlimit` failed.
pub fn fd_limit() -> io::Result<(u64, u64)> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    Ok((soft, hard))
}

/// Raises the soft RLIMIT_NOFILE of the process to its hard limit and
/// returns the soft limit in effect afterwards.
///
/// [`Server::bind`](super::Server::bind) does not call this: the limit is
/// process-wide, and code in the same process that still uses `select(2)`
/// breaks on descriptors above 1023. The `gearframe` commands that start a
/// server (`server`, `up`, `demo`) call it first; an embedder that wants the
/// same calls it before `bind`.
///
/// # Errors
/// The limit cannot be read, or cannot be raised (the error names both).
pub fn raise_fd_limit() -> io::Result<u64> {
    let (soft, hard) = fd_limit()?;
    let target = if hard == RLIM_INFINITY { nr_open().unwrap_or(soft) } else { hard };
    if target <= soft {
        return Ok(soft);
    }
    setrlimit(Resource::RLIMIT_NOFILE, target, hard).map_err(|e| {
        io::Error::other(format!(
            "cannot raise the file descriptor limit from {soft} to {target}: {e}"
        ))
    })?;
    Ok(target)
}

/// The kernel's ceiling on descriptors per process (Linux).
fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open").ok()?.trim().parse().ok()
}

/// The default `max_connections` under a soft descriptor limit: the limit
/// minus [`FD_RESERVE`], at least 1.
pub fn connections_for(fd_limit: u64) -> usize {
    usize::try_from(fd_limit.saturating_sub(FD_RESERVE).max(1)).unwrap_or(usize::MAX)
}

/// Whether `accept` failed for want of a descriptor.
pub(crate) fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Waits up to `limit` for a connection to wait on `listener` (poll(2)
/// needs no descriptor). True when one does.
pub(crate) fn wait_readable(listener: &TcpListener, limit: Duration) -> bool {
    let ms = u16::try_from(limit.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0)
}

/// Whether `accept` failed for a connection that ended (or failed) while
/// it waited: nothing to wait for, the next one may be accepted at once.
pub(crate) fn gone_before_accept(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
                | libc::EHOSTUNREACH
                | libc::ENONET
                | libc::ENOPROTOOPT
                | libc::EOPNOTSUPP
        )
    )
}

/// Most connections refused in one go when out of descriptors (the
/// listener's backlog).
const MAX_REFUSED_AT_ONCE: u64 = 4096;

/// The spare descriptor of the acceptor.
#[derive(Debug)]
pub(crate) struct Spare(Option<File>);

impl Spare {
    pub(crate) fn open() -> Spare {
        Spare(File::open("/dev/null").ok())
    }

    /// Out of descriptors: frees the spare, accepts and closes every
    /// connection waiting, and takes the spare back. Returns how many were
    /// closed; `None` when there was no spare (it is opened again when a
    /// descriptor is free).
    pub(crate) fn refuse_waiting(&mut self, listener: &TcpListener) -> Option<u64> {
        let Some(spare) = self.0.take() else {
            self.0 = File::open("/dev/null").ok();
            return None;
        };
        drop(spare);
        let mut refused = 0;
        if listener.set_nonblocking(true).is_ok() {
            while refused < MAX_REFUSED_AT_ONCE {
                match listener.accept() {
                    Ok((s, _)) => {
                        let _ = s.shutdown(Shutdown::Both);
                        refused += 1;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = listener.set_nonblocking(false);
        }
        self.0 = File::open("/dev/null").ok();
        Some(refused)
    }
}

/// Shortest time between two log lines about refused connections.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

/// Refused connections of one reason, logged at most once a second with the
/// count since the previous line.
#[derive(Debug)]
pub(crate) struct Refusals {
    reason: String,
    last_line: Option<Instant>,
    unlogged: u64,
}

impl Refusals {
    pub(crate) fn new(reason: String) -> Refusals {
        Refusals { reason, last_line: None, unlogged: 0 }
    }

    pub(crate) fn add(&mut self, n: u64, now: Instant) {
        self.unlogged += n;
        self.flush(now);
    }

    /// Logs the count not logged yet unless a line was written less than a
    /// second ago.
    pub(crate) fn flush(&mut self, now: Instant) {
        if self.unlogged == 0
            || self.last_line.is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_EVERY)
        {
            return;
        }
        let n = self.unlogged;
        let s = if n == 1 { "" } else { "s" };
        log::warn!("{n} new connection{s} closed at once: {}", self.reason);
        self.unlogged = 0;
        self.last_line = Some(now);
    }

    /// Logs the count not logged yet, however recent the last line (the
    /// acceptor stops).
    pub(crate) fn finish(&mut self) {
        self.last_line = None;
        self.flush(Instant::now());
    }

    #[cfg(test)]
    fn unlogged(&self) -> u64 {
        self.unlogged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_leaves_the_reserve_and_never_reaches_zero() {
        assert_eq!(connections_for(1024), 992);
        assert_eq!(connections_for(FD_RESERVE), 1);
        assert_eq!(connections_for(0), 1);
    }

    #[test]
    fn refusals_are_reported_at_most_once_a_second_with_their_count() {
        let mut r = Refusals::new("test".into());
        let t0 = Instant::now();
        r.add(1, t0);
        assert_eq!(r.unlogged(), 0, "the first refusal is reported at once");
        r.add(5, t0 + Duration::from_millis(300));
        r.add(2, t0 + Duration::from_millis(900));
        r.flush(t0 + Duration::from_millis(999));
        assert_eq!(r.unlogged(), 7, "reported within the second");
        r.flush(t0 + Duration::from_millis(1000));
        assert_eq!(r.unlogged(), 0);
    }

    #[test]
    fn the_raised_limit_is_the_hard_one_and_is_in_effect() {
        let raised = raise_fd_limit().unwrap();
        let (soft, hard) = fd_limit().unwrap();
        assert_eq!(soft, raised);
        if hard != RLIM_INFINITY {
            assert_eq!(soft, hard);
        }
    }
}
