//! A blocking, framed connection to a Gearman server: the only socket code
//! that the client, the worker and the admin tool share.
//!
//! Every read waits at most until a deadline; a connection can also be
//! woken from another thread with [`Connection::shutdown_handle`], or a
//! read can end early when another descriptor becomes readable
//! ([`Connection::recv_or_wake`]).
//!
//! An exchange fails with an [`Error`] that says which side is at fault:
//! the socket ([`Error::Io`]), the peer's bytes ([`Error::Protocol`],
//! [`Error::Unexpected`]), or a packet this side was asked to send
//! ([`Error::Invalid`]).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::busy_poll::{BusyPoll, DEFAULT_BUSY_POLL};
use crate::proto::{Decoder, Frame, Magic, Packet, PacketType, ProtocolError};

/// Why an exchange on a [`Connection`] failed: the socket, bytes that are
/// not the protocol, a valid frame of the wrong kind, or a packet that
/// cannot be sent.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The socket failed: a read or write error, `TimedOut` at the
    /// deadline, `UnexpectedEof` when the server closed the connection.
    Io(io::Error),
    /// The server sent bytes that are not a packet, a packet whose body
    /// does not hold its arguments, or a header over the largest packet
    /// size ([`Connection::set_max_packet_size`]).
    Protocol(ProtocolError),
    /// A valid frame of a kind the exchange does not expect.
    Unexpected {
        /// What the exchange waited for.
        expected: Expected,
        /// What came.
        got: Received,
    },
    /// A packet this side was asked to send is invalid (a NUL byte in an
    /// argument, a body over 4 GiB); nothing of it was sent.
    Invalid(ProtocolError),
}

/// What an exchange waited for, in an [`Error::Unexpected`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expected {
    /// A binary packet.
    Packet,
    /// A text line (an admin reply).
    Line,
    /// A JOB_ASSIGN, JOB_ASSIGN_UNIQ or JOB_ASSIGN_ALL packet.
    JobAssignment,
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Expected::Packet => "a packet",
            Expected::Line => "a text line",
            Expected::JobAssignment => "a job assignment",
        })
    }
}

/// The frame that came instead, in an [`Error::Unexpected`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Received {
    /// A text line (lossily decoded, without its line ending).
    Text(String),
    /// A binary packet of this type.
    Packet(PacketType),
}

impl Error {
    /// The kind of the socket error, for [`Error::Io`].
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Error::Io(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// True when a read or write passed its deadline.
    pub fn is_timeout(&self) -> bool {
        self.io_kind() == Some(io::ErrorKind::TimedOut)
    }

    /// True when the peer's bytes or frames are not what the protocol
    /// allows here ([`Error::Protocol`] or [`Error::Unexpected`]): it may
    /// not be a Gearman server.
    pub fn is_protocol(&self) -> bool {
        matches!(self, Error::Protocol(_) | Error::Unexpected { .. })
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) => write!(f, "{e}"),
            Error::Protocol(ProtocolError::BodyTooLarge { size, max }) => write!(
                f,
                "a packet body of {size} bytes is over the maximum of {max} \
                 (max_packet_size); raise it if the server is meant to send such packets"
            ),
            Error::Protocol(e) | Error::Invalid(e) => write!(f, "{e}"),
            Error::Unexpected { expected: Expected::Packet, got: Received::Text(line) } => {
                write!(f, "unexpected text from server: {line:?}")
            }
            Error::Unexpected { expected, got: Received::Text(line) } => {
                write!(f, "expected {expected}, got the text {line:?}")
            }
            Error::Unexpected { expected, got: Received::Packet(kind) } => {
                write!(f, "expected {expected}, got a {kind} packet")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::Protocol(e) | Error::Invalid(e) => Some(e),
            Error::Unexpected { .. } => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

/// Default Gearman port.
pub const DEFAULT_PORT: u16 = 4730;

/// A packet received from a server, owning its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedPacket {
    /// Magic (a server sends `\0RES`).
    pub magic: Magic,
    /// Packet type.
    pub kind: PacketType,
    /// The raw body.
    pub body: Vec<u8>,
}

impl OwnedPacket {
    /// The typed view of the arguments.
    ///
    /// # Errors
    /// The body does not hold the arguments its type needs.
    pub fn packet(&self) -> Result<Packet<'_>, ProtocolError> {
        Packet::parse(self.kind, &self.body)
    }
}

/// Adds the default port to `host` when it has none (`host`, `host:port`,
/// `[v6]`, `[v6]:port`).
pub fn with_default_port(server: &str) -> String {
    let s = server.trim();
    if s.starts_with('[') {
        if s.contains("]:") { s.to_string() } else { format!("{s}:{DEFAULT_PORT}") }
    } else if s.matches(':').count() == 1 {
        s.to_string()
    } else if s.contains(':') {
        // A bare IPv6 address.
        format!("[{s}]:{DEFAULT_PORT}")
    } else {
        format!("{s}:{DEFAULT_PORT}")
    }
}

/// The server used when no list is given anywhere.
pub const DEFAULT_SERVER: &str = "127.0.0.1:4730";

/// Parses a server list, the one form every command, config key and
/// builder accepts: entries separated by commas (one string or several),
/// each `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address;
/// the port defaults to 4730. Empty entries are skipped.
///
/// # Errors
/// The first bad entry, with the form to write.
pub fn parse_server_list<I, S>(entries: I) -> Result<Vec<String>, BadServer>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = Vec::new();
    for entry in entries {
        for s in entry.as_ref().split(',').map(str::trim).filter(|s| !s.is_empty()) {
            out.push(check_server(s)?);
        }
    }
    Ok(out)
}

/// An entry of a server list that is not `HOST[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadServer {
    /// The entry as written (empty: the list had no entry).
    pub entry: String,
    /// What is wrong and what to write instead.
    pub reason: String,
}

impl std::fmt::Display for BadServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.entry.is_empty() {
            write!(f, "no server given: {}", self.reason)
        } else {
            write!(f, "bad server `{}`: {}", self.entry, self.reason)
        }
    }
}

impl std::error::Error for BadServer {}

/// Checks one entry and adds the default port.
fn check_server(s: &str) -> Result<String, BadServer> {
    let bad = |why: &str| {
        Err(BadServer {
            entry: s.to_string(),
            reason: format!("{why}; write HOST[:PORT], e.g. 127.0.0.1:4730 or [::1]:4730"),
        })
    };
    if s.contains("://") {
        return bad("a server address has no scheme");
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((addr, tail)) = rest.split_once(']') else {
            return bad("`[` without `]`");
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("not an IPv6 address between `[` and `]`");
        }
        match tail {
            "" => (format!("[{addr}]"), None),
            t => match t.strip_prefix(':') {
                Some(p) => (format!("[{addr}]"), Some(p)),
                None => return bad("text after `]` that is not `:PORT`"),
            },
        }
    } else if s.matches(':').count() > 1 {
        if s.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("more than one `:` (an IPv6 address with a port goes in brackets)");
        }
        (format!("[{s}]"), None)
    } else {
        let (h, p) = match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        if h.is_empty()
            || !h.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return bad("the host may hold only letters, digits, `.`, `-` and `_`");
        }
        (h.to_string(), p)
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return bad("the port must be a number from 1 to 65535"),
        },
    };
    Ok(format!("{host}:{port}"))
}

/// The servers to use: `explicit` when given (the `-s` flags, a builder's
/// `.servers()`), else `GEARMAN_SERVERS` when set and not empty, else
/// `configured` (a config file's list, already parsed) when not empty, else
/// [`DEFAULT_SERVER`]. The first source found replaces the others; lists
/// are never merged.
///
/// # Errors
/// An explicit list with no server, or a bad entry (one from
/// `GEARMAN_SERVERS` says so).
pub fn resolve_servers(
    explicit: Option<&[String]>,
    configured: &[String],
) -> Result<Vec<String>, BadServer> {
    if let Some(list) = explicit {
        let servers = parse_server_list(list)?;
        if servers.is_empty() {
            return Err(BadServer {
                entry: String::new(),
                reason: "the list is empty; give at least one HOST[:PORT]".into(),
            });
        }
        return Ok(servers);
    }
    if let Ok(env) = std::env::var("GEARMAN_SERVERS")
        && !env.trim().is_empty()
    {
        let servers = parse_server_list([&env]).map_err(|e| BadServer {
            reason: format!("from GEARMAN_SERVERS: {}", e.reason),
            ..e
        })?;
        if !servers.is_empty() {
            return Ok(servers);
        }
    }
    if !configured.is_empty() {
        return Ok(configured.to_vec());
    }
    Ok(vec![DEFAULT_SERVER.to_string()])
}

/// A connection with its read buffer and decoder. A packet from the server
/// over the largest packet size ([`Connection::set_max_packet_size`],
/// default [`DEFAULT_MAX_BODY`](crate::proto::DEFAULT_MAX_BODY), 64 MiB) is
/// refused from its header as an [`Error::Protocol`], before any of it is buffered;
/// the buffer grows with the bytes that arrive, never with a header's claim.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    decoder: Decoder,
    rbuf: Box<[u8]>,
    wbuf: Vec<u8>,
    read_timeout: Option<Duration>,
    busy: BusyPoll,
}

/// Connects a socket to `server` (`host:port`; the port defaults to 4730),
/// trying each resolved address until one answers within `timeout`.
///
/// # Errors
/// Resolution fails, or no address accepts the connection in time.
pub fn connect_stream(server: &str, timeout: Duration) -> io::Result<TcpStream> {
    let target = with_default_port(server);
    let addrs: Vec<SocketAddr> = target
        .to_socket_addrs()
        .map_err(|e| {
            let host = target.rsplit_once(':').map_or(target.as_str(), |(h, _)| h);
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("cannot resolve the host name `{host}` ({e}); check the address"),
            )
        })?
        .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{target}: no address"));
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

impl Connection {
    /// Connects to `server` (`host:port`; the port defaults to 4730), trying
    /// each resolved address until one answers within `timeout`.
    ///
    /// # Errors
    /// Resolution fails, or no address accepts the connection in time.
    pub fn connect(server: &str, timeout: Duration) -> io::Result<Connection> {
        Connection::from_stream(connect_stream(server, timeout)?)
    }

    /// Wraps a connected stream.
    ///
    /// # Errors
    /// The peer address cannot be read.
    pub fn from_stream(stream: TcpStream) -> io::Result<Connection> {
        let peer = stream.peer_addr()?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            peer,
            decoder: Decoder::new(crate::proto::DEFAULT_MAX_BODY),
            rbuf: vec![0u8; 64 << 10].into_boxed_slice(),
            wbuf: Vec::with_capacity(4096),
            read_timeout: None,
            busy: BusyPoll::new(DEFAULT_BUSY_POLL),
        })
    }

    /// Sets the largest packet body accepted from the server, in bytes;
    /// a header declaring more is an [`Error::Protocol`].
    pub fn set_max_packet_size(&mut self, bytes: u32) {
        self.decoder.set_max_body(bytes);
    }

    /// The server's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// A clone of the socket; `shutdown(Both)` on it wakes a blocked reader.
    ///
    /// # Errors
    /// The socket cannot be duplicated.
    pub fn shutdown_handle(&self) -> io::Result<TcpStream> {
        self.stream.try_clone()
    }

    /// Sets how long a read polls for bytes before it blocks (zero: it
    /// blocks at once); see [`crate::busy_poll`]. The default is
    /// [`DEFAULT_BUSY_POLL`].
    pub fn set_busy_poll(&mut self, window: Duration) {
        self.busy = BusyPoll::new(window);
    }

    /// Sets the timeout of every write.
    ///
    /// # Errors
    /// The socket refuses the option.
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.stream.set_write_timeout(t)
    }

    /// Buffers a request packet without writing it (see [`Connection::flush`]).
    ///
    /// # Errors
    /// [`Error::Invalid`]: a non-final argument contains a NUL byte, or the
    /// body is over 4 GiB.
    pub fn queue(&mut self, p: &Packet<'_>) -> Result<(), Error> {
        p.validate().and_then(|()| p.encode(Magic::Req, &mut self.wbuf)).map_err(Error::Invalid)
    }

    /// Buffers raw bytes (an admin line).
    pub fn queue_bytes(&mut self, b: &[u8]) {
        self.wbuf.extend_from_slice(b);
    }

    /// Writes everything buffered.
    ///
    /// # Errors
    /// [`Error::Io`]: the write fails or times out.
    pub fn flush(&mut self) -> Result<(), Error> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let r = self.stream.write_all(&self.wbuf);
        self.wbuf.clear();
        r.map_err(|e| Error::Io(normalize_timeout(e)))
    }

    /// Sends one request packet.
    ///
    /// # Errors
    /// An invalid packet ([`Error::Invalid`]; nothing is written) or a
    /// failed write.
    pub fn send(&mut self, p: &Packet<'_>) -> Result<(), Error> {
        self.queue(p)?;
        self.flush()
    }

    /// Makes the next read wait at most until `deadline`. The socket's
    /// timeout is changed only when it is longer than the time left or
    /// shorter than half of it: a read that times out before the deadline
    /// is tried again (see [`Connection::fill`]), so deadlines that move a
    /// little from call to call do not cost a system call each.
    fn set_read_deadline(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        let t = match deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
                }
                let left = left.max(Duration::from_millis(1));
                match self.read_timeout {
                    Some(cur) if cur <= left && cur >= left / 2 => return Ok(()),
                    _ => Some(left),
                }
            }
        };
        if t != self.read_timeout {
            self.stream.set_read_timeout(t)?;
            self.read_timeout = t;
        }
        Ok(())
    }

    /// Reads more bytes into the decoder, waiting until `deadline`.
    fn fill(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        loop {
            self.set_read_deadline(deadline)?;
            let started = self.busy.poll(&self.stream);
            let r = self.stream.read(&mut self.rbuf);
            self.busy.waited(started);
            match r {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "server closed the connection",
                    ));
                }
                Ok(n) => {
                    self.decoder.push(&self.rbuf[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
                        && deadline.is_some_and(|d| Instant::now() < d) =>
                {
                    // The socket's timeout was shorter than the time left.
                    continue;
                }
                Err(e) => return Err(normalize_timeout(e)),
            }
        }
    }

    /// A packet already buffered, without reading the socket.
    ///
    /// # Errors
    /// The buffered bytes are not a valid packet ([`Error::Protocol`]), or
    /// are a text line ([`Error::Unexpected`]).
    pub fn try_recv(&mut self) -> Result<Option<OwnedPacket>, Error> {
        match self.decoder.next_frame() {
            Ok(Some(Frame::Binary { magic, kind, body })) => {
                Ok(Some(OwnedPacket { magic, kind, body: body.to_vec() }))
            }
            Ok(Some(Frame::Text(line))) => Err(Error::Unexpected {
                expected: Expected::Packet,
                got: Received::Text(String::from_utf8_lossy(line).into_owned()),
            }),
            Ok(None) => Ok(None),
            Err(e) => Err(Error::Protocol(e)),
        }
    }

    /// Receives one packet, waiting until `deadline` (`None`: forever).
    ///
    /// # Errors
    /// [`Error::Io`]: `TimedOut` at the deadline ([`Error::is_timeout`]),
    /// `UnexpectedEof` when the server closed the connection, another kind
    /// when the socket fails; [`Error::Protocol`] for garbage;
    /// [`Error::Unexpected`] for a text line.
    pub fn recv(&mut self, deadline: Option<Instant>) -> Result<OwnedPacket, Error> {
        loop {
            if let Some(p) = self.try_recv()? {
                return Ok(p);
            }
            self.fill(deadline)?;
        }
    }

    /// Receives one packet as [`Connection::recv`] does, but returns
    /// `Ok(None)` as soon as `wake` is readable (or closed): another thread
    /// has something for this one. The bytes on `wake` are left for the
    /// caller to drain.
    ///
    /// # Errors
    /// As [`Connection::recv`].
    pub fn recv_or_wake(
        &mut self,
        deadline: Option<Instant>,
        wake: BorrowedFd<'_>,
    ) -> Result<Option<OwnedPacket>, Error> {
        loop {
            if let Some(p) = self.try_recv()? {
                return Ok(Some(p));
            }
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(
                            io::Error::new(io::ErrorKind::TimedOut, "deadline passed").into()
                        );
                    }
                    PollTimeout::try_from(left.max(Duration::from_millis(1)))
                        .unwrap_or(PollTimeout::MAX)
                }
            };
            let started = self.busy.poll(&self.stream);
            let mut fds = [
                PollFd::new(self.stream.as_fd(), PollFlags::POLLIN),
                PollFd::new(wake, PollFlags::POLLIN),
            ];
            let r = poll(&mut fds, timeout);
            let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            let (stream_ready, woken) = (ready(&fds[0]), ready(&fds[1]));
            self.busy.waited(started);
            match r {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(io::Error::from(e).into()),
            }
            if woken {
                return Ok(None);
            }
            if stream_ready {
                self.fill(deadline)?;
            }
        }
    }

    /// Receives one text line (without its line ending), waiting until `deadline`.
    ///
    /// # Errors
    /// As [`Connection::recv`]; a binary packet where a line was expected is
    /// [`Error::Unexpected`].
    pub fn recv_line(&mut self, deadline: Option<Instant>) -> Result<String, Error> {
        loop {
            match self.decoder.next_frame() {
                Ok(Some(Frame::Text(line))) => {
                    return Ok(String::from_utf8_lossy(line).into_owned());
                }
                Ok(Some(Frame::Binary { kind, .. })) => {
                    return Err(Error::Unexpected {
                        expected: Expected::Line,
                        got: Received::Packet(kind),
                    });
                }
                Ok(None) => self.fill(deadline)?,
                Err(e) => return Err(Error::Protocol(e)),
            }
        }
    }

    /// Closes both directions.
    pub fn close(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// Linux reports a socket timeout as `WouldBlock`; call it `TimedOut`.
fn normalize_timeout(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(io::ErrorKind::TimedOut, "timed out")
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recv_or_wake_ends_on_a_packet_a_wake_or_the_deadline() {
        use std::os::unix::net::UnixStream;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c =
            Connection::connect(&l.local_addr().unwrap().to_string(), Duration::from_secs(5))
                .unwrap();
        let (mut server, _) = l.accept().unwrap();
        let (mut wake, woken) = UnixStream::pair().unwrap();
        let soon = || Some(Instant::now() + Duration::from_secs(10));
        wake.write_all(&[1]).unwrap();
        assert!(c.recv_or_wake(soon(), woken.as_fd()).unwrap().is_none());
        let mut buf = [0u8; 1];
        (&woken).read_exact(&mut buf).unwrap();
        let mut bytes = Vec::new();
        Packet::Noop.encode(Magic::Res, &mut bytes).unwrap();
        server.write_all(&bytes).unwrap();
        let p = c.recv_or_wake(soon(), woken.as_fd()).unwrap().unwrap();
        assert_eq!(p.kind, PacketType::Noop);
        let deadline = Some(Instant::now() + Duration::from_millis(20));
        let e = c.recv_or_wake(deadline, woken.as_fd()).unwrap_err();
        assert!(e.is_timeout(), "{e:?}");
    }

    /// A connection to a listener on an ephemeral port, and the server's end.
    fn pair() -> (Connection, TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = Connection::connect(&l.local_addr().unwrap().to_string(), Duration::from_secs(5))
            .unwrap();
        let (server, _) = l.accept().unwrap();
        (c, server)
    }

    fn soon() -> Option<Instant> {
        Some(Instant::now() + Duration::from_secs(10))
    }

    #[test]
    fn garbage_from_the_server_is_a_protocol_error() {
        let (mut c, mut server) = pair();
        server.write_all(b"\0XYZ\0\0\0\x01\0\0\0\0").unwrap();
        let e = c.recv(soon()).unwrap_err();
        assert!(matches!(e, Error::Protocol(ProtocolError::BadMagic(_))), "{e:?}");
        assert!(e.is_protocol() && !e.is_timeout() && e.io_kind().is_none());
        assert_eq!(e.to_string(), ProtocolError::BadMagic(*b"\0XYZ").to_string());
    }

    #[test]
    fn a_header_over_the_largest_packet_is_refused_as_a_protocol_error() {
        let (mut c, mut server) = pair();
        c.set_max_packet_size(1000);
        let mut header = Vec::new();
        header.extend_from_slice(b"\0RES");
        header.extend_from_slice(&(PacketType::WorkData as u32).to_be_bytes());
        header.extend_from_slice(&1001u32.to_be_bytes());
        server.write_all(&header).unwrap();
        let e = c.recv(soon()).unwrap_err();
        assert!(
            matches!(e, Error::Protocol(ProtocolError::BodyTooLarge { size: 1001, max: 1000 })),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "a packet body of 1001 bytes is over the maximum of 1000 (max_packet_size); \
             raise it if the server is meant to send such packets"
        );
    }

    #[test]
    fn a_frame_of_the_wrong_kind_is_unexpected() {
        let (mut c, mut server) = pair();
        server.write_all(b"OK 1\r\n").unwrap();
        let e = c.recv(soon()).unwrap_err();
        match &e {
            Error::Unexpected { expected: Expected::Packet, got: Received::Text(line) } => {
                assert!(line.starts_with("OK 1"), "{line:?}");
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().starts_with("unexpected text from server: \"OK 1"), "{e}");
        assert!(e.is_protocol());

        let (mut c, mut server) = pair();
        server.write_all(&Packet::Noop.to_vec(Magic::Res)).unwrap();
        let e = c.recv_line(soon()).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Unexpected {
                    expected: Expected::Line,
                    got: Received::Packet(PacketType::Noop)
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!("expected a text line, got a {} packet", PacketType::Noop)
        );
    }

    #[test]
    fn an_invalid_packet_is_refused_before_anything_is_sent() {
        let (mut c, mut server) = pair();
        let bad = Packet::CanDoTimeout { function: b"a\0b", timeout: b"1" };
        let e = c.send(&bad).unwrap_err();
        assert!(matches!(e, Error::Invalid(ProtocolError::NulInArgument { .. })), "{e:?}");
        assert!(!e.is_protocol() && e.io_kind().is_none());
        assert_eq!(e.to_string(), bad.validate().unwrap_err().to_string());
        // The connection is still in step: the next packet is the first bytes sent.
        c.send(&Packet::Noop).unwrap();
        let want = Packet::Noop.to_vec(Magic::Req);
        let mut got = vec![0u8; want.len()];
        server.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        server.read_exact(&mut got).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn a_closed_connection_and_a_deadline_are_socket_errors() {
        let (mut c, server) = pair();
        let e = c.recv(Some(Instant::now() + Duration::from_millis(20))).unwrap_err();
        assert!(e.is_timeout(), "{e:?}");
        drop(server);
        let e = c.recv(soon()).unwrap_err();
        assert_eq!(e.io_kind(), Some(io::ErrorKind::UnexpectedEof), "{e:?}");
        assert_eq!(e.to_string(), "server closed the connection");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn server_lists() {
        assert_eq!(
            parse_server_list(["a, b:7003,,[::1],[::1]:9", "::1", "c_1.example"]).unwrap(),
            ["a:4730", "b:7003", "[::1]:4730", "[::1]:9", "[::1]:4730", "c_1.example:4730"]
        );
        assert_eq!(with_default_port("::1"), "[::1]:4730");
        for (bad, why) in [
            ("http://127.0.0.1:4730", "no scheme"),
            ("gearman://h", "no scheme"),
            ("a:notaport", "port"),
            ("a:0", "port"),
            ("a:70000", "port"),
            ("a b", "host"),
            (":4730", "host"),
            ("h/x", "host"),
            ("[::1", "`]`"),
            ("[nope]:1", "IPv6"),
            ("[::1]x", "after `]`"),
            ("a:1:2", "brackets"),
        ] {
            let e = parse_server_list([bad]).unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")) && e.contains(why), "{bad}: {e}");
            assert!(e.contains("write HOST[:PORT]"), "{e}");
        }
        let e = resolve_servers(Some(&[" , ".to_string()]), &[]).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        assert_eq!(
            resolve_servers(Some(&["x".to_string()]), &["y:1".to_string()]).unwrap(),
            ["x:4730"]
        );
    }
}
