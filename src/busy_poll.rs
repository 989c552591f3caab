//! Busy polling: a thread about to block on a socket read first checks,
//! for a short window, whether bytes arrive, yielding its CPU between
//! checks.
//!
//! A Gearman job crosses the network four to six times (submit, assign,
//! complete, result, and a wake-up and a grab for a worker that waits for
//! NOOP) and each crossing wakes a blocked thread. On
//! an idle machine, and on virtual machines above all, waking a thread
//! whose CPU has gone to sleep costs far more than the work the thread then
//! does (tens of microseconds against a few). A thread that is still
//! polling when its reply arrives skips that cost.
//!
//! The window is bounded, and adaptive: a connection polls only while its
//! recent waits were short enough for polling to have paid off, so a
//! connection that waits long (an idle worker, a client between jobs) blocks
//! at once and costs nothing. Polling yields the CPU between checks, so a
//! busy machine runs other threads meanwhile, and a poll ends as soon as a
//! yield lost the CPU for a while: then the CPU has real work, will not go
//! to sleep, and blocking costs no more than polling. That also keeps many
//! pollers in check (each yield waits for all the others); a cap of 16 per
//! CPU bounds the rest.

use std::net::TcpStream;
use std::os::fd::AsFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Default polling window before a read blocks.
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(100);

/// A yield that took this long let another thread run for a while (not
/// just another poller for a check).
const YIELDED: Duration = Duration::from_micros(50);

/// Threads of this process polling right now.
static POLLING: AtomicUsize = AtomicUsize::new(0);

/// Most threads of this process that poll at once.
fn max_pollers() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| 16 * std::thread::available_parallelism().map_or(1, usize::from))
}

/// The polling state of one connection's reads.
#[derive(Debug, Clone)]
pub(crate) struct BusyPoll {
    window: Duration,
    /// The last wait was short enough that polling would have caught it.
    worth_it: bool,
}

impl BusyPoll {
    /// Polls for at most `window` before each read (zero: never).
    pub(crate) fn new(window: Duration) -> BusyPoll {
        BusyPoll { window, worth_it: true }
    }

    /// Waits, for at most the window, until `stream` has bytes to read (or
    /// reports end of stream or an error), when polling is worth it. Returns
    /// when it is time to read: the read that follows may still block.
    /// `started` is when the wait began; call [`BusyPoll::waited`] with it
    /// once the read returned.
    pub(crate) fn poll(&mut self, stream: &TcpStream) -> Instant {
        let started = Instant::now();
        if self.window.is_zero() || !self.worth_it {
            return started;
        }
        if POLLING.fetch_add(1, Ordering::Relaxed) >= max_pollers() {
            POLLING.fetch_sub(1, Ordering::Relaxed);
            return started;
        }
        loop {
            if readable(stream) {
                break;
            }
            let before_yield = Instant::now();
            if before_yield.duration_since(started) >= self.window {
                break;
            }
            std::thread::yield_now();
            if before_yield.elapsed() >= YIELDED {
                // Another thread ran: this CPU has other work and will not
                // go to sleep, so blocking costs no more than polling.
                break;
            }
        }
        POLLING.fetch_sub(1, Ordering::Relaxed);
        started
    }

    /// Records how long a wait that began at `started` took, so the next
    /// wait polls only if this one was short.
    pub(crate) fn waited(&mut self, started: Instant) {
        if !self.window.is_zero() {
            // A blocked thread is woken late, so a wait of up to twice the
            // window still counts as one that polling would have caught.
            self.worth_it = started.elapsed() <= self.window * 2;
        }
    }
}

/// Whether a read of `stream` would return at once: bytes, end of stream
/// or an error (the read will tell which). poll(2) with a zero timeout
/// checks this without taking the socket's lock, which a peek would take,
/// stalling a thread that sends on the same socket meanwhile.
fn readable(stream: &TcpStream) -> bool {
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(n) => n > 0,
        Err(Errno::EINTR) => false,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::mpsc;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    /// Runs `poll` on another thread; panics unless it returns within 10 s.
    fn poll_returns(mut bp: BusyPoll, s: TcpStream) -> (BusyPoll, TcpStream) {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            bp.poll(&s);
            let _ = tx.send((bp, s));
        });
        rx.recv_timeout(Duration::from_secs(10)).expect("poll did not return")
    }

    #[test]
    fn polling_sees_bytes_without_taking_them() {
        let (mut a, b) = pair();
        a.write_all(b"ping").unwrap();
        let (_, mut b) = poll_returns(BusyPoll::new(Duration::from_secs(3600)), b);
        let mut buf = [0u8; 8];
        assert_eq!(b.read(&mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"ping");
    }

    #[test]
    fn polling_ends_at_end_of_stream_and_after_its_window() {
        let (a, b) = pair();
        let (_, b) = poll_returns(BusyPoll::new(Duration::from_millis(1)), b);
        drop(a);
        let (_, mut b) = poll_returns(BusyPoll::new(Duration::from_secs(3600)), b);
        assert_eq!(b.read(&mut [0u8; 4]).unwrap(), 0);
    }

    #[test]
    fn a_long_wait_turns_polling_off_and_a_short_one_back_on() {
        let window = Duration::from_millis(5);
        let mut bp = BusyPoll::new(window);
        assert!(bp.worth_it);
        bp.waited(Instant::now() - window * 3);
        assert!(!bp.worth_it, "a wait of three windows is not worth polling for");
        // Off: poll returns at once, even with a window of an hour.
        let (_, b) = pair();
        let (bp, _b) = poll_returns(BusyPoll { window: Duration::from_secs(3600), ..bp }, b);
        let mut bp = BusyPoll { window, ..bp };
        bp.waited(Instant::now());
        assert!(bp.worth_it);
    }

    #[test]
    fn a_zero_window_never_polls() {
        let mut bp = BusyPoll::new(Duration::ZERO);
        bp.waited(Instant::now() - Duration::from_secs(1));
        assert!(bp.worth_it, "a zero window keeps no state");
        let (_, b) = pair();
        poll_returns(bp, b);
    }
}
