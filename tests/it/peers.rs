//! Helpers for the interop and bad-input tests: the server under test, child
//! processes with bounded lifetimes, and a raw protocol connection whose
//! every read and write has a timeout.
//!
//! The interop tests normally run against gearframe's embedded server. With
//! `GEARFRAME_INTEROP_TARGET=gearmand` they run against Debian's gearmand
//! instead, which checks that their expectations are gearmand's (the version
//! string excepted).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use gearframe::proto::{Decoder, Frame, Magic, Packet, PacketType};
use gearframe::server::{Server, ServerConfig, ServerHandle};

pub use crate::support::peer;
use crate::support::{Gearmand, Opts};

/// Bound for one read, write, connect or tool run.
pub const IO_LIMIT: Duration = Duration::from_secs(5);
/// Bound for something that happens in the background (a job to drain, a
/// worker to register).
pub const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// Polls `f` until it returns `Some`, failing the test with `what` after
/// `limit`.
pub fn poll<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// gearframe's embedded server on an ephemeral loopback port; shut down and
/// joined on drop.
#[derive(Debug)]
pub struct ServerGuard {
    handle: Option<ServerHandle>,
    addr: SocketAddr,
}

impl ServerGuard {
    /// The default configuration.
    pub fn start() -> ServerGuard {
        ServerGuard::with_config(ServerConfig::default())
    }

    /// `config` with `listen` replaced by `127.0.0.1:0`.
    pub fn with_config(config: ServerConfig) -> ServerGuard {
        let handle = Server::bind(ServerConfig { listen: "127.0.0.1:0".into(), ..config })
            .unwrap_or_else(|e| panic!("the embedded server does not start: {e}"));
        let addr = handle.local_addr();
        ServerGuard { handle: Some(handle), addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let Some(handle) = self.handle.take() else { return };
        handle.shutdown();
        // Join on a helper thread so a server that does not stop cannot hang
        // the test binary.
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            handle.join();
            let _ = tx.send(());
        });
        if rx.recv_timeout(SETTLE_LIMIT).is_err() {
            eprintln!(
                "SERVER DID NOT STOP: {} still running {SETTLE_LIMIT:?} after shutdown",
                self.addr
            );
        }
    }
}

/// A child process, killed and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        let name = format!("{cmd:?}");
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { child, name }
    }

    /// Waits for the process to exit by itself, failing the test after `limit`.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let Proc { child, name } = self;
        poll(limit, &format!("{name} to exit"), || child.try_wait().expect("try_wait"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let deadline = Instant::now() + IO_LIMIT;
            while let Ok(None) = self.child.try_wait() {
                if Instant::now() > deadline {
                    eprintln!(
                        "PROCESS NOT REAPED: {} survived SIGKILL for {IO_LIMIT:?}",
                        self.name
                    );
                    return;
                }
                thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program args...` with `stdin` as its input and waits for it to
/// finish, failing the test after `limit`.
pub fn run(program: &Path, args: &[&str], stdin: &[u8], limit: Duration) -> Output {
    let mut p = Proc::spawn(
        Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let what = format!("{} {}", program.display(), args.join(" "));
    let mut input = p.child.stdin.take().expect("piped stdin");
    let data = stdin.to_vec();
    // Writing happens on its own thread: a child that does not read its input
    // must not block the test.
    thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let (tx, rx) = mpsc::channel();
    for (i, mut pipe) in [
        Box::new(p.child.stdout.take().expect("piped stdout")) as Box<dyn Read + Send>,
        Box::new(p.child.stderr.take().expect("piped stderr")),
    ]
    .into_iter()
    .enumerate()
    {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send((i, buf));
        });
    }
    let deadline = Instant::now() + limit;
    let mut out = [Vec::new(), Vec::new()];
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, buf)) => out[i] = buf,
            Err(_) => panic!("`{what}` did not finish within {limit:?}"),
        }
    }
    let status = p.wait(deadline.saturating_duration_since(Instant::now()) + IO_LIMIT);
    let [stdout, stderr] = out.map(|b| String::from_utf8_lossy(&b).into_owned());
    Output { status, stdout, stderr }
}

/// Which server the interop tests talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ours,
    Gearmand,
}

/// The server under test.
pub struct Target {
    kind: Kind,
    addr: SocketAddr,
    pid: u32,
    _ours: Option<ServerGuard>,
    _gearmand: Option<Gearmand>,
}

impl Target {
    /// Starts the server chosen by `GEARFRAME_INTEROP_TARGET` (see the module
    /// docs); `None` when that is gearmand and it is not installed.
    pub fn start() -> Option<Target> {
        if std::env::var("GEARFRAME_INTEROP_TARGET").as_deref() == Ok("gearmand") {
            let g = Gearmand::start(&Opts::default())?;
            return Some(Target {
                kind: Kind::Gearmand,
                addr: g.addr(),
                pid: g.pid(),
                _ours: None,
                _gearmand: Some(g),
            });
        }
        let s = ServerGuard::start();
        Some(Target {
            kind: Kind::Ours,
            addr: s.addr(),
            pid: std::process::id(),
            _ours: Some(s),
            _gearmand: None,
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// The process id the server reports with `getpid`.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// A frame read back from a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Packet(Magic, PacketType, Vec<u8>),
    Line(String),
}

impl Reply {
    /// The arguments of a packet reply of type `kind`; fails the test for
    /// anything else.
    pub fn args(&self, kind: PacketType) -> Vec<Vec<u8>> {
        match self {
            Reply::Packet(Magic::Res, k, body) if *k == kind => {
                let p = Packet::parse(kind, body)
                    .unwrap_or_else(|e| panic!("{kind} reply does not parse: {e}"));
                p.args().iter().map(<[u8]>::to_vec).collect()
            }
            other => panic!("expected a {kind} packet, got {other:?}"),
        }
    }
}

/// How many received bytes a [`Conn`] keeps for failure messages.
const RECENT: usize = 512;

/// A raw connection to a server; every read and write is bounded.
pub struct Conn {
    stream: TcpStream,
    dec: Decoder,
    /// The last bytes received, for failure messages.
    recent: Vec<u8>,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, IO_LIMIT)
            .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        stream.set_read_timeout(Some(IO_LIMIT)).expect("read timeout");
        stream.set_write_timeout(Some(IO_LIMIT)).expect("write timeout");
        stream.set_nodelay(true).expect("nodelay");
        Conn { stream, dec: Decoder::default(), recent: Vec::new() }
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Writes one request packet, failing the test if the write fails.
    pub fn send(&mut self, p: Packet<'_>) {
        let bytes = p.to_vec(Magic::Req);
        self.send_raw(&bytes).unwrap_or_else(|e| panic!("sending {}: {e}", p.kind()));
    }

    /// Reads the next frame; `Ok(None)` when the server closed the connection.
    pub fn recv(&mut self) -> io::Result<Option<Reply>> {
        let mut buf = [0u8; 4096];
        loop {
            match self.dec.next_frame() {
                Ok(Some(Frame::Binary { magic, kind, body })) => {
                    return Ok(Some(Reply::Packet(magic, kind, body.to_vec())));
                }
                Ok(Some(Frame::Text(line))) => {
                    return Ok(Some(Reply::Line(String::from_utf8_lossy(line).into_owned())));
                }
                Ok(None) => {}
                Err(e) => {
                    let recent = String::from_utf8_lossy(&self.recent).into_owned();
                    let msg = format!("{e}; the last bytes received were {recent:?}");
                    return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
                }
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(None),
                Ok(n) => {
                    self.dec.push(&buf[..n]);
                    self.recent.extend_from_slice(&buf[..n]);
                    let excess = self.recent.len().saturating_sub(RECENT);
                    self.recent.drain(..excess);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads the next frame, failing the test on a timeout, an error or a
    /// closed connection.
    pub fn expect_reply(&mut self) -> Reply {
        match self.recv() {
            Ok(Some(r)) => r,
            Ok(None) => panic!("connection closed while a reply was expected"),
            Err(e) => panic!("no reply: {e}"),
        }
    }

    /// Asserts that the server closes the connection (end of stream or a
    /// reset) within `limit` without sending anything more.
    pub fn expect_closed(&mut self, limit: Duration) {
        self.stream.set_read_timeout(Some(limit)).expect("read timeout");
        let got = self.recv();
        self.stream.set_read_timeout(Some(IO_LIMIT)).expect("read timeout");
        match got {
            Ok(None) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                ) => {}
            Ok(Some(r)) => panic!("expected the connection to be closed, got {r:?}"),
            Err(e) => panic!("expected the connection to be closed within {limit:?}: {e}"),
        }
    }

    /// ECHO_REQ round trip.
    pub fn echo(&mut self, data: &[u8]) {
        self.send(Packet::EchoReq { data });
        assert_eq!(self.expect_reply().args(PacketType::EchoRes), vec![data.to_vec()]);
    }

    /// Sends an admin command and returns its reply as the tool would read
    /// it: every line up to and including `.` for list commands, else one line.
    pub fn admin(&mut self, command: &str) -> String {
        self.send_raw(format!("{command}\n").as_bytes())
            .unwrap_or_else(|e| panic!("sending `{command}`: {e}"));
        let list = gearframe::proto::admin::is_list_command(command);
        let mut out = String::new();
        loop {
            match self.expect_reply() {
                Reply::Line(l) => {
                    out.push_str(&l);
                    out.push('\n');
                    if !list || l == "." {
                        return out;
                    }
                }
                other => panic!("`{command}` answered with {other:?}"),
            }
        }
    }
}
